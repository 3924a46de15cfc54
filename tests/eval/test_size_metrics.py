"""Tests for utils/eval/size_metrics.py: hand-built bucket cases and parity of the matching with pycocotools."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch

from utils.eval.size_metrics import (
    SizeBucketStats,
    format_size_table,
    match_predictions_in_range,
    size_buckets,
)

IOUV = np.linspace(0.5, 0.95, 10)


def box(x, y, side):
    return [x, y, x + side, y + side]


def scene():
    """Two images with tiny (side 10 px, area 100 < 1024) and big (side 50 px) objects, classes 0 and 1,
    as labels (M, 5) [cls, xyxy] in original pixels."""
    im1 = np.array([[0, *box(0, 0, 10)], [1, *box(100, 100, 10)], [0, *box(200, 200, 50)]], float)
    im2 = np.array([[1, *box(0, 0, 50)], [0, *box(300, 300, 10)]], float)
    return [im1, im2]


def as_dets(labels, conf=0.9):
    return np.concatenate([labels[:, 1:], np.full((len(labels), 1), conf), labels[:, :1]], 1)


def run(images, buckets=None, conf=0.5):
    stats = SizeBucketStats(buckets)
    for det, lab in images:
        stats.update(det, lab)
    return stats.compute(conf)


def test_size_buckets_definitions():
    tiny, big = size_buckets()
    assert (tiny.name, tiny.lo, tiny.hi, big.name, big.lo, big.hi) == ("tiny", 0, 1024, "big", 1024, math.inf)
    assert size_buckets("tiny", tfl_s=256)[0].hi == 256
    assert [(b.name, b.lo, b.hi) for b in size_buckets("coco")] == [
        ("small", 0, 1024), ("medium", 1024, 9216), ("large", 9216, math.inf)]
    aitod = size_buckets("aitod")
    assert [b.name for b in aitod] == ["very_tiny", "tiny", "small", "medium", "large"]
    assert [b.hi for b in aitod] == [64, 256, 1024, 4096, math.inf]
    assert [b.name for b in size_buckets([0, 100, math.inf])] == ["[0,100)", "[100,inf)"]
    for bad in ("nope", [5], [0, 10, 5]):
        with pytest.raises(ValueError, match="size_buckets"):
            size_buckets(bad)


def test_perfect_detector_every_bucket():
    res = run([(as_dets(lab), lab) for lab in scene()])
    for name, n_gt in (("tiny", 3), ("big", 2)):
        m = res[name]
        assert m["n_gt"] == n_gt
        assert m["p"] == 1.0 and m["r"] == 1.0
        assert m["map50"] == pytest.approx(0.995) and m["map50_95"] == pytest.approx(0.995)  # v7.0's 101-pt AP
    res = run([(as_dets(lab), lab) for lab in scene()], size_buckets("coco"))
    assert res["small"]["r"] == 1.0 and res["medium"]["r"] == 1.0
    assert res["large"]["n_gt"] == 0 and math.isnan(res["large"]["map50"])


def test_missing_all_tiny_objects():
    images = []
    for lab in scene():
        big = lab[(lab[:, 3] - lab[:, 1]) > 32]
        images.append((as_dets(big), lab))
    res = run(images)
    assert res["tiny"]["r"] == 0.0 and res["tiny"]["map50"] == 0.0
    assert res["big"]["r"] == 1.0 and res["big"]["p"] == 1.0


def test_other_bucket_detections_are_not_false_positives_here():
    # perfect detections plus unmatched big false positives: tiny P stays 1, big P drops to 2/4
    images = []
    for k, lab in enumerate(scene()):
        fp = np.array([[*box(400 + k, 400, 60), 0.95, 0]])
        images.append((np.concatenate([as_dets(lab), fp]), lab))
    res = run(images)
    assert res["tiny"]["p"] == 1.0 and res["tiny"]["map50"] == pytest.approx(0.995)
    # class 0: big FP, big FP, TP at recall 1 -> precision 1/3; class 1: TP -> precision 1; mean
    assert res["big"]["p"] == pytest.approx((1 / 3 + 1) / 2)


def test_detection_matching_out_of_bucket_gt_is_ignored():
    # a tiny detection (side 30, area 900) overlapping a big GT (side 32.5, area 1056) with IoU 0.85: in the
    # tiny bucket that GT is ignored, so the detection is neither TP nor FP there at thresholds <= 0.85; above,
    # it matches nothing and, being tiny itself, is a tiny FP.
    lab = np.array([[0, *box(0, 0, 32.5)], [0, *box(100, 100, 10)]])
    det = np.array([[*box(0, 0, 30), 0.9, 0], [*box(100, 100, 10), 0.8, 0]])
    iou = 900 / 1056.25
    correct, keep = match_predictions_in_range(det, lab, IOUV, (0, 1024))
    assert not correct[0].any()
    np.testing.assert_array_equal(keep[0], IOUV > iou)
    assert correct[1].all() and keep[1].all()
    res = run([(det, lab)])
    assert res["tiny"]["p"] == 1.0 and res["tiny"]["r"] == 1.0
    assert res["big"]["r"] == 1.0  # in the big bucket the same detection is its TP (unmatched big ones: FP)
    # thresholds above IoU 0.85: the detection is unmatched and its own area (tiny) is outside 'big' -> ignored
    correct, keep = match_predictions_in_range(det, lab, IOUV, (1024, math.inf))
    np.testing.assert_array_equal(correct[0], IOUV <= iou)
    np.testing.assert_array_equal(keep[0], IOUV <= iou)
    assert not keep[1].any()  # tiny detection of a tiny GT: that GT is ignored in 'big'


def test_prefers_in_bucket_gt():
    # a detection overlaps an ignored GT better than an in-bucket GT: pycocotools takes the in-bucket one
    lab = np.array([[0, 0, 0, 40, 40], [0, 0, 0, 30, 30]], float)  # areas 1600 (big), 900 (tiny)
    det = np.array([[0, 0, 36, 36, 0.9, 0]], float)  # IoU 0.81 with the big one, 0.69 with the tiny one
    correct, keep = match_predictions_in_range(det, lab, IOUV, (0, 1024))
    np.testing.assert_array_equal(correct[0], IOUV <= 900 / 1296)


def test_format_size_table():
    res = run([(as_dets(lab), lab) for lab in scene()], size_buckets("coco"))
    table = format_size_table(res)
    lines = table.splitlines()
    assert len(lines) == 4 and "mAP50-95" in lines[0]
    assert lines[1].split()[0] == "small" and "0.995" in lines[1] and lines[3].rstrip().endswith("-")


def test_empty_inputs():
    stats = SizeBucketStats()
    stats.update(np.zeros((0, 6)), np.zeros((0, 5)))
    stats.update(torch.zeros((3, 6)), np.array([[0, *box(0, 0, 10)]]))
    res = stats.compute(0.3)
    assert res["tiny"]["n_gt"] == 1 and res["tiny"]["r"] == 0.0 and res["big"]["n_gt"] == 0


def random_scene(rng, n_img=30, nc=3):
    images = []
    for _ in range(n_img):
        m = int(rng.integers(0, 12))
        xy = rng.integers(0, 4000, (m, 2)) / 8
        wh = np.exp(rng.uniform(np.log(3), np.log(150), (m, 2))).round(1)
        lab = np.concatenate([rng.integers(0, nc, (m, 1)), xy, xy + wh], 1)
        k = int(rng.integers(0, 2 * m + 1))
        src = rng.integers(0, max(m, 1), k)
        jit = lab[src, 1:] + rng.normal(0, 1, (k, 4)) * np.tile(wh[src], 2) * rng.uniform(0.01, 0.2, (k, 1)) \
            if m else np.zeros((0, 4))
        jit = (jit * 8).round() / 8
        jit[:, 2:] = np.maximum(jit[:, 2:], jit[:, :2] + 1)
        cls = np.where(rng.random(k) < 0.9, lab[src, 0] if m else 0, rng.integers(0, nc, k))
        conf = rng.choice(100_000, k, replace=False) / 100_000
        images.append((np.concatenate([jit, conf[:, None], cls[:, None]], 1), lab))
    return images


@pytest.mark.parametrize("rng_seed", [0, 1])
def test_matching_equals_pycocotools(rng_seed):
    """Our per-bucket correct/ignored flags equal pycocotools' dtMatches/dtIgnore for the same area range."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = random_scene(np.random.default_rng(rng_seed))
    anns, res = [], []
    for i, (det, lab) in enumerate(images):
        for c, x1, y1, x2, y2 in lab.tolist():
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for x1, y1, x2, y2, s, c in det.tolist():
            res.append({"image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in range(len(images))], "annotations": anns,
                  "categories": [{"id": c} for c in range(3)]}
    n_checked = 0
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(res)
    for lo, hi in [(0, 1024), (1024, 1e10), (64, 400)]:
        ev = COCOeval(gt, dt, "bbox")
        ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [[lo, hi]], ["r"], [1000]
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
        ref_correct, ref_keep = {}, {}  # detection id -> (T,) flags
        for e in ev.evalImgs:
            if e is None:
                continue
            for k, did in enumerate(e["dtIds"]):
                ref_keep[did] = ~e["dtIgnore"][:, k].astype(bool)
                ref_correct[did] = (e["dtMatches"][:, k] > 0) & ref_keep[did]
        did = 1
        for det, lab in images:
            correct, keep = match_predictions_in_range(det, lab, IOUV, (lo, hi))
            for j in range(len(det)):
                np.testing.assert_array_equal(keep[j], ref_keep[did])
                np.testing.assert_array_equal(correct[j], ref_correct[did])
                n_checked += int(correct[j].any())
                did += 1
    assert n_checked > 50
