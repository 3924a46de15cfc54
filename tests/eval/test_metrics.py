"""Tests for utils/eval/metrics.py: hand-computed AP values and parity with the YOLOv5 v7.0 reference."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.eval.metrics import (
    ConfusionMatrix,
    ap_per_class,
    compute_ap,
    fitness,
    match_predictions,
    mean_results,
    pr_curves,
    smooth,
)

IOUV = torch.linspace(0.5, 0.95, 10)


def random_image(rng: np.random.Generator, n_det: int, n_gt: int, nc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image of labels (M, 5) [cls, xyxy] and jittered detections (N, 6) [xyxy, conf, cls], sorted by conf,
    in pixels of a 640x640 image. Half the detections are perturbed copies of labels (some with a wrong class)."""
    xy = rng.uniform(0, 600, (n_gt, 2))
    wh = rng.uniform(4, 120, (n_gt, 2))
    gt_cls = rng.integers(0, nc, n_gt)
    labels = np.concatenate([gt_cls[:, None], xy, xy + wh], 1)
    k = min(n_det // 2, n_gt)
    src = rng.integers(0, n_gt, k) if n_gt else np.zeros(0, int)
    scale = rng.uniform(0.002, 0.08, (k, 1))  # relative jitter: IoUs spread over all 10 thresholds
    jit = labels[src, 1:] + rng.normal(0, 1, (k, 4)) * np.tile(wh[src], 2) * scale
    cls_j = np.where(rng.random(k) < 0.85, gt_cls[src], rng.integers(0, nc + 2, k))  # nc, nc+1: no labels
    rxy = rng.uniform(0, 600, (n_det - k, 2))
    rnd = np.concatenate([rxy, rxy + rng.uniform(4, 120, (n_det - k, 2))], 1)
    boxes = np.concatenate([jit, rnd], 0)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    cls = np.concatenate([cls_j, rng.integers(0, nc + 2, n_det - k)])
    conf = rng.random(n_det)
    det = np.concatenate([boxes, conf[:, None], cls[:, None]], 1)[np.argsort(-conf)]
    return torch.tensor(det, dtype=torch.float32), torch.tensor(labels, dtype=torch.float32)


def random_dataset(seed: int = 0, n_images: int = 40, nc: int = 6):
    rng = np.random.default_rng(seed)
    return [random_image(rng, int(rng.integers(0, 30)), int(rng.integers(0, 15)), nc) for _ in range(n_images)]


def stats_of(images, matcher):
    stats = [(matcher(d, lab, IOUV).cpu(), d[:, 4], d[:, 5], lab[:, 0]) for d, lab in images]
    return [torch.cat(x, 0).numpy() for x in zip(*stats)]


# --- hand-computed values ------------------------------------------------------------------------------------------


def test_compute_ap_perfect_is_0995():
    # mrec [0, 1, 1], mpre [1, 1, 0]: interp reads 0 at recall exactly 1 -> trapezoid loses 0.5 * 0.01
    ap, mpre, mrec = compute_ap(np.array([1.0]), np.array([1.0]))
    assert ap == pytest.approx(0.995, abs=1e-12)
    np.testing.assert_array_equal(mrec, [0, 1, 1])
    np.testing.assert_array_equal(mpre, [1, 1, 0])


def test_compute_ap_half_recall():
    # one TP of two labels: mrec [0, 0.5, 1], envelope mpre [1, 1, 0]: precision 1 up to recall 0.5, then a
    # straight line down to 0 at recall 1 -> area 0.5 + 0.25 (trapezoid exact on a piecewise-linear curve).
    ap, _, _ = compute_ap(np.array([0.5]), np.array([1.0]))
    x = np.linspace(0, 1, 101)
    y = np.where(x <= 0.5, 1.0, 2 * (1 - x))
    assert ap == pytest.approx(np.trapezoid(y, x), abs=1e-12)
    assert ap == pytest.approx(0.75, abs=1e-12)


def test_ap_per_class_perfect_detector():
    tp = np.ones((4, 10), bool)
    tp_, fp, p, r, f1, ap, cls = ap_per_class(tp, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 1]),
                                              np.array([0, 0, 1, 1]))
    np.testing.assert_array_equal(cls, [0, 1])
    np.testing.assert_allclose(ap, 0.995)
    np.testing.assert_allclose(p, 1.0)
    np.testing.assert_allclose(r, 1.0)
    np.testing.assert_array_equal(tp_, [2, 2])
    np.testing.assert_array_equal(fp, [0, 0])


def test_ap_per_class_class_without_detections_scores_zero():
    tp = np.ones((2, 10), bool)
    _, _, p, r, _, ap, cls = ap_per_class(tp, np.array([0.9, 0.8]), np.array([0, 0]), np.array([0, 0, 3]))
    np.testing.assert_array_equal(cls, [0, 3])
    assert ap[1].sum() == 0 and p[1] == 0 and r[1] == 0
    assert mean_results(p, r, ap)[2] == pytest.approx(0.995 / 2)


