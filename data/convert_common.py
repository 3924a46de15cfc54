"""Shared pieces of the dataset converters (``data/convert_*.py``): the ``Converter`` description, the ``Plan`` a
converter reads from the source (every input parsed and checked, nothing written yet), the writer of the YOLO output
(images linked, labels, ignore areas, flags), counters, archive extraction and small checks.

Output layout (what every converter writes under DST):
- ``images/{split}/REL``: the original image, hard-linked (copied when linking fails, e.g. across file systems);
- ``labels/{split}/REL.txt``: ``cls x y w h`` per object, **normalised**, 6 decimals; written for every image
  (empty when the image has no targets);
- ``labels/{split}/REL.ignore.txt``: ignore areas ``x1 y1 x2 y2`` normalised (``utils/dataset/ignore.py``), only for
  images that have any;
- ``labels/{split}/REL.flags.txt``: per-object flags for analysis (VisDrone truncation/occlusion, TinyPerson
  uncertain), only for converters that have flags and images with targets: a ``# col1 col2`` header line, then one
  line of integers per row of the label file, in the same order.
Boxes crossing the image border are clipped to it; boxes (and ignore areas) of zero width or height after clipping
are dropped and counted.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from utils.archives import SUFFIXES as ARCHIVE_SUFFIXES
from utils.archives import ArchiveError, extract, is_archive
from utils.dataset.ignore import format_ignore, ignore_file_for
from utils.errors import DatasetError
from utils.safe_paths import UnsafePathError, relative_path

FLAGS_SUFFIX = ".flags.txt"
DROP_REASONS = {  # counter key -> words of the printed summary
    "zero_size": "zero-size boxes (after clipping to the image)",
    "zero_size_ignore": "zero-size ignore areas",
    "others": "'others' boxes (VisDrone category 11)",
    "unknown_class": "boxes of unknown class ids",
    "missing_image": "boxes of images absent from the image folder",
    "no_box": "annotations without a box",
}


@dataclass
class Counts:
    """What a conversion wrote and dropped (recorded in the marker and printed)."""

    images: int = 0
    labels: int = 0
    ignore_areas: int = 0
    images_with_ignore: int = 0
    empty_images: int = 0  # images whose label file is empty
    no_annotation_entry: int = 0  # images the annotations never mention (written with an empty label file)
    per_split: Counter = field(default_factory=Counter)  # split -> images
    dropped: Counter = field(default_factory=Counter)  # DROP_REASONS key -> boxes
    unknown_class_ids: Counter = field(default_factory=Counter)  # original id (str) -> boxes
    missing_images: list[str] = field(default_factory=list)  # names (skip_missing_images only)

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("images", "labels", "ignore_areas", "images_with_ignore", "empty_images",
                                           "no_annotation_entry")}
        d.update(per_split=dict(self.per_split), dropped=dict(self.dropped),
                 unknown_class_ids={str(k): v for k, v in sorted(self.unknown_class_ids.items(), key=str)},
                 missing_images=sorted(self.missing_images))
        return d

    def drop_unknown(self, ids: np.ndarray | list) -> None:
        """Count boxes dropped because their original class id is unknown (ids reported in the summary)."""
        for i in np.asarray(ids).reshape(-1).tolist():
            self.dropped["unknown_class"] += 1
            self.unknown_class_ids[str(i)] += 1


@dataclass
class Item:
    """One image of the output and its annotations, as read and checked from the source."""

    split: str  # output split (a plain folder name)
    image: Path  # the source image
    rel: str  # its path below images/{split} (POSIX, relative, no '..')
    size: tuple[int, int]  # (width, height) original px, from the image header
    boxes: np.ndarray  # (n, 4) float64 x1 y1 x2 y2 original px
    classes: np.ndarray  # (n,) int64 class ids 0..nc-1
    ignore: np.ndarray  # (m, 4) float64 ignore areas x1 y1 x2 y2 original px
    flags: np.ndarray | None = None  # (n, len(flag_columns)) int64
    annotated: bool = True  # False when the annotations never mention this image (counted; empty label file)


@dataclass
class Plan:
    """Everything a conversion will write: the items, and the counts of what reading dropped (unknown classes,
    'others', missing images, ...). Built by ``Converter.read`` before anything is written."""

    items: list[Item] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)


@dataclass(frozen=True, eq=False)
class Converter:
    """One registered converter. ``read(src, options)`` reads and checks every input (raising DatasetError naming
    the file for anything wrong) and returns the ``Plan``; nothing is written before it returned. Bump ``version``
    when the output changes, so that datasets converted by an older version are converted again."""

    name: str
    version: int
    defaults: dict[str, Any]  # every option with its default
    names: Callable[[dict[str, Any]], list[str]]  # class names (index = class id) for these options
    read: Callable[[Path, dict[str, Any]], Plan]
    splits: Callable[[dict[str, Any]], list[str]]  # the splits written for these options (plain folder names)
    flag_columns: tuple[str, ...] = ()
    path_options: tuple[str, ...] = ()  # options whose strings (also nested) are paths relative to SRC


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file in original pixels, from its header (PIL does not decode the pixels)."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as e:  # a header claiming billions of pixels
        raise DatasetError(f"{path}: image too large ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None


def read_text(path: Path) -> str:
    """The UTF-8 text of an annotation file; DatasetError naming it when it is not UTF-8 or cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.object[e.start:e.start + 1]!r})") \
            from None


