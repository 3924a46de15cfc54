"""Pairwise box similarities for association (all pairs, ``[N, M]``), as numpy functions: IoU, NWD and centre
distance normalised by object size. ``utils.ops.box_merge.pairwise`` computes IoU and NWD on torch tensors for NMS
and tile merging; these numpy twins (tested equal) serve the tracker, whose small per-frame matrices would spend
more time in tensor overhead than in arithmetic. Boxes are ``(N, 4)`` / ``(M, 4)`` xyxy in one consistent unit (the
tracker uses original-image pixels); every similarity is in [0, 1], 1 for identical boxes. Empty inputs give
``(N, M)`` zeros.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-9


def _split(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centres, widths and heights of ``a`` as (N, 1) columns and of ``b`` as (1, M) rows."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ca = ((a[:, 0] + a[:, 2]) / 2)[:, None], ((a[:, 1] + a[:, 3]) / 2)[:, None]
    cb = ((b[:, 0] + b[:, 2]) / 2)[None], ((b[:, 1] + b[:, 3]) / 2)[None]
    wa, ha = (a[:, 2] - a[:, 0]).clip(EPS)[:, None], (a[:, 3] - a[:, 1]).clip(EPS)[:, None]
    wb, hb = (b[:, 2] - b[:, 0]).clip(EPS)[None], (b[:, 3] - b[:, 1]).clip(EPS)[None]
    return ca[0], ca[1], wa, ha, cb[0], cb[1], wb, hb


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(0)
    ih = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(0)
    inter = iw * ih
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None]
    return inter / (area_a + area_b - inter + EPS)


def pairwise_nwd(a: np.ndarray, b: np.ndarray, c: float = 12.8) -> np.ndarray:
    """(N, M) normalised Wasserstein distance ``exp(-W2 / c)`` between xyxy boxes seen as Gaussians
    N((cx, cy), diag(w^2/4, h^2/4)) (Wang et al. 2021; the same W2 as ``utils.ops.box_losses.nwd_loss``).
    ``c`` is in the boxes' unit (12.8 px, AI-TOD's mean object size)."""
    if c <= 0:
        raise ValueError(f"NWD constant c must be > 0, got {c}")
    xa, ya, wa, ha, xb, yb, wb, hb = _split(a, b)
    w2sq = (xa - xb) ** 2 + (ya - yb) ** 2 + ((wa - wb) ** 2 + (ha - hb) ** 2) / 4
    return np.exp(-np.sqrt(w2sq) / c)


def pairwise_centre(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(N, M) ``exp(-d / (scale * s))``: centre distance ``d`` over the pair's mean size ``s`` (mean of the two
    boxes' sqrt(w * h)), so a step of one object size costs the same for a 4-px and a 32-px object. ``scale``: the
    distance, in object sizes, at which the similarity falls to 1/e."""
    if scale <= 0:
        raise ValueError(f"centre-distance scale must be > 0, got {scale}")
    xa, ya, wa, ha, xb, yb, wb, hb = _split(a, b)
    d = np.sqrt((xa - xb) ** 2 + (ya - yb) ** 2)
    s = (np.sqrt(wa * ha) + np.sqrt(wb * hb)) / 2
    return np.exp(-d / (scale * s))


__all__ = ["pairwise_centre", "pairwise_iou", "pairwise_nwd"]
