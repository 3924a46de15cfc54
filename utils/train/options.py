"""train.py's options: the command-line flags, each declared once (default, type, meaning) in
:func:`get_args_parser`; :class:`TrainOptions`, the frozen object they are parsed into once (and that options saved
with a run are read back into); the hyperparameter overrides they carry (``--hyp-set`` and the TFL / box-loss
flags); and the checks of options and data before and while a run goes (flag combinations, ``--freeze``, the share
of images skipped as corrupt, a study.db that Optuna cannot use)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from utils.cli import check_args
from utils.compiler import add_compile_arguments
from utils.config.hyp import HYP_DIR, Hyp, load_hyp, parse_overrides
from utils.errors import DatasetError, UsageError, UserError
from utils.ops.nms import MAX_IMGSZ
from utils.train.precision import AMP_CHOICES
from utils.train.schedule import NOMINAL_BATCH

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SPACE = HYP_DIR / "evolve.yaml"  # --evolve-space
FITNESS_MODES = ("all", "tiny", "tiny50")  # --evolve-fitness
OPTUNA_TABLES = {"studies", "alembic_version"}  # tables every Optuna RDB storage holds (a study.db must have them)


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
    p.add_argument("--nbs", type=int, default=NOMINAL_BATCH, help="nominal batch size: gradients accumulate up to "
                   "it and weight decay is scaled to it (YOLOv5's fixed 64; smaller = more optimiser steps in a short "
                   "schedule)")
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
    add_compile_arguments(p)  # --compile [MODE], --compile-backend (utils/compiler.py)
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
    p.add_argument("--tiny", choices=["auto"], default=None, help="auto: choose the input scale, P2, the positive "
                   "weight and copy-paste from the training labels and hyp/tiny_auto.yaml (writes tiny_auto.json)")
    p.add_argument("--tiny-max-cost", type=float, default=None, help="--tiny auto: at most this many times the "
                   "baseline's inference time (a scale s costs ~s^2)")
    # Hyperparameter search (utils/train/evolve.py)
    p.add_argument("--evolve", type=int, nargs="?", const=300, default=None, help="Optuna search: train trials "
                   "until the study holds N finished ones (300 without N); with --resume [FOLDER]: continue a study")
    p.add_argument("--evolve-space", default=str(DEFAULT_SPACE), help="search-space YAML of --evolve")
    p.add_argument("--evolve-fitness", choices=FITNESS_MODES, default="all", help="objective of --evolve: "
                   "all = 0.1 mAP@.5 + 0.9 mAP@.5:.95; tiny = the same on the tiny bucket; tiny50 = its mAP@.5")
    return p


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """train.py's options, parsed once and never changed: one field per flag of :func:`get_args_parser`, which
    declares each flag's default and meaning (so the fields have no defaults here). Build it with
    :meth:`from_args` (a parse result) or :meth:`from_saved` (the options a run saved), derive variants with
    :meth:`replace`. Values a run computes (its folder, AutoBatch's batch size, the MLflow run id, the resumed
    state) live in the run (utils.train.run.Run), not here. Lists become tuples."""

    weights: str
    cfg: str
    data: str
    hyp: str | Hyp  # a hyp YAML, or (an --evolve trial) the trial's full hyperparameters
    epochs: int
    batch_size: int  # total over all devices; -1: AutoBatch (the run's choice is Run.total_batch_size)
    imgsz: int
    rect: bool
    nbs: int
    multi_scale: bool
    resume: bool | str  # False, True (the latest run) or a checkpoint path (--evolve: a study folder)
    nosave: bool
    noval: bool
    noautoanchor: bool
    noplots: bool
    cache: str | None
    device: str
    single_cls: bool
    allow_skipped: bool
    optimizer: str
    sync_bn: bool
    workers: int
    project: str
    name: str
    exist_ok: bool
    cos_lr: bool
    label_smoothing: float | None
    patience: int
    freeze: tuple[int, ...]
    save_period: int
    keep_optimizer: bool
    mlflow: bool
    seed: int
    amp: str
    compile: str | None  # torch.compile mode, None: eager (a speed choice of the command: --resume takes it as given)
    compile_backend: str
    local_rank: int
    tfl: str | None
    tfl_k: float | None
    tfl_s: float | None
    tfl_piecewise: bool | None
    tfl_norm: str | None
    tfl_terms: tuple[str, ...] | None
    box_loss: str | None
    hyp_set: tuple[str, ...]
    tiny_area: float | None
    tiny: str | None
    tiny_max_cost: float | None
    evolve: int | None
    evolve_space: str
    evolve_fitness: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainOptions:
        """The options of a parse result of :func:`get_args_parser`. Raises TypeError when ``args`` lacks a field
        or holds a value no field names (a flag added to the parser and not here, or a misspelt attribute)."""
        given, names = vars(args), {f.name for f in dataclasses.fields(cls)}
        if given.keys() != names:
            raise TypeError(f"train options: no field for {sorted(given.keys() - names)}, no value for "
                            f"{sorted(names - given.keys())}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> TrainOptions:
        """The options a run saved (opt.yaml, a checkpoint's 'opt'), read back for --resume. Flags the run predates
        take the parser's defaults (the one place where that happens); other keys (``save_dir``,
        ``mlflow_run_id``, options since removed) are not options and are left out. A trial's hyp dict becomes
        a Hyp."""
        values = vars(get_args_parser().parse_args([]))
        values.update({k: v for k, v in saved.items() if k in values})
        if isinstance(values["hyp"], Mapping):
            values["hyp"] = load_hyp(dict(values["hyp"]))
        return cls.from_args(argparse.Namespace(**values))

    def replace(self, **changes: Any) -> TrainOptions:
        """A copy with ``changes`` (field names) applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values in the flags' order, as argparse gives them (lists, a hyp YAML path or dict)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(v: Any) -> Any:
    """A field's value as YAML, a checkpoint and MLflow take it (lists, dicts, strings)."""
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, Hyp):
        return v.to_dict()
    return str(v) if isinstance(v, Path) else v


