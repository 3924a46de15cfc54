"""export.py's other formats: int8 ONNX, TorchScript, OpenVINO, yolov5-pt; their loaders; YOLOv5 v7.0 compatibility.

One export of a tiny model (yolov5n, 3 classes, 64 px, dynamic axes) to every format serves all tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import export
import val
from data.prepare import check_dataset
from tests.helpers import NAMES, make_image, make_model, tiny_dataset
from utils.checkpoints import CheckpointError, load_model, save_checkpoint
from utils.infer.backends import MissingPackageError, OpenVinoBackend, TorchScriptBackend
from utils.infer.detector import Detector, OnnxBackend, load_backend
from utils.infer.export_int8 import LetterboxReader, calibration_files, decode_nodes

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

ROOT = Path(__file__).resolve().parents[2]
INT8_SCORE_TOL = 0.02  # int8 vs fp32: largest |score difference| (objectness and classes, absolute)
INT8_BOX_TOL = 0.05  # int8 vs fp32: largest |xywh difference| / max(1, |xywh|) on boxes with objectness > 0.25


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("formats")
    pt = d / "tiny.pt"
    save_checkpoint(pt, model=make_model(), epoch=0, best_fitness=None, hyp=None, opt={}, names=NAMES)
    data = tiny_dataset(d, n_train=6, n_val=2, imgsz=64)
    out = export.run(pt, imgsz=64, dynamic=True, include=["onnx", "torchscript", "openvino", "yolov5-pt"],
                     int8=True, data=data, int8_images=4)
    return {"pt": pt, "data": data, "dir": d, **out}


def _inputs(exported, n: int = 4) -> list[torch.Tensor]:
    """Letterboxed dataset images, (1, 3, 64, 64) in [0, 1]: what calibration and detect.py feed the model."""
    reader = LetterboxReader(calibration_files(check_dataset(exported["data"]), n), (64, 64), "images", 32)
    return [torch.from_numpy(feed["images"]) for feed in iter(reader.get_next, None)]


def test_every_format_is_written_with_yolov5_names(exported):
    d, files = exported["dir"], exported["files"]
    assert files == {"onnx": d / "tiny.onnx", "onnx-int8": d / "tiny-int8.onnx", "openvino": d / "tiny_openvino_model",
                     "torchscript": d / "tiny.torchscript", "yolov5-pt": d / "tiny-yolov5.pt"}
    assert sorted(p.name for p in files["openvino"].iterdir()) == ["tiny.bin", "tiny.xml", "tiny.yaml"]
    assert (d / "tiny-yolov5.yaml").is_file()
    assert not [p.name for p in d.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    # fp32 formats were checked against PyTorch at export, on the export shape and on a larger batch / size
    for fmt in ("onnx", "torchscript", "openvino"):
        assert len(exported["diffs"][fmt]) == 2 and max(exported["diffs"][fmt].values()) <= 1e-3


def test_int8_model_is_quantised_except_the_decode(exported):
    proto = onnx.load(str(exported["files"]["onnx-int8"]))
    ops = Counter(n.op_type for n in proto.graph.node)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert ops["QuantizeLinear"] > 50 and ops["DequantizeLinear"] > ops["QuantizeLinear"] and len(convs) == 60
    int8_weights = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    producer = {o: n for n in proto.graph.node for o in n.output}
    weight_dq = [producer.get(c.input[1]) for c in convs]
    assert all(n.op_type == "DequantizeLinear" and n.input[0] in int8_weights for n in weight_dq)  # int8 weights
    assert all(producer[c.input[0]].op_type == "DequantizeLinear" for c in convs)  # and uint8 activations
    out = producer["output0"]  # final concat of the three levels, fed by float decode ops, not by dequantised ints
    assert out.op_type == "Concat" and all(producer[i].op_type != "DequantizeLinear" for i in out.input)
    assert {n.op_type for n in proto.graph.node if n.name in set(decode_nodes(proto.graph))} >= {"Sigmoid", "Pow"}
    assert exported["files"]["onnx-int8"].stat().st_size < 0.4 * exported["files"]["onnx"].stat().st_size
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["stride"] == "32" and meta["names"] == "{0: 'car', 1: 'person', 2: 'boat'}"


def test_int8_outputs_close_to_fp32(exported):
    fp32, int8 = load_backend(exported["files"]["onnx"]), load_backend(exported["files"]["onnx-int8"])
    assert isinstance(int8, OnnxBackend) and int8.names == dict(enumerate(NAMES)) and int8.dynamic
    diffs = []
    for x in _inputs(exported):
        a, b = fp32(x), int8(x)
        sure = (a[..., 4] > 0.25) | (b[..., 4] > 0.25)
        assert sure.sum() >= 10  # make_model's raised head biases: boxes to compare
        diffs.append((float((a[..., 4:] - b[..., 4:]).abs().max()),
                      float(((a[..., :4] - b[..., :4]).abs() / a[..., :4].abs().clamp(min=1))[sure].max())))
    score, box = np.max(diffs, 0)
    assert 0 < score <= INT8_SCORE_TOL and 0 < box <= INT8_BOX_TOL  # quantised (not identical), yet close
    assert exported["diffs"]["int8"]["score"] <= INT8_SCORE_TOL and exported["diffs"]["int8"]["box"] <= INT8_BOX_TOL


def test_torchscript_loads_with_torch_alone_and_equals_pytorch(exported, tmp_path):
    f, x = exported["files"]["torchscript"], torch.rand((2, 3, 96, 128), generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "x.npy", x.numpy())
    code = ("import json, sys, numpy as np, torch; extra = {'config.txt': ''}; "
            f"m = torch.jit.load({str(f)!r}, _extra_files=extra); x = torch.from_numpy(np.load('x.npy')); "
            "np.save('y.npy', m(x).detach().numpy()); "
            "print(json.loads(extra['config.txt'])['stride'], 'models' in sys.modules)")
    # a fresh interpreter in another folder: nothing of this repository importable
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["32", "False"]
    model = export.PredOnly(load_model(exported["pt"], fuse=True)).eval()
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ref, rtol=1e-6, atol=1e-5)  # same ops, same order
    ts = load_backend(f)
    assert isinstance(ts, TorchScriptBackend) and ts.names == dict(enumerate(NAMES)) and ts.nc == 3
    torch.testing.assert_close(ts.stride, torch.tensor([8.0, 16.0, 32.0]))


def test_openvino_close_to_pytorch(exported):
    d = exported["files"]["openvino"]
    ov, ov_xml, pt = load_backend(d), load_backend(d / "tiny.xml"), load_backend(exported["pt"])
    assert isinstance(ov, OpenVinoBackend) and isinstance(ov_xml, OpenVinoBackend) and ov.dynamic
    assert ov.names == dict(enumerate(NAMES)) and ov.nc == 3 and int(ov.stride.max()) == 32
    x = torch.rand((2, 3, 64, 96), generator=torch.Generator().manual_seed(4))
    assert export.compare(pt(x).numpy(), ov(x).numpy()) <= 1e-4
    # fp32 on every CPU: with AVX512-BF16 or AMX the plugin's default is bf16 (outputs off by ~1e-3)
    assert ov.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    meta = yaml.safe_load((d / "tiny.yaml").read_text())
    assert meta["stride"] == 32 and meta["names"] == {0: "car", 1: "person", 2: "boat"}


ALTSTACK_CHECK = """
import ctypes, gc, os, signal, sys, torch
from pathlib import Path
from utils.infer.backends import OpenVinoBackend
class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]
def altstack_mapped():
    st = Stack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st))
    spans = [[int(a, 16) for a in line.split()[0].split("-")] for line in open("/proc/self/maps")]
    return not st.sp or any(lo <= st.sp < hi for lo, hi in spans)
