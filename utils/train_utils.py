"""Small pure helpers of the training loop: run folders and their lock, option checks, schedules, warmup, early
stopping, weight transfer, the non-finite loss guard and the share of training images skipped as corrupt."""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import re
import socket
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from utils.cli import UsageError, check_args
from utils.dataset_yaml import DatasetError

LOGGER = logging.getLogger(__name__)
NOMINAL_BATCH = 64  # YOLOv5 accumulates gradients up to this batch size and scales weight decay to it
SKIP_LIMIT = 0.1  # share of a split's images skipped as corrupt above which training stops (--allow-skipped: go on)
LOCK_NAME = "run.lock"  # in the run folder while a training process writes to it: "<pid> <host>"
CACHE_MODES = ("ram", "disk")


class RunLockError(ValueError):
    """The run folder is in use by another live training process; the message names the lock file."""


# --- run folders ----------------------------------------------------------------------------------------------------
def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """``path`` itself when it does not exist (or ``exist_ok``), else the first free numbered sibling.

    The user's name is never changed, only extended (YOLOv5's ``exp`` -> ``exp2``, but with a separator when the
    name ends in a digit, so its digits stay readable): ``exp`` -> ``exp2``, ``exp3``, ...; ``seed1`` -> ``seed1-2``,
    ``seed1-3``, ...; ``lr0.01`` -> ``lr0.01-2``.
    """
    path = Path(path)
    if path.exists() and not exist_ok:
        sep = "-" if path.name[-1:].isdigit() else ""
        n = 2
        while (path.parent / f"{path.name}{sep}{n}").exists():
            n += 1
        path = path.parent / f"{path.name}{sep}{n}"
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _pid_alive(pid: int) -> bool:
    """True when process ``pid`` runs on this machine (a zombie, killed but not yet reaped, counts as dead).
    Windows cannot be asked without side effects (signal 0 is CTRL_C_EVENT there): always True."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS, Windows): trust kill(0)
        return True


def lock_holder(folder: str | Path) -> str | None:
    """Who holds ``folder``'s run lock (``"pid 123"``), or None when there is no lock or it is stale: left by a dead
    process of this machine, or by this very process. An unreadable lock or one from another host counts as held
    (its process cannot be checked from here)."""
    path = Path(folder) / LOCK_NAME
    try:
        fields = path.read_text().split()
    except FileNotFoundError:
        return None
    except OSError:
        return "an unknown process"
    if len(fields) != 2 or not fields[0].isdigit():
        return "an unknown process"
    pid, host = int(fields[0]), fields[1]
    if host != socket.gethostname():
        return f"pid {pid} on host {host}"
    return f"pid {pid}" if pid != os.getpid() and _pid_alive(pid) else None


def check_run_lock(folder: str | Path) -> None:
    """Raise RunLockError when a live process holds ``folder``'s run lock (checked before any work is done)."""
    holder = lock_holder(folder)
    if holder:
        raise RunLockError(f"{Path(folder) / LOCK_NAME}: the run folder is in use by another training process "
                           f"({holder}); choose another --name, or delete the lock file if no run uses the folder")


def acquire_run_lock(folder: str | Path) -> Path:
    """Create ``folder/run.lock`` holding this process's pid, atomically (O_EXCL): two runs given the same folder
    can never both write to it. A stale lock (dead pid) is taken over with a warning. Returns the lock's path;
    :func:`release_run_lock` removes it. Raises RunLockError when a live process holds it."""
    path = Path(folder) / LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            check_run_lock(folder)
            LOGGER.warning(f"{path}: taking over the stale lock of a process that is no longer running")
            # two runs taking over the same stale lock at the same instant could both get here; the retry's O_EXCL
            # then lets only one of them create the new lock
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return path
    check_run_lock(folder)
    raise RunLockError(f"{path}: could not take the run lock; another run is starting in this folder")


def release_run_lock(path: Path | None) -> None:
    """Remove a lock taken by :func:`acquire_run_lock`, if it still holds this process's pid."""
    try:
        mine = path is not None and path.read_text().split()[:1] == [str(os.getpid())]
    except OSError:
        return
    if mine:
        path.unlink(missing_ok=True)


