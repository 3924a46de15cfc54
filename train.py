"""Train a YOLOv5 detector, optionally with Tiny Focal Loss and the Focal-EIoU family of box losses.

Usage:
    python train.py                                   # yolov5n on the embedded synthetic tiny-object data
    python train.py --data coco128.yaml --cfg yolov5s.yaml --hyp hyp.tfl.yaml --epochs 100
    python train.py --tfl auto --box-loss focal_eiou --hyp-set tfl_k=3
    python train.py --resume runs/train/exp/weights/last.pt
    torchrun --nproc_per_node 2 train.py --device cpu  # DDP (gloo on CPU, nccl on CUDA)
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import val as validate  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402
from utils.atomic import atomic_write_text  # noqa: E402
from utils.autoanchor import check_anchors, label_wh_pixels, save_anchor_report  # noqa: E402
from utils.checkpoints import load_checkpoint  # noqa: E402
from utils.dataloaders import create_dataloader  # noqa: E402
from utils.dataset_yaml import check_dataset  # noqa: E402
from utils.hyp import Hyp, load_hyp, parse_overrides  # noqa: E402
from utils.loggers import RunLogger  # noqa: E402
from utils.loss import LOSS_NAMES, ComputeLoss, loss_gains  # noqa: E402
from utils.metrics import fitness  # noqa: E402
from utils.plots import plot_images, plot_labels, plot_results, plot_tfl_auto  # noqa: E402
from utils.run_state import find_resume_checkpoint, restore_training_state, save_epoch  # noqa: E402
from utils.tfl import suggest_tfl  # noqa: E402
from utils.torch_utils import ModelEMA, de_parallel, init_seeds, select_device, smart_optimizer  # noqa: E402
from utils.train_utils import (  # noqa: E402
    LOGGER,
    NOMINAL_BATCH,
    EarlyStopping,
    NonFiniteGuard,
    increment_path,
    lr_factor,
    multi_scale_size,
    rescale_batch,
    transfer_weights,
    warmup_accumulate,
    warmup_values,
)

METRIC_KEYS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, default="", help="initial weights: our .pt or an official YOLOv5 .pt")
    p.add_argument("--cfg", type=str, default="", help="model YAML (default yolov5n.yaml when no --weights)")
    p.add_argument("--data", type=str, default="data/synthetic-tiny.yaml", help="dataset YAML")
    p.add_argument("--hyp", type=str, default="hyp/hyp.scratch-low.yaml", help="hyperparameter YAML")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all devices")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=128, help="train and val image size (px)")
    p.add_argument("--rect", action="store_true", help="rectangular training batches")
    p.add_argument("--multi-scale", action="store_true", help="each batch at a random stride-aligned size in "
                   "[0.5, 1.5] x imgsz (as YOLOv5)")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume a run: its last.pt or the latest")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate after the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--cache", type=str, nargs="?", const="ram", help="cache images in 'ram'")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--optimizer", type=str, choices=["SGD", "Adam", "AdamW"], default="SGD")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm, DDP only")
    p.add_argument("--workers", type=int, default=2, help="max dataloader workers (per process in DDP)")
    p.add_argument("--project", default=str(ROOT / "runs/train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--cos-lr", action="store_true", help="cosine learning-rate schedule")
    p.add_argument("--label-smoothing", type=float, default=None, help="class label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="early stopping patience (epochs without improvement)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    p.add_argument("--save-period", type=int, default=-1, help="save a checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    # Ours: Tiny Focal Loss and box-loss overrides (they win over the hyp YAML and are saved with the run)
    p.add_argument("--tfl", choices=["on", "off", "auto"], default=None,
                   help="Tiny Focal Loss: on/off (overrides the hyp file) or auto (the paper's rule from label sizes)")
    p.add_argument("--tfl-k", type=float, default=None, help="TFL focusing coefficient k >= 0")
    p.add_argument("--tfl-s", type=float, default=None, help="TFL tiny/big area S in input px^2")
    p.add_argument("--tfl-piecewise", action="store_true", default=None, help="TFL weight 1 for areas >= S")
    p.add_argument("--tfl-norm", choices=["sum", "mean"], default=None, help="TFL normalisation")
    p.add_argument("--tfl-terms", nargs="+", default=None, help="loss terms TFL weights: box obj cls")
    p.add_argument("--box-loss", default=None, help="ciou | giou | diou | iou | eiou | focal_eiou | nwd | ...")
    p.add_argument("--hyp-set", nargs="+", default=[], metavar="KEY=VALUE", help="override any hyperparameter")
    return p


def hyp_overrides(opt: argparse.Namespace) -> dict[str, Any]:
    """Command-line hyperparameter overrides: ``--hyp-set key=value`` strings (parsed against each key's declared
    type by utils.hyp) and, winning over them, the explicit flags as typed values."""
    out: dict[str, Any] = parse_overrides(opt.hyp_set)
    flags = {"tfl_k": opt.tfl_k, "tfl_s": opt.tfl_s, "tfl_piecewise": opt.tfl_piecewise, "tfl_norm": opt.tfl_norm,
             "box_loss": opt.box_loss, "label_smoothing": opt.label_smoothing,
             "tfl_terms": tuple(opt.tfl_terms) if opt.tfl_terms else None}
    if opt.tfl in ("on", "off"):
        flags["tfl"] = opt.tfl == "on"
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------
def build_model(opt: argparse.Namespace, nc: int, hyp: Hyp, device: torch.device) -> nn.Module:
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


def resolve_tfl_auto(hyp: Hyp, dataset, imgsz: int, save_dir: Path, plots: bool) -> Hyp:
    """``--tfl auto``: the paper's rule applied to the training labels' sizes at the training image size."""
    sides = label_sides_px(dataset, imgsz)
    k, piecewise, reason = suggest_tfl(torch.from_numpy(sides), imgsz, default_k=hyp.tfl_k)
    LOGGER.info(f"TFL auto: {len(sides)} labels, side px min {sides.min(initial=0):.1f} / median "
                f"{np.median(sides) if len(sides) else 0:.1f} / max {sides.max(initial=0):.1f} -> {reason}")
    hyp = hyp.replace(tfl=True, tfl_k=k, tfl_piecewise=piecewise)
    if plots:
        plot_tfl_auto(sides**2, hyp, save_dir / "tfl_auto.png")
    return hyp


def label_sides_px(dataset, imgsz: int) -> np.ndarray:
    """sqrt(area) of every training label in input pixels, images letterboxed to ``imgsz`` (long side)."""
    wh = label_wh_pixels(dataset.shapes, dataset.labels, imgsz, scale_jitter=None)
    return np.sqrt(wh[:, 0] * wh[:, 1])


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed for one epoch's shuffling and augmentation: a resumed run replays exactly the same epochs."""
    return (seed + 1) * 100_003 + epoch * 1_009 + max(rank, 0)


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------
def train_one_epoch(model, loader, loss_fn, optimizer, scaler, ema, epoch: int, state: dict, opt, hyp: Hyp,
                    device: torch.device, guard: NonFiniteGuard, rank: int, world_size: int, plots_dir: Path | None,
                    ) -> torch.Tensor:
    """One pass over the training data; returns the mean (box, obj, cls) losses. ``state`` carries the
    iteration counters across epochs (``ni0``, ``last_opt_step``, ``nw``)."""
    model.train()
    nb = len(loader)
    mloss = torch.zeros(3, device=device)
    bar = tqdm(enumerate(loader), total=nb, bar_format="{l_bar}{bar:10}{r_bar}", disable=rank > 0)
    optimizer.zero_grad()
    for i, (imgs, targets, paths, _) in bar:
        ni = i + nb * epoch
        imgs = (imgs.to(device, non_blocking=True).float() / 255).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device)
        if opt.multi_scale:
            gs = int(de_parallel(model).stride.max())
            imgs = rescale_batch(imgs, multi_scale_size(opt.imgsz, gs, random), gs)
        accumulate = set_warmup(optimizer, ni, state["nw"], epoch, opt, hyp)
        with torch.autocast(device.type, enabled=scaler.is_enabled()):
            loss, parts = loss_fn(model(imgs), targets)
        if world_size > 1:
            loss = loss * world_size  # DDP averages gradients across processes
        if guard.check(loss, paths):
            scaler.scale(loss).backward()
        if ni - state["last_opt_step"] >= accumulate:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            ema.update(model)
            state["last_opt_step"] = ni
        if torch.isfinite(parts).all():
            mloss = (mloss * i + parts) / (i + 1)
        if rank in (-1, 0):
            bar.set_description(f"{epoch}/{opt.epochs - 1} " + " ".join(f"{n}={v:.4g}" for n, v in
                                zip(LOSS_NAMES, mloss.tolist())) + f" inst={targets.shape[0]} img={imgs.shape[-1]}")
            if plots_dir is not None and ni < 3:
                plot_images(imgs, targets, paths, plots_dir / f"train_batch{ni}.jpg")
    return mloss


