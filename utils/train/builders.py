"""Builders train.py composes a :class:`~utils.train.run.Run` with: data loaders, run folder and files, optimiser,
MLflow, DDP; the loop's per-epoch bookkeeping; and what Ctrl-C says (:class:`Interrupted`)."""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from models.yolo import DetectionModel
from utils.atomic import atomic_write_text
from utils.checkpoints import load_checkpoint, transfer_weights
from utils.compiler import compile_cache_dir, compiled_forward, worth_compiling
from utils.config.hyp import Hyp
from utils.dataset.dataloaders import LoadImagesAndLabels, create_dataloader
from utils.dataset.labels import require_labels
from utils.loss.compute_loss import LOSS_NAMES
from utils.loss.tfl import suggest_tfl
from utils.plots import plot_labels, plot_results, plot_tfl_auto
from utils.run_dirs import acquire_run_lock, increment_path
from utils.torch_utils import init_seeds, smart_optimizer
from utils.train.autoanchor import check_anchors, label_wh_pixels, save_anchor_report
from utils.train.loggers import MLflowLogger, mlflow_tracking_uri, run_artifacts
from utils.train.options import TrainOptions, check_skipped
from utils.train.run import Run
from utils.train.schedule import lr_factor
from utils.train.state import strip_final_weights

LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
MLRUNS = ROOT / "mlruns"  # --mlflow's local store when MLFLOW_TRACKING_URI is unset: beside the default runs/


def build_model(opt: TrainOptions, nc: int, hyp: Hyp, device: torch.device) -> nn.Module:
    """Model from --cfg (or the weights' own YAML), with every matching tensor of --weights transferred."""
    ckpt = load_checkpoint(opt.weights) if opt.weights else None
    cfg = opt.cfg or (ckpt["model_yaml"] if ckpt else "yolov5n.yaml")
    model = DetectionModel(cfg, ch=3, nc=nc, anchors=int(hyp.anchors) if hyp.anchors else None).to(device)
    if ckpt:
        state = ckpt.get("ema") or ckpt["model"]
        exclude = ("anchor",) if (opt.cfg or hyp.anchors) and not opt.resume else ()
        n, total = transfer_weights(model, {k: v.float() for k, v in state.items()}, exclude)
        LOGGER.info(f"Transferred {n}/{total} items from {opt.weights}")
    return model


def freeze_layers(model: nn.Module, freeze: list[int]) -> None:
    """Freeze ``model.{i}.`` parameters for the listed layers (one number n means the first n layers)."""
    layers = freeze if len(freeze) > 1 else range(freeze[0])
    prefixes = [f"model.{x}." for x in layers]
    for k, v in model.named_parameters():
        v.requires_grad = not any(k.startswith(p) for p in prefixes)
        if not v.requires_grad:
            LOGGER.info(f"freezing {k}")


def resolve_tfl_auto(hyp: Hyp, dataset, imgsz: int, save_dir: Path | None = None, plots: bool = False) -> Hyp:
    """``--tfl auto``: the paper's rule applied to the training labels' sizes at the training image size; with
    ``plots``, also :func:`plot_tfl_auto_labels` into ``save_dir``."""
    sides = label_sides_px(dataset, imgsz)
    k, piecewise, reason = suggest_tfl(torch.from_numpy(sides), imgsz, default_k=hyp.tfl_k)
    lo, mid, hi = (float(f(sides)) if len(sides) else 0.0 for f in (np.min, np.median, np.max))
    LOGGER.info(f"TFL auto: {len(sides)} labels, side px min {lo:.1f} / median {mid:.1f} / max {hi:.1f} -> {reason}")
    hyp = hyp.replace(tfl=True, tfl_k=k, tfl_piecewise=piecewise)
    if plots and save_dir is not None:
        plot_tfl_auto(sides**2, hyp, save_dir / "tfl_auto.png")
    return hyp


def plot_tfl_auto_labels(hyp: Hyp, dataset, imgsz: int, save_dir: Path) -> None:
    """``save_dir/tfl_auto.png``: the training labels' areas (input px²) that ``--tfl auto`` resolved ``hyp`` from."""
    plot_tfl_auto(label_sides_px(dataset, imgsz) ** 2, hyp, save_dir / "tfl_auto.png")


def label_sides_px(dataset, imgsz: int) -> np.ndarray:
    """sqrt(area) of every training label in input pixels, images letterboxed to ``imgsz`` (long side)."""
    wh = label_wh_pixels(dataset.shapes, dataset.labels, imgsz, scale_jitter=None)
    return np.sqrt(wh[:, 0] * wh[:, 1])


