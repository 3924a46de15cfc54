"""detect.py and utils/infer/detector.py: saved images and YOLO txt files, the Detector API, sources, EXIF, errors,
and parity of the whole detect pipeline with the YOLOv5 v7.0 reference."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detect import main, read_yolo_txt, run, yolo_txt_lines
from tests.helpers import NAMES, make_image, make_model, save_model_checkpoint
from utils.checkpoints import CheckpointError, save_checkpoint
from utils.infer.detector import Detector, load_backend
from utils.ops.nms import non_max_suppression


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("w") / "tiny.pt"
    return save_model_checkpoint(f)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("images")
    cv2.imwrite(str(d / "a.jpg"), make_image(150, 200, 1))
    cv2.imwrite(str(d / "b.png"), make_image(160, 120, 2))
    (d / "broken.jpg").write_bytes(b"not an image at all")
    return d


def test_txt_lines_round_trip_hand_computed():
    det = np.array([[10.0, 20.0, 50.0, 40.0, 0.875, 2.0]])
    assert yolo_txt_lines(det, (100, 200), save_conf=True) == ["2 0.15 0.3 0.2 0.2 0.875"]
    assert yolo_txt_lines(det, (100, 200), save_conf=False) == ["2 0.15 0.3 0.2 0.2"]


def test_detect_saves_images_and_txt_that_round_trip(weights, images, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        res = run(weights=weights, source=images, imgsz=128, save_txt=True, save_conf=True, save_crop=True,
                  project=tmp_path, name="exp")
    assert "broken.jpg" in caplog.text  # unreadable image reported and skipped
    assert [Path(r["path"]).name for r in res] == ["a.jpg", "b.png"]
    save_dir = tmp_path / "exp"
    n_total = 0
    for r in res:
        n = len(r["boxes"])
        n_total += n
        assert r["scores"].shape == (n,) and r["classes"].dtype == np.int64 and set(r["classes"]) <= {0, 1, 2}
        h, w = r["shape"]
        assert (r["boxes"] >= 0).all() and (r["boxes"][:, [0, 2]] <= w).all() and (r["boxes"][:, [1, 3]] <= h).all()
        drawn = cv2.imread(str(r["save_path"]))
        assert drawn is not None and drawn.shape[:2] == (h, w) and r["save_path"].parent == save_dir
        if n:
            back = read_yolo_txt(r["txt_path"], (h, w))
            np.testing.assert_allclose(back[:, :4], r["boxes"], atol=2e-3 * max(h, w))
            np.testing.assert_array_equal(back[:, 4], r["classes"])
            np.testing.assert_allclose(back[:, 5], r["scores"], atol=1e-5)
            assert all(len(r["times_ms"]) == 3 and t >= 0 for t in r["times_ms"])
    assert n_total > 0
    crops = list((save_dir / "crops").rglob("*.jpg"))
    assert len(crops) == n_total
    # a second run does not overwrite: exp2
    res2 = run(weights=weights, source=images / "a.jpg", imgsz=128, nosave=True, project=tmp_path, name="exp")
    assert res2[0]["save_dir"] == tmp_path / "exp2" and res2[0]["save_path"] is None
    np.testing.assert_allclose(res2[0]["boxes"], res[0]["boxes"], atol=1e-4)


def test_sources_glob_and_txt_list(weights, images, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{images / 'b.png'}\n{images / 'a.jpg'}\n")
    res = run(weights=weights, source=lst, imgsz=128, nosave=True, project=tmp_path)
    assert sorted(Path(r["path"]).name for r in res) == ["a.jpg", "b.png"]
    res = run(weights=weights, source=str(images / "*.png"), imgsz=128, nosave=True, project=tmp_path)
    assert [Path(r["path"]).name for r in res] == ["b.png"]


def test_detector_api_matches_run_and_reference_steps(weights, images):
    """Detector(path) == Detector(array) == backend + NMS + rescale done by hand."""
    det = Detector(weights, imgsz=128)
    a = det(images / "a.jpg")
    im0 = cv2.imread(str(images / "a.jpg"))
    b = det(im0)
    assert set(a) == {"boxes", "scores", "classes"} and a["boxes"].dtype == np.float32
    np.testing.assert_allclose(a["boxes"], b["boxes"])
    # by hand: 150x200 letterboxed to 96x128 (auto: minimal stride multiple), gain 0.64, pad 0 x / 0 y
    x = torch.from_numpy(cv2.resize(im0, (128, 96))[:, :, ::-1].transpose(2, 0, 1).copy()).float()[None] / 255
    ref = non_max_suppression(det.backend(x), 0.25, 0.45)[0]
    by_hand = ref[:, :4] / 0.64
    by_hand[:, [0, 2]] = by_hand[:, [0, 2]].clamp(0, 200)
    by_hand[:, [1, 3]] = by_hand[:, [1, 3]].clamp(0, 150)
    np.testing.assert_allclose(a["boxes"], by_hand.numpy(), atol=1e-3)
    np.testing.assert_allclose(a["scores"], ref[:, 4].numpy(), atol=1e-6)


def test_sliced_backend_single_tile_equals_plain(weights):
    """A tile covering the whole input: sliced inference gives exactly the plain detections."""
    backend = load_backend(weights)
    im = torch.rand((1, 3, 128, 128), generator=torch.Generator().manual_seed(0))
    plain = non_max_suppression(backend(im), 0.25, 0.45, multi_label=True)[0]
    sliced = non_max_suppression(backend.sliced(im, 128, 0.2, conf_thres=0.25, iou_thres=0.45), 0.25, 0.45,
                                 multi_label=True)[0]
    assert len(plain) > 0
    torch.testing.assert_close(sliced[sliced[:, 4].argsort(descending=True)], plain, atol=1e-4, rtol=0)


def test_sliced_detector_runs_on_real_model(weights, images, tmp_path):
    res = run(weights=weights, source=images / "a.jpg", imgsz=64, slice=96, slice_overlap=0.25, slice_full=True,
              nosave=True, project=tmp_path)
    boxes = res[0]["boxes"]
    assert boxes.shape[1] == 4 and (boxes[:, [0, 2]] <= 200).all() and (boxes[:, [1, 3]] <= 150).all()


def test_exif_orientation_is_honoured(weights, tmp_path):
    from PIL import Image

    a = make_image(60, 100, 3)[:, :, ::-1]  # RGB for PIL
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(a).save(tmp_path / "rot.jpg", exif=exif.tobytes())
    res = run(weights=weights, source=tmp_path / "rot.jpg", imgsz=64, project=tmp_path, name="e")
    assert res[0]["shape"] == (100, 60)
    assert cv2.imread(str(res[0]["save_path"])).shape[:2] == (100, 60)


def test_video_source(weights, tmp_path):
    f = tmp_path / "clip.mp4"
    wr = cv2.VideoWriter(str(f), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    if not wr.isOpened():
        pytest.skip("this OpenCV build cannot write mp4v videos")
    for i in range(3):
        wr.write(make_image(64, 96, 10 + i))
    wr.release()
    res = run(weights=weights, source=f, imgsz=64, save_txt=True, conf_thres=0.01, project=tmp_path, name="v")
    assert [r["frame"] for r in res] == [1, 2, 3]
    out = cv2.VideoCapture(str(res[0]["save_path"]))
    assert int(out.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    out.release()
    assert sorted(p.name for p in (tmp_path / "v" / "labels").glob("*.txt")) == [f"clip_{i}.txt" for i in (1, 2, 3)]


def test_bad_inputs_give_clear_messages(weights, images, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="source not found: .*nowhere"):
        run(weights=weights, source=tmp_path / "nowhere", project=tmp_path)
    with pytest.raises(FileNotFoundError, match="weights not found: .*missing.pt"):
        run(weights=tmp_path / "missing.pt", source=images, project=tmp_path)
    txt = tmp_path / "notes.pt"
    txt.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_backend(txt)
    with pytest.raises(CheckpointError, match="fake.onnx: not a valid ONNX model"):
        (tmp_path / "fake.onnx").write_bytes(b"\x00garbage")
        load_backend(tmp_path / "fake.onnx")
    assert main(["--weights", str(txt), "--source", str(images)]) == 1
    assert "notes.pt" in capsys.readouterr().err  # one line on stderr (tests/cli/test_entry_points.py checks the shape)
    det = Detector(weights, imgsz=64)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        det(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="broken.jpg: not a readable image"):
        det(images / "broken.jpg")


@pytest.mark.oracle
def test_detect_pipeline_matches_yolov5(oracle, weights, images):
    """Same weights in the reference DetectionModel (fused), its letterbox, NMS and scale_boxes."""
    ours = make_model()
    ref = oracle.yolo.DetectionModel(dict(ours.yaml), ch=3, nc=3)
    ref.load_state_dict(ours.state_dict(), strict=False)
    ref = ref.fuse().eval()
    res = run(weights=weights, source=images, imgsz=128, nosave=True, project=images.parent / "o")
    for r in res:
        im0 = cv2.imread(r["path"])
        im = oracle.augmentations.letterbox(im0, 128, stride=32, auto=True)[0]
        x = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])).float()[None] / 255
        with torch.no_grad():
            pred = ref(x)[0]
        det = oracle.general.non_max_suppression(pred, 0.25, 0.45, max_det=1000)[0]
        det[:, :4] = oracle.general.scale_boxes(x.shape[2:], det[:, :4], im0.shape).round(decimals=4)
        assert len(det) == len(r["boxes"]) > 0
        np.testing.assert_allclose(r["boxes"], det[:, :4].numpy(), atol=1e-3)
        np.testing.assert_allclose(r["scores"], det[:, 4].numpy(), atol=1e-5)
        np.testing.assert_array_equal(r["classes"], det[:, 5].numpy())


# ---------------------------------------------------------------------------------- defects of issue 17
@pytest.fixture(scope="module")
def weights_128(tmp_path_factory) -> Path:
    """The same model, its checkpoint recording a training size of 128 px (train.py's opt.imgsz)."""
    f = tmp_path_factory.mktemp("w128") / "tiny128.pt"
    save_checkpoint(f, model=make_model(), epoch=0, best_fitness=None, hyp=None, opt={"imgsz": 128}, names=NAMES)
    return f


def test_inference_size_defaults_to_the_trained_size(weights, weights_128, images, tmp_path, caplog):
    """Trained at 128 px: Detector and detect.py infer at 128, not 640; without a record (official weights): 640.
    A size more than 2x from the trained one is warned about once; 2x exactly is not."""
    with caplog.at_level(logging.WARNING):
        assert Detector(weights_128).imgsz == 128 and Detector(weights).imgsz == 640
        assert Detector(weights_128, imgsz=256).imgsz == 256 and Detector(weights_128, imgsz=64).imgsz == 64
        assert "trained at" not in caplog.text
        assert Detector(weights_128, imgsz=288).imgsz == 288
    warned = [r.getMessage() for r in caplog.records if "trained at" in r.getMessage()]
    assert warned == [f"{weights_128}: inference at 288 px but the model was trained at 128 px (on images the size of "
                      "the training images, objects appear 2.2x their trained size): pass --imgsz 128 unless the "
                      "images are larger"]
    with caplog.at_level(logging.INFO):
        res = run(weights=weights_128, source=images / "a.jpg", nosave=True, project=tmp_path)
    assert "at shape (1, 3, 128, 128)" in caplog.text
    np.testing.assert_allclose(res[0]["boxes"], Detector(weights, imgsz=128)(images / "a.jpg")["boxes"], atol=1e-4)


def test_same_file_names_from_a_list_get_separate_outputs(weights, images, tmp_path):
    """Two a.jpg (different pictures) in different folders of a .txt list: two saved images and two label files."""
    for d, seed in (("cam1", 1), ("cam2", 7)):
        (tmp_path / d).mkdir()
        cv2.imwrite(str(tmp_path / d / "a.jpg"), make_image(150, 200, seed))
    lst = tmp_path / "list.txt"
    lst.write_text("cam1/a.jpg\ncam2/a.jpg\n")
    res = run(weights=weights, source=lst, imgsz=128, save_txt=True, project=tmp_path, name="exp")
    assert len({r["save_path"] for r in res}) == 2 and len({r["txt_path"] for r in res}) == 2
    for r in res:
        assert re.fullmatch(r"a_[0-9a-f]{6}\.jpg", r["save_path"].name) and r["save_path"].is_file()
        assert r["txt_path"].stem == r["save_path"].stem
        np.testing.assert_allclose(read_yolo_txt(r["txt_path"], r["shape"])[:, :4], r["boxes"], atol=0.5)
    again = run(weights=weights, source=lst, imgsz=128, nosave=True, project=tmp_path, name="exp")
    assert [Path(r["path"]).parent.name for r in again] == ["cam1", "cam2"]  # same inputs, same output names
    assert sorted(p.name for p in (tmp_path / "exp" / "labels").glob("*.txt")) == sorted(
        r["txt_path"].name for r in res)


def test_output_stems_are_unique_and_independent_of_order():
    from utils.dataset.sources import output_stems

    files = ["/d/cam1/a.jpg", "/d/cam2/a.jpg", "/d/cam1/b.jpg", "/d/cam1/a.png"]
    stems = output_stems(files)
    assert stems["/d/cam1/b.jpg"] == "b" and len(set(stems.values())) == 4
    assert all(re.fullmatch(r"a_[0-9a-f]{6}", stems[f]) for f in files if "/a." in f)
    assert output_stems(files[::-1]) == stems and output_stems(["/x/a.jpg"]) == {"/x/a.jpg": "a"}


# ---------------------------------------------------------------------------------- hostile inputs
def _png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels (its data is a few bytes): OpenCV refuses it above 2^30 pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_a_source_with_nothing_readable_is_one_error_line(weights, tmp_path, capsys, caplog):
    """Text named .jpg and a 60000x60000 PNG header: exit 1, one line naming the source and both files, no run
    folder. With one readable image beside them: exit 0, that image done, the two skipped ones listed."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.jpg").write_text("not a picture")
    (src / "huge.png").write_bytes(_png_header(60000, 60000))
    project = tmp_path / "runs"
    with caplog.at_level(logging.WARNING):
        assert main(["--weights", str(weights), "--source", str(src), "--project", str(project)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"detect.py: error: {src}: none of the 2 input files could be read as an image or video: {src / 'huge.png'}, "
        f"{src / 'notes.jpg'}"]
    assert not project.exists() and not caplog.records  # no per-file warnings before the error line

    cv2.imwrite(str(src / "ok.jpg"), make_image(64, 80, 3))
    with caplog.at_level(logging.WARNING):
        assert main(["--weights", str(weights), "--source", str(src), "--project", str(project), "--imgsz", "64",
                     "--save-txt"]) == 0
    assert sorted(p.name for p in (project / "exp").iterdir()) == ["labels", "ok.jpg"]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"could not be read as an image or video, skipped: {src / 'huge.png'}",
                        f"could not be read as an image or video, skipped: {src / 'notes.jpg'}",
                        f"2 of 3 input files could not be read and were skipped: {src / 'huge.png'}, "
                        f"{src / 'notes.jpg'}"]