def test_fitness_and_smooth():
    assert fitness(np.array([0.3, 0.4, 0.5, 0.2])) == pytest.approx(0.1 * 0.5 + 0.9 * 0.2)
    np.testing.assert_allclose(fitness(np.array([[1, 1, 1, 0, 9], [0, 0, 0, 1, 9]])), [0.1, 0.9])
    with pytest.raises(ValueError, match="fitness"):
        fitness(np.zeros(3))
    y = np.arange(100.0)
    s = smooth(y, 0.1)  # width 11: a line is unchanged away from the ends, the ends are pulled by padding
    np.testing.assert_allclose(s[5:-5], y[5:-5])
    assert s[0] == pytest.approx(sum(range(6)) / 11) and len(s) == len(y)


def test_match_predictions_hand_case():
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], dtype=torch.float32)
    det = torch.tensor([[0, 0, 10, 10, 0.9, 0],  # exact match of label 0
                        [0, 0, 10, 9, 0.8, 0],  # IoU 0.9 with label 0, already taken
                        [20, 20, 30, 25, 0.7, 1],  # IoU 0.5 with label 1
                        [20, 20, 30, 30, 0.6, 0]])  # exact box of label 1 but wrong class
    c = match_predictions(det, labels, IOUV)
    assert c[0].all() and not c[1].any() and not c[3].any()
    assert c[2, 0] and not c[2, 1:].any()
    assert match_predictions(det[:0], labels, IOUV).shape == (0, 10)
    assert not match_predictions(det, labels[:0], IOUV).any()


