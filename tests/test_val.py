"""val.py end to end: metrics.json contents, COCO path, size buckets, and clear errors for bad input."""

import json

import pytest
import yaml

import val
from data.synthetic import generate
from models.yolo import DetectionModel
from utils.checkpoints import CheckpointError, save_checkpoint
from utils.dataset_yaml import DatasetError
from utils.hyp import load_hyp


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
