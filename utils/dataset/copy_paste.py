"""Small-object copy-paste inside the mosaic (Kisantal et al. 2019, "Augmentation for small object detection").

Each object whose box is small (area under ``small_paste_area`` input px^2, both sides >= 1 px) is copied
``small_paste_n`` times to random free places of the mosaic canvas, optionally together with small objects cut
from a few other images of the dataset (the pool). A copy goes where its *reserve* (its box rounded outward to
whole pixels, grown by ``MARGIN`` px on every side) lies inside the placed images (never on the grey border)
and overlaps no existing box and no other copy's reserve; each copy gets ``TRIES`` uniformly random places and
is dropped if none is free. The pasted label is the source box moved by a whole number of pixels: same class, same
size. 'hard' pastes the whole-pixel box as it is; 'soft' pastes the reserve with a Gaussian-feathered rectangle
as alpha (sigma ``SIGMA`` px) so the edges blend with the destination. Both modes choose the same places.

Numpy (and one cv2.integral): the geometry is vectorised over all copies; pixels move as one slice per copy.
All units are canvas pixels (input px of the mosaic, before random_perspective).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from utils.config.hyp import Hyp, HypError
from utils.ops.boxes import xywhn2xyxy

MARGIN = 2  # px kept free around each pasted box; also the feathered border that 'soft' blends
TRIES = 10  # random places tried per copy before it is dropped
SIGMA = 1.0  # px, standard deviation of the Gaussian that feathers 'soft' edges
POOL_IMAGES = 2  # other dataset images whose small objects join the candidates when small_paste_pool is on


@dataclass(frozen=True)
class Patches:
    """P small objects ready to paste; geometry relative to each object's reserve (its top-left is 0, 0).

    ``cls`` (P,); ``box`` (P, 4) float x1y1x2y2 label; ``size`` (P, 2) int reserve (w, h); ``crop`` (P, 4) int
    x1y1x2y2 of the pixels kept (the whole-pixel box for 'hard', the reserve clipped to the source for 'soft').
    ``pixels``: P arrays (h, w, C) of those pixels, uint8 ('hard') or alpha * pixels + 0.5 float32 ('soft');
    ``keep``: P arrays (h, w, 1) float32 1 - alpha, the destination's weight ('soft'), or None ('hard').
    """

    cls: np.ndarray
    box: np.ndarray
    size: np.ndarray
    crop: np.ndarray
    pixels: list[np.ndarray]
    keep: list[np.ndarray | None]


def check_paste_hyp(hyp: Hyp, imgsz: int) -> None:
    """Raise HypError when the copy-paste area threshold cannot be meant for images of ``imgsz`` input px.

    Only checked when pasting is on: an object of a single image covers at most imgsz^2 px^2, so a larger
    threshold would copy every object (the key is a *small*-object threshold, probably set in original px).
    """
    if hyp.small_paste > 0 and hyp.small_paste_area > imgsz * imgsz:
        raise HypError(f"hyperparameter 'small_paste_area' = {hyp.small_paste_area!r}: larger than the image area "
                       f"{imgsz * imgsz} ({imgsz} x {imgsz} input px), so every object would be copied; "
                       f"give the small-object area in input px^2 (e.g. 1024 = 32 x 32)")


def small_objects(boxes: np.ndarray, max_area: float) -> np.ndarray:
    """(N, 4) x1y1x2y2 px -> (N,) bool: both sides >= 1 px and area < ``max_area`` px^2."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return (w >= 1) & (h >= 1) & (w * h < max_area)


def overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, 4) and (B, 4) x1y1x2y2 -> (A, B) bool, True where the intersection has positive area (touching is not)."""
    a, b = a.T[:, :, None], b.T[:, None, :]
    return (a[0] < b[2]) & (a[2] > b[0]) & (a[1] < b[3]) & (a[3] > b[1])


@lru_cache(maxsize=1)
def _edge_cdf() -> np.ndarray:
    """Gaussian CDF at whole-pixel distances d = -8..8 (index d + 8) in units of ``SIGMA`` px; saturated beyond."""
    t = np.array([0.5 * (1 + math.erf(d / (SIGMA * math.sqrt(2)))) for d in range(-8, 9)], np.float32)
    t.flags.writeable = False
    return t


def feather(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """1-D soft edge at whole pixels ``x`` (...) int for the pixel span [lo, hi) grown by 0.5 px, blurred by a
    Gaussian of ``SIGMA`` px, at pixel centres: ~0.84 on the span's outer pixel, 0.5 one pixel out, ~0.16 two
    out, > 0.998 three in (so uint8 interiors are copied exactly). A 2-D alpha is the product over x and y."""
    cdf = _edge_cdf()
    return cdf[np.clip(hi - x, -8, 8) + 8] - cdf[np.clip(lo - 1 - x, -8, 8) + 8]


def _ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For K runs of ``counts`` (K,) items laid end to end -> (run id, index within the run), each (sum,)."""
    k = np.repeat(np.arange(len(counts)), counts)
    return k, np.arange(len(k)) - np.repeat(np.cumsum(counts) - counts, counts)


