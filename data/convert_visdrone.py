"""VisDrone2019-DET -> YOLO (registered as ``visdrone`` in ``data/convert.py``).

Source layout (the official zips VisDrone2019-DET-{train,val,test-dev}.zip unpacked side by side in SRC):
``SRC/VisDrone2019-DET-train/{images/*.jpg, annotations/*.txt}``, likewise ``-val`` and ``-test-dev``.
Each annotation file has one object per line: ``x,y,w,h,score,category,truncation,occlusion`` (original pixels,
top-left corner and size). Categories:
- 0 "ignored regions": written as ignore areas (``NAME.ignore.txt``), not targets;
- 1..10 pedestrian, people, bicycle, car, van, truck, tricycle, awning-tricycle, bus, motor: classes 0..9;
- 11 "others": dropped (neither a target nor an ignore area, as the official evaluation does) and counted;
- any other id: dropped and counted as an unknown class id.
Truncation (0 none, 1 partial) and occlusion (0 none, 1 partial, 2 heavy) of the kept objects go to
``labels/{split}/NAME.flags.txt`` (header ``# truncation occlusion``, then one line per label row, same order).
An image without an annotation file gets an empty label file; an annotation file without its image is an error,
and so is a value that is not a finite integer under 2^31 in absolute value, or a file that is not UTF-8.

Option ``splits``: output split -> source folder (default train/val/test from the train/val/test-dev folders).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data.convert_common import Converter, Item, Plan, image_size, read_text
from utils.dataset.labels import IMG_FORMATS
from utils.errors import DatasetError

NAMES = ("pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus", "motor")
IGNORED, OTHERS = 0, 11
DEFAULTS: dict[str, Any] = {"splits": {"train": "VisDrone2019-DET-train", "val": "VisDrone2019-DET-val",
                                       "test": "VisDrone2019-DET-test-dev"}}


MAX_VALUE = 2**31  # |value| bound of an annotation number: pixel coordinates and small codes, never near it


def parse_int_rows(path: Path, ncols: int, expected: str,
                   ok: Callable[[list[float]], bool] = lambda v: True) -> np.ndarray:
    """A VisDrone-style annotation file (DET or MOT) -> (n, ncols) int64: comma-separated numbers per line (a
    trailing comma allowed, blank lines skipped). Raises DatasetError naming the file and line, with ``expected``,
    for a row that is not ``ncols`` finite numbers (|v| < 2^31) or that ``ok`` refuses."""
    rows = []
    for i, line in enumerate(read_text(path).splitlines(), 1):
        s = line.strip().rstrip(",")
        if not s:
            continue
        try:
            v = [float(x) for x in s.split(",")]
        except ValueError:
            v = []
        if len(v) != ncols or not all(math.isfinite(x) and abs(x) < MAX_VALUE for x in v) or not ok(v):
            raise DatasetError(f"{path}: line {i}: expected {expected}, got {line.strip()!r}")
        rows.append([int(x) for x in v])
    return np.array(rows, np.int64).reshape(-1, ncols)


def parse_annotation(path: Path) -> np.ndarray:
    """One VisDrone annotation file -> (n, 8) int64 rows ``x y w h score category truncation occlusion``.

    Raises DatasetError naming the file and line for a row that is not 8 finite integers (|v| < 2^31)."""
    return parse_int_rows(path, 8, "8 comma-separated integers 'x,y,w,h,score,category,truncation,occlusion' "
                                   "(|value| < 2^31)")


def _splits(opts: dict[str, Any]) -> list[str]:
    return list(opts["splits"])


def read(src: Path, opts: dict[str, Any]) -> Plan:
    """Read and check every split's images (headers) and annotation files; the plan of the output."""
    plan = Plan()
    c = plan.counts
    for split, folder in opts["splits"].items():
        img_dir, ann_dir = src / str(folder) / "images", src / str(folder) / "annotations"
        if not ann_dir.is_dir():
            raise DatasetError(f"missing annotation folder {ann_dir} (VisDrone split '{split}')")
        if not img_dir.is_dir():
            raise DatasetError(f"missing image folder {img_dir} (VisDrone split '{split}')")
        images = sorted(p for p in img_dir.iterdir() if p.suffix[1:].lower() in IMG_FORMATS)
        stems = {p.stem for p in images}
        for a in sorted(ann_dir.glob("*.txt")):
            if a.stem not in stems:
                raise DatasetError(f"{a}: its image {img_dir / (a.stem + '.jpg')} does not exist")
        for im in images:
            a = ann_dir / f"{im.stem}.txt"
            rows = parse_annotation(a) if a.is_file() else np.zeros((0, 8), np.int64)
            cat = rows[:, 5]
            xyxy = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], 1).astype(np.float64)
            target = (cat >= 1) & (cat <= 10)
            unknown = ~target & (cat != IGNORED) & (cat != OTHERS)
            c.dropped["others"] += int((cat == OTHERS).sum())
            c.drop_unknown(cat[unknown])
            plan.items.append(Item(split, im, im.name, image_size(im), xyxy[target], cat[target] - 1,
                                   ignore=xyxy[cat == IGNORED], flags=rows[target][:, 6:8], annotated=a.is_file()))
    return plan


CONVERTER = Converter(name="visdrone", version=1, defaults=DEFAULTS, names=lambda opts: list(NAMES), read=read,
                      splits=_splits, flag_columns=("truncation", "occlusion"), path_options=("splits",))
