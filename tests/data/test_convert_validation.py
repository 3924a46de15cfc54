"""Converters and data.tile check every input before writing anything, keep the previous output on any failure,
type-check every field they read, answer bad input with one line (never a traceback), and refuse to run twice on
one output folder at once."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import convert as convert_mod
from data import tile as tile_mod
from data.convert import MARKER, convert
from tests.data.test_convert import make_aitod, make_tinyperson, make_visdrone, make_xview


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), links and all: what 'untouched' is compared with."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_convert(capsys, *args: str) -> tuple[int, str]:
    rc = convert_mod.main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    if rc:
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return rc, err


def png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w`` x ``h`` pixels (no pixel data): what a decompression bomb looks like."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


# ----------------------------------------------------------------------------- validate, then write; keep the old
@pytest.mark.parametrize("how", ["force", "changed options"])
def test_bad_row_in_last_split_keeps_previous_output(tmp_path, capsys, how):
    src, dst = make_visdrone(tmp_path / "src"), tmp_path / "dst"
    convert("visdrone", src, dst)
    before = tree(dst)
    (src / "VisDrone2019-DET-test-dev/annotations/e.txt").write_text("1,2,3,4,1,1,0,0\n1,2,x,4,1,1,0,0\n")
    extra = ["--force"] if how == "force" else ["--set", "splits={train: VisDrone2019-DET-train, "
                                                          "test: VisDrone2019-DET-test-dev}"]
    rc, err = run_convert(capsys, "visdrone", src, dst, *extra)
    assert rc == 1 and "e.txt: line 2" in err
    assert tree(dst) == before  # every split, the marker, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no temporary folder left


def test_failure_while_writing_keeps_previous_output(tmp_path, capsys, monkeypatch):
    """Even a failure after the checks (here: the disk fills up on the third image) leaves the old output."""
    import data.convert_common as common

    src, dst = make_aitod(tmp_path / "src"), tmp_path / "dst"
    convert("aitod", src, dst)
    before = tree(dst)
    calls = []
    real = common.link_or_copy

    def full_disk(a, b):
        calls.append(a)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(common, "link_or_copy", full_disk)
    rc, err = run_convert(capsys, "aitod", src, dst, "--force")
    assert rc == 1 and "No space left" in err and len(calls) == 3
    assert tree(dst) == before and sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_tile_checks_every_label_before_the_first_tile(tmp_path, capsys, monkeypatch):
    from tests.data.test_tile import make_dataset

    data = make_dataset(tmp_path)
    out = tmp_path / "tiles"
    assert tile_mod.main(["--data", str(data), "--size", "500", "--out", str(out)]) == 0
    before = tree(out)
    (data.parent / "labels/val/scene.txt").write_text("0 0.5 0.5 0.1\n")  # the last split's label is bad
    tiled = []
    monkeypatch.setattr(tile_mod, "tile_image", lambda *a: tiled.append(a))
    capsys.readouterr()
    assert tile_mod.main(["--data", str(data), "--size", "400", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scene.txt" in err
    assert tiled == [] and tree(out) == before


# ------------------------------------------------------------------------------------ every field type-checked
def _edit_aitod(src: Path, edit) -> None:
    f = src / "annotations/aitodv2_train.json"
    d = json.loads(f.read_text())
    edit(d)
    f.write_text(json.dumps(d))


COCO_BAD = {
    "bbox string": (lambda d: d["annotations"][0].update(bbox="1234"), "'bbox' must be a list"),
    "bbox of strings": (lambda d: d["annotations"][0].update(bbox=["1", "2", "3", "4"]), "finite number"),
    "bbox bool": (lambda d: d["annotations"][0].update(bbox=[True, 2, 3, 4]), "finite number"),
    "bbox NaN": (lambda d: d["annotations"][0].update(bbox=[float("nan"), 2, 3, 4]), "finite number"),
    "bbox 5 numbers": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3, 4, 5]), "'bbox' must be a list"),
    "category_id string": (lambda d: d["annotations"][0].update(category_id="1"), "'category_id'"),
    "iscrowd string": (lambda d: d["annotations"][0].update(iscrowd="no"), "'iscrowd' must be"),
    "image id list": (lambda d: d["images"][0].update(id=[1]), "image id"),
    "image_id float": (lambda d: d["annotations"][0].update(image_id=1.0), "'image_id'"),
    "file_name number": (lambda d: d["images"][0].update(file_name=5), "image path"),
    "images entry not an object": (lambda d: d["images"].append(5), "images[2]: expected an object"),
    "annotations entry not an object": (lambda d: d["annotations"].append("x"), "annotations[7]: expected an object"),
    "category without a name": (lambda d: d["categories"][0].pop("name"), "'name' must be a string"),
    "categories not a list": (lambda d: d.update(categories={"1": "airplane"}), "'categories' must be a list"),
}


@pytest.mark.parametrize("case", list(COCO_BAD))
def test_coco_fields_type_checked(tmp_path, capsys, case):
    edit, words = COCO_BAD[case]
    src = make_aitod(tmp_path / "src")
    _edit_aitod(src, edit)
    rc, err = run_convert(capsys, "aitod", src, tmp_path / "dst")
    assert rc == 1 and "aitodv2_train.json" in err and words in err, err
    assert not (tmp_path / "dst").exists()


# ----------------------------------------------------------------------------------- one line, never a traceback
def _visdrone_row(src: Path, row: str) -> None:
    (src / "VisDrone2019-DET-train/annotations/a.txt").write_text(f"1,2,3,4,1,1,0,0\n{row}\n")


ONE_LINE = {
    "visdrone inf": ("visdrone", lambda s: _visdrone_row(s, "1,2,inf,4,1,1,0,0"), [], "a.txt: line 2"),
    "visdrone 1e30": ("visdrone", lambda s: _visdrone_row(s, "1e30,2,3,4,1,1,0,0"), [], "a.txt: line 2"),
    "visdrone nan": ("visdrone", lambda s: _visdrone_row(s, "nan,2,3,4,1,1,0,0"), [], "a.txt: line 2"),
    "visdrone not UTF-8": ("visdrone", lambda s: (s / "VisDrone2019-DET-train/annotations/a.txt").write_bytes(
        b"1,2,3,4,1,1,0,0\n\xff\xfe,1\n"), [], "a.txt: not a UTF-8 text file"),
    "coco not UTF-8": ("aitod", lambda s: (s / "annotations/aitodv2_val.json").write_bytes(b'{"images": ["\xff"]}'),
                       [], "aitodv2_val.json: not a UTF-8 text file"),
    "coco deep nesting": ("aitod", lambda s: (s / "annotations/aitodv2_val.json").write_text("[" * 100_000),
                          [], "aitodv2_val.json: not a valid JSON"),
    "xview properties list": ("xview", lambda s: (s / "xView_train.geojson").write_text(json.dumps(
        {"features": [{"properties": ["image_id", "1.tif"]}]})), [], "features[0]: expected an object"),
    "xview type_id string": ("xview", lambda s: (s / "xView_train.geojson").write_text(json.dumps(
        {"features": [{"properties": {"image_id": "1.tif", "type_id": "11", "bounds_imcoords": "1,1,5,5"}}]})),
        [], "'type_id': expected an integer"),
    "xview bounds list": ("xview", lambda s: (s / "xView_train.geojson").write_text(json.dumps(
        {"features": [{"properties": {"image_id": "1.tif", "type_id": 11, "bounds_imcoords": [1, 1, 5, 5]}}]})),
        [], "'bounds_imcoords' must be a string"),
    "xview not UTF-8": ("xview", lambda s: (s / "xView_train.geojson").write_bytes(b"\xff"), [], "not a UTF-8"),
    "xview seed -1": ("xview", lambda s: None, ["--set", "seed=-1"], "seed must be a whole number >= 0"),
    "xview seed 1.5": ("xview", lambda s: None, ["--set", "seed=1.5"], "seed must be a whole number >= 0"),
    "bad YAML value": ("xview", lambda s: None, ["--set", "seed=2001-13-45"], "--set seed: value is not valid"),
    "decompression bomb": ("visdrone", lambda s: (s / "VisDrone2019-DET-val/images/d.jpg").write_bytes(
        png_header(60000, 60000)), [], "d.jpg: image too large"),
    "two images, one label file": ("visdrone", lambda s: (s / "VisDrone2019-DET-train/images/a.png").write_bytes(
        (s / "VisDrone2019-DET-train/images/a.jpg").read_bytes()), [], "would both be written as labels/train/a.txt"),
}
MAKERS = {"visdrone": make_visdrone, "aitod": make_aitod, "xview": make_xview, "tinyperson": make_tinyperson}


@pytest.mark.parametrize("case", list(ONE_LINE))
def test_bad_input_is_one_line(tmp_path, capsys, case):
    name, edit, extra, words = ONE_LINE[case]
    src = MAKERS[name](tmp_path / "src")
    edit(src)
    rc, err = run_convert(capsys, name, src, tmp_path / "dst", *extra)
    assert rc == 1 and words in err, err
    assert not (tmp_path / "dst").exists()


def test_source_path_not_utf8_is_one_line(tmp_path, capsys):
    raw = os.fsencode(tmp_path) + b"/src\xff"
    os.rename(make_visdrone(tmp_path / "src"), raw)  # made under a plain name: OpenCV cannot write to such paths
    rc, err = run_convert(capsys, "visdrone", os.fsdecode(raw), tmp_path / "dst")
    assert rc == 1 and "not UTF-8" in err and "src\\udcff" in err
    assert not (tmp_path / "dst").exists()


# ----------------------------------------------------------------------------------------------------- the lock
@pytest.fixture
def live_pid():
    """The pid of a live process that is not this one (a lock holder)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()