def cut_patches(img: np.ndarray, labels: np.ndarray, bounds: np.ndarray, soft: bool) -> Patches:
    """Cut the objects ``labels`` (P, 5) [cls, x1, y1, x2, y2] px out of ``img`` (H, W, C) uint8.

    ``bounds`` (P, 4) int x1y1x2y2: where each object's pixels may be read (its image rectangle), so that no grey
    border or neighbouring mosaic tile is copied. 'hard' keeps views of the boxes: no paste can alter them, as
    reserves never overlap a box's pixels; 'soft' copies (its reserves may cover another source's margin).
    """
    box = labels[:, 1:5].astype(np.float64)
    ibox = np.concatenate([np.floor(box[:, :2]), np.ceil(box[:, 2:])], 1).astype(np.int64)
    ibox = np.concatenate([np.maximum(ibox[:, :2], bounds[:, :2]), np.minimum(ibox[:, 2:], bounds[:, 2:])], 1)
    origin = np.tile(ibox[:, :2] - MARGIN, 2)  # reserve top-left in the source, twice (x1y1x2y2 offsets)
    size = ibox[:, 2:] - ibox[:, :2] + 2 * MARGIN
    read = ibox if not soft else np.concatenate([np.maximum(origin[:, :2], bounds[:, :2]),
                                                 np.minimum(origin[:, :2] + size, bounds[:, 2:])], 1)
    crop = read - origin
    pixels = [img[y1:y2, x1:x2] for x1, y1, x2, y2 in read.tolist()]
    keep: list[np.ndarray | None] = [None] * len(pixels)
    if soft and pixels:  # alpha = column feather x row feather, for all pixels at once; then per-patch views
        cw, ch = crop[:, 2] - crop[:, 0], crop[:, 3] - crop[:, 1]
        ck, ci = _ranges(cw)  # every crop column: patch, index
        ax = feather(crop[ck, 0] + ci, MARGIN, size[ck, 0] - MARGIN)
        rk, ri = _ranges(ch)  # every crop row: patch, index
        ay = feather(crop[rk, 1] + ri, MARGIN, size[rk, 1] - MARGIN)
        rlen = cw[rk]
        col = np.repeat(np.cumsum(cw)[rk] - rlen, rlen) + _ranges(rlen)[1]  # every pixel's column in ax
        alpha = (np.repeat(ay, rlen) * ax[col])[:, None]
        pre = alpha * np.concatenate([p.reshape(-1, img.shape[2]) for p in pixels]) + np.float32(0.5)  # + 0.5:
        rest = 1 - alpha  # the uint8 store truncates
        ends = np.cumsum(cw * ch).tolist()
        for p, (e, w, h) in enumerate(zip(ends, cw.tolist(), ch.tolist())):
            pixels[p], keep[p] = pre[e - w * h:e].reshape(h, w, -1), rest[e - w * h:e].reshape(h, w, 1)
    return Patches(labels[:, 0].copy(), box - origin, size, crop, pixels, keep)


def merge_patches(parts: Sequence[Patches]) -> Patches:
    """Concatenate several Patches (e.g. the canvas's and the pool's) in order."""
    cat = [np.concatenate([getattr(p, k) for p in parts]) for k in ("cls", "box", "size", "crop")]
    return Patches(*cat, [a for p in parts for a in p.pixels], [a for p in parts for a in p.keep])


