"""export.py: ONNX export (fused, opset >= 17), checker, metadata, ONNX Runtime outputs equal to PyTorch's."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import export
from tests.helpers import NAMES, make_image, make_model
from utils.checkpoints import save_checkpoint
from utils.infer.detector import Detector, OnnxBackend, TorchBackend, load_backend

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("export")
    pt = d / "tiny.pt"
    save_checkpoint(pt, model=make_model(), epoch=0, best_fitness=None, hyp=None, opt={}, names=NAMES)
    out = export.run(pt, imgsz=64, dynamic=True, opset=17)
    return {"pt": pt, **out}


def test_export_writes_a_checked_model_with_metadata(exported):
    f = exported["file"]
    assert f == exported["pt"].with_suffix(".onnx") and f.is_file()
    proto = onnx.load(str(f))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    # YOLOv5 v7.0's DetectMultiBackend does int(meta['stride']) and eval(meta['names'])
    assert ast.literal_eval(meta["names"]) == {0: "car", 1: "person", 2: "boat"} and meta["stride"] == "32"
    assert json.loads(meta["strides"]) == [8.0, 16.0, 32.0] and json.loads(meta["nc"]) == 3
    assert json.loads(meta["imgsz"]) == [64, 64]
    assert [o.name for o in proto.graph.output] == ["output0"]
    # export.run compared ONNX Runtime with PyTorch on the export shape and on a larger batch / other size
    assert len(exported["max_diff"]) == 2 and max(exported["max_diff"].values()) <= 1e-4


def test_onnx_backend_equals_pytorch_within_1e4(exported):
    pt, ox = load_backend(exported["pt"]), load_backend(exported["file"])
    assert isinstance(pt, TorchBackend) and isinstance(ox, OnnxBackend) and ox.dynamic
    assert ox.names == pt.names == dict(enumerate(NAMES)) and ox.nc == pt.nc == 3
    torch.testing.assert_close(ox.stride, pt.stride)
    im = torch.rand((2, 3, 96, 128), generator=torch.Generator().manual_seed(1))
    a, b = pt(im), ox(im)
    assert a.shape == b.shape == (2, 3 * (12 * 16 + 6 * 8 + 3 * 4), 8)
    assert export.compare(a.numpy(), b.numpy()) <= 1e-4
    torch.testing.assert_close(b[..., 4:], a[..., 4:], atol=1e-4, rtol=0)  # scores: absolute 1e-4
    # whole pipeline: same detections from the .pt and the .onnx
    im0 = make_image(150, 200, 5)
    da, db = Detector(exported["pt"], imgsz=64, conf_thres=0.1)(im0), Detector(exported["file"], imgsz=64,
                                                                                 conf_thres=0.1)(im0)
    assert len(da["boxes"]) > 0
    np.testing.assert_allclose(db["boxes"], da["boxes"], atol=1e-3)
    np.testing.assert_array_equal(db["classes"], da["classes"])


def test_fixed_shape_export_via_cli(exported, tmp_path):
    out = tmp_path / "fixed.onnx"
    assert export.main(["--weights", str(exported["pt"]), "--imgsz", "64", "--output", str(out)]) == 0
    ox = load_backend(out)
    assert not ox.dynamic and ox.shape == [1, 3, 64, 64]
    pt = load_backend(exported["pt"])
    im = torch.rand((3, 3, 64, 64), generator=torch.Generator().manual_seed(2))
    assert export.compare(pt(im).numpy(), ox(im).numpy()) <= 1e-4  # batch of 3 run one image at a time
    with pytest.raises(ValueError, match="larger than the exported fixed size 64x64; re-export with --dynamic"):
        ox(torch.zeros((1, 3, 96, 64)))
    assert Detector(out, imgsz=128).imgsz == 64  # a fixed export decides the size


def test_export_errors_are_clear(exported, tmp_path):
    pt = exported["pt"]
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export.run(pt, 64, opset=13)
    with pytest.raises(ValueError, match="multiples of the model stride 32"):
        export.run(pt, 70)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        export.run(tmp_path / "missing.pt", 64)
    out = tmp_path / "never.onnx"
    with pytest.raises(export.ExportError, match="differs from PyTorch"):
        export.run(pt, 64, output=out, atol=-1.0)  # a tolerance no output can meet: the failure path
    assert not out.exists()
    assert export.compare(np.array([[1.0, 500.0]]), np.array([[1.0 + 5e-5, 500.04]])) == pytest.approx(8e-5)


def test_onnx_without_metadata_is_refused(exported, tmp_path):
    proto = onnx.load(str(exported["file"]))
    del proto.metadata_props[:]
    f = tmp_path / "bare.onnx"
    onnx.save(proto, str(f))
    with pytest.raises(Exception, match=r"bare.onnx: ONNX metadata lacks \['names', 'stride'\]"):
        load_backend(f)
    assert Path(exported["file"]).is_file()


def test_export_size_defaults_to_the_trained_size(tmp_path):
    """No --imgsz: the checkpoint's training size (96 px), recorded as train_imgsz, which the ONNX backend reads."""
    pt = tmp_path / "t96.pt"
    save_checkpoint(pt, model=make_model(), epoch=0, best_fitness=None, hyp=None, opt={"imgsz": 96}, names=NAMES)
    out = export.run(pt)
    assert out["metadata"]["imgsz"] == [96, 96] and out["metadata"]["train_imgsz"] == 96
    ox = load_backend(out["file"])
    assert ox.shape == [1, 3, 96, 96] and ox.train_imgsz == 96 and Detector(out["file"]).imgsz == 96


