"""Geometry shared by the IoU family of box losses: box i of ``pred`` against box i of ``target``.

Boxes are ``xyxy`` corners in any consistent unit (pixels at network input or grid cells); every quantity below is
in that unit (lengths) or its square (areas, squared distances). The ``eps`` placements follow YOLOv5 v7.0's
``bbox_iou(..., xywh=False)`` so that CIoU built on top matches it to float precision.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

EPS = 1e-7  # YOLOv5's eps: keeps every ratio finite for zero-size and identical boxes


class BoxGeometry(NamedTuple):
    """Per-pair geometry, every field a ``Tensor[N]`` (or the boxes' leading shape)."""

    w1: torch.Tensor  # pred width, clamped to >= eps
    h1: torch.Tensor  # pred height, clamped to >= eps
    w2: torch.Tensor  # target width, clamped to >= eps
    h2: torch.Tensor  # target height, clamped to >= eps
    inter: torch.Tensor  # intersection area (>= 0)
    union: torch.Tensor  # union area + eps (> 0)
    iou: torch.Tensor  # inter / union, in [0, 1]
    cw: torch.Tensor  # width of the smallest enclosing box (>= 0)
    ch: torch.Tensor  # height of the smallest enclosing box (>= 0)
    c2: torch.Tensor  # squared diagonal of the enclosing box + eps (> 0)
    rho2: torch.Tensor  # squared distance between the two centres


def check_box_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raise ValueError unless ``pred`` and ``target`` are same-shape (..., 4) box tensors."""
    if pred.shape[-1:] != (4,) or target.shape != pred.shape:
        raise ValueError(f"box losses need pred and target of the same shape (N, 4) xyxy, got "
                         f"pred {tuple(pred.shape)} and target {tuple(target.shape)}")


def box_geometry(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> BoxGeometry:
    """Intersection, union, IoU, enclosing box and centre distance of ``pred[i]`` vs ``target[i]``.

    Args:
        pred: ``Tensor[N, 4]`` predicted xyxy boxes (any consistent unit: pixels or grid cells).
        target: ``Tensor[N, 4]`` target xyxy boxes, same unit.
        eps: added to the union and enclosing diagonal, and the lower bound of widths/heights. YOLOv5 clamps only
            the heights; clamping widths too changes nothing for boxes wider than ``eps`` and keeps degenerate
            boxes (x2 < x1) from producing a negative area.

    Returns:
        ``BoxGeometry`` of ``Tensor[N]`` fields.
    """
    check_box_pair(pred, target)
    # x and y together as (..., 2) tensors: half the kernel launches of one op per coordinate, the same
    # element-wise arithmetic in the same order (so the same floats). Each corner slice feeds its consumers in
    # the same order as before, which keeps the backward's gradient sums in the same order too.
    p1, p2, t1, t2 = pred[..., :2], pred[..., 2:], target[..., :2], target[..., 2:]  # min / max corners
    w1, h1 = (p2 - p1).clamp(min=eps).unbind(-1)
    w2, h2 = (t2 - t1).clamp(min=eps).unbind(-1)

    iw, ih = (torch.minimum(p2, t2) - torch.maximum(p1, t1)).clamp(min=0).unbind(-1)
    inter = iw * ih
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union

    cw, ch = (torch.maximum(p2, t2) - torch.minimum(p1, t1)).clamp(min=0).unbind(-1)
    c2 = cw**2 + ch**2 + eps
    dx2, dy2 = ((t1 + t2 - p1 - p2) ** 2).unbind(-1)  # (2 x centre offset)^2 per axis
    rho2 = (dx2 + dy2) / 4
    return BoxGeometry(w1, h1, w2, h2, inter, union, iou, cw, ch, c2, rho2)
