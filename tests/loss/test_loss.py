"""ComputeLoss: parity with YOLOv5 v7.0 when our additions are off, and the Tiny Focal Loss weighting."""

import math

import pytest
import torch
import torchvision

from tests.helpers import IMGSZ, FakeModel, base_hyp, make_preds, make_targets, yolo_loss
from utils.config.hyp import load_hyp
from utils.loss.compute_loss import ComputeLoss, focal_bce_with_logits, loss_gains
from utils.loss.tfl import weight_positive_cells


def reference_loss(oracle, model, hyp: dict, preds, targets):
    model.hyp = hyp
    return oracle.loss.ComputeLoss(model)(preds, targets)


@pytest.mark.oracle
@pytest.mark.parametrize("nc", [1, 3, 80])
@pytest.mark.parametrize("fl_gamma", [0.0, 1.5])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_parity_with_reference(oracle, nc, fl_gamma, label_smoothing):
    model = FakeModel(nc)
    hyp = base_hyp(fl_gamma=fl_gamma, label_smoothing=label_smoothing)
    targets = make_targets(nc)
    preds = make_preds(nc)
    ours, ours_parts = yolo_loss(model, hyp)(preds, targets)
    g_ours = torch.autograd.grad(ours, preds)
    ref, ref_parts = reference_loss(oracle, model, {k: v for k, v in hyp.items() if not k.startswith("tfl")},
                                    preds, targets)
    g_ref = torch.autograd.grad(ref, preds)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=0)
    torch.testing.assert_close(ours_parts, ref_parts, rtol=1e-4, atol=1e-9)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.oracle
def test_loss_parity_p2_and_empty_batch(oracle):
    strides = (4, 8, 16, 32)
    model = FakeModel(3, strides)
    for targets in (make_targets(3), torch.zeros((0, 6))):
        preds = make_preds(3, strides=strides)
        ours = yolo_loss(model, base_hyp())(preds, targets)
        ref = reference_loss(oracle, model, base_hyp(), preds, targets)
        torch.testing.assert_close(ours[0], ref[0], rtol=1e-4, atol=0)
        torch.testing.assert_close(ours[1], ref[1], rtol=1e-4, atol=1e-9)


def test_model_hyp_fallback_and_gains():
    model = FakeModel(3)
    model.hyp = base_hyp()
    preds, targets = make_preds(3), make_targets(3)
    a = yolo_loss(model)(preds, targets)[1]
    b = yolo_loss(model, load_hyp("hyp.scratch-low.yaml"))(preds, targets)[1]
    torch.testing.assert_close(a, b)
    hyp = load_hyp()
    assert loss_gains(hyp, nl=3, nc=80, imgsz=640) == pytest.approx((0.05, 1.0, 0.5))
    assert loss_gains(hyp, nl=4, nc=8, imgsz=320) == pytest.approx((0.0375, 0.1875, 0.0375))
    scaled = ComputeLoss(model, hyp, gains=(0.1, 2.0, 1.0))(preds, targets)[1]
    torch.testing.assert_close(scaled, a * torch.tensor([2.0, 2.0, 2.0]))
    # imgsz= derives the gains from the hyp and the model (3 levels, 3 classes) as train.py scales them
    derived = ComputeLoss(model, hyp, imgsz=320)
    assert derived.gains == loss_gains(hyp, nl=3, nc=3, imgsz=320) == pytest.approx((0.05, 0.25, 0.01875))
    torch.testing.assert_close(derived(preds, targets)[1], a * torch.tensor([1.0, 0.25, 0.0375]))
    with pytest.raises(TypeError, match="exactly one of imgsz"):
        ComputeLoss(model, hyp)  # the unscaled hyp values are never used by accident
    with pytest.raises(TypeError, match="exactly one of imgsz"):
        ComputeLoss(model, hyp, imgsz=640, gains=(1.0, 1.0, 1.0))


