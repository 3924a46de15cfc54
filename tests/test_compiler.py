"""utils/compiler.py: bucket shapes, padded outputs cut back to the input's own cells, graphs per inference pass,
the cache folder, the too-small rule; and the numbers of inductor's compiled forward (inference and a training
step) against eager, on the five-conv micro model (yolov5n takes minutes to compile on a CPU)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch._dynamo

import utils.compiler as compiler
from tests.helpers import micro_model
from utils.compiler import (
    CompiledForward,
    bucket_side,
    compile_cache_dir,
    compiled_forward,
    crop_output,
    worth_compiling,
)
from utils.loss.compute_loss import ComputeLoss
from utils.torch_utils import de_parallel

STRIDES = (8, 16, 32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The documented cache folder under a temporary TINYFOCAL_CACHE; dynamo's in-memory caches emptied."""
    monkeypatch.setenv("TINYFOCAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    torch._dynamo.reset()
    yield tmp_path / "cache" / "inductor"
    torch._dynamo.reset()


def test_bucket_side():
    assert bucket_side(200, 640, 32) == 320  # steps of 160 px
    assert bucket_side(480, 640, 32) == 480  # already a bucket
    assert bucket_side(96, 160, 32) == 128  # steps of 64 px (40 rounded up to the stride)
    assert bucket_side(672, 672, 32) == 672
    assert bucket_side(700, 640, 32) == 700  # never below the side itself


def test_crop_output_keeps_each_cell_where_detect_put_it():
    """A padded batch's output (B=3 images of 96x96 px) cut to b=2 images of 64x96: each level's (y, x) cells in
    Detect's row order (level, anchor, y, x); the values name their own cell, so a wrong cut shows."""
    raws = []
    for lvl, s in enumerate(STRIDES):
        ny, nx = 96 // s, 96 // s
        y, x = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        cell = torch.stack((y, x + 100 * lvl), -1).float()  # (ny, nx, 2)
        raws.append(cell.expand(3, 3, ny, nx, 2) + torch.arange(3).view(3, 1, 1, 1, 1) * 1000)  # image index
    pred = torch.cat([r.reshape(3, -1, 2) for r in raws], 1)
    out, out_raws = crop_output((pred, raws), 2, 64, 96, STRIDES)
    assert out.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 2)
    want = torch.cat([r[:2, :, :64 // s, :96 // s].reshape(2, -1, 2) for r, s in zip(raws, STRIDES)], 1)
    assert torch.equal(out, want)
    assert [tuple(r.shape[2:4]) for r in out_raws] == [(8, 12), (4, 6), (2, 3)]
    assert out[..., 0].max() == 1000 + 7  # image 1, row 7 of level 0: nothing from the padded rows or image 2


@torch.no_grad()
def test_one_graph_per_shape_and_padding_beyond_the_exact_ones(cache, monkeypatch):
    model = micro_model()
    fwd = CompiledForward(model, backend="eager", strides=STRIDES).pad_for(4, [(64, 96), (64, 64)])
    assert not fwd.pad_shape and fwd.pad_batch == 4
    for b, h, w in ((4, 64, 96), (2, 64, 96), (3, 64, 64), (4, 64, 96)):
        x = torch.rand(b, 3, h, w)
        pred, raws = fwd(x)
        torch.testing.assert_close(pred, model(x)[0], rtol=1e-5, atol=1e-4)  # padding the batch changes no image
    assert fwd.stats.graphs == 2  # the short batches were padded: no graph of their own

    monkeypatch.setattr(compiler, "MAX_EXACT_SHAPES", 2)  # three shapes are then too many: padded to buckets
    many = [(64, 64), (64, 160), (64, 192)]
    fwd = CompiledForward(model, backend="eager", strides=STRIDES).pad_for(4, many)
    assert fwd.pad_shape and fwd.long_side == 192
    for h, w in many:
        x = torch.rand(2, 3, h, w)
        assert fwd(x)[0].shape == model(x)[0].shape
    # steps of 64 px (192 / 4 rounded up to the stride): 64 x 64 (compiled above) and 64 x 192 for 160 and 192
    assert fwd.stats.graphs == 1


def test_worth_compiling(caplog, monkeypatch):
    monkeypatch.setattr(compiler, "MIN_IMAGES", 100)
    with caplog.at_level(logging.INFO, logger="utils.compiler"):
        assert worth_compiling(100, "val.py")
        assert not caplog.records
        assert not worth_compiling(99, "val.py")
    assert caplog.records[0].getMessage() == ("--compile: val.py pushes 99 images through the model, fewer than the "
                                              "100 that pay back a compile: running eager")


def test_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYFOCAL_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert compile_cache_dir() == tmp_path / "c" / "inductor"
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing torch._dynamo sets
    assert compile_cache_dir() == tmp_path / "c" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice wins
    assert compile_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("TINYFOCAL_CACHE")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache_dir() == tmp_path / "xdg" / "tinyfocal" / "inductor"


def test_de_parallel_unwraps_the_compiled_wrapper():
    model = micro_model()
    wrapped = torch.compile(model)  # lazy: nothing compiles until it is called
    assert de_parallel(wrapped) is model
    assert list(de_parallel(wrapped).state_dict()) == list(model.state_dict())  # no '_orig_mod.' prefix saved


@pytest.mark.slow
def test_inductor_matches_eager_and_fills_the_cache(cache):
    """The real compiler (about 30 s for this model on one CPU thread, cold): inference outputs within 1e-4
    (relative) of eager; the cache folder is created and written."""
    model = micro_model(seed=1)
    x = torch.rand(2, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    fwd = compiled_forward(model, strides=STRIDES)
    assert cache.is_dir()
    with torch.no_grad():
        pred, _ = fwd(x)
        ref, _ = model(x)
    torch.testing.assert_close(pred, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert fwd.stats.graphs == 1 and fwd.stats.seconds > 0
    assert any(cache.rglob("*.py")) or any(cache.rglob("*.so"))  # generated kernels were written there



def test_training_step_through_the_compiled_graph_equals_eager(cache):
    """One training step with the forward compiled (AOT autograd's forward and backward graphs, run without code
    generation) and the loss eager, as train.py does: the same loss and gradients."""
    model = micro_model(seed=1).train()
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(4, 3, 64, 64, generator=g).contiguous(memory_format=torch.channels_last)
    # (n, 6) [image, class, x, y, w, h] normalised: boxes of 6 to 40 px
    targets = torch.tensor([[0, 0, 0.3, 0.3, 0.1, 0.2], [1, 1, 0.5, 0.6, 0.6, 0.4], [3, 2, 0.7, 0.2, 0.2, 0.1]])
    loss_fn = ComputeLoss(model, imgsz=64)
    grads = []
    for forward in (model, compiled_forward(model, backend="aot_eager")):
        model.zero_grad()
        loss, parts = loss_fn(forward(imgs), targets)
        loss.backward()
        grads.append((float(loss), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (l_eager, g_eager), (l_comp, g_comp) = grads
    assert l_comp == pytest.approx(l_eager, rel=1e-5)
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-4, atol=1e-5 * float(g_eager.abs().max()))
