"""Tests for utils/checkpoints.py (weights-only loading, our format, official YOLOv5 files) and utils/atomic.py."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from models.yolo import DetectionModel
from tests.helpers import randomise_weights
from utils.atomic import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temps,
)
from utils.checkpoints import (
    FORMAT,
    REQUIRED_KEYS,
    CheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
    strip_optimizer,
    trained_imgsz,
)
from utils.config.hyp import Hyp
from utils.torch_utils import ModelEMA

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["car", "person", "boat"]


_randomise = randomise_weights


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return _randomise(DetectionModel("yolov5n.yaml", nc=3), 0)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _out(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m.eval()(x)[0]


def _official_bytes(obj: dict, legacy: bool = False) -> bytes:
    """``torch.save`` bytes, as YOLOv5 writes them (whole modules pickled)."""
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _rewrite_pickle(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace ``old`` by ``new`` in the pickle of a zip torch file (e.g. the module of GLOBAL opcodes, written
    'c' + module + newline), keeping the tensor records."""
    zin, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name in zin.namelist():
            b = zin.read(name)
            if name.endswith("/data.pkl"):
                assert old in b, f"{old!r} not in the pickle"
                b = b.replace(old, new)
            z.writestr(name, b)
    return out.getvalue()


# ------------------------------------------------------------------------------------------- our format round trip
def test_save_load_round_trip(model, image, tmp_path):
    ema = ModelEMA(model)
    ema.updates = 7
    trained = deepcopy(model).train()
    opt = torch.optim.SGD(trained.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1 - 0.1 * e)
    trained(image)[0].sum().backward()
    opt.step()
    sched.step()
    trained.eval()
    assert not torch.equal(_out(trained, image), _out(ema.ema, image))  # ema and model really differ

    path = tmp_path / "last.pt"
    save_checkpoint(path, model=trained, ema=ema, optimizer=opt, scheduler=sched, epoch=4,
                    best_fitness=np.float64(0.25), hyp=Hyp(tfl=True), opt={"weights": tmp_path / "w.pt", "imgsz": 64,
                                                                            "rect": False, "sizes": (1, 2)},
                    names=NAMES, extra={"note": "x"})
    # loadable by torch alone with no allow-list at all: tensors and plain values only
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and set(REQUIRED_KEYS) <= set(raw)
    ck = load_checkpoint(path)
    assert ck["epoch"] == 4 and ck["best_fitness"] == 0.25 and ck["updates"] == 7
    assert ck["opt"] == {"weights": str(tmp_path / "w.pt"), "imgsz": 64, "rect": False, "sizes": (1, 2)}
    assert ck["names"] == {0: "car", 1: "person", 2: "boat"} and ck["extra"] == {"note": "x"}
    assert ck["hyp"]["tfl"] is True and ck["stride"] == [8.0, 16.0, 32.0]
    assert all(v.dtype != torch.float16 for v in ck["model"].values())  # fp32 by default
    for k, v in trained.state_dict().items():
        assert torch.equal(ck["model"][k], v), k
    # optimizer and scheduler states restore exactly
    opt2 = torch.optim.SGD(deepcopy(model).parameters(), lr=0.01, momentum=0.9)
    opt2.load_state_dict(ck["optimizer"])
    bufs = [s["momentum_buffer"] for s in opt.state.values()]
    bufs2 = [s["momentum_buffer"] for s in opt2.state.values()]
    assert len(bufs) == len(bufs2) > 0 and all(torch.equal(a, b) for a, b in zip(bufs, bufs2))
    assert ck["scheduler"]["last_epoch"] == 1

    m2 = load_model(path)  # prefers the EMA weights
    assert not m2.training and m2.names == ck["names"] and isinstance(m2.hyp, Hyp) and m2.hyp.tfl
    assert torch.equal(m2.stride, model.stride)
    assert torch.equal(_out(m2, image), _out(ema.ema, image))


