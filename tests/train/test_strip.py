"""Stripped final weights (issue 18): at the end of training last.pt and best.pt are rewritten as YOLOv5's
strip_optimizer does (fp16 EMA weights, no optimizer/EMA copy/updates, epoch -1) unless --keep-optimizer; they load
losslessly, fine-tune with --weights, and --resume refuses them by name while an interrupted run keeps its full
last.pt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train
from models.yolo import DetectionModel
from tests.helpers import tiny_dataset
from utils.checkpoints import load_checkpoint, load_model, save_checkpoint, strip_optimizer
from utils.config.hyp import load_hyp
from utils.torch_utils import ModelEMA
from utils.train.builders import build_optimizer
from utils.train.state import ResumeError, check_resumable

pytestmark = pytest.mark.slow
DROPPED = ("optimizer", "scheduler", "ema", "updates", "best_fitness")  # None in a stripped file


def _argv(data: Path, project: Path, name: str, *extra: str) -> list[str]:
    return ["--data", str(data), "--imgsz", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--noplots", "--noautoanchor", "--seed", "1", "--project", str(project), "--name", name, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One default 1-epoch run; its last.pt and best.pt are also copied to ``kept`` just before being stripped.
    {'stripped' | 'kept': weights folder, 'data': data YAML, 'root': folder for more runs}."""
    import shutil

    import utils.train.builders

    root = tmp_path_factory.mktemp("strip")
    data = tiny_dataset(root, n_train=8, n_val=4, imgsz=64)
    kept = root / "kept"
    real = utils.train.builders.strip_final_weights

    def copy_then_strip(weights_dir: Path) -> list[Path]:
        shutil.copytree(weights_dir, kept)
        return real(weights_dir)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils.train.builders, "strip_final_weights", copy_then_strip)
        res = train.train(train.get_args_parser().parse_args(_argv(data, root / "runs", "default")))
    return {"stripped": Path(res["save_dir"]) / "weights", "kept": kept, "data": data, "root": root}


def _fp16_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def test_final_weights_are_stripped(runs):
    kept = load_checkpoint(runs["kept"] / "last.pt")
    assert kept["epoch"] == 0 and kept["optimizer"] is not None and kept["ema"] is not None
    assert kept["model"]["model.0.conv.weight"].dtype == torch.float32
    for f in ("last.pt", "best.pt"):
        ck = load_checkpoint(runs["stripped"] / f)
        assert ck["epoch"] == -1 and all(ck[k] is None for k in DROPPED), f
        assert {v.dtype for v in ck["model"].values() if v.is_floating_point()} == {torch.float16}
        assert set(ck["model"]) == set(kept["ema"])
        for k, v in _fp16_state(load_checkpoint(runs["kept"] / f)["ema"]).items():  # the EMA, rounded to fp16
            assert torch.equal(ck["model"][k], v), k
        ratio = (runs["stripped"] / f).stat().st_size / (runs["kept"] / f).stat().st_size
        assert ratio < 0.6, ratio  # fp16 model only vs fp32 model + EMA + momentum buffers (~0.17 here)


def test_stripped_file_loads_losslessly_and_close_to_fp32(runs):
    """Loading is lossless w.r.t. what was saved: load_model(stripped) gives exactly the outputs of the fp32
    EMA model with every weight rounded to fp16. Against the unrounded fp32 model the outputs (sigmoid
    probabilities and input-px boxes of a 64 px image) differ by at most 0.02 px / 1e-3."""
    kept = load_checkpoint(runs["kept"] / "best.pt")
    stripped = runs["stripped"] / "best.pt"
    fp32 = DetectionModel(kept["model_yaml"]).eval()
    fp32.load_state_dict(kept["ema"])
    rounded = DetectionModel(kept["model_yaml"]).eval()
    rounded.load_state_dict({k: v.float() for k, v in _fp16_state(kept["ema"]).items()})
    loaded = load_model(stripped)
    assert next(loaded.parameters()).dtype == torch.float32 and not loaded.training
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, ref = loaded(x)[0], rounded(x)[0], fp32(x)[0]
    assert torch.equal(got, want)
    assert not torch.equal(got, ref)  # rounding really happened: the tolerance below is not vacuous
    torch.testing.assert_close(got[..., :4], ref[..., :4], rtol=0, atol=0.02)  # boxes, input px
    torch.testing.assert_close(got[..., 4:], ref[..., 4:], rtol=0, atol=1e-3)  # objectness and class scores


