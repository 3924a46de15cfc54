"""COCO-style JSON datasets -> YOLO: AI-TOD v2 (``aitod``) and TinyPerson (``tinyperson``), registered in
``data/convert.py``.

Common rules: an annotation's ``bbox`` is ``[x, y, w, h]`` in original pixels (top-left corner). Annotations with
``iscrowd`` or ``ignore`` true become ignore areas (``NAME.ignore.txt``) whatever their category; other annotations
of a category the dataset does not define, or of a ``category_id`` missing from ``categories``, are dropped and
counted as unknown class ids. Images listed in ``images`` without any annotation get an empty label file. An image
entry whose file is missing, two image entries with the same ``id`` or ``file_name``, or an annotation naming an
image id absent from ``images`` is an error naming it. Every field read is type-checked (an error names the entry):
entries are objects, ids integers or strings, ``file_name`` a relative path, ``bbox`` a list of 4 finite numbers,
``category_id`` an integer, ``iscrowd``/``ignore``/``uncertain`` a boolean or 0/1.
Option ``splits``: output split -> ``{annotations: JSON path or list of candidates (first existing wins), images:
folder the JSON's file_name is relative to}``, both relative to SRC.

AI-TOD v2 (8 classes, 800 x 800 px images; images are generated from xView + AI-TOD_wo_xview with the authors'
toolkit): ``SRC/annotations/aitodv2_{train,val,test}.json`` and ``SRC/images/{train,val,test}/``. Category names are
matched after lower-casing and mapping ``_``/space to ``-`` (``storage_tank`` = ``storage-tank``).

TinyPerson (``SRC/tiny_set`` or SRC itself holding ``annotations/``, ``train/``, ``test/``): categories
``sea_person`` and ``earth_person`` (or one ``person`` in the task files). ``merge_persons: true`` (default) maps all
to class 0 ``person``; ``false`` keeps sea person 0 and earth person 1 (needs both categories). ``uncertain`` boxes
stay targets; their flag goes to ``labels/{split}/NAME.flags.txt`` (header ``# uncertain``, one 0/1 line per label
row, same order).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data.convert_common import (
    Converter,
    Item,
    Plan,
    first_existing,
    image_size,
    number,
    read_text,
    safe_relpath,
    whole,
)
from utils.errors import DatasetError

AITOD_NAMES = ("airplane", "bridge", "storage-tank", "ship", "swimming-pool", "vehicle", "person", "wind-mill")
AITOD_DEFAULTS: dict[str, Any] = {"splits": {s: {"annotations": f"annotations/aitodv2_{s}.json",
                                                 "images": f"images/{s}"} for s in ("train", "val", "test")}}
TINYPERSON_DEFAULTS: dict[str, Any] = {
    "merge_persons": True,
    "splits": {"train": {"annotations": ["annotations/tiny_set_train.json",
                                         "annotations/tiny_set_train_with_dense.json"], "images": "train"},
               "val": {"annotations": ["annotations/tiny_set_test.json", "annotations/task/tiny_set_test_all.json",
                                       "annotations/tiny_set_test_with_dense.json"], "images": "test"}},
}


def load_json(path: Path) -> dict[str, Any]:
    """A COCO-style annotation file: an object with 'images' and 'annotations' lists (and a 'categories' list,
    empty when absent). DatasetError naming the file otherwise."""
    try:
        d = json.loads(read_text(path))
    except FileNotFoundError:
        raise DatasetError(f"missing annotation file {path}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, digits over Python's limit, absurd nesting
        raise DatasetError(f"{path}: not a valid JSON annotation file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("images", "annotations")):
        raise DatasetError(f"{path}: expected a COCO-style JSON object with 'images' and 'annotations' lists")
    d.setdefault("categories", [])
    if not isinstance(d["categories"], list):
        raise DatasetError(f"{path}: 'categories' must be a list, got {type(d['categories']).__name__}")
    return d


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _entry(x: Any, where: str) -> dict:
    if not isinstance(x, dict):
        raise DatasetError(f"{where}: expected an object, got {type(x).__name__} {str(x)[:60]!r}")
    return x


def _image_id(v: Any, where: str) -> int | str:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise DatasetError(f"{where}: expected an integer or string image id, got {v!r}")
    return v


def _flag(a: dict, key: str, where: str) -> bool:
    v = a.get(key, False)
    if v is None or isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
        return bool(v)
    raise DatasetError(f"{where}: '{key}' must be true/false or 0/1, got {v!r}")


def _category_names(cats: list, ann_file: Path) -> dict[int, str]:
    out = {}
    for i, c in enumerate(cats):
        where = f"{ann_file}: categories[{i}]"
        c = _entry(c, where)
        if not isinstance(c.get("name"), str):
            raise DatasetError(f"{where}: 'name' must be a string, got {c.get('name')!r}")
        out[whole(c.get("id"), f"{where}: 'id'")] = _norm(c["name"])
    return out


def aitod_classes(cats: list, opts: dict[str, Any], ann_file: Path) -> dict[int, int]:
    """AI-TOD category id -> class index by name; categories of other names are left out (unknown)."""
    index = {n: i for i, n in enumerate(AITOD_NAMES)} | {"windmill": 7, "storagetank": 2, "swimmingpool": 4}
    return {i: index[n] for i, n in _category_names(cats, ann_file).items() if n in index}


def tinyperson_classes(cats: list, opts: dict[str, Any], ann_file: Path) -> dict[int, int]:
    """TinyPerson category id -> class index: all persons 0 when merging, else sea 0 / earth 1."""
    names = _category_names(cats, ann_file)
    if opts["merge_persons"]:
        return {i: 0 for i, n in names.items() if "person" in n}
    out = {i: 0 if "sea" in n else 1 for i, n in names.items() if "sea" in n or "earth" in n}
    if set(out.values()) != {0, 1}:
        raise DatasetError(f"{ann_file}: merge_persons: false needs 'sea_person' and 'earth_person' categories, "
                           f"found {sorted(names.values())}")
    return out


def _bbox(a: dict, where: str) -> list[float]:
    b = a.get("bbox")
    if not isinstance(b, list) or len(b) != 4:
        raise DatasetError(f"{where}: 'bbox' must be a list [x, y, w, h], got {b!r}")
    x, y, w, h = (number(v, f"{where}: 'bbox'") for v in b)
    return [x, y, x + w, y + h]


def _images(d: dict, ann_file: Path, img_root: Path) -> dict[int | str, str]:
    """Image id -> relative file name, every entry checked (types, duplicates, the file exists)."""
    images: dict[int | str, str] = {}
    ids_of: dict[str, int | str] = {}  # file name -> image id: each image is listed once
    for i, im in enumerate(d["images"]):
        where = f"{ann_file}: images[{i}]"
        im = _entry(im, where)
        iid = _image_id(im.get("id"), f"{where}: 'id'")
        rel = safe_relpath(im.get("file_name"), f"{ann_file}: image id {iid!r}")
        if iid in images:  # its annotations could not tell the two images apart
            raise DatasetError(f"{ann_file}: duplicate image id {iid!r} in 'images' ({images[iid]} and {rel})")
        if rel in ids_of:  # one label file would be written twice: the first image's labels lost
            raise DatasetError(f"{ann_file}: duplicate file_name {rel!r} in 'images' (image ids "
                               f"{ids_of[rel]!r} and {iid!r})")
        if not (img_root / rel).is_file():
            raise DatasetError(f"{ann_file}: image {img_root / rel} does not exist")
        images[iid], ids_of[rel] = rel, iid
    return images


def _read(src: Path, opts: dict[str, Any], classes_fn: Callable, dataset: str, flag_keys: tuple[str, ...]) -> Plan:
    """Read and check every split's annotation file and image headers; the plan of the output."""
    plan = Plan()
    for split, spec in opts["splits"].items():
        if not isinstance(spec, dict) or not {"annotations", "images"} <= set(spec):
            raise DatasetError(f"{dataset}: option splits.{split} must be a mapping with 'annotations' and 'images'")
        ann_file = first_existing(src, spec["annotations"], f"{dataset} annotation file for split '{split}'")
        img_root = src / str(spec["images"])
        d = load_json(ann_file)
        classes = classes_fn(d["categories"], opts, ann_file)
        images = _images(d, ann_file, img_root)
        anns: dict[int | str, list[tuple[list[float], bool, int | None, list[int]]]] = defaultdict(list)
        for j, a in enumerate(d["annotations"]):
            where = f"{ann_file}: annotations[{j}]"
            a = _entry(a, where)
            where += f" (id {a.get('id')!r})"
            iid = _image_id(a.get("image_id"), f"{where}: 'image_id'")
            if iid not in images:
                raise DatasetError(f"{ann_file}: annotation {a.get('id')} names image id {iid!r}, which is not in "
                                   "'images'")
            crowd = _flag(a, "iscrowd", where) | _flag(a, "ignore", where)
            cat = None if crowd and a.get("category_id") is None else whole(a.get("category_id"),
                                                                              f"{where}: 'category_id'")
            anns[iid].append((_bbox(a, where), crowd, cat, [int(_flag(a, k, where)) for k in flag_keys]))
        for iid, rel in images.items():
            boxes, cls, ignore, flags, unknown = [], [], [], [], []
            for box, crowd, cat, fl in anns.get(iid, []):
                if crowd:
                    ignore.append(box)
                elif cat in classes:
                    boxes.append(box)
                    cls.append(classes[cat])
                    flags.append(fl)
                else:
                    unknown.append(cat)
            plan.counts.drop_unknown(unknown)
            plan.items.append(Item(split, img_root / rel, rel, image_size(img_root / rel),
                                   np.array(boxes, np.float64).reshape(-1, 4), np.array(cls, np.int64),
                                   ignore=np.array(ignore, np.float64).reshape(-1, 4),
                                   flags=np.array(flags, np.int64).reshape(len(boxes), len(flag_keys)),
                                   annotated=iid in anns))
    return plan


def _splits(opts: dict[str, Any]) -> list[str]:
    return list(opts["splits"])


def _tinyperson_root(src: Path) -> Path:
    return src / "tiny_set" if (src / "tiny_set").is_dir() else src


AITOD = Converter(
    name="aitod", version=1, defaults=AITOD_DEFAULTS, names=lambda opts: list(AITOD_NAMES),
    read=lambda src, opts: _read(src, opts, aitod_classes, "aitod", ()), splits=_splits, path_options=("splits",))

TINYPERSON = Converter(
    name="tinyperson", version=1, defaults=TINYPERSON_DEFAULTS,
    names=lambda opts: ["person"] if opts["merge_persons"] else ["sea person", "earth person"],
    read=lambda src, opts: _read(_tinyperson_root(src), opts, tinyperson_classes, "tinyperson", ("uncertain",)),
    splits=_splits, flag_columns=("uncertain",), path_options=("splits",))
