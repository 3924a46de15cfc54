"""Checkpoints: safe loading (``torch.load(weights_only=True)`` only) and atomic saving.

Our format (``'format': 'tinyfocal-v1'``) holds tensors and plain Python values only: the model is stored as its
YAML dict plus a state_dict and rebuilt on load, so no code object is ever unpickled. Keys::

    format        'tinyfocal-v1'
    model_yaml    dict, DetectionModel(cfg=model_yaml) rebuilds the architecture (with 'ch' and 'nc')
    model         state_dict of the trained model (fp32 by default, fp16 after strip_optimizer or half=True)
    ema           state_dict of the EMA copy (same precision) or None; load_model prefers it
    updates       EMA update count or None
    optimizer     optimizer.state_dict() or None
    scheduler     scheduler.state_dict() or None
    epoch         last finished epoch (int, -1 after strip_optimizer)
    best_fitness  float or None
    hyp           Hyp.to_dict() or None
    opt           run options as plain values (Paths become str)
    names         {class index: name}
    stride        [input pixels per grid cell of each Detect level] (informative; the rebuilt model recomputes it)
    date, torch_version, extra (caller's plain values or None)

Official YOLOv5 v7.0 ``.pt`` files pickle whole ``nn.Module`` objects (``models.yolo.DetectionModel``, ...).
They load through an explicit allow-list (:func:`allowed_globals`): our own classes, which live at the same
module paths, plus the torch and numpy types such files need. Any other global is refused with
:class:`UnsafeCheckpointError` naming the file and the global; ``weights_only=False`` is never used. Loaded
official files are converted to our format (state_dict read straight from the module dicts, no method of the
unpickled objects is called).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pickle
import re
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import common, yolo
from models.yolo import DetectionModel
from utils.atomic import atomic_torch_save
from utils.config.hyp import HypError, load_hyp
from utils.downloads import attempt_download_weights, refresh_hint
from utils.errors import UserError

LOGGER = logging.getLogger(__name__)
FORMAT = "tinyfocal-v1"
REQUIRED_KEYS = ("format", "model_yaml", "model", "ema", "epoch", "names")
_LOAD_LOCK = threading.Lock()  # torch's safe_globals context edits a process-wide set: one load at a time
_UNSAFE_MARKERS = ("Unsupported global", "is blocked", "unrecognized function", "Can only create new object",
                   "Can only build")


# numpy dtype instances unpickle through their classes (numpy.dtypes.Float64DType, ...): numeric ones only.
_NUMPY_DTYPE_CLASSES = tuple(type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                                                          np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                                                          np.float64))


class CheckpointError(UserError):
    """A file is not a usable checkpoint; the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint references a Python global outside the allow-list; it was not loaded."""


# ---------------------------------------------------------------------------------------------------- allow-list
def allowed_globals() -> list[Any]:
    """Globals a checkpoint may reference beyond torch's defaults (tensors, storages, OrderedDict, set, ...):
    YOLOv5 v7.0 model classes (ours, at the same module paths), the torch layers they contain, and numpy arrays
    and scalars (YOLOv5 stores ``best_fitness`` as a numpy array). Entries are classes or (class, pickled name)
    for names that differ from the class's own: ``models.yolo.Model`` (pre-v6.2 files) and numpy 1.x paths."""
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    numpy_fns = []
    for fn in (multiarray._reconstruct, multiarray.scalar):
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            numpy_fns.append((fn, f"{mod}.{fn.__name__}"))
    return [
        yolo.DetectionModel, (yolo.DetectionModel, "models.yolo.Model"), yolo.Detect,
        common.Conv, common.Bottleneck, common.C3, common.SPPF, common.Concat,
        nn.Sequential, nn.ModuleList, nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.Identity, nn.Upsample, nn.MaxPool2d,
        np.ndarray, np.dtype, *numpy_fns, *_NUMPY_DTYPE_CLASSES,
    ]


