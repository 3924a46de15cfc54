"""Benchmark evaluation protocols (utils/config/protocols.py, utils/eval/protocol_eval.py) against pycocotools, the
AI-TOD evaluator and hand-worked fixtures; val.py's --protocol, --max-det and the data YAML's protocol key."""

import contextlib
import copy
import dataclasses
import io
import json
import logging
import math

import cv2
import numpy as np
import pytest
import torch
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import val
from data.prepare import check_dataset
from tests.oracle import load_package
from utils.config.protocols import PROTOCOLS, get_protocol
from utils.errors import DatasetError, UsageError
from utils.eval.protocol_eval import EvalImage, coco_dicts, evaluate_protocol, ignored_share

COCO_NAMES = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")


def crowded_fixture(seed: int = 0, counts=(350, 7, 30), size: int = 640) -> list[EvalImage]:
    """Images with 350 objects (over 100 of each class: pycocotools caps per image and class), 7 and 30, of 3
    classes (sides 2-120 px); detections jittered from them with random scores, 15 % missed, 12 false positives
    per image; coordinates with 3 decimals, scores with 5 (COCO JSON's)."""
    rng = np.random.default_rng(seed)
    images = []
    for n in counts:
        xy = rng.uniform(0, size - 130, (n, 2))
        wh = np.exp(rng.uniform(np.log(2), np.log(120), (n, 2)))
        labels = np.c_[rng.integers(0, 3, n), xy, xy + wh].round(3)
        found = rng.random(n) < 0.85
        boxes = (labels[found, 1:] + rng.normal(0, 1.0, (found.sum(), 4))).round(3)
        dets = np.c_[boxes, rng.random(found.sum()).round(5), labels[found, 0]]
        a, b = rng.uniform(0, size, (12, 2)), rng.uniform(0, size, (12, 2))
        fp = np.c_[np.minimum(a, b), np.maximum(a, b)].round(3)
        dets = np.r_[dets, np.c_[fp, rng.random(12).round(5), rng.integers(0, 3, 12)]]
        images.append(EvalImage(size, size, labels, dets))
    return images


