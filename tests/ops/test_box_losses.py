"""Tests for utils/ops/box_losses.py and utils/ops/box_geometry.py: hand-computed values, gradients, edge cases,
oracle."""

import inspect
import math
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import utils.config.hyp as hyp_module
import utils.loss.compute_loss as loss_module
from tests.helpers import FakeModel, make_preds, make_targets
from utils.ops.box_geometry import box_geometry
from utils.ops.box_losses import (
    BOX_LOSSES,
    BoxLoss,
    BoxLossDef,
    HypParam,
    ciou_loss,
    diou_loss,
    eiou_loss,
    focal_eiou_loss,
    focal_eiou_star_loss,
    focal_eiou_v1_loss,
    focal_l1,
    get_box_loss,
    giou_loss,
    iou_loss,
    nwd_loss,
)

T = torch.tensor
D = torch.float64


def boxes(*rows):
    return torch.tensor(rows, dtype=D)


# pred, target pairs: disjoint, nested with the same centre, identical, offset
DISJOINT = boxes([0, 0, 2, 2]), boxes([3, 0, 5, 2])
NESTED = boxes([1, 1, 3, 3]), boxes([0, 0, 4, 4])
IDENTICAL = boxes([1, 2, 5, 8]), boxes([1, 2, 5, 8])
OFFSET = boxes([0, 0, 4, 2]), boxes([1, 1, 3, 4])

# Hand-computed: OFFSET has inter 2, union 8 + 6 - 2 = 12, IoU 1/6, enclosing 4 x 4, centres (2, 1) and (2, 2.5).
OFF_IOU = 1 / 6
OFF_DIOU = 1 - OFF_IOU + 2.25 / 32
OFF_EIOU = OFF_DIOU + (4 - 2) ** 2 / 16 + (2 - 3) ** 2 / 16
_v = 4 / math.pi**2 * (math.atan(2 / 3) - math.atan(4 / 2)) ** 2
OFF_CIOU = OFF_DIOU + _v * _v / (_v - OFF_IOU + 1)


def focal_l1_ref(x: float, beta: float = 0.8) -> float:
    a = math.e * beta
    if x == 0:
        return 0.0
    if x <= 1:
        return -a * x**2 * (2 * math.log(beta * x) - 1) / 4
    return -a * math.log(beta) * x + (2 * a * math.log(beta) + a) / 4


EXPECTED = {  # name -> (disjoint, nested, identical, offset)
    "iou": (1.0, 0.75, 0.0, 1 - OFF_IOU),
    "giou": (1 + (10 - 8) / 10, 0.75, 0.0, 1 - OFF_IOU + (16 - 12) / 16),
    "diou": (1 + 9 / 29, 0.75, 0.0, OFF_DIOU),
    "ciou": (1 + 9 / 29, 0.75, 0.0, OFF_CIOU),
    "eiou": (1 + 9 / 29, 0.75 + 4 / 16 + 4 / 16, 0.0, OFF_EIOU),
    "focal_eiou": (math.sqrt(1e-7) * (1 + 9 / 29), 0.5 * 1.25, 0.0, math.sqrt(OFF_IOU) * OFF_EIOU),
    "focal_eiou_star": (None, -(0.75**0.5) * math.log(0.25) * 1.25, 0.0,
                        -((1 - OFF_IOU) ** 0.5) * math.log(OFF_IOU) * OFF_EIOU),
    "focal_eiou_v1": (focal_l1_ref(1 + 9 / 29), focal_l1_ref(1.25), 0.0, focal_l1_ref(OFF_EIOU)),
    "nwd": (1 - math.exp(-3 / 12.8), 1 - math.exp(-math.sqrt(2) / 12.8), 0.0, 1 - math.exp(-math.sqrt(3.5) / 12.8)),
}


@pytest.mark.parametrize("name", list(BOX_LOSSES))
def test_hand_computed_values(name):
    fn = get_box_loss(name)
    for (pred, target), want in zip((DISJOINT, NESTED, IDENTICAL, OFFSET), EXPECTED[name]):
        out = fn(pred, target)
        assert isinstance(out, BoxLoss) and out.loss.shape == (1,) and out.iou.shape == (1,)
        if want is not None:
            assert out.loss.item() == pytest.approx(want, abs=1e-6), (name, pred, target)
    # IoU of the four cases: 0, 4 / 16, 1, 1 / 6
    ious = [fn(p, t).iou.item() for p, t in (DISJOINT, NESTED, IDENTICAL, OFFSET)]
    assert ious == pytest.approx([0, 0.25, 1, OFF_IOU], abs=1e-6)


