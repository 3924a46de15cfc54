"""The torch.hub model: ``AutoShape`` takes images in any common form and returns ``Detections`` (utils.infer.results);
``load_custom`` and ``create`` build it for hubconf.py's ``custom`` and ``yolov5{n,s,m,l,x}`` entries.

Inputs of ``AutoShape(...)(ims)`` (YOLOv5's conventions):
- a file path or ``http(s)://`` URL (read with OpenCV, EXIF orientation applied, as detect.py does);
- a PIL image (EXIF orientation applied, converted to RGB);
- a numpy array, HWC uint8 **RGB** (OpenCV's ``cv2.imread`` gives BGR: pass ``im[..., ::-1]``); CHW arrays,
  greyscale (HW or HW1) and RGBA (the alpha is dropped) are accepted too;
- a list or tuple of those, of any sizes;
- a torch tensor: a (b, 3, h, w) float batch in [0, 1], h and w multiples of the stride, passed straight to the
  model as YOLOv5 does: the result is the raw prediction (b, N, 5 + nc) ``[x, y, w, h, obj, cls...]`` in input px,
  without NMS (run ``utils.ops.nms.non_max_suppression`` on it).

Pre-processing equals detect.py's, image by image: each image is letterboxed to ``size`` (long side, input px) with
the minimum stride padding, so a hub result equals ``detect.run`` on the same image with the same thresholds.
Images whose letterboxed shapes agree go through the model together (``batch_size`` at a time); YOLOv5 instead pads
a whole call to one shape, which changes an image's result with the company it keeps. Boxes are mapped back to
ORIGINAL-image pixels. ``slice`` (tile px, or (tile px, overlap)) runs sliced inference (utils.infer.slicing) per image,
as ``detect.py --slice`` does, for large images with tiny objects.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from models.yolo import DetectionModel
from utils.checkpoints import load_checkpoint, load_model, trained_imgsz, transfer_weights
from utils.compiler import compile_options
from utils.dataset.augmentations import letterbox
from utils.dataset.sources import imread
from utils.errors import UserError
from utils.infer.backends import fixed_size_notice
from utils.infer.detector import TorchBackend, default_imgsz, load_backend
from utils.infer.results import Detections
from utils.infer.slicing import sliced_detect
from utils.ops.box_merge import NWD_C
from utils.ops.boxes import scale_boxes
from utils.ops.nms import non_max_suppression
from utils.torch_utils import select_device, time_sync

LOGGER = logging.getLogger(__name__)
MODEL_NAMES = tuple(f"yolov5{s}{p6}" for p6 in ("", "6") for s in "nsmlx")  # hubconf entries with official weights
URL_TIMEOUT_S = 30.0
SETTINGS = ("conf", "iou", "agnostic", "multi_label", "classes", "max_det", "size", "batch_size", "slice",
            "slice_overlap", "slice_full", "slice_batch", "nms", "nwd_c", "slice_merge", "slice_match",
            "slice_match_thres")  # AutoShape attributes the builders accept by name
ImageInput = str | Path | Image.Image | np.ndarray


# ---------------------------------------------------------------------------------------------------- reading
def _fetch_url(url: str) -> bytes:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "tinyfocal-hub"}),
                                    timeout=URL_TIMEOUT_S) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise UserError(f"{url}: could not download the image: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{url}: could not download the image: {getattr(e, 'reason', e)}") from None


def as_rgb(a: np.ndarray, where: str) -> np.ndarray:
    """A numpy image as a contiguous HWC uint8 RGB array: CHW is transposed (first axis 1, 3 or 4 and last axis not),
    greyscale repeated to 3 channels, RGBA's alpha dropped. Raises ValueError naming ``where`` otherwise."""
    if a.dtype != np.uint8:
        raise UserError(f"{where}: expected uint8 pixels 0-255, got dtype {a.dtype} (for 0-1 floats pass "
                         f"(a * 255).round().astype(np.uint8))")
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # CHW, as a dataloader gives
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or min(a.shape[:2]) < 1:
        raise UserError(f"{where}: expected an HxWx3 RGB image (or HxW, HxWx1, HxWx4, 3xHxW), got shape {a.shape}")
    a = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3]
    return np.ascontiguousarray(a)


