"""data/synthetic.py (deterministic, tiny-object size distribution, idempotent) and utils/dataset_yaml.py."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from data.prepare import check_dataset
from data.synthetic import NAMES, SyntheticParams, generate, make_image
from utils.dataset.labels import img2label_paths, verify_image_label
from utils.errors import DatasetError


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_bytes_and_seed(tmp_path):
    a = _files(generate(tmp_path / "a", n_train=3, n_val=2, imgsz=96, seed=5))
    b = _files(generate(tmp_path / "b", n_train=3, n_val=2, imgsz=96, seed=5))
    c = _files(generate(tmp_path / "c", n_train=3, n_val=2, imgsz=96, seed=6))
    assert len(a) == 3 * 2 + 2 * 2 + 1 and a == b
    assert a[next(k for k in a if k.suffix == ".jpg")] != c[next(k for k in c if k.suffix == ".jpg")]
    # val images do not depend on the number of training images
    d = _files(generate(tmp_path / "d", n_train=1, n_val=2, imgsz=96, seed=5))
    assert all(d[k] == a[k] for k in d if "val" in k.parts)


def test_idempotent_and_regenerated_on_change(tmp_path):
    root = generate(tmp_path, n_train=2, n_val=1, imgsz=64)
    im = root / "images" / "train" / "000000.jpg"
    stamp = im.stat().st_mtime_ns
    (root / "labels" / "train.cache").write_text("stale")
    generate(tmp_path, n_train=2, n_val=1, imgsz=64)
    assert im.stat().st_mtime_ns == stamp  # reused
    generate(tmp_path, n_train=1, n_val=1, imgsz=64)
    assert not (root / "images" / "train" / "000001.jpg").exists()  # regenerated with the new parameters
    assert not (root / "labels" / "train.cache").exists()


def test_labels_valid_and_size_distribution():
    p = SyntheticParams()
    labels = []
    for i in range(40):
        im, lb = make_image(p, "train", i)
        assert im.shape == (256, 256, 3) and im.dtype == np.uint8
        assert p.min_objects - 2 <= len(lb) <= p.max_objects
        labels.append(lb)
    lb = np.concatenate(labels)
    assert set(np.unique(lb[:, 0]).astype(int)) == set(range(len(NAMES)))
    assert (lb[:, 1:] >= 0).all() and (lb[:, 1:] <= 1).all()
    x1, x2 = lb[:, 1] - lb[:, 3] / 2, lb[:, 1] + lb[:, 3] / 2
    assert (x1 >= -1e-6).all() and (x2 <= 1 + 1e-6).all()
    area = lb[:, 3] * lb[:, 4] * 256**2
    tiny = (area < 32 * 32).mean()
    assert 0.4 <= tiny <= 0.7, tiny  # roughly half the objects are COCO-small
    side = np.sqrt(area)
    assert side.min() >= 4 and side.max() <= 140


def test_objects_are_drawn_where_labelled(tmp_path):
    root = generate(tmp_path, n_train=4, n_val=1, imgsz=128)
    for f in sorted((root / "images" / "train").glob("*.jpg")):
        r = verify_image_label(str(f), img2label_paths([str(f)])[0], nc=len(NAMES))
        assert r.ok and r.shape == (128, 128) and len(r.labels)
        hsv = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2HSV)
        for _, x, y, w, h in r.labels:
            if w * h * 128**2 >= 100:  # saturated object colour at the centre of boxes >= 10x10 px
                assert hsv[int(y * 128), int(x * 128), 1] > 100


def test_check_dataset_synthetic_yaml(tmp_path):
    cfg = tmp_path / "syn.yaml"
    cfg.write_text(yaml.safe_dump(dict(path="ds", train="images/train", val="images/val", names=list(NAMES),
                                       download="synthetic", synthetic=dict(n_train=2, n_val=1, imgsz=64))))
    d = check_dataset(cfg)
    assert d["path"] == (tmp_path / "ds").resolve() and d["nc"] == 4 and d["names"] == dict(enumerate(NAMES))
    assert d["val"] == str(tmp_path / "ds" / "images" / "val") and len(list((tmp_path / "ds").rglob("*.jpg"))) == 3


def test_repo_yamls(tmp_path):
    root = Path(__file__).resolve().parents[2]
    if not (root / "datasets" / "coco128" / "images" / "train2017").exists():  # relative path -> repo datasets/
        with pytest.raises(DatasetError, match=str(root / "datasets" / "coco128" / "images" / "train2017")):
            check_dataset(root / "data" / "coco128.yaml", autodownload=False)
    raw = yaml.safe_load((root / "data" / "coco128.yaml").read_text())
    (tmp_path / "images" / "train2017").mkdir(parents=True)
    d = check_dataset({**raw, "path": str(tmp_path)})
    assert d["nc"] == 80 and d["names"][79] == "toothbrush" and d["download"].startswith("https://")
    raw = yaml.safe_load((root / "data" / "synthetic-tiny.yaml").read_text())
    assert raw["path"] == "datasets/synthetic-tiny" and raw["download"] == "synthetic"
    d = check_dataset({**raw, "path": str(tmp_path / "syn"), "synthetic": dict(n_train=1, n_val=1, imgsz=64)})
    assert d["names"] == dict(enumerate(NAMES)) and len(list((tmp_path / "syn").rglob("*.txt"))) == 2


def test_check_dataset_errors(tmp_path):
    (tmp_path / "images").mkdir()
    base = dict(path=str(tmp_path), train="images", val="images")
    assert check_dataset({**base, "names": ["a", "b"]})["names"] == {0: "a", 1: "b"}
    assert check_dataset({**base, "nc": 2})["names"] == {0: "class0", 1: "class1"}
    assert check_dataset({**base, "names": {0: "a", 1: "b"}, "nc": 2})["nc"] == 2
    with pytest.raises(DatasetError, match="nc=3 does not match the 2 entries"):
        check_dataset({**base, "names": ["a", "b"], "nc": 3})
    with pytest.raises(DatasetError, match="'val' is missing"):
        check_dataset(dict(path=str(tmp_path), train="images", names=["a"]))
    with pytest.raises(DatasetError, match="needs 'names'"):
        check_dataset(base)
    with pytest.raises(DatasetError, match="ids must be 0..1"):
        check_dataset({**base, "names": {0: "a", 2: "b"}})
    with pytest.raises(DatasetError, match="missing val image source.*nope.*no 'download'"):
        check_dataset({**base, "val": "nope", "names": ["a"]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(DatasetError, match="bad.yaml: not valid YAML"):
        check_dataset(bad)
    with pytest.raises(DatasetError, match="data YAML not found: .*missing.yaml"):
        check_dataset(tmp_path / "missing.yaml")
    with pytest.raises(DatasetError, match="scripts are never executed"):
        check_dataset({**base, "val": "nope", "names": ["a"], "download": "import os"})


def test_check_dataset_unreachable_url(tmp_path):
    cfg = tmp_path / "d.yaml"
    url = "http://127.0.0.1:9/missing.zip"  # the discard port on loopback: refused at once, no network needed
    cfg.write_text(yaml.safe_dump(dict(path="ds", train="images/train", val="images/val", names=["a"],
                                       download=url)))
    with pytest.raises(DatasetError, match=r"could not reach http://127\.0\.0\.1:9/missing\.zip.*images/val"):
        check_dataset(cfg)
