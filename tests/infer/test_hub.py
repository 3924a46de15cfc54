"""hubconf.py, utils/infer/hub.py (AutoShape) and utils/infer/results.py (Detections): torch.hub loading of our
checkpoints, parity with detect.run, the accepted input forms, the results object (hand-computed boxes, pandas, render,
save, crop), official weights through a 127.0.0.1 server, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detect import run
from models.yolo import DetectionModel
from tests.helpers import NAMES, make_image, randomise_weights, save_model_checkpoint
from utils.checkpoints import CheckpointError, save_checkpoint
from utils.infer.hub import AutoShape
from utils.infer.results import XYWH_COLUMNS, XYXY_COLUMNS, Detections

ROOT = Path(__file__).resolve().parents[2]
IMGSZ = 128  # the tiny checkpoint's recorded training size: the default of both detect.run and the hub model


def hub_load(entry: str, **kwargs):
    return torch.hub.load(str(ROOT), entry, source="local", **kwargs)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("w") / "tiny.pt"
    return save_model_checkpoint(f, {"imgsz": IMGSZ})


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """PNG (lossless: OpenCV and PIL decode the same pixels) images of two aspect ratios and a larger one."""
    d = tmp_path_factory.mktemp("images")
    cv2.imwrite(str(d / "a.png"), make_image(150, 200, 1))
    cv2.imwrite(str(d / "b.png"), make_image(160, 120, 2))
    cv2.imwrite(str(d / "big.png"), make_image(200, 260, 3))  # 2 x 3 tiles of 128 px
    return d


@pytest.fixture(scope="module")
def model(weights):
    return hub_load("custom", path=str(weights), device="cpu")


def assert_same_boxes(a: np.ndarray, b: np.ndarray, atol: float = 1e-3) -> None:
    """Equal (n, 6) detection sets, whatever the order of near-equal scores: every row of each has a row of the
    other within ``atol`` in every column."""
    assert a.shape == b.shape and len(a) > 0
    d = np.abs(a[:, None, :] - b[None, :, :]).max(2)
    assert d.min(1).max() < atol and d.min(0).max() < atol


def as_det(r: dict) -> np.ndarray:
    return np.concatenate((r["boxes"], r["scores"][:, None], r["classes"][:, None].astype(np.float32)), 1)


# ---------------------------------------------------------------------------------------------------- loading, parity
def test_hub_custom_equals_detect_run(model, weights, images, tmp_path):
    assert isinstance(model, AutoShape) and model.size == IMGSZ and model.names == dict(enumerate(NAMES))
    files = [images / "a.png", images / "b.png", images / "a.png"]  # two shapes; a.png twice: a batch of 2
    conf, iou = 0.5, 0.3
    refs = run(weights=weights, source=files[:2], conf_thres=conf, iou_thres=iou, nosave=True, project=tmp_path)
    model.conf, model.iou = conf, iou
    res = model([str(f) for f in files])
    model.conf, model.iou = 0.25, 0.45
    assert res.n == 3 and res.s == [(96, 128), (128, 96), (96, 128)]
    for i, ref in enumerate([*refs, refs[0]]):
        assert res.ims[i].shape[:2] == ref["shape"]
        assert_same_boxes(res.xyxy[i].numpy(), as_det(ref))
        assert res.xyxy[i][:, 4].min() > conf
    # sliced inference: the same as detect.py --slice
    ref = run(weights=weights, source=images / "big.png", slice=128, slice_overlap=0.25, nosave=True,
              project=tmp_path)[0]
    res = model(images / "big.png", slice=(128, 0.25))
    assert_same_boxes(res.xyxy[0].numpy(), as_det(ref))
    assert model.slice == 0  # the call's argument did not change the setting


def test_inputs_path_pil_numpy_url_list_agree(model, images):
    path = images / "a.png"
    ref = model(path).xyxy[0].numpy()
    bgr = cv2.imread(str(path))
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    for im in (str(path), Image.open(path), rgb, rgb.transpose(2, 0, 1)):
        np.testing.assert_allclose(model(im).xyxy[0].numpy(), ref, atol=1e-5)
    assert model(path, size=64).s == [(64, 64)]  # 150x200 -> 48x64, padded to the stride (32)
    assert model(path, size=(96, 64)).s == [(64, 64)] and model(path, size=100).s == [(96, 128)]  # 100 -> 128
    grey = model(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)).xyxy[0]  # HW greyscale accepted
    assert grey.shape[1] == 6
    res = model([Image.open(images / "b.png"), str(path), rgb])
    assert res.files == ["b.jpg", "a.jpg", "image2.jpg"]
    for det in res.xyxy[1:]:
        np.testing.assert_allclose(det.numpy(), ref, atol=1e-3)
    # numpy arrays are RGB (YOLOv5's convention): the BGR array is a different image with different detections
    bgr_det = model(bgr).xyxy[0].numpy()
    assert bgr_det.shape != ref.shape or np.abs(bgr_det - ref).max() > 1e-3
    # http(s) URLs are downloaded (here from a local server)
    with _server({"/img/a.png": path.read_bytes()}) as (base, seen):
        res = model(f"{base}/img/a.png")
        assert seen == ["/img/a.png"] and res.files == ["a.jpg"]
        np.testing.assert_allclose(res.xyxy[0].numpy(), ref, atol=1e-5)
        with pytest.raises(ValueError, match=r"/img/missing.png: could not download the image: HTTP 404"):
            model(f"{base}/img/missing.png")


def test_tensor_input_is_passed_through(model):
    x = torch.rand(2, 3, 64, 96)
    out = model(x)
    assert out.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 5 + len(NAMES))
    torch.testing.assert_close(out, model.backend(x))


# ---------------------------------------------------------------------------------------------------- results
def hand_detections() -> Detections:
    """A 100x200 (h x w) grey image with a 'boat' box [10, 20, 50, 40] and a whole-image 'car' box."""
    im = np.full((100, 200, 3), 90, np.uint8)
    pred = torch.tensor([[10.0, 20.0, 50.0, 40.0, 0.9, 2.0], [0.0, 0.0, 200.0, 100.0, 0.5, 0.0]])
    return Detections([im], [pred], ["image0.jpg"], (1.0, 2.0, 3.0), dict(enumerate(NAMES)), [(64, 128)])


def test_results_boxes_pandas_and_summary_hand_computed():
    r = hand_detections()
    torch.testing.assert_close(r.xywh[0][:, :4], torch.tensor([[30.0, 30.0, 40.0, 20.0], [100.0, 50.0, 200.0, 100.0]]))
    torch.testing.assert_close(r.xyxyn[0][:, :4], torch.tensor([[0.05, 0.2, 0.25, 0.4], [0.0, 0.0, 1.0, 1.0]]))
    torch.testing.assert_close(r.xywhn[0][:, :4], torch.tensor([[0.15, 0.3, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0]]))
    torch.testing.assert_close(r.xyxyn[0][:, 4:], r.xyxy[0][:, 4:])  # conf and class are not normalised
    assert len(r) == r.n == 1 and r.t == (1.0, 2.0, 3.0) and len(r.tolist()) == 1
    assert str(r).splitlines() == ["image 1/1: 100x200 1 car, 1 boat",
                                   "Speed: 1.0ms pre-process, 2.0ms inference, 3.0ms NMS per image at shape "
                                   "(1, 3, 64, 128)"]
    p = r.pandas()
    assert list(p.xyxy[0].columns) == list(XYXY_COLUMNS) and list(p.xywhn[0].columns) == list(XYWH_COLUMNS)
    assert p.xyxy[0]["name"].tolist() == ["boat", "car"] and p.xyxy[0]["class"].tolist() == [2, 0]
    np.testing.assert_allclose(p.xywh[0][["xcenter", "ycenter", "width", "height"]].to_numpy(),
                               r.xywh[0][:, :4].numpy())
    assert isinstance(r.xyxy[0], torch.Tensor)  # pandas() returns a copy


def test_results_of_the_model_pandas_match_tensors(model, images):
    r = model([images / "a.png", images / "b.png"])
    assert r.n == 2 and all(t >= 0 for t in r.t) and r.names == dict(enumerate(NAMES))
    df = r.pandas().xyxy[0]
    assert list(df.columns) == list(XYXY_COLUMNS) and len(df) == len(r.xyxy[0]) > 0
    np.testing.assert_allclose(df[list(XYXY_COLUMNS[:5])].to_numpy(), r.xyxy[0][:, :5].numpy(), rtol=1e-6)
    assert df["class"].tolist() == r.xyxy[0][:, 5].long().tolist()
    assert df["name"].tolist() == [NAMES[c] for c in df["class"]]
    counts = df["name"].value_counts()
    assert r.summary(0).startswith(f"image 1/2: 150x200 {counts.get('car', 0)} car")
    singles = r.tolist()
    assert [s.n for s in singles] == [1, 1] and torch.equal(singles[1].xyxy[0], r.xyxy[1])


def test_render_save_crop(tmp_path):
    r = hand_detections()
    drawn = r.render()[0]
    assert drawn.shape == (100, 200, 3) and (r.ims[0] == 90).all()  # ims left as they were
    changed = (drawn != 90).any(2)
    assert changed[40, 10:50].all()  # the bottom edge of the boat box
    assert not changed[60:80, 60:140].any()  # inside the car box, away from its edges and labels
    assert (drawn[40, 30] == (255, 112, 31)).all()  # in the boat's colour, RGB (utils.plots.color(2))
    folder = r.save(save_dir=tmp_path / "exp")
    saved = cv2.imread(str(folder / "image0.jpg"))
    assert folder == tmp_path / "exp" and saved.shape == (100, 200, 3) and saved[..., ::-1].std() > 1
    assert r.save(save_dir=tmp_path / "exp") == tmp_path / "exp2"  # incremented, never overwritten
    crops = r.crop(save_dir=tmp_path / "crops")
    # boat: centre (30, 30), size (40, 20) * 1.02 + 10 = (50.8, 30.4) -> x 4.6..55.4, y 14.8..45.2 -> [4:55, 14:45]
    assert crops[0]["im"].shape == (31, 51, 3) and crops[0]["label"] == "boat 0.90"
    assert crops[0]["file"] == tmp_path / "crops" / "crops" / "boat" / "image0.jpg"
    assert cv2.imread(str(crops[0]["file"])).shape == (31, 51, 3)
    # car: (200, 100) * 1.02 + 10 = (214, 112) around (100, 50), clipped to the image
    assert crops[1]["im"].shape == (100, 200, 3)
    assert crops[1]["file"] == tmp_path / "crops" / "crops" / "car" / "image02.jpg" and crops[1]["file"].is_file()
    nothing = r.crop(save=False, save_dir=tmp_path / "none")
    assert [c["file"] for c in nothing] == [None, None] and not (tmp_path / "none").exists()


def test_crops_of_the_model_are_inside_the_image(model, images, tmp_path):
    r = model(images / "a.png")
    crops = r.crop(save_dir=tmp_path / "exp")
    assert len(crops) == len(r.xyxy[0]) > 0
    for c in crops:
        x1, y1, x2, y2 = c["box"].tolist()
        w, h = (x2 - x1) * 1.02 + 10, (y2 - y1) * 1.02 + 10
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        ex = min(int(cx + w / 2), 200) - max(int(cx - w / 2), 0)
        ey = min(int(cy + h / 2), 150) - max(int(cy - h / 2), 0)
        assert c["im"].shape == (ey, ex, 3) and cv2.imread(str(c["file"])).shape == (ey, ex, 3)


# ---------------------------------------------------------------------------------------------------- official names
class _server:
    """A 127.0.0.1 HTTP server in a thread serving ``files`` {url path: bytes}; yields (base URL, requested paths)."""

    def __init__(self, files: dict[str, bytes]):
        seen: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                seen.append(self.path)
                body = files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd, self.seen = ThreadingHTTPServer(("127.0.0.1", 0), Handler), seen

    def __enter__(self) -> tuple[str, list[str]]:
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}", self.seen

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_yolov5n_pretrained_through_local_mirror(tmp_path, monkeypatch, images):
    """A fake 'yolov5n.pt' (a yolov5n with 80 classes in our format) served on 127.0.0.1: fetched once into the
    cache; classes=80 loads it as it is, classes=3 transfers every tensor whose shape fits (not the head convs)."""
    names = [f"obj{i}" for i in range(80)]
    src = tmp_path / "src.pt"
    torch.manual_seed(0)
    fake = randomise_weights(DetectionModel("yolov5n.yaml"), seed=1)
    save_checkpoint(src, model=fake, epoch=-1, best_fitness=None, hyp=None, opt={"imgsz": 640}, names=names)
    monkeypatch.setenv("TINYFOCAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # no 'yolov5n.pt' in the working folder
    ref = torch.load(src, weights_only=True)["model"]
    x = torch.rand(1, 3, 64, 64)
    with _server({"/v7.0/yolov5n.pt": src.read_bytes()}) as (base, seen):
        monkeypatch.setenv("TINYFOCAL_WEIGHTS_URL", f"{base}/v7.0")
        m = hub_load("yolov5n", device="cpu")
        assert seen == ["/v7.0/yolov5n.pt.sha256", "/v7.0/yolov5n.pt"]
        assert (tmp_path / "cache" / "weights" / "yolov5n.pt").read_bytes() == src.read_bytes()
        assert isinstance(m, AutoShape) and m.names[79] == "obj79" and m.size == 640
        torch.testing.assert_close(m(x), fake(x)[0], atol=1e-3, rtol=1e-4)  # fused: equal up to rounding
        seen.clear()
        bare = hub_load("yolov5n", classes=3, autoshape=False, device="cpu")
        assert seen == []  # from the cache
        sd = bare.state_dict()
        assert torch.equal(sd["model.0.conv.weight"], ref["model.0.conv.weight"].float())
        assert torch.equal(sd["model.23.cv3.conv.weight"], ref["model.23.cv3.conv.weight"].float())
        assert sd["model.24.m.0.weight"].shape[0] == 3 * 8 != ref["model.24.m.0.weight"].shape[0]
        assert bare.names == {0: "class0", 1: "class1", 2: "class2"} and not bare.training
        r = hub_load("yolov5n", classes=3, device="cpu", conf=0.0)(images / "a.png")
        assert r.names == bare.names and r.xyxy[0].shape[1] == 6
        scratch = hub_load("yolov5n", pretrained=False, autoshape=False, device="cpu")
        assert seen == [] and not torch.equal(scratch.state_dict()["model.0.conv.weight"],
                                              ref["model.0.conv.weight"].float())


# ---------------------------------------------------------------------------------------------------- errors
def test_bad_paths_and_inputs_raise_one_line(model, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    for path, err, what in ((text, CheckpointError, "not a checkpoint"), (tmp_path, CheckpointError, "folder"),
                            (tmp_path / "missing.pt", FileNotFoundError, "not found")):
        with pytest.raises(err) as e:
            hub_load("custom", path=str(path), device="cpu")
        assert str(path) in str(e.value) and what in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="image not found: nowhere.png"):
        model("nowhere.png")
    with pytest.raises(ValueError, match=r"image 0 \(array\): expected uint8 pixels"):
        model(np.zeros((64, 64, 3)))
    with pytest.raises(TypeError, match="image 1: expected a path"):
        model([np.zeros((64, 64, 3), np.uint8), 3])
    with pytest.raises(TypeError, match="image 0: a torch.Tensor is accepted only alone"):
        model([torch.zeros(3, 64, 64)])
    with pytest.raises(ValueError, match="a tensor input must be a"):
        model(torch.zeros(3, 64, 64))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        model(str(bad))
    with pytest.raises(TypeError, match=r"unknown hub model setting\(s\) \['confidence'\]"):
        hub_load("custom", path=str(text), confidence=0.5)
    with pytest.raises(ValueError, match="unknown model 'yolov5q'"):
        from utils.infer.hub import create
        create("yolov5q")


def test_hubconf_import_is_light_and_checks_packages(monkeypatch, weights):
    code = ("import sys, json; before = list(sys.path); import hubconf; "
            "print(json.dumps([sorted(m for m in ('torch', 'utils', 'models', 'cv2') if m in sys.modules), "
            "sys.path == before, hubconf.dependencies]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded, same_path, deps = json.loads(out.stdout)
    assert loaded == [] and same_path and "torch" in deps
    fake = type(sys)("utils")
    fake.__file__ = "/elsewhere/utils/__init__.py"
    monkeypatch.setitem(sys.modules, "utils", fake)  # another hub repo's 'utils' already imported
    with pytest.raises(ImportError, match=r"a different 'utils' package is already imported \(from /elsewhere"):
        hub_load("custom", path=str(weights))


def test_fixed_size_onnx_gives_detects_notice_once(weights, images, tmp_path, caplog):
    """A fixed 64 px ONNX asked for size=256: the hub runs at 64 and says so once, in detect.py's words; its boxes
    equal detect.py's (which does the same)."""
    pytest.importorskip("onnxruntime")
    import logging

    import export

    f = tmp_path / "fixed64.onnx"
    export.run(weights, imgsz=64, output=f)
    m = hub_load("custom", path=str(f), device="cpu")
    im = str(images / "a.png")
    with caplog.at_level(logging.WARNING):
        r = m(im, size=256)
        again = m(im, size=256)
        at64 = m(im, size=64)
    notices = [rec.getMessage() for rec in caplog.records if "fixed" in rec.getMessage()]
    assert notices == [f"{f}: exported at a fixed 64 px: using imgsz 64"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        res = run(weights=f, source=im, imgsz=256, nosave=True, project=tmp_path)
    assert [rec.getMessage() for rec in caplog.records if "fixed" in rec.getMessage()] == notices
    assert_same_boxes(r.xyxy[0].numpy(), as_det(res[0]))
    assert torch.equal(r.xyxy[0], again.xyxy[0]) and torch.equal(r.xyxy[0], at64.xyxy[0])
