"""Inference backends and a small user API, ``Detector``.

``load_backend(weights)`` picks the backend from the path: ``.onnx`` -> :class:`OnnxBackend` (ONNX Runtime; fp32 and
int8 exports alike), ``.torchscript`` -> ``TorchScriptBackend``, a ``*_openvino_model`` folder or an ``.xml`` ->
``OpenVinoBackend`` (both in ``utils.infer.backends``), anything else -> :class:`TorchBackend` (our checkpoints and
official YOLOv5 v7.0 ``.pt`` files, via ``utils.checkpoints.load_model``, Conv+BN fused). All expose ``device``,
``stride`` (tensor of per-level strides, px), ``nc``, ``names``, ``hyp`` (dict or None), ``train_imgsz`` (input px the
model was trained at, None when not recorded), ``__call__(im)`` and ``sliced(im, slice_size, overlap)``: ``im`` is a
(bs, 3, H, W) float tensor in [0, 1] and the result is the model's eval output ``pred`` (bs, N, 5 + nc) ``[x, y, w, h,
obj, cls...]`` in input pixels, as float32.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from utils.checkpoints import CheckpointError, check_loadable, load_model
from utils.compiler import CompiledForward, CompileOptions, compiled_forward
from utils.dataset.augmentations import letterbox
from utils.dataset.sources import imread
from utils.downloads import attempt_download_weights
from utils.errors import UserError
from utils.infer.backends import (
    Backend,
    OpenVinoBackend,
    TorchScriptBackend,
    decode_props,
    fit_fixed_input,
    fixed_side,
    fixed_size_notice,
)
from utils.infer.slicing import sliced_detect
from utils.ops.box_merge import MATCH_METRICS, MERGE_METHODS, NMS_METHODS, NWD_C, check_choice
from utils.ops.boxes import scale_boxes
from utils.ops.nms import MAX_IMGSZ, non_max_suppression
from utils.torch_utils import select_device, time_sync

LOGGER = logging.getLogger(__name__)
DEFAULT_IMGSZ = 640  # input px when the weights do not record their training size (official YOLOv5 weights: 640)
FAR_FACTOR = 2.0  # an inference size more than this factor from the training size gets a warning
_Backend = Backend  # its name before it moved to utils.infer.backends (stub backends in tests subclass it)


def size_check(sizes: int | list[int] | None, bounded: bool = True) -> tuple[bool, str]:
    """``utils.cli.check_args``'s (ok, requirement) for input sizes (px): each in [1, MAX_IMGSZ] (``bounded``, else
    >= 1); None passes. A list (``--study-sizes``) must not be empty."""
    many = isinstance(sizes, list)
    ok = sizes is None or (len(sizes) > 0 if many else True) and all(
        1 <= s <= (MAX_IMGSZ if bounded else math.inf) for s in (sizes if many else [sizes]))
    what = "be sizes in" if many else "be in"
    return ok, (f"must {what} [1, {MAX_IMGSZ}] px, got {sizes}" if bounded else f"must be >= 1, got {sizes}")


def validation_input(backend: Backend, imgsz: int, weights: str | Path) -> tuple[int, bool]:
    """(input px, rect batches) to validate ``backend`` with at ``imgsz``: rect batches as YOLOv5 does, except for a
    model exported at a fixed size: its size with square batches (rect ones are padded past it), said in one line."""
    fixed = fixed_side(backend)
    if fixed is None:
        return imgsz, True
    LOGGER.warning(f"{fixed_size_notice(weights, fixed)} with square batches (rect batches would exceed it)")
    return fixed, False


def default_imgsz(requested: int | None, trained: int | None) -> int:
    """The inference size (input px): ``requested`` when given, else the size the weights were trained at, else
    DEFAULT_IMGSZ. A detector trained at 128 px and run at 640 sees its objects 5x larger than it learned them."""
    return int(requested or trained or DEFAULT_IMGSZ)


def warn_far_from_trained(imgsz: int, trained: int | None, weights: str | Path) -> bool:
    """Log one warning when ``imgsz`` is more than FAR_FACTOR from the training size; True when it warned."""
    if not trained or max(imgsz / trained, trained / imgsz) <= FAR_FACTOR:
        return False
    # a warning, not a change: on images larger than the training images (or tiled) a larger size is right
    LOGGER.warning(f"{weights}: inference at {imgsz} px but the model was trained at {trained} px (on images the "
                   f"size of the training images, objects appear {imgsz / trained:.2g}x their trained size): pass "
                   f"--imgsz {trained} unless the images are larger")
    return True


class TorchBackend(Backend):
    """A DetectionModel in eval mode (fp16 on CUDA with ``half``); with ``compile``, its forward compiled
    (utils.compiler: inputs padded to bucket shapes, ``pad_batch`` images per call), in ``compiled``."""

    def __init__(self, model: torch.nn.Module, device: torch.device, half: bool = False,
                 compile: CompileOptions | None = None):
        self.model, self.device = model, device
        self.fp16 = half and device.type == "cuda"
        if half and not self.fp16:
            LOGGER.warning("--half needs a CUDA device: running in fp32 on %s", device)
        if self.fp16:
            model.half()
        # channels-last activations: oneDNN's convolutions run ~15% faster on CPU (and tensor cores prefer it)
        model.to(memory_format=torch.channels_last)
        self.stride = model.stride.detach().cpu().clone()
        self.nc = int(model.yaml["nc"])
        self.names = dict(model.names)
        hyp = getattr(model, "hyp", None)
        self.hyp = hyp.to_dict() if hasattr(hyp, "to_dict") else (dict(hyp) if isinstance(hyp, dict) else None)
        self.train_imgsz = getattr(model, "train_imgsz", None)
        self.compiled: CompiledForward | None = None if compile is None else compiled_forward(
            model, compile.mode, compile.backend, pad_batch=compile.batch, pad_shape=True,
            strides=self.stride.int().tolist(), freeze=True)  # inference: the weights are constants

    @torch.no_grad()
    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        im = im.to(self.device, torch.float16 if self.fp16 else torch.float32)
        return (self.compiled or self.model)(im.contiguous(memory_format=torch.channels_last))[0].float()

    def warmup(self, imgsz: tuple[int, int, int, int] = (1, 3, 640, 640)) -> None:
        """As Backend.warmup, except when compiled: a warmup shape the inputs may never take would cost a compile."""
        if self.compiled is None:
            super().warmup(imgsz)


class OnnxBackend(Backend):
    """An ONNX model exported by export.py, run with ONNX Runtime (CUDA provider when ``device`` is CUDA)."""

    def __init__(self, path: Path, device: torch.device, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"{path}: running .onnx models needs onnxruntime (pip install onnxruntime)") from e
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        opts = ort.SessionOptions()
        if threads:  # ORT's default spin-waiting between operators is kept: ~10% lower latency at 2 threads
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e)[:300]})") from None
        self.device = device
        self.set_metadata(decode_props(self.session.get_modelmeta().custom_metadata_map), path, "ONNX")
        inp = self.session.get_inputs()[0]
        self.input_name, self.shape = inp.name, list(inp.shape)  # ints, or names of dynamic axes
        self.dynamic = not all(isinstance(d, int) for d in self.shape)
        self.fp16 = "float16" in inp.type
        self.path = path

    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        x = im.detach().cpu().numpy().astype(np.float16 if self.fp16 else np.float32, copy=False)
        x = fit_fixed_input(x, self.shape, self.path)
        if isinstance(self.shape[0], int) and len(x) != self.shape[0]:  # fixed batch (1 by default): one at a time
            out = np.concatenate([self.session.run(None, {self.input_name: x[i:i + 1]})[0] for i in range(len(x))])
        else:
            out = self.session.run(None, {self.input_name: x})[0]
        return torch.from_numpy(out.astype(np.float32, copy=False)).to(im.device)


def load_backend(weights: str | Path, device: str | torch.device = "", half: bool = False, fuse: bool = True,
                 threads: int | None = None, compile: CompileOptions | None = None) -> Backend:
    """The inference backend for ``weights``: ``.onnx`` -> ONNX Runtime, ``.torchscript`` -> TorchScript, a
    ``*_openvino_model`` folder (or its ``.xml``) -> OpenVINO, otherwise a PyTorch checkpoint (ours or official
    YOLOv5 v7.0; ``yolov5s.pt`` etc. are downloaded when absent, see utils.downloads), fused for inference when
    ``fuse``. ``threads``: ONNX Runtime / OpenVINO inference threads (None: their defaults; PyTorch and TorchScript
    use ``torch.set_num_threads``). ``compile``: torch.compile the PyTorch model (utils.compiler); other formats
    are already compiled by their runtime, so it is ignored for them with one warning line.

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        DownloadError: an official weights name could not be downloaded (see utils.downloads).
        CheckpointError: the file is not a model (message names the file and why).
        MissingPackageError: an OpenVINO model without the openvino package (one line with the pip command).
    """
    path = attempt_download_weights(weights, verify=check_loadable)
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    suffix = path.suffix.lower()
    is_openvino = suffix == ".xml" or (path.is_dir() and any(path.glob("*.xml")))
    if path.is_dir() and not is_openvino:
        raise CheckpointError(f"{path}: is a folder without an OpenVINO .xml model, expected a .pt checkpoint, an "
                              ".onnx or .torchscript file or a *_openvino_model folder")
    dev = select_device(device)
    if compile is not None and (suffix in (".onnx", ".torchscript") or is_openvino):
        LOGGER.warning(f"--compile applies to PyTorch .pt weights: ignored for {path.name}")
    if suffix == ".onnx":
        return OnnxBackend(path, dev, threads)
    if suffix == ".torchscript":
        return TorchScriptBackend(path, dev, half)
    if is_openvino:
        return OpenVinoBackend(path, dev, threads)
    return TorchBackend(load_model(path, dev, fuse=fuse), dev, half, compile)


def to_tensor(im: np.ndarray, device: torch.device) -> torch.Tensor:
    """(3, h, w) uint8 RGB letterboxed image (as ``LoadImages`` yields) -> (1, 3, h, w) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(im)).to(device).float()[None] / 255


