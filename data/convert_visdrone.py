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
An image without an annotation file gets an empty label file; an annotation file without its image is an error.

Option ``splits``: output split -> source folder (default train/val/test from the train/val/test-dev folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.convert_common import Converter, Output, image_size
from utils.dataset_yaml import DatasetError
from utils.labels import IMG_FORMATS

NAMES = ("pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus", "motor")
IGNORED, OTHERS = 0, 11
DEFAULTS: dict[str, Any] = {"splits": {"train": "VisDrone2019-DET-train", "val": "VisDrone2019-DET-val",
                                       "test": "VisDrone2019-DET-test-dev"}}


def parse_annotation(path: Path) -> np.ndarray:
    """One VisDrone annotation file -> (n, 8) int64 rows ``x y w h score category truncation occlusion``."""
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip().rstrip(",")
        if not s:
            continue
        try:
            v = [int(float(x)) for x in s.split(",")]
        except ValueError:
            v = []
        if len(v) != 8:
            raise DatasetError(f"{path}: line {i}: expected 8 comma-separated integers "
                               f"'x,y,w,h,score,category,truncation,occlusion', got {line.strip()!r}")
        rows.append(v)
    return np.array(rows, np.int64).reshape(-1, 8)


def _splits(opts: dict[str, Any]) -> list[str]:
    return list(opts["splits"])


def locate(src: Path, opts: dict[str, Any]) -> list[tuple[str, Path, Path, list[Path]]]:
    """Check the source: per split (split, images folder, annotations folder, sorted image files)."""
    plan = []
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
        plan.append((split, img_dir, ann_dir, images))
    return plan


def run(plan: list[tuple[str, Path, Path, list[Path]]], out: Output, opts: dict[str, Any]) -> None:
    for split, _, ann_dir, images in plan:
        for im in tqdm(images, desc=f"visdrone {split}", unit="img"):
            a = ann_dir / f"{im.stem}.txt"
            rows = parse_annotation(a) if a.is_file() else np.zeros((0, 8), np.int64)
            cat = rows[:, 5]
            xyxy = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], 1).astype(np.float64)
            target = (cat >= 1) & (cat <= 10)
            unknown = ~target & (cat != IGNORED) & (cat != OTHERS)
            out.counts.dropped["others"] += int((cat == OTHERS).sum())
            out.drop_unknown(cat[unknown])
            out.add(split, im, im.name, xyxy[target], cat[target] - 1, ignore=xyxy[cat == IGNORED],
                    flags=rows[target][:, 6:8], annotated=a.is_file(), size=image_size(im))


CONVERTER = Converter(name="visdrone", version=1, defaults=DEFAULTS, names=lambda opts: list(NAMES), locate=locate,
                      run=run, splits=_splits, flag_columns=("truncation", "occlusion"),
                      path_options=("splits",))
