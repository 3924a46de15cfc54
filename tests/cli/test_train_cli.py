"""train.py's command line (issue 17): every bad input ends in exit status 1 with ONE line on stderr naming the
file or flag, and nothing is created under --project; the run-folder lock; skipped images; --single-cls; Ctrl-C."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import train
from data.prepare import check_dataset
from tests.helpers import tiny_dataset
from utils.checkpoints import load_checkpoint
from utils.config.hyp import load_hyp
from utils.dataset.dataloaders import LoadImagesAndLabels
from utils.run_dirs import LOCK_NAME
from utils.train.builders import build_loaders


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("synthetic"), n_train=16, n_val=8, imgsz=64)


@pytest.fixture
def live_pid():
    """The pid of a live process other than this one (a sleeping child), killed afterwards."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p.pid
    p.kill()
    p.wait()


def run_main(capsys, project: Path, *argv: str) -> tuple[int, list[str]]:
    """train.main on ``argv`` with ``--project project`` -> (exit status, stderr lines)."""
    rc = train.main(["--project", str(project), "--imgsz", "64", "--epochs", "1", "--batch-size", "8",
                     "--workers", "0", "--noplots", *argv])  # argv last: its flags win
    return rc, capsys.readouterr().err.splitlines()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def bad_inputs(tmp: Path, data: Path) -> dict[str, tuple[list[str], str]]:
    """{case: (train.py arguments, text the one stderr line must contain)}."""
    bad_hyp = _write(tmp / "bad_hyp.yaml", "lr0: [0.01\n")  # not valid YAML
    bad_data = _write(tmp / "bad_data.yaml", yaml.safe_dump({"path": str(tmp), "train": "images/train",
                                                            "names": ["a"]}))  # no 'val'
    return {
        "bad hyp YAML": (["--data", str(data), "--hyp", str(bad_hyp)], "bad_hyp.yaml"),
        "unknown hyp key": (["--data", str(data), "--hyp-set", "nonsense=1"], "nonsense"),
        "bad data YAML": (["--data", str(bad_data)], "bad_data.yaml"),
        "missing data YAML": (["--data", str(tmp / "nowhere.yaml")], "nowhere.yaml"),
        "missing weights": (["--data", str(data), "--weights", str(tmp / "missing.pt")], "missing.pt"),
        "--epochs 0": (["--data", str(data), "--epochs", "0"], "--epochs"),
        "--epochs -1": (["--data", str(data), "--epochs", "-1"], "--epochs"),
        "--batch-size 0": (["--data", str(data), "--batch-size", "0"], "--batch-size"),
        "--freeze 100": (["--data", str(data), "--freeze", "100"], "--freeze 100: the model has 25 layers"),
        "--freeze 0 99": (["--data", str(data), "--freeze", "0", "99"], "--freeze 0 99"),
        "--cache bogus": (["--data", str(data), "--cache", "bogus"], "--cache"),
        "paste area > image": (["--data", str(data), "--hyp-set", "small_paste=0.5", "small_paste_area=5000"],
                               "'small_paste_area' = 5000"),  # > 64 x 64 px: known once imgsz is
        "unknown flag": (["--data", str(data), "--no-such-flag"], "--no-such-flag"),
        "not an int": (["--data", str(data), "--seed", "x"], "--seed"),
        "--imgsz 99999": (["--data", str(data), "--imgsz", "99999"], "--imgsz must be in [1, 7168] px, got 99999"),
        "--tiny-max-cost alone": (["--data", str(data), "--tiny-max-cost", "2"], "--tiny-max-cost only applies with"),
    }


