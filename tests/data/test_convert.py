"""data/convert*.py and the converter form of ``download:`` in utils/dataset_yaml.py, on hand-written fixtures in each
dataset's ORIGINAL format (small images written here). Expected label lines are computed by hand in the comments."""

import functools
import http.server
import json
import os
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.convert import CONVERTERS, MARKER, convert, is_converted, main, read_marker
from data.convert_xview import split_names
from data.prepare import check_dataset
from utils.errors import DatasetError


def _img(path: Path, w: int, h: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))
    return path


def _read(p: Path) -> str:
    return p.read_text()


# ------------------------------------------------------------------------------------------------------- VisDrone
def make_visdrone(src: Path) -> Path:
    tr = src / "VisDrone2019-DET-train"
    _img(tr / "images/a.jpg", 100, 80)
    _img(tr / "images/b.jpg", 64, 48)
    _img(tr / "images/c.jpg", 50, 40)  # no annotation file
    (tr / "annotations").mkdir()
    (tr / "annotations/a.txt").write_text(
        "10,20,30,40,1,1,0,1\n"  # pedestrian -> 0: x 10..40, y 20..60 -> 0.25 0.5 0.3 0.5
        "90,70,20,20,1,4,1,2\n"  # car -> 3, crosses the border: x 90..100, y 70..80 -> 0.95 0.9375 0.1 0.125
        "0,0,50,40,0,0,0,0\n"  # ignored region -> ignore area 0 0 0.5 0.5
        "5,5,10,10,1,11,0,0\n"  # others: dropped
        "5,5,0,10,1,1,0,0\n"  # zero width: dropped
        "120,10,10,10,1,2,0,0\n"  # entirely right of the image: zero size after clipping
        "5,5,10,10,1,12,0,0\n")  # unknown category 12
    (tr / "annotations/b.txt").write_text(
        "0,0,64,48,1,10,0,0,\n"  # trailing comma (as some official files); motor -> 9, the whole image
        "60,40,10,10,0,0,0,0\n")  # ignored region crossing the border: x 60..64, y 40..48
    va = src / "VisDrone2019-DET-val"
    _img(va / "images/d.jpg", 40, 40)
    (va / "annotations").mkdir()
    (va / "annotations/d.txt").write_text("1,1,5,5,1,11,0,0\n")  # only 'others': empty label file
    te = src / "VisDrone2019-DET-test-dev"
    _img(te / "images/e.jpg", 40, 40)
    (te / "annotations").mkdir()
    (te / "annotations/e.txt").write_text("")
    return src


def test_visdrone_labels_ignore_flags_counts(tmp_path):
    src, dst = make_visdrone(tmp_path / "src"), tmp_path / "dst"
    m = convert("visdrone", src, dst)
    lb = dst / "labels/train"
    assert _read(lb / "a.txt") == "0 0.250000 0.500000 0.300000 0.500000\n3 0.950000 0.937500 0.100000 0.125000\n"
    assert _read(lb / "a.ignore.txt") == "0.000000 0.000000 0.500000 0.500000\n"
    assert _read(lb / "a.flags.txt") == "# truncation occlusion\n0 1\n1 2\n"
    assert _read(lb / "b.txt") == "9 0.500000 0.500000 1.000000 1.000000\n"
    assert _read(lb / "b.ignore.txt") == "0.937500 0.833333 1.000000 1.000000\n"
    assert _read(lb / "c.txt") == "" and not (lb / "c.ignore.txt").exists() and not (lb / "c.flags.txt").exists()
    assert _read(dst / "labels/val/d.txt") == "" and not (dst / "labels/val/d.flags.txt").exists()
    assert _read(dst / "labels/test/e.txt") == ""
    a_src, a_dst = src / "VisDrone2019-DET-train/images/a.jpg", dst / "images/train/a.jpg"
    assert os.stat(a_src).st_ino == os.stat(a_dst).st_ino  # hard link, no copy
    c = m["counts"]
    assert (c["images"], c["labels"], c["ignore_areas"], c["images_with_ignore"]) == (5, 3, 2, 2)
    assert (c["empty_images"], c["no_annotation_entry"]) == (3, 1)
    assert c["per_split"] == {"train": 3, "val": 1, "test": 1}
    assert c["dropped"] == {"zero_size": 2, "zero_size_ignore": 0, "others": 2, "unknown_class": 1}
    assert c["unknown_class_ids"] == {"12": 1}
    assert m["names"][0] == "pedestrian" and len(m["names"]) == 10
    assert read_marker(dst) == m and is_converted("visdrone", src, dst)