# --- options --------------------------------------------------------------------------------------------------------
def validate_options(opt: argparse.Namespace) -> None:
    """Check train.py's options that argparse cannot (ranges, optional values) before any work is done.
    Raises UsageError naming the flag."""
    check_args(epochs=(opt.epochs >= 1, f"must be >= 1, got {opt.epochs}"),
               batch_size=(opt.batch_size >= 1 or opt.batch_size == -1,
                           f"must be >= 1, or -1 for AutoBatch (CUDA), got {opt.batch_size}"),
               imgsz=(opt.imgsz >= 1, f"must be >= 1 px, got {opt.imgsz}"),
               nbs=(getattr(opt, "nbs", NOMINAL_BATCH) >= 1, f"must be >= 1, got {getattr(opt, 'nbs', None)}"),
               workers=(opt.workers >= 0, f"must be >= 0, got {opt.workers}"),
               cache=(opt.cache in (None, False, *CACHE_MODES), f"must be 'ram' or 'disk', got {opt.cache!r}"),
               freeze=(min(opt.freeze, default=0) >= 0, f"layer numbers must be >= 0, got {opt.freeze}"))


def check_freeze(freeze: Sequence[int], n_layers: int) -> None:
    """``--freeze n`` (the first n layers) or ``--freeze i j k`` (those layers) must leave a trainable layer of a
    model of ``n_layers`` layers. Raises UsageError naming the flag and the model's layer count."""
    frozen = set(freeze) if len(freeze) > 1 else set(range(freeze[0]))
    flag = f"--freeze {' '.join(map(str, freeze))}"
    if any(i >= n_layers for i in frozen):
        raise UsageError(f"{flag}: the model has {n_layers} layers (0..{n_layers - 1})")
    if len(frozen) == n_layers:
        raise UsageError(f"{flag}: freezes all {n_layers} layers of the model, nothing would train")


# --- images skipped as corrupt --------------------------------------------------------------------------------------
_CORRUPT = "ignoring corrupt image/label: "
_REASONS = (  # (text in a corrupt-pair message, reason counted); the first match wins
    (".ignore.txt", "bad ignore file"),
    ("must be a non-negative integer", "class id not an integer >= 0"),
    ("outside [0, 1]", "coordinates not normalised"),
    ("zero-size", "zero-size box"),
    ("columns", "wrong number of columns"),
    ("not a number", "not a number"),
    ("NaN or infinite", "NaN or infinite value"),
    ("not a text file", "label file not text"),
    ("cannot read", "unreadable label file"),
    ("image", "unreadable image"),
)


def skip_reason(message: str) -> str:
    """Short reason of one corrupt-pair message of the label scan (utils/labels.py), e.g. ``class id >= nc=1``."""
    m = re.search(r"class id \d+ >= (nc=\d+)", message)
    if m:
        return f"class id >= {m.group(1)}"
    return next((reason for key, reason in _REASONS if key in message), "other")


def check_skipped(counts: dict[str, int], messages: Sequence[str], source: str, split: str,
                  limit: float = SKIP_LIMIT) -> None:
    """Raise DatasetError when more than ``limit`` of a split's images were skipped as corrupt (a data YAML whose
    class list is too short would otherwise train on a few images and exit 0). One line: the data YAML, the
    counts and each reason's count."""
    skipped, total = counts.get("corrupt", 0), counts.get("total", 0)
    if not total or skipped / total <= limit:
        return
    reasons = Counter(skip_reason(m) for m in messages if m.startswith(_CORRUPT))
    why = ", ".join(f"{r}: {n}" for r, n in reasons.most_common())
    raise DatasetError(f"{source}: {skipped} of {total} {split} images skipped as corrupt ({why}), more than "
                       f"{limit:.0%}: fix the labels or the data YAML, or pass --allow-skipped to go on without them")


# --- schedules --------------------------------------------------------------------------------------------------------
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


def warmup_accumulate(ni: int, nw: int, batch_size: int, nbs: int = NOMINAL_BATCH) -> int:
    """Gradient-accumulation steps at iteration ``ni``: grows from 1 to nbs / batch_size over warmup."""
    return max(1, int(np.interp(ni, [0, nw], [1, nbs / batch_size]).round()))


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
