"""Evaluate detections under a benchmark protocol (utils/config/protocols.py) with pycocotools, its Params set per
protocol.

Units: boxes xyxy in ORIGINAL-image pixels, areas in original px² (box width x height, as the COCO JSON of the
converters). Images get internal integer ids 1..n (their file names never reach pycocotools). pycocotools caps
the detections per image *and class* at ``maxDets``; val.py's NMS caps them per image at the same number.

The reported numbers follow pycocotools' ``summarize``: the mean of the precision (AP) or recall (AR) entries that
are not -1 for the stat's IoU, area range and maxDets; NaN where no class has a ground truth in that range. MR is
the log-average miss rate at 9 false-positives-per-image points log-spaced in [0.01, 1] (Dollar et al.), from the
same matches (ignored detections left out), at each point the miss rate of the lowest-scoring operating point
whose FPPI does not exceed it (1.0 when none does), averaged in log space and then over the classes.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from utils.cli import check_args
from utils.config.protocols import COCO_IOUS, Protocol, Stat, get_protocol
from utils.dataset.ignore import to_pixels

FPPI_POINTS = np.logspace(-2, 0, 9)  # MR: reference false positives per image
VISDRONE_IGNORED = 0.5  # VisDrone: a box with this share of its area in ignore regions is removed


@dataclass
class EvalImage:
    """One image: ``labels`` (M, 5) [cls, x1, y1, x2, y2], ``ignore`` (K, 4) xyxy and ``dets`` (N, 6)
    [x1, y1, x2, y2, conf, cls], all original px; ``width``/``height`` original px."""

    width: int
    height: int
    labels: np.ndarray
    dets: np.ndarray
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


def ignored_share(boxes: np.ndarray, areas: np.ndarray, width: int, height: int) -> np.ndarray:
    """(n,) share of each xyxy box's whole pixels that lie in the union of the ignore ``areas`` (k, 4) xyxy, on a
    whole-pixel mask of the ``width`` x ``height`` image (as the VisDrone toolkit); 0 without areas."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(areas) or not len(boxes):
        return np.zeros(len(boxes))
    mask = np.zeros((height, width), dtype=np.int64)
    for x1, y1, x2, y2 in _pixels(np.asarray(areas, np.float64), width, height):
        mask[y1:y2, x1:x2] = 1
    integral = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    px = _pixels(boxes, width, height)
    x1, y1, x2, y2 = px.T
    inside = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
    return inside / np.maximum((x2 - x1) * (y2 - y1), 1)


