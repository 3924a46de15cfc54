"""Tiny-object label assignment (utils/loss/assign.py and ComputeLoss.build_targets): assign nwd, assign_min_pos.

The FakeModel of tests/helpers.py carries yolov5n's default anchors (10,13 16,30 33,23 | 30,61 62,45 59,119 |
116,90 156,198 373,326 px at strides 8, 16, 32); images are IMGSZ = 256 px, so the grids are 32, 16 and 8 cells.
"""

import math

import pytest
import torch

from tests.helpers import IMGSZ, FakeModel, base_hyp, make_preds, make_targets, yolo_loss
from utils.loss.assign import nwd_anchor_scores, ratio_match, starved_pairs, topk_pairs
from utils.loss.compute_loss import Matches
from utils.ops.box_losses import nwd_loss
from utils.ops.boxes import xywh2xyxy


def box(img: int, cls: int, cx: float, cy: float, w: float, h: float) -> list[float]:
    """One target row from input pixels at IMGSZ -> [img, cls, x, y, w, h] normalised."""
    return [img, cls, cx / IMGSZ, cy / IMGSZ, w / IMGSZ, h / IMGSZ]


def cells(levels: list[Matches]) -> list[set]:
    """Per level, the set of (anchor, gj, gi) matched."""
    return [set(zip(m.a.tolist(), m.gj.tolist(), m.gi.tolist())) for m in levels]


def matches(hyp_kw: dict, targets: torch.Tensor, bs: int = 1) -> list[Matches]:
    return yolo_loss(FakeModel(3), base_hyp(**hyp_kw)).build_targets(make_preds(3, bs=bs), targets)


# ---------------------------------------------------------------- pure functions
def test_nwd_score_hand_computed():
    """A 2x2 px box centred at (98, 62) px vs anchor 30x61 px of stride 16: its own cell (6, 3) has centre
    (104, 56), so W2^2 = 6^2 + 6^2 + 14^2 + 29.5^2 = 1138.25 px^2 and NWD = exp(-sqrt(1138.25) / 12.8)."""
    s = 16
    gxy = torch.tensor([[98 / s, 62 / s]])
    gwh = torch.tensor([[2 / s, 2 / s]])
    anchors = torch.tensor([[30, 61], [62, 45]]) / s
    got = nwd_anchor_scores(gxy, gwh, anchors, torch.tensor([16.0, 16.0]), 12.8 / s)
    assert got.shape == (2, 1)
    assert got[0, 0].item() == pytest.approx(math.exp(-math.sqrt(1138.25) / 12.8), rel=1e-6)
    assert got[1, 0].item() == pytest.approx(math.exp(-math.sqrt(72 + 30**2 + 21.5**2) / 12.8), rel=1e-6)
    # A box equal to the anchor, at its cell's centre, scores 1; at the grid's far edge the cell is clamped.
    one = nwd_anchor_scores(torch.tensor([[2.5, 3.5], [16.0, 16.0]]), anchors[:1].expand(2, 2), anchors[:1],
                            torch.tensor([16.0, 16.0]), 0.8)
    assert one[0, 0].item() == 1.0
    assert one[0, 1].item() == pytest.approx(math.exp(-math.sqrt(0.5) / 0.8), rel=1e-6)  # cell 15, offset 0.5


def test_nwd_score_equals_nwd_loss_and_is_unit_free():
    g = torch.Generator().manual_seed(3)
    gxy, gwh = torch.rand(20, 2, generator=g) * 16, torch.rand(20, 2, generator=g) * 3
    anchors = torch.rand(3, 2, generator=g) * 4
    grid = torch.tensor([16.0, 16.0])
    got = nwd_anchor_scores(gxy, gwh, anchors, grid, 0.8)  # (3, 20)
    centre = gxy.floor() + 0.5
    for a in range(3):
        ref = 1 - nwd_loss(xywh2xyxy(torch.cat((centre, anchors[a].expand(20, 2)), 1)),
                           xywh2xyxy(torch.cat((gxy, gwh), 1)), c=0.8).loss
        torch.testing.assert_close(got[a], ref, rtol=1e-5, atol=1e-6)


def test_ratio_match_threshold():
    anchors = torch.tensor([[10.0, 13.0], [16.0, 30.0]])
    gwh = torch.tensor([[2.5, 3.25], [3.3, 3.3], [40.0, 13.0], [39.9, 13.0]])  # 40 / 10 = 4: no; 40 / 16 = 2.5
    assert ratio_match(gwh, anchors, 4.0).tolist() == [[False, True, False, True], [False, False, True, True]]


def test_topk_pairs_ties_and_cap():
    flat = torch.ones(2, 3, 1)
    assert topk_pairs(flat, 4)[..., 0].tolist() == [[True, True, True], [True, False, False]]  # lower level first
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.9, 0.2, 0.8]])[..., None].repeat(1, 1, 2)
    scores[..., 1] = -scores[..., 1]
    got = topk_pairs(scores, 2)
    assert got[..., 0].tolist() == [[False, True, False], [True, False, False]]  # tie at 0.9: level 0 wins order
    assert got[..., 1].tolist() == [[True, False, False], [False, True, False]]
    assert topk_pairs(scores, 10).all()
    assert topk_pairs(torch.zeros(3, 3, 0), 3).shape == (3, 3, 0)


