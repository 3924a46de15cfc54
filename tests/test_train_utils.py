"""Unit tests of utils/train_utils.py: the non-finite loss guard (issue 9) and the other pure helpers."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from utils.train_utils import (
    NOMINAL_BATCH,
    EarlyStopping,
    NonFiniteGuard,
    increment_path,
    lr_factor,
    transfer_weights,
    warmup_accumulate,
    warmup_values,
)

PATHS = [f"/data/images/im{i}.jpg" for i in range(10)]


def test_guard_skips_counts_and_resets(caplog):
    g = NonFiniteGuard(limit=3)
    assert g.check(torch.tensor([1.5]), PATHS[:2])
    with caplog.at_level(logging.WARNING, logger="tinyfocal"):
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
    with caplog.at_level(logging.WARNING, logger="tinyfocal"):
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
    (tmp_path / "run7").mkdir()
    assert increment_path(tmp_path / "run7") == tmp_path / "run2"  # trailing digits are the counter


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
