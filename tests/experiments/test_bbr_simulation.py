"""Tests for experiments/bbr_simulation.py: setup geometry, schedule, the update, and the losses' ordering."""

import json
import math

import pytest
import torch

from experiments.bbr_simulation import (
    SETUPS,
    get_args_parser,
    learning_rate,
    main,
    make_pairs,
    markdown_table,
    regress,
    simulate,
)
from utils.ops.boxes import xywh2xyxy

LOSSES = ["iou", "giou", "ciou", "eiou", "focal_eiou", "nwd"]


def test_make_pairs_setup1_geometry():
    anchors, targets = make_pairs(SETUPS[1], n_points=3, seed=0)
    assert anchors.shape == targets.shape == (3 * 49 * 7, 4)
    areas = sorted({round(float(a), 6) for a in anchors[:, 2] * anchors[:, 3]})
    assert areas == [50, 67, 75, 100, 133, 150, 200]
    ratios = sorted({round(float(r), 6) for r in anchors[:, 2] / anchors[:, 3]})
    assert ratios == pytest.approx([1 / 4, 1 / 3, 1 / 2, 1, 2, 3, 4])
    assert torch.all(targets[:, :2] == 10)
    assert torch.allclose(targets[:, 2] * targets[:, 3], torch.tensor(100.0).double())
    assert sorted({round(float(r), 6) for r in targets[:, 2] / targets[:, 3]}) == pytest.approx(ratios)
    assert len({tuple(c.tolist()) for c in anchors[:, :2]}) == 3  # one centre per point
    assert anchors[:, :2].min() >= 0 and anchors[:, :2].max() <= 20
    # every anchor meets every target exactly once
    assert len({tuple(r.tolist()) for r in torch.cat((anchors, targets), 1)}) == len(anchors)


def test_make_pairs_setup2_geometry():
    anchors, targets = make_pairs(SETUPS[2], n_points=100, seed=1)
    assert anchors.shape == (100 * 9 * 3, 4)
    assert anchors[:, :2].min() >= 8.75 and anchors[:, :2].max() <= 11.25
    assert sorted({round(float(a)) for a in anchors[:, 2] * anchors[:, 3]}) == [50, 100, 150]


def test_learning_rate_schedule():
    assert [learning_rate(t, 200) for t in (0, 159, 160, 179, 180, 199)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]


def test_regress_moves_towards_target_and_is_chunk_independent():
    anchors, targets = make_pairs(SETUPS[2], n_points=5, seed=0)
    square = targets[1:2]  # the 10 x 10 target, exact in float32: a perfect anchor stays put
    errors, iou = regress("eiou", square.clone(), square, iters=5, unit=10.0)
    assert max(errors) < 1e-4 and iou.min() > 0.9999
    for name in ("eiou", "focal_eiou"):
        e_big, iou_big = regress(name, anchors, targets, iters=10, unit=10.0)
        e_small, iou_small = regress(name, anchors, targets, iters=10, unit=10.0, chunk=7)
        assert e_big == pytest.approx(e_small, rel=1e-5) and torch.allclose(iou_big, iou_small, atol=1e-4)
        initial = float((xywh2xyxy(anchors) - xywh2xyxy(targets)).abs().sum())
        assert e_big[-1] < 0.6 * initial


def test_one_step_is_plain_gradient_descent_in_target_units():
    """One step by hand: EIoU gradient of the (cx, cy, w, h) box in units of 10 px, lr 0.1, error in pixels."""
    anchor = torch.tensor([[12.0, 9.0, 5.0, 20.0]], dtype=torch.float64)
    target = torch.tensor([[10.0, 10.0, 10.0, 10.0]], dtype=torch.float64)
    from utils.ops.box_losses import eiou_loss

    b = (anchor / 10).requires_grad_(True)
    eiou_loss(xywh2xyxy(b), xywh2xyxy(target / 10)).loss.sum().backward()
    moved = (anchor / 10 - 0.1 * b.grad) * 10
    want = float((xywh2xyxy(moved) - xywh2xyxy(target)).abs().sum())
    errors, _ = regress("eiou", anchor, target, iters=1, unit=10.0)
    assert errors[0] == pytest.approx(want, rel=1e-5)


def test_simulate_rejects_unknown_setup():
    with pytest.raises(ValueError, match="unknown simulation setup 3"):
        simulate(3, ["iou"], iters=2)
    with pytest.raises(ValueError, match="unknown box loss 'eio'"):
        simulate(2, ["eio"], iters=2, n_points=2)


@pytest.fixture(scope="module")
def short_runs():
    """20 iterations on 20 points in each setup."""
    return {1: simulate(1, LOSSES, iters=20, seed=0, n_points=20),
            2: simulate(2, LOSSES, iters=20, seed=0, n_points=20)}


def test_short_run_ordering(short_runs):
    """Orderings the full run (1000 / 100 points, 200 iterations) shows at iteration 20, here after 20 steps.

    Full run, error / initial at iteration 20 - setup 1: giou .295 < eiou .306 < ciou .422 < nwd .457 <
    focal_eiou .508 < iou .627; setup 2: eiou .233 < focal_eiou .306 < giou .341 < ciou .442 < nwd .485 < iou .508.
    """
    err = {s: {n: r["final_error"] for n, r in sim["results"].items()} for s, sim in short_runs.items()}
    for s in (1, 2):
        assert all(r["final_error"] < r["initial_error"] for r in short_runs[s]["results"].values())
        # EIoU converges faster than CIoU, which beats IoU (the paper's claim), in both setups
        assert err[s]["eiou"] < err[s]["ciou"] < err[s]["iou"], err[s]
    assert max(err[1]["giou"], err[1]["eiou"]) < err[1]["ciou"], err[1]
    assert err[2]["eiou"] < err[2]["focal_eiou"] < err[2]["giou"], err[2]


@pytest.mark.slow
def test_final_ordering_setup1():
    """The full run's final ordering of setup 1 (200 iterations; here on 10 points): nwd 3267 < ciou 7136 <
    eiou 7398 < giou 14980 < iou 2.05e6 < focal_eiou 2.57e6 px. Focal-EIoU leaves disjoint anchors (IoU 0, weight
    ~0) where they are, so its tail of poor anchors is long."""
    sim = simulate(1, LOSSES, iters=200, seed=0, n_points=10)
    err = {n: r["final_error"] for n, r in sim["results"].items()}
    assert sorted(err, key=err.get) == ["nwd", "ciou", "eiou", "giou", "iou", "focal_eiou"], err
    res = sim["results"]
    assert res["eiou"]["iou_gt_0.5"] == 1.0 and res["focal_eiou"]["iou_gt_0.5"] < 0.8
    assert res["focal_eiou"]["iou_median"] > 0.99


def test_markdown_table_and_outputs(short_runs, tmp_path, capsys):
    table = markdown_table(short_runs[2])
    assert table.count("\n| ") == len(LOSSES) + 2 and "| eiou |" in table
    args = get_args_parser().parse_args(["--setup", "2", "--iters", "3", "--points", "2", "--losses", "iou", "nwd",
                                         "--out", str(tmp_path), "--threads", "1"])
    sims = main(args)
    assert "| nwd |" in capsys.readouterr().out
    numbers = json.loads((tmp_path / "setup2.json").read_text())
    assert numbers["n_pairs"] == 2 * 9 * 3 and len(numbers["results"]["iou"]["error_curve"]) == 3
    assert math.isclose(numbers["results"]["nwd"]["final_error"], sims[2]["results"]["nwd"]["final_error"])
    for png in ("setup2_error.png", "setup2_iou.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