def saved_options(opt: TrainOptions, total_batch_size: int, save_dir: Path, mlflow_run_id: str | None = None
                  ) -> dict[str, Any]:
    """What a run saves as its options (opt.yaml, every checkpoint's 'opt', MLflow's 'opt/' parameters) and
    --resume reads back: the flags, --batch-size as the run trains with it (AutoBatch's choice), the run folder,
    and the MLflow run id that --resume continues."""
    out = {**opt.to_dict(), "batch_size": total_batch_size, "save_dir": str(save_dir)}
    return {**out, "mlflow_run_id": mlflow_run_id} if mlflow_run_id else out


def hyp_overrides(opt: TrainOptions) -> dict[str, Any]:
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


SKIP_LIMIT = 0.1  # share of a split's images skipped as corrupt above which training stops (--allow-skipped: go on)
CACHE_MODES = ("ram", "disk")


# --- options --------------------------------------------------------------------------------------------------------
def validate_options(opt: TrainOptions) -> None:
    """Check train.py's options that argparse cannot (ranges, optional values) before any work is done.
    Raises UsageError naming the flag."""
    check_args(epochs=(opt.epochs >= 1, f"must be >= 1, got {opt.epochs}"),
               batch_size=(opt.batch_size >= 1 or opt.batch_size == -1,
                           f"must be >= 1, or -1 for AutoBatch (CUDA), got {opt.batch_size}"),
               imgsz=(1 <= opt.imgsz <= MAX_IMGSZ, f"must be in [1, {MAX_IMGSZ}] px, got {opt.imgsz}"),
               nbs=(opt.nbs >= 1, f"must be >= 1, got {opt.nbs}"),
               workers=(opt.workers >= 0, f"must be >= 0, got {opt.workers}"),
               cache=(opt.cache in (None, False, *CACHE_MODES), f"must be 'ram' or 'disk', got {opt.cache!r}"),
               freeze=(min(opt.freeze, default=0) >= 0, f"layer numbers must be >= 0, got {list(opt.freeze)}"),
               tiny_max_cost=(opt.tiny_max_cost is None or opt.tiny is not None,
                              "only applies with --tiny auto (it caps the scale --tiny auto may choose)"),
               # a compiled forward is specialised to one input shape: a new shape per batch would recompile
               compile=(not (opt.compile and (opt.multi_scale or opt.rect)),
                        "needs fixed training shapes: drop --multi-scale and --rect (validation is padded for it)"))


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
    """Short reason of one corrupt-pair message of the label scan (utils/dataset/labels.py), e.g. ``class id >=
    nc=1``."""
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


class StudyError(UserError):
    """study.db cannot be used as an Optuna study (damaged, not a database, another program's tables)."""


def study_db_error(db: Path, why: BaseException | str) -> StudyError:
    """The one-line error for a study.db Optuna cannot use; ``why``: the database's error (first line kept)."""
    reason = next((x.strip() for x in str(why).splitlines() if x.strip()), type(why).__name__)[:200]
    return StudyError(f"{db}: not a usable Optuna study database ({reason}); move it away to start a new study in "
                      "this folder, or choose another --name")


def check_study_db(db: Path) -> None:
    """Raise StudyError when the existing, non-empty file ``db`` cannot be an Optuna database (not SQLite, or SQLite
    with other tables), reading it without writing: Optuna would first add its tables to another program's
    database. A missing or empty file passes (Optuna creates the study)."""
    if not db.is_file() or not db.stat().st_size:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:
            tables = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.DatabaseError as e:
        raise study_db_error(db, e) from None
    if tables and not OPTUNA_TABLES <= set(tables):
        raise study_db_error(db, f"an SQLite database without Optuna's tables: {', '.join(tables[:5])}")
