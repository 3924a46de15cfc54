"""train.py's options: the command-line flags, each declared once (default, type, meaning), and the hyperparameter
overrides they carry (``--hyp-set`` and the TFL / box-loss flags)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from utils.config.hyp import parse_overrides
from utils.train import evolve
from utils.train.precision import AMP_CHOICES

ROOT = Path(__file__).resolve().parents[2]


def get_args_parser(parser: type[argparse.ArgumentParser] = argparse.ArgumentParser,
                    description: str | None = None) -> argparse.ArgumentParser:
    """train.py's options, each declared once here; ``parser=utils.cli.ArgumentParser`` turns a bad flag into a
    one-line UsageError."""
    p = parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, default="", help="initial weights: our .pt or an official YOLOv5 .pt")
    p.add_argument("--cfg", type=str, default="", help="model YAML (default yolov5n.yaml when no --weights)")
    p.add_argument("--data", type=str, default="data/synthetic-tiny.yaml", help="dataset YAML")
    p.add_argument("--hyp", type=str, default="hyp/hyp.scratch-low.yaml", help="hyperparameter YAML")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all devices; -1: AutoBatch (CUDA)")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=128, help="train and val image size (px)")
    p.add_argument("--rect", action="store_true", help="rectangular training batches")
    p.add_argument("--nbs", type=int, default=64, help="nominal batch size: gradients accumulate up to it and weight "
                   "decay is scaled to it (YOLOv5's fixed 64; smaller = more optimiser steps in a short schedule)")
    p.add_argument("--multi-scale", action="store_true", help="each batch at a random stride-aligned size in "
                   "[0.5, 1.5] x imgsz (as YOLOv5)")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume a run: its last.pt or the latest")
    p.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate after the final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable AutoAnchor")
    p.add_argument("--noplots", action="store_true", help="save no plot files")
    p.add_argument("--cache", type=str, nargs="?", const="ram", help="cache images in 'ram' (default) or on 'disk' "
                   "(resized, as .npy files beside the images)")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--allow-skipped", action="store_true", help="train even when more than 10%% of a split's images "
                   "are skipped as corrupt")
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
    p.add_argument("--keep-optimizer", action="store_true", help="keep the full training state in the final last.pt "
                   "and best.pt (default: stripped as YOLOv5 does: fp16 weights, no optimizer)")
    p.add_argument("--mlflow", action="store_true", help="also log params, metrics and artefacts to MLflow "
                   "(MLFLOW_TRACKING_URI, else the SQLite store mlruns/mlflow.db beside runs/; needs mlflow-skinny)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--amp", choices=AMP_CHOICES, default="auto", help="mixed precision: auto = fp16+GradScaler on "
                   "CUDA, bf16 on CPUs with AVX512-BF16/AMX, else fp32; on = the same, warning when only fp32 is "
                   "possible; off = fp32")
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
    p.add_argument("--tiny-area", type=float, default=None, help="validation's tiny/big size-bucket split, area in "
                   "original-image px² as val.py's buckets (default: the hyp's tfl_s)")
    # Hyperparameter search (utils/train/evolve.py)
    p.add_argument("--evolve", type=int, nargs="?", const=300, default=None, help="Optuna search: train trials "
                   "until the study holds N finished ones (300 without N); with --resume [FOLDER]: continue a study")
    p.add_argument("--evolve-space", default=str(evolve.DEFAULT_SPACE), help="search-space YAML of --evolve")
    p.add_argument("--evolve-fitness", choices=evolve.FITNESS_MODES, default="all", help="objective of --evolve: "
                   "all = 0.1 mAP@.5 + 0.9 mAP@.5:.95; tiny = the same on the tiny bucket; tiny50 = its mAP@.5")
    return p


def hyp_overrides(opt: argparse.Namespace) -> dict[str, Any]:
    """Command-line hyperparameter overrides: ``--hyp-set key=value`` strings (parsed against each key's declared
    type by utils.config.hyp) and, winning over them, the explicit flags as typed values."""
    out: dict[str, Any] = parse_overrides(opt.hyp_set)
    flags = {"tfl_k": opt.tfl_k, "tfl_s": opt.tfl_s, "tfl_piecewise": opt.tfl_piecewise, "tfl_norm": opt.tfl_norm,
             "box_loss": opt.box_loss, "label_smoothing": opt.label_smoothing,
             "tfl_terms": tuple(opt.tfl_terms) if opt.tfl_terms else None}
    if opt.tfl in ("on", "off"):
        flags["tfl"] = opt.tfl == "on"
    out.update({k: v for k, v in flags.items() if v is not None})
    return out
