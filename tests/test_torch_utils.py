"""Tests for utils/torch_utils.py: hand-computed values and parity with the YOLOv5 v7.0 reference."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from models.common import C3, Conv
from utils.torch_utils import (
    ModelEMA,
    copy_attr,
    count_gflops,
    de_parallel,
    fuse_conv_and_bn,
    init_seeds,
    initialize_weights,
    is_parallel,
    model_info,
    scale_img,
    select_device,
    smart_optimizer,
    time_sync,
)


def _tiny(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(Conv(3, 8, 3, 2), C3(8, 8, n=1), nn.Conv2d(8, 6, 1), nn.LayerNorm([4, 4]))


def _random_bn_(bn: nn.BatchNorm2d, g: torch.Generator) -> None:
    n = bn.num_features
    bn.running_mean.copy_(torch.randn(n, generator=g))
    bn.running_var.copy_(torch.rand(n, generator=g) + 0.2)
    bn.weight.data.copy_(torch.randn(n, generator=g))
    bn.bias.data.copy_(torch.randn(n, generator=g))


# ----------------------------------------------------------------------------------------------- devices, seeds
def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    assert select_device("").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not understood"):
        select_device("gpu7")
    if not torch.cuda.is_available():
        for d in ("0", 0, "0,1", "cuda:0"):
            with pytest.raises(ValueError, match="CUDA is not available"):
                select_device(d)
    else:
        assert select_device("0") == torch.device("cuda:0")
        with pytest.raises(ValueError, match="visible"):
            select_device(str(torch.cuda.device_count()))


def test_init_seeds_reproducible():
    init_seeds(7)
    a = (random.random(), np.random.rand(), torch.rand(3))
    init_seeds(7)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_time_sync_and_parallel():
    t0 = time_sync()
    assert time_sync() >= t0
    m = _tiny()
    dp = nn.DataParallel(m)
    assert is_parallel(dp) and not is_parallel(m)
    assert de_parallel(dp) is m and de_parallel(m) is m


# ----------------------------------------------------------------------------------------------- fusion, info
@pytest.mark.parametrize("bias, groups, stride", [(False, 1, 1), (True, 2, 2)])
def test_fuse_conv_and_bn(bias, groups, stride):
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, stride, 1, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(6, eps=1e-3).eval()
    _random_bn_(bn, g)
    x = torch.randn(2, 4, 9, 7, generator=g)
    with torch.no_grad():
        ref = bn(conv(x))
        fused = fuse_conv_and_bn(conv, bn)
        assert (fused(x) - ref).abs().max().item() < 1e-5
    assert fused.bias is not None and not fused.weight.requires_grad


def test_conv_fuse_switches_forward():
    c = Conv(4, 6, 3).eval()
    _random_bn_(c.bn, torch.Generator().manual_seed(4))
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ref = c(x)
        c.fuse()
        assert not hasattr(c, "bn") and (c(x) - ref).abs().max().item() < 1e-5


def test_count_gflops_by_hand():
    # Conv(3->16, 3x3) at 32x32 (stride 1): MACs = 16*32*32 * 3*3*3; scaled to 64x64 -> x4
    m = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.Flatten(), nn.Linear(16 * 32 * 32, 10))
    macs = 16 * 32 * 32 * 27 + 10 * 16 * 32 * 32
    assert count_gflops(m, 32) == pytest.approx(2 * macs / 1e9)
    assert count_gflops(m, (64, 32)) == pytest.approx(2 * 2 * macs / 1e9)
    m.train()
    count_gflops(m, 32)
    assert m.training


def test_model_info_counts():
    m = _tiny()
    m[0].requires_grad_(False)
    n_l, n_p, n_g, gf = model_info(m, verbose=True, imgsz=None)
    assert n_l == len(list(m.modules())) and gf == 0.0
    assert n_p == sum(p.numel() for p in m.parameters())
    assert n_g == n_p - sum(p.numel() for p in m[0].parameters())


def test_initialize_weights():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.SiLU())
    initialize_weights(m)
    assert m[1].eps == 1e-3 and m[1].momentum == 0.03 and m[2].inplace


def test_scale_img():
    x = torch.rand(1, 3, 64, 64)
    assert scale_img(x, 1.0) is x
    y = scale_img(x, 0.83)  # int(64 * 0.83) = 53 px, padded to 64 with 0.447
    assert y.shape == (1, 3, 64, 64) and torch.all(y[..., 53:, :] == 0.447) and torch.all(y[..., :, 53:] == 0.447)
    assert scale_img(x, 0.5).shape == (1, 3, 32, 32)
    assert scale_img(torch.rand(1, 3, 64, 96), 0.3, same_shape=True).shape == (1, 3, 64, 96)
    assert scale_img(torch.rand(1, 3, 64, 96), 0.3).shape == (1, 3, 32, 32)  # 19x28 px padded to 32x32


def test_copy_attr():
    class A:
        pass

    a, b = A(), A()
    b.x, b.y, b._z = 1, 2, 3
    copy_attr(a, b, exclude=("y",))
    assert a.x == 1 and not hasattr(a, "y") and not hasattr(a, "_z")
    c = A()
    copy_attr(c, b, include=("y",))
    assert c.y == 2 and not hasattr(c, "x")


# ----------------------------------------------------------------------------------------------- optimiser, EMA
def test_smart_optimizer_groups_and_settings():
    m = _tiny()
    opt = smart_optimizer(m, "SGD", lr=0.01, momentum=0.937, decay=5e-4)
    biases, weights, norms = (g["params"] for g in opt.param_groups)
    # Conv (1) + C3 with one Bottleneck (cv1, cv2, cv3, m.0.cv1, m.0.cv2) = 6 Conv blocks, each conv weight + BN;
    # then a Conv2d with bias and a LayerNorm. Biases: 6 BN + Conv2d + LN; weights: 6 + 1 convs; norms: 6 BN + LN
    assert (len(biases), len(weights), len(norms)) == (8, 7, 7)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.937
    assert smart_optimizer(m, "Adam", momentum=0.9).param_groups[0]["betas"] == (0.9, 0.999)
    assert smart_optimizer(m, "adamw").param_groups[0]["weight_decay"] == 0.0
    assert isinstance(smart_optimizer(m, "RMSProp"), torch.optim.RMSprop)
    with pytest.raises(ValueError, match="'Lion' not supported"):
        smart_optimizer(m, "Lion")


def test_ema_by_hand():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.9, tau=10)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 10))
    assert ema.updates == 1 and ema.decay(1) == pytest.approx(d)
    assert ema.ema.weight.item() == pytest.approx(d * 1.0 + (1 - d) * 3.0)
    assert not ema.ema.weight.requires_grad and not ema.ema.training
    model.names = {0: "a"}
    ema.update_attr(model, include=("names",))
    assert ema.ema.names == {0: "a"}


# ----------------------------------------------------------------------------------------------- oracle parity
@pytest.mark.oracle
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSProp"])
def test_smart_optimizer_matches_reference(oracle, name):
    from models.yolo import Model

    model = Model("yolov5n.yaml", nc=3)
    ours = smart_optimizer(model, name, lr=0.01, momentum=0.937, decay=5e-4)
    ref = oracle.torch_utils.smart_optimizer(model, name, lr=0.01, momentum=0.937, decay=5e-4)
    assert type(ours) is type(ref)
    for go, gr in zip(ours.param_groups, ref.param_groups, strict=True):
        assert [id(p) for p in go["params"]] == [id(p) for p in gr["params"]]
        assert {k: v for k, v in go.items() if k != "params"} == {k: v for k, v in gr.items() if k != "params"}


@pytest.mark.oracle
def test_ema_matches_reference(oracle):
    model = _tiny(1)
    ours, ref = ModelEMA(model, decay=0.99, tau=5), oracle.torch_utils.ModelEMA(model, decay=0.99, tau=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):  # train steps change weights and BatchNorm statistics
        model.train()
        loss = model(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(step))).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ours.update(model)
        ref.update(model)
    assert ours.updates == ref.updates == 4
    so, sr = ours.ema.state_dict(), ref.ema.state_dict()
    for k in sr:
        torch.testing.assert_close(so[k], sr[k], rtol=0, atol=1e-6, msg=f"EMA {k} differs")
    assert not torch.equal(so["0.conv.weight"], model.state_dict()["0.conv.weight"])


@pytest.mark.oracle
def test_fuse_conv_and_bn_matches_reference(oracle):
    g = torch.Generator().manual_seed(5)
    conv, bn = nn.Conv2d(4, 6, 3, 1, 1, bias=False), nn.BatchNorm2d(6).eval()
    _random_bn_(bn, g)
    a, b = fuse_conv_and_bn(conv, bn), oracle.torch_utils.fuse_conv_and_bn(conv, bn)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=1e-6)
