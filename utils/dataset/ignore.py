"""Ignore areas: image regions that are neither objects nor background (VisDrone's "ignored regions", TinyPerson's
``ignore`` boxes, COCO-style ``iscrowd`` boxes).

File format: beside an image's label file ``labels/{split}/NAME.txt`` an optional ``labels/{split}/NAME.ignore.txt``
holds one area per line, ``x1 y1 x2 y2`` (corners, **normalised** to [0, 1] by the image width/height). No file
means no ignore areas. The dataset converters (``data/convert.py``) write these files only for images that have
areas.

Uses (the training/validation hookup calls these pure functions):
- training fills the areas with the letterbox grey before augmentation (``fill_ignore``), so their pixels are
  neither positives nor negatives;
- validation does not count a detection whose centre lies in an area as a false positive (``centres_in_areas``),
  as the VisDrone and TinyPerson evaluation protocols do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError

IGNORE_SUFFIX = ".ignore.txt"
COORD_TOL = 1e-3  # normalised coordinates in [-tol, 1 + tol] are clipped; further out is an error (as labels.py)


class IgnoreFileError(UserError):
    """An ignore-area file is malformed; the message names the file and the line."""


def ignore_file_for(label_file: str | Path) -> Path:
    """``labels/train/NAME.txt`` -> ``labels/train/NAME.ignore.txt`` (the ignore-area file of that label file)."""
    p = Path(label_file)
    return p.with_name(p.stem + IGNORE_SUFFIX)


def load_ignore(path: str | Path) -> np.ndarray:
    """Read an ignore-area file. Returns (m, 4) float32 ``x1 y1 x2 y2`` **normalised**; (0, 4) when the file is
    absent or empty. Blank lines and ``#`` comments are skipped.

    Raises IgnoreFileError naming the file and the 1-based line for a row that is not 4 numbers, lies outside
    [0, 1] by more than ``COORD_TOL``, or has x2 <= x1 or y2 <= y1 (after clipping).
    """
    p = Path(path)
    if not p.is_file():
        return np.zeros((0, 4), np.float32)
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        s = line.split("#", 1)[0].split()
        if not s:
            continue
        try:
            v = [float(x) for x in s]
        except ValueError:
            raise IgnoreFileError(f"{p}: line {i}: expected 4 numbers 'x1 y1 x2 y2', got {line.strip()!r}") from None
        if len(v) != 4 or not all(np.isfinite(v)):
            raise IgnoreFileError(f"{p}: line {i}: expected 4 finite numbers 'x1 y1 x2 y2', got {line.strip()!r}")
        if min(v) < -COORD_TOL or max(v) > 1 + COORD_TOL:
            raise IgnoreFileError(f"{p}: line {i}: coordinates must be normalised to [0, 1], got {line.strip()!r}")
        x1, y1, x2, y2 = np.clip(v, 0.0, 1.0)
        if x2 <= x1 or y2 <= y1:
            raise IgnoreFileError(f"{p}: line {i}: empty area (need x1 < x2 and y1 < y2), got {line.strip()!r}")
        rows.append((x1, y1, x2, y2))
    return np.array(rows, np.float32).reshape(-1, 4)


def format_ignore(boxes: np.ndarray, decimals: int = 6) -> str:
    """Text of an ignore-area file for (m, 4) normalised ``x1 y1 x2 y2`` boxes (one line each)."""
    return "".join(" ".join(f"{v:.{decimals}f}" for v in b) + "\n" for b in np.asarray(boxes, np.float64))


def write_ignore(path: str | Path, boxes: np.ndarray) -> bool:
    """Write (m, 4) normalised ``x1 y1 x2 y2`` areas to ``path``; with m == 0 remove the file instead (no file means
    no areas). Returns True when a file was written."""
    p = Path(path)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
        p.unlink(missing_ok=True)
        return False
    p.write_text(format_ignore(boxes), encoding="utf-8")
    return True


def to_pixels(boxes: np.ndarray, w: float, h: float) -> np.ndarray:
    """(m, 4) normalised ``x1 y1 x2 y2`` -> pixels of an image of width ``w`` and height ``h`` (float32)."""
    return (np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([w, h, w, h], np.float32)).astype(np.float32)


def fill_ignore(img: np.ndarray, boxes_px: np.ndarray, value: int = 114) -> np.ndarray:
    """Fill ignore areas of ``img`` (H, W) or (H, W, C) with ``value`` **in place** and return it.

    ``boxes_px`` (m, 4) ``x1 y1 x2 y2`` in pixels of ``img``. Every pixel the area touches is filled (columns
    floor(x1) .. ceil(x2) - 1, likewise rows), so no sliver of an ignored object survives; areas are clipped to the
    image. 114 is the letterbox grey of YOLOv5.
    """
    h, w = img.shape[:2]
    for x1, y1, x2, y2 in np.asarray(boxes_px, np.float64).reshape(-1, 4):
        c1, c2 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), w)
        r1, r2 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), h)
        if c2 > c1 and r2 > r1:
            img[r1:r2, c1:c2] = value
    return img


def centres_in_areas(pred_xyxy: torch.Tensor | np.ndarray,
                     areas: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Which boxes have their centre inside any area (borders included).

    Args:
        pred_xyxy: (N, 4) boxes ``x1 y1 x2 y2``; areas: (M, 4) ``x1 y1 x2 y2`` in the same units (e.g. original px).
    Returns:
        (N,) bool, of the type of ``pred_xyxy`` (torch tensor on its device, or numpy array). All False when M == 0.
    """
    if isinstance(pred_xyxy, torch.Tensor):
        a = torch.as_tensor(areas, dtype=pred_xyxy.dtype, device=pred_xyxy.device).reshape(-1, 4)
        c = (pred_xyxy[:, :2] + pred_xyxy[:, 2:4]) / 2  # (N, 2)
        inside = (c[:, None, 0] >= a[None, :, 0]) & (c[:, None, 0] <= a[None, :, 2]) & \
                 (c[:, None, 1] >= a[None, :, 1]) & (c[:, None, 1] <= a[None, :, 3])  # (N, M)
        return inside.any(1) if a.shape[0] else torch.zeros(len(pred_xyxy), dtype=torch.bool, device=c.device)
    p = np.asarray(pred_xyxy, np.float64).reshape(-1, 4)
    a = np.asarray(areas, np.float64).reshape(-1, 4)
    c = (p[:, :2] + p[:, 2:4]) / 2
    inside = (c[:, None, 0] >= a[None, :, 0]) & (c[:, None, 0] <= a[None, :, 2]) & \
             (c[:, None, 1] >= a[None, :, 1]) & (c[:, None, 1] <= a[None, :, 3])
    return inside.any(1) if len(a) else np.zeros(len(p), bool)


__all__ = ["IGNORE_SUFFIX", "IgnoreFileError", "centres_in_areas", "fill_ignore", "format_ignore", "ignore_file_for",
           "load_ignore", "to_pixels", "write_ignore"]
