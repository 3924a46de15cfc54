"""Tests for utils/train/loggers.py: results.csv contents equal what was logged (exact floats), TensorBoard event files
read back with tensorboard's EventAccumulator, resume, images, and the no-tensorboard path."""

from __future__ import annotations

import csv
import logging
import sys

import numpy as np
import pytest
import torch

from utils.train.loggers import RunLogger, read_results_csv

EPOCHS = [
    {"train/box_loss": 0.1234567890123, "train/obj_loss": 0.05, "metrics/mAP_0.5": 0.0,
     "metrics/tiny/recall": 0.125, "metrics/big/recall": 0.5, "x/lr0": 0.01},
    {"train/box_loss": 0.09876, "train/obj_loss": np.float32(0.04), "metrics/mAP_0.5": 0.25,
     "metrics/tiny/recall": 0.2, "metrics/big/recall": 0.6, "x/lr0": torch.tensor(0.0095)},
    {"train/box_loss": 0.08, "train/obj_loss": 0.03, "metrics/mAP_0.5": 1 / 3,
     "metrics/tiny/recall": float("nan"), "metrics/big/recall": 0.7, "x/lr0": 9},
]


def _events(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def _as_float(v):
    return float(v.item() if hasattr(v, "item") else v)


def test_csv_and_tensorboard_round_trip(tmp_path):
    with RunLogger(tmp_path / "exp", names=["car", "person"]) as lg:
        assert lg.tb is not None and lg.names == {0: "car", 1: "person"}
        for ep, m in enumerate(EPOCHS):
            lg.log_epoch(ep, m)
        assert lg.last("metrics/big/recall") == 0.7 and np.isnan(lg.last("nope"))
    # results.csv: header, then exactly the logged floats (read with the csv module, independent of our reader)
    with open(tmp_path / "exp" / "results.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["epoch", *EPOCHS[0].keys()]
    assert [int(r[0]) for r in table[1:]] == [0, 1, 2]
    for r, m in zip(table[1:], EPOCHS):
        for k, cell in zip(table[0][1:], r[1:]):
            want = _as_float(m[k])
            assert float(cell) == want or (np.isnan(want) and np.isnan(float(cell))), (k, cell, want)
    keys, rows = read_results_csv(tmp_path / "exp" / "results.csv")
    assert keys == list(EPOCHS[0]) and rows[1]["train/obj_loss"] == float(np.float32(0.04))
    assert not [p for p in (tmp_path / "exp").iterdir() if p.name.endswith(".tmp")]
    # TensorBoard: every scalar at step = epoch, values as float32
    ea = _events(tmp_path / "exp")
    assert set(EPOCHS[0]) <= set(ea.Tags()["scalars"])
    for k in EPOCHS[0]:
        ev = ea.Scalars(k)
        assert [e.step for e in ev] == [0, 1, 2]
        got, want = np.array([e.value for e in ev]), np.array([_as_float(m[k]) for m in EPOCHS], np.float32)
        np.testing.assert_array_equal(got, want)  # nan == nan here
    assert ea.Scalars("metrics/tiny/recall")[1].value == np.float32(0.2)


def test_new_keys_resume_and_relog(tmp_path):
    lg = RunLogger(tmp_path, tensorboard=False)
    assert lg.tb is None
    lg.log_epoch(0, {"a": 1.0})
    lg.log_epoch(1, {"a": 2.0, "metrics/tiny/mAP_0.5": 0.5})  # a new column: epoch 0 gets an empty cell
    lg.close()
    text = (tmp_path / "results.csv").read_text()
    assert text == "epoch,a,metrics/tiny/mAP_0.5\n0,1.0,\n1,2.0,0.5\n"
    assert not list(tmp_path.glob("events.out.tfevents*"))
    lg = RunLogger(tmp_path, tensorboard=False)  # resumed run: rows read back, then extended / replaced
    assert lg.keys == ["a", "metrics/tiny/mAP_0.5"]
    lg.log_epoch(2, {"a": 3.0, "metrics/tiny/mAP_0.5": 0.75})
    lg.log_epoch(1, {"a": 2.5})
    assert (tmp_path / "results.csv").read_text() == "epoch,a,metrics/tiny/mAP_0.5\n0,1.0,\n1,2.5,\n2,3.0,0.75\n"


def test_lr_images_and_text(tmp_path):
    import cv2

    img = np.zeros((32, 48, 3), np.uint8)
    img[..., 0] = 200  # red in RGB
    cv2.imwrite(str(tmp_path / "train_batch0.jpg"), img[..., ::-1])
    with RunLogger(tmp_path / "run") as lg:
        assert lg.log_lr([0.01, 0.02, 0.1], step=5) == {"x/lr0": 0.01, "x/lr1": 0.02, "x/lr2": 0.1}
        assert lg.log_images("train_batch0", tmp_path / "train_batch0.jpg", step=0)
        assert lg.log_images("gray", np.full((8, 8), 0.5, np.float32), step=1)
        assert lg.log_text("autoanchor", "BPR 0.9\nline 2")
        with pytest.raises(FileNotFoundError, match="missing.jpg"):
            lg.log_images("x", tmp_path / "missing.jpg")
        with pytest.raises(ValueError, match="'bad'"):
            lg.log_images("bad", np.zeros((2, 3, 5)))
    ea = _events(tmp_path / "run")
    assert [(e.step, e.value) for e in ea.Scalars("x/lr2")] == [(5, np.float32(0.1))]
    im = ea.Images("train_batch0")[0]
    assert (im.width, im.height, im.step) == (48, 32, 0)
    decoded = cv2.imdecode(np.frombuffer(im.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert abs(int(decoded[..., 0].mean()) - 200) <= 2 and decoded[..., 1:].max() <= 3  # RGB order kept
    assert ea.Images("gray")[0].width == 8


def test_without_tensorboard_package(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    with caplog.at_level(logging.INFO, logger="utils.train.loggers"):
        lg = RunLogger(tmp_path)
    assert lg.tb is None and "not installed" in caplog.text
    lg.log_epoch(0, {"metrics/big/recall": 0.5})
    assert not lg.log_images("x", np.zeros((4, 4, 3), np.uint8))
    assert read_results_csv(tmp_path / "results.csv")[1] == [{"epoch": 0.0, "metrics/big/recall": 0.5}]


def test_bad_input(tmp_path):
    lg = RunLogger(tmp_path, tensorboard=False)
    with pytest.raises(TypeError, match="'metrics/mAP_0.5'"):
        lg.log_epoch(0, {"metrics/mAP_0.5": "high"})
    with pytest.raises(TypeError, match="'v'"):
        lg.log_epoch(0, {"v": torch.zeros(2)})
    with pytest.raises(ValueError, match="epoch"):
        lg.log_epoch(-1, {"a": 1})
    with pytest.raises(ValueError, match="key"):
        lg.log_epoch(0, {"epoch": 1})
    assert not (tmp_path / "results.csv").exists()  # nothing half-written
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.csv").write_text("epoch,a\n0,x\n")
    with pytest.raises(ValueError, match=r"results.csv: line 2"):
        RunLogger(tmp_path / "bad", tensorboard=False)


@pytest.mark.slow
def test_default_training_run_logs_every_results_column_to_tensorboard(tmp_path, caplog):
    """``train.py`` with default flags (tensorboard installed, as requirements.txt asks): an event file in the run
    folder whose scalars are results.csv's columns (losses, metrics with the tiny/big buckets, learning rates) at
    step = epoch, each equal to the CSV value as float32."""
    import train
    from tests.helpers import tiny_dataset

    data = tiny_dataset(tmp_path, n_train=8, n_val=4, imgsz=64)
    argv = ["--data", str(data), "--imgsz", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--noplots", "--noautoanchor", "--project", str(tmp_path / "runs"), "--name", "exp"]
    with caplog.at_level(logging.INFO):
        run = tmp_path / "runs" / "exp"
        assert train.train(train.get_args_parser().parse_args(argv))["save_dir"] == str(run)
    assert "TensorBoard: start with 'tensorboard --logdir" in caplog.text and "not installed" not in caplog.text
    assert len(list(run.glob("events.out.tfevents*"))) == 1
    keys, rows = read_results_csv(run / "results.csv")
    for k in ("train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
              "metrics/tiny/r", "metrics/tiny/map50", "metrics/big/p", "metrics/big/map50_95", "x/lr0", "x/lr2"):
        assert k in keys, k
    ea = _events(run)
    assert set(keys) <= set(ea.Tags()["scalars"])
    for k in keys:
        (ev,) = ea.Scalars(k)
        want = np.float32(rows[0][k])
        assert ev.step == 0 and (ev.value == want or (np.isnan(want) and np.isnan(ev.value))), (k, ev.value, want)
