"""Per size-bucket P, R, mAP@.5 and mAP@.5:.95 with COCO's area-range rule (pycocotools ``areaRng``).

Units: boxes are xyxy in ORIGINAL-image pixels (after ``scale_boxes``), areas in original-image pixels², so a
bucket means the same objects whatever the network input size. Buckets are half-open area ranges [lo, hi) that
partition [0, inf) (pycocotools closes both ends; the two differ only for areas exactly on an edge).

Evaluating a bucket follows pycocotools' ``evaluateImg`` for one area range, per image and per IoU threshold:
ground truths outside the bucket are *ignored*; detections, in decreasing confidence, take the unmatched
same-class ground truth of highest IoU (>= threshold), preferring non-ignored ones; a detection matched to an
ignored ground truth is neither TP nor FP, and an unmatched detection whose own area lies outside the bucket is
ignored too. Unlike pycocotools there is no 100-detections-per-image cap. AP is then YOLOv5's 101-point AP
(``utils.eval.metrics.compute_ap``), averaged over the classes having ground truths in the bucket; P and R are read
at one operating confidence (the overall max-F1 one) and averaged the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from utils.config.protocols import AITOD_NAMES, AITOD_SIDES
from utils.eval.metrics import compute_ap
from utils.ops.boxes import box_area, box_iou, iou_block_slices

DEFAULT_IOUV = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class SizeBucket:
    """Objects with lo <= area < hi, areas in original-image pixels²."""

    name: str
    lo: float
    hi: float

    def contains(self, area: np.ndarray) -> np.ndarray:
        return (area >= self.lo) & (area < self.hi)


def size_buckets(spec: str | Sequence[float] = "tiny", tfl_s: float = 1024) -> tuple[SizeBucket, ...]:
    """Bucket definitions (areas in original-image pixels²).

    'tiny': [0, tfl_s) 'tiny' and [tfl_s, inf) 'big' (tfl_s: the TFL size threshold, an area in px²);
    'coco': small < 32², medium 32²-96², large >= 96²; 'aitod': sides [0, 8, 16, 32, 64, inf) px named very_tiny,
    tiny, small, medium, large; a sequence: increasing area edges, e.g. [0, 256, 1024, inf], named '[lo,hi)'.
    """
    if isinstance(spec, str):
        if spec == "tiny":
            if not tfl_s > 0:
                raise ValueError(f"size_buckets: tfl_s must be a positive area in px², got {tfl_s}")
            return SizeBucket("tiny", 0.0, float(tfl_s)), SizeBucket("big", float(tfl_s), math.inf)
        if spec == "coco":
            return (SizeBucket("small", 0.0, 32.0**2), SizeBucket("medium", 32.0**2, 96.0**2),
                    SizeBucket("large", 96.0**2, math.inf))
        if spec == "aitod":
            return tuple(SizeBucket(n, lo**2, hi**2) for n, lo, hi in zip(AITOD_NAMES, AITOD_SIDES, AITOD_SIDES[1:]))
        raise ValueError(f"size_buckets: unknown spec {spec!r}, expected 'tiny', 'coco', 'aitod' or area edges")
    edges = [float(e) for e in spec]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0:
        raise ValueError(f"size_buckets: area edges must be >= 2 increasing non-negative values, got {list(spec)}")
    return tuple(SizeBucket(f"[{a:g},{b:g})", a, b) for a, b in zip(edges, edges[1:]))


class _ClassIoU:
    """Class-aware IoU of M labels with N detections (-1 where classes differ), float64 numpy, read by blocks of
    detection columns. Held whole when M x N <= IOU_BLOCK_PAIRS (the usual case: computed once, shared by every
    bucket); else each block is computed when it is read, so a label file of 10^6 boxes needs no (M, N) matrix."""

    def __init__(self, lab: torch.Tensor, det: torch.Tensor) -> None:
        self.lab, self.det, self.shape = lab, det, (len(lab), len(det))
        self.slices = list(iou_block_slices(*self.shape))
        self.whole = self._compute(slice(None)) if len(self.slices) <= 1 else None

    def _compute(self, s: slice) -> np.ndarray:
        det = self.det[s]
        return torch.where(self.lab[:, 0:1] == det[:, 5], box_iou(self.lab[:, 1:5], det[:, :4]), -1.0).numpy()

    def blocks(self) -> Iterator[tuple[slice, np.ndarray]]:
        """(s, (M, k) IoU with detections s) for consecutive slices covering all N detections."""
        if self.whole is not None:
            yield slice(0, self.shape[1]), self.whole
            return
        for s in self.slices:
            yield s, self._compute(s)

    def column(self, d: int) -> np.ndarray:
        """(M,) IoU of detection ``d`` with every label."""
        return self.whole[:, d] if self.whole is not None else self._compute(slice(d, d + 1))[:, 0]


def _greedy_match(iou: _ClassIoU, gt_ignore: np.ndarray, det_outside: np.ndarray,
                  iouv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' greedy matching with ignored ground truths, all thresholds at once.

    iou: (M, N) class-aware IoU by blocks, detections in decreasing confidence; gt_ignore: (M,) bool;
    det_outside: (N,) bool, detection area outside the bucket; iouv: (T,).
    Returns correct (N, T) and keep (N, T) bool: keep is False where the detection is ignored.
    """
    m, n = iou.shape
    t = len(iouv)
    correct, ignored = np.zeros((n, t), bool), np.zeros((n, t), bool)
    if m == 0 or n == 0:
        return correct, ~det_outside[:, None] & ~correct
    wanted = np.zeros(m, np.int64)  # per ground truth: detections it is a candidate of (IoU >= the lowest threshold)
    for _, blk in iou.blocks():
        wanted += (blk >= iouv[0]).sum(1)
    contested = wanted > 1  # ground truths wanted by several detections: the greedy order matters
    loop = np.zeros(n, bool)
    for s, blk in iou.blocks():
        cand = blk >= iouv[0]  # (M, k) pairs that can match at some threshold
        loop[s] = (cand & contested[:, None]).any(0)
        free = cand.any(0) & ~loop[s]  # detections whose candidates nobody else wants: no competition
        ok = blk[:, free][None] >= iouv[:, None, None]  # (T, M, Nf)
        hit_in = (ok & ~gt_ignore[None, :, None]).any(1)  # pycocotools prefers a non-ignored ground truth
        rows = np.flatnonzero(free) + s.start
        correct[rows] = hit_in.T
        ignored[rows] = ((ok & gt_ignore[None, :, None]).any(1) & ~hit_in).T
    taken = np.zeros((t, m), bool)
    order = np.concatenate([np.flatnonzero(~gt_ignore), np.flatnonzero(gt_ignore)])  # non-ignored first
    ign_o = gt_ignore[order]
    rows = np.arange(t)
    for d in np.flatnonzero(loop):  # in decreasing confidence
        col = iou.column(d)[order]
        c = (col[None] >= iouv[:, None]) & ~taken  # (T, M)
        prefer = c & ~ign_o
        c = np.where(prefer.any(1, keepdims=True), prefer, c)
        g = m - 1 - np.where(c, col[None], -np.inf)[:, ::-1].argmax(1)  # ties: the last, as pycocotools
        hit = c[rows, g]
        taken[rows[hit], g[hit]] = True
        correct[d] = hit & ~ign_o[g]
        ignored[d] = hit & ign_o[g]
    keep = ~ignored & (correct | ~det_outside[:, None])  # unmatched and outside the bucket: ignored
    return correct, keep


