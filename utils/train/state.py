"""A training run's state on disk: last/best/periodic checkpoints each epoch, the final weights, and what --resume
restores.

Checkpoints are written by ``save_checkpoint`` (atomic, fp32), so a run killed at any moment leaves a loadable
last.pt and resumes bit-exactly from it. Once the run has ended, last.pt and best.pt are stripped as YOLOv5 does
(:func:`strip_final_weights`: fp16 EMA weights, no optimiser, epoch -1) unless --keep-optimizer; a stripped file
is a finished run's (--resume refuses it by name) and fine-tunes with --weights.

What a checkpoint holds and --resume restores, and nothing else:
model, EMA (and its update count), optimiser, scheduler, epoch, and in ``extra`` the loop counters of
:class:`LoopState` and the AMP GradScaler (CUDA). Every epoch's shuffling and augmentation is seeded from
(seed, epoch) alone, so no random-generator state needs saving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.checkpoints import save_checkpoint, strip_optimizer
from utils.errors import UserError
from utils.torch_utils import de_parallel

if TYPE_CHECKING:
    from utils.train.run import Run


class ResumeError(UserError):
    """--resume cannot go on (the run already finished); the message names the run folder."""


@dataclass
class LoopState:
    """Counters that carry across epochs: saved in every checkpoint and restored by --resume."""

    start_epoch: int = 0  # first epoch this process trains (the checkpoint's epoch + 1 on resume)
    best_fitness: float = 0.0  # best validation fitness so far (best.pt, early stopping)
    best_epoch: int = 0  # epoch of best_fitness: early stopping counts its patience from it
    last_opt_step: int = -1  # iteration (counted over all epochs) of the last optimiser step: accumulation
    warmup_iters: int = 0  # warmup length in iterations (hyp.warmup_epochs x batches per epoch, at least 100)

    def extra(self) -> dict[str, int]:
        """The counters a checkpoint's ``extra`` holds (epoch and best_fitness have their own keys)."""
        return {"last_opt_step": self.last_opt_step, "warmup_iters": self.warmup_iters, "best_epoch": self.best_epoch}


def find_resume_checkpoint(resume: str | bool, project: str) -> Path:
    """--resume with a path -> that path; bare --resume -> the most recent runs/*/weights/last.pt."""
    if isinstance(resume, str):
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume: checkpoint {path} not found")
        return path
    candidates = sorted(Path(project).glob("*/weights/last.pt"), key=os.path.getmtime)
    if not candidates:
        raise FileNotFoundError(f"--resume: no runs with weights/last.pt under {project}")
    return candidates[-1]


def check_resumable(ckpt: dict[str, Any]) -> None:
    """Raise ResumeError when the checkpoint's run already trained its last epoch, or when its training state was
    stripped at the end of the run (epoch -1, as YOLOv5's final and official weights)."""
    if ckpt["epoch"] < 0:
        raise ResumeError(f"{ckpt['opt'].get('save_dir') or 'checkpoint'}: final weights of a finished run (optimizer "
                          "stripped, epoch -1), nothing to resume; start a new run with --weights instead")
    if ckpt["epoch"] + 1 >= ckpt["opt"]["epochs"]:
        raise ResumeError(f"{ckpt['opt'].get('save_dir')}: training finished at epoch {ckpt['epoch']}, nothing to "
                          "resume; start a new run with --weights instead")


def save_epoch(run: Run, state: LoopState, epoch: int, fi: float) -> None:
    """last.pt every epoch, best.pt when fitness ``fi`` ties or beats the best, epoch{n}.pt every --save-period."""
    extra = {**state.extra(), "scaler": run.scaler.state_dict()}  # {} when AMP is off (CPU)
    kw = dict(model=de_parallel(run.model), ema=run.ema, optimizer=run.optimizer, scheduler=run.scheduler,
              epoch=epoch, best_fitness=state.best_fitness, hyp=run.hyp, opt=run.saved_options(), names=run.names,
              extra=extra)  # save_checkpoint makes them plain
    weights_dir = run.save_dir / "weights"
    save_checkpoint(weights_dir / "last.pt", **kw)
    if fi >= state.best_fitness:
        save_checkpoint(weights_dir / "best.pt", **kw)
    if run.opt.save_period > 0 and epoch % run.opt.save_period == 0:
        save_checkpoint(weights_dir / f"epoch{epoch}.pt", **kw)


def strip_final_weights(weights_dir: Path) -> list[Path]:
    """After the run's last epoch (or early stop): rewrite last.pt and best.pt as YOLOv5's strip_optimizer does
    (EMA weights in fp16 as 'model'; no optimiser, scheduler, EMA copy or best fitness; epoch -1), each atomically,
    so that a kill mid-way leaves every file either full or stripped. Periodic epoch{n}.pt files are kept whole.
    Returns the stripped files."""
    files = [f for f in (weights_dir / "last.pt", weights_dir / "best.pt") if f.is_file()]
    for f in files:
        strip_optimizer(f)
    return files


def restore_training_state(ckpt: dict[str, Any], run: Run, state: LoopState) -> LoopState:
    """Load model, EMA, optimiser, scheduler and GradScaler state from a checkpoint into ``run``; returns the loop
    counters it saved (``state``'s own values where an older checkpoint lacks them)."""
    check_resumable(ckpt)
    de_parallel(run.model).load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
    if hasattr(run.ema, "ema") and ckpt.get("ema"):
        run.ema.ema.load_state_dict({k: v.float() for k, v in ckpt["ema"].items()})
        run.ema.updates = ckpt.get("updates", 0)
    if ckpt.get("optimizer"):
        run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scheduler"):
        run.scheduler.load_state_dict(ckpt["scheduler"])
    extra = ckpt.get("extra") or {}
    if extra.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(extra["scaler"])
    return LoopState(start_epoch=ckpt["epoch"] + 1, best_fitness=float(ckpt.get("best_fitness") or 0.0),
                     best_epoch=int(extra.get("best_epoch", ckpt["epoch"])),
                     last_opt_step=int(extra.get("last_opt_step", -1)),
                     warmup_iters=int(extra.get("warmup_iters", state.warmup_iters)))