def test_starved_pairs_only_for_unmatched():
    matched = torch.zeros(2, 3, 3, dtype=torch.bool)
    matched[1, 2, 0] = True  # ground truth 0 has a pair, 1 and 2 do not
    scores = torch.arange(18, dtype=torch.float32).view(2, 3, 3)
    extra = starved_pairs(matched, scores, 2)
    assert extra[..., 0].sum() == 0
    assert extra[..., 1].tolist() == extra[..., 2].tolist() == [[False, False, False], [False, True, True]]


# ---------------------------------------------------------------- build_targets: ratio (YOLOv5) parity
@pytest.mark.oracle
def test_ratio_targets_identical_to_yolov5(oracle):
    """Options off: every match (order included) equals YOLOv5 v7.0's build_targets, on random and tiny targets."""
    model = FakeModel(3)
    tiny = torch.tensor([box(0, 1, 30, 40, 2, 2), box(2, 0, 200, 100, 3, 9)])
    targets = torch.cat((make_targets(3, seed=5), tiny))
    preds = make_preds(3)
    ours = yolo_loss(model, base_hyp()).build_targets(preds, targets)
    model.hyp = {k: v for k, v in base_hyp().items() if not k.startswith(("tfl", "assign"))}
    tcls, tbox, indices, anch = oracle.loss.ComputeLoss(model).build_targets(preds, targets)
    for i, m in enumerate(ours):
        assert m.n == tcls[i].numel() > 0
        for ref, key in zip(indices[i], ("b", "a", "gj", "gi")):
            assert torch.equal(getattr(m, key), ref), key
        assert torch.equal(m.cls, tcls[i])
        assert torch.equal(m.tbox, tbox[i])
        assert torch.equal(m.anchors, anch[i])


def test_ratio_threshold_sizes_at_yolov5n_anchors():
    """Square targets of side <= 3.25 px get no positive at all (13 / 3.25 = 4 = anchor_t); 3.3 px gets one."""
    for side, expected in ((2, 0), (3, 0), (3.25, 0), (3.3, 1), (4, 1)):
        levels = matches({}, torch.tensor([box(0, 0, 100, 60, side, side)]))
        assert sum(len(c) for c in cells(levels)) == expected, side  # at a cell centre: own cell only


# ---------------------------------------------------------------- assign_min_pos
def test_min_pos_gives_tiny_target_its_k_best_anchors():
    """A 2x2 px target at (100, 60) px: cell centres at (100, 60), (104, 56), (112, 48) px on the three levels.
    W2^2 to the anchors: level 0 46.25, 245, 350.5; level 1 32 + 196 + 870.25 = 1098.25, ...: k = 3 takes
    all of level 0 at cell (gj 7, gi 12); k = 4 adds level 1 anchor 0 at cell (3, 6)."""
    targets = torch.tensor([box(0, 2, 100, 60, 2, 2)])
    assert cells(matches({}, targets)) == [set(), set(), set()]
    assert cells(matches({"assign_min_pos": 3}, targets)) == [{(0, 7, 12), (1, 7, 12), (2, 7, 12)}, set(), set()]
    levels = matches({"assign_min_pos": 4}, targets)
    assert cells(levels) == [{(0, 7, 12), (1, 7, 12), (2, 7, 12)}, {(0, 3, 6)}, set()]
    m0, m1 = levels[0], levels[1]
    assert m0.a.tolist() == [0, 1, 2]  # anchor-major
    assert m0.t.tolist() == [0, 0, 0] and m0.cls.tolist() == [2, 2, 2] and m0.b.tolist() == [0, 0, 0]
    torch.testing.assert_close(m0.tbox, torch.tensor([[0.5, 0.5, 0.25, 0.25]]).expand(3, 4))
    torch.testing.assert_close(m1.tbox, torch.tensor([[0.25, 0.75, 0.125, 0.125]]))
    torch.testing.assert_close(m0.anchors, torch.tensor([[10, 13], [16, 30], [33, 23]]) / 8.0)
    assert m0.cell.tolist() == [(a * 32 + 7) * 32 + 12 for a in range(3)]
    weights = yolo_loss(FakeModel(3), base_hyp(tfl=True)).target_weights(make_preds(3, bs=1), targets)
    torch.testing.assert_close(weights[m0.t], torch.full((3,), math.exp(-1.6 * 4 / 1024) + 1))


