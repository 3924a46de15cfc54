"""utils/train/precision.py and ``train.py --amp``: the choice for every device / flag / CPU combination, bf16 detection
with the CPU's flags mocked, and 1-epoch trainings (bf16 forced on this CPU, where it is emulated)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

import train
from tests.helpers import tiny_dataset
from utils.checkpoints import load_checkpoint
from utils.train import precision as prec
from utils.train.precision import BF16, FP16, FP32, choose_precision, cpu_bf16_supported, cpuinfo_has_bf16

NO_BF16_WARNING = "train.py: --amp on: this CPU has no bf16 support (no AVX512-BF16/AMX); training in fp32"

# (device, --amp, CPU has bf16) -> (label, autocast dtype, GradScaler), written out by hand for every case
EXPECTED = {
    ("cuda", "auto", False): ("fp16+GradScaler", torch.float16, True),
    ("cuda", "auto", True): ("fp16+GradScaler", torch.float16, True),
    ("cuda", "on", False): ("fp16+GradScaler", torch.float16, True),
    ("cuda", "on", True): ("fp16+GradScaler", torch.float16, True),
    ("cuda", "off", False): ("fp32", torch.float32, False),
    ("cuda", "off", True): ("fp32", torch.float32, False),
    ("cpu", "auto", False): ("fp32", torch.float32, False),
    ("cpu", "auto", True): ("bf16", torch.bfloat16, False),
    ("cpu", "on", False): ("fp32", torch.float32, False),
    ("cpu", "on", True): ("bf16", torch.bfloat16, False),
    ("cpu", "off", False): ("fp32", torch.float32, False),
    ("cpu", "off", True): ("fp32", torch.float32, False),
    ("mps", "auto", True): ("fp32", torch.float32, False),
    ("mps", "on", True): ("fp32", torch.float32, False),
    ("mps", "off", False): ("fp32", torch.float32, False),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_choice_for_every_combination(case):
    p = choose_precision(*case)
    assert (p.label, p.dtype, p.use_scaler) == EXPECTED[case]
    fallback = case[1] == "on" and p.dtype == torch.float32  # asked for mixed precision, did not get it
    assert (p.warning is not None) == fallback


def test_warning_lines_and_unknown_flag():
    assert choose_precision("cpu", "on", False).warning == NO_BF16_WARNING
    assert choose_precision("mps", "on", True).warning == "train.py: --amp on: no mixed precision on mps devices; " \
                                                          "training in fp32"
    assert choose_precision("cpu", "auto", False).warning is None  # auto falls back silently (the label says fp32)
    with pytest.raises(ValueError, match="--amp 'fp16'"):
        choose_precision("cuda", "fp16", False)


def test_bf16_detection_from_flags(monkeypatch):
    caps = {"avx2": True, "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
    assert not cpu_bf16_supported(caps)  # AVX-512 alone: bf16 only emulated
    assert cpu_bf16_supported({**caps, "avx512_bf16": True})
    assert cpu_bf16_supported({**caps, "amx_bf16": True})
    zen3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    sapphire = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert not cpuinfo_has_bf16(zen3) and cpuinfo_has_bf16(sapphire)
    assert not cpuinfo_has_bf16("model name\t: has avx512_bf16 in its name\n")  # only 'flags' lines count
    assert cpu_bf16_supported(cpuinfo=sapphire) and not cpu_bf16_supported(cpuinfo=zen3)
    # PyTorch without torch.cpu.get_capabilities: /proc/cpuinfo's text
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(prec, "_read_cpuinfo", lambda: sapphire)
    assert cpu_bf16_supported()
    monkeypatch.setattr(prec, "_read_cpuinfo", lambda: "")  # unreadable / not Linux
    assert not cpu_bf16_supported()
    # no oneDNN: no fast bf16 convolutions, whatever the flags
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not cpu_bf16_supported({"avx512_bf16": True, "amx_bf16": True})


def test_autocast_contexts():
    conv, x = torch.nn.Conv2d(3, 4, 3), torch.rand(1, 3, 8, 8)
    with FP32.autocast("cpu"):
        assert conv(x).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with BF16.autocast("cpu"):
        assert conv(x).dtype == torch.bfloat16
    assert FP16.dtype == torch.float16 and FP16.use_scaler and not BF16.use_scaler


# ------------------------------------------------------------------------------------ 1-epoch trainings
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1-epoch runs of the same seed: --amp off, auto, on (this CPU: fp32), and on with bf16 support mocked.
    Returns {name: (run folder, log lines, [(dtypes of ComputeLoss's inputs, autocast on)] per call, last.pt as
    saved during training)}: the final last.pt may be stripped to fp16 weights after the run, which is the
    checkpoint format's choice, not the training precision's."""
    tmp = tmp_path_factory.mktemp("amp")
    data = tiny_dataset(tmp, n_train=8, n_val=4, imgsz=64)
    seen: list[tuple] = []
    saved: list[dict] = []
    real_save = train.save_epoch

    def save_epoch(run, *a, **kw):
        real_save(run, *a, **kw)
        saved.append(load_checkpoint(run.save_dir / "weights" / "last.pt"))

    class SpyLoss(train.ComputeLoss):
        def __call__(self, preds, targets):
            seen.append((tuple(p.dtype for p in preds), torch.is_autocast_enabled("cpu")))
            return super().__call__(preds, targets)

    out = {}
    mp = pytest.MonkeyPatch()
    mp.setattr(train, "ComputeLoss", SpyLoss)
    mp.setattr(train, "save_epoch", save_epoch)
    mp.setattr(train, "cpu_bf16_supported", lambda: False)  # this CPU's real answer too (AVX2 only)
    try:
        for name, amp in (("off", "off"), ("auto", "auto"), ("on", "on"), ("bf16", "on")):
            if name == "bf16":
                mp.setattr(train, "cpu_bf16_supported", lambda: True)
            seen.clear()
            saved.clear()
            handler, logger = _Capture(), logging.getLogger("train")
            level = logger.level
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            try:
                r = train.train(train.get_args_parser().parse_args(
                    ["--data", str(data), "--imgsz", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                     "--noplots", "--noautoanchor", "--seed", "2", "--project", str(tmp), "--name", name,
                     "--amp", amp]))
            finally:
                logger.removeHandler(handler)
                logger.setLevel(level)
            out[name] = (Path(r["save_dir"]), "\n".join(handler.lines), list(seen), saved[-1])
    finally:
        mp.undo()
    return out


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def _csv_rows(run: Path) -> dict[str, float]:
    head, row = (run / "results.csv").read_text().strip().splitlines()
    return dict(zip(head.split(","), map(float, row.split(","))))


