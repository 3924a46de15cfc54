"""One entry-point shape for val.py, detect.py and export.py: ``main(argv) -> int``; a user error (missing or
unreadable weights, missing or bad data YAML, missing source, bad flags) is exit status 1, ONE line on stderr naming
the file or flag, and nothing new under ``--project``."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import cv2
import pytest
import yaml

from models.yolo import DetectionModel
from tests.helpers import NAMES, make_image, make_model, tiny_dataset
from utils.checkpoints import save_checkpoint


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Paths for the command lines, as strings: good ones and bad ones (in a folder apart from --project)."""
    d = tmp_path_factory.mktemp("inputs")
    weights = d / "good.pt"
    save_checkpoint(weights, model=make_model(), epoch=0, best_fitness=None, hyp=None, opt={"imgsz": 64}, names=NAMES)
    (d / "words.pt").write_text("a b c d e f g h\n")  # once: IndexError: pop from empty list, a traceback
    (d / "bad.yaml").write_text("train: [images/train\nval: images/val\n")  # unclosed bracket: not YAML
    (d / "noval.yaml").write_text(yaml.safe_dump({"path": str(d), "train": "images", "names": ["a"]}))
    (d / "images").mkdir()
    cv2.imwrite(str(d / "images" / "a.jpg"), make_image(96, 128, 1))
    data = tiny_dataset(d / "tiny", n_train=1, n_val=2, imgsz=64)
    w4 = d / "four.pt"  # the synthetic data has 4 classes
    save_checkpoint(w4, model=DetectionModel("yolov5n.yaml", nc=4).eval(), epoch=0, best_fitness=None, hyp=None,
                    opt={"imgsz": 64}, names=["circle", "rectangle", "triangle", "cross"])
    return {"weights": str(weights), "words": str(d / "words.pt"), "missing": str(d / "missing.pt"),
            "data": str(data), "nodata": str(d / "nodata.yaml"), "bad": str(d / "bad.yaml"),
            "noval": str(d / "noval.yaml"), "images": str(d / "images"), "nosource": str(d / "nosource"),
            "w4": str(w4)}


BAD = [  # script, argv (with {placeholders} from ``inputs``), what the one line must name
    ("val", "--weights {missing} --data {data}", "missing.pt"),
    ("val", "--weights {words} --data {data}", "words.pt: not a checkpoint"),
    ("val", "--weights {weights} --data {nodata}", "nodata.yaml"),
    ("val", "--weights {weights} --data {bad}", "bad.yaml: not valid YAML"),
    ("val", "--weights {weights} --data {noval}", "noval.yaml: 'val' is missing"),
    ("val", "--weights {weights} --data {data} --batch-size 0", "--batch-size must be >= 1, got 0"),
    ("val", "--weights {weights} --data {data} --imgsz abc", "--imgsz"),
    ("val", "--weights {weights} --data {data} --size-buckets 0 big", "--size-buckets"),
    ("val", "--data {data}", "the following arguments are required: --weights"),
    ("detect", "--weights {missing} --source {images}", "missing.pt"),
    ("detect", "--weights {words} --source {images}", "words.pt: not a checkpoint"),
    ("detect", "--weights {weights} --source {nosource}", "nosource"),
    ("detect", "--weights {weights} --source {images} --conf-thres 2", "--conf-thres must be in [0, 1], got 2.0"),
    ("detect", "--weights {weights} --source {images} --bogus", "unrecognized arguments: --bogus"),
    ("detect", "--weights {weights} --source {images} --imgsz 99999", "--imgsz must be in [1, 7168] px, got 99999"),
    ("export", "--weights {missing}", "missing.pt"),
    ("export", "--weights {words}", "words.pt: not a checkpoint"),
    ("export", "--weights {weights} --opset 13", "--opset must be >= 17, got 13"),
    ("export", "--weights {weights} --imgsz 70", "--imgsz [70]: sizes must be positive multiples of the model stride"),
]


@pytest.mark.parametrize("script, argv, culprit", BAD, ids=[f"{s}-{c[:28]}" for s, _, c in BAD])
def test_user_error_is_one_line_exit_1_and_creates_nothing(script, argv, culprit, inputs, tmp_path, capsys):
    mod = importlib.import_module(script)
    args = [a.format(**inputs) for a in argv.split()]
    project = tmp_path / "project"
    project.mkdir()
    if script != "export":  # export writes beside the weights: the inputs folder must not change either
        args += ["--project", str(project)]
    before = sorted(Path(inputs["weights"]).parent.rglob("*"))
    capsys.readouterr()
    assert mod.main(args) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}.py: error: ") and culprit in lines[0], err
    assert list(project.iterdir()) == [] and sorted(Path(inputs["weights"]).parent.rglob("*")) == before


def test_val_split_without_labels_via_the_command_line(inputs, tmp_path, capsys):
    """Images in the val folder but no labels anywhere: refused in one line naming the label folder."""
    root = Path(inputs["images"]).parent
    cfg = tmp_path / "nolabels.yaml"
    cfg.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images",
                                   "names": dict(enumerate(NAMES))}))
    project = tmp_path / "project"
    assert importlib.import_module("val").main(["--weights", inputs["weights"], "--data", str(cfg), "--project",
                                                str(project), "--workers", "0"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the label scan's progress bar may precede it
    assert last.startswith("val.py: error: val: ") and "no labels to validate against" in last
    assert str(root / "labels") in last and not project.exists()


def test_success_returns_0(inputs, tmp_path, capsys):
    val, detect, export = (importlib.import_module(m) for m in ("val", "detect", "export"))
    assert val.main(["--weights", inputs["w4"], "--data", inputs["data"], "--project", str(tmp_path), "--workers",
                     "0", "--size-buckets", "0", "256", "inf", "--batch-size", "2"]) == 0
    saved = json.loads((tmp_path / "exp" / "metrics.json").read_text())
    assert saved["n_images"] == 2 and set(saved["size_buckets"]) == {"[0,256)", "[256,inf)"}
    assert detect.main(["--weights", inputs["weights"], "--source", inputs["images"], "--project", str(tmp_path),
                        "--nosave"]) == 0
    out = tmp_path / "good.onnx"
    assert export.main(["--weights", inputs["weights"], "--output", str(out)]) == 0 and out.is_file()
    assert capsys.readouterr().err.count("error") == 0
    assert val.main(["--help"]) == 0 and "--single-cls" in capsys.readouterr().out
