"""Unit tests of utils/train_utils.py: the non-finite loss guard (issue 9) and the other pure helpers."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn

from utils.checkpoints import transfer_weights
from utils.config.hyp import load_hyp
from utils.errors import DatasetError, UsageError
from utils.run_dirs import (
    LOCK_NAME,
    RunLockError,
    acquire_run_lock,
    check_run_lock,
    increment_path,
    lock_holder,
    release_run_lock,
)
from utils.train.loop import EarlyStopping, NonFiniteGuard
from utils.train.options import (
    TrainOptions,
    check_freeze,
    check_skipped,
    get_args_parser,
    saved_options,
    skip_reason,
)
from utils.train.schedule import NOMINAL_BATCH, lr_factor, warmup_accumulate, warmup_values

PATHS = [f"/data/images/im{i}.jpg" for i in range(10)]


def test_guard_skips_counts_and_resets(caplog):
    g = NonFiniteGuard(limit=3)
    assert g.check(torch.tensor([1.5]), PATHS[:2])
    with caplog.at_level(logging.WARNING, logger="utils.train.loop"):
        assert not g.check(torch.tensor([float("nan")]), PATHS[:2])
        assert not g.check(torch.tensor([1.0, float("inf")]), PATHS[2:4])
    assert (g.in_row, g.total) == (2, 2)
    assert "im0.jpg, im1.jpg" in caplog.text and "im3.jpg" in caplog.text and "2 in a row" in caplog.text
    assert g.check(torch.tensor(0.3), PATHS[:1])  # a finite loss resets the run of bad ones, not the total
    assert (g.in_row, g.total) == (0, 2)
    assert not g.check(torch.tensor(-float("inf")), PATHS)
    assert (g.in_row, g.total) == (1, 3)


def test_guard_raises_after_limit_in_a_row_naming_images(caplog):
    g = NonFiniteGuard(limit=3)
    nan = torch.tensor(float("nan"))
    assert not g.check(nan, PATHS[:2])
    assert not g.check(nan, PATHS[2:4])
    with pytest.raises(FloatingPointError, match=r"3 non-finite losses in a row") as e:
        g.check(nan, PATHS[4:6])
    assert "/data/images/im4.jpg" in str(e.value) and "/data/images/im5.jpg" in str(e.value)
    assert g.total == 3


def test_guard_never_raises_when_interrupted():
    g = NonFiniteGuard(limit=2)
    for _ in range(10):  # alternate bad and good: never two in a row
        assert not g.check(torch.tensor(float("nan")), PATHS[:1])
        assert g.check(torch.tensor(1.0), PATHS[:1])
    assert g.total == 10 and g.in_row == 0


def test_guard_warning_truncates_long_batches(caplog):
    with caplog.at_level(logging.WARNING, logger="utils.train.loop"):
        NonFiniteGuard(limit=5).check(torch.tensor(float("nan")), PATHS)
    assert "im7.jpg ..." in caplog.text and "im8.jpg" not in caplog.text


@pytest.mark.parametrize("cos", [False, True])
def test_lr_factor_endpoints(cos):
    assert lr_factor(0, 100, 0.01, cos) == pytest.approx(1.0)
    assert lr_factor(100, 100, 0.01, cos) == pytest.approx(0.01)
    assert lr_factor(50, 100, 0.01, cos) == pytest.approx(0.505)  # both are at the midpoint half-way
    assert lr_factor(25, 100, 0.01, cos) == pytest.approx(
        ((1 - math.cos(math.pi / 4)) / 2) * (0.01 - 1) + 1 if cos else 0.75 * 0.99 + 0.01)


def test_warmup_values_endpoints_and_middle():
    epoch_lr = [0.01, 0.02, 0.03]
    lrs, mom = warmup_values(0, 100, epoch_lr, warmup_bias_lr=0.1, warmup_momentum=0.8, momentum=0.937)
    assert lrs == pytest.approx([0.1, 0.0, 0.0]) and mom == pytest.approx(0.8)
    lrs, mom = warmup_values(100, 100, epoch_lr, 0.1, 0.8, 0.937)
    assert lrs == pytest.approx(epoch_lr) and mom == pytest.approx(0.937)
    lrs, mom = warmup_values(25, 100, epoch_lr, 0.1, 0.8, 0.937)
    assert lrs == pytest.approx([0.1 + 0.25 * (0.01 - 0.1), 0.005, 0.0075]) and mom == pytest.approx(0.83425)


def test_warmup_accumulate():
    assert warmup_accumulate(0, 100, 16) == 1
    assert warmup_accumulate(100, 100, 16) == NOMINAL_BATCH // 16 == 4
    assert warmup_accumulate(50, 100, 16) == round(1 + 0.5 * 3)  # 2.5 rounds to 2 (numpy rounds half to even)
    assert warmup_accumulate(100, 100, 128) == 1  # batches above the nominal one never accumulate
    assert warmup_accumulate(1000, 100, 8) == 8  # clamped past warmup


def test_increment_path(tmp_path):
    p = tmp_path / "exp"
    assert increment_path(p) == p  # does not exist yet
    p.mkdir()
    assert increment_path(p) == tmp_path / "exp2"
    (tmp_path / "exp2").mkdir()
    assert increment_path(p, mkdir=True) == tmp_path / "exp3" and (tmp_path / "exp3").is_dir()
    assert increment_path(p, exist_ok=True) == p
    assert increment_path(p) == tmp_path / "exp4"


@pytest.mark.parametrize("name, first, second", [("seed1", "seed1-2", "seed1-3"), ("lr0.01", "lr0.01-2", "lr0.01-3"),
                                                 ("run7", "run7-2", "run7-3"), ("exp2", "exp2-2", "exp2-3"),
                                                 ("tfl", "tfl2", "tfl3")])
def test_increment_path_never_changes_the_users_digits(tmp_path, name, first, second):
    (tmp_path / name).mkdir()
    (tmp_path / "seed2").mkdir()  # a sibling that the old rule (strip the digits, count on) would have skipped past
    assert increment_path(tmp_path / name) == tmp_path / first
    (tmp_path / first).mkdir()
    assert increment_path(tmp_path / name) == tmp_path / second


def test_early_stopping():
    es = EarlyStopping(patience=3)
    fits = [0.1, 0.2, 0.15, 0.18, 0.19, 0.3]
    assert [es(e, f) for e, f in enumerate(fits[:5])] == [False, False, False, False, True]
    assert es.best_epoch == 1 and es.best_fitness == pytest.approx(0.2)
    never = EarlyStopping(patience=0)
    assert not any(never(e, 0.0 if e else 1.0) for e in range(1000))
    tie = EarlyStopping(patience=2)
    assert not any(tie(e, 0.5) for e in range(10))  # equal fitness counts as improvement (YOLOv5)


def test_transfer_weights_counts():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1))
    b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1))  # last layer differs
    n, total = transfer_weights(b, a.state_dict())
    assert total == len(b.state_dict()) == 9  # conv w,b + bn w,b,mean,var,num_batches + conv w,b
    assert n == 7  # everything but the last conv's weight and bias
    assert torch.equal(b[0].weight, a[0].weight) and not torch.equal(b[2].bias[:5], a[2].bias)
    c = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1))
    n, _ = transfer_weights(c, a.state_dict(), exclude=("1.",))
    assert n == 4  # the five BatchNorm tensors are excluded
    assert torch.equal(c[0].weight, a[0].weight) and torch.equal(c[1].running_var, torch.ones(4))


# --- the run folder's lock ------------------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: the pid is free
    return p.pid


def test_run_lock_is_exclusive_and_released(tmp_path):
    lock = acquire_run_lock(tmp_path)
    assert lock == tmp_path / LOCK_NAME and lock.read_text().split() == [str(os.getpid()), socket.gethostname()]
    assert lock_holder(tmp_path) is None  # our own lock never blocks us (a run in the same process after a crash)
    release_run_lock(lock)
    assert not lock.exists()
    release_run_lock(lock)  # twice: nothing to do


def test_live_lock_refuses_and_stale_lock_is_taken_over(tmp_path, caplog):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(f"{child.pid} {socket.gethostname()}\n")
        with pytest.raises(RunLockError, match=rf"{LOCK_NAME}: .*another training process \(pid {child.pid}\)"):
            acquire_run_lock(tmp_path)
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(child.pid)  # untouched
    finally:
        child.kill()
        child.wait()
    with caplog.at_level(logging.WARNING):
        lock = acquire_run_lock(tmp_path)  # the same pid, now dead: stale
    assert "taking over the stale lock" in caplog.text and lock.read_text().split()[0] == str(os.getpid())
    release_run_lock(lock)
    (tmp_path / LOCK_NAME).write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    assert lock_holder(tmp_path) is None
    (tmp_path / LOCK_NAME).write_text(f"{_dead_pid()} some-other-host\n")  # cannot be checked from here: held
    with pytest.raises(RunLockError, match="on host some-other-host"):
        check_run_lock(tmp_path)
    (tmp_path / LOCK_NAME).write_text("garbage")
    assert lock_holder(tmp_path) == "an unknown process"


# --- options and skipped images -------------------------------------------------------------------------------------
def test_check_freeze_counts_the_models_layers():
    check_freeze([0], 25)
    check_freeze([24], 25)  # all but the Detect layer
    check_freeze([0, 1, 24], 25)
    with pytest.raises(UsageError, match=r"^--freeze 100: the model has 25 layers \(0\.\.24\)$"):
        check_freeze([100], 25)
    with pytest.raises(UsageError, match="--freeze 25: freezes all 25 layers"):
        check_freeze([25], 25)
    with pytest.raises(UsageError, match="--freeze 3 25"):
        check_freeze([3, 25], 25)


def test_skip_reasons_and_the_share_that_stops_training():
    msgs = ["ignoring corrupt image/label: /d/labels/a.txt:2: class id 3 >= nc=1 (valid ids 0..0)\n"
            "  /d/labels/a.txt:4: class id 2 >= nc=1 (valid ids 0..0)",
            "ignoring corrupt image/label: /d/labels/b.txt:1: class id 5 >= nc=1 (valid ids 0..0)",
            "ignoring corrupt image/label: /d/images/c.jpg: image pixels cannot be decoded (truncated)",
            "ignoring corrupt image/label: /d/labels/e.txt:1: zero-size box (w=0, h=0.1)",
            "ignoring corrupt image/label: /d/labels/f.ignore.txt: line 1: empty area",
            "/d/labels/g.txt: 1 duplicate label row(s) removed"]  # a warning, not a skipped image
    assert [skip_reason(m) for m in msgs[:5]] == ["class id >= nc=1", "class id >= nc=1", "unreadable image",
                                                 "zero-size box", "bad ignore file"]
    check_skipped({"corrupt": 5, "total": 50}, msgs, "d.yaml", "train")  # 10%: not more than the limit
    with pytest.raises(DatasetError) as e:
        check_skipped({"corrupt": 5, "total": 49}, msgs, "d.yaml", "train")
    assert str(e.value) == ("d.yaml: 5 of 49 train images skipped as corrupt (class id >= nc=1: 2, unreadable image: "
                            "1, zero-size box: 1, bad ignore file: 1), more than 10%: fix the labels or the data "
                            "YAML, or pass --allow-skipped to go on without them")
    check_skipped({"corrupt": 0, "total": 0}, [], "d.yaml", "val")


def test_nominal_batch_sets_the_accumulation():
    assert warmup_accumulate(1000, 100, 16) == 4 and warmup_accumulate(1000, 100, 16, nbs=16) == 1
    assert warmup_accumulate(50, 100, 8, nbs=32) == 2  # halfway through warmup: 1 -> 4


# --- options: parsed once into a frozen object ----------------------------------------------------------------------
def test_every_flag_is_a_field_of_the_frozen_options():
    parser = get_args_parser()
    flags = {a.dest for a in parser._actions if a.default is not argparse.SUPPRESS}  # all but --help
    assert flags == {f.name for f in dataclasses.fields(TrainOptions)}  # a new flag needs its field
    args = parser.parse_args(["--freeze", "1", "2", "--tfl-terms", "box", "cls", "--hyp-set", "lr0=0.02"])
    opt = TrainOptions.from_args(args)
    assert (opt.freeze, opt.tfl_terms, opt.hyp_set, opt.nbs) == ((1, 2), ("box", "cls"), ("lr0=0.02",), NOMINAL_BATCH)
    assert opt.to_dict() == vars(args) and list(opt.to_dict()) == list(vars(args))  # saved as argparse gives them
    with pytest.raises(dataclasses.FrozenInstanceError):
        opt.epochs = 3
    assert opt.replace(epochs=3).epochs == 3 and opt.epochs == 10
    args.save_dir = "runs/train/exp"  # an attribute no flag declares
    with pytest.raises(TypeError, match=r"no field for \['save_dir'\], no value for \[\]"):
        TrainOptions.from_args(args)
    del args.save_dir, args.nbs
    with pytest.raises(TypeError, match=r"no field for \[\], no value for \['nbs'\]"):
        TrainOptions.from_args(args)


def test_options_a_run_saved_read_back_with_the_parsers_defaults_for_newer_flags(tmp_path):
    opt = TrainOptions.from_args(get_args_parser().parse_args(["--epochs", "3", "--nbs", "16", "--batch-size", "-1"]))
    saved = saved_options(opt, 24, tmp_path / "exp", "abc123")  # AutoBatch chose 24
    assert (saved["batch_size"], saved["save_dir"], saved["mlflow_run_id"]) == (24, str(tmp_path / "exp"), "abc123")
    assert list(saved)[:len(opt.to_dict())] == list(opt.to_dict()) and "mlflow_run_id" not in saved_options(opt, 8, "x")
    back = TrainOptions.from_saved(yaml.safe_load(yaml.safe_dump(saved, sort_keys=False)))  # opt.yaml round trip
    assert back == opt.replace(batch_size=24)  # resumed with the batch size the run trained with
    older = {k: v for k, v in saved.items() if k not in ("nbs", "tiny_area", "evolve_fitness")}  # before the flags
    older["a_removed_flag"] = 1
    back = TrainOptions.from_saved(older)
    assert (back.nbs, back.tiny_area, back.evolve_fitness, back.epochs) == (NOMINAL_BATCH, None, "all", 3)
    trial = TrainOptions.from_saved({**saved, "hyp": load_hyp().replace(lr0=0.02).to_dict()})  # an --evolve trial
    assert trial.hyp == load_hyp().replace(lr0=0.02) and trial.to_dict()["hyp"]["lr0"] == 0.02