def test_focal_bce_equals_torchvision_sigmoid_focal_loss():
    g = torch.Generator().manual_seed(1)
    logits, t = torch.randn(50, 7, generator=g), (torch.rand(50, 7, generator=g) > 0.7).float()
    ours = focal_bce_with_logits(logits, t, gamma=1.5, alpha=0.25)
    ref = torchvision.ops.sigmoid_focal_loss(logits, t, alpha=0.25, gamma=1.5, reduction="none")
    torch.testing.assert_close(ours, ref)


# --- Tiny Focal Loss ------------------------------------------------------------------------------------------


def two_target_batch():
    """One 8x8 px target and one 160x120 px target in different images (no shared cells)."""
    return torch.tensor([[0, 1, 0.3, 0.3, 8 / IMGSZ, 8 / IMGSZ], [1, 0, 0.5, 0.5, 160 / IMGSZ, 120 / IMGSZ]])


def test_tfl_k_infinite_or_huge_reproduces_baseline():
    model, preds, targets = FakeModel(3), make_preds(3), make_targets(3)
    base = yolo_loss(model, base_hyp())(preds, targets)
    for k in (1e6, 1e9):
        tfl = yolo_loss(model, base_hyp(tfl=True, tfl_k=k))(preds, targets)
        torch.testing.assert_close(tfl[0], base[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(tfl[1], base[1], rtol=1e-6, atol=0)


def test_tfl_box_gradient_ratio_equals_weight():
    model, targets = FakeModel(3), two_target_batch()
    loss_off = yolo_loss(model, base_hyp())
    loss_on = yolo_loss(model, base_hyp(tfl=True, tfl_k=1.6))
    preds = make_preds(3, bs=2)
    g_off = torch.autograd.grad(loss_off(preds, targets)[0], preds)
    g_on = torch.autograd.grad(loss_on(preds, targets)[0], preds)
    w_tiny = math.exp(-1.6 * 64 / 1024) + 1
    w_big = math.exp(-1.6 * 160 * 120 / 1024) + 1
    for lvl, m in enumerate(loss_on.build_targets(preds, targets)):
        for b, a, gj, gi, t in zip(m.b, m.a, m.gj, m.gi, m.t):
            off, on = g_off[lvl][b, a, gj, gi, :4], g_on[lvl][b, a, gj, gi, :4]
            w = w_tiny if t == 0 else w_big
            torch.testing.assert_close(on, off * w, rtol=1e-5, atol=1e-12)
    assert sum(m.n for m in loss_on.build_targets(preds, targets)) > 0


def test_tfl_changes_only_positive_objectness_cells():
    model, targets = FakeModel(3), two_target_batch()
    preds = make_preds(3, bs=2)
    off = yolo_loss(model, base_hyp())
    on = yolo_loss(model, base_hyp(tfl=True, tfl_terms=["obj"]))
    g_off = torch.autograd.grad(off(preds, targets)[0], preds)
    g_on = torch.autograd.grad(on(preds, targets)[0], preds)
    changed = 0
    for lvl, m in enumerate(on.build_targets(preds, targets)):
        positive = torch.zeros(g_on[lvl].shape[:4], dtype=torch.bool)
        positive[m.b, m.a, m.gj, m.gi] = True
        diff = (g_on[lvl][..., 4] - g_off[lvl][..., 4]).abs() > 1e-12
        assert not (diff & ~positive).any(), "a negative cell's objectness gradient changed"
        changed += int(diff[positive].sum())
        torch.testing.assert_close(g_on[lvl][..., :4], g_off[lvl][..., :4])  # box untouched: term not selected
        torch.testing.assert_close(g_on[lvl][..., 5:], g_off[lvl][..., 5:])
    assert changed > 0  # the tiny target's positive cells (weight 1.90) did change


def test_tfl_shared_cell_takes_largest_weight():
    """Two targets whose centres fall in the same cell: the objectness weight is the tinier target's."""
    model = FakeModel(3)
    targets = torch.tensor([[0, 0, 0.51, 0.51, 6 / IMGSZ, 8 / IMGSZ], [0, 1, 0.51, 0.51, 10 / IMGSZ, 12 / IMGSZ]])
    loss = yolo_loss(model, base_hyp(tfl=True))
    preds = make_preds(3, bs=1)
    weights = loss.target_weights(preds, targets)
    m = loss.build_targets(preds, targets)[0]
    shape = preds[0].shape[:4]
    wmap = weight_positive_cells(torch.ones(shape.numel()), m.cell, weights[m.t]).view(shape)  # loss 1 -> the weights
    cell = (0, m.a[0], m.gj[0], m.gi[0])
    shared = (m.a == cell[1]) & (m.gj == cell[2]) & (m.gi == cell[3])
    assert set(m.t[shared].tolist()) == {0, 1}, "fixture must put both targets in one cell"
    assert wmap[cell].item() == pytest.approx(max(weights.tolist()))
    assert wmap[cell].item() == pytest.approx(math.exp(-1.6 * 48 / 1024) + 1)
    assert (wmap == 1).sum() == wmap.numel() - len(set(zip(m.a.tolist(), m.gj.tolist(), m.gi.tolist())))


def test_tfl_norm_mean_keeps_average_weight_one():
    """All targets the same size: 'mean' normalisation gives the baseline; 'sum' scales each term by w."""
    model = FakeModel(3)
    targets = torch.tensor([[0, 0, 0.3, 0.3, 16 / IMGSZ, 16 / IMGSZ], [1, 2, 0.6, 0.4, 16 / IMGSZ, 16 / IMGSZ]])
    preds = make_preds(3, bs=2)
    base = yolo_loss(model, base_hyp())(preds, targets)[1]
    mean = yolo_loss(model, base_hyp(tfl=True, tfl_norm="mean"))(preds, targets)[1]
    torch.testing.assert_close(mean, base, rtol=1e-6, atol=0)
    w = math.exp(-1.6 * 256 / 1024) + 1
    summed = yolo_loss(model, base_hyp(tfl=True, tfl_terms=["box", "cls"]))(preds, targets)[1]
    torch.testing.assert_close(summed[[0, 2]], base[[0, 2]] * w, rtol=1e-5, atol=0)
    torch.testing.assert_close(summed[1], base[1])


def test_tfl_with_degenerate_targets_is_finite():
    model = FakeModel(3)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.0, 0.0], [0, 1, 0.2, 0.2, 1e-6, 0.3], [0, 2, 0.7, 0.7, 0.01, 0.01]])
    for box_loss in ("ciou", "eiou", "focal_eiou", "nwd", "giou"):
        preds = make_preds(3, bs=1)
        loss, parts = yolo_loss(model, base_hyp(tfl=True, box_loss=box_loss))(preds, targets)
        loss.backward()
        assert torch.isfinite(parts).all(), box_loss
        assert all(torch.isfinite(p.grad).all() for p in preds), box_loss


