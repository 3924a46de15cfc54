"""Labels lost to augmentation, per size bucket, counted while the data loader works and read once per epoch.

``random_perspective`` drops a warped box when a side is <= ``aug_min_side`` (YOLOv5: 2 px), when it keeps under
10 % of its area, or when its aspect ratio passes 100. With ``scale: 0.5`` a 4-px object is shrunk to 2 px at the
smallest gain, and vanishes from training without a word. Counted here: among the boxes the warp left wholly
inside the output image (not those cropped away by the mosaic or the translation, which every run loses by
design, nor labels the mosaic already clipped to zero width), how many were dropped, per size bucket of the box
*before* the warp, in input px at scale 1 (the loaded image, long side = ``imgsz``). Buckets are AI-TOD's sides
0-8-16-32-64-inf px; "tiny" for the warning means a side under 16 px (AI-TOD's very tiny and tiny).

Counts live in shared memory, one row per process (row 0 the main process, row k + 1 DataLoader worker k), so
forked or spawned workers add to them without locks and the trainer reads the epoch's total after the loader is
exhausted (workers are re-created every epoch). Under DDP each rank counts its own share; rank 0 logs its own.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import get_worker_info

from utils.config.protocols import AITOD_NAMES, AITOD_SIDES

TINY_SIDE = 16.0  # px: the warning's "tiny" ground truths (AI-TOD's very_tiny + tiny)
WARN_FRACTION = 0.05  # warn when more than this share of the tiny ground truths is lost in an epoch
SLOTS = 65  # rows of the shared counts: the main process + up to 64 DataLoader workers


def size_bucket(area: np.ndarray) -> np.ndarray:
    """(n,) areas in px² -> (n,) int bucket index into ``AITOD_NAMES`` by side sqrt(area)."""
    side = np.sqrt(np.maximum(np.asarray(area, dtype=np.float64), 0.0))
    return np.searchsorted(np.asarray(AITOD_SIDES[1:-1]), side, side="right")


class AugLossCounter:
    """Callable handed to ``random_perspective(on_boxes=...)``; ``take()`` returns and clears the counts."""

    def __init__(self) -> None:
        self.counts = torch.zeros((SLOTS, len(AITOD_NAMES), 2), dtype=torch.int64).share_memory_()  # seen, lost

    def __call__(self, area: np.ndarray, inside: np.ndarray, kept: np.ndarray) -> None:
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (SLOTS - 1)
        b = size_bucket(area)
        nb = len(AITOD_NAMES)
        inside = inside & (area > 0)  # the mosaic clips labels of images it cut off to zero width: already gone
        seen = np.bincount(b[inside], minlength=nb)
        lost = np.bincount(b[inside & ~kept], minlength=nb)
        self.counts[slot] += torch.from_numpy(np.stack((seen, lost), 1))

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """(seen (B,), lost (B,)) summed over processes since the last call, then reset to zero."""
        total = self.counts.sum(0).numpy().copy()
        self.counts.zero_()
        return total[:, 0], total[:, 1]


def tiny_share(seen: np.ndarray, lost: np.ndarray) -> tuple[int, int, float]:
    """(tiny seen, tiny lost, lost share or nan) over the buckets below ``TINY_SIDE``."""
    tiny = np.asarray(AITOD_SIDES[1:]) <= TINY_SIDE
    s, lo = int(seen[tiny].sum()), int(lost[tiny].sum())
    return s, lo, lo / s if s else math.nan


def lost_row(seen: np.ndarray, lost: np.ndarray) -> dict[str, float]:
    """results.csv / TensorBoard keys of one epoch: ``aug/lost/<bucket>`` counts and ``aug/tiny_lost_frac``."""
    row = {f"aug/lost/{n}": float(v) for n, v in zip(AITOD_NAMES, lost)}
    row["aug/tiny_lost_frac"] = tiny_share(seen, lost)[2]
    return row


def lost_warning(seen: np.ndarray, lost: np.ndarray, scale: float, min_side: float, epoch: int) -> str | None:
    """One warning line when more than ``WARN_FRACTION`` of the tiny ground truths were lost, else None."""
    s, lo, frac = tiny_share(seen, lost)
    if not s or frac <= WARN_FRACTION:
        return None
    smallest = max(1 - scale, 0.0)
    return (f"augmentation dropped {frac:.1%} of the tiny labels (side < {TINY_SIDE:g} px) in epoch {epoch} "
            f"({lo} of {s} inside the image): 'scale' {scale:g} shrinks boxes down to x{smallest:g} and "
            f"'aug_min_side' {min_side:g} px drops those with a side <= it; lower 'scale' or 'aug_min_side' "
            "(hyp file or --hyp-set)")


__all__ = ["AugLossCounter", "TINY_SIDE", "WARN_FRACTION", "lost_row", "lost_warning", "size_bucket", "tiny_share"]