def pycocotools_stats(images: list[EvalImage], classes=(0, 1, 2)) -> np.ndarray:
    """pycocotools' own 12 numbers, the way a user gets them: annotation JSON, loadRes of the results, defaults."""
    anns, res = [], []
    for i, im in enumerate(images, 1):
        for c, x1, y1, x2, y2 in im.labels.tolist():
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        res += [{"image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
                for x1, y1, x2, y2, s, c in im.dets.tolist()]
    gt = {"images": [{"id": i, "width": im.width, "height": im.height} for i, im in enumerate(images, 1)],
          "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in classes]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.where(ev.stats < 0, np.nan, ev.stats)


def test_coco_with_max_det_100_equals_pycocotools_exactly_on_a_crowded_image():
    images = crowded_fixture()
    assert max(len(im.labels) for im in images) > 100
    ours = evaluate_protocol(get_protocol("coco").with_max_det(100), images, [0, 1, 2])
    assert list(ours) == list(COCO_NAMES)
    np.testing.assert_array_equal(np.array(list(ours.values())), pycocotools_stats(images))  # bit for bit
    assert ours["AR100"] < evaluate_protocol(get_protocol("coco").with_max_det(300), images, [0, 1, 2])["AR300"]


def test_aitod_equals_the_aitod_evaluator():
    fce = load_package("faster_coco_eval_aitod")
    images = crowded_fixture(seed=1, counts=(400, 60, 9))
    ours = evaluate_protocol(get_protocol("aitod"), images, [0, 1, 2])
    gt, dt = coco_dicts(images, [0, 1, 2], "crowd")
    res = [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in dt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = fce.COCO(copy.deepcopy(gt))
        ev = fce.COCOeval_faster(coco, coco.loadRes(res), "bbox", print_function=lambda *a: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert list(ev.params.maxDets) == [1, 100, 1500]
    # its stats: AP, AP25 (-1: not an IoU threshold), AP50, AP75, AP_vt, AP_t, AP_s, AP_m, AR1, AR100, AR1500,
    # AR_vt, AR_t, AR_s, AR_m, then LRP numbers
    theirs = np.array(ev.all_stats)[[0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]
    np.testing.assert_allclose(np.array(list(ours.values())), theirs, rtol=0, atol=1e-4)
    assert ours["AP_vt"] > 0 and ours["AR1500"] > ours["AR100"]


def grid_image(n_side: int = 20, cell: int = 8, obj: int = 4) -> EvalImage:
    """n_side² objects of ``obj`` px on a grid, each found exactly (scores all different)."""
    c = (np.arange(n_side) * cell + cell / 2).astype(float)
    cx, cy = np.meshgrid(c, c)
    boxes = np.c_[cx.ravel() - obj / 2, cy.ravel() - obj / 2, cx.ravel() + obj / 2, cy.ravel() + obj / 2]
    scores = np.linspace(0.99, 0.5, len(boxes))
    size = n_side * cell
    return EvalImage(size, size, np.c_[np.zeros(len(boxes)), boxes], np.c_[boxes, scores, np.zeros(len(boxes))])


def test_400_objects_recall_one_under_aitod_a_quarter_under_coco():
    im = grid_image()
    assert len(im.labels) == 400
    assert evaluate_protocol(get_protocol("aitod"), [im], [0])["AR1500"] == pytest.approx(1.0)
    coco = evaluate_protocol(get_protocol("coco"), [im], [0])
    assert coco["AR100"] == pytest.approx(0.25) and coco["AR10"] == pytest.approx(0.025)


def ignore_scene() -> EvalImage:
    """100 x 100 image, the ignore region x < 50. Objects: A (10 x 10, outside), B (inside), C (half inside:
    [45, 80, 55, 90]) and D (40 % inside: [46, 40, 56, 50]). Detections: on A (0.9), on nothing inside the region
    (0.95), on C (0.8), a false positive outside (0.5)."""
    labels = np.array([[0, 60, 10, 70, 20], [0, 10, 10, 20, 20], [0, 45, 80, 55, 90], [0, 46, 40, 56, 50]], float)
    dets = np.array([[60, 10, 70, 20, 0.9, 0], [20, 60, 30, 70, 0.95, 0], [45, 80, 55, 90, 0.8, 0],
                     [80, 80, 90, 90, 0.5, 0]], float)
    return EvalImage(100, 100, labels, dets, np.array([[0.0, 0.0, 50.0, 100.0]]))


def test_visdrone_ignore_rule_by_hand():
    im = ignore_scene()
    share = ignored_share(im.labels[:, 1:], im.ignore, 100, 100)
    assert share.tolist() == pytest.approx([0.0, 1.0, 0.5, 0.4])
    # B and C (>= 50 % inside) and the 0.95 detection are removed: A found (0.9), D missed, FP at 0.5
    # -> precision 1 up to recall 0.5: AP50 = 51 / 101 (101-point interpolation); AR = 0.5 at any cap
    r = evaluate_protocol(get_protocol("visdrone"), [im], [0])
    assert list(r) == ["AP", "AP50", "AP75", "AR1", "AR10", "AR100", "AR500"]
    assert r["AP50"] == pytest.approx(51 / 101) and r["AP"] == pytest.approx(51 / 101)
    assert r["AR500"] == pytest.approx(0.5) and r["AR1"] == pytest.approx(0.5)
    # the same image without its ignore region: 4 objects; 0.95 FP, 0.9 TP (A), 0.8 TP (C), 0.5 FP
    # -> precision 1/2 at recall 1/4 and 2/3 at recall 1/2: interpolated 2/3 up to recall 0.5
    plain = evaluate_protocol(get_protocol("visdrone"), [dataclasses.replace(im, ignore=np.zeros((0, 4)))], [0])
    assert plain["AP50"] == pytest.approx(51 * (2 / 3) / 101)


def test_coco_crowd_rule_by_hand():
    # the ignore region as an iscrowd box: the 0.95 detection lies in it (IoD 1) and is ignored; B inside it is
    # still an object (COCO does not drop crowd-covered objects): 4 objects, TPs A and C
    r = evaluate_protocol(get_protocol("coco"), [ignore_scene()], [0])
    assert r["AP50"] == pytest.approx(51 / 101)  # 0.9 TP, 0.8 TP -> precision 1 to recall 0.5, then FP
    assert r["AR100"] == pytest.approx(0.5)


def tinyperson_scene() -> list[EvalImage]:
    """Image 1: a 6-px person P (tiny1), a 30-px person Q (small), an ignore box [50, 50, 90, 90]. Detections: in
    the ignore box (0.9; IoU with it 0.0225, IoD 1), a 6-px one inside Q (0.75; IoD 1 with Q), on P (0.7), a false
    positive (0.65). Image 2: a 6-px person R, found (0.85), and a false positive (0.6)."""
    one = EvalImage(200, 200, np.array([[0, 10, 10, 16, 16], [0, 100, 100, 130, 130]], float),
                    np.array([[60, 60, 66, 66, 0.9, 0], [110, 110, 116, 116, 0.75, 0], [10, 10, 16, 16, 0.7, 0],
                              [150, 10, 156, 16, 0.65, 0]], float), np.array([[50.0, 50, 90, 90]]))
    two = EvalImage(200, 200, np.array([[0, 30, 30, 36, 36]], float),
                    np.array([[30, 30, 36, 36, 0.85, 0], [170, 170, 176, 176, 0.6, 0]], float))
    return [one, two]


def test_tinyperson_rules_by_hand():
    r = evaluate_protocol(get_protocol("tinyperson"), tinyperson_scene(), [0])
    assert list(r)[:5] == ["AP50_tiny1", "AP50_tiny2", "AP50_tiny3", "AP50_tiny", "AP50_small"]
    # tiny1 (1-8 px): 0.9 ignored (IoD with the ignore box), 0.85 TP, 0.75 ignored (IoD with Q, an object outside
    # the range), 0.7 TP, 0.65 and 0.6 FP -> precision 1 up to recall 1: AP 1
    assert r["AP50_tiny1"] == pytest.approx(1.0)
    assert r["AP25_tiny"] == pytest.approx(1.0) and r["AP75_tiny"] == pytest.approx(1.0)
    assert math.isnan(r["AP50_tiny2"])  # no person of 8-12 px
    # small (20-32 px): Q is missed; every detection is 6 px, outside the range and unmatched: ignored -> AP 0
    assert r["AP50_small"] == 0.0
    # MR on tiny1 (2 images): TP 0.85 and 0.7 (FPPI 0, recall 1), then FPs -> miss rate 0 everywhere (-> 1e-10)
    assert r["MR50_tiny1"] == pytest.approx(1e-10)
    # COCO's crowd rule instead: the 0.9 detection is still ignored (IoD 1 with the crowd box) but the 0.75 one
    # is a false positive between the two hits: precision 1 to recall 0.5, 2/3 to recall 1
    coco_like = dataclasses.replace(get_protocol("tinyperson"), ignore="crowd")
    assert evaluate_protocol(coco_like, tinyperson_scene(), [0])["AP50_tiny1"] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_log_average_miss_rate_by_hand():
    # 2 images, 2 people: TP 0.9, FP 0.8, TP 0.7 -> fppi 0, .5, .5 and recall .5, .5, 1: miss rate 0.5 at the 7
    # FPPI points below 0.5, 0 (-> 1e-10) at 0.56 and 1.0
    one = EvalImage(100, 100, np.array([[0, 10, 10, 16, 16]], float),
                    np.array([[10, 10, 16, 16, 0.9, 0], [50, 50, 56, 56, 0.8, 0]], float))
    two = EvalImage(100, 100, np.array([[0, 10, 10, 16, 16]], float), np.array([[10, 10, 16, 16, 0.7, 0]], float))
    mr = evaluate_protocol(get_protocol("tinyperson"), [one, two], [0])["MR50_tiny1"]
    assert mr == pytest.approx(math.exp((7 * math.log(0.5) + 2 * math.log(1e-10)) / 9))


def test_registry_is_frozen_and_checks_itself():
    p = get_protocol("aitod")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_dets = (1, 2, 3)
    assert p.max_det == 1500 and p.with_max_det(3000).max_dets == (1, 100, 3000) and p.max_dets[-1] == 1500
    with pytest.raises(ValueError, match=r"--max-det 100: protocol aitod needs more than 100"):
        p.with_max_det(100)
    with pytest.raises(ValueError, match="unknown evaluation protocol 'dota'"):
        get_protocol("dota")
    assert set(PROTOCOLS) == {"yolov5", "coco", "aitod", "visdrone", "tinyperson"}
    assert {k: PROTOCOLS[k].max_det for k in PROTOCOLS} == {"yolov5": 300, "coco": 100, "aitod": 1500,
                                                             "visdrone": 500, "tinyperson": 200}


def test_benchmark_yamls_name_their_protocol_and_a_bad_one_is_refused(tmp_path):
    from utils.config.data_yaml import ROOT

    for f, name in (("VisDrone", "visdrone"), ("AI-TOD", "aitod"), ("TinyPerson", "tinyperson"), ("xView", "coco")):
        assert yaml.safe_load((ROOT / "data" / f"{f}.yaml").read_text())["protocol"] == name
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "a", "val": "a", "names": ["x"],
                                   "protocol": "voc"}))
    with pytest.raises(DatasetError, match=r"bad\.yaml: 'protocol' must be one of yolov5, coco, aitod.*got 'voc'"):
        check_dataset(bad)


# ------------------------------------------------------------------------------------------ val.py end to end
class GridBackend:
    """Finds the 400 objects of ``grid_image`` exactly (input px of val's letterboxed, padded 160 px image)."""

    device, stride, nc, names, hyp, train_imgsz = torch.device("cpu"), torch.tensor([8.0, 16.0, 32.0]), 1, {}, None, 160

    def __call__(self, im: torch.Tensor) -> torch.Tensor:
        bs, _, h, w = im.shape
        g = grid_image()
        b = torch.from_numpy(g.dets[:, :4]).float() + torch.tensor([(w - 160) / 2, (h - 160) / 2] * 2)
        rows = torch.cat(((b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2], torch.from_numpy(g.dets[:, 4:5]).float(),
                          torch.ones((len(b), 1))), 1)
        return rows.expand(bs, -1, -1).clone()


@pytest.fixture()
def grid_data(tmp_path, monkeypatch):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "labels").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "ds" / "images" / "g.png"), np.full((160, 160, 3), 90, np.uint8))
    g = grid_image()
    xywh = np.c_[(g.labels[:, 1:3] + g.labels[:, 3:5]) / 2, g.labels[:, 3:5] - g.labels[:, 1:3]] / 160
    (tmp_path / "ds" / "labels" / "g.txt").write_text("".join(f"0 {x} {y} {w} {h}\n" for x, y, w, h in xywh))
    monkeypatch.setattr(val, "load_backend", lambda *a, **k: GridBackend())
    return {"nc": 1, "names": {0: "car"}, "val": str(tmp_path / "ds" / "images")}