a = OpenVinoBackend(Path(sys.argv[1]), torch.device("cpu"))
b = OpenVinoBackend(Path(sys.argv[1]), torch.device("cpu"))
del a; gc.collect()
del b; gc.collect()  # freed in the order made: what left the thread on an unmapped signal stack
print("mapped", altstack_mapped(), flush=True)
signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))  # a Python handler runs on that stack
os.kill(os.getpid(), signal.SIGUSR1)
"""


def test_openvino_models_freed_in_any_order_leave_signals_working(exported):
    """Two OpenVINO models loaded and freed first-made-first-freed, then a signal caught by a Python handler (as
    PyTorch's DataLoader SIGCHLD handler does): the process must live on. With a Core per model, OpenVINO left the
    thread's signal stack pointing at freed memory and the signal killed the process with SIGSEGV."""
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", ALTSTACK_CHECK, str(exported["files"]["openvino"])],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.split() == ["mapped", "True", "handled"]


@pytest.mark.parametrize("fmt", ["onnx-int8", "torchscript", "openvino"])
def test_detector_runs_every_format_like_the_pt(exported, fmt):
    im0 = make_image(150, 200, 5)
    ref = Detector(exported["pt"], imgsz=64, conf_thres=0.1)(im0)
    got = Detector(exported["files"][fmt], imgsz=64, conf_thres=0.1)(im0)
    assert len(ref["boxes"]) > 0
    if fmt == "onnx-int8":
        # make_model's boxes tie on score, so which overlapping ones NMS keeps flips with any rounding: compare the
        # scores and the classes kept (int8 boxes themselves are compared before NMS in test_int8_outputs_close...)
        k = min(len(got["scores"]), len(ref["scores"]))
        np.testing.assert_allclose(got["scores"][:k], ref["scores"][:k], atol=INT8_SCORE_TOL)
        assert set(got["classes"].tolist()) == set(ref["classes"].tolist())
    else:
        np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1e-3)
        np.testing.assert_array_equal(got["classes"], ref["classes"])


