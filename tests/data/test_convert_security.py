"""Hostile inputs to the converters and to data.tile: split names that are paths (from a data YAML's
``download: options:``, from ``--set`` and from a crafted ``convert.json``), duplicate COCO image entries, and a
tile ``--out`` inside a split folder of the source dataset. Every attack must leave a sentinel file outside the
output untouched and end with exit status 1 and one line on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from data import convert as convert_mod
from data import tile as tile_mod
from data.convert import MARKER, convert, read_marker
from tests.data.test_convert import make_aitod, make_visdrone
from utils.errors import DatasetError
from utils.safe_paths import UnsafePathError, plain_name, remove_inside

VISDRONE_NAMES = ["pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus",
                  "motor"]


def _sentinel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "keep.txt"
    f.write_text("precious")
    return f


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_plain_name_and_remove_inside(tmp_path):
    assert plain_name("train", "split") == "train" and plain_name("val-2 x", "split") == "val-2 x"
    for bad in ("", ".", "..", "a/b", "/abs", "../x", "a\\b", "c:", "x\0y", 3, None):
        with pytest.raises(UnsafePathError, match="split"):
            plain_name(bad, "split")
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("x")
    outside = _sentinel(tmp_path / "outside")
    (root / "link").symlink_to(outside.parent, target_is_directory=True)
    for escape in (root / ".." / "outside", root / "link" / "keep.txt", root, tmp_path):
        with pytest.raises(UnsafePathError, match="not inside"):
            remove_inside(escape, root)
    remove_inside(root / "link", root)  # the link itself goes, never its target
    assert outside.read_text() == "precious" and not (root / "link").exists()
    remove_inside(root / "a", root)
    remove_inside(root / "never-there", root)  # absent: nothing to do
    assert list(root.iterdir()) == []


# ------------------------------------------------------------------------------------- split names that are paths
def test_data_yaml_split_name_outside_dst_through_data_tile(tmp_path, capsys):
    src = make_visdrone(tmp_path / "src")
    other = _sentinel(tmp_path / "other")
    root = tmp_path / "ds"
    evil = {"path": str(root), "train": "images/train", "val": "images/val", "names": VISDRONE_NAMES,
            "download": {"converter": "visdrone", "source": str(src),
                         "options": {"splits": {"train": "VisDrone2019-DET-train", "val": "VisDrone2019-DET-val",
                                                str(other.parent): "VisDrone2019-DET-test-dev"}}}}
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump(evil))
    assert tile_mod.main(["--data", str(tmp_path / "evil.yaml"), "--size", "32", "--out",
                          str(tmp_path / "tiles")]) == 1
    err = _one_line(capsys)
    assert str(other.parent) in err and "split" in err
    assert other.read_text() == "precious" and sorted(p.name for p in other.parent.iterdir()) == ["keep.txt"]
    assert not (root / "images").exists() and not (tmp_path / "tiles").exists()


def test_set_split_name_escaping_dst(tmp_path, capsys):
    src = make_visdrone(tmp_path / "src")
    dst = tmp_path / "work" / "dst"
    elsewhere = _sentinel(tmp_path / "work" / "elsewhere")
    assert convert_mod.main(["visdrone", str(src), str(dst), "--set",
                             'splits={"../../elsewhere": VisDrone2019-DET-train}']) == 1
    assert "../../elsewhere" in _one_line(capsys)
    assert elsewhere.read_text() == "precious" and sorted(p.name for p in elsewhere.parent.iterdir()) == ["keep.txt"]
    assert not dst.exists()


@pytest.mark.parametrize("value", ["VisDrone2019-DET-train/../../../x", "/etc", ""])
def test_source_folder_options_are_relative_paths(tmp_path, capsys, value):
    src = make_visdrone(tmp_path / "src")
    with pytest.raises(DatasetError, match="relative"):
        convert("visdrone", src, tmp_path / "dst", {"splits": {"train": value}})


def test_crafted_marker_split_name(tmp_path, capsys):
    src = make_visdrone(tmp_path / "src")
    dst = tmp_path / "work" / "dst"
    elsewhere = _sentinel(tmp_path / "work" / "elsewhere")
    convert("visdrone", src, dst)
    m = json.loads((dst / MARKER).read_text())
    m["counts"]["per_split"] = {"../../elsewhere": 1}
    m["options"] = {}  # differs from the call below: the old splits would be removed before converting again
    (dst / MARKER).write_text(json.dumps(m))
    capsys.readouterr()
    assert convert_mod.main(["visdrone", str(src), str(dst)]) == 1
    err = _one_line(capsys)
    assert MARKER in err and "../../elsewhere" in err
    assert elsewhere.read_text() == "precious" and sorted(p.name for p in elsewhere.parent.iterdir()) == ["keep.txt"]
    assert (dst / "labels/train/a.txt").exists()  # the previous output is left alone too
    with pytest.raises(DatasetError, match=MARKER):
        read_marker(dst)


def test_output_folder_linked_elsewhere_is_not_emptied(tmp_path, capsys):
    """DST/images/train is a link to another folder: the conversion must not delete through it."""
    src = make_visdrone(tmp_path / "src")
    dst = tmp_path / "dst"
    outside = _sentinel(tmp_path / "outside")
    (dst / "images").mkdir(parents=True)
    (dst / "images" / "train").symlink_to(outside.parent, target_is_directory=True)
    convert("visdrone", src, dst)
    assert outside.read_text() == "precious" and sorted(p.name for p in outside.parent.iterdir()) == ["keep.txt"]
    assert (dst / "images/train/a.jpg").is_file() and not (dst / "images/train").is_symlink()


# ------------------------------------------------------------------------------------------- duplicate COCO images
@pytest.mark.parametrize("field", ["file_name", "id"])
def test_coco_duplicate_image_entries(tmp_path, capsys, field):
    src = make_aitod(tmp_path / "src")
    f = src / "annotations/aitodv2_train.json"
    d = json.loads(f.read_text())
    d["images"][1][field] = d["images"][0][field]  # two entries with the same file_name / the same id
    f.write_text(json.dumps(d))
    assert convert_mod.main(["aitod", str(src), str(tmp_path / "dst")]) == 1
    err = _one_line(capsys)
    assert "aitodv2_train.json" in err and "duplicate" in err and repr(d["images"][0][field]) in err
    assert not (tmp_path / "dst").exists()


# ------------------------------------------------------------------------------------------ tiles leaking into val
@pytest.mark.parametrize("where", ["images/val/sub", "labels/val/sub", "labels/train/x"])
def test_tile_out_inside_a_split_folder_refused(tmp_path, capsys, where):
    from tests.data.test_tile import scene, write_rows, yolo_rows

    root = tmp_path / "src"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        import cv2

        cv2.imwrite(str(root / f"images/{split}/im.png"), scene([(0, 10, 10, 50, 50)]))
        write_rows(root / f"labels/{split}/im.txt", yolo_rows([(0, 10, 10, 50, 50)], 1000, 700))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [a]\n")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert tile_mod.main(["--data", str(data), "--size", "400", "--splits", "train", "--out",
                          str(root / where)]) == 1
    err = _one_line(capsys)
    assert "--out" in err and "split" in err
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