def test_second_conversion_into_one_dst_gets_one_line(tmp_path, capsys, live_pid):
    src, dst = make_visdrone(tmp_path / "src"), tmp_path / "dst"
    convert("visdrone", src, dst, {"splits": {"train": "VisDrone2019-DET-train"}})
    (dst / "run.lock").write_text(f"{live_pid} {socket.gethostname()}\n")  # a conversion in progress
    before = tree(dst)
    rc, err = run_convert(capsys, "visdrone", src, dst)
    assert rc == 1 and "another conversion" in err and f"pid {live_pid}" in err and "run.lock" in err
    assert tree(dst) == before
    (dst / "run.lock").write_text("999999999 " + socket.gethostname() + "\n")  # stale: its process is gone
    assert run_convert(capsys, "visdrone", src, dst)[0] == 0
    assert not (dst / "run.lock").exists() and json.loads((dst / MARKER).read_text())["counts"]["images"] == 5


def test_second_tiling_into_one_out_gets_one_line(tmp_path, capsys, live_pid):
    root = tmp_path / "ds"
    (root / "images/train").mkdir(parents=True)
    cv2.imwrite(str(root / "images/train/a.png"), np.zeros((32, 32, 3), np.uint8))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames: [a]\n")
    out = tmp_path / "tiles"
    out.mkdir()
    (out / "run.lock").write_text(f"{live_pid} {socket.gethostname()}\n")
    assert tile_mod.main(["--data", str(root / "data.yaml"), "--size", "64", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another data.tile" in err and f"pid {live_pid}" in err
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]


def test_stale_temporaries_removed_others_kept(tmp_path, capsys):
    src, dst = make_visdrone(tmp_path / "src"), tmp_path / "dst"
    stale = tmp_path / ".dst.staging-12345-abcdef"  # left by a killed conversion into dst
    (stale / "images").mkdir(parents=True)
    others = [tmp_path / ".dst.staging-b.staging-1-abcdef", tmp_path / ".dst.staging-notours"]
    for o in others:
        o.mkdir()
    assert run_convert(capsys, "visdrone", src, dst)[0] == 0
    assert not stale.exists() and all(o.is_dir() for o in others)


def test_output_split_parent_that_is_a_link_is_refused(tmp_path, capsys):
    src, dst = make_visdrone(tmp_path / "src"), tmp_path / "dst"
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "train").mkdir(parents=True)
    (elsewhere / "train" / "keep.txt").write_text("precious")
    dst.mkdir()
    (dst / "images").symlink_to(elsewhere, target_is_directory=True)
    rc, err = run_convert(capsys, "visdrone", src, dst)
    assert rc == 1 and "is a link or not a folder" in err
    assert (elsewhere / "train" / "keep.txt").read_text() == "precious" and len(list(elsewhere.rglob("*"))) == 2