def test_confusion_matrix_hand_case():
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 50, 50, 60, 60]], dtype=torch.float32)
    det = torch.tensor([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 0], [80, 80, 90, 90, 0.7, 1],
                        [50, 50, 60, 60, 0.1, 1]], dtype=torch.float32)  # last: below conf
    cm.process_batch(det, labels)
    expected = np.array([[1, 1, 0], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    tp, fp = cm.tp_fp()
    np.testing.assert_array_equal(tp, [1, 0])
    np.testing.assert_array_equal(fp, [1, 1])
    # an image where nothing matches still counts its detections as background FPs (v7.0 skipped them)
    cm.process_batch(det[2:3], labels[:1])
    assert cm.matrix[1, 2] == 2 and cm.matrix[2, 0] == 1


def test_confusion_matrix_rejects_classes_outside_nc():
    images = random_dataset(1, n_images=5, nc=3)  # detections of classes nc and nc + 1
    cm = ConfusionMatrix(5)
    for d, lab in images:
        cm.process_batch(d, lab)
    assert cm.matrix.sum() > 0
    with pytest.raises(ValueError, match="outside"):
        ConfusionMatrix(2).process_batch(images[0][0], images[0][1])


def test_metrics_module_draws_nothing():
    """Numbers only: drawing lives in utils/plots.py (which imports this module, never the reverse)."""
    import utils.eval.metrics

    assert not hasattr(ConfusionMatrix, "plot") and not hasattr(utils.eval.metrics.PRCurves, "plot")
    tree = ast.parse(Path(utils.eval.metrics.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {"torch", "utils.ops.boxes"} <= imported  # the walk sees the module's imports
    assert not {m for m in imported if m.startswith(("matplotlib", "utils.plots", "cv2"))}


# --- oracle parity -------------------------------------------------------------------------------------------------


@pytest.mark.oracle
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_predictions_matches_reference(oracle, seed):
    ref_val = importlib.import_module("yolov5.val")
    for d, lab in random_dataset(seed):
        ours = match_predictions(d, lab, IOUV)
        ref = ref_val.process_batch(d, lab, IOUV) if len(d) and len(lab) else torch.zeros_like(ours)
        assert torch.equal(ours, ref)


@pytest.mark.oracle
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_per_class_matches_reference(oracle, seed):
    tp, conf, pcls, tcls = stats_of(random_dataset(seed), match_predictions)
    assert set(np.unique(pcls)) - set(np.unique(tcls)), "fixture must hold detections of classes without labels"
    names = {i: str(i) for i in range(10)}
    ref = oracle.metrics.ap_per_class(tp, conf, pcls, tcls, names=names)
    ours = ap_per_class(tp, conf, pcls, tcls)
    for name, a, b in zip(["tp", "fp", "p", "r", "f1", "ap", "classes"], ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=name)
    assert ours[5][:, 0].min() < 0.9 and ours[5][:, 0].max() > 0  # a non-trivial fixture


@pytest.mark.oracle
def test_ap_per_class_class_without_detections_matches_reference(oracle):
    tp, conf, pcls, tcls = stats_of(random_dataset(3), match_predictions)
    tcls = np.concatenate([tcls, [7.0, 7.0]])  # class 7 has labels but no detections
    ref = oracle.metrics.ap_per_class(tp, conf, pcls, tcls, names={i: str(i) for i in range(10)})
    ours = ap_per_class(tp, conf, pcls, tcls)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


@pytest.mark.oracle
def test_compute_ap_matches_reference(oracle):
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 50))
        tp = rng.random(n) < 0.6
        recall = np.cumsum(tp) / (tp.sum() + rng.integers(0, 5) + 1e-16)
        precision = np.cumsum(tp) / np.arange(1, n + 1)
        ours, ref = compute_ap(recall, precision), oracle.metrics.compute_ap(recall, precision)
        assert ours[0] == pytest.approx(ref[0], abs=1e-12)
        np.testing.assert_allclose(ours[1], ref[1])
        np.testing.assert_allclose(ours[2], ref[2])


@pytest.mark.oracle
def test_confusion_matrix_matches_reference(oracle):
    images = random_dataset(4, n_images=60)
    ours, ref = ConfusionMatrix(8), oracle.metrics.ConfusionMatrix(8)
    compared = 0
    for d, lab in images:
        if len(lab) == 0:
            continue
        iou = oracle.metrics.box_iou(lab[:, 1:], d[d[:, 4] > 0.25][:, :4])
        if not (iou > 0.45).any():
            continue  # v7.0 does not count FPs in images without any match (we do): compare the rest
        ours.process_batch(d, lab)
        ref.process_batch(d, lab)
        compared += 1
    ours.process_batch(None, images[0][1][:, 0])
    ref.process_batch(None, images[0][1][:, 0])
    assert compared > 10
    np.testing.assert_array_equal(ours.matrix, ref.matrix)
    np.testing.assert_array_equal(np.stack(ours.tp_fp()), np.stack(ref.tp_fp()))


def test_pr_curves_operating_point_consistent():
    tp, conf, pcls, tcls = stats_of(random_dataset(5), match_predictions)
    curves = pr_curves(tp, conf, pcls, tcls)
    i = curves.best_index
    assert curves.px[i] == curves.best_conf
    np.testing.assert_allclose(curves.summary()[2], curves.p[:, i])


# --- hostile inputs: a label file with very many boxes ---------------------------------------------------------
def _all_matchers(images) -> list[np.ndarray]:
    """Every matcher's output on ``images``: match_predictions, the confusion matrix, each size bucket's per-image
    (correct, keep) and the bucket table."""
    from utils.eval.size_metrics import SizeBucketStats, match_predictions_in_range, size_buckets

    out, cm, sizes = [], ConfusionMatrix(nc=8), SizeBucketStats(size_buckets("coco"), IOUV.tolist())
    for d, lab in images:
        out.append(match_predictions(d, lab, IOUV).numpy())
        cm.process_batch(d, lab)
        sizes.update(d, lab)
        out += list(match_predictions_in_range(d, lab, IOUV, (0.0, 32.0**2)))
    out.append(cm.matrix)
    out += [np.array(list(r.values()), float) for r in sizes.compute(0.3).values()]
    return out


def test_many_labels_are_matched_in_bounded_blocks_with_identical_results(monkeypatch):
    """10^4-10^6 boxes in one label file: no matcher asks for the whole (M, N) IoU matrix (at most
    IOU_BLOCK_PAIRS values per box_iou call), and every result equals the one-block (dense) computation."""
    import torchvision

    import utils.ops.boxes

    rng = np.random.default_rng(3)
    det, lab = random_image(rng, 40, 30, nc=3)
    xy = rng.uniform(0, 600, (30_000, 2))  # many more labels, some near copies of the first ones (contested)
    extra = np.concatenate([rng.integers(0, 3, (30_000, 1)), xy, xy + rng.uniform(2, 40, (30_000, 2))], 1)
    extra[:200, 1:] = lab[rng.integers(0, 30, 200), 1:].numpy() + rng.normal(0, 0.5, (200, 4))
    big = [(det, torch.cat([lab, torch.tensor(extra, dtype=torch.float32)]))]
    sizes, box_iou = [], torchvision.ops.box_iou

    def recording_box_iou(a, b):
        sizes.append(len(a) * len(b))
        return box_iou(a, b)

    monkeypatch.setattr(torchvision.ops, "box_iou", recording_box_iou)
    blocked = _all_matchers(big)
    assert max(sizes) <= utils.ops.boxes.IOU_BLOCK_PAIRS < len(det) * len(big[0][1])
    monkeypatch.setattr(utils.ops.boxes, "IOU_BLOCK_PAIRS", 10**12)  # one block: the dense matrix
    dense = _all_matchers(big)
    assert max(sizes) == len(det) * len(big[0][1])
    assert len(blocked) == len(dense) and all(np.array_equal(a, b, equal_nan=True) for a, b in zip(blocked, dense))
    # ordinary images cut into blocks of a few detections: still identical
    images = random_dataset(7, n_images=12)
    monkeypatch.setattr(utils.ops.boxes, "IOU_BLOCK_PAIRS", 10**12)
    dense = _all_matchers(images)
    monkeypatch.setattr(utils.ops.boxes, "IOU_BLOCK_PAIRS", 20)
    small = _all_matchers(images)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(small, dense))