def set_warmup(optimizer, ni: int, nw: int, epoch: int, opt, hyp: Hyp) -> int:
    """Apply warmup learning rates and momentum at iteration ``ni``; returns the accumulation steps."""
    if ni > nw:
        return max(round(NOMINAL_BATCH / opt.batch_size), 1)
    f = lr_factor(epoch, opt.epochs, hyp.lrf, opt.cos_lr)
    lrs, momentum = warmup_values(ni, nw, [g["initial_lr"] * f for g in optimizer.param_groups],
                                  hyp.warmup_bias_lr, hyp.warmup_momentum, hyp.momentum)
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
        if "momentum" in g:
            g["momentum"] = momentum
        elif "betas" in g:
            g["betas"] = (momentum, g["betas"][1])
    return warmup_accumulate(ni, nw, opt.batch_size)


def train(opt: argparse.Namespace) -> dict:
    """Train as configured by ``opt`` (see get_args_parser); returns the final validation metrics."""
    rank, world_size = int(os.getenv("RANK", -1)), int(os.getenv("WORLD_SIZE", 1))
    local_rank = int(os.getenv("LOCAL_RANK", -1))
    device = select_device(opt.device, batch_size=opt.batch_size)
    if local_rank != -1:
        device = setup_ddp(device, local_rank)
    main_process = rank in (-1, 0)
    opt, ckpt, save_dir = prepare_run(opt)
    weights_dir = save_dir / "weights"
    if main_process:
        weights_dir.mkdir(parents=True, exist_ok=True)

    # Configuration: hyp YAML + command-line overrides -> one validated Hyp, saved with the run.
    hyp = load_hyp(ckpt["hyp"]) if ckpt else load_hyp(opt.hyp, hyp_overrides(opt))
    init_seeds(opt.seed + 1 + max(rank, 0), deterministic=True)
    data = check_dataset(opt.data)
    nc = 1 if opt.single_cls else data["nc"]
    names = {0: "item"} if opt.single_cls and len(data["names"]) != 1 else data["names"]

    # Data, model, loss, optimiser.
    # channels-last activations: ~8% faster training steps on CPU (oneDNN), preferred by tensor cores on CUDA
    model = build_model(opt, nc, hyp, device).to(memory_format=torch.channels_last)
    gs = max(int(model.stride.max()), 32)
    imgsz = math.ceil(opt.imgsz / gs) * gs
    batch_size = opt.batch_size // max(world_size, 1)
    train_loader, dataset = create_dataloader(
        data["train"], imgsz, batch_size, gs, opt.single_cls, hyp=hyp, augment=True, cache=opt.cache,
        rect=opt.rect, rank=local_rank, workers=opt.workers, prefix="train: ", shuffle=True, seed=opt.seed, nc=nc)
    if not opt.resume and opt.tfl == "auto":
        hyp = resolve_tfl_auto(hyp, dataset, imgsz, save_dir, plots=main_process and not opt.noplots)
    val_loader = None
    if main_process:
        val_loader = create_dataloader(data["val"], imgsz, batch_size * 2, gs, opt.single_cls, hyp=hyp,
                                       cache=opt.cache, rect=True, rank=-1, workers=opt.workers, pad=0.5,
                                       prefix="val: ", nc=nc)[0]
        start_run_files(save_dir, opt, hyp, dataset, names, model, imgsz)
    freeze_layers(model, opt.freeze)
    model.nc, model.names, model.hyp = nc, names, hyp
    loss_fn = ComputeLoss(model, hyp, gains=loss_gains(hyp, de_parallel(model).model[-1].nl, nc, imgsz))
    optimizer, scheduler = build_optimizer(model, opt, hyp)
    ema = ModelEMA(model) if main_process else None
    start_epoch, best_fitness = 0, 0.0
    state = {"nw": max(round(hyp.warmup_epochs * len(train_loader)), 100), "last_opt_step": -1}
    if ckpt:
        start_epoch, best_fitness = restore_training_state(ckpt, model, ema, optimizer, scheduler)
        state["last_opt_step"] = (ckpt.get("extra") or {}).get("last_opt_step", -1)
    if local_rank != -1:
        if opt.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    if ema is None:  # other ranks need an object with update(); they never save
        ema = _NoEMA()

    # For each epoch: train, validate, save.
    logger = RunLogger(save_dir, names) if main_process else None
    stopper, guard = EarlyStopping(opt.patience), NonFiniteGuard()
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    results, t0 = {}, time.time()
    LOGGER.info(f"Image sizes {imgsz} train, {imgsz} val; {len(dataset)} train images, batch {opt.batch_size}; "
                f"logging to {save_dir}; starting training for {opt.epochs} epochs...")
    for epoch in range(start_epoch, opt.epochs):
        seed_epoch(train_loader, dataset, epoch_seed(opt.seed, epoch, rank), epoch)
        mloss = train_one_epoch(model, train_loader, loss_fn, optimizer, scaler, ema, epoch, state, opt, hyp, device,
                                guard, rank, world_size, None if opt.noplots or not main_process else save_dir)
        scheduler.step()
        if not main_process:
            continue
        final = epoch + 1 == opt.epochs
        if not opt.noval or final:
            results = validate.run(data, batch_size=batch_size * 2, imgsz=imgsz, model=ema.ema,
                                   single_cls=opt.single_cls, dataloader=val_loader, save_dir=save_dir,
                                   plots=final and not opt.noplots, compute_loss=loss_fn, half=device.type == "cuda",
                                   tfl_s=hyp.tfl_s, verbose=final, names=names)
        fi = fitness(np.array([[results.get(k, 0.0) for k in METRIC_KEYS]]))[0] if results else 0.0
        best_fitness = max(best_fitness, fi)
        logger.log_epoch(epoch, epoch_row(mloss, results, optimizer))
        if not opt.nosave or final:
            save_epoch(weights_dir, model, ema, optimizer, scheduler, epoch, best_fitness, fi, hyp, opt, names,
                       state)
        if stopper(epoch, fi):
            break
    if main_process:
        logger.close()
        if not opt.noplots:
            plot_results(save_dir / "results.csv")
        LOGGER.info(f"{epoch - start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours. "
                    f"Results saved to {save_dir}")
    if local_rank != -1:
        torch.distributed.destroy_process_group()
    return {**results, "save_dir": str(save_dir)}


