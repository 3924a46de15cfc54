"""End-to-end training: artefacts, exact resume after a crash, DDP on CPU, bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from data.synthetic import generate
from utils.checkpoints import load_checkpoint, load_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, n_train=16, n_val=8, imgsz=96, seed=3)
    cfg = root / "data.yaml"
    cfg.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                   "names": {0: "circle", 1: "rectangle", 2: "triangle", 3: "cross"}}))
    return cfg


def args(data: Path, project: Path, name: str, *extra: str):
    return train.get_args_parser().parse_args(
        ["--data", str(data), "--imgsz", "64", "--epochs", "2", "--batch-size", "8", "--workers", "0",
         "--project", str(project), "--name", name, "--seed", "1", *extra])


def test_train_writes_every_artefact_and_resume_is_exact(tiny_data, tmp_path, monkeypatch):
    full = train.train(args(tiny_data, tmp_path, "full", "--hyp", "hyp.tfl.yaml"))
    run = Path(full["save_dir"])
    for f in ("weights/last.pt", "weights/best.pt", "results.csv", "results.png", "labels.jpg", "train_batch0.jpg",
              "hyp.yaml", "opt.yaml", "metrics.json", "anchor_report.txt", "PR_curve.png", "confusion_matrix.png"):
        assert (run / f).is_file(), f
    assert list(run.glob("events.out.tfevents*")), "no TensorBoard event file"
    rows = (run / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "metrics/mAP_0.5" in rows[0]
    assert yaml.safe_load((run / "hyp.yaml").read_text())["tfl"] is True
    assert "metrics/mAP_0.5" in full and 0 <= full["metrics/mAP_0.5"] <= 1

    # Same run, crashed right after saving epoch 0, then resumed from its last.pt.
    real_save = train.save_epoch

    def save_then_crash(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt("simulated crash after epoch 0")

    monkeypatch.setattr(train, "save_epoch", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.train(args(tiny_data, tmp_path, "crash", "--hyp", "hyp.tfl.yaml"))
    monkeypatch.setattr(train, "save_epoch", real_save)
    last = tmp_path / "crash" / "weights" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 0
    resumed = train.train(train.get_args_parser().parse_args(["--resume", str(last)]))
    assert Path(resumed["save_dir"]) == tmp_path / "crash"
    a, b = load_checkpoint(run / "weights/last.pt"), load_checkpoint(last)
    assert b["epoch"] == 1
    for key in ("model", "ema"):
        for k, v in a[key].items():
            torch.testing.assert_close(b[key][k], v, rtol=1e-5, atol=1e-6, msg=f"{key}.{k}")


def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(ROOT / "train.py"), "--data", str(tiny_data), "--imgsz", "64", "--epochs", "1", "--batch-size", "8",
           "--workers", "0", "--device", "cpu", "--project", str(tmp_path), "--name", "ddp", "--noplots"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    model = load_model(tmp_path / "ddp" / "weights" / "last.pt")
    assert model.nc == 4 if hasattr(model, "nc") else model.model[-1].nc == 4
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64))[0].shape[-1] == 9


def test_bad_data_yaml_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images/train", "names": ["a"]}))
    with pytest.raises(ValueError, match=r"bad\.yaml.*'val'"):
        train.train(args(bad, tmp_path, "bad"))
