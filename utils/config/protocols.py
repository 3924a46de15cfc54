"""Evaluation protocols of the tiny-object benchmarks, declared once each: ``PROTOCOLS[name]``.

A protocol fixes what its benchmark's official evaluation fixes: the detections kept per image (the last of
``max_dets``, pycocotools' ``maxDets``; val.py's NMS keeps as many), the area ranges and their names (original-image
px², closed at both ends as pycocotools), the IoU thresholds, how ignore regions count, and the numbers reported
under the benchmark's own names. ``utils/eval/protocol_eval.py`` evaluates them with pycocotools.

Ignore rules (``ignore``):
- ``centre``: today's val.py (``yolov5``): a detection whose centre lies in an ignore area is dropped first.
- ``crowd``: ignore areas are COCO ``iscrowd`` boxes of every class: a detection covering one by intersection
  over the detection's area >= the IoU threshold (and matching no object) is neither TP nor FP (pycocotools).
- ``visdrone``: the VisDrone toolkit's rule: ground truths and detections with >= 50 % of their area inside the
  union of the ignore regions are removed before matching.
- ``tinyperson``: TinyBenchmark's rule: ignore boxes (and objects outside the area range being scored) are ignored
  ground truths matched by IoU as in COCO; a detection still unmatched is ignored when its intersection over its
  own area with one of them is >= the IoU threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

AITOD_SIDES = (0, 8, 16, 32, 64, math.inf)  # AI-TOD size buckets: sqrt(area) edges in pixels
AITOD_NAMES = ("very_tiny", "tiny", "small", "medium", "large")
INF_AREA = 1e5**2  # pycocotools' "no upper bound" (px²)
IGNORE_RULES = ("centre", "crowd", "visdrone", "tinyperson")
COCO_IOUS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5:0.05:0.95
KINDS = ("ap", "ar", "mr")


@dataclass(frozen=True)
class AreaRange:
    """Objects with lo <= area <= hi, original-image px² (pycocotools closes both ends)."""

    name: str
    lo: float
    hi: float


@dataclass(frozen=True)
class Stat:
    """One reported number: ``kind`` 'ap' (precision averaged over recall), 'ar' (max recall) or 'mr'
    (log-average miss rate over 9 FPPI points in [0.01, 1]); at IoU ``iou`` (None: the mean over the protocol's
    thresholds), for ``area``, with the ``det``-th entry of ``max_dets`` (-1: the cap). ``name`` may hold ``{}``
    for that maxDets value (COCO's AR100 becomes AR300 under ``--max-det 300``)."""

    name: str
    kind: str
    iou: float | None = None
    area: str = "all"
    det: int = -1


@dataclass(frozen=True)
class Protocol:
    name: str
    benchmark: str
    max_dets: tuple[int, ...]  # increasing; the last is the per-image cap
    iou_thrs: tuple[float, ...]
    areas: tuple[AreaRange, ...]
    ignore: str
    stats: tuple[Stat, ...]
    reproduces: str  # the published table it puts numbers beside
    differs: str  # what differs from the official evaluator

    def __post_init__(self) -> None:
        if list(self.max_dets) != sorted(set(self.max_dets)) or self.max_dets[0] < 1:
            raise ValueError(f"protocol {self.name}: max_dets must increase, got {self.max_dets}")
        if self.ignore not in IGNORE_RULES:
            raise ValueError(f"protocol {self.name}: ignore rule {self.ignore!r} not in {IGNORE_RULES}")
        names = {a.name for a in self.areas}
        for s in self.stats:
            if s.kind not in KINDS or (s.area not in names) or (s.iou is not None and s.iou not in self.iou_thrs):
                raise ValueError(f"protocol {self.name}: stat {s} does not fit its areas/IoUs")

    @property
    def max_det(self) -> int:
        """Detections kept per image (val.py's NMS ``max_det`` and pycocotools' last ``maxDets``)."""
        return self.max_dets[-1]

    def with_max_det(self, n: int) -> Protocol:
        """The same protocol with the cap ``n`` (``--max-det``); ValueError when ``n`` is not above the other
        ``max_dets`` (COCO's 1 and 10), which its recall numbers need."""
        if len(self.max_dets) > 1 and n <= self.max_dets[-2]:
            raise ValueError(f"--max-det {n}: protocol {self.name} needs more than {self.max_dets[-2]} "
                             f"(its maxDets are {list(self.max_dets)})")
        return replace(self, max_dets=(*self.max_dets[:-1], int(n)))

    def stat_names(self) -> list[str]:
        return [s.name.format(self.max_dets[s.det]) for s in self.stats]


def _ap_ar(prefix_areas: tuple[tuple[str, str], ...], ar_dets: tuple[int, ...]) -> tuple[Stat, ...]:
    """COCO's layout: AP, AP50, AP75, AP per area, AR at each maxDets, AR per area (areas: (suffix, name))."""
    return ((Stat("AP", "ap"), Stat("AP50", "ap", 0.5), Stat("AP75", "ap", 0.75))
            + tuple(Stat(f"AP_{s}", "ap", area=a) for s, a in prefix_areas)
            + tuple(Stat("AR{}", "ar", det=d) for d in ar_dets)
            + tuple(Stat(f"AR_{s}", "ar", area=a) for s, a in prefix_areas))


COCO_AREAS = (AreaRange("all", 0, INF_AREA), AreaRange("small", 0, 32**2), AreaRange("medium", 32**2, 96**2),
              AreaRange("large", 96**2, INF_AREA))
AITOD_AREAS = (AreaRange("all", 0, INF_AREA), AreaRange("verytiny", 0, 8**2), AreaRange("tiny", 8**2, 16**2),
               AreaRange("small", 16**2, 32**2), AreaRange("medium", 32**2, INF_AREA))
TINYPERSON_AREAS = (AreaRange("all", 1, INF_AREA), AreaRange("tiny", 1, 20**2), AreaRange("tiny1", 1, 8**2),
                    AreaRange("tiny2", 8**2, 12**2), AreaRange("tiny3", 12**2, 20**2),
                    AreaRange("small", 20**2, 32**2), AreaRange("reasonable", 32**2, INF_AREA))
TINY_RANGES = ("tiny1", "tiny2", "tiny3", "tiny", "small")

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("yolov5", "YOLOv5 v7.0 val.py", (300,), COCO_IOUS, (AreaRange("all", 0, INF_AREA),), "centre", (),
             "YOLOv5's printed P, R, mAP@.5, mAP@.5:.95 (101-point interpolation, all detections of up to 300 per "
             "image)", "nothing: this is val.py's default and YOLOv5's numbers"),
    Protocol("coco", "COCO detection (pycocotools)", (1, 10, 100), COCO_IOUS, COCO_AREAS, "crowd",
             _ap_ar((("S", "small"), ("M", "medium"), ("L", "large")), (0, 1, 2)),
             "the 12 numbers of pycocotools' COCOeval.summarize() (COCO leaderboard, YOLOv5 --save-json)",
             "nothing for boxes: pycocotools itself; ignore areas become iscrowd boxes of every class"),
    Protocol("aitod", "AI-TOD / AI-TOD v2 (aitodpycocotools)", (1, 100, 1500), COCO_IOUS, AITOD_AREAS, "crowd",
             _ap_ar((("vt", "verytiny"), ("t", "tiny"), ("s", "small"), ("m", "medium")), (0, 1, 2)),
             "AI-TOD papers' AP, AP50, AP75, AP_vt, AP_t, AP_s, AP_m at 1,500 detections per image (NWD, "
             "RFLA, DotD tables)",
             "nothing for these numbers; the LRP numbers some AI-TOD evaluators add are not computed"),
    Protocol("visdrone", "VisDrone2019-DET (official MATLAB toolkit)", (1, 10, 100, 500), COCO_IOUS,
             (AreaRange("all", 0, INF_AREA),), "visdrone",
             (Stat("AP", "ap"), Stat("AP50", "ap", 0.5), Stat("AP75", "ap", 0.75), Stat("AR{}", "ar", det=0),
              Stat("AR{}", "ar", det=1), Stat("AR{}", "ar", det=2), Stat("AR{}", "ar", det=3)),
             "VisDrone-DET challenge tables: AP, AP50, AP75, AR1, AR10, AR100, AR500",
             "the toolkit is MATLAB and was not run here: pycocotools does its COCO-style matching; the ignore "
             "test uses a whole-pixel mask as the toolkit does, pixel rounding at region borders may differ"),
    Protocol("tinyperson", "TinyPerson (TinyBenchmark's COCO API fork)", (200,), (0.25, 0.5, 0.75),
             TINYPERSON_AREAS, "tinyperson",
             tuple(Stat(f"AP50_{a}", "ap", 0.5, a) for a in TINY_RANGES)
             + (Stat("AP25_tiny", "ap", 0.25, "tiny"), Stat("AP75_tiny", "ap", 0.75, "tiny"))
             + tuple(Stat(f"MR50_{a}", "mr", 0.5, a) for a in TINY_RANGES),
             "TinyPerson tables: AP50 on tiny1/tiny2/tiny3/tiny/small, AP25 and AP75 on tiny, and MR50 (log-average "
             "miss rate) on the same ranges",
             "MR uses the AP matching and area ranges (TinyBenchmark's separate MR evaluator starts its ranges at 2 "
             "px); 'uncertain' boxes count as objects (the converter keeps them, with a flag file)"),
)}


def get_protocol(name: str) -> Protocol:
    """``PROTOCOLS[name]``; ValueError naming the choices for an unknown one."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}, choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


__all__ = ["AreaRange", "IGNORE_RULES", "PROTOCOLS", "Protocol", "Stat", "get_protocol"]
