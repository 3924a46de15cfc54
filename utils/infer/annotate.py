"""Drawing detections on images and cutting them out: what detect.py saves and the hub results render, crop and
save (one implementation, so both look the same). Images are BGR uint8 (OpenCV's order); boxes original px."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from utils.atomic import atomic_write_bytes
from utils.errors import UserError
from utils.ops.boxes import xyxy2xywh
from utils.plots import color


def annotate(im: np.ndarray, det: np.ndarray, names: dict[int, str], line_thickness: int | None = 3,
             hide_labels: bool = False, hide_conf: bool = False, ids: np.ndarray | None = None) -> np.ndarray:
    """Draw (n, 6) original-px detections on a copy of the BGR image ``im``; returns the copy. With track ``ids``
    (n,), a detection of track k is drawn in track k's colour with ``#k`` before its label (-1: no track)."""
    im = im.copy()
    lw = line_thickness or max(round(sum(im.shape[:2]) / 2 * 0.003), 2)
    for j, (*xyxy, conf, cls) in enumerate(det.tolist()):
        c = int(cls)
        k = -1 if ids is None else int(ids[j])
        bgr = color(k if k >= 0 else c)[::-1]
        p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
        cv2.rectangle(im, p1, p2, bgr, thickness=lw, lineType=cv2.LINE_AA)
        if hide_labels:
            continue
        label = names.get(c, str(c)) if hide_conf else f"{names.get(c, str(c))} {conf:.2f}"
        label = f"#{k} {label}" if k >= 0 else label
        tf = max(lw - 1, 1)
        tw, th = cv2.getTextSize(label, 0, fontScale=lw / 3, thickness=tf)[0]
        outside = p1[1] - th - 3 >= 0  # label above the box when it fits
        q2 = (p1[0] + tw, p1[1] - th - 3 if outside else p1[1] + th + 3)
        cv2.rectangle(im, p1, q2, bgr, -1, cv2.LINE_AA)
        cv2.putText(im, label, (p1[0], p1[1] - 2 if outside else p1[1] + th + 2), 0, lw / 3, (255, 255, 255),
                    thickness=tf, lineType=cv2.LINE_AA)
    return im


def crop_box(im: np.ndarray, xyxy: np.ndarray, gain: float = 1.02, pad: int = 10) -> np.ndarray:
    """The BGR crop of ``im`` around an original-px xyxy box enlarged by ``gain`` and ``pad`` px (YOLOv5's)."""
    b = xyxy2xywh(np.asarray(xyxy, dtype=np.float64).reshape(1, 4))
    b[:, 2:] = b[:, 2:] * gain + pad
    x1, y1 = (b[0, :2] - b[0, 2:] / 2).astype(int)
    x2, y2 = (b[0, :2] + b[0, 2:] / 2).astype(int)
    h, w = im.shape[:2]
    return im[max(y1, 0):min(y2, h), max(x1, 0):min(x2, w)]


def save_image(path: Path, im: np.ndarray) -> None:
    """Encode ``im`` (BGR) by ``path``'s extension (.jpg when none) and write it atomically; ValueError when
    OpenCV cannot encode that extension."""
    ok, buf = cv2.imencode(path.suffix or ".jpg", im)
    if not ok:
        raise UserError(f"{path}: OpenCV cannot encode an image with this extension")
    atomic_write_bytes(path, buf.tobytes())


__all__ = ["annotate", "crop_box", "save_image"]