def occupancy_sat(rects: np.ndarray, boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Summed-area table (H + 1, W + 1) int32 of the pixels a reserve may not cover: outside the (R, 4) int
    x1y1x2y2 ``rects`` (the border) or touched by one of the (M, 4) x1y1x2y2 ``boxes`` (rounded outward).

    A whole-pixel rectangle overlaps a box with positive area exactly when it contains a pixel the box touches,
    so 4 look-ups in this table tell whether an integer candidate is free.
    """
    occ = np.ones(hw, np.uint8)
    for x1, y1, x2, y2 in rects.tolist():
        occ[y1:y2, x1:x2] = 0
    ib = np.concatenate([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], 1).clip(0, None).astype(np.int64)
    for x1, y1, x2, y2 in ib.tolist():
        occ[y1:y2, x1:x2] = 1
    return cv2.integral(occ)


def place(size: np.ndarray, rects: np.ndarray, obstacles: np.ndarray, hw: tuple[int, int],
          rng: np.random.RandomState, tries: int = TRIES) -> np.ndarray:
    """Top-left corners (C, 2) int for C reserves of ``size`` (C, 2) (w, h), or -1 where no free place was found.

    Candidates are uniform over the bounding box of ``rects`` (R, 4) int x1y1x2y2 on the canvas ``hw`` (H, W);
    a free one lies inside the union of ``rects`` and overlaps none of ``obstacles`` (M, 4) x1y1x2y2 (both tested
    at once with a summed-area table) nor another placed reserve. All random numbers (2 * C * tries) are drawn at
    once, so their count does not depend on the outcome. Then, in vectorised rounds, each unplaced copy takes its
    first free candidate; one that overlaps an earlier copy's choice waits, and the candidates that overlap the
    reserves placed in the round are struck out.
    """
    c = len(size)
    u = rng.random_sample((2, c, tries))
    pos = np.full((c, 2), -1, np.int64)
    h, w = hw
    if not len(rects):
        return pos
    bx1, by1 = rects[:, :2].min(0).tolist()  # candidates within the bounding box of the images
    bw, bh = rects[:, 2].max() - bx1, rects[:, 3].max() - by1
    fits = (size[:, 0] <= bw) & (size[:, 1] <= bh)
    sw, sh = np.minimum(size[:, :1], bw).astype(np.int32), np.minimum(size[:, 1:], bh).astype(np.int32)
    x = bx1 + (u[0] * (bw - sw + 1)).astype(np.int32)  # (C, T)
    y = by1 + (u[1] * (bh - sh + 1)).astype(np.int32)
    x2, y2 = x + sw, y + sh
    sat = occupancy_sat(rects, obstacles.reshape(-1, 4), hw).ravel()
    i1, i2 = y * (w + 1), y2 * (w + 1)  # flat row offsets into the (H + 1, W + 1) table
    free = (sat[i2 + x2] - sat[i1 + x2] - sat[i2 + x] + sat[i1 + x] == 0) & fits[:, None]  # (C, T)
    cand = np.stack([x, y, x2, y2], -1)  # (C, T, 4)
    lower = np.tri(c, k=-1, dtype=bool)  # "earlier copy" mask; rounds keep copies in order: a subset is [:n, :n]
    left, new = np.flatnonzero(free.any(1)), cand[:0, 0]
    while left.size:
        if len(new):  # candidates that hit last round's reserves are out for good
            free[left] &= ~overlaps(cand[left].reshape(-1, 4), new).any(1).reshape(len(left), tries)
            left = left[free[left].any(1)]
        b = cand[left, free[left].argmax(1)]  # each copy's first free candidate
        ok = ~(overlaps(b, b) & lower[:len(b), :len(b)]).any(1)  # the first copy always passes: rounds end
        pos[left[ok]], new, left = b[ok, :2], b[ok], left[~ok]
    return pos


def paste_small_objects(img: np.ndarray, labels: np.ndarray, rects: np.ndarray, rng: np.random.RandomState,
                        n: int, max_area: float, blend: str = "hard",
                        pool: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``n`` copies of every small object of the canvas (and of ``pool``) at free places; ``img`` in place.

    ``img`` (H, W, C) uint8 mosaic canvas; ``labels`` (N, 5) [cls, x1, y1, x2, y2] canvas px; ``rects`` (R, 4) int
    x1y1x2y2 of the placed images (the content; the rest is border); ``pool``: (image (h, w, C) at the canvas scale,
    (k, 5) [cls, x, y, w, h] normalised to that image) pairs. Random numbers come from ``rng`` only.
    Returns (img, (N + pasted, 5) labels), the pasted rows appended in source order (canvas objects, then pool).
    """
    rects = np.asarray(rects, np.int64).reshape(-1, 4)
    soft = blend == "soft"
    src = labels[small_objects(labels[:, 1:5], max_area)]
    centre = (src[:, 1:3] + src[:, 3:5]) / 2
    inside = ((centre[:, None] >= rects[None, :, :2]) & (centre[:, None] < rects[None, :, 2:])).all(-1)  # (P, R)
    h, w = img.shape[:2]
    bounds = np.where(inside.any(1)[:, None], rects[inside.argmax(1)] if len(rects) else 0, np.array([0, 0, w, h]))
    parts = [cut_patches(img, src, bounds, soft)]
    for im, lb in pool:
        lb = np.concatenate([lb[:, :1], xywhn2xyxy(lb[:, 1:5], im.shape[1], im.shape[0])], 1).reshape(-1, 5)
        lb = lb[small_objects(lb[:, 1:5], max_area)]
        parts.append(cut_patches(im, lb, np.tile([0, 0, im.shape[1], im.shape[0]], (len(lb), 1)), soft))
    pt = merge_patches(parts)
    if not len(pt.cls) or n < 1:
        return img, labels
    which = np.repeat(np.arange(len(pt.cls)), n)  # copy -> patch
    pos = place(pt.size[which], rects, labels[:, 1:5], (h, w), rng)
    done = np.flatnonzero(pos[:, 0] >= 0)
    p, sh = which[done], np.tile(pos[done], 2)
    for k, (x1, y1, x2, y2) in zip(p.tolist(), (pt.crop[p] + sh).tolist()):
        if soft:  # alpha * src + (1 - alpha) * dst, rounded
            dst = img[y1:y2, x1:x2]
            dst[...] = pt.pixels[k] + pt.keep[k] * dst
        else:
            img[y1:y2, x1:x2] = pt.pixels[k]
    new = np.concatenate([pt.cls[p, None], pt.box[p] + sh], 1)
    return img, np.concatenate([labels, new.astype(labels.dtype)], 0)