def build_loaders(opt: TrainOptions, data: dict, hyp: Hyp, imgsz: int, stride: int, batch_size: int,
                  local_rank: int, main_process: bool) -> tuple[DataLoader, LoadImagesAndLabels, DataLoader | None]:
    """(train loader, train set, val loader or None off rank 0). Labels are checked against the data YAML's
    classes and then, with --single-cls, collapsed to class 0. Raises DatasetError when more than
    ``SKIP_LIMIT`` of a split's images are corrupt, unless --allow-skipped."""
    kw = dict(single_cls=opt.single_cls, hyp=hyp, cache=opt.cache, workers=opt.workers, nc=data["nc"])
    train_loader, dataset = create_dataloader(data["train"], imgsz, batch_size, stride, augment=True, rect=opt.rect,
                                              rank=local_rank, prefix="train: ", shuffle=True, seed=opt.seed, **kw)
    val_loader = None
    if main_process:
        val_loader = create_dataloader(data["val"], imgsz, batch_size * 2, stride, rect=True, rank=-1, pad=0.5,
                                       prefix="val: ", **kw)[0]
        vds = val_loader.dataset  # refused now rather than at the first validation, epochs later
        require_labels(vds.labels, vds.label_files, data["val"], prefix="val: ")
    if not opt.allow_skipped:
        source = str(data.get("yaml_file") or opt.data)
        for split, ds in (("train", dataset), ("val", val_loader.dataset if val_loader else None)):
            if ds is not None:
                check_skipped(ds.counts, ds.messages, source, split)
    return train_loader, dataset, val_loader


def plan_run_dir(opt: TrainOptions, resumed: Path | None = None) -> Path:
    """The run folder, not yet created: ``resumed`` (the folder of the run --resume continues) or else
    ``--project/--name``, numbered unless --exist-ok. --mlflow names its run after it before anything is written."""
    return resumed or increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)


def create_run_dir(save_dir: Path) -> tuple[Path, Path]:
    """Create the run folder planned by :func:`plan_run_dir` with ``weights/``, and take its lock; returns (folder,
    lock). Called only once every input is known usable."""
    (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    return save_dir, acquire_run_lock(save_dir)


def start_run_files(save_dir: Path, opt: TrainOptions, saved: dict, hyp: Hyp, dataset, names: dict, model: nn.Module,
                    imgsz: int) -> None:
    """hyp.yaml and opt.yaml (``saved``: the options as the run saves them, plus ``precision``, --amp's choice:
    fp16+GradScaler, bf16 or fp32); on a new run also labels.jpg and AutoAnchor (which may change the model's
    anchors)."""
    atomic_write_text(save_dir / "hyp.yaml", yaml.safe_dump(hyp.to_dict(), sort_keys=False))
    atomic_write_text(save_dir / "opt.yaml", yaml.safe_dump(saved, sort_keys=False))
    if opt.resume:
        return
    if not opt.noplots:
        labels = np.concatenate([lb for lb in dataset.labels if len(lb)] or [np.zeros((0, 5))])
        plot_labels(labels, names, save_dir, tiny_area=hyp.tfl_s, imgsz=imgsz)
    if not opt.noautoanchor:
        save_anchor_report(check_anchors(dataset, model, thr=hyp.anchor_t, imgsz=imgsz), save_dir)


def build_optimizer(model: nn.Module, opt: TrainOptions, hyp: Hyp, batch_size: int):
    """YOLOv5's optimiser (weight decay scaled to the nominal batch --nbs, 64 as YOLOv5) and its linear or cosine
    schedule; ``batch_size``: the total over all processes (AutoBatch's choice for --batch-size -1)."""
    accumulate = max(round(opt.nbs / batch_size), 1)
    decay = hyp.weight_decay * batch_size * accumulate / opt.nbs
    optimizer = smart_optimizer(model, opt.optimizer, hyp.lr0, hyp.momentum, decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, opt.epochs, hyp.lrf, opt.cos_lr))
    return optimizer, scheduler


def start_mlflow(saved: dict, hyp: Hyp, save_dir: Path) -> MLflowLogger:
    """--mlflow: an MLflow run named after the run folder in the experiment named after --project's folder, at
    MLFLOW_TRACKING_URI or else the SQLite store in ``MLRUNS``; parameters 'opt/<flag>' (``saved``: the options as
    the run saves them) and 'hyp/<key>'. It continues the run ``saved['mlflow_run_id']`` (--resume) when there is
    one; its id (``run_id``) is saved in every checkpoint so that --resume continues the same MLflow run."""
    params = {**{f"opt/{k}": v for k, v in saved.items()},
              **{f"hyp/{k}": v for k, v in hyp.to_dict().items()}}
    return MLflowLogger(mlflow_tracking_uri(MLRUNS), Path(saved["project"]).name, save_dir.name, params=params,
                        run_id=saved.get("mlflow_run_id"), tags={"save_dir": str(save_dir)})


def setup_ddp(device: torch.device, local_rank: int) -> torch.device:
    """Initialise the process group (nccl on CUDA, gloo on CPU) and return this process's device."""
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" and torch.distributed.is_nccl_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return device