def number(value: Any, where: str) -> float:
    """``value`` when it is a finite JSON number (int or float, not a bool), as a float; DatasetError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DatasetError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def whole(value: Any, where: str) -> int:
    """``value`` when it is an integer (not a bool); DatasetError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{where}: expected an integer, got {value!r}")
    return value


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` at ``dst`` (no extra disk space); copy when linking is impossible (other file system)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def safe_relpath(rel: object, where: str) -> str:
    """A relative image path from an annotation file (POSIX form), refused when not a string, empty, absolute or
    escaping with '..'."""
    try:
        return relative_path(rel, where)
    except UnsafePathError:
        raise DatasetError(f"{where}: unsafe or empty image path {rel!r} (must be relative, without '..')") from None


def first_existing(root: Path, candidates: str | list[str], what: str) -> Path:
    """The first of ``candidates`` (paths relative to ``root``) that exists; DatasetError naming them all if none."""
    cands = [candidates] if isinstance(candidates, str) else list(candidates)
    for c in cands:
        if (root / c).exists():
            return root / c
    listed = ", ".join(str(root / c) for c in cands)
    raise DatasetError(f"missing {what}: {listed}" + (" (none of these exists)" if len(cands) > 1 else ""))


def extract_archives(folder: Path) -> list[Path]:
    """Extract every archive (.zip, .tar, .tgz, .tar.gz) lying directly in ``folder`` into it, once: a hidden
    ``.NAME.extracted`` file, written after a complete extraction, marks it done. Returns the archives extracted now.

    Raises DatasetError naming the archive when it is corrupt or incomplete, holds an absolute or '..' path or
    links, or is over the limits of ``utils/archives.py`` (size, compression ratio, members, free space).
    """
    done = []
    for a in sorted(p for p in folder.iterdir() if is_archive(p)):
        flag = folder / f".{a.name}.extracted"
        if flag.exists():
            continue
        print(f"Extracting {a} ...")
        try:
            extract(a, folder)
        except ArchiveError as e:
            raise DatasetError(str(e)) from None
        flag.write_text("")
        done.append(a)
    return done


def clip_boxes(boxes: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip (n, 4) ``x1 y1 x2 y2`` original-pixel boxes to a ``w`` x ``h`` image. Returns (clipped (n, 4) float64,
    keep (n,) bool: width and height still > 0)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    return b, (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])


def check_plan(plan: Plan) -> None:
    """Raise DatasetError when two items would write the same image or label file (e.g. ``a.jpg`` and ``a.png``
    of one folder both give ``a.txt``): one of them would silently lose its labels."""
    seen: dict[str, Path] = {}
    for it in plan.items:
        for out in (f"images/{it.split}/{it.rel}", f"labels/{it.split}/{Path(it.rel).with_suffix('.txt').as_posix()}"):
            other = seen.setdefault(out, it.image)
            if other != it.image:
                raise DatasetError(f"{other} and {it.image} would both be written as {out}; rename one of them")


def write_plan(plan: Plan, dst: Path, flag_columns: tuple[str, ...] = (), desc: str = "") -> Counts:
    """Write every item of ``plan`` under ``dst`` (layout in the module docstring); returns the counts (the plan's
    reading counts plus what writing added and dropped)."""
    counts = plan.counts
    for it in tqdm(plan.items, desc=desc, unit="img", disable=None):
        _write_item(it, dst, counts, flag_columns)
    return counts


def _write_item(it: Item, dst: Path, c: Counts, flag_columns: tuple[str, ...]) -> None:
    w, h = it.size
    b, keep = clip_boxes(it.boxes, w, h)
    c.dropped["zero_size"] += int((~keep).sum())
    b, cls = b[keep], np.asarray(it.classes, np.int64).reshape(-1)[keep]
    ig, ikeep = clip_boxes(it.ignore, w, h)
    c.dropped["zero_size_ignore"] += int((~ikeep).sum())
    ig = ig[ikeep]

    link_or_copy(it.image, dst / "images" / it.split / it.rel)
    lb = (dst / "labels" / it.split / it.rel).with_suffix(".txt")
    lb.parent.mkdir(parents=True, exist_ok=True)
    xywh = np.column_stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                            (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h])
    lb.write_text("".join(f"{k} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for k, (x, y, bw, bh) in zip(cls, xywh)))
    if len(ig):
        ignore_file_for(lb).write_text(format_ignore(ig / np.array([w, h, w, h], np.float64)))
    if flag_columns and len(b):
        f = np.asarray(it.flags, np.int64).reshape(-1, len(flag_columns))[keep]
        rows = "".join(" ".join(str(int(v)) for v in r) + "\n" for r in f)
        lb.with_name(lb.stem + FLAGS_SUFFIX).write_text(f"# {' '.join(flag_columns)}\n{rows}")

    c.images += 1
    c.per_split[it.split] += 1
    c.labels += len(b)
    c.empty_images += not len(b)
    c.no_annotation_entry += not it.annotated
    c.ignore_areas += len(ig)
    c.images_with_ignore += bool(len(ig))


__all__ = ["ARCHIVE_SUFFIXES", "Converter", "Counts", "DROP_REASONS", "FLAGS_SUFFIX", "Item", "Plan", "check_plan",
           "clip_boxes", "extract_archives", "first_existing", "image_size", "link_or_copy", "number", "read_text",
           "safe_relpath", "whole", "write_plan"]