def read_image(im: ImageInput, i: int) -> tuple[np.ndarray, str]:
    """Input ``i`` of a call -> (HWC uint8 RGB array in original pixels, output file name ``<stem>.jpg``).

    Raises FileNotFoundError (missing file), ValueError (unreadable file or URL, bad array) and TypeError (any
    other type), each one line naming the input.
    """
    if isinstance(im, str | Path):
        s = str(im)
        if s.startswith(("http://", "https://")):
            bgr = cv2.imdecode(np.frombuffer(_fetch_url(s), np.uint8), cv2.IMREAD_COLOR)
            name = Path(urllib.parse.urlparse(s).path).name or f"image{i}"
        else:
            if not Path(s).is_file():
                raise FileNotFoundError(f"image not found: {s}")
            bgr, name = imread(s), Path(s).name
        if bgr is None:
            raise UserError(f"{s}: not a readable image")
        return np.ascontiguousarray(bgr[..., ::-1]), Path(name).with_suffix(".jpg").name
    if isinstance(im, Image.Image):
        name = Path(getattr(im, "filename", "") or f"image{i}").with_suffix(".jpg").name
        im = ImageOps.exif_transpose(im)
        return as_rgb(np.asarray(im if im.mode == "RGB" else im.convert("RGB")), f"image {i} (PIL)"), name
    if isinstance(im, np.ndarray):
        return as_rgb(im, f"image {i} (array)"), f"image{i}.jpg"
    if isinstance(im, torch.Tensor):
        raise TypeError(f"image {i}: a torch.Tensor is accepted only alone, as a (b, 3, h, w) batch in [0, 1] "
                        f"(passed through without pre-processing); convert it to an HxWx3 uint8 RGB array")
    raise TypeError(f"image {i}: expected a path, URL, PIL image or HxWx3 uint8 RGB numpy array, got "
                    f"{type(im).__name__}")


