"""The objects of one training run, named: :class:`Run` (model, EMA, optimiser, loaders, loss, loggers, folders) and
:class:`NoEMA`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from utils.compiler import CompiledForward
from utils.config.hyp import Hyp
from utils.dataset.dataloaders import LoadImagesAndLabels
from utils.loss.compute_loss import ComputeLoss
from utils.torch_utils import ModelEMA
from utils.train.loggers import RunLogger
from utils.train.loop import EarlyStopping, NonFiniteGuard
from utils.train.options import TrainOptions, saved_options
from utils.train.precision import FP32, Precision


class NoEMA:
    """Stands in for ModelEMA on DDP ranks other than 0: they update nothing and never save."""

    def update(self, model: nn.Module) -> None:
        pass


@dataclass
class Run:
    """Everything one training run is made of, built once before the first epoch (train.build_run)."""

    opt: TrainOptions  # the command line (on --resume: the run's own, saved in its checkpoint)
    hyp: Hyp  # validated hyperparameters (after --tfl auto), saved as hyp.yaml
    data: dict[str, Any]  # the checked data YAML (data.prepare.check_dataset)
    names: dict[int, str]  # class names the model predicts ({0: 'item'} with --single-cls on multi-class data)
    device: torch.device
    rank: int  # DDP rank, -1 without DDP
    local_rank: int  # DDP rank on this machine, -1 without DDP
    world_size: int  # DDP processes, 1 without DDP
    save_dir: Path  # the run folder (only rank -1/0 writes to it)
    imgsz: int  # train and val image size, input px (a multiple of the largest stride)
    batch_size: int  # images per batch per process (total_batch_size / world_size)
    total_batch_size: int  # images per batch over all processes: --batch-size, or AutoBatch's choice for -1
    model: nn.Module  # DetectionModel, DDP-wrapped under DDP
    train_loader: DataLoader
    dataset: LoadImagesAndLabels  # the training set
    val_loader: DataLoader | None  # rank -1/0 only
    loss_fn: ComputeLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler  # AMP loss scaling, enabled with fp16 only (CUDA)
    ema: ModelEMA | NoEMA
    guard: NonFiniteGuard  # skips non-finite losses, stops after too many in a row
    stopper: EarlyStopping
    logger: RunLogger | None  # results.csv + TensorBoard, rank -1/0 only
    lock: Path | None = None  # the run folder's lock file, removed when the run ends
    precision: Precision = FP32  # --amp's choice: the forward pass's autocast dtype (utils.train.precision)
    mlflow_run_id: str | None = None  # --mlflow's run (saved with the options: --resume continues it)
    # --compile: the training forward of ``model`` and the validation forward of the EMA, compiled (utils.compiler);
    # None: eager. ``model`` and ``ema`` stay the plain modules that checkpoints save.
    forward: CompiledForward | None = None
    val_forward: CompiledForward | None = None

    def train_forward(self) -> Callable:
        """What the training step calls on the images: the compiled forward, else the model."""
        return self.forward or self.model

    @property
    def main_process(self) -> bool:
        return self.rank in (-1, 0)

    def saved_options(self) -> dict[str, Any]:
        """The options every checkpoint saves and --resume reads back (utils.train.options.saved_options)."""
        return saved_options(self.opt, self.total_batch_size, self.save_dir, self.mlflow_run_id)
