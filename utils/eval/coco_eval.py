"""COCO-format export and pycocotools evaluation.

Units: COCO boxes are [x, y, w, h] with (x, y) the top-left corner, in ORIGINAL-image pixels; areas in original
pixels². Detections come in as xyxy original pixels (after ``scale_boxes``); YOLO labels as normalised
[cls, x_center, y_center, w, h]. Category ids are ``class_map[cls]`` (identity by default; COCO-80 datasets map
to COCO-91 ids). Annotation ids start at 1: pycocotools treats a matched id of 0 as "unmatched".
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.errors import UserError

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")


def image_id_from_path(path: str | Path) -> int | str:
    """COCO image id of an image file: its stem as an int when numeric (COCO's 000000000139.jpg -> 139)."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def detections_to_coco_json(detections: torch.Tensor | np.ndarray, image_id: int | str,
                            class_map: Sequence[int] | dict[int, int] | None = None) -> list[dict[str, Any]]:
    """COCO results of one image: detections (N, 6) [x1, y1, x2, y2, conf, cls] in original pixels ->
    [{image_id, category_id, bbox [x, y, w, h] rounded to 3 decimals, score rounded to 5}], as YOLOv5's
    save_one_json."""
    d = np.asarray(detections.detach().cpu() if isinstance(detections, torch.Tensor) else detections, dtype=float)
    if d.ndim != 2 or d.shape[1] < 6:
        raise ValueError(f"detections_to_coco_json: expected (N, 6) [x1, y1, x2, y2, conf, cls], got {d.shape}")
    out = []
    for x1, y1, x2, y2, conf, cls in d[:, :6].tolist():
        out.append({"image_id": image_id,
                    "category_id": int(class_map[int(cls)]) if class_map is not None else int(cls),
                    "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                    "score": round(conf, 5)})
    return out


def _read_label_file(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        return np.zeros((0, 5))  # YOLO convention: no file = no objects
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        arr = np.array(rows, dtype=float).reshape(-1, 5) if rows else np.zeros((0, 5))
    except ValueError as e:
        raise UserError(f"{path}: expected rows of 5 numbers 'cls x y w h' (normalised): {e}") from e
    return arr


def yolo_labels_to_coco(image_files: Sequence[str | Path], labels: Sequence[np.ndarray | str | Path],
                        image_sizes: Sequence[tuple[int, int]], names: Sequence[str] | dict[int, str],
                        class_map: Sequence[int] | dict[int, int] | None = None) -> dict[str, Any]:
    """Build a COCO annotation dict from YOLO labels, for datasets without a COCO annotation file.

    labels: per image an (M, 5) array [cls, x_center, y_center, w, h] normalised, or a label-file path;
    image_sizes: per image (width, height) in original pixels (as ``LoadImagesAndLabels.shapes``).
    Boxes and areas (w * h) are in original pixels; iscrowd 0; image ids from ``image_id_from_path``.
    """
    if not (len(image_files) == len(labels) == len(image_sizes)):
        raise ValueError(f"yolo_labels_to_coco: {len(image_files)} images, {len(labels)} label entries and "
                         f"{len(image_sizes)} sizes: they must be equal")
    names = dict(enumerate(names)) if not isinstance(names, dict) else names
    cat = (lambda c: int(class_map[c])) if class_map is not None else int
    images, annotations = [], []
    for f, lab, (w, h) in zip(image_files, labels, image_sizes):
        image_id = image_id_from_path(f)
        images.append({"id": image_id, "file_name": Path(f).name, "width": int(w), "height": int(h)})
        arr = _read_label_file(lab) if isinstance(lab, (str, Path)) else np.asarray(lab, dtype=float).reshape(-1, 5)
        for c, xc, yc, bw, bh in arr.tolist():
            if int(c) not in names:
                raise UserError(f"yolo_labels_to_coco: {f}: class {int(c)} not in names (nc={len(names)})")
            bw, bh = bw * w, bh * h
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat(int(c)),
                                "bbox": [xc * w - bw / 2, yc * h - bh / 2, bw, bh], "area": bw * bh,
                                "iscrowd": 0})
    categories = [{"id": cat(k), "name": str(v)} for k, v in sorted(names.items())]
    return {"images": images, "annotations": annotations, "categories": categories}


def save_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (temporary file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _load(x: dict | list | str | Path, what: str) -> Any:
    if isinstance(x, (str, Path)):
        try:
            return json.loads(Path(x).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"coco_evaluate: cannot read {what} JSON {x}: {e}") from e
    return x


def coco_evaluate(anno: dict | str | Path, dets: list | str | Path,
                  img_ids: Sequence[int | str] | None = None) -> dict[str, float]:
    """Evaluate COCO-format detections with pycocotools (its prints captured).

    anno: annotation dict or JSON path; dets: result list or JSON path; img_ids: restrict to these images.
    Returns {AP, AP50, AP75, AP_S, AP_M, AP_L, AR1, AR10, AR100, AR_S, AR_M, AR_L} (pycocotools' -1 for
    "no ground truth in that range" kept as NaN). No detections at all give 0.0 everywhere.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anno, dets = _load(anno, "annotation"), _load(dets, "detections")
    if not isinstance(anno, dict) or "annotations" not in anno or "images" not in anno:
        raise UserError("coco_evaluate: annotation must be a COCO dict with 'images' and 'annotations'")
    if not isinstance(dets, list):
        raise UserError(f"coco_evaluate: detections must be a list of COCO results, got {type(dets).__name__}")
    if not dets:
        return dict.fromkeys(COCO_STAT_NAMES, 0.0)
    unknown = {d["image_id"] for d in dets} - {im["id"] for im in anno["images"]}
    if unknown:
        raise UserError(f"coco_evaluate: detections reference image ids absent from the annotation: "
                         f"{sorted(map(str, unknown))[:5]} ({len(unknown)} in all)")
    # pycocotools adds keys to the annotation and result dicts it is given: hand it copies
    anno = {"info": {}, "licenses": [], **anno, "annotations": [dict(a) for a in anno["annotations"]]}
    dets = [dict(d) for d in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = anno
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) if v >= 0 else math.nan) for k, v in zip(COCO_STAT_NAMES, ev.stats)}
