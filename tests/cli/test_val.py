"""val.py end to end: metrics.json contents, COCO path, size buckets, and clear errors for bad input."""

import json
import logging
import re

import cv2
import numpy as np
import pytest
import torch
import yaml

import val
from data.synthetic import generate
from models.yolo import DetectionModel
from utils.checkpoints import CheckpointError, save_checkpoint
from utils.config.hyp import load_hyp
from utils.dataset.labels import LabelError
from utils.errors import DatasetError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    generate(root / "data", n_train=4, n_val=6, imgsz=96, seed=5)
    data = root / "data.yaml"
    names = {0: "circle", 1: "rectangle", 2: "triangle", 3: "cross"}
    data.write_text(yaml.safe_dump({"path": str(root / "data"), "train": "images/train", "val": "images/val",
                                    "names": names}))
    model = DetectionModel("yolov5n.yaml", nc=4)
    weights = root / "w.pt"
    save_checkpoint(weights, model=model, epoch=0, best_fitness=0.0, hyp=load_hyp("hyp.tfl.yaml").to_dict(),
                    opt={}, names=names)
    return data, weights, root


def test_metrics_json_and_coco(setup, tmp_path):
    data, weights, _ = setup
    res = val.run(str(data), str(weights), imgsz=64, batch_size=4, save_json=True, size_buckets_spec="coco",
                  project=tmp_path, name="v", workers=0, plots=True)
    saved = json.loads((tmp_path / "v" / "metrics.json").read_text())
    for k in ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95"):
        assert 0 <= saved[k] <= 1 and saved[k] == pytest.approx(res[k])
    assert set(saved["size_buckets"]) == {"small", "medium", "large"}
    assert sum(b["n_gt"] for b in saved["size_buckets"].values()) == saved["n_gt"] > 0
    assert set(saved["coco"]) >= {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"}
    assert (tmp_path / "v" / "PR_curve.png").is_file() and (tmp_path / "v" / "confusion_matrix.png").is_file()


def test_default_buckets_split_at_the_runs_tfl_s(setup, tmp_path):
    data, weights, _ = setup
    res = val.run(str(data), str(weights), imgsz=64, batch_size=4, project=tmp_path, name="v", workers=0,
                  plots=False, tfl_s=400.0)
    tiny, big = res["size_buckets"]["tiny"], res["size_buckets"]["big"]
    assert tiny["hi"] == 400.0 and big["lo"] == 400.0
    assert tiny["n_gt"] + big["n_gt"] == res["n_gt"]


def test_bucket_spec_parsing():
    assert val.bucket_spec(["coco"]) == "coco"
    assert val.bucket_spec(["0", "64", "inf"]) == [0.0, 64.0, float("inf")]
    with pytest.raises(ValueError, match="size-buckets"):
        val.bucket_spec(["0", "big"])


def test_bad_inputs_are_named(setup, tmp_path):
    data, weights, root = setup
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        val.run(str(data), str(root / "nope.pt"), imgsz=64, project=tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    with pytest.raises(CheckpointError, match="junk.pt"):
        val.run(str(data), str(junk), imgsz=64, project=tmp_path)
    no_val = tmp_path / "noval.yaml"
    no_val.write_text(yaml.safe_dump({"path": str(root / "data"), "train": "images/train", "names": ["a"]}))
    with pytest.raises(DatasetError, match=r"noval\.yaml.*'val'"):
        val.run(str(no_val), str(weights), imgsz=64, project=tmp_path)
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump({"path": str(root / "data"), "train": "images/train", "val": "images/val",
                                   "names": ["a", "b"]}))
    with pytest.raises(ValueError, match="trained for 4 classes.*has 2"):
        val.run(str(two), str(weights), imgsz=64, project=tmp_path)


# ---------------------------------------------------------------------------------- defects of issue 17
OBJECTS = ((1, 20.0, 20.0, 12.0, 12.0), (2, 44.0, 40.0, 10.0, 14.0))  # cls, xywh original px of a 64 x 64 image


class StubBackend:
    """An inference backend (``utils.infer.detector._Backend``'s attributes) with nc = 4 that finds ``OBJECTS`` exactly
    but calls every one class 0: input px of val's rect batch, which pads the 64 px image to a square."""

    device, stride, nc, names, hyp, train_imgsz = torch.device("cpu"), torch.tensor([8.0, 16.0, 32.0]), 4, {}, None, 64

    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        bs, _, h, w = im.shape
        xywh = torch.tensor([o[1:] for o in OBJECTS]) + torch.tensor([(w - 64) / 2, (h - 64) / 2, 0, 0])
        rows = torch.cat((xywh, torch.full((len(OBJECTS), 1), 0.9), torch.tensor([[1.0, 0, 0, 0]] * len(OBJECTS))), 1)
        return rows.expand(bs, -1, -1).clone()


def _scene(folder, name: str = "a") -> None:
    """folder/images/NAME.png (64 x 64 grey) with labels/NAME.txt holding ``OBJECTS``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "images" / f"{name}.png"), np.full((64, 64, 3), 90, np.uint8))
    (folder / "labels" / f"{name}.txt").write_text("".join(f"{c} {x / 64} {y / 64} {w / 64} {h / 64}\n"
                                                           for c, x, y, w, h in OBJECTS))


def test_single_cls_collapses_labels_and_predictions(tmp_path, monkeypatch):
    """A 4-class model on 4-class data: predictions of the right boxes with the wrong class score mAP 0, and 1 with
    --single-cls (before the fix: "pass --single-cls" although it was passed, and every label 'corrupt' for nc=1)."""
    _scene(tmp_path / "ds")
    data = {"nc": 4, "names": dict(enumerate("abcd")), "val": str(tmp_path / "ds" / "images")}
    monkeypatch.setattr(val, "load_backend", lambda *a, **k: StubBackend())
    kw = dict(weights="stub.pt", batch_size=1, workers=0, plots=False, project=tmp_path, conf_thres=0.001)
    multi = val.run(data, **kw, name="multi")
    assert multi["metrics/mAP_0.5"] == 0.0 and multi["n_gt"] == 2
    one = val.run(data, **kw, name="one", single_cls=True)
    # 0.995: what YOLOv5's 101-point interpolated AP gives a perfect detector
    assert one["metrics/mAP_0.5"] == pytest.approx(0.995) and one["metrics/recall"] == pytest.approx(1.0)
    assert one["n_gt"] == 2 and set(one["per_class"]) == {"item"}


def test_single_cls_with_a_real_multiclass_checkpoint(setup, tmp_path, caplog):
    data, weights, root = setup
    n_rows = sum(len(f.read_text().split("\n")) - 1 for f in (root / "data" / "labels" / "val").glob("*.txt"))
    with caplog.at_level(logging.INFO):
        res = val.run(str(data), str(weights), imgsz=64, batch_size=4, single_cls=True, project=tmp_path, name="s",
                      workers=0, plots=False)
    assert set(res["per_class"]) <= {"item"} and res["n_gt"] == n_rows > 0
    assert f"Results saved to {tmp_path / 's'}" in caplog.text  # val.py says where its results are


def test_same_file_names_from_a_list_get_separate_outputs(tmp_path, monkeypatch):
    """Two a.png in different folders of a .txt list: two label files and two COCO image ids, not one."""
    for d in ("cam1", "cam2"):
        _scene(tmp_path / d)
    lst = tmp_path / "val.txt"
    lst.write_text("cam1/images/a.png\ncam2/images/a.png\n")
    monkeypatch.setattr(val, "load_backend", lambda *a, **k: StubBackend())
    data = {"nc": 4, "names": dict(enumerate("abcd")), "val": str(lst)}
    val.run(data, "stub.pt", batch_size=2, workers=0, plots=False, project=tmp_path, name="v", save_txt=True,
            save_json=True)
    txt = sorted(p.name for p in (tmp_path / "v" / "labels").glob("*.txt"))
    assert len(txt) == 2 and all(re.fullmatch(r"a_[0-9a-f]{6}\.txt", n) for n in txt), txt
    for t in txt:  # each holds its own image's two detections
        assert len((tmp_path / "v" / "labels" / t).read_text().splitlines()) == 2
    ids = {d["image_id"] for d in json.loads((tmp_path / "v" / "stub_predictions.json").read_text())}
    assert ids == {t[:-4] for t in txt}


def test_val_split_without_labels_is_refused(tmp_path, monkeypatch):
    _scene(tmp_path / "ds")
    (tmp_path / "ds" / "labels" / "a.txt").unlink()
    monkeypatch.setattr(val, "load_backend", lambda *a, **k: StubBackend())
    data = {"nc": 4, "names": dict(enumerate("abcd")), "val": str(tmp_path / "ds" / "images")}
    with pytest.raises(LabelError, match=r"no labels to validate against: none of its 1 images has a label file "
                                         r"\(expected YOLO \.txt files in .*ds/labels\)"):
        val.run(data, "stub.pt", batch_size=1, workers=0, project=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_imgsz_defaults_to_the_trained_size(tmp_path, monkeypatch):
    """No --imgsz: the checkpoint's training size (the stub's 64), not 640 or 128."""
    import utils.dataset.dataloaders

    _scene(tmp_path / "ds")
    seen = []

    def spy(path, imgsz, *a, **k):
        seen.append(imgsz)
        return utils.dataset.dataloaders.create_dataloader(path, imgsz, *a, **k)

    monkeypatch.setattr(val, "load_backend", lambda *a, **k: StubBackend())
    monkeypatch.setattr(val, "create_dataloader", spy)
    data = {"nc": 4, "names": dict(enumerate("abcd")), "val": str(tmp_path / "ds" / "images")}
    val.run(data, "stub.pt", batch_size=1, workers=0, plots=False, project=tmp_path)
    val.run(data, "stub.pt", imgsz=96, batch_size=1, workers=0, plots=False, project=tmp_path)
    assert seen == [64, 96]
