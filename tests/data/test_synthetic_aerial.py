"""data/synthetic_aerial.py: determinism, exact label boxes, occlusion rule, sizes, idempotent marker, the YAML."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from data.prepare import check_dataset
from data.synthetic_aerial import (
    NAMES,
    AerialParams,
    generate,
    object_labels,
    object_polygons,
    paint,
    rasterise,
    sample_sides,
)
from utils.config.data_yaml import ROOT
from utils.dataset.labels import img2label_paths, verify_image_label
from utils.errors import DatasetError


def _files(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Six default-size images (3 train, 2 val, 1 test), generated once for the module."""
    return generate(tmp_path_factory.mktemp("aerial") / "a", n_train=3, n_val=2, n_test=1)


def test_deterministic_bytes_and_independent_splits(small, tmp_path):
    a = _files(small)
    assert len(a) == 6 * 2 + 1  # images, labels and the marker
    b = _files(generate(tmp_path / "b", n_train=3, n_val=2, n_test=1))
    assert a == b
    # val and test images do not depend on the other splits' counts; the seed changes the images
    c = _files(generate(tmp_path / "c", n_train=1, n_val=1, n_test=1))
    assert all(c[k] == a[k] for k in c if k.parts[0] in ("images", "labels"))
    d = _files(generate(tmp_path / "d", n_train=1, n_val=0, n_test=0, seed=1))
    k = Path("images/train/000000.jpg")
    assert d[k] != a[k]


def test_labels_valid_all_classes_and_counts(small):
    labels = []
    for f in sorted((small / "images").rglob("*.jpg")):
        r = verify_image_label(str(f), img2label_paths([str(f)])[0], nc=len(NAMES))
        assert r.ok and r.shape == (256, 256), r
        labels.append(r.labels)
    lb = np.concatenate(labels)
    assert (lb[:, 1:] > 0).all() and (lb[:, 1:] <= 1).all()
    x1, y1 = lb[:, 1] - lb[:, 3] / 2, lb[:, 2] - lb[:, 4] / 2
    x2, y2 = lb[:, 1] + lb[:, 3] / 2, lb[:, 2] + lb[:, 4] / 2
    assert (x1 >= -1e-5).all() and (y1 >= -1e-5).all() and (x2 <= 1 + 1e-5).all() and (y2 <= 1 + 1e-5).all()
    assert set(np.unique(lb[:, 0]).astype(int)) == set(range(6))
    assert all(10 <= len(x) <= 40 for x in labels) and 18 <= len(lb) / 6 <= 32  # ~25 per image
    w_px = lb[:, 3] * 256  # labels are pixel-edge boxes: whole pixels wide
    assert np.abs(w_px - np.round(w_px)).max() < 1e-3


@pytest.mark.parametrize("cls", range(6))
@pytest.mark.parametrize("angle", [0.0, 0.5, 2.2])
def test_label_box_is_tight_box_of_drawn_pixels(cls, angle):
    n = 64
    im = np.full((n, n, 3), 100, np.float32)
    polys = object_polygons(cls, 30.3, 27.8, 14.0, 1.8 if cls < 3 else 1.0, angle)
    x0, y0, patch = rasterise(polys)
    paint(im, x0, y0, patch, np.array([200, 30, 60], np.float32))
    ys, xs = np.nonzero((im != 100).any(2))
    drawn = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # pixel edges
    lb = object_labels([(cls, x0, y0, patch)], np.zeros((n, n), bool), 0.5)
    assert lb.shape == (1, 5) and lb[0, 0] == cls
    box = np.array([lb[0, 1] - lb[0, 3] / 2, lb[0, 2] - lb[0, 4] / 2, lb[0, 1] + lb[0, 3] / 2,
                    lb[0, 2] + lb[0, 4] / 2]) * n
    np.testing.assert_allclose(box, drawn, atol=1e-3)
    # the polygons' vertex box has side 14 px; rasterisation moves each edge by at most one pixel
    assert abs(math.sqrt((drawn[2] - drawn[0]) * (drawn[3] - drawn[1])) - 14.0) <= 1.5
    assert abs((drawn[0] + drawn[2]) / 2 - 30.3) <= 1 and abs((drawn[1] + drawn[3]) / 2 - 27.8) <= 1


def test_occlusion_and_image_border_rules():
    n = 40
    patch = np.zeros((12, 12), np.float32)
    patch[1:11, 1:11] = 1.0  # a 10 x 10 px object at image px [11, 21) x [6, 16)
    occ = np.zeros((n, n), bool)
    occ[6:16, 11:15] = True  # 40% covered: labelled with the full box
    lb = object_labels([(3, 10, 5, patch)], occ, 0.5)
    np.testing.assert_allclose(lb, [[3, 16 / n, 11 / n, 10 / n, 10 / n]])
    occ[6:16, 11:17] = True  # 60% covered: dropped
    assert object_labels([(3, 10, 5, patch)], occ, 0.5).shape == (0, 5)
    # 7 of 10 columns inside the image: the box is clipped to the image, 3 columns outside: dropped
    free = np.zeros((n, n), bool)
    np.testing.assert_allclose(object_labels([(1, -4, 5, patch)], free, 0.5), [[1, 3.5 / n, 11 / n, 7 / n, 10 / n]])
    assert object_labels([(1, -7, 5, patch)], free, 0.5).shape == (0, 5)


