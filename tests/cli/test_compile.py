"""``--compile`` end to end on the embedded synthetic data: train.py, --resume, val.py and detect.py run compiled and
give eager's numbers; a checkpoint of a compiled run loads in a fresh process without --compile and gives the same
outputs; too small a run says so and stays eager. The plumbing runs with ``--compile-backend eager`` (dynamo's graph
capture, no code generation: seconds instead of minutes on a CPU); tests/test_compiler.py checks inductor's numbers.
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo

import detect
import train
import utils.compiler as compiler
import val
from tests.helpers import micro_cfg_file, tiny_dataset
from utils.checkpoints import load_checkpoint, load_model

ROOT = Path(__file__).resolve().parents[2]
COMPILED = ("--compile", "--compile-backend", "eager")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(data YAML, micro model YAML)."""
    root = tmp_path_factory.mktemp("compile")
    return tiny_dataset(root, n_train=8, n_val=4, imgsz=96), micro_cfg_file(root)


@pytest.fixture(autouse=True)
def compile_env(tmp_path, monkeypatch):
    """Every run is worth compiling, the cache lives under tmp, dynamo starts empty."""
    monkeypatch.setattr(compiler, "MIN_IMAGES", 0)
    monkeypatch.setenv("TINYFOCAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    torch._dynamo.reset()


def train_args(data: tuple[Path, Path], project: Path, name: str, *extra: str):
    return train.get_args_parser().parse_args(
        ["--data", str(data[0]), "--cfg", str(data[1]), "--imgsz", "64", "--epochs", "2", "--batch-size", "4",
         "--workers", "0", "--project", str(project), "--name", name, "--seed", "1", "--noplots", "--exist-ok",
         *extra])


def losses(run_dir: Path) -> np.ndarray:
    """results.csv's train and val losses, (epochs, 6)."""
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    keys = [f"{s}/{n}_loss" for s in ("train", "val") for n in ("box", "obj", "cls")]
    return np.array([[float(r[k]) for k in keys] for r in rows])


def test_train_compiled_equals_eager_resumes_and_saves_the_plain_model(data, tmp_path, caplog, monkeypatch):
    eager = train.train(train_args(data, tmp_path, "eager"))
    with caplog.at_level(logging.INFO):
        compiled = train.train(train_args(data, tmp_path, "compiled", *COMPILED))
    # one training graph (8 images in batches of 4, 64 px) and one validation graph (4 images of one rect shape, the
    # batch padded to 8)
    assert "--compile: train.py (training and validation) compiled 2 graphs" in caplog.text
    np.testing.assert_allclose(losses(Path(compiled["save_dir"])), losses(Path(eager["save_dir"])), rtol=1e-4)
    for k in ("metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "metrics/precision", "metrics/recall"):
        assert compiled[k] == pytest.approx(eager[k], abs=5e-4), k
    weights = Path(compiled["save_dir"]) / "weights" / "last.pt"
    ck = load_checkpoint(weights)
    assert ck["model"] and not any("_orig_mod" in k for k in [*ck["model"], *(ck["ema"] or {})])

    # a fresh process, without --compile, gives the outputs the compiled run's model gives here
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    code = ("import sys, numpy as np, torch; sys.path.insert(0, sys.argv[1]); from utils.checkpoints import "
            "load_model; m = load_model(sys.argv[2]); x = torch.from_numpy(np.load(sys.argv[3])); "
            "np.save(sys.argv[4], m(x)[0].detach().numpy())")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT), str(weights), str(tmp_path / "x.npy"),
                        str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    fwd = compiler.compiled_forward(load_model(weights).eval(), backend="eager", strides=(8, 16, 32))
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), fwd(x)[0].numpy(), rtol=1e-4, atol=1e-3)

    # a compiled run crashed after epoch 0, resumed without --compile: the uninterrupted run's losses
    real_save = train.save_epoch

    def save_then_crash(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt("simulated crash after epoch 0")

    monkeypatch.setattr(train, "save_epoch", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.train(train_args(data, tmp_path, "crash", *COMPILED, "--keep-optimizer"))
    monkeypatch.setattr(train, "save_epoch", real_save)
    train.train(train.get_args_parser().parse_args(["--resume", str(tmp_path / "crash/weights/last.pt")]))  # eager
    np.testing.assert_allclose(losses(tmp_path / "crash"), losses(Path(compiled["save_dir"])), rtol=1e-4)


@pytest.fixture(scope="module")
def weights(data, tmp_path_factory) -> Path:
    """A checkpoint of the micro model trained one epoch."""
    project = tmp_path_factory.mktemp("weights")
    return Path(train.train(train_args(data, project, "w", "--epochs", "1"))["save_dir"]) / "weights/best.pt"


def test_val_and_detect_compiled_equal_eager(data, weights, tmp_path, caplog):
    kw = {"data": str(data[0]), "weights": str(weights), "batch_size": 3, "project": tmp_path, "plots": False}
    eager = val.run(**kw, name="eager")
    with caplog.at_level(logging.INFO):
        assert val.main(["--data", str(data[0]), "--weights", str(weights), "--batch-size", "3", "--project",
                         str(tmp_path), "--name", "c", *COMPILED]) == 0
    assert "--compile: val.py compiled 1 graph in" in caplog.text  # 4 images, one shape, batches padded to 3
    assert f"cache {tmp_path / 'cache' / 'inductor'}" in caplog.text
    compiled = val.run(**kw, name="compiled", compile="default", compile_backend="eager")
    for k in ("metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "metrics/precision", "metrics/recall"):
        assert compiled[k] == pytest.approx(eager[k], abs=5e-4), k

    images = data[0].parent / "ds" / "images" / "val"
    common = {"weights": weights, "source": images, "conf_thres": 0.001, "nosave": True, "project": tmp_path}
    a = detect.run(**common, name="d_eager")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        b = detect.run(**common, name="d_comp", compile="default", compile_backend="eager")
    assert "--compile: detect.py compiled" in caplog.text
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):  # square 96 px images letterboxed to 64 x 64: a bucket shape, nothing padded
        np.testing.assert_allclose(rb["boxes"], ra["boxes"], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(rb["scores"], ra["scores"], rtol=1e-4, atol=1e-5)


def test_too_few_images_run_eager(data, weights, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(compiler, "MIN_IMAGES", 256)
    graphs = compiler._graph_count()
    with caplog.at_level(logging.INFO):
        r = detect.run(weights, data[0].parent / "ds" / "images" / "val", nosave=True, project=tmp_path,
                       compile="default", compile_backend="eager")
    assert len(r) == 4
    assert "--compile: detect.py pushes 4 images through the model, fewer than the 256 that pay back a compile: " \
           "running eager" in caplog.text
    assert "--compile: detect.py compiled" not in caplog.text and compiler._graph_count() == graphs


def test_compile_refuses_changing_training_shapes(data, tmp_path, capsys):
    assert train.main(["--data", str(data[0]), "--compile", "--multi-scale", "--project", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--compile" in err and "fixed training shapes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists()