class Detector:
    """Detect objects in images: ``Detector('best.pt')(image)`` -> {'boxes', 'scores', 'classes'}.

    ``image`` is an HWC uint8 BGR array (OpenCV order) or a path; boxes come back as (n, 4) float32 xyxy in
    original-image pixels, scores (n,) float32, classes (n,) int64, by decreasing score. ``slice`` > 0 runs sliced
    inference with tiles of that many original pixels (``slice_full`` adds the whole image downscaled; the tiles
    are combined by ``slice_merge`` on ``slice_match``, utils/infer/slicing.py). ``nms``: 'iou' or 'nwd' (``nwd_c`` px,
    ``iou_thres`` is then the NWD threshold). ``imgsz``
    (input px) defaults to the size the weights were trained at (:func:`default_imgsz`); a size more than 2x from
    it is warned about. ``compile``: torch.compile the PyTorch model (utils.compiler, ``detect.py --compile``).
    """

    def __init__(self, weights: str | Path, imgsz: int | None = None, conf_thres: float = 0.25, iou_thres: float = 0.45,
                 max_det: int = 300, device: str | torch.device = "", slice: int = 0, slice_overlap: float = 0.2,
                 slice_full: bool = False, slice_batch: int = 8, classes: list[int] | None = None,
                 agnostic: bool = False, half: bool = False, nms: str = "iou", nwd_c: float = NWD_C,
                 slice_merge: str = "nms", slice_match: str | None = None, slice_match_thres: float | None = None,
                 compile: CompileOptions | None = None):
        self.backend = load_backend(weights, device=device, half=half, compile=compile)
        self.stride = int(self.backend.stride.max())
        imgsz = default_imgsz(imgsz, self.backend.train_imgsz)
        if imgsz % self.stride:
            new = int(np.ceil(imgsz / self.stride) * self.stride)
            LOGGER.warning(f"imgsz {imgsz} is not a multiple of the stride {self.stride}: using {new}")
            imgsz = new
        if not self.backend.dynamic:
            fixed = self.backend.shape[2]
            if imgsz != fixed:
                LOGGER.warning(fixed_size_notice(weights, fixed))
                imgsz = fixed
        warn_far_from_trained(imgsz, self.backend.train_imgsz, weights)
        self.imgsz, self.conf_thres, self.iou_thres, self.max_det = imgsz, conf_thres, iou_thres, max_det
        self.slice, self.slice_overlap, self.slice_full, self.slice_batch = slice, slice_overlap, slice_full, \
            slice_batch
        self.classes, self.agnostic = classes, agnostic
        self.nms, self.nwd_c = check_choice("nms", nms, NMS_METHODS), nwd_c
        self.slice_merge = check_choice("slice merge", slice_merge, MERGE_METHODS)
        self.slice_match = None if slice_match is None else check_choice("slice match", slice_match, MATCH_METRICS)
        self.slice_match_thres = slice_match_thres
        self.names = self.backend.names

    def detect(self, im0: np.ndarray, im: np.ndarray | None = None,
               times: list[float] | None = None) -> torch.Tensor:
        """(n, 6) ``[x1, y1, x2, y2, conf, cls]`` in original px for the BGR image ``im0``.

        ``im``: ``im0`` already letterboxed, (3, h, w) uint8 RGB as ``LoadImages`` yields (skips pre-processing).
        ``times``: [pre-process, inference, NMS] seconds, accumulated.
        """
        if im0.ndim != 3 or im0.shape[2] != 3 or im0.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR image, got shape {im0.shape} dtype {im0.dtype}")
        times = times if times is not None else [0.0, 0.0, 0.0]
        if self.slice:
            return sliced_detect(im0, self.backend, self.imgsz, self.slice, self.slice_overlap, self.slice_full,
                                 self.slice_batch, self.conf_thres, self.iou_thres, self.classes, self.agnostic,
                                 self.max_det, device=self.backend.device, times=times, nms=self.nms,
                                 merge=self.slice_merge, match=self.slice_match, match_thres=self.slice_match_thres,
                                 nwd_c=self.nwd_c)
        t0 = time_sync()
        if im is None:
            im = letterbox(im0, self.imgsz, stride=self.stride, auto=self.backend.dynamic)[0].transpose(2, 0, 1)[::-1]
        x = to_tensor(im, self.backend.device)
        t1 = time_sync()
        pred = self.backend(x)
        t2 = time_sync()
        det = non_max_suppression(pred, self.conf_thres, self.iou_thres, self.classes, self.agnostic,
                                  max_det=self.max_det, method=self.nms, nwd_c=self.nwd_c)[0]
        scale_boxes(x.shape[2:], det[:, :4], im0.shape[:2])
        t3 = time_sync()
        for i, t in enumerate((t1 - t0, t2 - t1, t3 - t2)):
            times[i] += t
        return det

    def __call__(self, image: np.ndarray | str | Path) -> dict[str, np.ndarray]:
        if isinstance(image, str | Path):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            im0 = imread(str(path))
            if im0 is None:
                raise UserError(f"{path}: not a readable image")
        elif isinstance(image, np.ndarray):
            im0 = image
        else:
            raise TypeError(f"expected an image array (HxWx3 BGR uint8) or a path, got {type(image).__name__}")
        det = self.detect(im0).cpu()
        return {"boxes": det[:, :4].numpy().astype(np.float32), "scores": det[:, 4].numpy().astype(np.float32),
                "classes": det[:, 5].numpy().astype(np.int64)}