def _pixels(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """xyxy boxes -> whole-pixel [x1, y1, x2, y2) index ranges inside the image, at least one pixel each."""
    b = np.rint(boxes).astype(np.int64)
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    b[:, 2] = np.maximum(b[:, 2], np.minimum(b[:, 0] + 1, width))
    b[:, 3] = np.maximum(b[:, 3], np.minimum(b[:, 1] + 1, height))
    b[:, 0] = np.minimum(b[:, 0], b[:, 2] - 1).clip(0)
    b[:, 1] = np.minimum(b[:, 1], b[:, 3] - 1).clip(0)
    return b


def coco_dicts(images: Sequence[EvalImage], classes: Sequence[int], ignore: str) -> tuple[dict, dict]:
    """(ground-truth COCO dict, detection COCO dict) of ``images`` under the ``ignore`` rule
    (utils/config/protocols.py): 'crowd' adds each ignore area as an iscrowd box of every class, 'tinyperson' as an
    ignored box of every class, 'visdrone' removes the boxes mostly inside ignore areas, 'centre' leaves the areas
    out."""
    info = [{"id": i + 1, "width": int(im.width), "height": int(im.height)} for i, im in enumerate(images)]
    gts, dts = [], []

    def box(x1: float, y1: float, x2: float, y2: float) -> dict:
        w, h = x2 - x1, y2 - y1
        return {"bbox": [x1, y1, w, h], "area": w * h}

    for i, im in enumerate(images, start=1):
        labels = np.asarray(im.labels, np.float64).reshape(-1, 5)
        dets = np.asarray(im.dets, np.float64).reshape(-1, 6)
        areas = np.asarray(im.ignore, np.float64).reshape(-1, 4)
        if ignore == "visdrone" and len(areas):
            labels = labels[ignored_share(labels[:, 1:], areas, im.width, im.height) < VISDRONE_IGNORED]
            dets = dets[ignored_share(dets[:, :4], areas, im.width, im.height) < VISDRONE_IGNORED]
        for c, x1, y1, x2, y2 in labels.tolist():
            gts.append({"id": len(gts) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0, **box(x1, y1, x2, y2)})
        if ignore in ("crowd", "tinyperson"):
            for x1, y1, x2, y2 in areas.tolist():
                for c in classes:
                    gts.append({"id": len(gts) + 1, "image_id": i, "category_id": int(c), **box(x1, y1, x2, y2),
                                "iscrowd": int(ignore == "crowd"), "ignore_region": 1})
        for x1, y1, x2, y2, conf, c in dets.tolist():  # as pycocotools' loadRes builds bbox results
            dts.append({"id": len(dts) + 1, "image_id": i, "category_id": int(c), "score": conf, "iscrowd": 0,
                        **box(x1, y1, x2, y2)})
    cats = [{"id": int(c), "name": str(c)} for c in classes]
    return ({"info": {}, "images": info, "annotations": gts, "categories": cats},
            {"images": info, "annotations": dts, "categories": cats})


class TinyPersonEval(COCOeval):
    """COCOeval with TinyBenchmark's ignore rule: ignore boxes are ignored ground truths matched by IoU as usual,
    and a detection still unmatched whose intersection over its own area with an ignored ground truth (an ignore
    box, or an object outside the area range) reaches the IoU threshold is ignored as well."""

    def _prepare(self) -> None:
        super()._prepare()
        for anns in self._gts.values():
            for g in anns:  # pycocotools keeps only iscrowd as 'ignore'; TinyBenchmark also the ignore boxes
                g["ignore"] = int(bool(g.get("iscrowd")) or bool(g.get("ignore_region")))

    def evaluateImg(self, imgId, catId, aRng, maxDet):  # noqa: N802 (pycocotools' name)
        e = super().evaluateImg(imgId, catId, aRng, maxDet)
        if e is None or not len(e["dtIds"]) or not e["gtIgnore"].any():
            return e
        gts = {g["id"]: g for g in self._gts[imgId, catId]}
        dts = {d["id"]: d for d in self._dts[imgId, catId]}
        ignored = [gid for gid, ig in zip(e["gtIds"], e["gtIgnore"]) if ig]
        d = np.array([dts[i]["bbox"] for i in e["dtIds"]], np.float64)
        g = np.array([gts[i]["bbox"] for i in ignored], np.float64)
        lt = np.maximum(d[:, None, :2], g[None, :, :2])
        rb = np.minimum(d[:, None, :2] + d[:, None, 2:], g[None, :, :2] + g[None, :, 2:])
        iod = np.clip(rb - lt, 0, None).prod(2) / np.maximum(d[:, 2] * d[:, 3], 1e-12)[:, None]
        best, arg = iod.max(1), iod.argmax(1)
        for t, thr in enumerate(self.params.iouThrs):
            hit = (e["dtMatches"][t] == 0) & (best >= min(thr, 1 - 1e-10))
            e["dtMatches"][t, hit] = np.array(ignored)[arg[hit]]
            e["dtIgnore"][t, hit] = True
        return e


def make_eval(protocol: Protocol, gt: dict, dt: dict) -> COCOeval:
    """The protocol's COCOeval on the two COCO dicts, evaluated and accumulated (pycocotools' prints captured)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset, coco_dt.dataset = gt, dt
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = (TinyPersonEval if protocol.ignore == "tinyperson" else COCOeval)(coco_gt, coco_dt, "bbox")
        p = ev.params
        if tuple(protocol.iou_thrs) != COCO_IOUS:  # COCO's own linspace is kept bit for bit
            p.iouThrs = np.array(protocol.iou_thrs, dtype=np.float64)
        p.maxDets = list(protocol.max_dets)
        p.areaRng = [[a.lo, a.hi] for a in protocol.areas]
        p.areaRngLbl = [a.name for a in protocol.areas]
        ev.evaluate()
        ev.accumulate()
    return ev


def _iou_index(ev: COCOeval, iou: float | None) -> slice | np.ndarray:
    return slice(None) if iou is None else np.flatnonzero(np.isclose(ev.params.iouThrs, iou, rtol=0, atol=1e-9))


def summarize(ev: COCOeval, protocol: Protocol, stat: Stat) -> float:
    """One AP or AR number exactly as pycocotools' ``_summarize``; MR through :func:`miss_rate`."""
    if stat.kind == "mr":
        return miss_rate(ev, protocol, stat)
    a = [i for i, n in enumerate(ev.params.areaRngLbl) if n == stat.area]
    m = [i for i, d in enumerate(ev.params.maxDets) if d == protocol.max_dets[stat.det]]
    t = _iou_index(ev, stat.iou)
    if stat.kind == "ap":
        s = ev.eval["precision"][t][:, :, :, a, m]
    else:
        s = ev.eval["recall"][t][:, :, a, m]
    return float(np.mean(s[s > -1])) if (s > -1).any() else math.nan


def miss_rate(ev: COCOeval, protocol: Protocol, stat: Stat) -> float:
    """Log-average miss rate (module docstring) at ``stat.iou`` on ``stat.area``, averaged over the classes."""
    p = ev.params
    t = int(_iou_index(ev, stat.iou)[0])
    a = p.areaRngLbl.index(stat.area)
    rng, n_img, max_det = p.areaRng[a], len(p.imgIds), protocol.max_dets[stat.det]
    per_class = []
    for k in p.catIds:
        es = [e for e in ev.evalImgs if e is not None and e["category_id"] == k and list(e["aRng"]) == list(rng)]
        n_gt = sum(int((~e["gtIgnore"].astype(bool)).sum()) for e in es)
        if not n_gt:
            continue
        scores = np.concatenate([e["dtScores"][:max_det] for e in es]) if es else np.zeros(0)
        order = np.argsort(-scores, kind="mergesort")
        dtm = np.concatenate([e["dtMatches"][t, :max_det] for e in es])[order] if es else np.zeros(0)
        dtig = np.concatenate([e["dtIgnore"][t, :max_det] for e in es])[order].astype(bool) if es else np.zeros(0, bool)
        tp, fp = np.cumsum((dtm > 0) & ~dtig), np.cumsum((dtm == 0) & ~dtig)
        recall, fppi = tp / n_gt, fp / max(n_img, 1)
        mr = []
        for ref in FPPI_POINTS:
            j = np.flatnonzero(fppi <= ref)
            mr.append(1.0 - recall[j[-1]] if len(j) else 1.0)
        per_class.append(math.exp(np.mean(np.log(np.maximum(mr, 1e-10)))))
    return float(np.mean(per_class)) if per_class else math.nan


def evaluate_protocol(protocol: Protocol, images: Sequence[EvalImage], classes: Sequence[int]) -> dict[str, float]:
    """{stat name: value} of ``protocol`` (``Protocol.stat_names()``, in that order) on ``images``; ``classes``:
    every class id of the dataset (ignore areas are made boxes of each)."""
    gt, dt = coco_dicts(images, classes, protocol.ignore)
    ev = make_eval(protocol, gt, dt)
    return {name: summarize(ev, protocol, s) for name, s in zip(protocol.stat_names(), protocol.stats)}


def resolve_protocol(flag: str | None, from_yaml: str | None, max_det: int | None) -> tuple[Protocol, int]:
    """(protocol, detections kept per image): the flag, else the data YAML's ``protocol``, else 'yolov5'; with
    ``max_det`` (--max-det) as its cap when given. Raises UsageError for a cap the protocol cannot use."""
    proto = get_protocol(flag or from_yaml or "yolov5")
    if max_det is None:
        return proto, proto.max_det
    try:
        return proto.with_max_det(max_det), max_det
    except ValueError as e:
        check_args(max_det=(False, f"{max_det}: {str(e).split(': ', 1)[1]}"))
        raise


def eval_image(predn: torch.Tensor, labelsn: torch.Tensor, areas: np.ndarray | None,
               shape: tuple[int, int]) -> EvalImage:
    """One image for the protocol evaluation: detections (N, 6) and labels (M, 5) original px, ignore areas
    normalised (or None) -> original px; ``shape`` (h0, w0)."""
    ign = to_pixels(areas, shape[1], shape[0]) if areas is not None else np.zeros((0, 4))
    return EvalImage(width=int(shape[1]), height=int(shape[0]), labels=labelsn.cpu().double().numpy(),
                     dets=predn.cpu().double().numpy(), ignore=np.asarray(ign, np.float64).reshape(-1, 4))


def protocol_results(proto: Protocol, images: list[EvalImage], classes: list[int]) -> dict:
    """metrics.json's ``protocol`` entry: the name, what it fixes and its numbers under the benchmark's names."""
    return {"name": proto.name, "benchmark": proto.benchmark, "max_dets": list(proto.max_dets),
            "iou_thrs": list(proto.iou_thrs), "areas": {a.name: [a.lo, a.hi] for a in proto.areas},
            "ignore": proto.ignore, "metrics": evaluate_protocol(proto, images, classes)}


__all__ = ["EvalImage", "TinyPersonEval", "coco_dicts", "eval_image", "evaluate_protocol", "ignored_share",
           "make_eval", "miss_rate", "protocol_results", "resolve_protocol", "summarize"]
