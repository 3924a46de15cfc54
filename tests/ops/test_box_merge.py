"""NWD/IoS similarity, NWD-NMS and SAHI's tile merges (utils/ops/box_merge.py), through NMS, slicing, val and the
hub."""

import math

import numpy as np
import pytest
import torch
import torchvision

from tests.oracle import load_package
from utils.infer.slicing import merge_detections, merge_tiles
from utils.ops.box_merge import greedy_nms, merge_boxes, merge_groups, pairwise
from utils.ops.nms import non_max_suppression

# two 6-px boxes sharing one pixel column (centres 5 px apart), the example
A, B = [0.0, 0.0, 6.0, 6.0], [5.0, 0.0, 11.0, 6.0]


def raw(boxes_xyxy, scores, cls=None, nc=1):
    """(1, n, 5 + nc) raw model output (xywh, obj = score, one-hot class) for non_max_suppression."""
    b = torch.tensor(boxes_xyxy)
    out = torch.zeros((1, len(b), 5 + nc))
    out[0, :, :2] = (b[:, :2] + b[:, 2:]) / 2
    out[0, :, 2:4] = b[:, 2:] - b[:, :2]
    out[0, :, 4] = torch.tensor(scores)
    out[0, torch.arange(len(b)), 5 + torch.tensor(cls or [0] * len(b))] = 1.0
    return out


def test_similarities_by_hand():
    a, b = torch.tensor([A]), torch.tensor([B])
    assert pairwise(a, b, "iou").item() == pytest.approx(6 / 66)
    assert pairwise(a, b, "ios").item() == pytest.approx(6 / 36)
    assert pairwise(a, b, "nwd").item() == pytest.approx(math.exp(-5 / 12.8))
    # NWD's W2: centre distance (3, 4) and half-side differences (1, 1): sqrt(9 + 16 + 1 + 1)
    c, d = torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[2.0, 3, 8, 9]])
    assert pairwise(c, d, "nwd", nwd_c=2.0).item() == pytest.approx(math.exp(-math.sqrt(27) / 2))
    assert pairwise(c, c, "nwd").item() == 1.0
    with pytest.raises(ValueError, match="match metric: unknown value 'giou'"):
        pairwise(c, d, "giou")


def test_two_6px_boxes_one_pixel_overlap_suppressed_under_nwd_kept_under_iou():
    pred = raw([A, B], [0.9, 0.8])
    assert len(non_max_suppression(pred, 0.25, 0.6)[0]) == 2  # IoU 0.09 < 0.6
    out = non_max_suppression(pred, 0.25, 0.6, method="nwd")[0]  # NWD 0.68 > 0.6
    assert len(out) == 1 and out[0, 4] == pytest.approx(0.9)
    assert len(non_max_suppression(pred, 0.25, 0.7, method="nwd")[0]) == 2  # 0.68 < 0.7
    assert len(non_max_suppression(raw([A, B], [0.9, 0.8], [0, 1], nc=2), 0.25, 0.6, method="nwd")[0]) == 2
    assert len(non_max_suppression(raw([A, B], [0.9, 0.8], [0, 1], nc=2), 0.25, 0.6, method="nwd",
                                   agnostic=True)[0]) == 1
    with pytest.raises(ValueError, match="nms: unknown value 'diou'"):
        non_max_suppression(pred, 0.25, 0.6, method="diou")


def test_greedy_nms_on_iou_equals_torchvision_across_blocks_and_max_keep():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand((700, 2), generator=g) * 200
    boxes = torch.cat((xy, xy + 4 + torch.rand((700, 2), generator=g) * 30), 1)
    scores = torch.rand(700, generator=g)
    ref = torchvision.ops.nms(boxes, scores, 0.5)
    assert torch.equal(greedy_nms(boxes, scores, 0.5, "iou", block=64), ref)
    assert torch.equal(greedy_nms(boxes, scores, 0.5, "iou", max_keep=40, block=16), ref[:40])
    cls = torch.randint(0, 3, (700,), generator=g)
    assert torch.equal(greedy_nms(boxes, scores, 0.5, "iou", classes=cls, block=100),
                       torchvision.ops.batched_nms(boxes, scores, cls, 0.5))


def test_greedy_nmm_and_nmm_by_hand():
    # a chain: 0 overlaps 1 (IoU 0.6), 1 overlaps 2 (IoU 0.6), 0 and 2 less (IoU 1/3)
    d = torch.tensor([[0.0, 0, 10, 10, 0.9, 0], [2.5, 0, 12.5, 10, 0.8, 0], [5.0, 0, 15, 10, 0.7, 0],
                      [50, 50, 60, 60, 0.6, 0]], dtype=torch.float64)
    assert merge_groups(d, 0.5, "iou", greedy=True) == {0: [1], 2: [], 3: []}
    assert merge_groups(d, 0.5, "iou", greedy=False) == {0: [1, 2], 3: []}  # 2 joins through 1
    out = merge_boxes(d, merge_groups(d, 0.5, "iou", greedy=True), 0.5)
    assert out.tolist() == [[0, 0, 12.5, 10, 0.9, 0], [5, 0, 15, 10, 0.7, 0], [50, 50, 60, 60, 0.6, 0]]
    # transitive group: 2 no longer matches the grown box [0, 12.5] (IoU 7.5/15 = 0.5 >= 0.5: merged)
    out = merge_boxes(d, merge_groups(d, 0.5, "iou", greedy=False), 0.5)
    assert out.tolist() == [[0, 0, 15, 10, 0.9, 0], [50, 50, 60, 60, 0.6, 0]]
    # ... at 0.55 it does not, and SAHI then drops it
    assert merge_boxes(d, {0: [1, 2], 3: []}, 0.55).tolist() == [[0, 0, 12.5, 10, 0.9, 0], [50, 50, 60, 60, 0.6, 0]]