# ----------------------------------------------------------------------------------------------------------------
# Helpers of the loop
# ----------------------------------------------------------------------------------------------------------------
def prepare_run(opt: argparse.Namespace) -> tuple[argparse.Namespace, dict | None, Path]:
    """The run folder, and for --resume the checkpoint and the options it was started with."""
    if not opt.resume:
        save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
        opt.save_dir = str(save_dir)
        return opt, None, save_dir
    resume_path = find_resume_checkpoint(opt.resume, opt.project)
    ckpt = load_checkpoint(resume_path)
    LOGGER.info(f"Resuming from {resume_path} (--resume {opt.resume}) at epoch {ckpt['epoch'] + 1}")
    opt = argparse.Namespace(**{**vars(opt), **ckpt["opt"], "resume": str(resume_path)})
    opt.weights, opt.cfg, opt.exist_ok = str(resume_path), "", True
    return opt, ckpt, Path(opt.save_dir)


def start_run_files(save_dir: Path, opt, hyp: Hyp, dataset, names: dict, model: nn.Module, imgsz: int) -> None:
    """hyp.yaml and opt.yaml; on a new run also labels.jpg and AutoAnchor (which may change the model's anchors)."""
    atomic_write_text(save_dir / "hyp.yaml", yaml.safe_dump(hyp.to_dict(), sort_keys=False))
    atomic_write_text(save_dir / "opt.yaml", yaml.safe_dump(plain(vars(opt)), sort_keys=False))
    if opt.resume:
        return
    if not opt.noplots:
        labels = np.concatenate([lb for lb in dataset.labels if len(lb)] or [np.zeros((0, 5))])
        plot_labels(labels, names, save_dir, tiny_area=hyp.tfl_s, imgsz=imgsz)
    if not opt.noautoanchor:
        save_anchor_report(check_anchors(dataset, model, thr=hyp.anchor_t, imgsz=imgsz), save_dir)