def test_side_sampler_shares():
    p = AerialParams()
    side = sample_sides(np.random.default_rng(0), 4000, p)
    assert side.min() >= 2 and side.max() <= 64

    def lognormal_cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(math.log(x / p.side_median) / (p.side_sigma * math.sqrt(2))))

    # mixture: 90% log-normal (median 9, log-std 0.6), 10% log-uniform [32, 64]
    assert abs((side < 32).mean() - 0.9 * lognormal_cdf(32)) < 0.02  # 0.885
    assert abs((side < 16).mean() - 0.9 * lognormal_cdf(16)) < 0.025  # 0.748
    assert abs(np.median(side[side < 32]) - 9) < 0.6
    # the big share is log-uniform (as many in [32, 45.25) as in [45.25, 64]) plus the log-normal tail above 32
    mid, tail = 32 * math.sqrt(2), 0.9 * (1 - lognormal_cdf(32))
    expected = (0.5 * 0.1 + 0.9 * (lognormal_cdf(mid) - lognormal_cdf(32))) / (0.1 + tail)  # 0.54
    assert abs((side[side >= 32] < mid).mean() - expected) < 0.07
    q = AerialParams(big_frac=0.0, side_sigma=0.0, side_median=5.0)
    np.testing.assert_array_equal(sample_sides(np.random.default_rng(1), 50, q), 5.0)


def test_idempotent_and_regenerated_on_change(tmp_path):
    kw = dict(n_train=2, n_val=1, n_test=1, imgsz=64, min_objects=2, max_objects=4)
    root = generate(tmp_path, **kw)
    im = root / "images" / "test" / "000000.jpg"
    stamp = im.stat().st_mtime_ns
    (root / "labels" / "test.cache").write_text("stale")
    generate(tmp_path, AerialParams(**kw))  # the same parameters given as a dataclass
    assert im.stat().st_mtime_ns == stamp and (root / "labels" / "test.cache").exists()
    generate(tmp_path, **{**kw, "n_test": 0, "n_train": 1})
    assert not im.exists() and not (root / "images" / "train" / "000001.jpg").exists()
    assert not (root / "labels" / "test.cache").exists()
    with pytest.raises(TypeError, match="colour"):
        generate(tmp_path, colour=3)
    with pytest.raises(ValueError, match="big_frac"):
        generate(tmp_path, big_frac=1.5)


def test_yaml_through_check_dataset(tmp_path):
    raw = yaml.safe_load((ROOT / "data" / "synthetic-aerial.yaml").read_text())
    assert raw["download"] == "synthetic-aerial" and list(raw["names"].values()) == list(NAMES)
    # the study's size (docs/experiments.md): 160 px, ~10-20 objects an image
    assert {k: raw["synthetic"][k] for k in ("n_train", "n_val", "n_test", "imgsz", "min_objects", "max_objects")} \
        == dict(n_train=600, n_val=200, n_test=400, imgsz=160, min_objects=8, max_objects=20)
    raw["path"] = "ds"
    raw["synthetic"] = dict(n_train=1, n_val=1, n_test=2, imgsz=64, min_objects=2, max_objects=4)
    cfg = tmp_path / "aerial.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    d = check_dataset(cfg)
    assert d["nc"] == 6 and d["names"] == dict(enumerate(NAMES))
    assert d["test"] == str(tmp_path / "ds" / "images" / "test")
    assert len(list(Path(d["test"]).glob("*.jpg"))) == 2 and len(list(Path(d["val"]).glob("*.jpg"))) == 1
    raw["synthetic"]["side_sigma"] = -1
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(DatasetError, match="side_sigma"):
        check_dataset(cfg)
    shutil.rmtree(tmp_path / "ds")
    raw["synthetic"] = dict(n_val=1, flavour="x")
    cfg.write_text(yaml.safe_dump(raw))
    with pytest.raises(DatasetError, match="flavour"):
        check_dataset(cfg)


def test_val_runs_on_the_test_split(tmp_path):
    import val
    from models.yolo import DetectionModel
    from utils.checkpoints import save_checkpoint
    from utils.config.hyp import load_hyp

    raw = yaml.safe_load((ROOT / "data" / "synthetic-aerial.yaml").read_text())
    raw["path"] = str(tmp_path / "ds")
    raw["synthetic"] = dict(n_train=1, n_val=1, n_test=3, imgsz=64, min_objects=2, max_objects=4)
    cfg = tmp_path / "aerial.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    weights = tmp_path / "w.pt"
    save_checkpoint(weights, model=DetectionModel("yolov5n.yaml", nc=6), epoch=0, best_fitness=0.0,
                    hyp=load_hyp("hyp.tfl.yaml").to_dict(), opt={}, names=raw["names"])
    res = val.run(str(cfg), str(weights), imgsz=64, batch_size=4, task="test", project=tmp_path, name="v", workers=0)
    n_gt = sum(len(f.read_text().splitlines()) for f in (tmp_path / "ds" / "labels" / "test").glob("*.txt"))
    assert res["n_images"] == 3 and res["n_gt"] == n_gt > 0