def test_focal_eiou_star_disjoint_is_finite_and_large():
    out = focal_eiou_star_loss(*DISJOINT)
    # IoU clamped to eps: weight = -(1 - eps)^0.5 * log(eps) ~ 16.1, EIoU = 1 + 9/29
    assert out.weight.item() == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert out.loss.item() == pytest.approx(-math.log(1e-7) * (1 + 9 / 29), rel=1e-6)


def test_weights_only_for_focal_losses():
    for name in BOX_LOSSES:
        out = get_box_loss(name)(*OFFSET)
        assert (out.weight is not None) == (name in ("focal_eiou", "focal_eiou_star")), name
    out = focal_eiou_loss(*OFFSET, gamma=0.5)
    assert out.weight.item() == pytest.approx(math.sqrt(OFF_IOU), abs=1e-7)
    assert out.loss.item() == pytest.approx(out.weight.item() * OFF_EIOU, abs=1e-7)


def grad_of(fn, pred, target, **kw):
    p = pred.clone().requires_grad_(True)
    fn(p, target, **kw).loss.sum().backward()
    return p.grad


def test_nested_same_centre_giou_diou_reduce_to_iou_but_eiou_moves_width():
    pred, target = NESTED
    g_iou = grad_of(iou_loss, pred, target)
    torch.testing.assert_close(grad_of(giou_loss, pred, target), g_iou, atol=1e-9, rtol=0)
    torch.testing.assert_close(grad_of(diou_loss, pred, target), g_iou, atol=1e-9, rtol=0)
    # CIoU's aspect term is 0 (same aspect ratio) and so is its gradient: CIoU == DIoU here
    torch.testing.assert_close(grad_of(ciou_loss, pred, target), g_iou, atol=1e-9, rtol=0)
    # EIoU's width/height terms add a gradient growing the box: -d/dx1 and +d/dx2 of (w - w_gt)^2 / w_c^2
    extra = grad_of(eiou_loss, pred, target) - g_iou
    assert extra[0, 0].item() == pytest.approx(2 * (2 - 4) / 16 * -1) and extra[0, 2].item() == pytest.approx(-0.25)
    assert extra[0, 1].item() == pytest.approx(0.25) and extra[0, 3].item() == pytest.approx(-0.25)


def test_ciou_v_zero_for_same_aspect_boxes():
    pred, target = boxes([0, 0, 2, 1], [5, 5, 9, 7]), boxes([1, 0, 7, 3], [0, 0, 2, 1])  # all 2:1
    torch.testing.assert_close(ciou_loss(pred, target).loss, diou_loss(pred, target).loss, atol=1e-12, rtol=0)
    assert not torch.allclose(eiou_loss(pred, target).loss, diou_loss(pred, target).loss)


def test_focal_l1_gradient_peak_and_continuity():
    for beta in (1 / math.e, 0.5, 0.8, 1.0):
        x = torch.linspace(1e-4, 3, 30001, dtype=D, requires_grad=True)
        focal_l1(x, beta).sum().backward()
        g = x.grad
        x_star = 1 / (math.e * beta)
        i = int(g.argmax())
        assert g.max().item() == pytest.approx(1.0, abs=1e-6)
        assert x[i].item() == pytest.approx(min(x_star, 1.0), abs=2e-4)
        # gradient formula: -alpha x ln(beta x) on (0, 1], -alpha ln(beta) above
        alpha = math.e * beta
        xd = x.detach()
        want = torch.where(xd <= 1, -alpha * xd * torch.log(beta * xd), torch.full_like(xd, -alpha * math.log(beta)))
        torch.testing.assert_close(g, want, atol=1e-9, rtol=1e-9)
        # continuous at 1
        lo, hi = focal_l1(T([1.0], dtype=D), beta), focal_l1(T([1.0 + 1e-9], dtype=D), beta)
        assert (hi - lo).abs().item() < 1e-8
        assert lo.item() == pytest.approx(focal_l1_ref(1.0, beta))
    x = torch.zeros(3, dtype=D, requires_grad=True)
    y = focal_l1(x)
    y.sum().backward()
    assert y.tolist() == [0, 0, 0] and x.grad.tolist() == [0, 0, 0]
    assert focal_l1(T([-0.5], dtype=D)).item() == pytest.approx(focal_l1_ref(0.5))  # applied to |x|