def test_min_pos_leaves_matched_targets_alone():
    """A 20x20 px target: identical matches with and without min_pos. In a mixed batch the normal matches are
    unchanged and come first; only the starved ground truths (2 px, 3x3 px) get extras, exactly k each."""
    big = torch.tensor([box(0, 0, 98, 62, 20, 20)])
    for off, on in zip(matches({}, big), matches({"assign_min_pos": 3}, big)):
        for key in Matches._fields:
            assert torch.equal(getattr(off, key), getattr(on, key)), key
    targets = torch.cat((make_targets(3, seed=1), torch.tensor([box(0, 1, 30, 40, 2, 2), box(3, 0, 200, 9, 3, 3)])))
    off = matches({}, targets, bs=4)
    on = matches({"assign_min_pos": 3}, targets, bs=4)
    starved = set(range(targets.shape[0])) - {t for m in off for t in m.t.tolist()}
    assert {targets.shape[0] - 2, targets.shape[0] - 1} <= starved  # (make_targets has thin 4-6 px ones too)
    extra_count = {t: 0 for t in starved}
    for m_off, m_on in zip(off, on):
        n = m_off.n
        for key in Matches._fields:
            assert torch.equal(getattr(m_on, key)[:n], getattr(m_off, key)), key
        for t in m_on.t[n:].tolist():
            extra_count[t] += 1
    assert extra_count == {t: 3 for t in starved}


# ---------------------------------------------------------------- assign: nwd
def test_nwd_assignment_topk_pairs_times_neighbour_cells():
    """20x20 px at (98, 62) px: W2^2 at level 0 (offset (-2, 2) from the cell centre) is 8 + 37.25, 8 + 29,
    8 + 44.5 for the three anchors; level 1 anchor 0 is 72 + 445.25. Neighbours: the centre is in the left and
    lower half of its cell on levels 0 and 1, so cells (gj, gi) own (7, 12), left (7, 11), down (8, 12)."""
    targets = torch.tensor([box(0, 0, 98, 62, 20, 20)])
    lvl0 = {(a, gj, gi) for a in range(3) for gj, gi in ((7, 12), (7, 11), (8, 12))}
    m = matches({"assign": "nwd", "assign_topk": 3}, targets)
    assert cells(m) == [lvl0, set(), set()]
    assert m[0].n == 9 and m[0].a.tolist() == [0, 1, 2] * 3  # offset blocks, anchor-major in each
    assert m[0].gi.tolist() == [12, 12, 12, 11, 11, 11, 12, 12, 12]
    m4 = matches({"assign": "nwd", "assign_topk": 4}, targets)
    assert cells(m4) == [lvl0, {(0, 3, 6), (0, 3, 5), (0, 4, 6)}, set()]
    assert sum(len(c) for c in cells(matches({}, targets))) == 15  # ratio: 5 anchors pass anchor_t
    # anchor_t is not used, and min_pos changes nothing: a 2 px target gets its 3 best pairs too.
    tiny = torch.tensor([box(0, 0, 98, 62, 2, 2)])
    for kw in ({}, {"anchor_t": 1.01}, {"assign_min_pos": 5}):
        assert cells(matches({"assign": "nwd", **kw}, tiny)) == [lvl0, set(), set()]


# ---------------------------------------------------------------- through the loss
@pytest.mark.parametrize("kw", [{"assign_min_pos": 3}, {"assign": "nwd"}, {"assign": "nwd", "assign_topk": 9}])
@pytest.mark.parametrize("tfl", [False, True])
def test_loss_finite_and_backward_with_options(kw, tfl):
    model = FakeModel(3)
    tiny = torch.tensor([box(0, 1, 30, 40, 2, 2), box(1, 2, 100, 200, 1, 3), box(0, 0, 5, 250, 0.5, 0.5)])
    for targets in (torch.cat((make_targets(3), tiny)), torch.zeros((0, 6)), tiny):
        preds = make_preds(3)  # images 2 (and more) have no targets
        loss, parts = yolo_loss(model, base_hyp(tfl=tfl, **kw))(preds, targets)
        loss.backward()
        assert torch.isfinite(parts).all() and torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in preds)


def test_min_pos_trains_the_starved_target_and_nothing_else_when_none_starve():
    model = FakeModel(3)
    preds = make_preds(3)
    normal = make_targets(3, seed=2)
    normal = normal[normal[:, 4:6].min(1).values > 8 / IMGSZ]  # nothing starved
    off = yolo_loss(model, base_hyp(tfl=True))
    on = yolo_loss(model, base_hyp(tfl=True, assign_min_pos=2))
    assert torch.equal(off(preds, normal)[0], on(preds, normal)[0])  # no starved target: bit-identical
    targets = torch.cat((normal, torch.tensor([box(2, 1, 100, 60, 2, 2)])))  # image 2 was empty
    g_off = torch.autograd.grad(off(preds, targets)[0], preds)
    g_on = torch.autograd.grad(on(preds, targets)[0], preds)
    assert g_off[0][2, :, 7, 12, :4].abs().sum() == 0  # no box gradient at the tiny target's cell without min_pos
    for a in (0, 1):  # its 2 best pairs: level 0 anchors 0 and 1; box, objectness and class terms all reach them
        assert (g_on[0][2, a, 7, 12, :4].abs() > 0).all()
        assert g_on[0][2, a, 7, 12, 4] != g_off[0][2, a, 7, 12, 4]  # a positive now (TFL-weighted, IoU target)
        assert g_on[0][2, a, 7, 12, 5 + 1] < 0 and g_on[0][2, a, 7, 12, 5] > 0
    assert g_on[0][2, 2, 7, 12, 4] == g_off[0][2, 2, 7, 12, 4]  # anchor 2 stays a negative