CASES = ["bad hyp YAML", "unknown hyp key", "bad data YAML", "missing data YAML", "missing weights", "--epochs 0",
         "--epochs -1", "--batch-size 0", "--freeze 100", "--freeze 0 99", "--cache bogus", "paste area > image",
         "unknown flag", "not an int", "--imgsz 99999", "--tiny-max-cost alone"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_1_and_no_run_folder(tiny_data, tmp_path, capsys, case):
    argv, named = bad_inputs(tmp_path, tiny_data)[case]
    project = tmp_path / "runs"
    rc, err = run_main(capsys, project, *argv)
    assert rc == 1
    assert len(err) == 1, err
    assert err[0].startswith("train.py: error: ") and named in err[0], err[0]
    assert not project.exists() or not any(project.iterdir())


def test_a_folder_locked_by_a_live_run_is_refused(tiny_data, tmp_path, capsys, live_pid):
    run = tmp_path / "runs" / "exp"
    run.mkdir(parents=True)
    lock = run / LOCK_NAME
    lock.write_text(f"{live_pid} {socket.gethostname()}\n")
    rc, err = run_main(capsys, tmp_path / "runs", "--data", str(tiny_data), "--name", "exp", "--exist-ok")
    assert rc == 1 and len(err) == 1, err
    assert str(lock) in err[0] and f"pid {live_pid}" in err[0]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["exp"]
    assert [p.name for p in run.iterdir()] == [LOCK_NAME]  # nothing written into the other run's folder
    assert lock.read_text().split()[0] == str(live_pid)


def test_too_many_skipped_images_stop_with_a_summary(tmp_path, capsys):
    """A data YAML with fewer classes than the labels use: most images are skipped as corrupt -> stop, naming the
    YAML and the reason counts; --allow-skipped trains on the rest (here the 2 images whose labels are class 0)."""
    data = tiny_dataset(tmp_path, n_train=8, n_val=4, imgsz=64, seed=5)
    cfg = yaml.safe_load(data.read_text())
    for split, stems in (("train", ("000000", "000001")), ("val", ("000000",))):
        lb = Path(cfg["path"]) / "labels" / split
        for stem in stems:
            (lb / f"{stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    one = _write(tmp_path / "one_class.yaml", yaml.safe_dump({**cfg, "names": ["circle"]}))
    rc, err = run_main(capsys, tmp_path / "runs", "--data", str(one))
    assert rc == 1
    line = err[-1]  # above it: the label scan's progress bar
    assert line == (f"train.py: error: {one}: 6 of 8 train images skipped as corrupt (class id >= nc=1: 6), more "
                    "than 10%: fix the labels or the data YAML, or pass --allow-skipped to go on without them")
    assert not (tmp_path / "runs").exists()
    opt = train.get_args_parser().parse_args(["--data", str(one), "--workers", "0", "--allow-skipped"])
    _, dataset, val_loader = build_loaders(opt, check_dataset(one), load_hyp(), 64, 32, 8, -1, True)
    assert len(dataset) == 2 and dataset.counts["corrupt"] == 6 and len(val_loader.dataset) == 1


def test_a_val_split_without_labels_is_refused_before_training(tmp_path, capsys):
    """Val images without label files: refused at start-up (not epochs later, at the first validation), in one
    line naming the val source and the label folder it looked in; no run folder."""
    data = tiny_dataset(tmp_path, n_train=8, n_val=4, imgsz=64, seed=5)
    cfg = yaml.safe_load(data.read_text())
    for f in (Path(cfg["path"]) / "labels" / "val").glob("*.txt"):
        f.unlink()
    rc, err = run_main(capsys, tmp_path / "runs", "--data", str(data))
    assert rc == 1
    line = err[-1]  # above it: the label scan's progress bar
    assert line.startswith("train.py: error: val: ") and "none of its 4 images has a label file" in line, line
    assert str(Path(cfg["path"]) / "labels" / "val") in line
    assert not (tmp_path / "runs").exists()


def test_single_cls_collapses_multi_class_labels_instead_of_rejecting_them(tiny_data):
    opt = train.get_args_parser().parse_args(["--data", str(tiny_data), "--workers", "0", "--single-cls"])
    train_loader, dataset, val_loader = build_loaders(opt, check_dataset(tiny_data), load_hyp(), 64, 32, 8, -1, True)
    for ds, n in ((dataset, 16), (val_loader.dataset, 8)):
        assert len(ds) == n and ds.counts["corrupt"] == 0  # before the fix: every multi-class image "corrupt"
        classes = {int(c) for lb in ds.labels for c in lb[:, 0]}
        assert classes == {0}
    plain = build_loaders(train.get_args_parser().parse_args(["--workers", "0"]), check_dataset(tiny_data),
                          load_hyp(), 64, 32, 8, -1, False)[1]
    assert len({int(c) for lb in plain.labels for c in lb[:, 0]}) > 1  # the data really is multi-class
    assert [len(lb) for lb in plain.labels] == [len(lb) for lb in dataset.labels]


@pytest.mark.slow
def test_ctrl_c_says_where_last_pt_is_and_how_to_resume(tiny_data, tmp_path, capsys, monkeypatch):
    real_save = train.save_epoch

    def save_then_interrupt(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_epoch", save_then_interrupt)
    rc = train.main(["--data", str(tiny_data), "--project", str(tmp_path), "--name", "run1", "--imgsz", "64",
                     "--epochs", "2", "--batch-size", "8", "--workers", "0", "--noplots", "--noautoanchor"])
    err = capsys.readouterr().err.splitlines()
    last = tmp_path / "run1" / "weights" / "last.pt"
    assert rc == 130 and last.is_file()
    assert err[-1] == f"train.py: interrupted; last checkpoint {last}; resume with: python train.py --resume {last}"
    assert not (tmp_path / "run1" / LOCK_NAME).exists()  # the lock is released on the way out
    assert load_checkpoint(last)["epoch"] == 0


def test_cache_disk_saves_resized_images_beside_the_originals_and_reuses_them(tmp_path):
    """--cache disk: one .npy per image beside it, items identical to decoding, reused while newer than the image,
    redone when the image is newer."""
    data = tiny_dataset(tmp_path, n_train=4, n_val=2, imgsz=96, seed=7)
    images = Path(yaml.safe_load(data.read_text())["path"]) / "images" / "train"
    kw = dict(img_size=64, batch_size=2, augment=True, hyp=load_hyp(), workers=0, seed=3)
    plain = LoadImagesAndLabels(images, **kw)
    cached = LoadImagesAndLabels(images, cache_images="disk", **kw)
    npys = sorted(images.glob("*.npy"))
    assert [p.name for p in npys] == sorted(f"{Path(f).name}.64l.npy" for f in plain.im_files)
    assert np.load(npys[0]).shape[:2] == (64, 64)  # resized: 96 px originals, long side 64
    for i in range(len(plain)):  # same augmentation stream: identical items
        a, b = plain[i], cached[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[3] == b[3]
    t = {p: p.stat().st_mtime_ns for p in npys}
    LoadImagesAndLabels(images, cache_images="disk", **kw)
    assert {p: p.stat().st_mtime_ns for p in npys} == t  # reused
    im0 = Path(plain.im_files[0])
    future = max(t.values()) + 10**9
    os.utime(im0, ns=(future, future))
    LoadImagesAndLabels(images, cache_images="disk", **kw)
    redone = images / f"{im0.name}.64l.npy"
    assert redone.stat().st_mtime_ns > t[redone] and all(p.stat().st_mtime_ns == t[p] for p in npys if p != redone)
    val = LoadImagesAndLabels(images, img_size=64, batch_size=2, cache_images="disk", workers=0)
    assert (images / f"{im0.name}.64a.npy").is_file()  # val resizes with INTER_AREA: its own file
    assert torch.equal(val[1][0], LoadImagesAndLabels(images, img_size=64, batch_size=2, workers=0)[1][0])
    with pytest.raises(ValueError, match="bogus"):
        LoadImagesAndLabels(images, cache_images="bogus", **kw)
