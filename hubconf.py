"""torch.hub entry points, as YOLOv5's.

Usage:
    import torch
    model = torch.hub.load('owner/repo', 'yolov5s')                                   # official weights
    model = torch.hub.load('owner/repo', 'yolov5s', classes=3)                        # transferred to 3 classes
    model = torch.hub.load('.', 'custom', path='runs/train/exp/weights/best.pt', source='local')
    results = model(['img1.jpg', pil_image, rgb_array], size=640)                     # utils.infer.results.Detections
    results.print(); results.xyxy[0]; results.pandas().xyxy[0]; results.save(); results.crop()

Importing this file imports nothing from the project and changes nothing; each entry imports ``utils.infer.hub`` when
called (torch.hub puts this folder on ``sys.path`` only while it loads an entry, so the project's modules are
imported then). Errors are exceptions with one-line messages (FileNotFoundError, CheckpointError, DownloadError,
ValueError, TypeError), never ``sys.exit``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Modules torch.hub checks before calling an entry (pip names: torch torchvision numpy opencv-python-headless pyyaml
# pillow tqdm matplotlib).
dependencies = ["torch", "torchvision", "numpy", "cv2", "yaml", "PIL", "tqdm", "matplotlib"]


def _check_packages() -> None:
    """Raise ImportError when a ``utils`` or ``models`` package other than this repository's is already imported
    (another torch.hub repository loaded in the same process would otherwise be used silently)."""
    root = Path(__file__).resolve().parent
    for pkg in ("utils", "models"):
        mod = sys.modules.get(pkg)
        file = getattr(mod, "__file__", None) if mod is not None else None
        if mod is not None and (file is None or Path(file).resolve().parent.parent != root):
            raise ImportError(f"a different '{pkg}' package is already imported (from {file or 'a namespace'}); "
                              f"this repository's hub models need their own: load them in a fresh Python process")


def custom(path: str = "path/to/model.pt", autoshape: bool = True, _verbose: bool = True, device=None,
           conf: float = 0.25, iou: float = 0.45, size: int | None = None, classes: list[int] | None = None,
           max_det: int = 1000, agnostic: bool = False, half: bool = False, compile: str | None = None, **settings):
    """A trained model: our checkpoint, an official YOLOv5 v7.0 .pt or an export.py .onnx at ``path``.

    ``device``: None or '' (first GPU, else CPU), 'cpu', '0', ...; ``conf``/``iou``/``classes``/``max_det``/
    ``agnostic``: NMS settings; ``size``: inference size (input px), default the size the weights were trained at;
    ``half``: fp16 on CUDA; ``compile``: a torch.compile mode ('default', 'reduce-overhead', 'max-autotune'),
    docs/speed.md; ``settings``: other AutoShape attributes (``slice``, ``slice_overlap``, ...).
    ``autoshape=False``: the bare DetectionModel. ``_verbose`` is accepted for YOLOv5 compatibility (nothing is
    printed unless logging is configured).
    """
    _check_packages()
    from utils.infer.hub import load_custom

    return load_custom(path, device=device, autoshape=autoshape, half=half, compile=compile, conf=conf, iou=iou,
                       size=size, classes=classes, max_det=max_det, agnostic=agnostic, **settings)


def _create(name: str, pretrained: bool, channels: int, classes: int, autoshape: bool, device, settings: dict):
    _check_packages()
    from utils.infer.hub import create

    return create(name, pretrained, channels, classes, autoshape, device, **settings)


def yolov5n(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, **settings):
    """YOLOv5-nano: official weights when ``pretrained`` (transferred when ``classes != 80``), else random init."""
    return _create("yolov5n", pretrained, channels, classes, autoshape, device, settings)


def yolov5s(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, **settings):
    """YOLOv5-small: official weights when ``pretrained`` (transferred when ``classes != 80``), else random init."""
    return _create("yolov5s", pretrained, channels, classes, autoshape, device, settings)


def yolov5m(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, **settings):
    """YOLOv5-medium: official weights when ``pretrained`` (transferred when ``classes != 80``), else random init."""
    return _create("yolov5m", pretrained, channels, classes, autoshape, device, settings)


def yolov5l(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, **settings):
    """YOLOv5-large: official weights when ``pretrained`` (transferred when ``classes != 80``), else random init."""
    return _create("yolov5l", pretrained, channels, classes, autoshape, device, settings)


def yolov5x(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, **settings):
    """YOLOv5-xlarge: official weights when ``pretrained`` (transferred when ``classes != 80``), else random init."""
    return _create("yolov5x", pretrained, channels, classes, autoshape, device, settings)


def yolov5n6(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, **settings):
    """YOLOv5-nano-P6 (4 output levels, trained at 1280 px)."""
    return _create("yolov5n6", pretrained, channels, classes, autoshape, device, settings)


def yolov5s6(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, **settings):
    """YOLOv5-small-P6 (4 output levels, trained at 1280 px)."""
    return _create("yolov5s6", pretrained, channels, classes, autoshape, device, settings)


def yolov5m6(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, **settings):
    """YOLOv5-medium-P6 (4 output levels, trained at 1280 px)."""
    return _create("yolov5m6", pretrained, channels, classes, autoshape, device, settings)


def yolov5l6(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, **settings):
    """YOLOv5-large-P6 (4 output levels, trained at 1280 px)."""
    return _create("yolov5l6", pretrained, channels, classes, autoshape, device, settings)


def yolov5x6(pretrained=True, channels=3, classes=80, autoshape=True, _verbose=True, device=None, **settings):
    """YOLOv5-xlarge-P6 (4 output levels, trained at 1280 px)."""
    return _create("yolov5x6", pretrained, channels, classes, autoshape, device, settings)
