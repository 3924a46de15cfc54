"""Sliced inference for large images with tiny objects: overlapping tiles, each run at the model size, merged.

Tiling: square tiles of ``size`` original pixels whose starts advance by ``round(size * (1 - overlap))``; the last
tile of a row/column is aligned to the image border, so every pixel is covered and every tile is full-size when
the image is at least ``size`` wide/high (smaller images give one clipped tile along that axis). Each tile is
letterboxed to the model input (``imgsz``, up- or downscaled), optionally together with the whole image
downscaled (``full``: catches objects larger than the tile overlap). Tiles go to the model in chunks of ``batch``,
so a 10,000 x 10,000 image never builds more than one chunk of inputs at a time.

Merging (documented choice): per tile, the usual ``non_max_suppression``; boxes are mapped back to original pixels
and then, over all tiles,

Boxes stay unclipped until the end, so a single tile covering the whole image gives exactly the plain result.

1. **IoS suppression of cut fragments**: a box that touches an *interior* tile edge (a tile edge that is not an
   image border, within ``margin`` pixels of that tile's input) is a possibly truncated view of an object. It is
   dropped when a larger box of the same class (any class with ``agnostic``) covers at least ``ios_thres`` of
   its area (intersection over the smaller box's area, IoS). A larger box always wins, whatever the scores: the
   fragment's score says little about the object. Nested objects are not affected unless the inner one is cut.
2. **Class-aware NMS** (IoU ``iou_thres``) over the survivors: removes the duplicates of objects seen whole in
   two overlapping tiles. Other choices (``merge``, ``match``, ``match_thres``), as SAHI offers them
   (utils/ops/box_merge.py): NMS on IoS or NWD, or non-maximum *merging* -- ``greedy-nmm`` (SAHI's default, with IoS)
   or the transitive ``nmm`` -- which replaces a group of matching boxes by their union box with the best score.

The per-tile NMS uses ``nms`` (``iou`` or ``nwd``, constant ``nwd_c`` in tile input px); the merge's NWD uses
``nwd_c`` in original px.

An object wider than the overlap is cut in every tile that holds it: its fragments survive step 1 unless a whole
view (``full=True``) covers them. Units: tiles and returned boxes are original-image pixels (for the tensor API,
pixels of the input tensor); model outputs are tile input pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from utils.dataset.augmentations import letterbox
from utils.errors import UsageError
from utils.ops.box_merge import MERGE_METHODS, NWD_C, check_choice, greedy_nms, merge_boxes, merge_groups
from utils.ops.boxes import clip_boxes, xyxy2xywh
from utils.ops.nms import non_max_suppression
from utils.torch_utils import time_sync

Predict = Callable[[torch.Tensor], torch.Tensor]  # (b, 3, s, s) float [0, 1] -> (b, N, 5 + nc) input px xywh
PAD = 114 / 255  # letterbox grey, as a [0, 1] value


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets (px) of tiles of ``size`` along an axis of ``length`` px, consecutive tiles overlapping by
    ``overlap`` of ``size``; the last tile ends at ``length`` (one start, 0, when ``length <= size``)."""
    if length <= size:
        return [0]
    step = max(1, int(round(size * (1 - overlap))))
    starts = list(range(0, length - size, step))
    return starts + [length - size]


def make_tiles(height: int, width: int, size: int, overlap: float = 0.2) -> np.ndarray:
    """(n, 4) int64 tiles ``[x0, y0, x1, y1]`` (original px) covering a ``height`` x ``width`` image, row-major.

    Raises ValueError for a non-positive ``size``/image or an ``overlap`` outside [0, 1).
    """
    if int(size) < 1:
        raise UsageError(f"slice size must be a positive number of pixels, got {size}")
    if not 0 <= overlap < 1:
        raise UsageError(f"slice overlap must be a fraction in [0, 1), got {overlap}")
    if height < 1 or width < 1:
        raise UsageError(f"cannot tile an empty image of {height}x{width} px")
    ys, xs = tile_starts(height, size, overlap), tile_starts(width, size, overlap)
    return np.array([[x, y, min(x + size, width), min(y + size, height)] for y in ys for x in xs], dtype=np.int64)