# ---------------------------------------------------------------------------------------------------- model
class AutoShape(nn.Module):
    """Images in, :class:`~utils.infer.results.Detections` out (see the module docstring for the accepted inputs).

    Settings (plain attributes, as YOLOv5's AutoShape): ``conf`` (confidence threshold), ``iou`` (NMS IoU),
    ``agnostic`` (class-agnostic NMS), ``multi_label`` (one box per passing class; not with slicing), ``classes``
    (keep only these ids, or None), ``max_det``, ``size`` (default inference size, input px: the size the weights
    were trained at, else 640), ``batch_size`` (images per forward), ``slice`` (tile size in original px, 0 = off),
    ``slice_overlap``, ``slice_full`` (add the whole image downscaled), ``slice_batch`` (tiles per forward),
    ``nms`` ('iou' or 'nwd': NWD NMS, ``iou`` is then its threshold), ``nwd_c`` (NWD's constant, px),
    ``slice_merge`` ('nms', 'nmm', 'greedy-nmm'), ``slice_match`` ('iou', 'ios', 'nwd'; None: as ``nms``) and
    ``slice_match_thres`` (None: ``iou``), as utils/infer/slicing.py.
    ``.to(device)`` / ``.cuda()`` / ``.cpu()`` / ``.half()`` move a PyTorch model and are followed by the inputs.
    """

    conf = 0.25
    iou = 0.45
    agnostic = False
    multi_label = False
    classes: list[int] | None = None
    max_det = 1000
    batch_size = 16
    slice = 0
    slice_overlap = 0.2
    slice_full = False
    slice_batch = 8
    nms = "iou"
    nwd_c = NWD_C
    slice_merge = "nms"
    slice_match: str | None = None
    slice_match_thres: float | None = None

    def __init__(self, backend: Any, size: int | None = None):
        super().__init__()
        self.backend = backend
        if isinstance(backend, TorchBackend):
            self.model = backend.model  # a registered submodule: .to(), .half(), .eval() reach it
        self.names = dict(backend.names)
        self.stride = int(backend.stride.max())
        self.size = default_imgsz(size, backend.train_imgsz)
        self._noticed: set[tuple[int, int]] = set()  # sizes a fixed-size export has overridden (said once each)

    def _apply(self, fn, *args, **kwargs):  # nn.Module.to / cuda / cpu / half go through here
        super()._apply(fn, *args, **kwargs)
        if isinstance(self.backend, TorchBackend):
            p = next(self.backend.model.parameters())
            self.backend.device, self.backend.fp16 = p.device, p.dtype == torch.float16
        return self

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def input_shape(self, size: int | tuple[int, int] | list[int] | None) -> tuple[int, int]:
        """(h, w) input px for ``size`` (an int long side, or (h, w)), rounded up to multiples of the stride; the
        fixed size of an ONNX model exported without ``--dynamic``, with detect.py's notice (once per size) when it
        differs. Raises ValueError for sizes < 1."""
        size = self.size if size is None else size
        hw = (size, size) if isinstance(size, int | float) else tuple(size)
        if len(hw) != 2 or min(hw) < 1:
            raise UserError(f"size must be a positive int or (height, width) in input px, got {size!r}")
        out = tuple(int(np.ceil(v / self.stride) * self.stride) for v in hw)
        if not getattr(self.backend, "dynamic", True):
            fixed = tuple(int(v) for v in self.backend.shape[2:])
            if out != fixed and out not in self._noticed:  # as detect.py: once (per size asked for)
                self._noticed.add(out)
                LOGGER.warning(fixed_size_notice(getattr(self.backend, "path", "model"), fixed))
            out = fixed
        elif out != tuple(int(v) for v in hw):
            LOGGER.warning(f"size {size} is not a multiple of the stride {self.stride}: using {out}")
        return out

    def _slice_args(self, slice: int | tuple[int, float] | None) -> tuple[int, float]:
        s = self.slice if slice is None else slice
        tile, overlap = (s, self.slice_overlap) if isinstance(s, int | float) else tuple(s)
        return int(tile), float(overlap)

    def _nms(self, pred: torch.Tensor) -> list[torch.Tensor]:
        return non_max_suppression(pred, self.conf, self.iou, self.classes, self.agnostic, self.multi_label,
                                   max_det=self.max_det, method=self.nms, nwd_c=self.nwd_c)

    @torch.no_grad()
    def forward(self, ims: ImageInput | list | tuple | torch.Tensor, size: int | tuple[int, int] | None = None,
                slice: int | tuple[int, float] | None = None, tracker: Any = None) -> Detections | torch.Tensor:
        """Detect objects in ``ims`` (one image or a list); ``size`` overrides the inference size (input px, int
        long side or (h, w)); ``slice`` overrides ``self.slice`` (tile px, or (tile px, overlap)). ``tracker``
        (e.g. ``utils.track.tracker.Tracker``: ``update(boxes, scores, classes, frame_bgr) -> ids``) takes the
        images as the next frames of its video; the results then carry ``track_ids``.
        Returns Detections, or the raw prediction for a tensor input (module docstring)."""
        if isinstance(ims, torch.Tensor):
            if ims.ndim != 4 or ims.shape[1] != 3:
                raise UserError(f"a tensor input must be a (b, 3, h, w) batch in [0, 1], got shape "
                                 f"{tuple(ims.shape)}; pass images as HxWx3 uint8 RGB arrays to letterbox them")
            return self.backend(ims)
        items = list(ims) if isinstance(ims, list | tuple) else [ims]
        if not items:
            raise UserError("no images given")
        tile, overlap = self._slice_args(slice)
        shape = self.input_shape(size)
        times = [0.0, 0.0, 0.0]  # pre-process, inference, NMS (s), summed over the images
        t0 = time_sync()
        read = [read_image(im, i) for i, im in enumerate(items)]
        rgb, files = [r[0] for r in read], [r[1] for r in read]
        times[0] += time_sync() - t0
        if tile:
            preds = [self._sliced(im, max(shape), tile, overlap, times) for im in rgb]
            shapes = [(max(shape), max(shape))] * len(rgb)
        else:
            preds, shapes = self._batched(rgb, shape, times)
        n = len(rgb)
        ids = None if tracker is None else [
            tracker.update(d[:, :4], d[:, 4], d[:, 5], np.ascontiguousarray(im[..., ::-1]))
            for d, im in ((p.detach().float().cpu().numpy(), im) for p, im in zip(preds, rgb))]
        return Detections(rgb, preds, files, tuple(t * 1e3 / n for t in times), self.names, shapes, ids)

    def _sliced(self, rgb: np.ndarray, imgsz: int, tile: int, overlap: float, times: list[float]) -> torch.Tensor:
        """Sliced inference of one RGB image (detect.py --slice): (k, 6) original px."""
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        return sliced_detect(bgr, self.backend, imgsz, tile, overlap, self.slice_full, self.slice_batch, self.conf,
                             self.iou, self.classes, self.agnostic, self.max_det, device=self.backend.device,
                             times=times, nms=self.nms, merge=self.slice_merge, match=self.slice_match,
                             match_thres=self.slice_match_thres, nwd_c=self.nwd_c)

    def _batched(self, rgb: list[np.ndarray], shape: tuple[int, int],
                 times: list[float]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """Letterbox each image as detect.py does, run images of equal input shape together, NMS, map back.
        Returns per image (k, 6) ``[x1, y1, x2, y2, conf, cls]`` original px, and the input shapes (h, w)."""
        t0 = time_sync()
        auto = getattr(self.backend, "dynamic", True)
        pre = [letterbox(im, shape, stride=self.stride, auto=auto)[0].transpose(2, 0, 1) for im in rgb]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, x in enumerate(pre):
            groups.setdefault(tuple(x.shape[1:]), []).append(i)
        times[0] += time_sync() - t0
        preds: list[torch.Tensor] = [torch.zeros((0, 6))] * len(rgb)
        for idx in groups.values():
            for s in range(0, len(idx), max(int(self.batch_size), 1)):
                chunk = idx[s:s + max(int(self.batch_size), 1)]
                t0 = time_sync()
                x = torch.from_numpy(np.ascontiguousarray(np.stack([pre[i] for i in chunk])))
                x = x.to(self.backend.device).float() / 255  # the order of detect.py's to_tensor
                t1 = time_sync()
                pred = self.backend(x)
                t2 = time_sync()
                for i, det in zip(chunk, self._nms(pred)):
                    scale_boxes(x.shape[2:], det[:, :4], rgb[i].shape[:2])
                    preds[i] = det
                t3 = time_sync()
                for k, t in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                    times[k] += t
        return preds, [tuple(pre[i].shape[1:]) for i in range(len(rgb))]


# ---------------------------------------------------------------------------------------------------- builders
def _check_settings(settings: dict[str, Any]) -> None:
    """Raise TypeError naming any key of ``settings`` that is not an AutoShape setting (before loading anything)."""
    unknown = [k for k in settings if k not in SETTINGS]
    if unknown:
        raise TypeError(f"unknown hub model setting(s) {unknown}; known: {', '.join(SETTINGS)}")


def _with_settings(model: AutoShape, settings: dict[str, Any]) -> AutoShape:
    """Set AutoShape settings by name (``conf``, ``iou``, ...); None keeps the default, except for ``classes``."""
    for k, v in settings.items():
        if v is not None or k == "classes":  # None keeps the default (size: the trained size)
            setattr(model, k, v)
    return model


def load_custom(path: str | Path, device: str | torch.device | None = None, autoshape: bool = True,
                half: bool = False, compile: str | None = None, **settings: Any) -> AutoShape | DetectionModel:
    """The hub model of a weights file: a checkpoint of ours, an official YOLOv5 v7.0 ``.pt`` (downloaded by name
    when absent, utils.downloads) or an ``.onnx`` from export.py. ``settings`` are AutoShape attributes.
    ``autoshape=False`` returns the bare DetectionModel (eval mode, not fused; .pt only). ``compile``: a
    torch.compile mode ('default', 'reduce-overhead', 'max-autotune'; utils.compiler) for the PyTorch model.

    Raises FileNotFoundError (missing file), CheckpointError (not a model), DownloadError, TypeError/ValueError
    (bad arguments): one-line messages naming the file or argument.
    """
    _check_settings(settings)
    if not autoshape:
        if Path(path).suffix.lower() == ".onnx":
            raise UserError(f"{path}: autoshape=False returns a PyTorch model; an .onnx needs autoshape=True")
        return load_model(path, select_device(device))
    backend = load_backend(path, device=select_device(device), half=half, compile=compile_options(compile))
    return _with_settings(AutoShape(backend), settings)


def create(name: str, pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
           device: str | torch.device | None = None, compile: str | None = None, **settings: Any
           ) -> AutoShape | DetectionModel:
    """``yolov5{n,s,m,l,x}{,6}``: the architecture of ``models/<name>.yaml``.

    ``pretrained``: the official weights ``<name>.pt`` (fetched once into the cache, utils.downloads); with
    ``classes != 80`` or ``channels != 3`` the tensors whose names and shapes match are transferred, anchors
    excepted (YOLOv5's hubconf), and class names kept only when the counts agree. ``pretrained=False``: random
    initialisation. Returns an AutoShape (``settings`` are its attributes; ``compile``: as :func:`load_custom`), or
    the DetectionModel in eval mode with ``autoshape=False``.
    """
    _check_settings(settings)
    if name not in MODEL_NAMES:
        raise UserError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    if int(classes) < 1 or int(channels) < 1:
        raise UserError(f"classes and channels must be >= 1, got classes={classes}, channels={channels}")
    if autoshape and channels != 3:
        raise UserError(f"autoshape=True feeds RGB images: channels must be 3 (got {channels}); pass "
                         f"autoshape=False for a bare model")
    dev = select_device(device)
    weights = f"{name}.pt"
    if pretrained and classes == 80 and channels == 3:  # the official model as it is
        if autoshape:
            return _with_settings(AutoShape(load_backend(weights, device=dev, compile=compile_options(compile))),
                                  settings)
        return load_model(weights, dev)
    model = DetectionModel(f"{name}.yaml", ch=channels, nc=classes)
    if pretrained:
        ck = load_checkpoint(weights)
        n, total = transfer_weights(model, ck["ema"] or ck["model"], exclude=("anchors",))
        LOGGER.info(f"Transferred {n}/{total} items from {weights}")
        if len(ck["names"]) == classes:
            model.names = {int(k): str(v) for k, v in ck["names"].items()}
        model.train_imgsz = trained_imgsz(ck)
    model = model.to(dev).eval()
    if not autoshape:
        return model
    return _with_settings(AutoShape(TorchBackend(model.fuse(), dev, compile=compile_options(compile))), settings)
