"""A training run's state on disk: last/best/periodic checkpoints each epoch, and what --resume restores.

Checkpoints are written by ``save_checkpoint`` (atomic, fp32), so a run killed at any moment leaves a loadable
last.pt and resumes bit-exactly from it.
"""

from __future__ import annotations

import os
from pathlib import Path

from utils.checkpoints import save_checkpoint
from utils.hyp import Hyp
from utils.torch_utils import de_parallel


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


def save_epoch(weights_dir: Path, model, ema, optimizer, scheduler, epoch: int, best_fitness: float, fi: float,
               hyp: Hyp, opt, names, state: dict) -> None:
    """last.pt every epoch, best.pt when fitness ties or beats the best, epoch{n}.pt every --save-period."""
    kw = dict(model=de_parallel(model), ema=ema, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
              best_fitness=best_fitness, hyp=hyp, opt=opt, names=names,  # save_checkpoint makes them plain
              extra={"last_opt_step": state["last_opt_step"]})
    save_checkpoint(weights_dir / "last.pt", **kw)
    if fi >= best_fitness:
        save_checkpoint(weights_dir / "best.pt", **kw)
    if opt.save_period > 0 and epoch % opt.save_period == 0:
        save_checkpoint(weights_dir / f"epoch{epoch}.pt", **kw)


def restore_training_state(ckpt: dict, model, ema, optimizer, scheduler) -> tuple[int, float]:
    """Load model, EMA, optimiser and scheduler state from a checkpoint; returns (start_epoch, best_fitness)."""
    model.load_state_dict({k: v.float() for k, v in ckpt["model"].items()})
    if ema is not None and ckpt.get("ema"):
        ema.ema.load_state_dict({k: v.float() for k, v in ckpt["ema"].items()})
        ema.updates = ckpt.get("updates", 0)
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    start_epoch = ckpt["epoch"] + 1
    if start_epoch >= ckpt["opt"]["epochs"]:
        raise ValueError(f"{ckpt['opt'].get('save_dir')}: training finished at epoch {ckpt['epoch']}, nothing to "
                         "resume; start a new run with --weights instead")
    return start_epoch, float(ckpt.get("best_fitness", 0.0))
