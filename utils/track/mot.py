"""MOTChallenge text files: one row per tracked box, ``frame,id,bb_left,bb_top,bb_width,bb_height,conf,x,y,z``.

Frames are numbered from 1; ``bb_left``/``bb_top`` follow MOTChallenge's 1-based pixel convention (the left edge
of the first pixel column is 1), so a box with xyxy original px (x1, y1, x2, y2) is written as
``x1 + 1, y1 + 1, x2 - x1, y2 - y1``. Prediction files end with ``-1,-1,-1``; ground truth written here carries
``1,class,visibility`` instead (MOT16+ layout: consider flag, class, visibility).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.atomic import atomic_write_text
from utils.errors import UserError


class MotFileError(UserError):
    """A MOTChallenge file that cannot be read; the message names the file and the line."""


def mot_rows(frame: int, ids: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> list[str]:
    """Prediction lines of one frame: the detections with an ID >= 0 (``ids`` (n,), ``boxes`` (n, 4) xyxy original
    px, ``scores`` (n,))."""
    out = []
    for i, b, s in zip(ids, boxes, scores):
        if i >= 0:
            out.append(f"{frame},{int(i)},{b[0] + 1:.2f},{b[1] + 1:.2f},{b[2] - b[0]:.2f},{b[3] - b[1]:.2f},"
                       f"{float(s):.4f},-1,-1,-1")
    return out


def gt_rows(frame: int, ids: np.ndarray, boxes: np.ndarray, classes: np.ndarray, visibility: np.ndarray) -> list[str]:
    """Ground-truth lines of one frame (MOT16+ columns: consider flag 1, class, visibility)."""
    return [f"{frame},{int(i)},{b[0] + 1:.2f},{b[1] + 1:.2f},{b[2] - b[0]:.2f},{b[3] - b[1]:.2f},1,{int(c)},{v:.3f}"
            for i, b, c, v in zip(ids, boxes, classes, visibility)]


def write_mot(path: str | Path, lines: list[str]) -> Path:
    """Write MOT lines atomically (an empty file when there are none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))
    return path


def read_mot(path: str | Path) -> np.ndarray:
    """(n, 7) float64 ``[frame, id, x1, y1, x2, y2, conf]`` original px (0-based, as xyxy) from a MOTChallenge file;
    a malformed line raises MotFileError naming the file and line."""
    rows = []
    for k, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            v = [float(x) for x in line.replace(" ", "").split(",")[:7]]
        except ValueError:
            raise MotFileError(f"{path}:{k}: not a MOTChallenge row (numbers separated by commas)") from None
        if len(v) < 6 or not np.isfinite(v).all() or v[4] < 0 or v[5] < 0:
            raise MotFileError(f"{path}:{k}: expected frame,id,left,top,width,height[,conf,...]")
        f, i, x, y, w, h = v[:6]
        rows.append([f, i, x - 1, y - 1, x - 1 + w, y - 1 + h, v[6] if len(v) > 6 else 1.0])
    return np.array(rows, np.float64).reshape(-1, 7)


__all__ = ["MotFileError", "gt_rows", "mot_rows", "read_mot", "write_mot"]
