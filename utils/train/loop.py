"""Small helpers of the training loop: early stopping, weight transfer, the non-finite loss guard, multi-scale
batches; and, for --evolve's loop of trials, Optuna's traceback of a Ctrl-C kept off the screen."""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Iterator
from pathlib import Path

import torch

LOGGER = logging.getLogger(__name__)
OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"  # the logger of Optuna's 'Trial N failed ...' warnings


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


class _NoInterruptTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


@contextlib.contextmanager
def quiet_interrupted_trials() -> Iterator[None]:
    """Within the block, Optuna does not log 'Trial N failed ... KeyboardInterrupt' with its traceback (~50 lines):
    after Ctrl-C the user gets one line saying how to continue the study. Other failures are logged as before."""
    log, quiet = logging.getLogger(OPTUNA_TRIAL_LOGGER), _NoInterruptTraceback()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)