def test_model_only_and_strip_optimizer(model, image, tmp_path):
    path = tmp_path / "best.pt"
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    save_checkpoint(path, model=model, optimizer=opt, epoch=9, best_fitness=0.5, hyp=None, opt={}, names=None)
    fused = load_model(path, fuse=True)  # no ema: the model weights
    assert fused.names == {0: "class0", 1: "class1", 2: "class2"} and fused.hyp is None
    assert not any(hasattr(m, "bn") for m in fused.modules())
    torch.testing.assert_close(_out(fused, image), _out(model, image), rtol=1e-4, atol=1e-3)

    out = strip_optimizer(path, tmp_path / "stripped.pt")
    ck = load_checkpoint(out)
    assert ck["optimizer"] is None and ck["ema"] is None and ck["best_fitness"] is None and ck["epoch"] == -1
    assert {v.dtype for v in ck["model"].values() if v.is_floating_point()} == {torch.float16}
    assert out.stat().st_size < 0.6 * path.stat().st_size
    expected = deepcopy(model)
    expected.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                              for k, v in model.state_dict().items()})
    assert torch.equal(_out(load_model(out), image), _out(expected, image))
    assert not list(tmp_path.glob(".*.tmp"))


def test_save_rejects_non_plain_values(model, tmp_path):
    path = tmp_path / "x.pt"
    with pytest.raises(TypeError, match=r"opt\['bad'\].*object"):
        save_checkpoint(path, model=model, epoch=0, best_fitness=None, hyp=None, opt={"bad": object()}, names=None)
    assert not path.exists() and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------- official YOLOv5 files
def _official_ckpt(model: torch.nn.Module, ema: torch.nn.Module | None = None) -> dict:
    m = deepcopy(model).half()
    m.names, m.hyp = dict(enumerate(NAMES)), Hyp().to_dict()
    return {"epoch": 3 if ema is not None else -1, "best_fitness": np.array([0.4]) if ema is not None else None,
            "model": m, "ema": deepcopy(ema).half() if ema is not None else None, "updates": 12 if ema else None,
            "optimizer": None, "opt": {"imgsz": 640, "save_dir": "runs/train/exp"}, "git": {"branch": "master"},
            "date": "2023-01-01T00:00:00", "yolov5pip_version": "7.0.14"}


def test_official_whole_module_pickle_loads(model, image, tmp_path):
    ema = _randomise(deepcopy(model), 5)
    path = tmp_path / "official.pt"
    path.write_bytes(_official_bytes(_official_ckpt(model, ema)))
    with pytest.raises(pickle.UnpicklingError):  # torch alone refuses it: the allow-list is what admits it
        torch.load(path, weights_only=True)
    ck = load_checkpoint(path)
    assert ck["source"] == "yolov5" and ck["epoch"] == 3 and ck["best_fitness"] == pytest.approx(0.4)
    assert ck["names"] == {0: "car", 1: "person", 2: "boat"} and ck["updates"] == 12
    assert set(ck["model"]) == set(model.state_dict()) == set(ck["ema"])
    m2 = load_model(path)  # the EMA module is preferred, as YOLOv5's attempt_load does
    assert m2.names == ck["names"] and isinstance(m2.hyp, Hyp)
    assert torch.equal(_out(m2, image), _out(deepcopy(ema).half().float(), image))

    # a stripped official file (ema None) whose model is pickled as models.yolo.Model (pre-v6.2 class name)
    data = _rewrite_pickle(_official_bytes(_official_ckpt(model)), b"cmodels.yolo\nDetectionModel\n",
                           b"cmodels.yolo\nModel\n")
    (tmp_path / "v6.pt").write_bytes(data)
    assert torch.equal(_out(load_model(tmp_path / "v6.pt"), image), _out(deepcopy(model).half().float(), image))

    # whole modules in torch's legacy format carry module source code: refused with a clear message
    (tmp_path / "legacy.pt").write_bytes(_official_bytes(_official_ckpt(model), legacy=True))
    with pytest.raises(CheckpointError, match=r"legacy\.pt: whole modules saved in torch's legacy"):
        load_checkpoint(tmp_path / "legacy.pt")


