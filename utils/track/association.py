"""Association of tracks and detections: a similarity matrix chosen by the tracker config, and the Hungarian
assignment (scipy) that keeps only pairs at or above a least similarity."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from utils.config.tracker import TrackerConfig
from utils.ops.pairwise import pairwise_centre, pairwise_iou, pairwise_nwd


def similarity(cfg: TrackerConfig, tracks: np.ndarray, dets: np.ndarray) -> np.ndarray:
    """(N, M) similarity in [0, 1] of predicted track boxes (N, 4) and detection boxes (M, 4), xyxy px, by
    ``cfg.association``."""
    if cfg.association == "iou":
        return pairwise_iou(tracks, dets)
    if cfg.association == "nwd":
        return pairwise_nwd(tracks, dets, cfg.nwd_c)
    return pairwise_centre(tracks, dets, cfg.centre_scale)


def assign(sim: np.ndarray, least: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Maximum-similarity one-to-one matching of rows and columns of ``sim`` (N, M); pairs below ``least`` are not
    matched. -> (matches [(row, col)], unmatched rows, unmatched columns), each sorted."""
    n, m = sim.shape
    if not n or not m:
        return [], list(range(n)), list(range(m))
    cost = np.where(sim >= least, 1.0 - sim, 1e6)  # a forbidden pair costs more than any allowed set
    rows, cols = linear_sum_assignment(cost)
    matches = sorted((int(r), int(c)) for r, c in zip(rows, cols) if sim[r, c] >= least)
    mr, mc = {r for r, _ in matches}, {c for _, c in matches}
    return matches, [r for r in range(n) if r not in mr], [c for c in range(m) if c not in mc]
