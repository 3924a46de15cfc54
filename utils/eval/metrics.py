"""Detection validation metrics with YOLOv5 v7.0 semantics: matching, AP, P/R at the max-F1 confidence, fitness.

Units: boxes are xyxy in any one unit shared by detections and labels (val.py passes original-image pixels);
confidences are in [0, 1]; IoU thresholds are dimensionless. Numbers match the v7.0 reference within 1e-6
(tests/eval/test_metrics.py), including its known quirk that a perfect detector scores AP = 0.995, not 1.0: the
101-point interpolation reads precision 0 at recall exactly 1 (the end sentinel), and the trapezoid rule keeps
half of the last 0.01-wide slice.

``ConfusionMatrix`` differs from v7.0 in one documented way: unmatched detections are counted as predicted
background in every image, also in images where no detection matched (v7.0 skipped them there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.ops.boxes import box_iou_blocks

N_CONF_POINTS = 1000  # confidence grid of the P/R/F1 curves (px in [0, 1])
N_AP_POINTS = 101  # COCO's 101-point recall grid
F1_SMOOTH_FRACTION = 0.1  # box filter width (fraction of the grid) applied to the mean F1 curve
FITNESS_WEIGHTS = np.array([0.0, 0.0, 0.1, 0.9])  # [P, R, mAP@.5, mAP@.5:.95]


def fitness(x: np.ndarray) -> np.ndarray | float:
    """Model fitness 0.1 * mAP@.5 + 0.9 * mAP@.5:.95 of results rows ``[P, R, mAP@.5, mAP@.5:.95, ...]``.

    x: (n, >=4) -> (n,), or (>=4,) -> float.
    """
    x = np.asarray(x, dtype=float)
    if x.shape[-1] < 4:
        raise ValueError(f"fitness: expected [P, R, mAP50, mAP50-95, ...] in the last axis, got shape {x.shape}")
    f = (x[..., :4] * FITNESS_WEIGHTS).sum(-1)
    return float(f) if x.ndim == 1 else f


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box filter of width ``round(len(y) * 2f) // 2 + 1`` (odd for the 1000-point grid) over (n,) ``y``, edges
    padded with the end values; the v7.0 formula, kept for parity."""
    nf = round(len(y) * f * 2) // 2 + 1
    pad = nf // 2
    yp = np.concatenate((np.full(pad, y[0]), y, np.full(pad, y[-1])))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


def _envelope(mpre: np.ndarray) -> np.ndarray:
    """Precision envelope along axis 0: running maximum from the end (non-increasing in recall)."""
    return np.flip(np.maximum.accumulate(np.flip(mpre, 0), axis=0), 0)


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """101-point interpolated average precision of one PR curve (YOLOv5 v7.0 / COCO-style grid).

    recall, precision: (n,) curves ordered by decreasing confidence. Sentinels (recall 0, precision 1) and
    (recall 1, precision 0) are appended, the precision envelope taken, sampled at recall = 0, 0.01, ..., 1 and
    integrated with the trapezoid rule. Returns (ap, mpre (n+2,), mrec (n+2,)).
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = _envelope(np.concatenate(([1.0], precision, [0.0])))
    x = np.linspace(0, 1, N_AP_POINTS)
    return float(np.trapezoid(np.interp(x, mrec, mpre), x)), mpre, mrec


def _ap_columns(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``compute_ap`` for every column of (n, T) curves at once -> (ap (T,), mpre (n+2, T), mrec (n+2, T))."""
    t = recall.shape[1]
    mrec = np.concatenate((np.zeros((1, t)), recall, np.ones((1, t))), 0)
    mpre = _envelope(np.concatenate((np.ones((1, t)), precision, np.zeros((1, t))), 0))
    x = np.linspace(0, 1, N_AP_POINTS)
    ap = np.array([np.trapezoid(np.interp(x, mrec[:, j], mpre[:, j]), x) for j in range(t)])
    return ap, mpre, mrec


