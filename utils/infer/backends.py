"""Exported-model backends: the shared :class:`Backend` base, export metadata parsing, TorchScript and OpenVINO.

``utils.infer.detector.load_backend`` picks the class from the path; ``utils.infer.detector`` holds the
PyTorch-checkpoint and ONNX Runtime backends. Every backend exposes ``device``, ``stride`` (tensor of per-level strides,
input px), ``nc``, ``names``, ``hyp`` (dict or None), ``train_imgsz`` (input px, None when not recorded), ``dynamic``
(any input size) and ``__call__(im)``: ``im`` (bs, 3, H, W) float in [0, 1] -> ``pred`` (bs, N, 5 + nc) ``[x, y, w, h,
obj, cls...]`` in input pixels, float32.

Export metadata (written by export.py in every format; YOLOv5 v7.0's own loader reads the first two):
``stride`` the largest stride (int, input px), ``names`` {class index: name}, ``strides`` per-level strides,
``nc``, ``imgsz`` [h, w] exported input size, ``train_imgsz`` and ``hyp`` when known. Older exports of ours stored
``stride`` as the per-level list; YOLOv5's own exports lack ``strides``/``nc``: both still load.
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from utils.checkpoints import CheckpointError
from utils.errors import UserError
from utils.infer.slicing import sliced_predictions

LOGGER = logging.getLogger(__name__)
META_REQUIRED = ("names", "stride")  # what a model needs to be usable; the other keys have fallbacks
PAD_VALUE = 114 / 255  # letterbox grey, for inputs padded up to a fixed exported size
OPENVINO_HINT = "pip install openvino"


class Backend:
    """Shared parts: metadata attributes and sliced inference built on ``__call__``."""

    device: torch.device
    stride: torch.Tensor
    nc: int | None
    names: dict[int, str]
    hyp: dict | None
    train_imgsz: int | None = None
    fp16: bool = False
    dynamic: bool = True

    def __call__(self, im: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def sliced(self, im: torch.Tensor, slice_size: int, overlap: float = 0.2, **kwargs: Any) -> torch.Tensor:
        """Sliced inference on network inputs (see ``utils.infer.slicing.sliced_predictions``; ``kwargs`` go there)."""
        kwargs.setdefault("stride", int(self.stride.max()))
        return sliced_predictions(im, self, slice_size, overlap, **kwargs)

    def warmup(self, imgsz: tuple[int, int, int, int] = (1, 3, 640, 640)) -> None:
        """One forward on zeros (first-call allocations out of the timings)."""
        self(torch.zeros(imgsz, device=self.device))

    def set_metadata(self, meta: Mapping[str, Any], path: Path, kind: str) -> None:
        """Set names, stride, nc, hyp, train_imgsz from decoded export metadata (see the module docstring).
        Raises CheckpointError naming ``path`` when a required key is missing or a value is malformed."""
        missing = [k for k in META_REQUIRED if k not in meta]
        if missing:
            raise CheckpointError(f"{path}: {kind} metadata lacks {missing}; export it with export.py")
        try:
            names = meta["names"]
            names = dict(enumerate(names)) if isinstance(names, list | tuple) else names
            self.names = {int(k): str(v) for k, v in names.items()}
            stride = meta.get("strides", meta["stride"])  # per-level list; older files: 'stride' was the list
            self.stride = torch.tensor(stride if isinstance(stride, list | tuple) else [stride], dtype=torch.float32)
            self.nc = int(meta.get("nc", len(self.names)))
            self.hyp = dict(meta["hyp"]) if meta.get("hyp") is not None else None
            self.train_imgsz = int(meta["train_imgsz"]) if meta.get("train_imgsz") else None
        except (ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: unreadable {kind} metadata ({e})") from None


def decode_props(props: Mapping[str, str]) -> dict[str, Any]:
    """ONNX ``metadata_props`` strings -> values: JSON, else a Python literal (YOLOv5 writes ``names`` as a dict
    repr, ``{0: 'person'}``), else the string itself."""
    out = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            try:
                out[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                out[k] = v
    return out


def fixed_side(backend: Any) -> int | None:
    """The side (input px) of the largest square input a model exported at a fixed size takes: its smaller fixed
    spatial dimension (smaller inputs are padded up by :func:`fit_fixed_input`). None when height and width are
    dynamic, or for a backend without an input ``shape`` (PyTorch)."""
    dims = [d for d in (getattr(backend, "shape", None) or [])[2:] if isinstance(d, int) and d > 0]
    return min(dims) if dims else None


def fixed_size_notice(weights: str | Path, fixed: int | tuple[int, int]) -> str:
    """The one line detect.py, the hub and val.py log when a fixed-size export overrides the requested size;
    ``fixed``: its side, or (h, w) input px."""
    size = fixed if isinstance(fixed, int) else str(fixed[0]) if fixed[0] == fixed[1] else f"{fixed[0]}x{fixed[1]}"
    return f"{weights}: exported at a fixed {size} px: using imgsz {size}"


def fit_fixed_input(x: np.ndarray, shape: list, path: Path) -> np.ndarray:
    """Pad (bs, 3, h, w) ``x`` right/bottom with grey up to a fixed exported (h, w) so that coordinates are unchanged.
    ``shape``: the model's input shape, ints for fixed axes. Raises ValueError when ``x`` is larger."""
    bs, _, h, w = x.shape
    fixed_h, fixed_w = (d if isinstance(d, int) and d > 0 else None for d in shape[2:])
    if (fixed_h and h > fixed_h) or (fixed_w and w > fixed_w):
        raise UserError(f"{path}: input {h}x{w} is larger than the exported fixed size {fixed_h}x{fixed_w}; "
                         "re-export with --dynamic or a larger --imgsz")
    if (fixed_h and h < fixed_h) or (fixed_w and w < fixed_w):
        pad = np.full((bs, 3, fixed_h or h, fixed_w or w), PAD_VALUE, dtype=x.dtype)
        pad[:, :, :h, :w] = x
        return pad
    return x


