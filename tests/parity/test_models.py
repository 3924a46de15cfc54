"""Tests for models/common.py and models/yolo.py: known sizes, hand-decoded outputs, YAML errors, fusion, and
parity with the YOLOv5 v7.0 reference (same state_dict keys, same outputs, same initialisation for a seed)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from torch import nn

from models.common import C3, SPPF, Bottleneck, Concat, Conv, autopad
from models.yolo import MODELS_DIR, Detect, DetectionModel, Model, parse_model


def _cfg(name: str) -> dict:
    with open(MODELS_DIR / name, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def v5n() -> DetectionModel:
    return Model("yolov5n.yaml")


# ----------------------------------------------------------------------------------------------- blocks
def test_autopad():
    assert autopad(3) == 1 and autopad(6, 2) == 2 and autopad(1) == 0 and autopad([3, 5]) == [1, 2]
    assert autopad(3, d=2) == 2  # effective kernel 5


def test_blocks_shapes_and_bn_settings():
    x = torch.rand(2, 16, 20, 24)
    c = Conv(16, 32, 3, 2)
    assert c(x).shape == (2, 32, 10, 12)
    assert c.bn.eps == 1e-3 and c.bn.momentum == 0.03 and c.conv.bias is None
    assert Bottleneck(16, 16)(x).shape == x.shape and Bottleneck(16, 16).add and not Bottleneck(16, 8).add
    assert C3(16, 24, n=2)(x).shape == (2, 24, 20, 24)
    assert SPPF(16, 8)(x).shape == (2, 8, 20, 24)
    assert Concat(1)([x, x]).shape == (2, 32, 20, 24)


def test_sppf_equals_parallel_pools():
    """SPPF with k=5 equals concatenating max-pools of sizes 5, 9, 13 (SPP)."""
    m = SPPF(8, 8, 5).eval()
    x = torch.randn(1, 8, 17, 15)
    with torch.no_grad():
        y = m.cv1(x)
        pools = [y] + [nn.functional.max_pool2d(y, k, 1, k // 2) for k in (5, 9, 13)]
        torch.testing.assert_close(m(x), m.cv2(torch.cat(pools, 1)))


# ----------------------------------------------------------------------------------------------- building
def test_known_sizes_and_strides(v5n):
    assert _n_params(v5n) == 1_872_157
    assert _n_params(Model("yolov5s")) == 7_235_389
    assert v5n.stride.tolist() == [8.0, 16.0, 32.0]
    det = v5n.model[-1]
    assert isinstance(det, Detect) and (det.nc, det.no, det.nl, det.na) == (80, 85, 3, 3)
    # anchors in grid cells: P3 (10,13)/8, P5 (373,326)/32
    torch.testing.assert_close(det.anchors[0, 0], torch.tensor([1.25, 1.625]))
    torch.testing.assert_close(det.anchors[2, 2], torch.tensor([373 / 32, 326 / 32]))
    assert v5n.save == [4, 6, 10, 14, 17, 20, 23]
    assert v5n.names == {i: f"class{i}" for i in range(80)}
    assert [m.i for m in v5n.model] == list(range(25)) and v5n.model[12].f == [-1, 6]


def test_parse_model_medium_size():
    """yolov5m layer stack without building the whole model (value measured on the v7.0 reference)."""
    layers, save = parse_model(_cfg("yolov5m.yaml"), [3])
    assert _n_params(layers) == 21_190_557 and save == [4, 6, 10, 14, 17, 20, 23]


def test_p2_strides_and_placeholder_anchors():
    m = Model("yolov5n-p2.yaml", nc=3)
    assert m.stride.tolist() == [4.0, 8.0, 16.0, 32.0]
    det = m.model[-1]
    assert det.anchors.shape == (4, 3, 2) and det.nc == 3
    # 'anchors: 3' gives placeholder pixel anchors [0..5] per level, then divided by each stride
    torch.testing.assert_close(det.anchors[:, 2], torch.tensor([[4.0, 5.0]]) / m.stride.view(-1, 1))
    assert len(m(torch.zeros(1, 3, 64, 64))) == 4


def test_train_and_eval_output_shapes(v5n):
    m = copy.deepcopy(v5n)
    x = torch.rand(2, 3, 64, 96)
    out = m(x)
    assert [tuple(o.shape) for o in out] == [(2, 3, 8, 12, 85), (2, 3, 4, 6, 85), (2, 3, 2, 3, 85)]
    m.eval()
    with torch.no_grad():
        pred, raw = m(x)
    assert pred.shape == (2, 3 * (96 + 24 + 6), 85) and len(raw) == 3
    assert ((pred[..., 4:] >= 0) & (pred[..., 4:] <= 1)).all()


def test_cfg_sources_and_overrides(caplog):
    d = _cfg("yolov5n.yaml")
    d_before = copy.deepcopy(d)
    caplog.set_level("INFO")
    m = Model(d, nc=3)
    assert d == d_before, "the caller's dict must not change"
    assert m.yaml["nc"] == 3 and m.model[-1].no == 8 and m.yaml["ch"] == 3
    assert "Overriding model.yaml nc=80 with nc=3" in caplog.text
    assert Model(MODELS_DIR / "yolov5n.yaml").yaml_file == "yolov5n.yaml"
    m4 = Model("yolov5n", ch=1, anchors=2)  # anchors as a count: 2 placeholder anchors per level
    assert m4.model[-1].na == 2 and m4.model[0].conv.in_channels == 1


def test_detect_decoding_by_hand():
    """Zero weights and chosen biases: every output is known in closed form (input pixels)."""
    det = Detect(nc=2, anchors=[[10, 13, 16, 30]], ch=[4])
    det.stride.fill_(8.0)
    det.anchors /= 8.0
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    with torch.no_grad():
        det.m[0].weight.zero_()
        b = torch.zeros(2, 7)
        b[:, 0], b[:, 1], b[:, 2], b[:, 3], b[:, 4] = logit(0.75), 0.0, logit(0.25), 0.0, logit(0.9)
        det.m[0].bias.copy_(b.view(-1))
    det.eval()
    pred, raw = det([torch.randn(1, 4, 2, 3)])
    assert pred.shape == (1, 2 * 2 * 3, 7) and raw[0].shape == (1, 2, 2, 3, 7)
    p = pred.view(2, 2, 3, 7)  # (anchor, y, x, out)
    a, y, x = 1, 1, 2
    expected = torch.tensor([(x + 1.0) * 8, (y + 0.5) * 8, 0.25 * 16, 1.0 * 30, 0.9, 0.5, 0.5])
    torch.testing.assert_close(p[a, y, x], expected)
    det.train()
    assert isinstance(det([torch.randn(1, 4, 2, 3)]), list)


def test_bias_initialisation_deltas(v5n):
    m = copy.deepcopy(v5n)
    det = m.model[-1]
    before = [mi.bias.detach().clone().view(det.na, -1) for mi in det.m]
    m._initialize_biases()
    for b0, mi, s in zip(before, det.m, (8, 16, 32)):
        d = mi.bias.detach().view(det.na, -1) - b0
        torch.testing.assert_close(d[:, 4], torch.full((3,), math.log(8 / (640 / s) ** 2)))
        torch.testing.assert_close(d[:, 5:], torch.full((3, 80), math.log(0.6 / (80 - 0.99999))))
        assert d[:, :4].abs().max() == 0


def test_fuse_keeps_eval_outputs(v5n):
    m = copy.deepcopy(v5n)
    g = torch.Generator().manual_seed(1)
    for bn in m.modules():  # non-trivial statistics so the fold is really tested
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
    m.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)[0]
        fused = m.fuse()
        out = fused(x)[0]
    assert not any(isinstance(k, nn.BatchNorm2d) for k in fused.modules())
    assert (out - ref).abs().max().item() < 1e-4


def test_info_and_flops(v5n):
    n_l, n_p, n_g, gf = v5n.info()
    assert n_p == n_g == 1_872_157 and n_l == len(list(v5n.modules()))
    assert 4.0 < gf < 5.0  # v7.0 reports 4.5 GFLOPs for yolov5n at 640
    assert v5n.info(imgsz=320)[3] == pytest.approx(gf / 4)
    assert v5n.training, "info() must restore train mode"


def test_tta_shape(v5n):
    m = copy.deepcopy(v5n).eval()
    with torch.no_grad():
        pred, extra = m(torch.rand(1, 3, 64, 64), augment=True)
    # scale 1 without its P5 level (64+16 cells), scale 0.83 padded to 64 px (84 cells), scale 0.67 -> 64 px
    # without its P3 level (16+4 cells); 3 anchors each
    assert extra is None and pred.shape == (1, 3 * (80 + 84 + 20), 85)


# ----------------------------------------------------------------------------------------------- errors
def _bad(mutate) -> dict:
    d = _cfg("yolov5n.yaml")
    mutate(d)
    return d


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: d["backbone"][3].__setitem__(2, "Foo"), r"layer 3: unknown module 'Foo'"),
        (lambda d: d.pop("head"), r"missing key\(s\) \['head'\]"),
        (lambda d: d.pop("nc"), r"missing key\(s\) \['nc'\]"),
        (lambda d: d.__setitem__("nc", -2), r"'nc' must be a positive integer"),
        (lambda d: d.__setitem__("activation", "nn.ReLU()"), r"unknown key\(s\) \['activation'\]"),
        (lambda d: d.__setitem__("anchors", [[10, 13, 16]]), r"'anchors' must be"),
        (lambda d: d["head"][2].__setitem__(0, [-1, 16]), r"layer 12 \(Concat\): 'from' index 16 out of range"),
        (lambda d: d["head"][2].__setitem__(0, -1), r"layer 12 \(Concat\): 'from' must be a list"),
        (lambda d: d["backbone"][1].__setitem__(3, ["abc"]), r"layer 1 \(Conv\): first argument must be"),
        (lambda d: d["backbone"][1].__setitem__(3, [64, 3, 2, 1, 1, 1, True, 5, 6]), r"layer 1 \(Conv\): cannot build"),
        (lambda d: d["backbone"][1].__setitem__(1, 0), r"layer 1 \(Conv\): 'number' must be"),
        (lambda d: d["backbone"].__setitem__(2, [-1, 3, "C3"]), r"layer 2: expected \[from, number, module, args\]"),
        (lambda d: d["head"][2].__setitem__(0, [-1, 4]), r"layer 12 .*failed on a dry run"),  # 16 vs 8 stride maps
        (lambda d: d["head"][-1].__setitem__(0, [17, 20]), r"layer 24 \(Detect\): 3 anchor levels but 2 inputs"),
        (lambda d: d["head"].pop(), r"the last layer must be Detect"),
    ],
)
def test_bad_yaml_errors_name_the_problem(mutate, pattern):
    with pytest.raises(ValueError, match=pattern):
        Model(_bad(mutate))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        Model("no_such_model.yaml")


# ----------------------------------------------------------------------------------------------- oracle parity
def _reference_cfg(oracle, name: str) -> dict:
    if name == "yolov5n-p2":
        with open(oracle.root / "models" / "hub" / "yolov5-p2.yaml", encoding="utf-8") as f:
            d = yaml.safe_load(f)
        d["depth_multiple"], d["width_multiple"] = 0.33, 0.25
        return d
    with open(oracle.root / "models" / f"{name}.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.mark.oracle
@pytest.mark.parametrize("name, nc", [("yolov5n", 3), ("yolov5n", 80), ("yolov5s", 3), ("yolov5s", 80),
                                      ("yolov5n-p2", 3)])
def test_parity_with_reference(oracle, name, nc):
    torch.manual_seed(0)
    ref = oracle.yolo.Model(_reference_cfg(oracle, name), nc=nc)
    torch.manual_seed(0)
    ours = Model(f"{name}.yaml", nc=nc)
    assert ref.stride.tolist() == ours.stride.tolist()
    sd = copy.deepcopy(ref.state_dict())
    # same seed -> same initial weights, bias priors and BatchNorm statistics
    ours_sd = ours.state_dict()
    assert list(ours_sd) == list(sd)
    for k, v in sd.items():
        assert torch.equal(ours_sd[k], v), f"initial {k} differs"
    ours.load_state_dict(sd, strict=True)

    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    out_ref, out = ref(x.clone()), ours(x.clone())  # train mode (updates BN statistics)
    for a, b in zip(out_ref, out, strict=True):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4

    ref.load_state_dict(sd)
    ours.load_state_dict(sd)
    ref.eval()
    ours.eval()
    with torch.no_grad():
        (p_ref, raw_ref), (p, raw) = ref(x), ours(x)
        assert p.shape == p_ref.shape and (p - p_ref).abs().max().item() < 1e-4
        for a, b in zip(raw_ref, raw, strict=True):
            assert (a - b).abs().max().item() < 1e-4
        if name == "yolov5n" and nc == 3:  # test-time augmentation, once
            t_ref, t = ref(x, augment=True)[0], ours(x, augment=True)[0]
            assert t.shape == t_ref.shape and (t - t_ref).abs().max().item() < 1e-4
            f_ref, f = ref.fuse()(x)[0], ours.fuse()(x)[0]  # fused models
            assert (f - f_ref).abs().max().item() < 1e-4 and (f - p).abs().max().item() < 1e-4


@pytest.mark.oracle
@pytest.mark.parametrize("size, n_params", [("n", 3_246_940), ("s", 12_626_620)])
def test_p6_parity_with_reference(oracle, size, n_params):
    """yolov5{n,s}6: the reference's state_dict loads strictly, same parameter count (value printed by the v7.0
    reference), strides 8..64 and equal eval outputs on a 256 px input (4 levels: 32², 16², 8², 4² cells)."""
    name = f"yolov5{size}6"
    torch.manual_seed(0)
    ref = oracle.yolo.Model(str(oracle.root / "models" / "hub" / f"{name}.yaml"))
    torch.manual_seed(1)  # a different initialisation: equal outputs then come from the loaded weights
    ours = Model(f"{name}.yaml")
    assert _n_params(ours) == _n_params(ref) == n_params
    assert ours.stride.tolist() == ref.stride.tolist() == [8.0, 16.0, 32.0, 64.0]
    assert len(ours.model) == 34 and ours.model[-1].f == [23, 26, 29, 32]
    ours.load_state_dict(ref.state_dict(), strict=True)
    torch.testing.assert_close(ours.model[-1].anchors[3, 2], torch.tensor([925 / 64, 792 / 64]))  # grid cells
    ref.eval()
    ours.eval()
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        (p_ref, raw_ref), (p, raw) = ref(x), ours(x)
    assert p.shape == p_ref.shape == (1, 3 * (32**2 + 16**2 + 8**2 + 4**2), 85)
    assert (p - p_ref).abs().max().item() <= 1e-4
    for a, b in zip(raw_ref, raw, strict=True):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-4