def cut_flags(boxes: torch.Tensor, tile: np.ndarray | tuple, img_hw: tuple[int, int], margin: float) -> torch.Tensor:
    """(n,) bool: which ``boxes`` (n, 4) xyxy original px lie within ``margin`` px of an interior edge of ``tile``
    ``[x0, y0, x1, y1]`` (an edge that is not a border of the ``img_hw`` = (h, w) image)."""
    x0, y0, x1, y1 = (float(v) for v in tile)
    h, w = img_hw
    cut = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + margin
    if x1 < w:
        cut |= boxes[:, 2] >= x1 - margin
    if y1 < h:
        cut |= boxes[:, 3] >= y1 - margin
    return cut


def merge_detections(dets: torch.Tensor, cut: torch.Tensor, iou_thres: float = 0.45, ios_thres: float = 0.6,
                     agnostic: bool = False, chunk: int = 1024) -> torch.Tensor:
    """Indices of the detections kept when merging tiles (see the module docstring).

    Args:
        dets: (n, 6) ``[x1, y1, x2, y2, conf, cls]`` original px, from all tiles.
        cut: (n,) bool, the box touches an interior edge of its tile.
        iou_thres: NMS IoU threshold; ios_thres: share of a cut box's area a larger box must cover to drop it.
        chunk: cut boxes compared with all boxes this many at a time (bounds memory to chunk x n).
    Returns:
        (k,) long indices into ``dets``, by decreasing confidence.
    """
    idx = drop_cut_fragments(dets, cut, ios_thres, agnostic, chunk)
    boxes, cls = dets[:, :4], dets[:, 5]
    if agnostic:
        keep = torchvision.ops.nms(boxes[idx], dets[idx, 4], iou_thres)
    else:
        keep = torchvision.ops.batched_nms(boxes[idx], dets[idx, 4], cls[idx].long(), iou_thres)
    return idx[keep]


