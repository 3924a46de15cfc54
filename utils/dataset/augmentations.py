"""Image augmentations with YOLOv5 v7.0's maths: letterbox, HSV jitter, random perspective, mixup, flips.

Images are HWC uint8 BGR numpy arrays (OpenCV order). Boxes passed to ``random_perspective`` are
``[cls, x1, y1, x2, y2]`` in **input pixels**; flips work on ``[cls, x, y, w, h]`` **normalised** labels.
Random draws come from ``rng`` (a ``random.Random``) and ``np_rng`` (a ``numpy.random.RandomState``) when given,
else from the global ``random`` / ``numpy.random`` state like YOLOv5. The order of draws is YOLOv5's, so with the
same seed the outputs are identical to the reference.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import cv2
import numpy as np

PAD_COLOR = (114, 114, 114)


def letterbox(im: np.ndarray, new_shape: int | tuple[int, int] = (640, 640), color: tuple[int, int, int] = PAD_COLOR,
              auto: bool = True, scaleFill: bool = False, scaleup: bool = True,
              stride: int = 32) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad to ``new_shape`` = (height, width) input pixels.

    Args:
        auto: pad only to the next multiple of ``stride`` (minimum rectangle) instead of the full ``new_shape``.
        scaleFill: stretch to ``new_shape`` without padding (ignored when ``auto``).
        scaleup: allow enlarging (False: only shrink, as for validation).
    Returns:
        (image, (width ratio, height ratio) new/old, (dw, dh) padding per side in input pixels, may be x.5).
    """
    h0, w0 = im.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / h0, new_shape[1] / w0)
    if not scaleup:
        r = min(r, 1.0)
    ratio = r, r
    new_w, new_h = int(round(w0 * r)), int(round(h0 * r))
    dw, dh = new_shape[1] - new_w, new_shape[0] - new_h
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scaleFill:
        dw, dh = 0.0, 0.0
        new_w, new_h = new_shape[1], new_shape[0]
        ratio = new_shape[1] / w0, new_shape[0] / h0
    dw, dh = dw / 2, dh / 2
    if (w0, h0) != (new_w, new_h):
        im = cv2.resize(im, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)  # always a new array
    return im, ratio, (dw, dh)


def augment_hsv(im: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5,
                np_rng: np.random.RandomState | None = None) -> None:
    """Random hue/saturation/value gains in [1 - gain, 1 + gain], applied in place to a BGR uint8 image.

    Hue is rotated modulo 180 (OpenCV's hue range); saturation and value are clipped to [0, 255].
    """
    if not (hgain or sgain or vgain):
        return
    r = (np_rng or np.random).uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    x = np.arange(0, 256, dtype=r.dtype)
    lut = np.empty((256, 1, 3), np.uint8)  # one 3-channel table: a single LUT pass instead of split/merge
    lut[:, 0, 0] = ((x * r[0]) % 180).astype(np.uint8)
    lut[:, 0, 1] = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut[:, 0, 2] = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.LUT(cv2.cvtColor(im, cv2.COLOR_BGR2HSV), lut)
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=im)


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Boolean mask of boxes kept after augmentation: (4, n) xyxy pixel boxes before (``box1``, already scaled by
    the augmentation's scale gain) and after (``box2``). Kept: both sides > ``wh_thr`` px, area ratio after/before
    > ``area_thr`` and aspect ratio < ``ar_thr``.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_perspective(im: np.ndarray, targets: np.ndarray | tuple = (), degrees: float = 10, translate: float = 0.1,
                       scale: float = 0.1, shear: float = 10, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0), rng: random.Random | None = None,
                       min_side: float = 2.0,
                       on_boxes: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation/perspective warp of an image and its boxes (YOLOv5 v7.0).

    Args:
        im: HWC uint8 image; the output is (h + 2 * border[0], w + 2 * border[1]) (a negative border crops,
            as in the mosaic where the 2s x 2s canvas becomes s x s).
        targets: (n, 5) [cls, x1, y1, x2, y2] in input pixels of ``im``.
        degrees, shear: +/- degrees; translate: +/- fraction of the output size; scale: gain in [1 - s, 1 + s];
        perspective: +/- fraction (0 to 0.001).
        min_side: ``box_candidates``' ``wh_thr``: boxes with a side <= this many output px are dropped (YOLOv5: 2).
        on_boxes: called once with what happened to the input boxes, ``(area (n,) px² before the warp, inside (n,)
            bool: the warped box lies wholly inside the output, kept (n,) bool)``; ``inside & ~kept`` are the
            boxes lost to the size rules rather than cropped away (utils/dataset/aug_stats.py counts them).
    Returns:
        (warped image, (m, 5) targets in output pixels, clipped to it; boxes failing ``box_candidates`` dropped).
    """
    rnd = rng or random
    height = im.shape[0] + border[0] * 2
    width = im.shape[1] + border[1] * 2

    C = np.eye(3)  # move the image centre to the origin
    C[0, 2] = -im.shape[1] / 2
    C[1, 2] = -im.shape[0] / 2
    P = np.eye(3)
    P[2, 0] = rnd.uniform(-perspective, perspective)
    P[2, 1] = rnd.uniform(-perspective, perspective)
    R = np.eye(3)
    a = rnd.uniform(-degrees, degrees)
    s = rnd.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(rnd.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(rnd.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = rnd.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = rnd.uniform(0.5 - translate, 0.5 + translate) * height
    M = T @ S @ R @ P @ C  # applied right to left

    if border[0] or border[1] or (M != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(width, height), borderValue=PAD_COLOR)
        else:
            im = cv2.warpAffine(im, M[:2], dsize=(width, height), borderValue=PAD_COLOR)

    targets = np.asarray(targets).reshape(-1, 5) if len(targets) else np.zeros((0, 5), np.float32)
    if not np.issubdtype(targets.dtype, np.floating):
        targets = targets.astype(np.float32)
    n = len(targets)
    if n:
        xy = np.ones((n * 4, 3))
        xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # 4 corners per box
        xy = xy @ M.T
        xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
        inside = (new[:, 0] >= 0) & (new[:, 1] >= 0) & (new[:, 2] <= width) & (new[:, 3] <= height)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        keep = box_candidates(box1=targets[:, 1:5].T * s, box2=new.T, wh_thr=min_side, area_thr=0.10)
        if on_boxes is not None:
            on_boxes((targets[:, 3] - targets[:, 1]) * (targets[:, 4] - targets[:, 2]), inside, keep)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return im, targets


def mixup(im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray,
          np_rng: np.random.RandomState | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MixUp (Zhang et al. 2017): blend two same-size images with a Beta(32, 32) ratio and keep both label sets."""
    r = (np_rng or np.random).beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


def flip_lr(im: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; ``labels`` (n, 5) [cls, x, y, w, h] normalised (x -> 1 - x). Returns new arrays."""
    labels = labels.copy()
    if len(labels):
        labels[:, 1] = 1 - labels[:, 1]
    return np.fliplr(im), labels


def flip_ud(im: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror up-down; ``labels`` (n, 5) [cls, x, y, w, h] normalised (y -> 1 - y). Returns new arrays."""
    labels = labels.copy()
    if len(labels):
        labels[:, 2] = 1 - labels[:, 2]
    return np.flipud(im), labels


__all__ = ["PAD_COLOR", "letterbox", "augment_hsv", "box_candidates", "random_perspective", "mixup", "flip_lr",
           "flip_ud"]
