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
A feature whose ``bounds_imcoords`` string is empty or not four finite numbers is dropped and counted ("no box"); a
feature or ``properties`` that is not an object, an ``image_id`` that is not a relative path, a ``type_id`` that is
not an integer or a ``bounds_imcoords`` that is not a string is an error naming the feature.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from data.convert_common import Converter, Item, Plan, first_existing, image_size, read_text, safe_relpath, whole
from utils.dataset.labels import IMG_FORMATS
from utils.errors import DatasetError

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


def _features(path: Path) -> list:
    try:
        d = json.loads(read_text(path))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, digits over Python's limit, absurd nesting
        raise DatasetError(f"{path}: not a valid GeoJSON file ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("features"), list):
        raise DatasetError(f"{path}: expected a GeoJSON FeatureCollection with a 'features' list")
    return d["features"]


def _box(bounds: str) -> list[float] | None:
    try:
        v = [float(x) for x in bounds.split(",")]
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


def _feature(f: Any, i: int, geojson: Path) -> tuple[str, int, str]:
    """(image name, type id, bounds string) of feature ``i``, every field type-checked."""
    where = f"{geojson}: features[{i}]"
    p = f.get("properties") if isinstance(f, dict) else None
    if not isinstance(p, dict):
        raise DatasetError(f"{where}: expected an object with a 'properties' object, got {str(f)[:80]!r}")
    name = safe_relpath(p.get("image_id"), f"{where}: 'image_id'")
    bounds = p.get("bounds_imcoords")
    if not isinstance(bounds, str):
        raise DatasetError(f"{where}: 'bounds_imcoords' must be a string 'x1,y1,x2,y2', got {bounds!r}")
    return name, whole(p.get("type_id"), f"{where}: 'type_id'"), bounds


def read(src: Path, opts: dict[str, Any]) -> Plan:
    """Read and check the GeoJSON and the image headers; the plan of the output."""
    if not 0 <= opts["val_fraction"] < 1:
        raise DatasetError(f"xview: option val_fraction must be in [0, 1), got {opts['val_fraction']}")
    if isinstance(opts["seed"], float) or opts["seed"] < 0:
        raise DatasetError(f"xview: option seed must be a whole number >= 0, got {opts['seed']}")
    geojson = first_existing(src, opts["geojson"], "xView annotation file")
    img_dir = src / str(opts["images"])
    if not img_dir.is_dir():
        raise DatasetError(f"missing xView image folder {img_dir}")
    images = sorted(p.name for p in img_dir.iterdir() if p.suffix[1:].lower() in IMG_FORMATS)
    feats: dict[str, list[tuple[int, list[float] | None]]] = defaultdict(list)
    missing: set[str] = set()
    for i, f in enumerate(_features(geojson)):
        name, type_id, bounds = _feature(f, i, geojson)
        if not (img_dir / name).is_file():
            if not opts["skip_missing_images"]:
                raise DatasetError(f"{geojson}: image {img_dir / name} does not exist")
            missing.add(name)
        feats[name].append((type_id, _box(bounds)))
    plan = Plan()
    c = plan.counts
    for name in sorted(missing):
        c.dropped["missing_image"] += len(feats[name])
        c.missing_images.append(name)
    split = split_names(images, opts["val_fraction"], opts["seed"])
    for name in images:
        boxes, cls, unknown = [], [], []
        for type_id, box in feats.get(name, []):
            if box is None:
                c.dropped["no_box"] += 1
            elif type_id in CLASS_OF:
                boxes.append(box)
                cls.append(CLASS_OF[type_id])
            else:
                unknown.append(type_id)
        c.drop_unknown(unknown)
        im = img_dir / name
        plan.items.append(Item(split[name], im, name, image_size(im), np.array(boxes, np.float64).reshape(-1, 4),
                               np.array(cls, np.int64), ignore=np.zeros((0, 4)), annotated=name in feats))
    return plan


CONVERTER = Converter(name="xview", version=1, defaults=DEFAULTS, names=lambda opts: list(NAMES), read=read,
                      splits=lambda opts: ["train", "val"] if opts["val_fraction"] > 0 else ["train"],
                      path_options=("geojson", "images"))
