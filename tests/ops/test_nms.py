"""non_max_suppression: known cases and parity with YOLOv5 v7.0."""

import pytest
import torch

from utils.ops.nms import non_max_suppression


def pred_from(rows, nc=2):
    """rows: (x, y, w, h, obj, cls_id, cls_prob) -> (1, n, 5 + nc)."""
    out = torch.zeros(1, len(rows), 5 + nc)
    for i, (x, y, w, h, obj, c, p) in enumerate(rows):
        out[0, i, :5] = torch.tensor([x, y, w, h, obj])
        out[0, i, 5 + c] = p
    return out


def test_overlapping_same_class_suppressed_other_class_kept():
    pred = pred_from([(50, 50, 20, 20, 0.9, 0, 1.0), (52, 50, 20, 20, 0.8, 0, 1.0), (51, 50, 20, 20, 0.7, 1, 1.0)])
    out = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)[0]
    assert out.shape == (2, 6)
    torch.testing.assert_close(out[0], torch.tensor([40.0, 40.0, 60.0, 60.0, 0.9, 0.0]))
    assert out[1, 5].item() == 1.0 and out[1, 4].item() == pytest.approx(0.7)
    agnostic = non_max_suppression(pred, agnostic=True)[0]
    assert agnostic.shape == (1, 6)


def test_conf_threshold_uses_obj_times_cls_and_max_det():
    pred = pred_from([(50, 50, 20, 20, 0.5, 0, 0.4), (150, 50, 20, 20, 0.9, 1, 0.9)])
    out = non_max_suppression(pred, conf_thres=0.25)[0]
    assert out.shape == (1, 6) and out[0, 4].item() == pytest.approx(0.81)
    many = pred_from([(10 + 30 * i, 10, 20, 20, 0.9, 0, 1.0) for i in range(10)])
    assert non_max_suppression(many, max_det=4)[0].shape[0] == 4
    assert non_max_suppression(many, classes=[1])[0].shape[0] == 0


def test_bad_thresholds():
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(torch.zeros(1, 1, 7), conf_thres=2)


def test_time_limit_off_by_default_and_warns(caplog):
    pred = torch.rand(4, 200, 8)
    pred[..., 2:4] *= 50
    assert all(o.shape[0] for o in non_max_suppression(pred, conf_thres=0.01))
    out = non_max_suppression(pred, conf_thres=0.01, time_limit=0.0)
    assert "time limit" in caplog.text and sum(o.shape[0] > 0 for o in out) == 1


@pytest.mark.oracle
@pytest.mark.parametrize("multi_label,agnostic,classes", [(False, False, None), (True, False, None),
                                                          (False, True, None), (True, False, [0, 2])])
def test_parity_with_reference(oracle, multi_label, agnostic, classes):
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(2, 600, 5 + 4, generator=g)
    pred[..., :2] *= 160
    pred[..., 2:4] = pred[..., 2:4] * 40 + 2
    kw = dict(conf_thres=0.1, iou_thres=0.5, classes=classes, agnostic=agnostic, multi_label=multi_label, max_det=100)
    ours = non_max_suppression(pred.clone(), **kw)
    ref = oracle.general.non_max_suppression(pred.clone(), **kw)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.shape[0] > 0
        torch.testing.assert_close(a, b)