def test_focal_eiou_composes_with_tfl_by_multiplying():
    model, targets = FakeModel(3), two_target_batch()
    preds = make_preds(3, bs=2)
    plain = yolo_loss(model, base_hyp(box_loss="focal_eiou"))
    with_tfl = yolo_loss(model, base_hyp(box_loss="focal_eiou", tfl=True, tfl_terms=["box"]))
    g_plain = torch.autograd.grad(plain(preds, targets)[0], preds)
    g_tfl = torch.autograd.grad(with_tfl(preds, targets)[0], preds)
    weights = with_tfl.target_weights(preds, targets)
    for lvl, m in enumerate(with_tfl.build_targets(preds, targets)):
        for b, a, gj, gi, t in zip(m.b, m.a, m.gj, m.gi, m.t):
            torch.testing.assert_close(g_tfl[lvl][b, a, gj, gi, :4], g_plain[lvl][b, a, gj, gi, :4] * weights[t],
                                       rtol=1e-5, atol=1e-12)


def test_nwd_constant_converted_per_level():
    model = FakeModel(3)
    loss = yolo_loss(model, base_hyp(box_loss="nwd", nwd_c=12.8))
    pred = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    target = torch.tensor([[4.0, 2.0, 22.0, 20.0]])
    values = [fn(pred / s, target / s).loss for fn, s in zip(loss.box_loss_fns, loss.strides)]
    for v in values[1:]:
        torch.testing.assert_close(v, values[0])