@dataclass(frozen=True)
class PRCurves:
    """Per-class precision/recall curves over a confidence grid, and AP at every IoU threshold.

    px: (1000,) confidence grid in [0, 1]; p, r: (nc, 1000) precision and recall at each grid confidence (IoU 0.5);
    ap: (nc, T) AP per IoU threshold; pr: (nc, 1000) precision envelope at recall = px (IoU 0.5, for plots);
    classes: (nc,) int class ids having labels; n_gt: (nc,) labels per class. Classes without detections keep
    p = r = ap = 0, as in v7.0.
    """

    px: np.ndarray
    p: np.ndarray
    r: np.ndarray
    ap: np.ndarray
    pr: np.ndarray
    classes: np.ndarray
    n_gt: np.ndarray
    eps: float = 1e-16

    @property
    def f1(self) -> np.ndarray:
        """(nc, 1000) F1 at each grid confidence."""
        return 2 * self.p * self.r / (self.p + self.r + self.eps)

    @property
    def best_index(self) -> int:
        """Grid index of the maximum of the class-mean F1 curve smoothed by a box filter (fraction 0.1)."""
        if len(self.classes) == 0:
            return 0
        return int(smooth(self.f1.mean(0), F1_SMOOTH_FRACTION).argmax())

    @property
    def best_conf(self) -> float:
        """Operating confidence in [0, 1]: the one where the smoothed mean F1 peaks (where P and R are read)."""
        return float(self.px[self.best_index])

    def summary(self) -> tuple[np.ndarray, ...]:
        """(tp, fp, p, r, f1, ap, classes) as v7.0's ap_per_class: tp, fp (nc,) int counts, p, r, f1 (nc,) at the
        operating confidence, ap (nc, T)."""
        i = self.best_index
        p, r, f1 = self.p[:, i], self.r[:, i], self.f1[:, i]
        tp = (r * self.n_gt).round()
        fp = (tp / (p + self.eps) - tp).round()
        return tp.astype(int), fp.astype(int), p, r, f1, self.ap, self.classes


def pr_curves(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
              eps: float = 1e-16) -> PRCurves:
    """Per-class PR curves and AP from matched detections.

    tp: (n, T) bool, detection correct at each IoU threshold; conf: (n,) confidences in [0, 1]; pred_cls: (n,)
    predicted classes; target_cls: (m,) classes of all labels. Detections of classes without labels are ignored.
    """
    tp, conf = np.asarray(tp), np.asarray(conf, dtype=float)
    pred_cls, target_cls = np.asarray(pred_cls), np.asarray(target_cls)
    if tp.ndim == 1:
        tp = tp[:, None]
    if not (len(tp) == len(conf) == len(pred_cls)):
        raise ValueError(f"pr_curves: tp, conf, pred_cls lengths differ: {len(tp)}, {len(conf)}, {len(pred_cls)}")
    order = np.argsort(-conf)  # same sort as v7.0, so ties in confidence resolve identically
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    by_cls = np.argsort(pred_cls, kind="stable")  # class groups, each still in decreasing confidence
    sorted_cls = pred_cls[by_cls]

    classes, n_gt = np.unique(target_cls, return_counts=True)
    nc, nt = len(classes), tp.shape[1]
    px = np.linspace(0, 1, N_CONF_POINTS)
    ap, p, r, pr = np.zeros((nc, nt)), np.zeros((nc, N_CONF_POINTS)), np.zeros((nc, N_CONF_POINTS)), np.zeros(
        (nc, N_CONF_POINTS))
    lo, hi = np.searchsorted(sorted_cls, classes, "left"), np.searchsorted(sorted_cls, classes, "right")
    for ci in range(nc):
        if hi[ci] == lo[ci]:
            continue
        idx = by_cls[lo[ci]:hi[ci]]
        tpc = tp[idx].cumsum(0)
        fpc = (1 - tp[idx]).cumsum(0)
        recall = tpc / (n_gt[ci] + eps)
        precision = tpc / (tpc + fpc)
        r[ci] = np.interp(-px, -conf[idx], recall[:, 0], left=0)  # xp must increase: negate confidences
        p[ci] = np.interp(-px, -conf[idx], precision[:, 0], left=1)
        ap[ci], mpre, mrec = _ap_columns(recall, precision)
        pr[ci] = np.interp(px, mrec[:, 0], mpre[:, 0])
    return PRCurves(px, p, r, ap, pr, classes.astype(int), n_gt, eps)


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, *,
                 eps: float = 1e-16) -> tuple[np.ndarray, ...]:
    """YOLOv5 v7.0 ``ap_per_class`` without its plotting arguments: -> (tp, fp, p, r, f1, ap, classes), see
    ``pr_curves`` and ``PRCurves.summary``. P, R, F1 (nc,) are read at the confidence where the class-mean F1,
    smoothed, peaks; ap is (nc, T). Figures: ``utils.plots.plot_metric_curves(pr_curves(...))``.
    """
    return pr_curves(tp, conf, pred_cls, target_cls, eps).summary()


def mean_results(p: np.ndarray, r: np.ndarray, ap: np.ndarray) -> tuple[float, float, float, float]:
    """Class means (mP, mR, mAP@.5, mAP@.5:.95) of ap_per_class outputs; zeros when there are no classes."""
    if len(p) == 0:
        return 0.0, 0.0, 0.0, 0.0
    return float(p.mean()), float(r.mean()), float(ap[:, 0].mean()), float(ap.mean())


