"""Tiny Focal Loss (You et al., 2026): per-target weights from absolute pixel area.

``w = exp(-k * l) + 1`` with ``l = (w_px * h_px) / S``: a vanishingly small object weighs 2, an object of area S
weighs ``1 + exp(-k)``, a large one tends to 1. The piecewise form gives exactly 1 to objects with area >= S.
The weights carry no gradient and add no parameters: they only rescale each target's share of the loss.
"""

from __future__ import annotations

import math

import torch


def tfl_weights(wh_px: torch.Tensor, k: float = 1.6, s: float = 1024.0, piecewise: bool = False) -> torch.Tensor:
    """Per-target TFL weights.

    Args:
        wh_px: (N, 2) target widths and heights in input pixels (after letterbox and augmentation).
        k: focusing coefficient in [0, inf); ``math.inf`` gives weight 1 everywhere.
        s: tiny/big dividing area S in input px^2 (> 0).
        piecewise: weight 1 for targets with area >= S.
    Returns:
        (N,) weights in [1, 2], same dtype and device as ``wh_px``; degenerate (zero or negative size) targets
        count as area 0 and weigh 2 (the finite upper bound) rather than producing NaN.
    """
    if k < 0 or math.isnan(k):
        raise ValueError(f"TFL k must be >= 0, got {k}")
    if not s > 0:
        raise ValueError(f"TFL S must be > 0 (px^2), got {s}")
    # In-place steps on one small tensor: this runs on every training step (cost measured in bench_core).
    area = wh_px.detach().prod(1).nan_to_num_(0.0, math.inf, 0.0).clamp_(min=0)  # NaN/negative -> 0 (weight 2)
    if math.isinf(k):  # the unweighted loss; computing it would give exp(-inf * 0) = NaN for zero-area targets
        return torch.ones_like(area)
    w = area.mul(-k / s).exp_().add_(1)
    if piecewise:
        w = torch.where(area >= s, 1.0, w)
    return w


def weight_positive_cells(loss: torch.Tensor, cell: torch.Tensor, w: torch.Tensor,
                          divisor: torch.Tensor | None = None, overwrite: bool = False) -> torch.Tensor:
    """(N,) ``loss`` (flat per-cell losses >= 0) with each positive cell multiplied by the largest ``w`` (n,) >= 1
    among its matches (``cell`` (n,) flat indices, repeats allowed), then divided by ``divisor`` (scalar or None).

    Equals ``loss * weight_map`` (ones, positives the amax of ``w / divisor``): max_j(w_j * loss) = loss * max_j(w_j)
    for loss >= 0, and the map's own value never wins as w >= 1. One scatter instead of building a map keeps TFL
    on/off at 1.02-1.05 x (bench_core; the map measured 1.06-1.08 x). ``overwrite``: scatter into ``loss`` itself
    (a temporary its caller drops; autograd still sees the original values) instead of into a copy of it."""
    src = (loss.index_select(0, cell) * w).to(loss.dtype)
    out = (loss.scatter_reduce_ if overwrite else loss.scatter_reduce)(0, cell, src, reduce="amax")
    if divisor is not None:  # a mask, not index_put: index_put's gradient would count a shared cell once per match
        positive = torch.zeros_like(out, dtype=torch.bool).index_fill_(0, cell, True)
        out = torch.where(positive, out / divisor, out)
    return out


def suggest_tfl(sides_px: torch.Tensor, imgsz: int, default_k: float = 1.6) -> tuple[float, bool, str]:
    """The paper's empirical rule: the continuous form with k = 1.6 suits most datasets; when the scale range
    (largest minus smallest object side, input pixels) is under a quarter of the image size, use the piecewise
    form, and the narrower the range the smaller k.

    Args:
        sides_px: (N,) object sides (sqrt of area) in input pixels at the training image size.
        imgsz: training image size in pixels.
    Returns:
        (k, piecewise, reason).
    """
    if sides_px.numel() == 0:
        return default_k, False, "no labels: keeping the default continuous form"
    lo, hi = float(sides_px.min()), float(sides_px.max())
    span = hi - lo
    quarter = imgsz / 4
    if span >= quarter:
        return default_k, False, (f"scale range {lo:.1f}-{hi:.1f} px (length {span:.1f}) >= imgsz/4 = {quarter:.0f}: "
                                  f"continuous form, k = {default_k}")
    # Narrow range: scale k down linearly with the range, from the default (at imgsz/4) to 0.6 (the paper's
    # best PCB setting, 7-58 px at 640) for the narrowest ranges.
    k = round(0.6 + (default_k - 0.6) * span / quarter, 2)
    return k, True, (f"scale range {lo:.1f}-{hi:.1f} px (length {span:.1f}) < imgsz/4 = {quarter:.0f}: "
                     f"piecewise form with a smaller k = {k}")