def test_visdrone_idempotent_option_change_and_interrupt(tmp_path, capsys):
    src, dst = make_visdrone(tmp_path / "src"), tmp_path / "dst"
    convert("visdrone", src, dst)
    a = dst / "labels/train/a.txt"
    a.unlink()
    convert("visdrone", src, dst)  # same parameters: skipped (the removed file stays removed)
    assert "already converted" in capsys.readouterr().out and not a.exists()
    opts = {"splits": {"train": "VisDrone2019-DET-train", "val": "VisDrone2019-DET-val"}}
    assert not is_converted("visdrone", src, dst, opts)
    m = convert("visdrone", src, dst, opts)  # changed option: converted again from scratch
    assert a.exists() and m["options"] == opts and m["counts"]["per_split"] == {"train": 3, "val": 1}
    assert not (dst / "images/test").exists() and not (dst / "labels/test").exists()  # old split removed
    a.unlink()
    (dst / MARKER).unlink()  # an interrupted conversion has no marker
    convert("visdrone", src, dst, opts)
    assert a.exists() and is_converted("visdrone", src, dst, opts)


def test_visdrone_from_zips(tmp_path):
    fixture, src = make_visdrone(tmp_path / "fixture"), tmp_path / "src"
    src.mkdir()
    for folder in sorted(fixture.iterdir()):
        with zipfile.ZipFile(src / f"{folder.name}.zip", "w") as z:
            for f in sorted(folder.rglob("*")):
                z.write(f, f.relative_to(fixture).as_posix())
    m = convert("visdrone", src, tmp_path / "dst")
    assert m["counts"]["labels"] == 3 and (src / ".VisDrone2019-DET-train.zip.extracted").exists()
    assert _read(tmp_path / "dst/labels/train/b.txt") == "9 0.500000 0.500000 1.000000 1.000000\n"


def test_visdrone_errors_name_the_file(tmp_path):
    src = make_visdrone(tmp_path / "src")
    (src / "VisDrone2019-DET-train/annotations/zz.txt").write_text("1,1,2,2,1,1,0,0\n")
    with pytest.raises(DatasetError, match=r"zz\.txt: its image .*zz\.jpg does not exist"):
        convert("visdrone", src, tmp_path / "dst")
    (src / "VisDrone2019-DET-train/annotations/zz.txt").unlink()
    (src / "VisDrone2019-DET-train/annotations/b.txt").write_text("1,2,3\n")
    with pytest.raises(DatasetError, match=r"b\.txt: line 1: expected 8"):
        convert("visdrone", src, tmp_path / "dst")
    (src / "VisDrone2019-DET-train/annotations/b.txt").write_text("")  # fixed: the next problem is reported
    for f in (src / "VisDrone2019-DET-val/annotations").iterdir():
        f.unlink()
    (src / "VisDrone2019-DET-val/annotations").rmdir()
    with pytest.raises(DatasetError, match=r"missing annotation folder .*VisDrone2019-DET-val/annotations"):
        convert("visdrone", src, tmp_path / "dst")
    assert not (tmp_path / "dst" / MARKER).exists()