@pytest.mark.slow
def test_bf16_training_step(runs):
    run, log, seen, ck = runs["bf16"]
    assert "INFO Precision: bf16 (--amp on)" in log and "WARNING" not in log
    assert yaml.safe_load((run / "opt.yaml").read_text())["precision"] == "bf16"
    assert seen and all(d == (torch.float32,) * 3 and not ac for d, ac in seen)  # ComputeLoss in fp32, no autocast
    bf16, fp32 = _csv_rows(run), _csv_rows(runs["off"][0])
    for k in ("train/box_loss", "train/obj_loss", "train/cls_loss"):
        assert torch.isfinite(torch.tensor(bf16[k])) and bf16[k] > 0
        assert bf16[k] == pytest.approx(fp32[k], rel=0.05)  # bf16 forward: ~3 significant digits
    assert any(bf16[k] != fp32[k] for k in ("train/box_loss", "train/obj_loss", "train/cls_loss"))  # it did run bf16
    for key in ("model", "ema"):  # the training checkpoint stays fp32 (save_checkpoint's default)
        dtypes = {v.dtype for v in ck[key].values() if v.is_floating_point()}
        assert dtypes == {torch.float32}, (key, dtypes)
    assert ck["extra"]["scaler"] == {}  # no GradScaler with bf16


@pytest.mark.slow
def test_fp32_runs_are_identical_and_amp_on_warns_once(runs):
    for name in ("off", "auto", "on"):
        run, log, seen, _ = runs[name]
        assert yaml.safe_load((run / "opt.yaml").read_text())["precision"] == "fp32"
        assert f"INFO Precision: fp32 (--amp {name})" in log
        assert seen and all(d == (torch.float32,) * 3 for d, _ in seen)
    warnings = [ln for ln in runs["on"][1].splitlines() if ln.startswith("WARNING")]
    assert warnings == [f"WARNING {NO_BF16_WARNING}"]
    assert "WARNING" not in runs["off"][1] + runs["auto"][1]
    off = (runs["off"][0] / "results.csv").read_text()
    assert (runs["auto"][0] / "results.csv").read_text() == off
    assert (runs["on"][0] / "results.csv").read_text() == off
