"""Run logging: one row per epoch in ``results.csv`` (rewritten atomically) and, when the ``tensorboard`` package is
installed, TensorBoard scalars, images and text in the run folder.

Metric keys are free-form strings ('train/box_loss', 'metrics/mAP_0.5', 'metrics/tiny/recall', 'x/lr0'); the CSV
has an ``epoch`` column, then every key in the order first logged (a key missing from an epoch is left empty).
Values are written with Python's shortest round-trip float repr, so reading the CSV gives back exactly the
floats logged. TensorBoard event files go straight into ``save_dir`` (as YOLOv5 v7.0 does), scalars at
``step = epoch``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import atomic_write_text

LOGGER = logging.getLogger(__name__)
EPOCH = "epoch"


def _tensorboard_writer(save_dir: Path) -> Any | None:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``save_dir``, or None (one info line) without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError when the tensorboard package is missing
        LOGGER.info("TensorBoard: not installed (pip install tensorboard), logging to results.csv only")
        return None
    LOGGER.info(f"TensorBoard: start with 'tensorboard --logdir {save_dir.parent}', view at http://localhost:6006/")
    return SummaryWriter(str(save_dir))


def _to_float(key: str, v: Any) -> float:
    """A metric value as a Python float (accepts ints, numpy scalars, one-element tensors), else a clear error."""
    try:
        if hasattr(v, "numel") and v.numel() != 1:
            raise TypeError
        return float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError) as e:
        raise TypeError(f"RunLogger: metric {key!r} must be a number, got {type(v).__name__} {v!r:.60}") from e


def read_results_csv(path: str | Path) -> tuple[list[str], list[dict[str, float]]]:
    """(metric keys in column order without 'epoch', rows {'epoch': float, key: float}) of a results CSV. Empty
    cells are left out of their row; cells and header names are stripped (v7.0 pads them)."""
    path = Path(path)
    with open(path, newline="") as f:
        table = [[c.strip() for c in r] for r in csv.reader(f) if r]
    if not table:
        return [], []
    header = table[0]
    if header[0] != EPOCH or len(set(header)) != len(header):
        raise ValueError(f"{path}: the header must start with 'epoch' and have unique names, got {header[:4]}...")
    rows = []
    for i, r in enumerate(table[1:], start=2):
        if len(r) > len(header):
            raise ValueError(f"{path}: line {i} has {len(r)} cells for {len(header)} columns")
        try:
            rows.append({k: float(v) for k, v in zip(header, r) if v != ""})
        except ValueError as e:
            raise ValueError(f"{path}: line {i}: {e}") from e
    return header[1:], rows


class RunLogger:
    """Per-epoch metrics to ``save_dir/results.csv`` and TensorBoard (``tensorboard=True`` and the package
    installed). An existing results.csv in ``save_dir`` (a resumed run) is read back and extended; logging an
    epoch again replaces its row. ``names``: class names ({i: name} or a list), kept for callers' per-class keys.
    Use as a context manager or call ``close()``.
    """

    def __init__(self, save_dir: str | Path, names: Mapping[int, str] | Sequence[str] | None = None,
                 tensorboard: bool = True):
        self.save_dir = Path(save_dir)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.csv = self.save_dir / "results.csv"
        self.names = dict(enumerate(names)) if isinstance(names, Sequence) and not isinstance(names, str) else names
        self.keys: list[str] = []  # metric columns, first-logged order
        self._rows: dict[int, dict[str, float]] = {}  # epoch -> {key: value}
        if self.csv.is_file():
            self.keys, rows = read_results_csv(self.csv)
            for r in rows:
                if EPOCH in r:
                    self._rows[int(r.pop(EPOCH))] = r
        self.tb = _tensorboard_writer(self.save_dir) if tensorboard else None

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Write ``metrics`` {key: number} as the row of ``epoch`` (>= 0) in results.csv and as TensorBoard
        scalars at step ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"RunLogger.log_epoch: epoch must be an int >= 0, got {epoch!r}")
        row = {}
        for k, v in metrics.items():
            if not isinstance(k, str) or not k.strip() or k.strip() != k or k == EPOCH:
                raise ValueError(f"RunLogger.log_epoch: bad metric key {k!r} (a non-empty string, no surrounding "
                                 f"spaces, not 'epoch')")
            row[k] = _to_float(k, v)
        self.keys += [k for k in row if k not in self.keys]
        self._rows[int(epoch)] = row
        self._write_csv()
        if self.tb:
            for k, v in row.items():
                self.tb.add_scalar(k, v, int(epoch))
            self.tb.flush()

    def _write_csv(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([EPOCH, *self.keys])
        for ep in sorted(self._rows):
            r = self._rows[ep]
            w.writerow([ep, *(repr(r[k]) if k in r else "" for k in self.keys)])
        atomic_write_text(self.csv, buf.getvalue())

    def log_lr(self, lrs: Sequence[float] | Mapping[str, float], step: int) -> dict[str, float]:
        """TensorBoard scalars 'x/lr0', 'x/lr1', ... (one per parameter group, or the given keys) at ``step`` (e.g.
        the iteration, during warmup). Returns {key: lr}, to merge into the epoch's metrics for results.csv."""
        d = dict(lrs) if isinstance(lrs, Mapping) else {f"x/lr{i}": v for i, v in enumerate(lrs)}
        d = {k: _to_float(k, v) for k, v in d.items()}
        if self.tb:
            for k, v in d.items():
                self.tb.add_scalar(k, v, int(step))
        return d

    def log_images(self, name: str, image: str | Path | np.ndarray, step: int = 0) -> bool:
        """An image (a file, e.g. train_batch0.jpg, or an (H, W, 3) RGB / (H, W) array, uint8 or float in [0, 1])
        to TensorBoard under ``name``. Returns False when TensorBoard is off (the files stay in the run folder)."""
        if isinstance(image, (str, Path)):
            import cv2

            bgr = cv2.imread(str(image))
            if bgr is None:
                raise FileNotFoundError(f"RunLogger.log_images: cannot read image {image}")
            image = bgr[..., ::-1]
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[..., None].repeat(3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"RunLogger.log_images: {name!r} must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
        if not self.tb:
            return False
        self.tb.add_image(name, np.ascontiguousarray(arr), int(step), dataformats="HWC")
        self.tb.flush()
        return True

    def log_text(self, name: str, text: str, step: int = 0) -> bool:
        """Text (e.g. the AutoAnchor report) to TensorBoard, monospaced. False when TensorBoard is off."""
        if not self.tb:
            return False
        self.tb.add_text(name, "    " + text.replace("\n", "\n    "), int(step))  # indented = markdown code block
        return True

    def close(self) -> None:
        """Flush and close the TensorBoard writer (results.csv is always complete on disk)."""
        if self.tb:
            self.tb.close()
            self.tb = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def last(self, key: str) -> float:
        """The value of ``key`` in the latest epoch logging it, nan if never logged."""
        for ep in sorted(self._rows, reverse=True):
            if key in self._rows[ep]:
                return self._rows[ep][key]
        return math.nan