# ---------------------------------------------------------------------------------------------------- loading
def _torch_load(path: Path, map_location: Any) -> Any:
    """torch.load(weights_only=True) with the allow-list; errors rephrased to name ``path``."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint file (it is a folder or a special file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    safe = allowed_globals()
    with _LOAD_LOCK, torch.serialization.safe_globals(safe):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            if "persistent_load" in msg:  # pre-1.6 format with module source code: cannot be read safely
                raise CheckpointError(f"{path}: whole modules saved in torch's legacy (non-zip) format cannot be "
                                      f"loaded with weights_only=True; re-save the weights from a trusted "
                                      f"environment ({_reason(msg)})") from None
            if not any(m in msg for m in _UNSAFE_MARKERS):
                raise CheckpointError(_not_a_checkpoint(path, _reason(msg))) from None
            raise UnsafeCheckpointError(_unsafe_message(path, msg)) from None
        except Exception as e:  # garbage fails anywhere in the unpickler: IndexError, struct.error, MemoryError, ...
            raise CheckpointError(_not_a_checkpoint(path, f"{type(e).__name__}: {_reason(str(e))}")) from None


def _not_a_checkpoint(path: Path, reason: str) -> str:
    return f"{path}: not a checkpoint (not a PyTorch checkpoint or corrupt: {reason})"


def _reason(msg: str) -> str:
    """The informative part of a torch.load error message (torch wraps it in advice about weights_only=False)."""
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(\n\s*\n|$)", msg, re.S)
    text = m.group(1) if m else next((x for x in msg.splitlines() if x.strip()), msg)
    return re.sub(r"\x1b\[[0-9;]*m", "", text.strip())[:300]


def _unsafe_message(path: Path, msg: str) -> str:
    """Name the offending global(s): the one torch stopped at, plus any others found by a static scan."""
    found = re.findall(r"GLOBAL (\S+)|got <class '([^']+)'>", msg)
    found = [a or b for a, b in found]
    try:  # a zip checkpoint can be scanned statically for every global outside the allow-list
        found += [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in found]
    except Exception:  # legacy/raw pickles cannot be scanned; the first global is enough
        pass
    what = ", ".join(repr(g) for g in found) if found else f"a disallowed object ({_reason(msg)})"
    return (f"{path}: refused to load: it references {what}, which is not on the allow-list of types a checkpoint "
            f"may contain (tensors, plain values, YOLOv5 v7.0 model classes from models.yolo / models.common). "
            f"Unpickling it could run arbitrary code, so it was not loaded (weights_only=False is never used). "
            f"If the file comes from a trusted source, re-save its weights as a state_dict.")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely and return it in our format (see the module docstring).

    Accepts our files and official YOLOv5 v7.0 ``.pt`` files (converted: ``'source': 'yolov5'``). A missing
    ``yolov5{n,s,m,l,x}{,6}.pt`` is fetched into the weights cache first (``utils.downloads``).
    Raises:
        FileNotFoundError: ``path`` does not exist (and is not an official weights name).
        DownloadError: an official weights file could not be downloaded (one line: what, from where, by hand).
        UnsafeCheckpointError: the file references a global outside :func:`allowed_globals`; nothing ran.
        CheckpointError: not a torch file, corrupt, or not a checkpoint (message names the file and why; for a
            file of the weights cache also how to refresh it).
    """
    path = attempt_download_weights(path, verify=check_loadable)
    try:
        return _read_checkpoint(path, map_location)
    except CheckpointError as e:
        hint = refresh_hint(path)  # a cached download that does not load: say how to refresh it
        if hint:
            raise type(e)(f"{e}; {hint}") from None
        raise


def check_loadable(path: str | Path) -> None:
    """Raise CheckpointError (naming ``path``) unless it loads safely as a PyTorch file (``weights_only`` with
    the allow-list). What a weights download must pass before it enters the cache."""
    _torch_load(Path(path), "cpu")


