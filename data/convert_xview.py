"""xView (DIUx xView 2018 train set) -> YOLO (registered as ``xview`` in ``data/convert.py``).

Source (after registering at xviewdataset.org and unpacking train_images.tgz and train_labels.tgz into SRC):
``SRC/train_images/*.tif`` and ``SRC/xView_train.geojson``: one GeoJSON feature per object with properties
``image_id`` (e.g. ``"104.tif"``), ``type_id`` and ``bounds_imcoords`` ``"x1,y1,x2,y2"`` (original pixels).

Classes: the 60 xView type ids of ``TYPE_IDS`` become classes 0..59 in that (increasing) order, as the xView
dataset defines them; other type ids (e.g. 75 and 82, present in the GeoJSON but not xView classes) are dropped and
counted. Only the train set has public labels, so ``val_fraction`` of the images (default 10 %, chosen by a
permutation seeded by ``seed``) become the val split. Images are linked as they are (very large TIFFs, ~3000 px):
training goes through tiling, ``python -m data.tile --data xView.yaml ...``.

The official train_images lacks 1395.tif although the GeoJSON has boxes for it: with ``skip_missing_images: true``
(default) such boxes are dropped, counted and the image names printed; ``false`` makes them an error.
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
from utils.labels import IMG_FORMATS

TYPE_IDS = (11, 12, 13, 15, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28, 29, 32, 33, 34, 35, 36, 37, 38, 40, 41, 42, 44,
            45, 47, 49, 50, 51, 52, 53, 54, 55, 56, 57, 59, 60, 61, 62, 63, 64, 65, 66, 71, 72, 73, 74, 76, 77, 79, 83,
            84, 86, 89, 91, 93, 94)
NAMES = ("Fixed-wing Aircraft", "Small Aircraft", "Cargo Plane", "Helicopter", "Passenger Vehicle", "Small Car", "Bus",
         "Pickup Truck", "Utility Truck", "Truck", "Cargo Truck", "Truck w/Box", "Truck Tractor", "Trailer",
         "Truck w/Flatbed", "Truck w/Liquid", "Crane Truck", "Railway Vehicle", "Passenger Car", "Cargo Car",
         "Flat Car", "Tank car", "Locomotive", "Maritime Vessel", "Motorboat", "Sailboat", "Tugboat", "Barge",
         "Fishing Vessel", "Ferry", "Yacht", "Container Ship", "Oil Tanker", "Engineering Vehicle", "Tower crane",
         "Container Crane", "Reach Stacker", "Straddle Carrier", "Mobile Crane", "Dump Truck", "Haul Truck",
         "Scraper/Tractor", "Front loader/Bulldozer", "Excavator", "Cement Mixer", "Ground Grader", "Hut/Tent", "Shed",
         "Building", "Aircraft Hangar", "Damaged Building", "Facility", "Construction Site", "Vehicle Lot", "Helipad",
         "Storage Tank", "Shipping container lot", "Shipping Container", "Pylon", "Tower")
CLASS_OF = {t: i for i, t in enumerate(TYPE_IDS)}
DEFAULTS: dict[str, Any] = {"geojson": ["xView_train.geojson", "train_labels/xView_train.geojson"],
                            "images": "train_images", "val_fraction": 0.1, "seed": 0, "skip_missing_images": True}


def _features(path: Path) -> list[dict]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not a valid GeoJSON file ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("features"), list):
        raise DatasetError(f"{path}: expected a GeoJSON FeatureCollection with a 'features' list")
    return d["features"]


def _box(bounds: Any) -> list[float] | None:
    try:
        v = [float(x) for x in str(bounds).split(",")]
    except ValueError:
        return None
    return v if len(v) == 4 and all(np.isfinite(v)) else None


def split_names(names: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Image name -> 'train' or 'val': ``round(len * val_fraction)`` names picked by a permutation seeded by ``seed``
    of the sorted names (deterministic; independent of the file system's listing order)."""
    names = sorted(names)
    n_val = int(round(len(names) * val_fraction))
    val = {names[i] for i in np.random.default_rng(seed).permutation(len(names))[:n_val]}
    return {n: "val" if n in val else "train" for n in names}


def locate(src: Path, opts: dict[str, Any]) -> dict[str, Any]:
    if not 0 <= float(opts["val_fraction"]) < 1:
        raise DatasetError(f"xview: option val_fraction must be in [0, 1), got {opts['val_fraction']}")
    geojson = first_existing(src, opts["geojson"], "xView annotation file")
    img_dir = src / str(opts["images"])
    if not img_dir.is_dir():
        raise DatasetError(f"missing xView image folder {img_dir}")
    images = sorted(p.name for p in img_dir.iterdir() if p.suffix[1:].lower() in IMG_FORMATS)
    feats: dict[str, list[tuple[Any, list[float] | None]]] = defaultdict(list)
    missing: set[str] = set()
    for f in _features(geojson):
        p = (f.get("properties") or {}) if isinstance(f, dict) else {}
        name = safe_relpath(p.get("image_id", ""), f"{geojson}: feature {p.get('feature_id', '?')}")
        if not (img_dir / name).is_file():
            if not opts["skip_missing_images"]:
                raise DatasetError(f"{geojson}: image {img_dir / name} does not exist")
            missing.add(name)
        feats[name].append((p.get("type_id"), _box(p.get("bounds_imcoords"))))
    return {"img_dir": img_dir, "images": images, "feats": feats, "missing": missing,
            "split": split_names(images, float(opts["val_fraction"]), int(opts["seed"]))}


def run(plan: dict[str, Any], out: Output, opts: dict[str, Any]) -> None:
    c = out.counts
    for name in sorted(plan["missing"]):
        c.dropped["missing_image"] += len(plan["feats"][name])
        c.missing_images.append(name)
    for name in tqdm(plan["images"], desc="xview", unit="img"):
        boxes, cls, unknown = [], [], []
        for type_id, box in plan["feats"].get(name, []):
            if box is None:
                c.dropped["no_box"] += 1
            elif _int(type_id) in CLASS_OF:
                boxes.append(box)
                cls.append(CLASS_OF[_int(type_id)])
            else:
                unknown.append(type_id)
        out.drop_unknown(unknown)
        im = plan["img_dir"] / name
        out.add(plan["split"][name], im, name, np.array(boxes).reshape(-1, 4), np.array(cls, np.int64),
                annotated=name in plan["feats"], size=image_size(im))


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


CONVERTER = Converter(name="xview", version=1, defaults=DEFAULTS, names=lambda opts: list(NAMES), locate=locate,
                      run=run, splits=lambda opts: ["train", "val"] if opts["val_fraction"] > 0 else ["train"],
                      path_options=("geojson", "images"))
