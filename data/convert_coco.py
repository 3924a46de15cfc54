"""COCO-style JSON datasets -> YOLO: AI-TOD v2 (``aitod``) and TinyPerson (``tinyperson``), registered in
``data/convert.py``.

Common rules: an annotation's ``bbox`` is ``[x, y, w, h]`` in original pixels (top-left corner). Annotations with
``iscrowd`` or ``ignore`` true become ignore areas (``NAME.ignore.txt``) whatever their category; other annotations
of a category the dataset does not define, or of a ``category_id`` missing from ``categories``, are dropped and
counted as unknown class ids. Images listed in ``images`` without any annotation get an empty label file. An image
entry whose file is missing, or an annotation naming an image id absent from ``images``, is an error naming it.
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
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.convert_common import Converter, Output, first_existing, image_size, safe_relpath
from utils.dataset_yaml import DatasetError

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
    """A COCO-style annotation file with 'images', 'annotations' and 'categories' lists."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"missing annotation file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a valid JSON annotation file ({e})") from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("images", "annotations")):
        raise DatasetError(f"{path}: expected a COCO-style JSON object with 'images' and 'annotations' lists")
    d.setdefault("categories", [])
    return d


def _norm(name: str) -> str:
    return str(name).strip().lower().replace("_", "-").replace(" ", "-")


def _category_names(cats: list[dict], ann_file: Path) -> dict[int, str]:
    try:
        return {int(c["id"]): _norm(c.get("name", "")) for c in cats}
    except (TypeError, ValueError, KeyError, AttributeError):
        raise DatasetError(f"{ann_file}: every entry of 'categories' needs an integer 'id' and a 'name'") from None


def aitod_classes(cats: list[dict], opts: dict[str, Any], ann_file: Path) -> dict[int, int]:
    """AI-TOD category id -> class index by name; categories of other names are left out (unknown)."""
    index = {n: i for i, n in enumerate(AITOD_NAMES)} | {"windmill": 7, "storagetank": 2, "swimmingpool": 4}
    return {i: index[n] for i, n in _category_names(cats, ann_file).items() if n in index}


def tinyperson_classes(cats: list[dict], opts: dict[str, Any], ann_file: Path) -> dict[int, int]:
    """TinyPerson category id -> class index: all persons 0 when merging, else sea 0 / earth 1."""
    names = _category_names(cats, ann_file)
    if opts["merge_persons"]:
        return {i: 0 for i, n in names.items() if "person" in n}
    out = {i: 0 if "sea" in n else 1 for i, n in names.items() if "sea" in n or "earth" in n}
    if set(out.values()) != {0, 1}:
        raise DatasetError(f"{ann_file}: merge_persons: false needs 'sea_person' and 'earth_person' categories, "
                           f"found {sorted(names.values())}")
    return out


def _locate(src: Path, opts: dict[str, Any], classes_fn, dataset: str) -> list[dict[str, Any]]:
    plan = []
    for split, spec in opts["splits"].items():
        if not isinstance(spec, dict) or not {"annotations", "images"} <= set(spec):
            raise DatasetError(f"{dataset}: option splits.{split} must be a mapping with 'annotations' and 'images'")
        ann_file = first_existing(src, spec["annotations"], f"{dataset} annotation file for split '{split}'")
        img_root = src / str(spec["images"])
        d = load_json(ann_file)
        classes = classes_fn(d["categories"], opts, ann_file)
        images: dict[Any, str] = {}
        ids_of: dict[str, Any] = {}  # file name -> image id: each image is listed once
        for im in d["images"]:
            iid = im.get("id")
            rel = safe_relpath(im.get("file_name", ""), f"{ann_file}: image id {iid}")
            if iid in images:  # its annotations could not tell the two images apart
                raise DatasetError(f"{ann_file}: duplicate image id {iid!r} in 'images' ({images[iid]} and {rel})")
            if rel in ids_of:  # one label file would be written twice: the first image's labels lost
                raise DatasetError(f"{ann_file}: duplicate file_name {rel!r} in 'images' (image ids "
                                   f"{ids_of[rel]!r} and {iid!r})")
            if not (img_root / rel).is_file():
                raise DatasetError(f"{ann_file}: image {img_root / rel} does not exist")
            images[iid], ids_of[rel] = rel, iid
        anns = defaultdict(list)
        for a in d["annotations"]:
            if a.get("image_id") not in images:
                raise DatasetError(f"{ann_file}: annotation {a.get('id')} names image id {a.get('image_id')!r}, "
                                   "which is not in 'images'")
            anns[a["image_id"]].append(a)
        plan.append({"split": split, "ann_file": ann_file, "img_root": img_root, "images": images, "anns": anns,
                     "classes": classes})
    return plan


def _bbox(a: dict, ann_file: Path) -> list[float]:
    b = a.get("bbox")
    try:
        x, y, w, h = (float(v) for v in b)
    except (TypeError, ValueError):
        raise DatasetError(f"{ann_file}: annotation {a.get('id')}: 'bbox' must be [x, y, w, h], got {b!r}") from None
    return [x, y, x + w, y + h]


def _cat_id(a: dict) -> int | None:
    try:
        return int(a.get("category_id"))
    except (TypeError, ValueError):
        return None


def _run(plan: list[dict[str, Any]], out: Output, flag_keys: tuple[str, ...], dataset: str) -> None:
    for p in plan:
        classes, ann_file = p["classes"], p["ann_file"]
        for image_id, rel in tqdm(p["images"].items(), desc=f"{dataset} {p['split']}", unit="img"):
            boxes, cls, ignore, flags, unknown = [], [], [], [], []
            for a in p["anns"].get(image_id, []):
                if a.get("iscrowd") or a.get("ignore"):
                    ignore.append(_bbox(a, ann_file))
                elif _cat_id(a) in classes:
                    boxes.append(_bbox(a, ann_file))
                    cls.append(classes[_cat_id(a)])
                    flags.append([int(bool(a.get(k))) for k in flag_keys])
                else:
                    unknown.append(a.get("category_id"))
            out.drop_unknown(unknown)
            flags_arr = np.array(flags, np.int64).reshape(len(boxes), len(flag_keys))
            out.add(p["split"], p["img_root"] / rel, rel, np.array(boxes).reshape(-1, 4), np.array(cls, np.int64),
                    ignore=np.array(ignore).reshape(-1, 4), flags=flags_arr,
                    annotated=image_id in p["anns"], size=image_size(p["img_root"] / rel))


def _splits(opts: dict[str, Any]) -> list[str]:
    return list(opts["splits"])


def _tinyperson_root(src: Path) -> Path:
    return src / "tiny_set" if (src / "tiny_set").is_dir() else src


AITOD = Converter(
    name="aitod", version=1, defaults=AITOD_DEFAULTS, names=lambda opts: list(AITOD_NAMES),
    locate=lambda src, opts: _locate(src, opts, aitod_classes, "aitod"),
    run=lambda plan, out, opts: _run(plan, out, (), "aitod"), splits=_splits, path_options=("splits",))

TINYPERSON = Converter(
    name="tinyperson", version=1, defaults=TINYPERSON_DEFAULTS,
    names=lambda opts: ["person"] if opts["merge_persons"] else ["sea person", "earth person"],
    locate=lambda src, opts: _locate(_tinyperson_root(src), opts, tinyperson_classes, "tinyperson"),
    run=lambda plan, out, opts: _run(plan, out, ("uncertain",), "tinyperson"), splits=_splits,
    flag_columns=("uncertain",), path_options=("splits",))