def test_tfl_has_zero_inference_cost():
    """TFL lives in the loss only: the model's parameters, state_dict and eval outputs are untouched."""
    from models.yolo import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", nc=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out_before = model(x)[0]
    model.train()
    loss_fn = yolo_loss(model, base_hyp(tfl=True))
    with torch.no_grad():
        loss_fn(model(x), torch.tensor([[0, 1, 0.5, 0.5, 0.1, 0.1]]))
    model.load_state_dict(before)  # undo the BatchNorm statistics the train-mode forward updated
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], out_before, rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert set(model.state_dict()) == set(before)


def _explicit_cell_weighting(loss, cell, w, divisor=None):
    """The definition: a weight map of ones, each positive cell the largest (w / divisor) of its matches."""
    wn = w if divisor is None else w / divisor
    wmap = torch.ones_like(loss).scatter_reduce(0, cell, wn, reduce="amax", include_self=False)
    return loss * wmap


@pytest.mark.parametrize("divisor", [None, 1.37])
def test_weight_positive_cells_equals_weight_map(divisor):
    """Shared cells, weights of exactly 1 (piecewise big objects) and a divisor that pushes weights under 1:
    values and gradients equal the explicit ones-map formulation."""
    g = torch.Generator().manual_seed(0)
    loss = torch.rand(500, generator=g).requires_grad_()
    cell = torch.randint(0, 60, (200,), generator=g)  # many duplicates
    w = torch.where(torch.rand(200, generator=g) < 0.3, torch.ones(200), 1 + torch.rand(200, generator=g))
    d = None if divisor is None else torch.tensor(divisor)
    ours, ref = weight_positive_cells(loss, cell, w, d), _explicit_cell_weighting(loss, cell, w, d)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    upstream = torch.rand(500, generator=g)
    (g_ours,) = torch.autograd.grad((ours * upstream).sum(), loss)
    (g_ref,) = torch.autograd.grad((ref * upstream).sum(), loss)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-9)
    untouched = torch.ones(500, dtype=torch.bool)
    untouched[cell] = False
    assert torch.equal(ours[untouched], loss[untouched])


@pytest.mark.parametrize("norm", ["sum", "mean"])
def test_compute_loss_objectness_weighting_matches_weight_map(norm, monkeypatch):
    """ComputeLoss's TFL objectness term (mixed sizes, so 'mean' pushes some weights under 1) equals the same loss
    computed with the explicit ones-map weighting."""
    import utils.loss.compute_loss as loss_module

    model = FakeModel(3)
    g = torch.Generator().manual_seed(3)
    n = 40
    wh = torch.exp(torch.empty(n, 2).uniform_(-4.0, -1.2, generator=g))
    targets = torch.cat((torch.randint(0, 2, (n, 1), generator=g).float(), torch.randint(0, 3, (n, 1), generator=g),
                         wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh), wh), 1)
    preds = make_preds(3, bs=2)
    hyp = base_hyp(tfl=True, tfl_terms=["obj"], tfl_norm=norm)
    ours = yolo_loss(model, hyp)(preds, targets)[1]

    def explicit(loss, cell, w, divisor=None, overwrite=False):  # overwrite: only saves a copy
        return _explicit_cell_weighting(loss, cell, w, divisor)

    monkeypatch.setattr(loss_module, "weight_positive_cells", explicit)
    ref = yolo_loss(model, hyp)(preds, targets)[1]
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0)
    assert ours[1] != yolo_loss(model, base_hyp())(preds, targets)[1][1]  # the weighting did something