def test_merge_tiles_default_is_the_old_merge_and_choices_work():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand((60, 2), generator=g) * 100
    d = torch.cat((xy, xy + 5 + torch.rand((60, 2), generator=g) * 20, torch.rand((60, 1), generator=g),
                   torch.randint(0, 2, (60, 1), generator=g).float()), 1)
    cut = torch.rand(60, generator=g) < 0.3
    assert torch.equal(merge_tiles(d, cut, 0.45), d[merge_detections(d, cut, 0.45)])
    for merge in ("nms", "nmm", "greedy-nmm"):
        for match in ("iou", "ios", "nwd"):
            out = merge_tiles(d, cut, 0.45, merge=merge, match=match, match_thres=0.5)
            assert 0 < len(out) <= 60 and (out[:-1, 4] >= out[1:, 4]).all()
    with pytest.raises(ValueError, match="slice merge: unknown value 'wbf'"):
        merge_tiles(d, cut, merge="wbf")


def fixture_dets(seed: int, n: int = 80, nc: int = 2) -> np.ndarray:
    """Clustered boxes (duplicates from overlapping tiles) with distinct scores and no coordinate ties."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 300, (n // 4, 2))
    rows = []
    for c in centres:
        for _ in range(4):
            wh = rng.uniform(4, 30, 2)
            xy = c + rng.normal(0, 4, 2)
            rows.append([*(xy - wh / 2), *(xy + wh / 2)])
    b = np.array(rows).clip(0)
    scores = rng.permutation(np.linspace(0.05, 0.95, len(b)))
    return np.c_[b, scores, rng.integers(0, nc, len(b))]


@pytest.mark.parametrize("metric", ["IOU", "IOS"])
@pytest.mark.parametrize("agnostic", [True, False])
def test_merges_equal_sahis(metric, agnostic):
    combine = load_package("sahi.postprocess.combine")
    backends = load_package("sahi.postprocess.backends")
    backends.set_postprocess_backend("numpy")
    from sahi.prediction import ObjectPrediction

    for seed in range(3):
        d = fixture_dets(seed)
        t = torch.from_numpy(d)
        ours_metric = metric.lower()
        # NMS: SAHI suppresses at >= the threshold, torchvision-style NMS above it; no ties in these fixtures
        keep = (combine.nms if agnostic else combine.batched_nms)(d.astype(np.float32), metric, 0.5)
        ours = greedy_nms(t[:, :4], t[:, 4], 0.5, ours_metric, None if agnostic else t[:, 5])
        assert sorted(ours.tolist()) == sorted(keep)
        for cls, greedy in ((combine.GreedyNMMPostprocess, True), (combine.NMMPostprocess, False)):
            preds = [ObjectPrediction(bbox=r[:4].tolist(), score=float(r[4]), category_id=int(r[5]),
                                      category_name=str(int(r[5]))) for r in d]
            theirs = cls(match_threshold=0.5, match_metric=metric, class_agnostic=agnostic)(preds)
            theirs = np.array(sorted([[*p.bbox.to_xyxy(), p.score.value, p.category.id] for p in theirs],
                                     key=lambda r: -r[4]))
            groups = merge_groups(t, 0.5, ours_metric, greedy=greedy, agnostic=agnostic)
            mine = merge_boxes(t, groups, 0.5, ours_metric).numpy()
            assert mine.shape == theirs.shape
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kw", [dict(nms="nwd"), dict(merge="greedy-nmm", match="ios", match_thres=0.5),
                                dict(merge="nmm", match="iou"), dict(merge="nms", match="nwd", match_thres=0.7)])
def test_sliced_detect_with_each_choice_finds_each_tiny_object_once(kw):
    from tests.infer.test_slicing import TINY, SquareFinder, draw, match_each_once
    from utils.infer.slicing import sliced_detect

    image = draw(np.zeros((2000, 2000, 3), np.uint8), TINY)
    match_each_once(sliced_detect(image, SquareFinder(min_px=5), 640, 640, **kw), TINY, min_iou=0.99)


def test_command_lines_and_the_hub_take_the_choices():
    import detect
    import val
    from utils.infer.hub import SETTINGS, AutoShape

    argv = ["--weights", "w.pt", "--nms", "nwd", "--nwd-c", "8", "--slice-merge", "greedy-nmm", "--slice-match",
            "ios", "--slice-match-thres", "0.5"]
    d = vars(detect.get_args_parser().parse_args([*argv, "--source", "x.jpg"]))
    v = val.run_kwargs(val.get_args_parser().parse_args(argv))
    for kw in (d, v):
        assert (kw["nms"], kw["nwd_c"], kw["slice_merge"], kw["slice_match"], kw["slice_match_thres"]) == (
            "nwd", 8.0, "greedy-nmm", "ios", 0.5)
    assert {"nms", "nwd_c", "slice_merge", "slice_match", "slice_match_thres"} <= set(SETTINGS)
    assert (AutoShape.nms, AutoShape.slice_merge, AutoShape.slice_match) == ("iou", "nms", None)  # YOLOv5's
