"""``Detections``: what the torch.hub model (``utils.infer.hub.AutoShape``) returns for a batch of images, as YOLOv5's.

Boxes are per image (n, 6) tensors ``[x1, y1, x2, y2, conf, cls]`` in ORIGINAL-image pixels, by decreasing
confidence; ``xyxyn``/``xywhn`` are the same boxes normalised by the image's width and height. Images (``ims``)
are HWC uint8 RGB arrays, as the hub model received or read them; every image this module returns is RGB too, and
files are written with OpenCV (BGR on disk order handled here).

Differences from YOLOv5's ``Detections`` (v7.0), on purpose:
- ``render()`` returns new annotated images and leaves ``ims`` untouched (YOLOv5 draws into ``ims`` in place, so a
  second ``render()`` draws every label twice and a later ``crop()`` shows the boxes).
- ``save()`` and ``crop()`` return where they wrote; crops are returned as RGB like every other image here.
- ``print()`` writes to stdout (YOLOv5 logs through its own configured logger).
- ``t`` holds the per-image average times in ms of the call that produced the results, also in ``tolist()`` items.

Drawing and cropping reuse utils.infer.annotate's ``annotate`` and ``crop_box``, so hub images look like detect.py's.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.infer.annotate import annotate, crop_box, save_image
from utils.ops.boxes import xyxy2xywh
from utils.run_dirs import increment_path

XYXY_COLUMNS = ("xmin", "ymin", "xmax", "ymax", "confidence", "class", "name")
XYWH_COLUMNS = ("xcenter", "ycenter", "width", "height", "confidence", "class", "name")


def unique_stems(files: list[str]) -> list[str]:
    """File stems for outputs (``a.png`` -> ``a``), made unique in order: a repeated stem gets ``_<index>``."""
    stems = [Path(f).stem for f in files]
    counts = Counter(stems)
    return [s if counts[s] == 1 else f"{s}_{i}" for i, s in enumerate(stems)]


class Detections:
    """Detections of one call of the hub model (YOLOv5's ``models.common.Detections`` interface).

    Attributes:
        ims: list of n HWC uint8 RGB images (original pixels).
        pred, xyxy: list of n (k, 6) tensors ``[x1, y1, x2, y2, conf, cls]``, original px.
        xywh: same boxes as ``[x_centre, y_centre, w, h, conf, cls]``, original px.
        xyxyn, xywhn: as xyxy / xywh, coordinates normalised to [0, 1] by the image's width and height.
        files: n output file names (``name.jpg``; ``image{i}.jpg`` for arrays and PIL images without a file).
        names: {class index: name}.
        n: number of images; t: (pre-process, inference, NMS) mean ms per image; s: input shapes (h, w) input px.
        track_ids: None, or (when the call had a tracker) n (k,) int64 arrays: the track ID of each row of ``pred``
            (-1: no confirmed track); ``pandas()`` then adds a ``track_id`` column and ``render()`` draws ``#ID``.
    """

    def __init__(self, ims: list[np.ndarray], pred: list[torch.Tensor], files: list[str],
                 times_ms: tuple[float, float, float] = (0.0, 0.0, 0.0), names: dict[int, str] | None = None,
                 shapes: list[tuple[int, int]] | None = None, track_ids: list[np.ndarray] | None = None):
        if not len(ims) == len(pred) == len(files):
            raise ValueError(f"Detections needs one prediction and one file name per image, got {len(ims)} "
                             f"images, {len(pred)} predictions, {len(files)} file names")
        self.ims, self.pred, self.files = ims, pred, files
        self.names = dict(names or {})
        self.n = len(pred)
        self.t = tuple(float(x) for x in times_ms)
        self.s = list(shapes or [])
        self.track_ids = None if track_ids is None else [np.asarray(i, np.int64) for i in track_ids]
        gn = [torch.tensor([im.shape[1], im.shape[0], im.shape[1], im.shape[0], 1, 1], dtype=torch.float32,
                           device=p.device) for im, p in zip(ims, pred)]  # (w, h, w, h, 1, 1) per image
        self.xyxy = pred
        self.xywh = [torch.cat((xyxy2xywh(p[:, :4]), p[:, 4:]), 1) for p in pred]
        self.xyxyn = [p / g for p, g in zip(self.xyxy, gn)]
        self.xywhn = [p / g for p, g in zip(self.xywh, gn)]

    # ------------------------------------------------------------------------------------------------ summaries
    def _label(self, c: int) -> str:
        return self.names.get(c, str(c))

    def summary(self, i: int) -> str:
        """One line for image ``i``: ``image 1/2: 150x200 2 cars, 1 person`` (original h x w px)."""
        counts = Counter(int(c) for c in self.pred[i][:, 5].tolist())
        what = ", ".join(f"{k} {self._label(c)}{'s' * (k > 1)}" for c, k in sorted(counts.items()))
        h, w = self.ims[i].shape[:2]
        return f"image {i + 1}/{self.n}: {h}x{w} {what or '(no detections)'}"

    def __str__(self) -> str:
        shapes = set(self.s)
        at = f" at shape {(1, 3, *next(iter(shapes)))}" if len(shapes) == 1 else ""
        speed = (f"Speed: {self.t[0]:.1f}ms pre-process, {self.t[1]:.1f}ms inference, {self.t[2]:.1f}ms NMS per "
                 f"image{at}")
        return "\n".join([self.summary(i) for i in range(self.n)] + [speed])

    def __repr__(self) -> str:
        return f"tinyfocal {type(self).__name__} instance\n{self}"

    def print(self) -> None:
        """Print the per-image summaries and the speed line to stdout."""
        print(str(self))

    def __len__(self) -> int:
        return self.n

    def tolist(self) -> list[Detections]:
        """One single-image ``Detections`` per image (same names and per-image times)."""
        return [Detections([self.ims[i]], [self.pred[i]], [self.files[i]], self.t, self.names, self.s[i:i + 1],
                           None if self.track_ids is None else self.track_ids[i:i + 1]) for i in range(self.n)]

    # ------------------------------------------------------------------------------------------------ tables
    def pandas(self) -> Detections:
        """A copy whose ``xyxy``, ``xyxyn``, ``xywh``, ``xywhn`` are lists of pandas DataFrames, one per image, with
        columns ``xmin ymin xmax ymax confidence class name`` (xywh variants: ``xcenter ycenter width height ...``);
        coordinates in the units of the attribute (original px or normalised). Needs pandas (a dev dependency)."""
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("Detections.pandas() needs pandas, which is not installed: pip install pandas") from e
        new = copy.copy(self)
        for attr, cols in (("xyxy", XYXY_COLUMNS), ("xyxyn", XYXY_COLUMNS), ("xywh", XYWH_COLUMNS),
                           ("xywhn", XYWH_COLUMNS)):
            frames = []
            for i, p in enumerate(getattr(self, attr)):
                rows = [[*r[:5], int(r[5]), self._label(int(r[5]))] for r in p.tolist()]
                df = pd.DataFrame(rows, columns=list(cols))
                df = df.astype({c: "float64" for c in cols[:5]} | {"class": "int64"})
                if self.track_ids is not None:
                    df["track_id"] = self.track_ids[i]
                frames.append(df)
            setattr(new, attr, frames)
        return new

    # ------------------------------------------------------------------------------------------------ images
    def _det(self, i: int) -> np.ndarray:
        return self.pred[i].detach().float().cpu().numpy()

    def render(self, labels: bool = True, line_thickness: int | None = None) -> list[np.ndarray]:
        """Copies of ``ims`` with the boxes drawn (utils.infer.annotate's ``annotate``; ``labels``: class name and
        confidence above each box); HWC uint8 RGB. ``line_thickness`` None: scaled to the image size."""
        out = []
        for i, im in enumerate(self.ims):
            bgr = annotate(im[..., ::-1], self._det(i), self.names, line_thickness, hide_labels=not labels,
                           ids=None if self.track_ids is None else self.track_ids[i])
            out.append(np.ascontiguousarray(bgr[..., ::-1]))
        return out

    def save(self, labels: bool = True, save_dir: str | Path = "runs/detect/exp", exist_ok: bool = False) -> Path:
        """Write the rendered images as ``save_dir/<file>`` (``save_dir`` incremented to exp2, exp3, ... when it
        exists, unless ``exist_ok``); returns the folder."""
        folder = increment_path(save_dir, exist_ok=exist_ok, mkdir=True)
        for stem, im in zip(unique_stems(self.files), self.render(labels)):
            save_image(folder / f"{stem}.jpg", im[..., ::-1])
        return folder

    def crop(self, save: bool = True, save_dir: str | Path = "runs/detect/exp", exist_ok: bool = False,
             gain: float = 1.02, pad: int = 10) -> list[dict[str, Any]]:
        """Crops of every detection (box enlarged by ``gain`` and ``pad`` px, clipped to the image: detect.py's
        ``crop_box``), by image then confidence. Each is a dict ``box`` (xyxy original px tensor), ``conf``,
        ``cls``, ``label`` ('name 0.87'), ``im`` (HWC uint8 RGB) and ``file`` (Path, or None without ``save``).
        With ``save``, crops go to ``save_dir/crops/<class name>/<stem>[k].jpg`` (``save_dir`` incremented unless
        ``exist_ok``), named as detect.py's ``--save-crop``."""
        folder = increment_path(save_dir, exist_ok=exist_ok, mkdir=True) if save else None
        crops = []
        for i, stem in enumerate(unique_stems(self.files)):
            for k, (*xyxy, conf, cls) in enumerate(self.pred[i].tolist()):
                c = int(cls)
                im = crop_box(self.ims[i], np.array(xyxy), gain, pad)
                file = None
                if folder is not None:
                    file = folder / "crops" / self._label(c) / f"{stem}{k + 1 if k else ''}.jpg"
                    file.parent.mkdir(parents=True, exist_ok=True)
                    save_image(file, np.ascontiguousarray(im[..., ::-1]))
                crops.append({"box": self.pred[i][k, :4], "conf": self.pred[i][k, 4], "cls": self.pred[i][k, 5],
                              "label": f"{self._label(c)} {conf:.2f}", "im": np.ascontiguousarray(im), "file": file})
        return crops
