"""TFL weight function: hand-computed values, limits and the paper's rule for choosing its form."""

import math

import pytest
import torch

from utils.loss.tfl import suggest_tfl, tfl_weights


def test_known_weights_k16_s1024():
    wh = torch.tensor([[8.0, 8.0], [32.0, 32.0], [100.0, 100.0]])
    w = tfl_weights(wh, k=1.6, s=1024)
    assert w.tolist() == pytest.approx([1.9048, 1.2019, 1.0000], abs=5e-5)
    assert w[0].item() == pytest.approx(math.exp(-0.1) + 1, rel=1e-6)


def test_piecewise_is_one_at_and_above_s():
    wh = torch.tensor([[32.0, 32.0], [64.0, 16.0], [33.0, 40.0], [31.0, 33.0], [4.0, 4.0]])
    w = tfl_weights(wh, k=1.6, s=1024, piecewise=True)
    assert w[:3].tolist() == [1.0, 1.0, 1.0]
    assert w[3].item() == pytest.approx(math.exp(-1.6 * 31 * 33 / 1024) + 1, rel=1e-6)
    assert w[4].item() == pytest.approx(math.exp(-1.6 * 16 / 1024) + 1, rel=1e-6)


def test_limits_k0_and_k_inf():
    wh = torch.tensor([[0.0, 0.0], [3.0, 5.0], [500.0, 400.0]])
    assert tfl_weights(wh, k=0).tolist() == [2.0, 2.0, 2.0]
    assert tfl_weights(wh, k=math.inf).tolist() == [1.0, 1.0, 1.0]


def test_degenerate_sizes_are_finite():
    wh = torch.tensor([[0.0, 10.0], [-3.0, 4.0], [float("nan"), 2.0], [float("inf"), 1.0]])
    w = tfl_weights(wh)
    assert torch.isfinite(w).all()
    assert w[:3].tolist() == [2.0, 2.0, 2.0]
    assert w[3].item() == 1.0


def test_invalid_parameters():
    with pytest.raises(ValueError, match="k must be >= 0"):
        tfl_weights(torch.ones(1, 2), k=-1)
    with pytest.raises(ValueError, match="S must be > 0"):
        tfl_weights(torch.ones(1, 2), s=0)


def test_suggest_tfl_follows_the_papers_rule():
    wide = torch.tensor([2.0, 50.0, 639.0])
    k, piecewise, reason = suggest_tfl(wide, imgsz=640)
    assert (k, piecewise) == (1.6, False) and "continuous" in reason
    narrow = torch.tensor([7.0, 20.0, 58.0])  # PCB defects at 640: range 51 < 160
    k2, piecewise2, _ = suggest_tfl(narrow, imgsz=640)
    narrower = torch.tensor([10.0, 20.0])
    k3, _, _ = suggest_tfl(narrower, imgsz=640)
    assert piecewise2 and k2 < 1.6 and k3 < k2
