"""Learning rate and warmup: the per-epoch LR factor, warmup of LR/momentum and gradient accumulation, the nominal
batch."""

from __future__ import annotations

import math

import numpy as np
import torch

from utils.config.hyp import Hyp

NOMINAL_BATCH = 64  # YOLOv5 accumulates gradients up to this batch size and scales weight decay to it


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


def set_warmup(optimizer: torch.optim.Optimizer, ni: int, nw: int, epoch: int, hyp: Hyp, epochs: int,
               batch_size: int, nbs: int = NOMINAL_BATCH, cos: bool = False) -> int:
    """Apply warmup learning rates and momentum at iteration ``ni`` (of ``nw`` warmup iterations) of a run of
    ``epochs`` epochs with total ``batch_size`` and nominal batch ``nbs`` (--nbs) and a cosine schedule when ``cos``
    (--cos-lr); returns the accumulation steps."""
    if ni > nw:
        return max(round(nbs / batch_size), 1)
    f = lr_factor(epoch, epochs, hyp.lrf, cos)
    lrs, momentum = warmup_values(ni, nw, [g["initial_lr"] * f for g in optimizer.param_groups],
                                  hyp.warmup_bias_lr, hyp.warmup_momentum, hyp.momentum)
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
        if "momentum" in g:
            g["momentum"] = momentum
        elif "betas" in g:
            g["betas"] = (momentum, g["betas"][1])
    return warmup_accumulate(ni, nw, batch_size, nbs)