def ddp_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (-1, -1, 1) without DDP."""
    return int(os.getenv("RANK", -1)), int(os.getenv("LOCAL_RANK", -1)), int(os.getenv("WORLD_SIZE", 1))


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed for one epoch's shuffling and augmentation: a resumed run replays exactly the same epochs."""
    return (seed + 1) * 100_003 + epoch * 1_009 + max(rank, 0)


def all_ranks_stop(run: Run, stop: bool) -> bool:
    """Early stopping decided on rank 0, shared with every DDP process so that all of them leave the loop."""
    if run.world_size > 1:
        flag = [stop]
        torch.distributed.broadcast_object_list(flag, 0)
        stop = flag[0]
    return stop


def compile_run(run: Run, epochs: int) -> None:
    """--compile: the training forward (the loss is left eager: its target matching has a data-dependent number
    of rows, which would recompile every batch) and the EMA's validation forward (val.run pads its batches);
    nothing when ``epochs`` epochs of the training set are too few to pay the compile back."""
    opt = run.opt
    if not opt.compile or not worth_compiling(len(run.dataset) * epochs, "train.py"):
        return
    run.forward = compiled_forward(run.model, opt.compile, opt.compile_backend)
    if run.val_loader is not None and hasattr(run.ema, "ema"):
        run.val_forward = compiled_forward(run.ema.ema, opt.compile, opt.compile_backend,
                                           strides=run.ema.ema.stride.int().tolist())


def compile_report(run: Run) -> str | None:
    """One line: the graphs --compile built in this run and the seconds they took, with the cache folder."""
    parts = [f.stats for f in (run.forward, run.val_forward) if f is not None]
    if not parts:
        return None
    total = type(parts[0])(sum(p.graphs for p in parts), sum(p.seconds for p in parts))
    return total.line("train.py (training and validation)", compile_cache_dir())


def finish(run: Run, epochs_done: int, t0: float) -> None:
    """Plot results.csv, strip the optimiser from last.pt and best.pt (unless --keep-optimizer), hand the artefacts
    to MLflow (--mlflow), close the logger, say where everything is."""
    if not run.opt.noplots:
        plot_results(run.save_dir / "results.csv")
    if not run.opt.keep_optimizer:
        strip_final_weights(run.save_dir / "weights")
    run.logger.log_artifacts(run_artifacts(run.save_dir))
    run.logger.close()
    if (line := compile_report(run)) is not None:
        LOGGER.info(line)
    LOGGER.info(f"{epochs_done} epochs completed in {(time.time() - t0) / 3600:.3f} hours. "
                f"Results saved to {run.save_dir}")


def seed_epoch(loader, dataset, seed: int, epoch: int) -> None:
    """Make an epoch's order and augmentation a function of (seed, epoch) only, so resuming replays it."""
    init_seeds(seed)
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(seed)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    dataset.reseed(seed)


def epoch_row(mloss: torch.Tensor, results: dict, optimizer) -> dict[str, float]:
    """One results.csv row: mean train losses, validation metrics (with size buckets) and learning rates."""
    row = {f"train/{n}_loss": float(v) for n, v in zip(LOSS_NAMES, mloss.tolist())}
    row.update({k: float(v) for k, v in results.items() if isinstance(v, int | float)})
    for bucket, m in results.get("size_buckets", {}).items():  # e.g. metrics/tiny/recall, for TensorBoard too
        row.update({f"metrics/{bucket}/{k}": float(m[k]) for k in ("p", "r", "map50", "map50_95")})
    row.update({f"x/lr{j}": g["lr"] for j, g in enumerate(optimizer.param_groups)})
    return row


class Interrupted(KeyboardInterrupt):
    """Ctrl-C once a run (or an --evolve study) has a folder; ``message`` is the one line train.main prints: where
    the files are and how to go on."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@contextmanager
def on_ctrl_c(message: Callable[[], str]) -> Iterator[None]:
    """Ctrl-C in the block (an :class:`Interrupted` of an inner block included) raises :class:`Interrupted` with
    ``message()``, called then: it says what exists by that time."""
    try:
        yield
    except KeyboardInterrupt as e:
        raise Interrupted(message()) from e


def interrupted_message(save_dir: str | Path | None) -> str:
    """One line after Ctrl-C: where last.pt is and the exact command that resumes the run."""
    if not save_dir or not Path(save_dir).is_dir():  # the folder is planned (plan_run_dir) before it is created
        return "train.py: interrupted before the run folder was created; nothing to resume"
    last = Path(save_dir) / "weights" / "last.pt"
    if not last.is_file():
        return f"train.py: interrupted before the first checkpoint was saved in {save_dir}; nothing to resume"
    return (f"train.py: interrupted; last checkpoint {last}; resume with: python train.py --resume "
            f"{shlex.quote(str(last))}")
