"""End-to-end training: artefacts, exact resume after a crash, DDP on CPU, bad input."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import train
from tests.helpers import tiny_dataset
from utils.checkpoints import load_checkpoint, load_model
from utils.config.hyp import load_hyp

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("synthetic"), imgsz=96)


def args(data: Path, project: Path, name: str, *extra: str):
    return train.get_args_parser().parse_args(
        ["--data", str(data), "--imgsz", "64", "--epochs", "2", "--batch-size", "8", "--workers", "0",
         "--project", str(project), "--name", name, "--seed", "1", *extra])


def test_train_writes_every_artefact_and_resume_is_exact(tiny_data, tmp_path, monkeypatch):
    full = train.train(args(tiny_data, tmp_path, "full", "--hyp", "hyp.tfl.yaml", "--keep-optimizer"))
    run = Path(full["save_dir"])
    rows = (run / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "metrics/mAP_0.5" in rows[0]
    for f in ("weights/last.pt", "weights/best.pt", "results.csv", "results.png", "labels.jpg", "train_batch0.jpg",
              "hyp.yaml", "opt.yaml", "metrics.json", "anchor_report.txt", "PR_curve.png", "confusion_matrix.png"):
        assert (run / f).is_file(), f
    events = list(run.glob("events.out.tfevents*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("metrics/tiny/r", "metrics/big/r", "metrics/mAP_0.5", "train/box_loss"):
        assert tag in tags, tag
    last_row = dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert acc.Scalars("metrics/mAP_0.5")[-1].value == pytest.approx(float(last_row["metrics/mAP_0.5"]), abs=1e-6)
    assert yaml.safe_load((run / "hyp.yaml").read_text())["tfl"] is True
    assert "metrics/mAP_0.5" in full and 0 <= full["metrics/mAP_0.5"] <= 1

    # Same run, crashed right after saving epoch 0, then resumed from its last.pt.
    real_save = train.save_epoch

    def save_then_crash(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt("simulated crash after epoch 0")

    monkeypatch.setattr(train, "save_epoch", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.train(args(tiny_data, tmp_path, "crash", "--hyp", "hyp.tfl.yaml", "--keep-optimizer"))
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


def _free_port() -> int:
    """A TCP port free right now (a fixed port fails when another run, e.g. a parallel CI job, still holds it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
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


def test_tfl_auto_applies_the_papers_rule(tmp_path):
    class Labels:  # image sizes (w, h) in original pixels and normalised labels, as the dataset holds them
        shapes = [(640, 640), (640, 640)]
        labels = [np.array([[0, 0.5, 0.5, 7 / 640, 7 / 640]]), np.array([[1, 0.5, 0.5, 58 / 640, 58 / 640]])]

    hyp = train.resolve_tfl_auto(load_hyp("hyp.scratch-low.yaml"), Labels(), 640, tmp_path, plots=True)
    assert hyp.tfl and hyp.tfl_piecewise and hyp.tfl_k < 1.6  # range 51 px < 640 / 4: piecewise, smaller k
    assert (tmp_path / "tfl_auto.png").is_file()
    wide = Labels()
    wide.labels = [np.array([[0, 0.5, 0.5, 2 / 640, 2 / 640]]), np.array([[1, 0.5, 0.5, 0.9, 0.9]])]
    hyp2 = train.resolve_tfl_auto(load_hyp("hyp.scratch-low.yaml"), wide, 640, tmp_path, plots=False)
    assert hyp2.tfl and not hyp2.tfl_piecewise and hyp2.tfl_k == 1.6


def test_hyp_overrides_from_the_command_line():
    opt = train.get_args_parser().parse_args(["--tfl", "on", "--tfl-k", "3", "--tfl-piecewise", "--tfl-terms", "box",
                                              "cls", "--box-loss", "eiou", "--hyp-set", "tfl_s=256"])
    hyp = load_hyp("hyp.scratch-low.yaml", train.hyp_overrides(opt))
    assert (hyp.tfl, hyp.tfl_k, hyp.tfl_piecewise, hyp.tfl_terms, hyp.box_loss, hyp.tfl_s) == (
        True, 3.0, True, ("box", "cls"), "eiou", 256.0)


def test_official_yolov5_weights_transfer_and_say_how_many(tmp_path, caplog):
    """An official-style yolov5n .pt (a whole pickled module, 80 classes) fine-tuned on 4 classes: every tensor
    whose shape fits is copied (all but the 3 class-dependent Detect convolutions' weights and biases)."""
    import logging
    from copy import deepcopy

    from models.yolo import DetectionModel

    src = DetectionModel("yolov5n.yaml", nc=80)
    official = tmp_path / "yolov5n.pt"
    torch.save({"epoch": -1, "model": deepcopy(src).half(), "ema": None, "optimizer": None}, official)
    opt = train.get_args_parser().parse_args(["--weights", str(official)])
    with caplog.at_level(logging.INFO, logger="utils.train.builders"):
        model = train.build_model(opt, nc=4, hyp=load_hyp(), device=torch.device("cpu"))
    total = len(model.state_dict())
    assert f"Transferred {total - 6}/{total} items from {official}" in caplog.text
    stem = "model.0.conv.weight"
    torch.testing.assert_close(model.state_dict()[stem], src.state_dict()[stem].half().float())
    assert model.model[-1].nc == 4


def test_tfl_auto_logs_the_real_minimum_side(tmp_path, caplog):
    import logging

    class Labels:  # sides 7 and 58 px at 640 (original 640 px images)
        shapes = [(640, 640), (640, 640)]
        labels = [np.array([[0, 0.5, 0.5, 7 / 640, 7 / 640]]), np.array([[1, 0.5, 0.5, 58 / 640, 58 / 640]])]

    with caplog.at_level(logging.INFO, logger="utils.train.builders"):
        train.resolve_tfl_auto(load_hyp("hyp.scratch-low.yaml"), Labels(), 640, tmp_path, plots=False)
    assert "side px min 7.0 / median 32.5 / max 58.0" in caplog.text  # was "min 0.0" (min with initial=0)


def test_autobatch_fit_and_cpu_fallback(caplog):
    import logging

    from models.yolo import DetectionModel
    from utils.torch_utils import autobatch, fit_batch_size

    gib = 2**30
    # memory = 1 GiB + 0.5 GiB per image; budget 10 GiB -> (10 - 1) / 0.5 = 18 images
    assert fit_batch_size([1, 2, 4, 8], [1.5 * gib, 2 * gib, 3 * gib, 5 * gib], 10 * gib) == 18
    assert fit_batch_size([1, 2, 4], [1.5 * gib, 2 * gib, 3 * gib], 1.2 * gib) is None  # not even one image fits
    assert fit_batch_size([1], [1.5 * gib], 10 * gib) is None  # one point: no line
    assert fit_batch_size([1, 2], [2 * gib, 2 * gib], 10 * gib) is None  # flat: no estimate
    with caplog.at_level(logging.WARNING):
        assert autobatch(DetectionModel("yolov5n.yaml", nc=4), 64, torch.device("cpu")) == 16
    assert "AutoBatch: --batch-size -1 needs a CUDA device; training on cpu with the default batch size 16" \
        in caplog.text


def test_resume_restores_exactly_what_a_checkpoint_saves(tmp_path):
    """LoopState round trip through save_epoch / restore_training_state, with early stopping's best epoch."""
    from types import SimpleNamespace

    from models.yolo import DetectionModel
    from utils.torch_utils import ModelEMA
    from utils.train.builders import build_optimizer
    from utils.train.options import TrainOptions, saved_options
    from utils.train.state import LoopState, ResumeError, restore_training_state, save_epoch

    def make_run():
        torch.manual_seed(0)
        model = DetectionModel("yolov5n.yaml", nc=4)
        opt = TrainOptions.from_args(train.get_args_parser().parse_args(["--epochs", "5"]))
        optimizer, scheduler = build_optimizer(model, opt, load_hyp(), opt.batch_size)
        return SimpleNamespace(model=model, ema=ModelEMA(model), optimizer=optimizer, scheduler=scheduler,
                               scaler=torch.amp.GradScaler("cpu", enabled=False), hyp=load_hyp(), opt=opt,
                               names={i: str(i) for i in range(4)}, save_dir=tmp_path,
                               saved_options=lambda: saved_options(opt, opt.batch_size, tmp_path))

    (tmp_path / "weights").mkdir()
    run = make_run()
    run.ema.updates = 37
    run.optimizer.step()  # no gradients: changes nothing, but lets the scheduler step without a warning
    run.scheduler.step()
    saved = LoopState(start_epoch=0, best_fitness=0.25, best_epoch=1, last_opt_step=123, warmup_iters=150)
    save_epoch(run, saved, 2, 0.2)
    assert (tmp_path / "weights/last.pt").is_file() and not (tmp_path / "weights/best.pt").exists()  # 0.2 < 0.25
    fresh = make_run()
    got = restore_training_state(load_checkpoint(tmp_path / "weights/last.pt"), fresh, LoopState(warmup_iters=100))
    assert got == LoopState(start_epoch=3, best_fitness=0.25, best_epoch=1, last_opt_step=123, warmup_iters=150)
    assert fresh.ema.updates == 37 and fresh.scheduler.last_epoch == 1
    save_epoch(run, saved, 4, 0.3)  # the last epoch: nothing left to resume
    with pytest.raises(ResumeError, match="nothing to resume"):
        restore_training_state(load_checkpoint(tmp_path / "weights/last.pt"), make_run(), LoopState())
