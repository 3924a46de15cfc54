"""val.py --task study: one validation per inference size, study.csv equal to separate val.run calls, study.png,
and the command line. A stub backend that finds the objects 5 input px off makes the sizes differ in a
hand-computable way."""

from __future__ import annotations

import csv
import logging
import math

import cv2
import numpy as np
import pytest
import torch
import yaml

import val
from utils.infer.detector import MAX_IMGSZ

# cls, x, y, w, h in original px of a 64 x 64 image; both are 'tiny' (area < 1024 px²)
OBJECTS = ((1, 20.0, 20.0, 12.0, 12.0), (2, 44.0, 40.0, 10.0, 14.0))
SHIFT = 5.0  # input px the stub's boxes are off to the right


class ShiftedBackend:
    """Finds ``OBJECTS`` with the right class but SHIFT input px to the right. val's rect loader puts the 64 px square
    image, resized to imgsz, in a (imgsz + 32) px square input (16 px of padding each side, imgsz a multiple of 32),
    so the error is SHIFT * 64 / imgsz original px: at imgsz 64, 5 px: IoU 84/204 = 0.41 and 70/210 = 0.33 (both
    missed at IoU 0.5); at imgsz 128, 2.5 px: IoU 114/174 = 0.66 and 105/175 = 0.60 (both found)."""

    device, stride, nc, names, hyp, train_imgsz = torch.device("cpu"), torch.tensor([8.0, 16.0, 32.0]), 4, {}, None, 64

    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        bs, _, h, w = im.shape
        r = (w - 32) / 64  # resize factor original -> input px
        xywh = torch.tensor([o[1:] for o in OBJECTS]) * r + torch.tensor([16 + SHIFT, 16, 0, 0])
        cls = torch.zeros(len(OBJECTS), 4)
        cls[torch.arange(len(OBJECTS)), torch.tensor([int(o[0]) for o in OBJECTS])] = 1
        rows = torch.cat((xywh, torch.full((len(OBJECTS), 1), 0.9), cls), 1)
        return rows.expand(bs, -1, -1).clone()


@pytest.fixture
def data(tmp_path, monkeypatch):
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(ds / "images" / f"{name}.png"), np.full((64, 64, 3), 90, np.uint8))
        (ds / "labels" / f"{name}.txt").write_text("".join(f"{c} {x / 64} {y / 64} {w / 64} {h / 64}\n"
                                                           for c, x, y, w, h in OBJECTS))
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"path": str(ds), "train": "images", "val": "images",
                                   "names": dict(enumerate("abcd"))}))
    monkeypatch.setattr(val, "load_backend", lambda *a, **k: ShiftedBackend())
    return cfg


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_study_rows_equal_separate_runs(data, tmp_path):
    kw = dict(weights="stub.pt", batch_size=2, workers=0)
    rows = val.study([64, 128], data=str(data), project=tmp_path, name="study", **kw)
    saved = read_csv(tmp_path / "study" / "study.csv")
    assert [int(r["imgsz"]) for r in saved] == [64, 128] and len(rows) == 2
    assert list(saved[0]) == ["imgsz", "precision", "recall", "map50", "map50_95", "map50_tiny", "map50_big",
                              "ms_per_image"]
    for s, row in zip((64, 128), saved):
        r = val.run(str(data), imgsz=s, plots=False, project=tmp_path, name=f"single{s}", **kw)
        assert float(row["map50"]) == r["metrics/mAP_0.5"] and float(row["map50_95"]) == r["metrics/mAP_0.5:0.95"]
        assert float(row["precision"]) == r["metrics/precision"] and float(row["recall"]) == r["metrics/recall"]
        assert float(row["map50_tiny"]) == r["size_buckets"]["tiny"]["map50"]
        assert math.isnan(float(row["map50_big"])) and float(row["ms_per_image"]) > 0  # no big objects
    # hand-computed (see ShiftedBackend): both objects missed at 64, found at 128 (0.995: YOLOv5's 101-point AP)
    assert [float(r["map50"]) for r in saved] == [0.0, pytest.approx(0.995)]
    assert [float(r["map50_tiny"]) for r in saved] == [0.0, pytest.approx(0.995)]
    assert 0 < float(saved[1]["map50_95"]) < float(saved[1]["map50"])
    assert (tmp_path / "study" / "study.png").stat().st_size > 0
    assert (tmp_path / "study" / "imgsz64" / "metrics.json").is_file()
    assert (tmp_path / "study" / "imgsz128" / "metrics.json").is_file()


def test_study_command_line(data, tmp_path, caplog, capsys):
    args = ["--weights", "stub.pt", "--data", str(data), "--task", "study", "--batch-size", "2", "--workers", "0",
            "--project", str(tmp_path)]
    with caplog.at_level(logging.INFO):
        assert val.main([*args, "--study-sizes", "64", "128"]) == 0
    assert len(read_csv(tmp_path / "exp" / "study.csv")) == 2 and (tmp_path / "exp" / "study.png").is_file()
    assert "    map50_tiny" in caplog.text and f"Results saved to {tmp_path / 'exp'}" in caplog.text  # the table
    capsys.readouterr()
    assert val.main([*args, "--study-sizes", "0", "64", "--name", "bad"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"val.py: error: --study-sizes must be sizes in "
                                                            f"[1, {MAX_IMGSZ}] px, got [0, 64]"]
    assert not (tmp_path / "bad").exists()
    assert val.get_args_parser().parse_args(["--weights", "w"]).study_sizes == list(range(256, 1537, 128))


def test_study_sizes_are_bounded_before_anything_runs(data, tmp_path, capsys):
    """A size OpenCV cannot allocate (99999 px: 30 GB) is refused with one line before the first size runs, so no
    half study is left; val.run itself refuses the same sizes."""
    args = ["--weights", "stub.pt", "--data", str(data), "--task", "study", "--batch-size", "2", "--workers", "0",
            "--project", str(tmp_path), "--name", "big"]
    assert val.main([*args, "--study-sizes", "64", "99999"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"val.py: error: --study-sizes must be sizes in [1, {MAX_IMGSZ}] px, got [64, 99999]"]
    assert not (tmp_path / "big").exists()
    assert val.main(["--weights", "stub.pt", "--data", str(data), "--imgsz", "99999", "--project", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"val.py: error: --imgsz must be in [1, {MAX_IMGSZ}] px, got 99999"
    assert MAX_IMGSZ == 7168 and not list(tmp_path.glob("exp*"))
