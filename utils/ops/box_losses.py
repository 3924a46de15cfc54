"""Per-box regression losses over (N, 4) xyxy boxes: IoU, GIoU, DIoU, CIoU, EIoU, Focal-EIoU (+ variants), NWD.

Every loss compares ``pred[i]`` with ``target[i]`` (not all pairs: see ``utils.ops.boxes.box_iou`` for that) and
returns a ``BoxLoss`` of per-box values with no reduction, like ``torchvision.ops.*_loss(reduction="none")``.
Boxes are in any consistent unit (pixels at network input or grid cells); every IoU-based loss is scale-free, NWD's
constant ``c`` must be given in the boxes' unit (12.8 px is ``12.8 / stride`` grid cells).

How to reduce a ``BoxLoss``: ``loss.sum() / weight.sum()`` when ``weight`` is not None (Focal-EIoU's per-batch
normalisation; ``loss`` already holds ``weight * EIoU``), else ``loss.mean()``.

Papers: GIoU (Rezatofighi et al. 2019), DIoU/CIoU (Zheng et al. 2020), EIoU/Focal-EIoU/FocalL1 (Zhang et al.,
Neurocomputing 2022), NWD (Wang et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import torch

from utils.ops.box_geometry import EPS, box_geometry, check_box_pair


class BoxLoss(NamedTuple):
    """What every box loss returns, each a ``Tensor[N]``."""

    loss: torch.Tensor  # per-box loss (already multiplied by ``weight`` when there is one)
    iou: torch.Tensor  # plain IoU of pred vs target, attached to the graph
    weight: torch.Tensor | None  # per-box focal weight for sum(loss) / sum(weight) normalisation, else None
    score: torch.Tensor  # box quality for objectness targets (detach it): the IoU variant itself (1 - loss) for
    # IoU/GIoU/DIoU/CIoU, as YOLOv5 uses CIoU; the plain IoU for losses that are not an IoU variant


BoxLossFn = Callable[[torch.Tensor, torch.Tensor], BoxLoss]


# ---------------------------------------------------------------- parameter checks (clear errors, cheap)
def _check_gamma(gamma: float) -> None:
    if not gamma >= 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")


def _check_beta(beta: float) -> None:
    if not 1 / math.e <= beta <= 1:
        raise ValueError(f"FocalL1 beta must lie in [1/e, 1] = [{1 / math.e:.4f}, 1], got {beta}")


def _check_c(c: float) -> None:
    if not c > 0:
        raise ValueError(f"NWD constant c must be > 0 (in the boxes' unit, e.g. 12.8 px = 12.8/stride cells), got {c}")


# ---------------------------------------------------------------- IoU family
def iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> BoxLoss:
    """``1 - IoU`` of ``Tensor[N, 4]`` xyxy boxes (any consistent unit) -> ``BoxLoss`` of ``Tensor[N]``."""
    g = box_geometry(pred, target, eps)
    return BoxLoss(1 - g.iou, g.iou, None, g.iou)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> BoxLoss:
    """``1 - GIoU = 1 - IoU + (C - union) / C`` with C the enclosing box's area; ``Tensor[N, 4]`` xyxy boxes."""
    g = box_geometry(pred, target, eps)
    c_area = g.cw * g.ch + eps
    giou = g.iou - (c_area - g.union) / c_area
    return BoxLoss(1 - giou, g.iou, None, giou)


def diou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> BoxLoss:
    """``1 - IoU + rho^2 / c^2`` (centre distance over enclosing diagonal, squared); ``Tensor[N, 4]`` xyxy boxes."""
    g = box_geometry(pred, target, eps)
    diou = g.iou - g.rho2 / g.c2
    return BoxLoss(1 - diou, g.iou, None, diou)


def ciou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS, detach_alpha: bool = True) -> BoxLoss:
    """``1 - IoU + rho^2 / c^2 + alpha * v`` exactly as YOLOv5 v7.0's ``1 - bbox_iou(..., CIoU=True)``.

    ``v = 4/pi^2 (atan(w_gt/h_gt) - atan(w/h))^2`` and ``alpha = v / (v - IoU + 1 + eps)``. Like YOLOv5 (and the CIoU
    authors' code) alpha is a constant for the gradient (``detach_alpha=True``); ``False`` differentiates it too.

    Args:
        pred, target: ``Tensor[N, 4]`` xyxy boxes, any consistent unit (pixels or grid cells).
    """
    g = box_geometry(pred, target, eps)
    v = (4 / math.pi**2) * (torch.atan(g.w2 / g.h2) - torch.atan(g.w1 / g.h1)) ** 2
    alpha = v / (v - g.iou + (1 + eps))
    if detach_alpha:
        alpha = alpha.detach()
    ciou = g.iou - (g.rho2 / g.c2 + v * alpha)
    return BoxLoss(1 - ciou, g.iou, None, ciou)