def test_resume_refuses_a_stripped_run_but_an_interrupted_run_keeps_its_full_last_pt(runs, capsys, monkeypatch):
    last = runs["stripped"] / "last.pt"
    assert train.main(["--resume", str(last)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "final weights of a finished run" in err and "nothing to resume" in err, err
    with pytest.raises(ResumeError, match=r"finished at epoch 0, nothing to resume"):  # as with --keep-optimizer
        check_resumable(load_checkpoint(runs["kept"] / "last.pt"))

    real_save = train.save_epoch

    def save_then_interrupt(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_epoch", save_then_interrupt)
    rc = train.main(_argv(runs["data"], runs["root"] / "runs", "interrupted", "--epochs", "2"))
    assert rc == 130
    ck = load_checkpoint(runs["root"] / "runs" / "interrupted" / "weights" / "last.pt")
    assert ck["epoch"] == 0 and ck["optimizer"] is not None and ck["ema"] is not None  # not stripped: resumable
    assert ck["model"]["model.0.conv.weight"].dtype == torch.float32
    check_resumable(ck)


def test_weights_stripped_best_pt_fine_tunes_and_keep_optimizer_keeps_it(runs):
    best = runs["stripped"] / "best.pt"
    opt = train.get_args_parser().parse_args(_argv(runs["data"], runs["root"] / "runs", "finetune", "--weights",
                                                   str(best), "--keep-optimizer"))
    model = train.build_model(opt, nc=4, hyp=load_hyp(), device=torch.device("cpu"))
    saved = load_checkpoint(best)["model"]
    for k, v in model.state_dict().items():  # every tensor transferred, fp16 -> fp32 exactly
        assert v.dtype == saved[k].dtype or (v.dtype == torch.float32 and saved[k].dtype == torch.float16), k
        assert torch.equal(v, saved[k].to(v.dtype)), k
    given = dict(vars(opt))
    res = train.train(opt)
    assert vars(opt) == given  # the caller's options are read, never written
    ck = load_checkpoint(Path(res["save_dir"]) / "weights" / "last.pt")
    assert ck["epoch"] == 0 and "metrics/mAP_0.5" in res  # --keep-optimizer: the full training state
    assert ck["optimizer"] is not None and ck["ema"] is not None and ck["model"]["model.0.conv.weight"].dtype == \
        torch.float32
    # one optimiser step at warmup's start: weights' lr is still 0, biases' is warmup_bias_lr, so biases moved
    moved = [k for k, v in ck["model"].items() if v.is_floating_point() and not torch.equal(v, saved[k].float())]
    assert "model.24.m.0.bias" in moved and all(k.endswith("bias") or "running" in k for k in moved), moved[:5]


def checkpoint_sizes(cfg: str = "yolov5n.yaml", nc: int = 80) -> tuple[int, int, int]:
    """(bytes of a training checkpoint: fp32 model + EMA + SGD momentum, bytes once stripped, parameters) of a
    freshly built model after one optimiser step (so that every momentum buffer exists)."""
    import tempfile

    model = DetectionModel(cfg, nc=nc)
    opt = train.TrainOptions.from_args(train.get_args_parser().parse_args([]))
    optimizer, scheduler = build_optimizer(model, opt, load_hyp(), opt.batch_size)
    model.train()
    sum(p.float().mean() for p in model(torch.zeros(1, 3, 64, 64))).backward()
    optimizer.step()
    with tempfile.TemporaryDirectory() as d:
        full, small = Path(d) / "full.pt", Path(d) / "stripped.pt"
        save_checkpoint(full, model=model, ema=ModelEMA(model), optimizer=optimizer, scheduler=scheduler, epoch=9,
                        best_fitness=0.5, hyp=load_hyp(), opt=opt.to_dict(), names=None)
        strip_optimizer(full, small)
        return full.stat().st_size, small.stat().st_size, sum(p.numel() for p in model.parameters())


def test_yolov5n_80_classes_sizes():
    """The figures in docs/training.md: yolov5n (80 classes, 1.87 M parameters) 22.8 MB with the training state, 3.9 MB
    stripped (2 bytes per weight), a ratio of 0.17."""
    full, small, n = checkpoint_sizes()
    assert n == 1_872_157
    assert 3 * 4 * n < full < 3 * 4 * n * 1.02  # three fp32 copies: model, EMA, momentum buffers
    assert 2 * n < small < 2 * n * 1.05 and small / full < 0.2