def build_optimizer(model: nn.Module, opt, hyp: Hyp):
    """YOLOv5's optimiser (weight decay scaled to the nominal batch of 64) and its linear or cosine schedule."""
    accumulate = max(round(NOMINAL_BATCH / opt.batch_size), 1)
    decay = hyp.weight_decay * opt.batch_size * accumulate / NOMINAL_BATCH
    optimizer = smart_optimizer(model, opt.optimizer, hyp.lr0, hyp.momentum, decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, opt.epochs, hyp.lrf, opt.cos_lr))
    return optimizer, scheduler


class _NoEMA:
    def update(self, model: nn.Module) -> None:
        pass


def setup_ddp(device: torch.device, local_rank: int) -> torch.device:
    """Initialise the process group (nccl on CUDA, gloo on CPU) and return this process's device."""
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" and torch.distributed.is_nccl_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return device


def seed_epoch(loader, dataset, seed: int, epoch: int) -> None:
    """Make an epoch's order and augmentation a function of (seed, epoch) only, so resuming replays it."""
    init_seeds(seed)
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(seed)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    dataset.reseed(seed)


def epoch_row(mloss: torch.Tensor, results: dict, optimizer) -> dict[str, float]:
    row = {f"train/{n}_loss": float(v) for n, v in zip(LOSS_NAMES, mloss.tolist())}
    row.update({k: float(v) for k, v in results.items() if isinstance(v, int | float)})
    for bucket, m in results.get("size_buckets", {}).items():  # e.g. metrics/tiny/recall, for TensorBoard too
        row.update({f"metrics/{bucket}/{k}": float(m[k]) for k in ("p", "r", "map50", "map50_95")})
    row.update({f"x/lr{j}": g["lr"] for j, g in enumerate(optimizer.param_groups)})
    return row


def plain(d: dict) -> dict:
    """A dict of YAML/JSON-safe values (Paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def main(opt: argparse.Namespace) -> dict:
    return train(opt)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(get_args_parser().parse_args())