def test_corrupt_archive_and_cli(tmp_path, capsys):
    src = make_visdrone(tmp_path / "src")
    (src / "VisDrone2019-DET-test-dev.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DatasetError, match=r"VisDrone2019-DET-test-dev\.zip: corrupt or incomplete archive"):
        convert("visdrone", src, tmp_path / "dst")
    assert main(["visdrone", str(src), str(tmp_path / "dst")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VisDrone2019-DET-test-dev.zip" in err
    (src / "VisDrone2019-DET-test-dev.zip").unlink()
    (src / "VisDrone2019-DET-val/annotations/d.txt").unlink()
    (src / "VisDrone2019-DET-val/annotations").rmdir()
    assert main(["visdrone", str(src), str(tmp_path / "dst")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VisDrone2019-DET-val/annotations" in err
    assert main(["visdrone", str(make_visdrone(tmp_path / "ok")), str(tmp_path / "dst2"), "--set",
                 "splits={train: VisDrone2019-DET-train}"]) == 0
    assert read_marker(tmp_path / "dst2")["counts"]["per_split"] == {"train": 3}
    assert main(["visdrone", str(src), str(tmp_path / "dst3"), "--set", "colour=red"]) == 1
    assert "unknown option 'colour'" in capsys.readouterr().err


def test_source_inside_output_refused(tmp_path):
    src = make_visdrone(tmp_path / "d" / "images" / "raw")
    with pytest.raises(DatasetError, match="lies inside the output"):
        convert("visdrone", src, tmp_path / "d")


# ---------------------------------------------------------------------------------------------------------- AI-TOD
def make_aitod(src: Path) -> Path:
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(
        ["airplane", "bridge", "storage_tank", "ship", "swimming pool", "vehicle", "person", "wind-mill"])]
    cats.append({"id": 9, "name": "helicopter"})  # not an AI-TOD class
    _img(src / "images/train/p.png", 100, 100)
    _img(src / "images/train/q.png", 50, 50)  # no annotations
    train = {"images": [{"id": 1, "file_name": "p.png", "width": 100, "height": 100},
                        {"id": 2, "file_name": "q.png", "width": 50, "height": 50}],
             "categories": cats,
             "annotations": [
                 {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 30]},  # 0 0.2 0.25 0.2 0.3
                 {"id": 2, "image_id": 1, "category_id": 3, "bbox": [90, -5, 20, 15]},  # x 90..100, y 0..10
                 {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 50, 40, 50], "iscrowd": 1},  # ignore
                 {"id": 4, "image_id": 1, "category_id": 6, "bbox": [60, 60, 10, 10], "ignore": True},  # ignore
                 {"id": 5, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]},  # unknown name
                 {"id": 6, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]},  # id not in categories
                 {"id": 7, "image_id": 1, "category_id": 6, "bbox": [30, 30, 0, 5]}]}  # zero width
    _img(src / "images/val/v.png", 80, 40)
    val = {"images": [{"id": 10, "file_name": "v.png"}], "categories": cats,
           "annotations": [{"id": 1, "image_id": 10, "category_id": 8, "bbox": [0, 0, 8, 4]}]}  # 7 .05 .05 .1 .1
    _img(src / "images/test/t.png", 20, 20)
    test = {"images": [{"id": 5, "file_name": "t.png"}], "categories": cats, "annotations": []}
    (src / "annotations").mkdir(parents=True)
    for split, d in (("train", train), ("val", val), ("test", test)):
        (src / f"annotations/aitodv2_{split}.json").write_text(json.dumps(d))
    return src


def test_aitod_labels_ignore_counts(tmp_path):
    src, dst = make_aitod(tmp_path / "src"), tmp_path / "dst"
    m = convert("aitod", src, dst)
    assert _read(dst / "labels/train/p.txt") == ("0 0.200000 0.250000 0.200000 0.300000\n"
                                                  "2 0.950000 0.050000 0.100000 0.100000\n")
    assert _read(dst / "labels/train/p.ignore.txt") == ("0.000000 0.500000 0.400000 1.000000\n"
                                                         "0.600000 0.600000 0.700000 0.700000\n")
    assert _read(dst / "labels/train/q.txt") == "" and not (dst / "labels/train/q.ignore.txt").exists()
    assert _read(dst / "labels/val/v.txt") == "7 0.050000 0.050000 0.100000 0.100000\n"
    assert _read(dst / "labels/test/t.txt") == "" and (dst / "images/test/t.png").is_file()
    assert not list(dst.rglob("*.flags.txt"))  # AI-TOD has no flags
    c = m["counts"]
    assert (c["images"], c["labels"], c["ignore_areas"], c["empty_images"], c["no_annotation_entry"]) == (4, 3, 2, 2, 2)
    assert c["dropped"]["zero_size"] == 1 and c["dropped"]["unknown_class"] == 2
    assert c["unknown_class_ids"] == {"42": 1, "9": 1}