def test_val_runs_a_fixed_size_export_at_its_size_with_square_batches(exported, tmp_path, caplog):
    """val.py's rect batches are padded past a fixed export's size (64 px images -> 96 px inputs): val uses square
    batches at the export size instead, says so in one line, and scores as the .pt does on the same batches."""
    import val
    from tests.helpers import tiny_dataset
    from utils.dataset.dataloaders import create_dataloader

    fixed = tmp_path / "fixed.onnx"
    export.run(exported["pt"], imgsz=64, output=fixed)
    data = tiny_dataset(tmp_path, n_train=2, n_val=6, imgsz=64)
    kw = dict(data=str(data), single_cls=True, project=tmp_path, plots=False, workers=0, batch_size=4)
    with caplog.at_level("WARNING", logger="val"):
        got = val.run(weights=str(fixed), imgsz=128, name="onnx", **kw)
    notices = [r.getMessage() for r in caplog.records if "fixed" in r.getMessage()]
    assert notices == [f"{fixed}: exported at a fixed 64 px: using imgsz 64 with square batches (rect batches "
                       "would exceed it)"]
    square = create_dataloader(str(tmp_path / "ds" / "images" / "val"), 64, 4, 32, True, pad=0.0, rect=False,
                               workers=0, nc=4)[0]
    ref = val.run(weights=str(exported["pt"]), imgsz=64, name="pt", dataloader=square, **kw)
    assert got["n_images"] == ref["n_images"] == 6 and got["n_gt"] == ref["n_gt"] > 0
    for k in ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"):
        assert got[k] == pytest.approx(ref[k], abs=1e-3), k
    assert got["metrics/mAP_0.5"] > 0  # the random model finds a few objects: the comparison is not 0 == 0


def test_int8_data_without_readable_images_fails_before_any_file(exported, tmp_path, capsys):
    """--int8 --data whose train images are missing (a missing folder, or a .txt list of missing files): one line,
    and no .onnx written before it."""
    import yaml

    out = tmp_path / "m.onnx"
    names = dict(enumerate(NAMES))
    gone = tmp_path / "gone.yaml"
    gone.write_text(yaml.safe_dump({"path": str(tmp_path / "nowhere"), "train": "images", "val": "images",
                                    "names": names}))
    (tmp_path / "list.txt").write_text("missing1.jpg\nmissing2.jpg\n")
    (tmp_path / "notes.jpg").write_text("not a picture")
    listed = tmp_path / "listed.yaml"
    listed.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "list.txt", "val": "notes.jpg",
                                      "names": names}))
    for data, why in ((gone, "dataset not found"), (listed, "none of the 2 calibration images")):
        assert export.main(["--weights", str(exported["pt"]), "--imgsz", "64", "--output", str(out), "--int8",
                            "--data", str(data)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("export.py: error: ") and why in err[0], err
        assert not out.exists() and not list(tmp_path.glob("m*"))
