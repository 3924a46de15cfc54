"""val.py with ignore areas: a detection centred in an ignore area is neither TP nor FP, one outside it is a FP
(VisDrone/TinyPerson protocol); without the ignore file the numbers are the unfiltered ones."""

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import val

GT = (15.0, 15.0, 10.0, 10.0)  # xywh original px of the only ground truth (64 x 64 image)
AREA_PX = (40.0, 40.0, 60.0, 60.0)  # the ignore area, xyxy original px
DETS = (  # xywh original px, all at the same confidence so P and R read the totals
    GT,  # true positive
    (50.0, 50.0, 10.0, 10.0),  # centre in the ignore area: dropped
    (35.0, 50.0, 14.0, 10.0),  # overlaps the area (x 28..42) but its centre (35, 50) is outside: a false positive
)
CONF = 0.8


class FixedModel(nn.Module):
    """Eval-mode stand-in for DetectionModel: returns ``DETS`` (nc = 1) in input pixels of a square letterbox."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))  # val.py reads the device from the parameters
        self.stride = torch.tensor([32.0])

    def forward(self, im: torch.Tensor):
        bs, _, h, w = im.shape
        off = torch.tensor([(w - 64) / 2, (h - 64) / 2, 0, 0])  # val's rect batches pad the 64 px image
        xywh = torch.tensor(DETS) + off
        rows = torch.cat((xywh, torch.full((len(DETS), 1), CONF), torch.ones(len(DETS), 1)), 1)  # obj, cls 0
        return rows.expand(bs, -1, -1).clone(), None


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    im = np.full((64, 64, 3), 50, np.uint8)
    cv2.imwrite(str(tmp_path / "images" / "a.png"), im)
    x, y, w, h = GT
    (tmp_path / "labels" / "a.txt").write_text(f"0 {x / 64} {y / 64} {w / 64} {h / 64}\n")
    ign = tmp_path / "labels" / "a.ignore.txt"
    ign.write_text(" ".join(f"{v / 64}" for v in AREA_PX) + "\n")
    return tmp_path, ign


def _run(root, tmp_path):
    data = {"nc": 1, "names": {0: "obj"}, "val": str(root / "images")}
    return val.run(data, model=FixedModel(), imgsz=64, batch_size=1, workers=0, plots=False, save_dir=tmp_path)


def test_detection_in_ignore_area_is_not_a_false_positive(dataset, tmp_path):
    root, ign = dataset
    res = _run(root, tmp_path)
    # kept: the TP and the FP outside (the one centred in the area is gone): P = 1 / 2, R = 1 / 1
    assert res["metrics/precision"] == pytest.approx(0.5) and res["metrics/recall"] == pytest.approx(1.0)
    tiny = res["size_buckets"]["tiny"]  # all boxes are 100-140 px² < 1024: the size buckets see the same set
    assert tiny["p"] == pytest.approx(0.5) and tiny["r"] == pytest.approx(1.0) and tiny["n_gt"] == 1
    ign.unlink()  # no ignore file: all three detections count, P = 1 / 3 (and the label cache notices)
    res = _run(root, tmp_path)
    assert res["metrics/precision"] == pytest.approx(1 / 3) and res["metrics/recall"] == pytest.approx(1.0)
    assert res["size_buckets"]["tiny"]["p"] == pytest.approx(1 / 3)


def test_area_covering_the_true_positive_drops_it_too(dataset, tmp_path):
    """Centres only: an area over the ground truth removes its detection (the converters never put targets in
    areas; this pins the rule). Left: the FP outside -> P = 0, R = 0."""
    root, ign = dataset
    ign.write_text(f"{10 / 64} {10 / 64} {20 / 64} {20 / 64}\n")
    res = _run(root, tmp_path)
    assert res["metrics/recall"] == 0.0 and res["metrics/precision"] == 0.0


def test_drop_ignored_units_and_borders():
    """predn in original px of a 100 (h) x 200 (w) image; the area is normalised (x 0.5..1, y 0..0.5)."""
    predn = torch.tensor([[90.0, 10, 110, 30, 0.9, 0],  # centre (100, 20): on the area's left border -> dropped
                          [80.0, 10, 98, 30, 0.8, 0],  # centre (89, 20): left of x1 = 100 -> kept
                          [150.0, 40, 170, 62, 0.7, 1]])  # centre (160, 51): below y2 = 50 -> kept
    out = val.drop_ignored(predn, np.array([[0.5, 0.0, 1.0, 0.5]], np.float32), (100, 200))
    assert out.tolist() == predn[1:].tolist()
    assert val.drop_ignored(predn, None, (100, 200)) is predn  # no areas: untouched
    assert val.drop_ignored(predn[:0], np.array([[0, 0, 1, 1]], np.float32), (100, 200)).shape == (0, 6)