class TorchScriptBackend(Backend):
    """A ``.torchscript`` file traced by export.py (or YOLOv5's export.py): ``torch.jit.load`` only, metadata from
    its ``config.txt`` extra file (JSON)."""

    def __init__(self, path: Path, device: torch.device, half: bool = False):
        extra = {"config.txt": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                self.model = torch.jit.load(str(path), map_location=device, _extra_files=extra).eval()
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path}: not a TorchScript model ({str(e).splitlines()[0][:200]})") from None
        try:
            meta = json.loads(extra["config.txt"] or "{}")
        except ValueError as e:
            raise CheckpointError(f"{path}: unreadable TorchScript config.txt ({e})") from None
        self.set_metadata(meta, path, "TorchScript")
        self.device, self.path = device, path
        self.fp16 = half and device.type == "cuda"
        if self.fp16:
            self.model.half()
        self.model.to(memory_format=torch.channels_last)  # as TorchBackend: oneDNN's CPU convolutions prefer it

    @torch.no_grad()
    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        im = im.to(self.device, torch.float16 if self.fp16 else torch.float32)
        y = self.model(im.contiguous(memory_format=torch.channels_last))
        return (y[0] if isinstance(y, list | tuple) else y).float()  # YOLOv5's own traces return a 1-tuple


def openvino_xml(path: Path) -> Path:
    """The ``.xml`` of an OpenVINO model given the file or its ``*_openvino_model`` folder."""
    if path.is_file():
        return path
    xmls = sorted(path.glob("*.xml"))
    if not xmls:
        raise CheckpointError(f"{path}: no OpenVINO .xml model in this folder")
    return xmls[0]


class MissingPackageError(UserError, ImportError):
    """An optional package a model format needs is not installed; the message says how to install it. A ValueError
    too, so that the entry points report it as one line (utils.cli.USER_ERRORS) instead of a traceback."""


def import_openvino(what: str):
    """The ``openvino`` module; MissingPackageError naming ``what`` and the install command when it is missing."""
    try:
        import openvino
    except ImportError:
        raise MissingPackageError(f"{what} needs the openvino package: {OPENVINO_HINT}") from None
    return openvino


@functools.cache
def openvino_core():
    """The process's one ``openvino.Core``, created on first use and kept until exit.

    Why one: OpenVINO's CPU plugin gives the thread that creates a Core its own signal stack (``sigaltstack``) and
    puts the previous one back when that Core is freed. Two Cores freed in the order they were made (first made,
    first freed: what garbage collection does) leave the thread pointing at a stack that is already unmapped, and the
    next signal a handler catches (Python's handlers, e.g. PyTorch's SIGCHLD handler for DataLoader workers, run on
    that stack) kills the process with SIGSEGV. One Core that is never freed never unwinds out of order."""
    return import_openvino("running OpenVINO models").Core()


class OpenVinoBackend(Backend):
    """An OpenVINO IR (``*_openvino_model/NAME.xml`` + ``.bin``) on the CPU plugin, latency hint; metadata from
    ``NAME.yaml`` beside it (YOLOv5's layout). ``threads``: the plugin's inference threads (None: its default)."""

    def __init__(self, path: Path, device: torch.device, threads: int | None = None):
        import_openvino(f"{path}: running OpenVINO models")  # the one-line error names the model
        xml = openvino_xml(path)
        meta_file = xml.with_suffix(".yaml")
        if not meta_file.is_file():
            raise CheckpointError(f"{path}: no metadata file {meta_file.name} beside {xml.name}; export with export.py")
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8"))
        self.set_metadata(meta if isinstance(meta, dict) else {}, meta_file, "OpenVINO")
        if device.type != "cpu":
            LOGGER.warning(f"{path}: OpenVINO runs on the CPU here, not on {device}")
        # f32: the CPU plugin otherwise runs bf16 on CPUs with AVX512-BF16 or AMX, silently off by ~1e-3 from the
        # fp32 model that was exported (and from the same file on any other CPU)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = openvino_core()
        try:
            model = core.read_model(str(xml))
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as e:
            raise CheckpointError(f"{xml}: not a loadable OpenVINO model ({str(e).splitlines()[0][:200]})") from None
        self.request = self.compiled.create_infer_request()
        pshape = model.inputs[0].get_partial_shape()
        self.shape = [d.get_length() if d.is_static else -1 for d in pshape]  # -1: dynamic axis
        self.dynamic = pshape.is_dynamic
        self.device, self.path = device, xml

    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        x = fit_fixed_input(im.detach().cpu().float().numpy(), self.shape, self.path)
        fixed_b = self.shape[0] if self.shape[0] > 0 else None
        xs = [x[i:i + 1] for i in range(len(x))] if fixed_b and len(x) != fixed_b else [x]
        out = [self.request.infer({0: xi})[0].copy() for xi in xs]
        return torch.from_numpy(np.concatenate(out) if len(out) > 1 else out[0]).float().to(im.device)