@pytest.mark.oracle
def test_oracle_pickles(oracle, image, tmp_path):
    om = oracle.yolo.DetectionModel(str(oracle.root / "models" / "yolov5n.yaml"), nc=3)
    om = _randomise(om, 2)
    om.names = NAMES  # official files older than v7.0 store a list
    ck = {"model": deepcopy(om).half(), "ema": None, "epoch": -1, "optimizer": None, "best_fitness": None}

    # pickled as the oracle's own classes: yolov5.models.yolo.DetectionModel is not on the allow-list
    bad = tmp_path / "oracle_path.pt"
    bad.write_bytes(_official_bytes(ck))
    with pytest.raises(UnsafeCheckpointError) as e:
        load_model(bad)
    msg = str(e.value)
    assert str(bad) in msg and "'yolov5.models.yolo.DetectionModel'" in msg and "yolov5.models.common.Conv" in msg

    # the same pickle under the official module paths (models.yolo, models.common) loads into our classes
    data = _rewrite_pickle(_official_bytes(ck), b"cyolov5.models.", b"cmodels.")
    good = tmp_path / "official.pt"
    good.write_bytes(data)
    ours = load_model(good)
    assert ours.names == dict(enumerate(NAMES))
    assert set(ours.state_dict()) == set(om.state_dict())
    ref = deepcopy(om).half().float().eval()
    with torch.no_grad():
        a, b = ours(image)[0], ref(image)[0]
    assert a.shape == b.shape == (1, 3 * (64 * 64 // 64 + 64 * 64 // 256 + 64 * 64 // 1024), 8)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------------- malicious files
class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _PathPayload:
    """Unpickling this calls pathlib.Path.write_text (pickled through builtins.getattr at protocol 2)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "pwned")


def test_malicious_pickles_refused(model, tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps(_PathPayload(marker), protocol=2))
    assert marker.read_text() == "pwned"
    marker.unlink()

    official = _official_ckpt(model)
    cases = {
        "zip.pt": (_official_bytes({"model": _Payload(marker), "epoch": 0}), "posix.system"),
        "legacy.pt": (_official_bytes({"model": _Payload(marker)}, legacy=True), "posix.system"),
        "raw_pickle.pt": (pickle.dumps(_Payload(marker), protocol=2), "posix.system"),
        "inside_official.pt": (_official_bytes({**official, "opt": {"x": _Payload(marker)}}), "posix.system"),
        "path_write.pt": (_official_bytes({"model": _PathPayload(marker)}), "getattr"),
        "our_format.pt": (_official_bytes({"format": FORMAT, "model_yaml": {}, "model": {}, "ema": None, "epoch": 0,
                                           "names": {}, "extra": _Payload(marker)}), "posix.system"),
    }
    for name, (data, culprit) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for fn in (load_checkpoint, load_model, strip_optimizer):
            with pytest.raises(UnsafeCheckpointError) as e:
                fn(path)
            msg = str(e.value)
            assert str(path) in msg and culprit in msg and "refused" in msg, (name, msg)
            assert not marker.exists(), f"{name}: payload ran in {fn.__name__}"
        assert path.read_bytes() == data  # strip_optimizer did not touch it


# ------------------------------------------------------------------------------------------- not checkpoints
def test_non_checkpoint_files(tmp_path):
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("hello.txt", "hi")
    files = {
        "text.pt": (b"just some text\n", r"not a PyTorch checkpoint or corrupt"),
        "garbage.pt": (bytes(random.Random(0).getrandbits(8) for _ in range(256)), r"not a PyTorch checkpoint"),
        "zip.pt": (zbuf.getvalue(), r"not a PyTorch checkpoint or corrupt"),
        "empty.pt": (b"", r"empty file"),
        "tensor.pt": (_official_bytes(torch.zeros(3)), r"expected a dict, got Tensor"),
        "dict.pt": (_official_bytes({"weights": torch.zeros(3)}), r"not a recognised checkpoint.*'weights'"),
        "future.pt": (_official_bytes({"format": "tinyfocal-v9"}), r"unsupported checkpoint format 'tinyfocal-v9'"),
        "partial.pt": (_official_bytes({"format": FORMAT, "model": {}}), r"missing key\(s\) \['model_yaml'"),
    }
    for name, (data, pattern) in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=pattern) as e:
            load_checkpoint(path)
        assert str(path) in str(e.value) and not isinstance(e.value, UnsafeCheckpointError), name
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*missing\.pt"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="folder"):
        load_checkpoint(tmp_path)


def test_any_unreadable_file_is_not_a_checkpoint(tmp_path):
    """Whatever a .pt holds, one line 'PATH: not a checkpoint (...)'. 'a b c d e f g h' made the weights-only
    unpickler fail with IndexError: pop from empty list, which escaped as a traceback."""
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("archive/notes.txt", "hello")
    files = {"words.pt": b"a b c d e f g h\n", "text.pt": b"just some text\n", "empty.pt": b"",
             "random.pt": bytes(random.Random(17).getrandbits(8) for _ in range(4096)), "zip.pt": zbuf.getvalue(),
             "half.pt": _official_bytes({"format": FORMAT})[:100]}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        for load in (load_checkpoint, load_model):
            with pytest.raises(CheckpointError) as e:
                load(path)
            msg = str(e.value)
            assert f"{path}: " in msg and "not a checkpoint" in msg and "\n" not in msg, (name, msg)


def test_trained_imgsz_from_the_run_options():
    assert trained_imgsz({"opt": {"imgsz": 128}}) == 128
    assert trained_imgsz({"opt": {"imgsz": [640, 320]}}) == 640  # old YOLOv5: [train, val]
    assert trained_imgsz({"opt": {"imgsz": 96.0}}) == 96
    for ck in ({"opt": {}}, {"opt": None}, {}, {"opt": {"imgsz": True}}, {"opt": {"imgsz": "640"}},
               {"opt": {"imgsz": 0}}):
        assert trained_imgsz(ck) is None, ck


def test_load_model_records_the_training_size(model, tmp_path):
    for opt, want in (({"imgsz": 128, "epochs": 3}, 128), ({}, None)):
        path = tmp_path / "w.pt"
        save_checkpoint(path, model=model, epoch=0, best_fitness=None, hyp=None, opt=opt, names=NAMES)
        assert load_model(path).train_imgsz == want


def test_load_model_mismatch(model, tmp_path):
    path = tmp_path / "ok.pt"
    save_checkpoint(path, model=model, epoch=0, best_fitness=None, hyp=None, opt={}, names=NAMES)
    ck = torch.load(path, weights_only=True)
    del ck["model"]["model.24.m.0.bias"]
    torch.save(ck, tmp_path / "missing_key.pt")
    with pytest.raises(CheckpointError, match=r"(?s)missing_key\.pt: weights do not fit.*model\.24\.m\.0\.bias"):
        load_model(tmp_path / "missing_key.pt")
    ck["model_yaml"]["backbone"][0][2] = "Focus"
    torch.save(ck, tmp_path / "bad_yaml.pt")
    with pytest.raises(CheckpointError, match=r"bad_yaml\.pt: cannot rebuild.*'Focus'"):
        load_model(tmp_path / "bad_yaml.pt")


# ------------------------------------------------------------------------------------------- atomic writes
def test_atomic_writers(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    p = atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert p.read_text(encoding="utf-8") == "héllo\n" and (p.stat().st_mode & 0o777) == 0o666 & ~umask
    atomic_write_bytes(tmp_path / "a.txt", b"\x00\x01")
    assert (tmp_path / "a.txt").read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "m.json", {"map": 0.5, "names": ["é"]})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"map": 0.5, "names": ["é"]}
    atomic_torch_save({"t": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["t"], torch.arange(3))
    with pytest.raises(FileNotFoundError, match="nofolder"):
        atomic_write_text(tmp_path / "nofolder" / "x.txt", "x")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt", "m.json", "t.pt"]  # no temporaries left


def test_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, path)
    old = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_torch_save({"epoch": 2, "f": lambda: 0}, path)  # fails half-way through serialising
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": object()})
    monkeypatch.setattr("utils.atomic.os.replace", lambda a, b: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"epoch": 3}, path)
    assert path.read_bytes() == old and [x.name for x in tmp_path.iterdir()] == ["last.pt"]
    (tmp_path / ".last.pt.123.abcd.tmp").write_bytes(b"x")
    (tmp_path / ".other.pt.1.a.tmp").write_bytes(b"x")
    assert [x.name for x in remove_stale_temps(path)] == [".last.pt.123.abcd.tmp"]
    assert sorted(x.name for x in tmp_path.iterdir()) == [".other.pt.1.a.tmp", "last.pt"]


_WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import torch
    torch.set_num_threads(1)  # before forking workers: no thread pool to inherit
    from torch import nn
    from utils.checkpoints import save_checkpoint

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros({numel}))
            self.yaml = {{"nc": 1}}

    model = Tiny()
    for line in sys.stdin:  # "path atomic base": one worker per line; the test SIGKILLs each one
        path, atomic, base = line.split()
        pid = os.fork()
        if pid == 0:
            for i in range(int(base), int(base) + 10**6):
                with torch.no_grad():
                    model.w.fill_(i)
                if atomic == "1":
                    save_checkpoint(path, model=model, epoch=i, best_fitness=None, hyp=None, opt={{}}, names=None)
                else:
                    torch.save({{"format": "tinyfocal-v1", "epoch": i, "model": model.state_dict()}}, path)
                print("saved", os.getpid(), i, flush=True)
        os.waitpid(pid, 0)
        print("dead", flush=True)
""")
NUMEL = 3_000_000


def _kill_workers(proc: subprocess.Popen, path: Path, atomic: bool, attempts: int, check, rng) -> list:
    """Fork a writer per attempt and SIGKILL it after its first save: on even attempts at a random moment, on odd
    ones a few ms after a temporary file appears (mid-write); then call check(path, last reported save)."""
    results = []
    for a in range(attempts):
        proc.stdin.write(f"{path} {int(atomic)} {a * 1000}\n")
        proc.stdin.flush()
        _, pid, last = proc.stdout.readline().split()  # first finished save of this worker
        if a % 2 and atomic:
            deadline = time.monotonic() + 2.0
            while not any(n.endswith(".tmp") for n in os.listdir(path.parent)) and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.005))
        else:
            time.sleep(rng.uniform(0.0, 0.2))
        os.kill(int(pid), signal.SIGKILL)
        for line in proc.stdout:
            if line.startswith("dead"):
                break
            last = line.split()[2]
        results.append(check(path, int(last)))
        if results[-1] == "stop":
            break
    return results


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")
def test_sigkill_during_saves_never_corrupts(tmp_path):
    def check_atomic(path: Path, last: int) -> bool:
        interrupted = bool(remove_stale_temps(path))  # a temporary left behind: the kill hit a write
        ck = load_checkpoint(path)
        assert set(REQUIRED_KEYS) <= set(ck) and ck["format"] == FORMAT
        assert ck["epoch"] in (last, last + 1)  # the last reported save, or one finished just before the kill
        w = ck["model"]["w"]
        assert w.numel() == NUMEL and float(w.min()) == float(w.max()) == ck["epoch"]
        return interrupted

    def check_plain(path: Path, last: int) -> str:
        try:
            torch.load(path, weights_only=True)
            return "ok"
        except Exception:  # truncated zip: RuntimeError, EOFError, ...
            return "stop"

    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(root=str(ROOT), numel=NUMEL))
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            bufsize=1)
    rng = random.Random(0)
    try:
        hits = _kill_workers(proc, tmp_path / "atomic.pt", True, 5, check_atomic, rng)
        assert len(hits) == 5 and any(hits), f"no kill landed during a write {hits}"
        # control: the same kills against plain torch.save corrupt the file, so the test above can fail
        assert _kill_workers(proc, tmp_path / "plain.pt", False, 8, check_plain, rng)[-1] == "stop"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