def test_aitod_errors(tmp_path):
    src = make_aitod(tmp_path / "src")
    (src / "annotations/aitodv2_test.json").unlink()
    with pytest.raises(DatasetError, match=r"missing aitod annotation file for split 'test': .*aitodv2_test\.json"):
        convert("aitod", src, tmp_path / "dst")
    make_aitod(tmp_path / "src2")
    (tmp_path / "src2/images/val/v.png").unlink()
    with pytest.raises(DatasetError, match=r"aitodv2_val\.json: image .*images/val/v\.png does not exist"):
        convert("aitod", tmp_path / "src2", tmp_path / "dst")
    make_aitod(tmp_path / "src3")
    f = tmp_path / "src3/annotations/aitodv2_val.json"
    d = json.loads(f.read_text())
    d["annotations"][0]["image_id"] = 77
    f.write_text(json.dumps(d))
    with pytest.raises(DatasetError, match=r"aitodv2_val\.json: annotation 1 names image id 77"):
        convert("aitod", tmp_path / "src3", tmp_path / "dst")
    f.write_text("{not json")
    with pytest.raises(DatasetError, match=r"aitodv2_val\.json: not a valid JSON"):
        convert("aitod", tmp_path / "src3", tmp_path / "dst")


# ------------------------------------------------------------------------------------------------------ TinyPerson
def make_tinyperson(src: Path) -> Path:
    root = src / "tiny_set"
    cats = [{"id": 1, "name": "sea_person", "supercategory": "person"},
            {"id": 2, "name": "earth_person", "supercategory": "person"}]
    _img(root / "train/labeled_images/t1.jpg", 120, 60)
    _img(root / "train/pure_bg_images/t2.jpg", 30, 30)
    train = {"images": [{"id": 1, "file_name": "labeled_images/t1.jpg"},
                        {"id": 2, "file_name": "pure_bg_images/t2.jpg"}],
             "categories": cats,
             "annotations": [
                 {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 12, 6], "uncertain": False},  # .05 .05 .1 .1
                 {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 30, 12, 12], "uncertain": True},  # .55 .6
                 {"id": 3, "image_id": 1, "category_id": 1, "bbox": [100, 50, 30, 30], "ignore": True},  # clipped area
                 {"id": 4, "image_id": 1, "category_id": 1, "bbox": [115, 10, 10, 10]}]}  # x 115..120 (clipped)
    _img(root / "test/labeled_images/v1.jpg", 40, 20)
    test = {"images": [{"id": 7, "file_name": "labeled_images/v1.jpg"}], "categories": cats,
            "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [10, 5, 4, 10]}]}  # .3 .5 .1 .5
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/tiny_set_train.json").write_text(json.dumps(train))
    (root / "annotations/tiny_set_test.json").write_text(json.dumps(test))
    return src


def test_tinyperson_merged_and_apart(tmp_path):
    src, dst = make_tinyperson(tmp_path / "src"), tmp_path / "dst"
    m = convert("tinyperson", src, dst)
    lb = dst / "labels/train/labeled_images"
    rows = ["0.050000 0.050000 0.100000 0.100000", "0.550000 0.600000 0.100000 0.200000",
            "0.979167 0.250000 0.041667 0.166667"]
    assert _read(lb / "t1.txt") == "".join(f"0 {r}\n" for r in rows)
    assert _read(lb / "t1.ignore.txt") == "0.833333 0.833333 1.000000 1.000000\n"
    assert _read(lb / "t1.flags.txt") == "# uncertain\n0\n1\n0\n"
    assert _read(dst / "labels/train/pure_bg_images/t2.txt") == ""
    assert (dst / "images/train/labeled_images/t1.jpg").is_file()
    assert _read(dst / "labels/val/labeled_images/v1.txt") == "0 0.300000 0.500000 0.100000 0.500000\n"
    assert m["names"] == ["person"] and m["counts"]["no_annotation_entry"] == 1
    m = convert("tinyperson", src, dst, {"merge_persons": False})  # changed option: converted again
    assert _read(lb / "t1.txt") == "".join(f"{k} {r}\n" for k, r in zip((0, 1, 0), rows))
    assert _read(dst / "labels/val/labeled_images/v1.txt") == "1 0.300000 0.500000 0.100000 0.500000\n"
    assert m["names"] == ["sea person", "earth person"]


def test_tinyperson_apart_needs_sea_and_earth(tmp_path):
    src = make_tinyperson(tmp_path / "src")
    f = src / "tiny_set/annotations/tiny_set_test.json"
    d = json.loads(f.read_text())
    d["categories"], d["annotations"][0]["category_id"] = [{"id": 1, "name": "person"}], 1
    f.write_text(json.dumps(d))
    assert convert("tinyperson", src, tmp_path / "dst")["counts"]["labels"] == 4  # merged: 'person' is fine
    with pytest.raises(DatasetError, match=r"tiny_set_test\.json: merge_persons: false needs"):
        convert("tinyperson", src, tmp_path / "dst", {"merge_persons": False})
    with pytest.raises(DatasetError, match=r"option 'merge_persons' must be like True"):
        convert("tinyperson", src, tmp_path / "dst", {"merge_persons": "no"})


# ----------------------------------------------------------------------------------------------------------- xView
def make_xview(src: Path) -> Path:
    _img(src / "train_images/1.tif", 200, 100)
    _img(src / "train_images/2.tif", 50, 50)
    _img(src / "train_images/3.tif", 30, 30)  # no features

    def feat(image, type_id, bounds):
        return {"type": "Feature", "properties": {"image_id": image, "type_id": type_id, "bounds_imcoords": bounds}}

    feats = [feat("1.tif", 11, "10,20,50,60"),  # class 0: 0.15 0.4 0.2 0.4
             feat("1.tif", 94, "190,90,230,130"),  # class 59, clipped to x 190..200, y 90..100
             feat("1.tif", 75, "1,1,5,5"),  # not an xView class
             feat("1.tif", 18, "5,5,5,9"),  # zero width
             feat("1.tif", 17, ""),  # no box
             feat("2.tif", 73, "0,0,50,50"),  # class 48 (Building), the whole image
             feat("1395.tif", 11, "1,1,9,9")]  # image absent from train_images (as in the official release)
    (src / "xView_train.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return src


def test_xview_classes_clip_missing_image(tmp_path):
    src, dst = make_xview(tmp_path / "src"), tmp_path / "dst"
    m = convert("xview", src, dst, {"val_fraction": 0.0})
    assert _read(dst / "labels/train/1.txt") == ("0 0.150000 0.400000 0.200000 0.400000\n"
                                                  "59 0.975000 0.950000 0.050000 0.100000\n")
    assert _read(dst / "labels/train/2.txt") == "48 0.500000 0.500000 1.000000 1.000000\n"
    assert _read(dst / "labels/train/3.txt") == "" and (dst / "images/train/3.tif").is_file()
    c = m["counts"]
    assert c["dropped"] == {"missing_image": 1, "no_box": 1, "zero_size": 1, "zero_size_ignore": 0, "unknown_class": 1}
    assert c["unknown_class_ids"] == {"75": 1} and c["missing_images"] == ["1395.tif"]
    assert (c["images"], c["labels"], c["no_annotation_entry"]) == (3, 3, 1)
    assert m["names"][0] == "Fixed-wing Aircraft" and m["names"][59] == "Tower" and len(m["names"]) == 60
    with pytest.raises(DatasetError, match=r"xView_train\.geojson: image .*train_images/1395\.tif does not exist"):
        convert("xview", src, tmp_path / "dst2", {"skip_missing_images": False})
    (src / "xView_train.geojson").unlink()
    with pytest.raises(DatasetError, match=r"missing xView annotation file: .*xView_train\.geojson"):
        convert("xview", src, tmp_path / "dst3")


def test_xview_val_split_deterministic(tmp_path):
    assert split_names(["a", "b", "c", "d"], 0.0, 0) == dict.fromkeys("abcd", "train")
    s = split_names([f"{i}.tif" for i in range(10)], 0.3, 0)
    assert list(s.values()).count("val") == 3 and s == split_names([f"{i}.tif" for i in range(9, -1, -1)], 0.3, 0)
    assert s != split_names([f"{i}.tif" for i in range(10)], 0.3, 1)  # the seed matters
    src = make_xview(tmp_path / "src")
    m = convert("xview", src, tmp_path / "dst", {"val_fraction": 0.34})  # round(3 * 0.34) = 1 val image
    assert m["counts"]["per_split"]["val"] == 1 and m["counts"]["per_split"]["train"] == 2
    val = split_names(["1.tif", "2.tif", "3.tif"], 0.34, 0)
    for name, split in val.items():
        assert (tmp_path / "dst/images" / split / name).is_file()
        assert (tmp_path / "dst/labels" / split / name).with_suffix(".txt").is_file()


# ---------------------------------------------------------------------------------- download: {urls, converter}
class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, folder, list of requested paths)."""
    www = tmp_path / "www"
    www.mkdir()
    hits = []

    class H(_Handler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(H, directory=str(www)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", www, hits
    srv.shutdown()
    srv.server_close()


def test_check_dataset_downloads_and_converts_once(tmp_path, http_root):
    base, www, hits = http_root
    fixture = make_visdrone(tmp_path / "fixture")
    for folder in sorted(fixture.iterdir()):
        with zipfile.ZipFile(www / f"{folder.name}.zip", "w") as z:
            for f in sorted(folder.rglob("*")):
                z.write(f, f.relative_to(fixture).as_posix())
    root = tmp_path / "VisDrone"
    data = {"path": str(root), "train": "images/train", "val": "images/val", "test": "images/test",
            "names": list(CONVERTERS["visdrone"].names({})),
            "download": {"urls": [f"{base}/{f.name}" for f in sorted(www.iterdir())], "converter": "visdrone"}}
    d = check_dataset(dict(data))
    assert d["nc"] == 10 and len(hits) == 3 and read_marker(root)["counts"]["labels"] == 3
    assert _read(root / "labels/train/a.ignore.txt") == "0.000000 0.000000 0.500000 0.500000\n"
    check_dataset(dict(data))  # converted: nothing fetched again
    assert len(hits) == 3
    (root / MARKER).unlink()  # interrupted conversion: redone from the archives already fetched
    check_dataset(dict(data))
    assert len(hits) == 3 and is_converted("visdrone", root / "source", root)
    with pytest.raises(DatasetError, match="do not match the classes of converter visdrone"):
        check_dataset({**data, "names": ["a", "b"]})


def test_check_dataset_converter_errors(tmp_path, http_root):
    base, www, hits = http_root
    data = {"path": str(tmp_path / "ds"), "train": "images/train", "val": "images/val", "names": ["person"]}
    with pytest.raises(DatasetError, match="download.converter must be one of"):
        check_dataset({**data, "download": {"converter": "nope"}})
    with pytest.raises(DatasetError, match=r"unknown key\(s\) \['script'\]"):
        check_dataset({**data, "download": {"converter": "tinyperson", "script": "rm -rf /"}})
    with pytest.raises(DatasetError, match=r"put the original tinyperson files into .*ds/source\. Get it there"):
        check_dataset({**data, "download": {"converter": "tinyperson", "manual": "Get it there."}})
    with pytest.raises(DatasetError, match=r"could not fetch .*/tiny_set\.zip"):
        check_dataset({**data, "download": {"converter": "tinyperson", "urls": [f"{base}/tiny_set.zip"]}})
    assert not list((tmp_path / "ds" / "source").iterdir())  # a failed download leaves no file, not even a temporary
    (www / "tiny_set.zip").write_bytes(b"<html>not a zip</html>")
    with pytest.raises(DatasetError, match=r"tiny_set\.zip: corrupt or incomplete archive"):
        check_dataset({**data, "download": {"converter": "tinyperson", "urls": [f"{base}/tiny_set.zip"]}})