def test_val_protocols_caps_and_the_cap_warning(grid_data, tmp_path, caplog):
    kw = dict(weights="stub.pt", batch_size=1, workers=0, plots=False, project=tmp_path)
    with caplog.at_level(logging.INFO):
        aitod = val.run(grid_data, **kw, name="aitod", protocol="aitod")
    assert aitod["protocol"]["metrics"]["AR1500"] == pytest.approx(1.0)
    assert aitod["max_det"] == {"cap": 1500, "images_at_cap": 0, "max_gt_per_image": 400}
    assert "reached the cap" not in caplog.text
    saved = json.loads((tmp_path / "aitod" / "metrics.json").read_text())
    assert saved["protocol"]["name"] == "aitod" and saved["protocol"]["metrics"]["AP_vt"] == pytest.approx(1.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        coco = val.run(grid_data, **kw, name="coco", protocol="coco")
    assert coco["protocol"]["metrics"]["AR100"] == pytest.approx(0.25)  # NMS and pycocotools both stop at 100
    lines = [r.message for r in caplog.records if "reached the cap" in r.message]
    assert lines == ["1 of 1 images reached the cap of 100 detections per image (--max-det, protocol coco); the "
                     "most ground truths in one image is 400"]
    more = val.run(grid_data, **kw, name="coco500", protocol="coco", max_det=500)
    assert more["protocol"]["metrics"]["AR500"] == pytest.approx(1.0) and more["protocol"]["max_dets"] == [1, 10, 500]
    default = val.run(grid_data, **kw, name="v5")  # yolov5: today's numbers, capped at 300, no protocol entry
    assert "protocol" not in default and default["max_det"]["cap"] == 300
    assert default["metrics/recall"] == pytest.approx(0.75)
    with pytest.raises(UsageError, match=r"--max-det 10: protocol coco needs more than 10"):
        val.run(grid_data, **kw, name="bad", protocol="coco", max_det=10)


def test_val_uses_the_data_yamls_protocol_and_the_flag_wins(grid_data, tmp_path):
    data = {**grid_data, "protocol": "visdrone"}
    kw = dict(weights="stub.pt", batch_size=1, workers=0, plots=False, project=tmp_path)
    r = val.run(data, **kw, name="yaml")
    assert r["protocol"]["name"] == "visdrone" and r["max_det"]["cap"] == 500
    assert r["protocol"]["metrics"]["AR500"] == pytest.approx(1.0) and r["protocol"]["metrics"]["AR100"] == 0.25
    assert val.run(data, **kw, name="flag", protocol="yolov5")["max_det"]["cap"] == 300
    opt = val.get_args_parser().parse_args(["--weights", "w.pt", "--protocol", "tinyperson", "--nms", "nwd"])
    kwargs = val.run_kwargs(opt)
    assert kwargs["protocol"] == "tinyperson" and kwargs["nms"] == "nwd" and kwargs["max_det"] is None
