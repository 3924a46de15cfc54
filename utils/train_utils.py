"""Small pure helpers of the training loop: run folders, schedules, warmup, early stopping, weight transfer."""

from __future__ import annotations

import logging
import math
import random
import re
from pathlib import Path

import numpy as np
import torch

LOGGER = logging.getLogger("tinyfocal")
NOMINAL_BATCH = 64  # YOLOv5 accumulates gradients up to this batch size and scales weight decay to it


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """``runs/train/exp`` -> ``runs/train/exp2``, ``exp3``, ... the first that does not exist (or ``path`` itself
    when it does not exist or ``exist_ok``)."""
    path = Path(path)
    if path.exists() and not exist_ok:
        stem = re.sub(r"\d+$", "", path.name)
        n = 2
        while (path.parent / f"{stem}{n}").exists():
            n += 1
        path = path.parent / f"{stem}{n}"
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def lr_factor(epoch: float, epochs: int, lrf: float, cos: bool = False) -> float:
    """Learning-rate multiplier at ``epoch``: 1 at the start, ``lrf`` at the end.

    Linear decay (YOLOv5's default) or a half cosine ("one cycle" without the ramp-up: warmup does that).
    """
    if cos:
        return ((1 - math.cos(epoch * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return (1 - epoch / epochs) * (1.0 - lrf) + lrf


def warmup_values(ni: int, nw: int, epoch_lr: list[float], warmup_bias_lr: float, warmup_momentum: float,
                  momentum: float) -> tuple[list[float], float]:
    """Learning rates per parameter group and momentum at iteration ``ni`` of a warmup of ``nw`` iterations.

    Group 0 holds the biases, whose rate falls from ``warmup_bias_lr``; the others rise from 0; every group ends
    at its scheduled rate ``epoch_lr`` (YOLOv5 v7.0's linear interpolation).
    """
    xi = [0, nw]
    lrs = [float(np.interp(ni, xi, [warmup_bias_lr if j == 0 else 0.0, lr])) for j, lr in enumerate(epoch_lr)]
    return lrs, float(np.interp(ni, xi, [warmup_momentum, momentum]))


def warmup_accumulate(ni: int, nw: int, batch_size: int) -> int:
    """Gradient-accumulation steps at iteration ``ni``: grows from 1 to NOMINAL_BATCH / batch_size over warmup."""
    return max(1, int(np.interp(ni, [0, nw], [1, NOMINAL_BATCH / batch_size]).round()))


class EarlyStopping:
    """Stop when fitness has not improved for ``patience`` epochs (0 or less: never)."""

    def __init__(self, patience: int = 30) -> None:
        self.best_fitness, self.best_epoch = 0.0, 0
        self.patience = patience if patience > 0 else math.inf

    def __call__(self, epoch: int, fitness: float) -> bool:
        if fitness >= self.best_fitness:
            self.best_epoch, self.best_fitness = epoch, fitness
        stop = (epoch - self.best_epoch) >= self.patience
        if stop:
            LOGGER.info(f"Stopping early: no improvement in the last {self.patience} epochs "
                        f"(best at epoch {self.best_epoch}); --patience 0 disables early stopping.")
        return stop


def transfer_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                     exclude: tuple[str, ...] = ()) -> tuple[int, int]:
    """Copy every tensor of ``state_dict`` whose key and shape match ``model``'s (keys containing any ``exclude``
    string are skipped). Returns (transferred, total tensors in the model)."""
    own = model.state_dict()
    keep = {k: v for k, v in state_dict.items()
            if k in own and v.shape == own[k].shape and not any(x in k for x in exclude)}
    model.load_state_dict(keep, strict=False)
    return len(keep), len(own)


class NonFiniteGuard:
    """Counts non-finite losses: each one skips its step; ``limit`` in a row stops the run naming the images."""

    def __init__(self, limit: int = 10) -> None:
        self.limit, self.in_row, self.total = limit, 0, 0

    def check(self, loss: torch.Tensor, paths: list[str] | tuple[str, ...]) -> bool:
        """True when ``loss`` is finite (take the step); False to skip it. Raises after ``limit`` in a row."""
        if torch.isfinite(loss).all():
            self.in_row = 0
            return True
        self.in_row += 1
        self.total += 1
        names = ", ".join(Path(p).name for p in paths[:8]) + (" ..." if len(paths) > 8 else "")
        LOGGER.warning(f"non-finite loss ({loss.detach().flatten().tolist()}) on images [{names}]: step skipped "
                       f"({self.in_row} in a row, {self.total} in total)")
        if self.in_row >= self.limit:
            raise FloatingPointError(f"{self.limit} non-finite losses in a row, last batch: {list(paths)}. "
                                     "Lower lr0, check these images' labels, or disable AMP.")
        return False


def multi_scale_size(imgsz: int, stride: int, rng: random.Random) -> int:
    """YOLOv5's ``--multi-scale`` size for one batch: uniform in [0.5, 1.5] x ``imgsz`` (input px), rounded down to
    a multiple of ``max(stride, 32)``. ``rng`` is Python's seeded ``random`` so a resumed run draws the same sizes."""
    gs = max(int(stride), 32)
    return max(rng.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + gs) // gs * gs, gs)


def rescale_batch(imgs: torch.Tensor, size: int, stride: int = 32) -> torch.Tensor:
    """Resize a (bs, 3, h, w) batch so its long side is ``size`` px, both sides multiples of ``max(stride, 32)``,
    bilinear as YOLOv5. Labels are normalised, so they need no change."""
    h, w = imgs.shape[2:]
    sf = size / max(h, w)
    if sf == 1:
        return imgs
    gs = max(int(stride), 32)
    shape = [math.ceil(x * sf / gs) * gs for x in (h, w)]
    return torch.nn.functional.interpolate(imgs, size=shape, mode="bilinear", align_corners=False)