def test_focal_eiou_gamma0_equals_eiou():
    pred, target = random_pairs(64, seed=3)
    torch.testing.assert_close(focal_eiou_loss(pred, target, gamma=0.0).loss, eiou_loss(pred, target).loss)
    assert torch.all(focal_eiou_loss(pred, target, gamma=0.0).weight == 1)


def test_focal_eiou_detached_gradient_is_weight_times_eiou_gradient():
    pred, target = random_pairs(32, seed=4)
    iou = box_geometry(pred, target).iou.clamp(min=1e-7)
    g_focal = grad_of(focal_eiou_loss, pred, target, gamma=0.5)
    g_eiou = grad_of(eiou_loss, pred, target)
    torch.testing.assert_close(g_focal, iou[:, None] ** 0.5 * g_eiou)
    g_attached = grad_of(focal_eiou_loss, pred, target, gamma=0.5, detach_weight=False)
    assert not torch.allclose(g_attached, g_focal)  # the IoU^gamma factor now contributes too


def random_pairs(n: int, seed: int, tiny: bool = False, dtype=D) -> tuple[torch.Tensor, torch.Tensor]:
    """Random xyxy targets and overlapping/offset predictions; ``tiny`` gives 1-4 unit sides."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (1.0, 4.0) if tiny else (2.0, 60.0)
    c = torch.rand(n, 2, generator=g, dtype=D) * 100
    wh = lo + torch.rand(n, 2, generator=g, dtype=D) * (hi - lo)
    target = torch.cat((c - wh / 2, c + wh / 2), 1)
    c2 = c + (torch.rand(n, 2, generator=g, dtype=D) - 0.5) * wh * 1.5
    wh2 = wh * (0.4 + 1.4 * torch.rand(n, 2, generator=g, dtype=D))
    pred = torch.cat((c2 - wh2 / 2, c2 + wh2 / 2), 1)
    return pred.to(dtype), target.to(dtype)


GRADCHECK_KW = {"ciou": {"detach_alpha": False}, "focal_eiou": {"detach_weight": False},
                "focal_eiou_star": {"detach_weight": False}}


@pytest.mark.parametrize("name", list(BOX_LOSSES))
def test_gradcheck(name):
    pred, target = random_pairs(6, seed=1)
    fn, kw = BOX_LOSSES[name].fn, GRADCHECK_KW.get(name, {})
    p, t = pred.clone().requires_grad_(True), target.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, **kw).loss, (p, t), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", list(BOX_LOSSES))
def test_degenerate_and_empty_inputs_are_finite(name):
    fn = get_box_loss(name)
    pred = boxes([0, 0, 0, 0], [5, 5, 5, 5], [3, 3, 1, 1], [1, 2, 5, 8], [0, 0, 2, 2], [2, 2, 2, 6], [4, 4, 2, 6])
    target = boxes([0, 0, 0, 0], [1, 1, 3, 3], [0, 0, 2, 2], [1, 2, 5, 8], [4, 4, 2, 1], [2, 2, 2, 6], [0, 0, 1, 1])
    for dtype in (torch.float32, D):
        p = pred.to(dtype).requires_grad_(True)
        t = target.to(dtype).requires_grad_(True)
        out = fn(p, t)
        assert out.loss.shape == (7,) and torch.isfinite(out.loss).all(), out.loss
        out.loss.sum().backward()
        assert torch.isfinite(p.grad).all() and torch.isfinite(t.grad).all(), (p.grad, t.grad)
        if out.weight is not None:
            assert torch.isfinite(out.weight).all() and out.weight.sum() > 0
    p = torch.zeros(0, 4, requires_grad=True)
    out = fn(p, torch.zeros(0, 4))
    assert out.loss.shape == (0,) and out.iou.shape == (0,)
    out.loss.sum().backward()
    assert p.grad.shape == (0, 4)


def test_identical_boxes_zero_loss():
    pred, target = random_pairs(16, seed=5)
    for name in BOX_LOSSES:
        assert get_box_loss(name)(target, target).loss.abs().max().item() < 1e-6, name


def test_nwd_scale_invariance_and_buggy_snippet_values():
    pred, target = random_pairs(50, seed=2)
    ref = nwd_loss(pred, target, c=12.8).loss
    for s in (4, 8, 16, 32):
        torch.testing.assert_close(nwd_loss(pred / s, target / s, c=12.8 / s).loss, ref, atol=1e-9, rtol=1e-7)
    # asymmetric sizes, hand-computed: centres (2, 3) and (7, 3); sizes (4, 2) and (2, 6)
    # W2^2 = 25 + ((4 - 2) / 2)^2 + ((2 - 6) / 2)^2 = 30
    out = nwd_loss(boxes([0, 2, 4, 4]), boxes([6, 0, 8, 6]), c=5.0)
    assert out.loss.item() == pytest.approx(1 - math.exp(-math.sqrt(30) / 5))
    # symmetric in its arguments
    torch.testing.assert_close(nwd_loss(target, pred).loss, ref)


def test_get_box_loss_errors():
    with pytest.raises(ValueError, match="unknown box loss 'ciuo'.*giou.*nwd"):
        get_box_loss("ciuo")
    with pytest.raises(ValueError, match="gamma"):
        get_box_loss("focal_eiou", gamma=-0.1)
    with pytest.raises(ValueError, match="beta"):
        get_box_loss("focal_eiou_v1", beta=0.3)
    with pytest.raises(ValueError, match="beta"):
        focal_eiou_v1_loss(*OFFSET, beta=1.01)
    with pytest.raises(ValueError, match="constant c"):
        get_box_loss("nwd", c=0.0)
    with pytest.raises(TypeError, match="unknown box-loss parameter.*'gama'"):
        get_box_loss("focal_eiou", gama=1.0)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        iou_loss(torch.zeros(3, 4), torch.zeros(2, 4))
    # parameters reach the loss they belong to
    p, t = OFFSET
    assert get_box_loss("focal_eiou", gamma=2.0)(p, t).weight.item() == pytest.approx(OFF_IOU**2)
    assert get_box_loss("nwd", c=1.0)(p, t).loss.item() == pytest.approx(1 - math.exp(-math.sqrt(3.5)))
    assert get_box_loss("focal_eiou_v1", beta=1.0)(p, t).loss.item() == pytest.approx(focal_l1_ref(OFF_EIOU, 1.0))


@pytest.mark.oracle
@pytest.mark.parametrize("tiny", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, D])
def test_ciou_matches_yolov5(oracle, tiny, dtype):
    pred, target = random_pairs(2000, seed=7 if tiny else 8, tiny=tiny, dtype=dtype)
    p1, p2 = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    ours = ciou_loss(p1, target).loss
    ref = 1 - oracle.metrics.bbox_iou(p2, target, xywh=False, CIoU=True).squeeze(-1)
    assert (ours - ref).abs().max().item() < 1e-6
    ours.sum().backward()
    ref.sum().backward()
    assert (p1.grad - p2.grad).abs().max().item() < 1e-5 * (1 if dtype == D else 10)
    # and plain IoU / GIoU / DIoU too
    for fn, kw in ((iou_loss, {}), (giou_loss, {"GIoU": True}), (diou_loss, {"DIoU": True})):
        ref = 1 - oracle.metrics.bbox_iou(pred, target, xywh=False, **kw).squeeze(-1)
        assert (fn(pred, target).loss - ref).abs().max().item() < 1e-6, fn.__name__


def test_score_is_the_iou_variant_or_plain_iou():
    pred, target = random_pairs(32, seed=6)
    for name in BOX_LOSSES:
        out = get_box_loss(name)(pred, target)
        want = 1 - out.loss if name in ("iou", "giou", "diou", "ciou") else out.iou
        torch.testing.assert_close(out.score, want, msg=name)
    assert (giou_loss(*DISJOINT).score.item()) == pytest.approx(-0.2)  # GIoU of the disjoint pair is negative


# ---------------------------------------------------------------- registry: parameters from hyperparameters
def test_registry_parameters_are_declared_hyperparameters():
    """Every registered parameter is a keyword of its loss and a declared numeric hyperparameter; the per-stride
    ones are lengths in input px."""
    for name, d in BOX_LOSSES.items():
        accepted = inspect.signature(d.fn).parameters
        for param, (key, per_stride) in d.params.items():
            assert param in accepted, (name, param)
            assert key in hyp_module.SPECS and isinstance(getattr(hyp_module.Hyp(), key), float), (name, key)
            assert per_stride == (hyp_module.SPECS[key].unit == "input px"), (name, key)


def test_bind_reads_the_hyp_and_converts_per_stride():
    h = hyp_module.load_hyp(None, ["nwd_c=16", "focal_eiou_gamma=2", "focal_l1_beta=0.5"])
    assert BOX_LOSSES["nwd"].bind(h, 8.0).keywords == {"c": 2.0}  # 16 input px = 2 cells of stride 8
    assert BOX_LOSSES["nwd"].bind(h, 32.0).keywords == {"c": 0.5}
    assert BOX_LOSSES["focal_eiou"].bind(h, 8.0).keywords == {"gamma": 2.0}
    assert BOX_LOSSES["focal_eiou_star"].bind(h, 32.0).keywords == {"gamma": 2.0}
    assert BOX_LOSSES["focal_eiou_v1"].bind(h, 16.0).keywords == {"beta": 0.5}
    assert BOX_LOSSES["ciou"].bind(h, 8.0).keywords == {}
    p, t = OFFSET
    assert BOX_LOSSES["nwd"].bind(h, 16.0)(p, t).loss.item() == pytest.approx(1 - math.exp(-math.sqrt(3.5)))


def huber_box_loss(pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> BoxLoss:
    """A box loss to register in the test below: Huber loss summed over the four xyxy coordinates."""
    iou = box_geometry(pred, target).iou
    return BoxLoss(F.huber_loss(pred, target, delta=delta, reduction="none").sum(1), iou, None, iou)


def hyp_module_with(declaration: str, monkeypatch) -> types.ModuleType:
    """utils/config/hyp.py with one more field declared at the end of ``Hyp``: the one line a developer would add."""
    src = Path(hyp_module.__file__).read_text(encoding="utf-8")
    anchor = "\n    def __post_init__"
    assert src.count(anchor) == 1
    mod = types.ModuleType("hyp_plus")
    mod.__file__ = hyp_module.__file__
    monkeypatch.setitem(sys.modules, "hyp_plus", mod)  # dataclasses look the module up by name
    exec(compile(src.replace(anchor, "\n" + declaration + anchor), "hyp_plus", "exec"), mod.__dict__)
    return mod


def test_new_box_loss_with_new_hyperparameter_is_declared_in_one_place_each(monkeypatch):
    """One ``hp(...)`` line in Hyp and one registry entry: the key is validated, saved with the run's hyp.yaml,
    settable as an override (``--hyp-set``), and reaches ComputeLoss converted from input px to each level's cells."""
    hp_mod = hyp_module_with('    huber_delta: float = hp(8.0, "Huber box-loss delta", lo=0, open_lo=True, '
                             'unit="input px")', monkeypatch)
    monkeypatch.setitem(BOX_LOSSES, "huber", BoxLossDef(huber_box_loss, {"delta": HypParam("huber_delta", True)}))
    h = hp_mod.load_hyp("hyp.scratch-low.yaml", ["box_loss=huber", "huber_delta=16"])
    assert (h.box_loss, h.huber_delta, hp_mod.Hyp().huber_delta) == ("huber", 16.0, 8.0)
    saved = yaml.safe_load(yaml.safe_dump(h.to_dict()))
    assert saved["huber_delta"] == 16.0 and hp_mod.load_hyp(saved) == h
    assert "| `huber_delta` | `8.0` | > 0 (input px) | Huber box-loss delta |" in hp_mod.markdown_table()
    with pytest.raises(hp_mod.HypError, match=r"^override: hyperparameter 'huber_delta' = 0.0: must be > 0 \(input"):
        hp_mod.load_hyp(None, ["huber_delta=0"])
    with pytest.raises(hp_mod.HypError, match="^override: hyperparameter 'huber_delta' must be a number, got 'x'"):
        hp_mod.load_hyp(None, ["huber_delta=x"])
    with pytest.raises(hp_mod.HypError, match="unknown box loss"):
        hp_mod.load_hyp(None, ["box_loss=hubr"])

    monkeypatch.setattr(loss_module, "hyp_from_model_or_dict", hp_mod.hyp_from_model_or_dict)
    loss = loss_module.ComputeLoss(FakeModel(3), h, imgsz=640)
    assert [fn.keywords for fn in loss.box_loss_fns] == [{"delta": 2.0}, {"delta": 1.0}, {"delta": 0.5}]
    preds, targets = make_preds(3), make_targets(3)
    lbox = loss(preds, targets)[1][0]
    lbox_wide = loss_module.ComputeLoss(FakeModel(3), h.replace(huber_delta=1e4), imgsz=640)(preds, targets)[1][0]
    assert torch.isfinite(lbox) and lbox < lbox_wide  # the value reaches the loss: delta 16 px clips large errors