def _eiou(pred: torch.Tensor, target: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(EIoU loss, IoU), each ``Tensor[N]``."""
    g = box_geometry(pred, target, eps)
    loss = (1 - g.iou + g.rho2 / g.c2
            + (g.w1 - g.w2) ** 2 / (g.cw**2 + eps)
            + (g.h1 - g.h2) ** 2 / (g.ch**2 + eps))
    return loss, g.iou


def eiou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> BoxLoss:
    """EIoU: ``1 - IoU + rho^2/(w_c^2 + h_c^2) + (w - w_gt)^2 / w_c^2 + (h - h_gt)^2 / h_c^2``.

    ``w_c, h_c`` are the enclosing box's sides. Unlike CIoU's aspect term, the width and height terms push w and h
    independently towards the target's, even for boxes of the target's aspect ratio.

    Args:
        pred, target: ``Tensor[N, 4]`` xyxy boxes, any consistent unit (pixels or grid cells).
    """
    loss, iou = _eiou(pred, target, eps)
    return BoxLoss(loss, iou, None, iou)


def focal_eiou_loss(pred: torch.Tensor, target: torch.Tensor, gamma: float = 0.5, detach_weight: bool = True,
                    eps: float = EPS) -> BoxLoss:
    """Focal-EIoU: ``loss = W * EIoU`` with ``W = IoU^gamma``, to be reduced as ``sum(loss) / sum(weight)``.

    The weight is detached by default (``detach_weight=True``): it then only re-weights each box's EIoU gradient
    (``d loss / d pred = W * d EIoU / d pred``), as the paper's motivation (down-weight low-quality boxes) reads,
    and it never pushes a box to lower its IoU to shrink its weight. ``detach_weight=False`` differentiates
    ``IoU^gamma`` too. The IoU inside the weight is clamped to >= eps so that a batch of disjoint boxes still has
    ``sum(weight) > 0`` and ``IoU^gamma`` keeps a finite gradient at IoU = 0.

    Args:
        pred, target: ``Tensor[N, 4]`` xyxy boxes, any consistent unit (pixels or grid cells).
        gamma: focusing exponent >= 0 (paper's best 0.5; 0 gives EIoU with weight 1).
    """
    _check_gamma(gamma)
    eiou, iou = _eiou(pred, target, eps)
    base = iou.detach() if detach_weight else iou
    weight = base.clamp(min=eps) ** gamma
    return BoxLoss(weight * eiou, iou, weight, iou)


def focal_eiou_star_loss(pred: torch.Tensor, target: torch.Tensor, gamma: float = 0.5, detach_weight: bool = True,
                         eps: float = EPS) -> BoxLoss:
    """Focal-EIoU* (the paper's ablation): ``loss = W * EIoU`` with ``W = -(1 - IoU)^gamma * log(IoU)``.

    Same conventions as ``focal_eiou_loss`` (weight detached by default, reduce as ``sum(loss) / sum(weight)``);
    IoU is clamped to ``[eps, 1 - eps]`` inside the weight so that ``log`` and the power stay finite.
    """
    _check_gamma(gamma)
    eiou, iou = _eiou(pred, target, eps)
    base = (iou.detach() if detach_weight else iou).clamp(min=eps, max=1 - eps)
    weight = -((1 - base) ** gamma) * torch.log(base)
    return BoxLoss(weight * eiou, iou, weight, iou)


# ---------------------------------------------------------------- FocalL1
def focal_l1(x: torch.Tensor, beta: float = 0.8, eps: float = 1e-12) -> torch.Tensor:
    """FocalL1 of an l1-type error ``x`` (elementwise, any shape, applied to ``|x|``; unit as given).

    Its gradient is ``g(x) = -alpha x ln(beta x)`` for ``0 < x <= 1`` and ``-alpha ln(beta)`` above, with
    ``alpha = e * beta``, so ``g`` peaks at 1 at ``x = 1 / (e beta)``. Integrated:
    ``L(x) = -alpha x^2 (2 ln(beta x) - 1) / 4`` on (0, 1] and ``-alpha ln(beta) x + C`` above,
    ``C = (2 alpha ln(beta) + alpha) / 4`` for continuity at 1; ``L(0) = 0`` with gradient 0.

    Args:
        x: error values; ``beta`` in [1/e, 1] (paper's best 0.8); ``eps`` keeps ``log`` finite at 0.
    """
    _check_beta(beta)
    alpha, ln_beta = math.e * beta, math.log(beta)
    x = x.abs()
    small = -alpha * x**2 * (2 * torch.log(beta * x.clamp(min=eps)) - 1) / 4
    large = -alpha * ln_beta * x + (2 * alpha * ln_beta + alpha) / 4
    return torch.where(x <= 1, small, large)


def focal_eiou_v1_loss(pred: torch.Tensor, target: torch.Tensor, beta: float = 0.8, eps: float = EPS) -> BoxLoss:
    """Focal-EIoU v1: FocalL1 applied to the EIoU value, ``focal_l1(EIoU, beta)``; ``Tensor[N, 4]`` xyxy boxes."""
    eiou, iou = _eiou(pred, target, eps)
    return BoxLoss(focal_l1(eiou, beta), iou, None, iou)


# ---------------------------------------------------------------- NWD
def nwd_loss(pred: torch.Tensor, target: torch.Tensor, c: float = 12.8, eps: float = EPS) -> BoxLoss:
    """Normalised Wasserstein distance loss ``1 - exp(-sqrt(W2^2) / c)`` for tiny objects (Wang et al. 2021).

    Each box is the Gaussian N((cx, cy), diag(w^2/4, h^2/4)), so
    ``W2^2 = (cx1 - cx2)^2 + (cy1 - cy2)^2 + ((w1 - w2) / 2)^2 + ((h1 - h2) / 2)^2``.

    Args:
        pred, target: ``Tensor[N, 4]`` xyxy boxes, any consistent unit (pixels or grid cells).
        c: normalising constant in the boxes' unit (12.8 px for AI-TOD; the caller converts: ``12.8 / stride``
            for grid cells). ``NWD(b / s, g / s, c / s) == NWD(b, g, c)``.
        eps: widths/heights are clamped to >= eps and ``eps^2`` is added under the square root, so identical boxes
            give loss ~0 with a zero (not NaN) gradient.
    """
    _check_c(c)
    g = box_geometry(pred, target, eps)
    w2sq = g.rho2 + ((g.w1 - g.w2) ** 2 + (g.h1 - g.h2) ** 2) / 4
    return BoxLoss(1 - torch.exp(-torch.sqrt(w2sq + eps**2) / c), g.iou, None, g.iou)


# ---------------------------------------------------------------- registry
class HypParam(NamedTuple):
    """Where a box-loss parameter comes from: the hyperparameter ``key`` (declared in utils/config/hyp.py), divided by
    the level's stride when ``per_stride`` (a length in input px -> grid cells of that level)."""

    key: str
    per_stride: bool = False


@dataclass(frozen=True)
class BoxLossDef:
    """One registered box loss: ``fn(pred, target, **params)`` and, per keyword parameter, its ``HypParam``."""

    fn: Callable[..., BoxLoss]
    params: dict[str, HypParam] = field(default_factory=dict)

    def bind(self, hyp: Any, stride: float) -> BoxLossFn:
        """``fn`` with its parameters read from ``hyp`` (any object with the hyperparameters as attributes: a
        ``utils.config.hyp.Hyp``) for a level of ``stride`` input px per cell."""
        return partial(self.fn, **{name: getattr(hyp, p.key) / stride if p.per_stride else getattr(hyp, p.key)
                                   for name, p in self.params.items()})


BOX_LOSSES: dict[str, BoxLossDef] = {
    "iou": BoxLossDef(iou_loss),
    "giou": BoxLossDef(giou_loss),
    "diou": BoxLossDef(diou_loss),
    "ciou": BoxLossDef(ciou_loss),
    "eiou": BoxLossDef(eiou_loss),
    "focal_eiou": BoxLossDef(focal_eiou_loss, {"gamma": HypParam("focal_eiou_gamma")}),
    "focal_eiou_star": BoxLossDef(focal_eiou_star_loss, {"gamma": HypParam("focal_eiou_gamma")}),
    "focal_eiou_v1": BoxLossDef(focal_eiou_v1_loss, {"beta": HypParam("focal_l1_beta")}),
    "nwd": BoxLossDef(nwd_loss, {"c": HypParam("nwd_c", per_stride=True)}),
}
_CHECKS = {"gamma": _check_gamma, "beta": _check_beta, "c": _check_c}  # get_box_loss checks before binding


def get_box_loss(name: str, **params: float) -> BoxLossFn:
    """The box loss called ``name`` with ``params`` bound: ``fn(pred_xyxy, target_xyxy) -> BoxLoss``.

    For direct callers (ComputeLoss binds from a Hyp with ``BoxLossDef.bind``). Every given parameter is checked
    whichever loss is chosen (``gamma`` >= 0, ``beta`` in [1/e, 1], ``c`` > 0 in the boxes' unit) and each loss
    receives only the parameters its registry entry declares, so one call can serve every loss.
    """
    if name not in BOX_LOSSES:
        raise ValueError(f"unknown box loss {name!r}; valid: {', '.join(BOX_LOSSES)}")
    known = {p for d in BOX_LOSSES.values() for p in d.params}
    if set(params) - known:
        raise TypeError(f"unknown box-loss parameter(s) {sorted(set(params) - known)}; known: {sorted(known)}")
    for key, value in params.items():
        if key in _CHECKS:
            _CHECKS[key](value)
    return partial(BOX_LOSSES[name].fn, **{k: v for k, v in params.items() if k in BOX_LOSSES[name].params})


__all__ = ["BOX_LOSSES", "BoxLoss", "BoxLossDef", "BoxLossFn", "HypParam", "check_box_pair", "ciou_loss",
           "diou_loss", "eiou_loss", "focal_eiou_loss", "focal_eiou_star_loss", "focal_eiou_v1_loss", "focal_l1",
           "get_box_loss", "giou_loss", "iou_loss", "nwd_loss"]