def drop_cut_fragments(dets: torch.Tensor, cut: torch.Tensor, ios_thres: float = 0.6, agnostic: bool = False,
                       chunk: int = 1024) -> torch.Tensor:
    """Step 1 of the merge: (k,) long indices of ``dets`` (n, 6) left once every ``cut`` box covered to at least
    ``ios_thres`` of its area by a larger box of the same class (any class with ``agnostic``) is dropped."""
    n = len(dets)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=dets.device)
    boxes, cls = dets[:, :4], dets[:, 5]
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    alive = torch.ones(n, dtype=torch.bool, device=dets.device)
    cut_idx = cut.nonzero().view(-1)
    for s in range(0, len(cut_idx), chunk):
        ci = cut_idx[s:s + chunk]
        lt = torch.maximum(boxes[ci, None, :2], boxes[None, :, :2])
        rb = torch.minimum(boxes[ci, None, 2:], boxes[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(2)  # (c, n)
        ios = inter / area[ci, None].clamp(min=1e-9)
        covers = (ios >= ios_thres) & (area[None, :] > area[ci, None])
        if not agnostic:
            covers &= cls[ci, None] == cls[None, :]
        alive[ci[covers.any(1)]] = False
    return alive.nonzero().view(-1)


def merge_tiles(dets: torch.Tensor, cut: torch.Tensor, iou_thres: float = 0.45, ios_thres: float = 0.6,
                agnostic: bool = False, merge: str = "nms", match: str = "iou", match_thres: float | None = None,
                nwd_c: float = NWD_C) -> torch.Tensor:
    """The tiles' detections (n, 6) ``[x1, y1, x2, y2, conf, cls]`` original px merged into (k, 6), by decreasing
    confidence: cut fragments dropped (step 1), then ``merge`` ('nms', 'nmm', 'greedy-nmm') on ``match`` ('iou',
    'ios', 'nwd') at ``match_thres`` (default ``iou_thres``). 'nms' on 'iou' is :func:`merge_detections`."""
    check_choice("slice merge", merge, MERGE_METHODS)
    thres = iou_thres if match_thres is None else match_thres
    if merge == "nms" and match == "iou":
        return dets[merge_detections(dets, cut, thres, ios_thres, agnostic)]
    idx = drop_cut_fragments(dets, cut, ios_thres, agnostic)
    d = dets[idx]
    if merge == "nms":
        return d[greedy_nms(d[:, :4], d[:, 4], thres, match, None if agnostic else d[:, 5], nwd_c)]
    groups = merge_groups(d, thres, match, greedy=merge == "greedy-nmm", agnostic=agnostic, nwd_c=nwd_c)
    return merge_boxes(d, groups, thres, match, nwd_c)


def _run_tiles(tiles: np.ndarray, views: list[bool], load: Callable[[int], tuple[torch.Tensor, float, tuple]],
               predict: Predict, img_hw: tuple[int, int], batch: int, nms: dict, margin: float,
               times: list[float] | None, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``predict`` on the tiles in chunks of ``batch``; return (dets (n, 6) original px, cut (n,) bool).

    ``load(i)`` -> (tile i at the model size as a (3, s, s) uint8 tensor (0-255) or float tensor (0-1), gain,
    (padw, padh)) as letterbox gives; batches are moved to ``device`` and made float [0, 1].
    ``views[i]`` is True for the whole-image view (never cut). ``times`` (pre-process, inference, NMS) seconds are
    accumulated when given.
    """
    if batch < 1:
        raise UsageError(f"slice batch must be >= 1, got {batch}")
    dets, cuts = [], []
    for s in range(0, len(tiles), batch):
        t0 = time_sync()
        loaded = [load(i) for i in range(s, min(s + batch, len(tiles)))]
        x = torch.stack([t for t, _, _ in loaded]).to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        t1 = time_sync()
        pred = predict(x)
        t2 = time_sync()
        out = non_max_suppression(pred, **nms)
        for k, (d, (_, gain, pad)) in enumerate(zip(out, loaded)):
            i = s + k
            x0, y0, x1, y1 = (int(v) for v in tiles[i])
            d = d.float().clone()  # tile input px -> original px, not clipped (NMS saw unclipped boxes)
            d[:, [0, 2]] = (d[:, [0, 2]] - pad[0]) / gain + x0
            d[:, [1, 3]] = (d[:, [1, 3]] - pad[1]) / gain + y0
            dets.append(d)
            cuts.append(torch.zeros(len(d), dtype=torch.bool, device=d.device) if views[i]
                        else cut_flags(d[:, :4], tiles[i], img_hw, margin / gain))
        t3 = time_sync()
        if times is not None:
            times[0] += t1 - t0
            times[1] += t2 - t1
            times[2] += t3 - t2
    return torch.cat(dets), torch.cat(cuts)


def sliced_detect(image: np.ndarray, predict: Predict, imgsz: int, slice_size: int, overlap: float = 0.2,
                  full: bool = False, batch: int = 8, conf_thres: float = 0.25, iou_thres: float = 0.45,
                  classes: list[int] | None = None, agnostic: bool = False, max_det: int = 300,
                  ios_thres: float = 0.6, margin: float = 2.0, device: torch.device | str = "cpu",
                  times: list[float] | None = None, nms: str = "iou", merge: str = "nms", match: str | None = None,
                  match_thres: float | None = None, nwd_c: float = NWD_C) -> torch.Tensor:
    """Detections in a large HWC uint8 BGR ``image`` by sliced inference.

    Each tile of ``slice_size`` original px is letterboxed to ``imgsz`` x ``imgsz`` input px (plus the whole image
    when ``full``), run through ``predict`` ``batch`` tiles at a time, NMS'd per tile and merged (module docstring).
    ``margin``: input px from an interior tile edge within which a box counts as cut. ``nms``: the per-tile NMS
    ('iou' or 'nwd'); ``merge``/``match``/``match_thres``: the cross-tile merge (``merge_tiles``; ``match``
    defaults to ``nms``'s metric, ``match_thres`` to ``iou_thres``). Returns (k, 6)
    ``[x1, y1, x2, y2, conf, cls]`` in original px, at most ``max_det``, by decreasing confidence.
    """
    h, w = image.shape[:2]
    tiles = make_tiles(h, w, slice_size, overlap)
    views = [False] * len(tiles)
    if full:
        tiles = np.concatenate((tiles, np.array([[0, 0, w, h]], dtype=np.int64)))
        views.append(True)

    def load(i: int) -> tuple[torch.Tensor, float, tuple]:
        x0, y0, x1, y1 = tiles[i]
        im, ratio, pad = letterbox(image[y0:y1, x0:x1], imgsz, auto=False)
        return torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])), ratio[0], pad

    per_tile = {"conf_thres": conf_thres, "iou_thres": iou_thres, "classes": classes, "agnostic": agnostic,
                "max_det": max_det, "method": nms, "nwd_c": nwd_c}
    dets, cut = _run_tiles(tiles, views, load, predict, (h, w), batch, per_tile, margin, times, device)
    t = time_sync()
    out = merge_tiles(dets, cut, iou_thres, ios_thres, agnostic, merge, match or nms, match_thres, nwd_c)[:max_det]
    clip_boxes(out[:, :4], (h, w))
    if times is not None:
        times[2] += time_sync() - t
    return out


def sliced_predictions(im: torch.Tensor, predict: Predict, slice_size: int, overlap: float = 0.2,
                       tile_imgsz: int | None = None, full: bool = False, batch: int = 8, stride: int = 32,
                       conf_thres: float = 0.001, iou_thres: float = 0.6, multi_label: bool = True,
                       ios_thres: float = 0.6, margin: float = 2.0, max_det: int = 300, nms: str = "iou",
                       merge: str = "nms", match: str | None = None, match_thres: float | None = None,
                       nwd_c: float = NWD_C) -> torch.Tensor:
    """Sliced inference on a batch of network inputs, returned in the model's raw output format (for val.py).

    Args:
        im: (bs, 3, H, W) float [0, 1] inputs; tiles of ``slice_size`` px of it are resized to ``tile_imgsz``
            (default: ``slice_size`` rounded up to a multiple of ``stride``, i.e. no resize) and padded square.
        conf_thres, iou_thres, multi_label, max_det, nms, nwd_c: the per-tile NMS and the merge (defaults:
            val.py's); merge, match, match_thres: the cross-tile merge, as ``sliced_detect``.
    Returns:
        (bs, N, 5 + nc) rows ``[x, y, w, h (pixels of im, unclipped), obj = conf, one-hot class]``: each merged
        detection becomes one row, so ``non_max_suppression`` on it returns the merged detections again. Rows of
        images with fewer detections are zero (objectness 0, filtered by any conf threshold).
    """
    bs, _, h, w = im.shape
    s = tile_imgsz or int(np.ceil(min(slice_size, max(h, w)) / stride) * stride)
    tiles = make_tiles(h, w, slice_size, overlap)
    views = [False] * len(tiles) + ([True] if full else [])
    if full:
        tiles = np.concatenate((tiles, np.array([[0, 0, w, h]], dtype=np.int64)))
    per_tile = {"conf_thres": conf_thres, "iou_thres": iou_thres, "multi_label": multi_label, "max_det": max_det,
                "method": nms, "nwd_c": nwd_c}
    rows, nc = [], None
    for b in range(bs):
        def load(i: int, b: int = b) -> tuple[torch.Tensor, float, tuple]:
            x0, y0, x1, y1 = (int(v) for v in tiles[i])
            return _letterbox_tensor(im[b, :, y0:y1, x0:x1], s)

        def run(x: torch.Tensor) -> torch.Tensor:
            nonlocal nc
            p = predict(x)
            nc = p.shape[2] - 5
            return p

        dets, cut = _run_tiles(tiles, views, load, run, (h, w), batch, per_tile, margin, None, im.device)
        rows.append(merge_tiles(dets, cut, iou_thres, ios_thres, False, merge, match or nms, match_thres, nwd_c))
    n = max(len(r) for r in rows)
    out = torch.zeros((bs, n, 5 + nc), device=im.device)
    for b, d in enumerate(rows):
        out[b, :len(d), :4] = xyxy2xywh(d[:, :4])
        out[b, :len(d), 4] = d[:, 4]
        out[b, torch.arange(len(d), device=im.device), 5 + d[:, 5].long()] = 1.0
    return out


def _letterbox_tensor(x: torch.Tensor, size: int) -> tuple[torch.Tensor, float, tuple[float, float]]:
    """(3, h, w) float -> (3, size, size) resized keeping the aspect ratio (bilinear) and padded with grey,
    centred as ``letterbox`` does; returns (image, gain, (padw, padh))."""
    h, w = x.shape[1:]
    r = min(size / h, size / w)
    nh, nw = int(round(h * r)), int(round(w * r))
    if (nh, nw) != (h, w):
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    dw, dh = (size - nw) / 2, (size - nh) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    out = torch.full((x.shape[0], size, size), PAD, dtype=x.dtype, device=x.device)
    out[:, top:top + nh, left:left + nw] = x
    return out, r, (dw, dh)
