"""Export formats besides ONNX: TorchScript, OpenVINO IR and a YOLOv5-loadable state_dict; the metadata they share.

Every writer takes an already built model (or ONNX file) and the metadata dict of :func:`export_metadata`, and
writes its files atomically (a reader never sees half a file). File names follow YOLOv5's export.py for a model
``NAME``: ``NAME.torchscript``, ``NAME_openvino_model/NAME.{xml,bin,yaml}``; ours: ``NAME-yolov5.{pt,yaml}``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from utils.atomic import atomic_torch_save, atomic_write, atomic_write_text
from utils.infer.backends import import_openvino

LOGGER = logging.getLogger(__name__)


def export_metadata(model: nn.Module, imgsz: tuple[int, int]) -> dict[str, Any]:
    """Plain-value metadata of ``model`` exported at ``imgsz`` (h, w) input px, as YOLOv5 v7.0 expects it
    (``stride`` the largest stride as an int, ``names`` {int: str}) plus ours (``strides`` per level, ``nc``,
    ``imgsz``, ``train_imgsz`` and ``hyp`` when known). Read back by ``utils.infer.backends.Backend.set_metadata``."""
    meta = {"stride": int(max(model.stride)), "names": {int(k): str(v) for k, v in model.names.items()},
            "strides": [float(s) for s in model.stride], "nc": int(model.yaml["nc"]), "imgsz": list(imgsz)}
    if getattr(model, "train_imgsz", None):
        meta["train_imgsz"] = int(model.train_imgsz)
    hyp = getattr(model, "hyp", None)
    if hyp is not None:
        try:  # through JSON: plain lists and scalars only (YAML and JSON writers both accept them)
            meta["hyp"] = json.loads(json.dumps(hyp.to_dict() if hasattr(hyp, "to_dict") else dict(hyp)))
        except (TypeError, ValueError):
            LOGGER.warning("hyperparameters are not JSON-serialisable: not stored in the export metadata")
    return meta


def onnx_props(meta: dict[str, Any]) -> dict[str, str]:
    """Metadata as ONNX ``metadata_props`` strings: ``names`` as a Python dict literal and ``stride`` as an int,
    which YOLOv5's DetectMultiBackend parses with ``eval`` and ``int``; the other values as JSON."""
    return {k: repr(v) if k == "names" else json.dumps(v) for k, v in meta.items()}


def export_torchscript(wrapper: nn.Module, x: torch.Tensor, f: Path, meta: dict[str, Any]) -> Path:
    """Trace ``wrapper`` (input -> ``pred``) on ``x`` and save it to ``f`` with ``config.txt`` = JSON metadata plus
    ``shape`` (YOLOv5's layout, read by ``torch.jit.load(f, _extra_files={'config.txt': ''})``).

    The trace keeps the grid sizes symbolic (the Detect head reads them from the feature maps), so the file runs
    at any input size that is a multiple of the stride; the trace check is off because Detect caches its grids,
    which makes a second trace differ from the first."""
    detect = wrapper.model.model[-1]
    detect._grids = [None] * detect.nl  # a cached grid would be traced as a constant
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on the grid cache
            ts = torch.jit.trace(wrapper, x, check_trace=False)
    finally:
        detect._grids = [None] * detect.nl
    extra = {"config.txt": json.dumps({"shape": list(x.shape), **meta})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice: YOLOv5's format is asked for
        return atomic_write(f, lambda fh: torch.jit.save(ts, fh, _extra_files=extra))


def export_openvino(onnx_file: Path, out_dir: Path, meta: dict[str, Any]) -> Path:
    """Convert ``onnx_file`` to OpenVINO IR in ``out_dir`` (``NAME.xml`` fp32 graph + ``NAME.bin`` fp32 weights,
    ``NAME.yaml`` metadata, NAME = ``out_dir``'s name without ``_openvino_model``); returns the folder.

    Written to a temporary sibling folder first and moved into place, replacing an older export of that name.
    Raises MissingPackageError (one line: ``pip install openvino``) when openvino is not installed."""
    ov = import_openvino("--include openvino")
    name = out_dir.name.removesuffix("_openvino_model")
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")  # mkdir, unlike mkdtemp, keeps the umask's mode
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model = ov.convert_model(str(onnx_file))
        ov.save_model(model, str(tmp / f"{name}.xml"), compress_to_fp16=False)  # fp32: same numbers as ONNX
        atomic_write_text(tmp / f"{name}.yaml", yaml.safe_dump(meta, sort_keys=False, default_flow_style=None))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_yolov5_pt(model: nn.Module, f: Path) -> tuple[Path, Path]:
    """Write ``f`` = the (unfused) model's state_dict as plain fp32 tensors (``torch.load(f, weights_only=True)``
    reads it; no class of ours is pickled) and ``f`` with ``.yaml``: the model config (``backbone``, ``head``,
    ``anchors``, ``nc``, ...) plus ``names`` and ``stride``, which YOLOv5 v7.0 rebuilds the model from::

        m = yolov5.models.yolo.Model("NAME-yolov5.yaml")       # extra keys names/stride are ignored by Model
        m.load_state_dict(torch.load("NAME-yolov5.pt"), strict=True); m.names = cfg["names"]

    Anchors are in the state_dict in grid cells, as YOLOv5 keeps them after construction."""
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
             for k, v in model.state_dict().items()}
    cfg = json.loads(json.dumps(model.yaml))  # plain lists/dicts/scalars
    cfg.update(names={int(k): str(v) for k, v in model.names.items()}, stride=[float(s) for s in model.stride])
    f_yaml = f.with_suffix(".yaml")
    atomic_torch_save(state, f)
    atomic_write_text(f_yaml, yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
    return f, f_yaml