def _read_checkpoint(path: Path, map_location: Any) -> dict[str, Any]:
    obj = _torch_load(path, map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint: expected a dict, got {type(obj).__name__}")
    fmt = obj.get("format")
    if fmt == FORMAT:
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            raise CheckpointError(f"{path}: {FORMAT} checkpoint is missing key(s) {missing}")
        if not isinstance(obj["model_yaml"], dict) or not isinstance(obj["model"], dict):
            raise CheckpointError(f"{path}: 'model_yaml' and 'model' must be dicts")
        return obj
    if fmt is not None:
        raise CheckpointError(f"{path}: unsupported checkpoint format {fmt!r} (this version reads {FORMAT!r})")
    if isinstance(obj.get("model"), nn.Module) or isinstance(obj.get("ema"), nn.Module):
        return _from_yolov5(obj, path)
    raise CheckpointError(f"{path}: not a checkpoint (not a recognised checkpoint: keys {sorted(map(str, obj))[:12]};"
                          f" expected 'format': {FORMAT!r} or a YOLOv5 file with a 'model' module)")


def _module_state(m: nn.Module, where: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """state_dict of an unpickled module read from its ``__dict__`` (no methods or hooks of it are called);
    non-persistent buffers (e.g. our Detect.stride) are left out, as ``state_dict()`` does."""
    d = vars(m)
    out: dict[str, torch.Tensor] = {}
    skip = d.get("_non_persistent_buffers_set", set())
    items = [*d.get("_parameters", {}).items(), *((k, v) for k, v in d.get("_buffers", {}).items() if k not in skip)]
    for k, t in items:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{where}: {prefix}{k} is a {type(t).__name__}, expected a tensor")
        out[prefix + k] = t.detach()
    for k, sub in d.get("_modules", {}).items():
        if sub is not None:
            out.update(_module_state(sub, where, f"{prefix}{k}."))
    return out


def _names_dict(names: Any, nc: int) -> dict[int, str]:
    """Class names as {index: name} from a dict or list; defaults 'class{i}' when absent."""
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return dict(enumerate(map(str, names)))
    return {i: f"class{i}" for i in range(nc)}


def _from_yolov5(ck: dict, path: Path) -> dict[str, Any]:
    """Convert an official YOLOv5 checkpoint (whole modules) to our format."""
    model = ck.get("model") if isinstance(ck.get("model"), nn.Module) else ck["ema"]
    ema = ck.get("ema") if isinstance(ck.get("ema"), nn.Module) else None
    attrs = vars(model)
    cfg = attrs.get("yaml")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: YOLOv5 model has no 'yaml' dict to rebuild its architecture from")
    where = str(path)
    hyp = attrs.get("hyp")
    return {
        "format": FORMAT, "source": "yolov5", "model_yaml": cfg,
        "model": _module_state(model, f"{where} model"), "ema": _module_state(ema, f"{where} ema") if ema else None,
        "updates": ck.get("updates"), "optimizer": ck.get("optimizer"), "scheduler": None,
        "epoch": int(ck.get("epoch", -1)), "best_fitness": _plain(ck.get("best_fitness"), "best_fitness"),
        "hyp": dict(hyp) if isinstance(hyp, Mapping) else None, "opt": ck.get("opt") or {},
        "names": _names_dict(attrs.get("names"), int(cfg.get("nc", 0))), "stride": None,
        "date": ck.get("date"), "torch_version": None, "extra": None,
    }


def load_model(path: str | Path, device: str | torch.device = "cpu", fuse: bool = False) -> nn.Module:
    """Rebuild the DetectionModel saved in ``path`` (ours or official YOLOv5 v7.0) and load its weights.

    The EMA weights are used when present, else the model weights. Returns an fp32 model in eval mode on
    ``device`` with ``names`` ({index: name}), ``hyp`` (a Hyp, or None when absent/invalid) and ``train_imgsz``
    (:func:`trained_imgsz`) set; ``stride`` comes from the rebuilt architecture. ``fuse`` folds BatchNorm into
    convolutions (inference only).
    Raises the errors of :func:`load_checkpoint`, and CheckpointError when the weights do not fit the YAML.
    """
    ck = load_checkpoint(path)
    cfg = ck["model_yaml"]
    act = cfg.get("activation")
    if act not in (None, "nn.SiLU()"):
        raise CheckpointError(f"{path}: model activation {act!r} is not supported (only nn.SiLU)")
    try:
        model = DetectionModel(cfg)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from its 'model_yaml': {e}") from e
    state = ck["ema"] or ck["model"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the architecture in 'model_yaml': {e}") from e
    model.names = _names_dict(ck["names"], model.yaml["nc"])
    model.hyp = _hyp_or_none(ck.get("hyp"), path)
    model.train_imgsz = trained_imgsz(ck)
    model = model.float().to(device).eval()
    return model.fuse() if fuse else model


def trained_imgsz(ck: Mapping[str, Any]) -> int | None:
    """The input size (px, long side) a checkpoint was trained at: ``opt['imgsz']`` as train.py and YOLOv5 save it
    (an int, or [train, val] in old YOLOv5 files: the largest); None when not recorded or not a positive int."""
    opt = ck.get("opt")
    v = opt.get("imgsz") if isinstance(opt, Mapping) else None
    sizes = v if isinstance(v, (list, tuple)) else [v]
    sizes = [int(x) for x in sizes if isinstance(x, int | float) and not isinstance(x, bool) and x >= 1]
    return max(sizes) if sizes else None


def _hyp_or_none(d: Any, path: Path) -> Any:
    if not isinstance(d, Mapping):
        return None
    try:
        return load_hyp(dict(d))
    except HypError as e:
        LOGGER.warning(f"{path}: stored hyperparameters ignored ({e})")
        return None


# ---------------------------------------------------------------------------------------------------- saving
def _plain(x: Any, where: str) -> Any:
    """``x`` as values ``torch.load(weights_only=True)`` reads without an allow-list: Paths -> str, numpy scalars
    and size-1 arrays -> Python numbers, other arrays -> lists, Namespaces/Hyp -> dicts, tensors kept.
    Raises TypeError naming ``where`` for anything else."""
    if x is None or isinstance(x, (torch.Tensor, torch.dtype, torch.device)):
        return x
    for t in (bool, int, float, str, bytes):  # exact types: subclasses (TorchVersion, IntEnum) need a global
        if isinstance(x, t):
            return t(x)
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.item() if x.size == 1 else x.tolist()
    if isinstance(x, argparse.Namespace):
        x = vars(x)
    elif hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        vals = [_plain(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return tuple(vals) if isinstance(x, tuple) else vals
    raise TypeError(f"checkpoint {where}: cannot save a {type(x).__name__} (only tensors and plain values)")


def _tensors(state: Mapping[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """The state_dict's tensors on the CPU (no copy for CPU tensors: torch.save reads them at once); floating
    tensors in fp16 when ``half``."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        out[k] = v.half() if half and v.is_floating_point() else v
    return out


def save_checkpoint(path: str | Path, *, model: nn.Module, ema: Any = None, optimizer: Any = None,
                    scheduler: Any = None, epoch: int, best_fitness: float | None, hyp: Any, opt: Any,
                    names: Mapping | list | None, extra: Mapping | None = None, half: bool = False) -> Path:
    """Save a training checkpoint in our format, atomically (see utils.atomic). Returns ``path``.

    Args:
        model: the DetectionModel (DataParallel/DDP wrappers are unwrapped); needs ``yaml``.
        ema: a ModelEMA (``.ema`` module and ``.updates``) or a bare module, or None.
        optimizer, scheduler: objects with ``state_dict()``, or None.
        hyp: a Hyp, dict or None; opt: a dict or argparse.Namespace of run options; names: class names.
        half: store floating weights in fp16 (YOLOv5 does); the default fp32 makes --resume exact.
    Raises:
        TypeError: a value (in opt, hyp, extra, ...) is not a tensor or plain value; the message names its key.
    """
    model = model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    ema_model, updates = (ema.ema, ema.updates) if hasattr(ema, "ema") else (ema, None)
    nc = int(model.yaml["nc"])
    ck = {
        "format": FORMAT,
        "model_yaml": _plain(model.yaml, "model_yaml"),
        "model": _tensors(model.state_dict(), half),
        "ema": _tensors(ema_model.state_dict(), half) if ema_model is not None else None,
        "updates": updates,
        "optimizer": _plain(optimizer.state_dict(), "optimizer") if optimizer is not None else None,
        "scheduler": _plain(scheduler.state_dict(), "scheduler") if scheduler is not None else None,
        "epoch": int(epoch),
        "best_fitness": _plain(best_fitness, "best_fitness"),
        "hyp": _plain(hyp, "hyp"),
        "opt": _plain(opt or {}, "opt"),
        "names": _names_dict(_plain(names, "names"), nc),
        "stride": [float(s) for s in getattr(model, "stride", [])],
        "date": datetime.now().isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
        "extra": _plain(extra, "extra"),
    }
    return atomic_torch_save(ck, path)


def transfer_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                     exclude: tuple[str, ...] = ()) -> tuple[int, int]:
    """Copy every tensor of ``state_dict`` whose key and shape match ``model``'s (keys containing any ``exclude``
    string are skipped). Returns (transferred, total tensors in the model)."""
    own = model.state_dict()
    keep = {k: v for k, v in state_dict.items()
            if k in own and v.shape == own[k].shape and not any(x in k for x in exclude)}
    model.load_state_dict(keep, strict=False)
    return len(keep), len(own)


def strip_optimizer(path: str | Path, out: str | Path | None = None) -> Path:
    """Finalise a checkpoint for inference, as YOLOv5 does: the EMA weights (else the model's) in fp16 become
    'model'; optimizer, scheduler, ema, updates and best_fitness are dropped; epoch = -1. Official YOLOv5 files are
    written in our format. Written atomically to ``out`` (default: over ``path``); returns the written path.
    The result loads like any checkpoint: :func:`load_model` and train.py --weights cast its fp16 weights to fp32
    exactly (fp16 -> fp32 is lossless); --resume refuses it (no training state left)."""
    ck = load_checkpoint(path)
    state = ck["ema"] or ck["model"]
    ck.update(model=_tensors(state, half=True), ema=None, optimizer=None, scheduler=None, updates=None,
              best_fitness=None, epoch=-1)
    dst = Path(out) if out else Path(path)
    atomic_torch_save(ck, dst)
    LOGGER.info(f"Optimizer stripped from {path}{f', saved as {dst}' if out else ''}, "
                f"{dst.stat().st_size / 1e6:.1f} MB")
    return dst