def _sorted_iou(detections: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray
                ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, _ClassIoU]:
    """-> (order (N,), detections (N, 6) float64 by decreasing confidence (stable), labels (M, 5) float64,
    class-aware IoU (M, N) with -1 where classes differ), on the CPU."""
    det = torch.as_tensor(detections).detach().to("cpu", torch.float64).reshape(-1, 6)
    lab = torch.as_tensor(labels).detach().to("cpu", torch.float64).reshape(-1, 5)
    order = torch.argsort(-det[:, 4], stable=True)
    det = det[order]
    return order.numpy(), det, lab, _ClassIoU(lab, det)


def match_predictions_in_range(detections: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                               iouv: np.ndarray | torch.Tensor, area_range: tuple[float, float]
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Match one image's detections for one size bucket (COCO area-range rule, see module docstring).

    detections: (N, 6) [x1, y1, x2, y2, conf, cls], labels: (M, 5) [cls, x1, y1, x2, y2], both in original-image
    pixels; iouv: (T,) IoU thresholds; area_range: (lo, hi) in px², half-open.
    Returns correct (N, T) bool and keep (N, T) bool (False: ignored at that threshold), rows in the input order.
    """
    iouv = np.asarray(iouv.cpu() if isinstance(iouv, torch.Tensor) else iouv, dtype=float)
    order, det, lab, iou = _sorted_iou(detections, labels)
    bucket = SizeBucket("", *area_range)
    gt_ignore = ~bucket.contains(box_area(lab[:, 1:5]).numpy())
    det_outside = ~bucket.contains(box_area(det[:, :4]).numpy())
    correct, keep = _greedy_match(iou, gt_ignore, det_outside, iouv)
    inv = np.argsort(order)
    return correct[inv], keep[inv]


def _class_curve(correct: np.ndarray, conf: np.ndarray, n_gt: int, conf_thres: float) -> tuple[float, float, float]:
    """AP and P, R at ``conf_thres`` of one class and one threshold; rows sorted by decreasing confidence."""
    if len(correct) == 0:
        return 0.0, 0.0, 0.0
    tpc = correct.cumsum()
    recall = tpc / (n_gt + 1e-16)
    precision = tpc / np.arange(1, len(correct) + 1)
    ap = compute_ap(recall, precision)[0]
    p = float(np.interp(-conf_thres, -conf, precision, left=1))
    r = float(np.interp(-conf_thres, -conf, recall, left=0))
    return ap, p, r


class SizeBucketStats:
    """Accumulates per-image matches for each size bucket; ``compute`` gives the per-bucket table.

    buckets: from ``size_buckets`` (default 'tiny' with tfl_s = 1024 px²); iouv: (T,) IoU thresholds.
    """

    def __init__(self, buckets: Sequence[SizeBucket] | None = None, iouv: Sequence[float] | None = None) -> None:
        self.buckets = tuple(buckets) if buckets is not None else size_buckets("tiny")
        self.iouv = np.asarray(DEFAULT_IOUV if iouv is None else iouv, dtype=float)
        self._stats: dict[str, list[tuple[np.ndarray, ...]]] = {b.name: [] for b in self.buckets}

    def update(self, detections: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """Add one image: detections (N, 6) [x1, y1, x2, y2, conf, cls], labels (M, 5) [cls, x1, y1, x2, y2],
        original-image pixels."""
        _, det, lab, iou = _sorted_iou(detections, labels)
        det_area, gt_area = box_area(det[:, :4]).numpy(), box_area(lab[:, 1:5]).numpy()
        conf, pcls, gcls = det[:, 4].numpy(), det[:, 5].numpy(), lab[:, 0].numpy()
        for b in self.buckets:
            gt_in = b.contains(gt_area)
            correct, keep = _greedy_match(iou, ~gt_in, ~b.contains(det_area), self.iouv)
            rows = keep.any(1)
            self._stats[b.name].append((correct[rows], keep[rows], conf[rows], pcls[rows], gcls[gt_in]))

    def compute(self, conf_thres: float) -> dict[str, dict[str, float]]:
        """-> {bucket name: {lo, hi (px²), n_gt, p, r, map50, map50_95}}; P and R at ``conf_thres`` (the overall
        max-F1 confidence, in [0, 1]). Metrics are NaN for a bucket without ground truths."""
        out = {}
        for b in self.buckets:
            parts = self._stats[b.name]
            correct, keep, conf, pcls, gcls = (np.concatenate(x) for x in zip(*parts)) if parts else (
                np.zeros((0, len(self.iouv)), bool), np.zeros((0, len(self.iouv)), bool), np.zeros(0), np.zeros(0),
                np.zeros(0))
            classes, n_gt = np.unique(gcls, return_counts=True)
            res = {"lo": b.lo, "hi": b.hi, "n_gt": int(n_gt.sum()), "p": math.nan, "r": math.nan,
                   "map50": math.nan, "map50_95": math.nan}
            if len(classes):
                order = np.argsort(-conf, kind="stable")
                correct, keep, conf, pcls = correct[order], keep[order], conf[order], pcls[order]
                ap = np.zeros((len(classes), len(self.iouv)))
                p, r = np.zeros(len(classes)), np.zeros(len(classes))
                for ci, (c, ng) in enumerate(zip(classes, n_gt)):
                    is_c = pcls == c
                    for j in range(len(self.iouv)):
                        rows = is_c & keep[:, j]
                        ap[ci, j], pj, rj = _class_curve(correct[rows, j], conf[rows], ng, conf_thres)
                        if j == 0:
                            p[ci], r[ci] = pj, rj
                res.update(p=float(p.mean()), r=float(r.mean()), map50=float(ap[:, 0].mean()),
                           map50_95=float(ap.mean()))
            out[b.name] = res
        return out


def format_size_table(results: dict[str, dict[str, float]]) -> str:
    """A text table of ``SizeBucketStats.compute`` output: bucket, area range (px²), GTs, P, R, mAP50, mAP50-95."""
    def f(v: float) -> str:
        return f"{v:10.3f}" if not math.isnan(v) else f"{'-':>10}"

    lines = [f"{'bucket':>12}{'area px²':>18}{'GTs':>9}{'P':>10}{'R':>10}{'mAP50':>10}{'mAP50-95':>10}"]
    for name, m in results.items():
        rng = f"[{m['lo']:g}, {m['hi']:g})"
        lines.append(f"{name:>12}{rng:>18}{m['n_gt']:>9d}{f(m['p'])}{f(m['r'])}{f(m['map50'])}{f(m['map50_95'])}")
    return "\n".join(lines)
