"""Tests for utils/eval/coco_eval.py: COCO JSON export/import and pycocotools evaluation on hand-computed cases."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.eval.coco_eval import (
    coco_evaluate,
    detections_to_coco_json,
    image_id_from_path,
    save_json,
    yolo_labels_to_coco,
)


def two_image_dataset():
    files = ["images/1.jpg", "images/2.jpg"]
    labels = [np.array([[0, 0.5, 0.5, 0.2, 0.4], [1, 0.25, 0.25, 0.1, 0.1]]), np.array([[0, 0.6, 0.4, 0.3, 0.2]])]
    sizes = [(100, 50), (200, 100)]  # (width, height)
    return files, labels, sizes


def test_yolo_labels_to_coco_hand_values(tmp_path):
    files, labels, sizes = two_image_dataset()
    (tmp_path / "2.txt").write_text("0 0.6 0.4 0.3 0.2\n")
    anno = yolo_labels_to_coco(files, [labels[0], tmp_path / "2.txt"], sizes, ["a", "b"])
    a0 = anno["annotations"][0]
    assert a0["bbox"] == pytest.approx([40, 15, 20, 20]) and a0["area"] == pytest.approx(400)
    assert a0["image_id"] == 1 and a0["iscrowd"] == 0 and a0["id"] == 1
    a2 = anno["annotations"][2]
    assert a2["bbox"] == pytest.approx([90, 30, 60, 20]) and a2["image_id"] == 2 and a2["id"] == 3
    assert [c["id"] for c in anno["categories"]] == [0, 1]
    assert anno["images"][1] == {"id": 2, "file_name": "2.jpg", "width": 200, "height": 100}
    with pytest.raises(ValueError, match="class 5 not in names"):
        yolo_labels_to_coco(files[:1], [np.array([[5, 0.5, 0.5, 0.1, 0.1]])], sizes[:1], ["a"])
    (tmp_path / "bad.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(ValueError, match="bad.txt"):
        yolo_labels_to_coco(files[:1], [tmp_path / "bad.txt"], sizes[:1], ["a"])


def test_detections_to_coco_json_rounding():
    det = torch.tensor([[10.12345, 20.5, 30.0, 60.25, 0.1234567, 2]], dtype=torch.float64)
    (d,) = detections_to_coco_json(det, image_id_from_path("x/000000000139.jpg"), class_map=[1, 2, 3])
    assert d == {"image_id": 139, "category_id": 3, "bbox": [10.123, 20.5, 19.877, 39.75], "score": 0.12346}
    assert image_id_from_path("a/img_7.png") == "img_7"
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        detections_to_coco_json(np.zeros((2, 4)), 1)


def gt_as_detections(anno):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in anno["annotations"]]


def test_ground_truth_as_detections_scores_one(tmp_path):
    anno = yolo_labels_to_coco(*two_image_dataset(), ["a", "b"])
    anno_path = save_json(anno, tmp_path / "anno.json")
    det_path = save_json(gt_as_detections(anno), tmp_path / "d.json")
    res = coco_evaluate(anno_path, det_path)
    assert res["AP"] == pytest.approx(1.0) and res["AP50"] == pytest.approx(1.0) and res["AR100"] == pytest.approx(1.0)
    assert res["AP_S"] == pytest.approx(1.0)  # all boxes are < 32² px²
    assert math.isnan(res["AP_L"])  # no large ground truth: pycocotools' -1
    assert not list(tmp_path.glob("*.tmp"))


def test_hand_computed_ap():
    # one class, 2 ground truths, 1 perfect detection: recall reaches 0.5 at precision 1. pycocotools samples
    # precision at the 101 recall thresholds 0, 0.01, ..., 1: 1 for the 51 thresholds <= 0.5, 0 above -> 51/101.
    files, labels, sizes = two_image_dataset()
    labels = [labels[0][:1], labels[1]]
    anno = yolo_labels_to_coco(files, labels, sizes, ["a", "b"])
    dets = gt_as_detections(anno)[:1]
    snapshot = json.dumps([anno, dets])
    res = coco_evaluate(anno, dets)
    assert json.dumps([anno, dets]) == snapshot  # pycocotools mutates its inputs: we must pass copies
    assert res["AP"] == pytest.approx(51 / 101) and res["AP50"] == pytest.approx(51 / 101)
    assert res["AR100"] == pytest.approx(0.5)
    # a higher-scored false positive first halves the precision at recall 0.5 -> 51 * 0.5 / 101
    fp = {"image_id": 2, "category_id": 0, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.95}
    assert coco_evaluate(anno, [*dets, fp])["AP"] == pytest.approx(51 * 0.5 / 101)
    # a lower-scored one changes nothing
    assert coco_evaluate(anno, [*dets, {**fp, "score": 0.1}])["AP"] == pytest.approx(51 / 101)
    assert coco_evaluate(anno, [])["AP"] == 0.0
    with pytest.raises(ValueError, match="image ids absent"):
        coco_evaluate(anno, [{**fp, "image_id": 99}])


def test_roundtrip_detections_from_labels_in_pixels():
    # YOLO labels -> xyxy original pixels -> our JSON: evaluates to 1.0 against the annotation built from them
    files, labels, sizes = two_image_dataset()
    anno = yolo_labels_to_coco(files, labels, sizes, ["a", "b"])
    dets = []
    for f, lab, (w, h) in zip(files, labels, sizes):
        xc, yc, bw, bh = lab[:, 1] * w, lab[:, 2] * h, lab[:, 3] * w, lab[:, 4] * h
        det = np.stack([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2, np.full(len(lab), 0.8), lab[:, 0]], 1)
        dets += detections_to_coco_json(det, image_id_from_path(f))
    assert coco_evaluate(anno, dets)["AP"] == pytest.approx(1.0)


@pytest.mark.oracle
def test_detections_to_coco_json_matches_reference(oracle):
    ref_val = importlib.import_module("yolov5.val")
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (20, 2))
    det = torch.tensor(np.concatenate([xy, xy + rng.uniform(1, 90, (20, 2)), rng.random((20, 1)),
                                       rng.integers(0, 80, (20, 1))], 1))
    class_map = list(range(1, 91))
    ref: list = []
    ref_val.save_one_json(det.clone(), ref, Path("data/000000000042.jpg"), class_map)
    ours = detections_to_coco_json(det, image_id_from_path("data/000000000042.jpg"), class_map)
    assert json.dumps(ours) == json.dumps(ref)
