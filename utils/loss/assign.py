"""Label assignment for the YOLOv5 loss: which (level, anchor) pairs a ground truth is a positive for.

Pure tensor functions; ``ComputeLoss.build_targets`` (utils/loss/compute_loss.py) expands the chosen pairs to grid
cells.

- ``ratio_match``: YOLOv5's rule, a pair matches when every side ratio between the ground truth and the anchor is
  under ``anchor_t``. A ground truth much smaller (or larger) than every anchor gets no positive at all: with the
  default anchors (smallest 10 x 13 px) every square object of side <= 13 / 4 = 3.25 input px is never trained.
- ``nwd_anchor_scores``: the normalised Wasserstein distance (Wang et al. 2021; Xu et al., ISPRS 2022) between a
  ground truth and each anchor of a level centred in the ground truth's own cell. Unlike the side ratio or IoU it
  stays graded for tiny boxes that barely (or do not) overlap an anchor, so it can rank anchors for any size.
- ``topk_pairs``: the k best (level, anchor) pairs per ground truth by score, ties to the lower level and anchor
  (Xu et al.'s ranking-based assignment, NWD-RKA). ``assign: nwd`` uses it for every ground truth,
  ``assign_min_pos`` only for ground truths that ``ratio_match`` leaves without any positive.

Boolean masks are (nl, na, nt): level, anchor, ground truth, the layout ``build_targets`` reads per level
(anchor-major, which fixes the order of the matches).
"""

from __future__ import annotations

import torch


def ratio_match(gwh: torch.Tensor, anchors: torch.Tensor, anchor_t: float) -> torch.Tensor:
    """YOLOv5's shape match, of one level or of all levels at once (leading dimensions broadcast).

    Args:
        gwh: (..., nt, 2) ground-truth widths and heights in grid cells of the level(s), e.g. (nl, nt, 2).
        anchors: (..., na, 2) anchor widths and heights in grid cells of the level(s), e.g. (nl, na, 2).
        anchor_t: side-ratio threshold (YOLOv5's 4.0).
    Returns:
        (..., na, nt) bool: ``max(w / aw, aw / w, h / ah, ah / h) < anchor_t``.
    """
    ratio = gwh.unsqueeze(-3) / anchors.unsqueeze(-2)  # (..., na, nt, 2)
    return torch.max(ratio, 1 / ratio).amax(-1) < anchor_t


def nwd_anchor_scores(gxy: torch.Tensor, gwh: torch.Tensor, anchors: torch.Tensor, grid: torch.Tensor,
                      c: float) -> torch.Tensor:
    """NWD between each ground truth and each anchor of one level placed at the centre of the ground truth's cell.

    ``NWD = exp(-sqrt(dx^2 + dy^2 + ((w - aw) / 2)^2 + ((h - ah) / 2)^2) / c)`` with (dx, dy) the offset of the
    ground-truth centre from its cell's centre. NWD is invariant to scaling all lengths and ``c`` together, so
    working in grid cells with ``c = C_px / stride`` gives exactly the input-pixel value with ``C_px``.

    Args:
        gxy: (nt, 2) ground-truth centres in grid cells of the level.
        gwh: (nt, 2) ground-truth widths and heights in grid cells.
        anchors: (na, 2) anchor widths and heights in grid cells.
        grid: (2,) the level's (nx, ny); the own cell is clamped into it as ``build_targets`` clamps it.
        c: NWD constant in grid cells of the level (``nwd_c / stride``), > 0.
    Returns:
        (na, nt) scores in (0, 1], 1 for a ground truth identical to the anchor box at its cell centre.
    """
    cell = torch.minimum(gxy.floor().clamp(min=0), grid - 1)  # (nt, 2) the own cell's corner, as .long() + clamp
    d2 = (gxy - cell - 0.5).square().sum(1)  # (nt,) squared centre offset
    s2 = ((gwh[None] - anchors[:, None]) / 2).square().sum(2)  # (na, nt) squared half-side differences
    return torch.exp(-(d2[None] + s2).sqrt() / c)


def topk_pairs(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring (level, anchor) pairs of every ground truth.

    Args:
        scores: (nl, na, nt) score of every pair for every ground truth (higher is better).
        k: pairs per ground truth, >= 1; capped at nl * na.
    Returns:
        (nl, na, nt) bool with exactly ``min(k, nl * na)`` True per ground truth. Equal scores go to the lower
        level, then the lower anchor (a stable sort over the level-major flattening), so the result never
        depends on the sort kernel.
    """
    nl, na, nt = scores.shape
    flat = scores.reshape(nl * na, nt).T  # (nt, nl * na), level-major columns
    best = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, : min(k, nl * na)]
    chosen = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, best, True)
    return chosen.T.reshape(nl, na, nt)


def starved_pairs(matched: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Extra pairs for the ground truths that ``matched`` gives no pair at all: their ``k`` best by ``scores``.

    Args:
        matched: (nl, na, nt) bool, the pairs the main rule matched.
        scores: (nl, na, nt) pair scores (e.g. ``nwd_anchor_scores`` stacked over levels).
        k: pairs per starved ground truth, >= 1.
    Returns:
        (nl, na, nt) bool, all False for every ground truth that already has a pair.
    """
    starved = ~matched.flatten(0, 1).any(0)  # (nt,)
    return topk_pairs(scores, k) & starved


__all__ = ["nwd_anchor_scores", "ratio_match", "starved_pairs", "topk_pairs"]
