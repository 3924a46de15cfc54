"""Train a YOLOv5 detector, optionally with Tiny Focal Loss and the Focal-EIoU family of box losses.

Usage:
    python train.py                                   # yolov5n on the embedded synthetic tiny-object data
    python train.py --data coco128.yaml --cfg yolov5s.yaml --hyp hyp.tfl.yaml --epochs 100
    python train.py --tfl auto --box-loss focal_eiou --hyp-set tfl_k=3
    python train.py --resume runs/train/exp/weights/last.pt
    python train.py --evolve 100 --epochs 30          # Optuna search (hyp/evolve.yaml) in runs/evolve/exp
    torchrun --nproc_per_node 2 train.py --device cpu  # DDP (gloo on CPU, nccl on CUDA)

Python API: ``train.train(opt)`` with ``opt = train.get_args_parser().parse_args([...])`` (or a TrainOptions);
command line: ``train.main(argv) -> int`` (1 after a user error printed as one line, 130 after Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import val as validate  # noqa: E402
from data.prepare import check_dataset  # noqa: E402
from utils.advise.advise import apply_tiny_auto, save_advice  # noqa: E402
from utils.checkpoints import load_checkpoint  # noqa: E402
from utils.cli import ArgumentParser, check_args, run_main  # noqa: E402
from utils.config.hyp import load_hyp  # noqa: E402
from utils.dataset.aug_stats import lost_row, lost_warning  # noqa: E402
from utils.dataset.copy_paste import check_paste_hyp  # noqa: E402
from utils.eval.metrics import fitness  # noqa: E402
from utils.loss.compute_loss import LOSS_NAMES, ComputeLoss  # noqa: E402
from utils.plots import plot_images  # noqa: E402
from utils.run_dirs import check_run_lock, release_run_lock  # noqa: E402
from utils.torch_utils import ModelEMA, autobatch, de_parallel, init_seeds, select_device  # noqa: E402
from utils.train import evolve  # noqa: E402
from utils.train.builders import (  # noqa: E402
    Interrupted,
    all_ranks_stop,
    build_loaders,
    build_model,
    build_optimizer,
    compile_run,
    create_run_dir,
    ddp_env,
    epoch_row,
    epoch_seed,
    finish,
    freeze_layers,
    interrupted_message,
    plan_run_dir,
    plot_tfl_auto_labels,
    resolve_tfl_auto,
    seed_epoch,
    setup_ddp,
    start_mlflow,
    start_run_files,
)
from utils.train.loggers import RunLogger, check_mlflow  # noqa: E402
from utils.train.loop import EarlyStopping, NonFiniteGuard, multi_scale_size, rescale_batch  # noqa: E402
from utils.train.options import (  # noqa: E402
    TrainOptions,
    check_freeze,
    get_args_parser,
    hyp_overrides,
    saved_options,
    validate_options,
)
from utils.train.precision import choose_precision, cpu_bf16_supported  # noqa: E402
from utils.train.run import NoEMA, Run  # noqa: E402
from utils.train.schedule import set_warmup  # noqa: E402
from utils.train.state import (  # noqa: E402
    LoopState,
    check_resumable,
    find_resume_checkpoint,
    restore_training_state,
    save_epoch,
)

LOGGER = logging.getLogger(__name__)
METRIC_KEYS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")


# ----------------------------------------------------------------------------------------------------------------
# The story: build the run, then for each epoch train, validate, save; then finish
# ----------------------------------------------------------------------------------------------------------------
def train(opt: TrainOptions | argparse.Namespace, on_val: Callable[[int, dict], bool] | None = None) -> dict:
    """Train as configured by ``opt`` (a parse result of get_args_parser, converted once here, or TrainOptions);
    returns the final validation metrics and save_dir. ``on_val(epoch, metrics)`` is called after each validation
    (single process); True stops training after that epoch, as early stopping does (--evolve's pruning). Ctrl-C
    once the run folder exists raises Interrupted, saying where last.pt is and how to resume."""
    run, state = build_run(opt if isinstance(opt, TrainOptions) else TrainOptions.from_args(opt))
    opt = run.opt  # on --resume, the run's own
    results, t0, epoch = {}, time.time(), state.start_epoch
    try:
        LOGGER.info(f"Image sizes {run.imgsz} train, {run.imgsz} val; {len(run.dataset)} train images, batch "
                    f"{run.total_batch_size}; logging to {run.save_dir}; starting training for {opt.epochs} epochs...")
        for epoch in range(state.start_epoch, opt.epochs):
            seed_epoch(run.train_loader, run.dataset, epoch_seed(opt.seed, epoch, run.rank), epoch)
            mloss = train_one_epoch(run, state, epoch)
            run.scheduler.step()
            stop = False
            if run.main_process:
                lost = augmentation_losses(run, epoch)
                results, fi = validate_epoch(run, epoch)
                state.best_fitness = max(state.best_fitness, fi)
                run.logger.log_epoch(epoch, {**epoch_row(mloss, results, run.optimizer), **lost})  # lost: last
                stop = run.stopper(epoch, fi)
                if on_val is not None and results:
                    stop = bool(on_val(epoch, results)) or stop
                state.best_epoch = run.stopper.best_epoch
                if not opt.nosave or epoch + 1 == opt.epochs:
                    save_epoch(run, state, epoch, fi)
            if all_ranks_stop(run, stop):
                break
        if run.main_process:
            finish(run, epoch - state.start_epoch + 1, t0)
    except BaseException as e:
        if run.logger:  # the MLflow run ends as KILLED (Ctrl-C) or FAILED; TensorBoard is flushed
            run.logger.close("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(interrupted_message(run.save_dir)) from e
        raise
    finally:
        release_run_lock(run.lock)
        if run.local_rank != -1:
            torch.distributed.destroy_process_group()
    return {**results, "save_dir": str(run.save_dir)}


def build_run(opt: TrainOptions) -> tuple[Run, LoopState]:
    """Check every input (options, hyp, data, weights, arguments that depend on the model), build the model, data
    and optimiser, and only then create the run folder (locked) and its first files. On --resume the Run holds
    the resumed run's options, folder and MLflow run."""
    rank, local_rank, world_size = ddp_env()
    opt, ckpt = resume_options(opt)
    resumed = ckpt["opt"] if ckpt else {}  # saved with the resumed run's options: its folder and MLflow run id
    resumed_dir, mlflow_run_id = (Path(resumed["save_dir"]) if ckpt else None), resumed.get("mlflow_run_id")
    validate_options(opt)
    if opt.mlflow and rank in (-1, 0):
        check_mlflow()  # the flag asked for it: stop with one line before any work
    if rank in (-1, 0) and (opt.exist_ok or opt.resume):  # refuse a folder in use before doing any work
        check_run_lock(resumed_dir or Path(opt.project) / opt.name)
    device = select_device(opt.device, batch_size=opt.batch_size)
    if local_rank != -1:
        device = setup_ddp(device, local_rank)
    precision = choose_precision(device.type, opt.amp, device.type == "cpu" and cpu_bf16_supported())
    if rank in (-1, 0):
        if precision.warning:
            LOGGER.warning(precision.warning)
        LOGGER.info(f"Precision: {precision.label} (--amp {opt.amp})")
    hyp = load_hyp(ckpt["hyp"]) if ckpt else load_hyp(opt.hyp, hyp_overrides(opt))
    init_seeds(opt.seed + 1 + max(rank, 0), deterministic=True)
    data = check_dataset(opt.data)
    advice = None
    if opt.tiny == "auto" and not opt.resume:  # the run's options take the chosen imgsz and cfg; hyp its overrides
        opt, hyp, advice = apply_tiny_auto(opt, hyp, data)
    nc = 1 if opt.single_cls else data["nc"]
    names = {0: "item"} if opt.single_cls and len(data["names"]) != 1 else data["names"]

    # channels-last activations: ~8% faster training steps on CPU (oneDNN), preferred by tensor cores on CUDA
    model = build_model(opt, nc, hyp, device).to(memory_format=torch.channels_last)
    check_freeze(opt.freeze, len(model.model))
    gs = max(int(model.stride.max()), 32)
    imgsz = math.ceil(opt.imgsz / gs) * gs
    check_paste_hyp(hyp, imgsz)
    total_batch_size = opt.batch_size
    if total_batch_size == -1:
        check_args(batch_size=(world_size == 1, "-1 (AutoBatch) needs a single device: give the total batch size"))
        total_batch_size = autobatch(model, imgsz, device)
    batch_size = total_batch_size // max(world_size, 1)
    main_process = rank in (-1, 0)
    train_loader, dataset, val_loader = build_loaders(opt, data, hyp, imgsz, gs, batch_size, local_rank, main_process)
    tfl_auto = not opt.resume and opt.tfl == "auto"
    if tfl_auto:
        hyp = resolve_tfl_auto(hyp, dataset, imgsz)
    save_dir = plan_run_dir(opt, resumed_dir) if main_process else (resumed_dir or Path(opt.project) / opt.name)
    saved = saved_options(opt, total_batch_size, save_dir, mlflow_run_id)
    # --mlflow: the store is used (the run created or reopened) before anything is written; the run is named after
    # the folder about to be created
    mlflow = start_mlflow(saved, hyp, save_dir) if opt.mlflow and main_process else None

    # Every input is usable: the run folder, then what is written into it.
    lock = None
    try:
        if main_process:
            save_dir, lock = create_run_dir(save_dir)
            if tfl_auto and not opt.noplots:
                plot_tfl_auto_labels(hyp, dataset, imgsz, save_dir)
            start_run_files(save_dir, opt, {**saved, "precision": precision.label}, hyp, dataset, names, model,
                            imgsz)
            if advice:
                save_advice(advice, save_dir)
        freeze_layers(model, opt.freeze)
        model.nc, model.names, model.hyp = nc, names, hyp
        loss_fn = ComputeLoss(model, hyp, imgsz=imgsz)
        optimizer, scheduler = build_optimizer(model, opt, hyp, total_batch_size)
        scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
        run = Run(opt=opt, hyp=hyp, data=data, names=names, device=device, rank=rank, local_rank=local_rank,
                  world_size=world_size, save_dir=save_dir, imgsz=imgsz, batch_size=batch_size,
                  total_batch_size=total_batch_size, model=model, train_loader=train_loader, dataset=dataset,
                  val_loader=val_loader, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                  precision=precision, ema=ModelEMA(model) if main_process else NoEMA(), guard=NonFiniteGuard(),
                  stopper=EarlyStopping(opt.patience), logger=None, lock=lock,
                  mlflow_run_id=mlflow.run_id if mlflow else mlflow_run_id)
        state = LoopState(warmup_iters=max(round(hyp.warmup_epochs * len(train_loader)), 100))
        if ckpt:
            state = restore_training_state(ckpt, run, state)
            run.stopper.best_fitness, run.stopper.best_epoch = state.best_fitness, state.best_epoch
        if local_rank != -1:
            if opt.sync_bn:
                run.model = nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
            run.model = nn.parallel.DistributedDataParallel(
                run.model, device_ids=[local_rank] if device.type == "cuda" else None)
        compile_run(run, opt.epochs - state.start_epoch)
        run.logger = RunLogger(save_dir, names, mlflow=mlflow) if main_process else None
    except BaseException as e:
        if mlflow is not None:
            mlflow.end("FAILED")
        release_run_lock(lock)
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted(interrupted_message(save_dir)) from e
        raise
    return run, state


def resume_options(opt: TrainOptions) -> tuple[TrainOptions, dict | None]:
    """--resume: (the run's own options, as its checkpoint saved them, its checkpoint); (``opt``, None) for a new
    run. --mlflow and --keep-optimizer given now are kept; --compile is taken as given now (a speed choice)."""
    if not opt.resume:
        return opt, None
    path = find_resume_checkpoint(opt.resume, opt.project)
    ckpt = load_checkpoint(path)
    LOGGER.info(f"Resuming from {path} (--resume {opt.resume}) at epoch {ckpt['epoch'] + 1}")
    check_resumable(ckpt)
    saved = TrainOptions.from_saved(ckpt["opt"])
    return saved.replace(resume=str(path), weights=str(path), cfg="", exist_ok=True, mlflow=saved.mlflow or opt.mlflow,
                         keep_optimizer=saved.keep_optimizer or opt.keep_optimizer, compile=opt.compile,
                         compile_backend=opt.compile_backend), ckpt


def train_one_epoch(run: Run, state: LoopState, epoch: int) -> torch.Tensor:
    """One pass over the training data; returns the mean (box, obj, cls) losses. Advances ``state.last_opt_step``."""
    model, opt, device = run.model, run.opt, run.device
    model.train()
    nb = len(run.train_loader)
    mloss = torch.zeros(3, device=device)
    bar = tqdm(enumerate(run.train_loader), total=nb, bar_format="{l_bar}{bar:10}{r_bar}", disable=run.rank > 0)
    run.optimizer.zero_grad()
    for i, (imgs, targets, paths, _) in bar:
        ni = i + nb * epoch  # iterations since the start of training
        imgs = (imgs.to(device, non_blocking=True).float() / 255).contiguous(memory_format=torch.channels_last)
        targets = targets.to(device)
        if opt.multi_scale:
            gs = int(de_parallel(model).stride.max())
            imgs = rescale_batch(imgs, multi_scale_size(opt.imgsz, gs, random), gs)
        accumulate = set_warmup(run.optimizer, ni, state.warmup_iters, epoch, run.hyp, opt.epochs,
                                run.total_batch_size, opt.nbs, opt.cos_lr)
        with run.precision.autocast(device.type):
            preds = run.train_forward()(imgs)
        loss, parts = run.loss_fn([p.float() for p in preds], targets)  # fp32 loss whatever the forward's dtype
        if run.world_size > 1:
            loss = loss * run.world_size  # DDP averages gradients across processes
        if run.guard.check(loss, paths):
            run.scaler.scale(loss).backward()
        if ni - state.last_opt_step >= accumulate:
            optimizer_step(run)
            state.last_opt_step = ni
        if torch.isfinite(parts).all():
            mloss = (mloss * i + parts) / (i + 1)
        if run.main_process:
            bar.set_description(f"{epoch}/{opt.epochs - 1} " + " ".join(f"{n}={v:.4g}" for n, v in
                                zip(LOSS_NAMES, mloss.tolist())) + f" inst={targets.shape[0]} img={imgs.shape[-1]}")
            if not opt.noplots and ni < 3:
                plot_images(imgs, targets, paths, run.save_dir / f"train_batch{ni}.jpg")
    return mloss


def optimizer_step(run: Run) -> None:
    """Unscale (AMP), clip the gradient norm to 10, step, clear the gradients and update the EMA."""
    run.scaler.unscale_(run.optimizer)
    nn.utils.clip_grad_norm_(run.model.parameters(), max_norm=10.0)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad()
    run.ema.update(run.model)


def augmentation_losses(run: Run, epoch: int) -> dict[str, float]:
    """The epoch's labels lost to augmentation per size bucket (utils/dataset/aug_stats.py), as results.csv/TensorBoard
    columns; one warning line when more than 5 % of the tiny ones were lost."""
    counter = getattr(run.dataset, "aug_lost", None)
    if counter is None:
        return {}
    seen, lost = counter.take()
    message = lost_warning(seen, lost, run.hyp.scale, run.hyp.aug_min_side, epoch)
    if message:
        LOGGER.warning(message)
    return lost_row(seen, lost)


def validate_epoch(run: Run, epoch: int) -> tuple[dict, float]:
    """Validate the EMA model (every epoch, or only the last with --noval); returns (metrics, fitness)."""
    opt, final = run.opt, epoch + 1 == run.opt.epochs
    if opt.noval and not final:
        return {}, 0.0
    results = validate.run(run.data, batch_size=run.batch_size * 2, imgsz=run.imgsz, model=run.ema.ema,
                           single_cls=opt.single_cls, dataloader=run.val_loader, save_dir=run.save_dir,
                           plots=final and not opt.noplots, compute_loss=run.loss_fn,
                           half=run.precision.dtype == torch.float16,
                           tfl_s=opt.tiny_area or run.hyp.tfl_s, verbose=final, names=run.names,
                           forward=run.val_forward)
    return results, fitness(np.array([[results.get(k, 0.0) for k in METRIC_KEYS]]))[0] if results else 0.0


def main(argv: list[str] | None = None) -> int:
    """Command line: 0 on success; 1 after a user error (bad hyp/data YAML, missing weights, bad flags, run folder
    in use), printed as one line on stderr; 130 after Ctrl-C, saying where last.pt is and how to resume."""

    def call() -> None:
        opt = TrainOptions.from_args(get_args_parser(ArgumentParser, __doc__).parse_args(argv))
        if opt.evolve is not None:
            evolve.run_evolve(opt, train, load_hyp(opt.hyp, hyp_overrides(opt)), check_dataset)
        else:
            train(opt)

    try:
        return run_main("train.py", call, errors=(FloatingPointError,))
    except KeyboardInterrupt as e:  # Interrupted once a run or study folder exists: its message says where
        print(e.message if isinstance(e, Interrupted) else interrupted_message(None), file=sys.stderr)
        return 130


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
