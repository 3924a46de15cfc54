"""Box formats and pairwise IoU.

Formats: ``xyxy`` (x1, y1, x2, y2) corners and ``xywh`` (centre x, centre y, width, height). Units are whatever
the caller passes (pixels at network input, original-image pixels, normalised [0, 1] or grid cells): these
functions never change units except the explicitly named ``*n`` (normalised) converters.
Every function accepts a ``torch.Tensor`` or a ``numpy.ndarray`` of shape (..., 4) and returns the same type.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torchvision

Boxes = torch.Tensor | np.ndarray
IOU_BLOCK_PAIRS = 1 << 20  # box pairs per box_iou_blocks block: ~50 MB of temporaries whatever the box counts


def _empty_like(x: Boxes) -> Boxes:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xywh2xyxy(x: Boxes) -> Boxes:
    """(..., 4) centre-size boxes -> corner boxes, same units."""
    y = _empty_like(x)
    half_w, half_h = x[..., 2] / 2, x[..., 3] / 2
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def xyxy2xywh(x: Boxes) -> Boxes:
    """(..., 4) corner boxes -> centre-size boxes, same units."""
    y = _empty_like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x: Boxes, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0) -> Boxes:
    """(..., 4) normalised centre-size boxes -> pixel corner boxes in an image of size (w, h) shifted by the pad."""
    y = _empty_like(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: Boxes, w: float = 640, h: float = 640, clip: bool = False, eps: float = 0.0) -> Boxes:
    """(..., 4) pixel corner boxes -> normalised centre-size boxes for an image of size (w, h).

    With ``clip`` the corners are first clipped to the image shrunk by ``eps`` on every side.
    """
    if clip:
        x = clip_boxes(_empty_like(x), (h - eps, w - eps))
    y = _empty_like(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def clip_boxes(boxes: Boxes, shape: tuple[int, int]) -> Boxes:
    """Clip (..., 4) xyxy boxes in place to an image of ``shape`` = (height, width); returns them."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(img1_shape: tuple[int, int], boxes: Boxes, img0_shape: tuple[int, int],
                ratio_pad: tuple | None = None) -> Boxes:
    """Map xyxy boxes in place from a letterboxed image (``img1_shape`` = (h, w), network-input pixels) back to
    the original image (``img0_shape`` = (h, w), original-image pixels), clipping to it. ``ratio_pad`` is
    ``((gain, gain), (padw, padh))`` as letterbox returned it; when None it is recomputed as letterbox would.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    return clip_boxes(boxes, img0_shape)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: (N, 4) and (M, 4) xyxy boxes -> (N, M). Pairwise, unlike the box losses (box i vs i)."""
    return torchvision.ops.box_iou(boxes1, boxes2)


def iou_block_slices(n1: int, n2: int, max_pairs: int | None = None) -> Iterator[slice]:
    """Consecutive slices of range(n2), each of at most max(1, ``max_pairs`` // n1) items: the column blocks in which
    an (n1, n2) pairwise matrix is computed with at most ``max_pairs`` (default IOU_BLOCK_PAIRS) values at once (one
    block when it fits)."""
    step = max(1, (IOU_BLOCK_PAIRS if max_pairs is None else max_pairs) // max(n1, 1))
    for j in range(0, n2, step):
        yield slice(j, min(j + step, n2))


def box_iou_blocks(boxes1: torch.Tensor, boxes2: torch.Tensor, max_pairs: int | None = None
                   ) -> Iterator[tuple[slice, torch.Tensor]]:
    """``box_iou(boxes1, boxes2)`` by blocks of columns (:func:`iou_block_slices`): yields (s, (N, k) IoU of
    ``boxes1`` with ``boxes2[s]``). Each value equals the dense matrix's (IoU is computed pair by pair); memory stays
    bounded when one side holds very many boxes (10^6 labels against 300 detections: a 1.2 GB dense matrix)."""
    for s in iou_block_slices(len(boxes1), len(boxes2), max_pairs):
        yield s, box_iou(boxes1, boxes2[s])


def box_area(boxes: Boxes) -> Boxes:
    """(..., 4) xyxy boxes -> (...) areas, in squared input units."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