def test_val_runs_int8_and_openvino_folders(exported, tmp_path):
    common = dict(batch_size=2, workers=0, plots=False, project=tmp_path, imgsz=64, single_cls=True)  # 3 vs 4 classes
    ref = val.run(exported["data"], weights=str(exported["pt"]), name="pt", **common)
    for fmt in ("onnx-int8", "openvino"):
        r = val.run(exported["data"], weights=str(exported["files"][fmt]), name=fmt, **common)
        assert r["n_images"] == ref["n_images"] == 2
        assert r["metrics/mAP_0.5"] == pytest.approx(ref["metrics/mAP_0.5"], abs=0.05)


def test_int8_without_data_is_one_line(exported, capsys):
    assert export.main(["--weights", str(exported["pt"]), "--int8"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("export.py: error: --data is required with --int8: a dataset YAML whose train images calibrate "
                   "the int8 activation ranges")
    assert export.main(["--weights", str(exported["pt"]), "--include", "torchscript", "--int8", "--data", "x"]) == 1
    assert "--int8 quantises the ONNX model: add onnx to --include" in capsys.readouterr().err
    assert export.main(["--weights", str(exported["pt"]), "--include", "tflite"]) == 1
    assert "--include takes formats among ['onnx', 'torchscript', 'openvino', 'yolov5-pt']" in capsys.readouterr().err


def test_a_failed_check_removes_the_written_file(exported, tmp_path):
    with pytest.raises(export.ExportError, match=r"m.torchscript: TorchScript output differs from PyTorch .*: removed"):
        export.run(exported["pt"], 64, output=tmp_path / "m.onnx", include=["torchscript"], atol=-1.0)
    assert not list(tmp_path.iterdir())


def test_openvino_missing_is_one_line(exported, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    out = tmp_path / "m.onnx"
    assert export.main(["--weights", str(exported["pt"]), "--include", "openvino", "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["export.py: error: --include openvino needs the openvino package: pip install openvino"]
    assert not list(tmp_path.iterdir())  # checked before any work
    with pytest.raises(MissingPackageError, match="tiny_openvino_model: running OpenVINO models needs the openvino "
                                                  "package: pip install openvino"):
        load_backend(exported["files"]["openvino"])


def test_loader_errors_and_older_onnx_metadata(exported, tmp_path):
    with pytest.raises(CheckpointError, match="is a folder without an OpenVINO .xml model"):
        load_backend(tmp_path)
    bad = tmp_path / "bad.torchscript"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="bad.torchscript: not a TorchScript model"):
        load_backend(bad)
    # files written before this format change: stride as the per-level JSON list, names as JSON, no 'strides'
    proto = onnx.load(str(exported["files"]["onnx"]))
    del proto.metadata_props[:]
    for k, v in {"names": '{"0": "car", "1": "person", "2": "boat"}', "stride": "[8.0, 16.0, 32.0]", "nc": "3",
                 "imgsz": "[64, 64]"}.items():
        proto.metadata_props.add(key=k, value=v)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    b = load_backend(old)
    assert b.names == dict(enumerate(NAMES)) and b.stride.tolist() == [8.0, 16.0, 32.0] and b.nc == 3


@pytest.mark.oracle
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # the reference's call
def test_yolov5_detectmultibackend_loads_our_files(exported, oracle, monkeypatch):
    """YOLOv5 v7.0's own loader: int(stride) and eval(names) from ONNX metadata, config.txt from TorchScript (its
    OpenVINO branch needs openvino.runtime, gone from openvino 2026: only the metadata file is checked)."""
    no_hub = lambda *a, **k: None  # noqa: E731 - offline: no Hugging Face lookup
    monkeypatch.setattr(oracle.common, "attempt_download_from_hub", no_hub)
    monkeypatch.setattr(sys.modules["yolov5.utils.downloads"], "attempt_download_from_hub", no_hub)
    x = torch.rand((1, 3, 64, 96), generator=torch.Generator().manual_seed(5))
    for fmt in ("onnx", "onnx-int8", "torchscript"):
        ref = oracle.common.DetectMultiBackend(str(exported["files"][fmt]), device=torch.device("cpu"))
        assert ref.stride == 32 and ref.names == {0: "car", 1: "person", 2: "boat"}
        tol = 1e-4 if fmt == "torchscript" else 0.0  # ours feeds TorchScript channels-last: float rounding only
        with torch.no_grad():
            torch.testing.assert_close(ref(x).float(), load_backend(exported["files"][fmt])(x), rtol=0, atol=tol)
    xml = exported["files"]["openvino"] / "tiny.xml"
    assert oracle.common.DetectMultiBackend._load_metadata(xml.with_suffix(".yaml")) == (32, dict(enumerate(NAMES)))


@pytest.mark.oracle
def test_yolov5_model_loads_the_state_dict_strictly(exported, oracle):
    f = exported["files"]["yolov5-pt"]
    state = torch.load(f, weights_only=True)  # plain tensors: no class of ours or YOLOv5's is unpickled
    assert all(isinstance(v, torch.Tensor) for v in state.values()) and "model.24.anchors" in state
    cfg = yaml.safe_load(f.with_suffix(".yaml").read_text())
    assert cfg["names"] == dict(enumerate(NAMES)) and cfg["stride"] == [8.0, 16.0, 32.0] and cfg["nc"] == 3
    ref = oracle.yolo.Model(str(f.with_suffix(".yaml")))
    ref.load_state_dict(state, strict=True)
    ours = load_model(exported["pt"])  # unfused, like ref
    x = torch.rand((2, 3, 64, 96), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(ref.eval()(x)[0], ours.eval()(x)[0], rtol=1e-5, atol=1e-5)