def _best_label(iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, N) IoU -> for each detection the label of highest IoU (ties: the last label, as v7.0) and that IoU."""
    best_iou, flipped = iou.flip(0).max(0)
    return iou.shape[0] - 1 - flipped, best_iou


def _best_labels(labels: torch.Tensor, detections: torch.Tensor, same_class: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_best_label` of the (M, N) IoU of labels (M, 5) [cls, x1, y1, x2, y2] with detections (N, 6)
    [x1, y1, x2, y2, conf, cls], -1 between different classes when ``same_class``. Computed by blocks of
    detections (``box_iou_blocks``): the same result with memory bounded whatever M (a label file may hold 10^6
    boxes). Returns best label index (N,) and its IoU (N,)."""
    parts = []
    for s, iou in box_iou_blocks(labels[:, 1:5], detections[:, :4]):  # (M, k)
        if same_class:
            iou = torch.where(labels[:, 0:1] == detections[s, 5], iou, -1.0)
        parts.append(_best_label(iou))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def match_predictions(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Correct-prediction matrix of one image, v7.0 ``process_batch`` semantics.

    detections: (N, 6) [x1, y1, x2, y2, conf, cls], sorted by decreasing confidence (NMS order);
    labels: (M, 5) [cls, x1, y1, x2, y2] in the same units; iouv: (T,) IoU thresholds.
    Returns correct (N, T) bool on ``iouv.device``. At each threshold every detection proposes its same-class
    label of highest IoU (if that IoU >= threshold); each label accepts the first (most confident) proposer.
    Because a detection's best label does not depend on the threshold, all thresholds are done in one pass.
    """
    n, m, t = detections.shape[0], labels.shape[0], iouv.shape[0]
    correct = torch.zeros((n, t), dtype=torch.bool, device=iouv.device)
    if n == 0 or m == 0:
        return correct
    best, best_iou = _best_labels(labels, detections, same_class=True)  # (N,), (N,)
    has = best_iou[:, None] >= iouv.to(best_iou)[None]  # (N, T): the best label passes the threshold
    det_idx = torch.arange(n, device=best.device)
    key = torch.where(has, det_idx[:, None], n)  # (N, T)
    wanted, slot = torch.unique(best, return_inverse=True)  # only proposed labels compete: (U,) U <= N
    first = torch.full((len(wanted), t), n, device=best.device, dtype=key.dtype)
    first = first.scatter_reduce(0, slot[:, None].expand(n, t), key, "amin")  # (U, T) first proposer per label
    won = first.gather(0, slot[:, None].expand(n, t)) == det_idx[:, None]
    return (has & won).to(iouv.device)


class ConfusionMatrix:
    """(nc + 1, nc + 1) confusion matrix, rows = predicted class, columns = true class, last index = background.

    Detections below ``conf`` are dropped; a detection matches a label (any class) with IoU > ``iou_thres``,
    one-to-one: each detection keeps its best label, each label its best detection (by IoU).
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Accumulate one image. detections: (N, 6) [x1, y1, x2, y2, conf, cls] or None (no predictions);
        labels: (M, 5) [cls, x1, y1, x2, y2] in the same units (or (M,) classes when detections is None)."""
        gt_cls = (labels if labels.ndim == 1 else labels[:, 0]).long().cpu().numpy()
        self._check_classes(gt_cls, "labels")
        if detections is None:
            np.add.at(self.matrix, (self.nc, gt_cls), 1)
            return
        detections = detections[detections[:, 4] > self.conf]
        det_cls = detections[:, 5].long().cpu().numpy()
        self._check_classes(det_cls, "detections")
        n, m = len(det_cls), len(gt_cls)
        gt_det = np.full(m, -1)  # matched detection per label
        if n and m:
            best, best_iou = _best_labels(labels, detections, same_class=False)
            best, best_iou = best.cpu().numpy(), best_iou.cpu().numpy()
            for j in np.flatnonzero(best_iou > self.iou_thres)[np.argsort(best_iou[best_iou > self.iou_thres])]:
                gt_det[best[j]] = j  # ascending IoU: the highest-IoU detection of each label is written last
        matched = gt_det >= 0
        np.add.at(self.matrix, (det_cls[gt_det[matched]], gt_cls[matched]), 1)  # correct or confused class
        np.add.at(self.matrix, (self.nc, gt_cls[~matched]), 1)  # missed label: background FN
        unmatched = np.ones(n, bool)
        unmatched[gt_det[matched]] = False
        np.add.at(self.matrix, (det_cls[unmatched], self.nc), 1)  # detection of background: FP

    def _check_classes(self, cls: np.ndarray, what: str) -> None:
        if len(cls) and (cls.min() < 0 or cls.max() >= self.nc):
            raise ValueError(f"ConfusionMatrix: {what} hold class {cls.min() if cls.min() < 0 else cls.max()}, "
                             f"outside [0, {self.nc}) for nc={self.nc}")

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class (nc,) true positives (diagonal) and false positives (row sum minus diagonal)."""
        tp = self.matrix.diagonal()
        return tp[:-1], (self.matrix.sum(1) - tp)[:-1]
