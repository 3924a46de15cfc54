"""Fuzzing of every converter (hypothesis): annotation files with bad numbers (inf, nan, 1e30, huge integers),
wrong types, duplicates, missing keys, junk text and non-UTF-8 bytes. Each run over a previous good output must end
either with exit 1, one line on stderr and the previous output untouched, or with exit 0 and a correct output:
valid YOLO label files (class in range, normalised non-empty boxes inside the image), one flags line per label row,
and counts that account for every input row (written, or dropped for a named reason)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data import convert as convert_mod
from data.convert import CONVERTERS, MARKER, convert
from tests.data.test_convert import make_aitod, make_tinyperson, make_visdrone, make_xview
from tests.data.test_convert_validation import tree

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TOL = 1e-6


def rows_in(name: str, content: bytes) -> int:
    """Input rows of an annotation file that a successful conversion read: lines, annotations or features."""
    if name == "visdrone":
        return sum(bool(line.strip().rstrip(",")) for line in content.decode().splitlines())
    d = json.loads(content)
    return len(d["features"] if name == "xview" else d["annotations"])


class Good:
    """A source, its annotation file to replace, and a good output converted from it (copied for each example).
    ``base``: the input rows of the other annotation files (accounted for in every successful conversion)."""

    def __init__(self, root: Path, name: str, make, ann: str, opts: dict | None = None):
        self.name, self.src, self.opts = name, make(root / "src"), opts or {}
        self.ann = self.src / ann
        self.dst = root / "good"
        counts = convert(name, self.src, self.dst, self.opts)["counts"]
        self.base = accounted(counts) - rows_in(name, self.ann.read_bytes())
        self.root = root

    def run(self, content: bytes) -> None:
        """Convert ``content`` as the annotation file over a copy of the good output; check the invariants."""
        self.ann.write_bytes(content)
        work = Path(tempfile.mkdtemp(dir=self.root))
        try:
            dst = work / "dst"
            shutil.copytree(self.dst, dst)
            before = tree(dst)
            args = [self.name, str(self.src), str(dst), "--force"]
            for k, v in self.opts.items():
                args += ["--set", f"{k}={json.dumps(v)}"]
            err, out = io.StringIO(), io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                rc = convert_mod.main(args)
            if rc:
                lines = err.getvalue().strip().splitlines()
                assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: "), err.getvalue()
                assert tree(dst) == before, "the previous output changed after a failed conversion"
            else:
                marker = json.loads((dst / MARKER).read_text())
                check_output(self.name, dst, marker)
                assert accounted(marker["counts"]) == self.base + rows_in(self.name, content), marker["counts"]
            assert sorted(p.name for p in work.iterdir()) == ["dst"]  # no temporary folder left
        finally:
            shutil.rmtree(work)


def accounted(c: dict) -> int:
    """Input rows the counts account for: written as labels or ignore areas, or dropped for a reason."""
    return c["labels"] + c["ignore_areas"] + sum(c["dropped"].values())


def check_output(name: str, dst: Path, marker: dict) -> None:
    nc, flags = len(marker["names"]), CONVERTERS[name].flag_columns
    n_labels = n_images = 0
    for lb in (dst / "labels").rglob("*.txt"):
        if lb.name.endswith((".ignore.txt", ".flags.txt")):
            continue
        n_images += 1
        rows = [line.split() for line in lb.read_text().splitlines()]
        for r in rows:
            assert len(r) == 5 and 0 <= int(r[0]) < nc, (lb, r)
            x, y, w, h = map(float, r[1:])
            assert w > 0 and h > 0 and x - w / 2 >= -TOL and y - h / 2 >= -TOL, (lb, r)
            assert x + w / 2 <= 1 + TOL and y + h / 2 <= 1 + TOL, (lb, r)
        n_labels += len(rows)
        fl = lb.with_name(lb.stem + ".flags.txt")
        if flags and rows:
            assert len(fl.read_text().splitlines()) == len(rows) + 1  # the header, then one line per row
        ig = lb.with_name(lb.stem + ".ignore.txt")
        if ig.exists():
            for r in ig.read_text().split("\n")[:-1]:
                x1, y1, x2, y2 = map(float, r.split())
                assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    c = marker["counts"]
    assert (c["labels"], c["images"]) == (n_labels, n_images)
    assert c["images"] == len([p for p in (dst / "images").rglob("*") if p.is_file()])


# ------------------------------------------------------------------------------------------------------ VisDrone
NUMBERS = st.one_of(st.integers(-30, 150), st.sampled_from(["inf", "-inf", "nan", "1e30", "1.5", "9" * 30, "", "x",
                                                            "0x10", " 7 "]))
VIS_ROW = st.one_of(
    st.tuples(st.integers(-20, 120), st.integers(-20, 100), st.integers(-5, 120), st.integers(-5, 100),
              st.integers(0, 1), st.integers(0, 12), st.integers(0, 1), st.integers(0, 2)).map(
        lambda t: ",".join(map(str, t))),
    st.lists(NUMBERS, min_size=6, max_size=9).map(lambda v: ",".join(map(str, v))),
    st.text(max_size=20))


@pytest.fixture(scope="module")
def good_visdrone(tmp_path_factory):
    return Good(tmp_path_factory.mktemp("visdrone"), "visdrone", make_visdrone,
                "VisDrone2019-DET-train/annotations/a.txt")


@settings(SETTINGS, max_examples=20)  # each success writes 5 images in 3 splits
@given(rows=st.lists(VIS_ROW, max_size=8), raw=st.one_of(st.none(), st.binary(max_size=40)))
@example(rows=["1,2,inf,4,1,1,0,0"], raw=None)  # known past failures, always tried
@example(rows=["1e30,2,3,4,1,1,0,0"], raw=None)
@example(rows=[], raw=b"1,2,3,4,1,1,0,0\n\xff")
def test_fuzz_visdrone(good_visdrone, rows, raw):
    good_visdrone.run(raw if raw is not None else "\n".join(rows).encode())


def test_counts_account_for_every_row(tmp_path):
    src = make_visdrone(tmp_path / "src")
    rows = sum(rows_in("visdrone", f.read_bytes()) for f in src.rglob("annotations/*.txt"))
    assert accounted(convert("visdrone", src, tmp_path / "dst")["counts"]) == rows == 10
    src = make_aitod(tmp_path / "aitod")
    rows = sum(rows_in("aitod", f.read_bytes()) for f in src.rglob("annotations/*.json"))
    assert accounted(convert("aitod", src, tmp_path / "dst2")["counts"]) == rows == 8
    src = make_xview(tmp_path / "xview")
    assert accounted(convert("xview", src, tmp_path / "dst3")["counts"]) == 7


# ---------------------------------------------------------------------------------------- COCO: AI-TOD, TinyPerson
JUNK = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
COORD = st.one_of(st.integers(-20, 150), st.floats(-20, 150, allow_nan=False), st.just(float("nan")),
                  st.just(float("inf")), st.just(1e308), st.just(True), st.just("5"))
BBOX = st.one_of(st.lists(COORD, min_size=4, max_size=4), st.lists(COORD, max_size=6), JUNK, st.just("1234"))


def _coco_ann(ids: list[int], cats: list[int]):
    return st.one_of(
        st.fixed_dictionaries({"id": st.integers(0, 99), "image_id": st.sampled_from(ids), "bbox": BBOX,
                               "category_id": st.one_of(st.sampled_from(cats), st.integers(-2, 50), JUNK)},
                              optional={"iscrowd": st.one_of(st.integers(0, 1), JUNK),
                                        "ignore": st.one_of(st.booleans(), JUNK),
                                        "uncertain": st.one_of(st.booleans(), JUNK)}),
        JUNK)


def _coco_doc(images: list[dict], cats: list[dict]):
    ids = [im["id"] for im in images]
    image = st.one_of(st.sampled_from(images), st.fixed_dictionaries({"id": st.one_of(st.sampled_from(ids), JUNK),
                                                                      "file_name": st.one_of(
                                                                          st.sampled_from([im["file_name"]
                                                                                           for im in images]),
                                                                          JUNK)}), JUNK)
    return st.fixed_dictionaries({
        "images": st.one_of(st.just(images), st.lists(image, max_size=4), st.permutations(images + images[:1])),
        "annotations": st.lists(_coco_ann(ids, [c["id"] for c in cats]), max_size=6),
        "categories": st.one_of(st.just(cats), st.lists(st.one_of(st.sampled_from(cats), JUNK), max_size=3), JUNK)})


def _coco_run(good: Good, doc: dict, raw: bytes | None) -> None:
    good.run(raw if raw is not None else json.dumps(doc, allow_nan=True).encode())


@pytest.fixture(scope="module")
def good_aitod(tmp_path_factory):
    return Good(tmp_path_factory.mktemp("aitod"), "aitod", make_aitod, "annotations/aitodv2_train.json")


AITOD_IMAGES = [{"id": 1, "file_name": "p.png"}, {"id": 2, "file_name": "q.png"}]
AITOD_CATS = [{"id": i + 1, "name": n} for i, n in enumerate(["airplane", "bridge", "storage_tank", "ship"])]


@SETTINGS
@given(doc=_coco_doc(AITOD_IMAGES, AITOD_CATS), raw=st.one_of(st.none(), st.none(), st.binary(max_size=30)))
@example(doc={"images": AITOD_IMAGES, "categories": AITOD_CATS,  # known past failures, always tried
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": "1234"}]}, raw=None)
@example(doc={"images": AITOD_IMAGES + [AITOD_IMAGES[0]], "categories": AITOD_CATS, "annotations": []}, raw=None)
@example(doc={"images": [5], "categories": AITOD_CATS, "annotations": []}, raw=None)
def test_fuzz_aitod(good_aitod, doc, raw):
    _coco_run(good_aitod, doc, raw)


@pytest.fixture(scope="module")
def good_tinyperson(tmp_path_factory):
    return Good(tmp_path_factory.mktemp("tinyperson"), "tinyperson", make_tinyperson,
                "tiny_set/annotations/tiny_set_train.json", {"merge_persons": False})


TP_IMAGES = [{"id": 1, "file_name": "labeled_images/t1.jpg"}, {"id": 2, "file_name": "pure_bg_images/t2.jpg"}]
TP_CATS = [{"id": 1, "name": "sea_person"}, {"id": 2, "name": "earth_person"}]


@SETTINGS
@given(doc=_coco_doc(TP_IMAGES, TP_CATS), raw=st.one_of(st.none(), st.none(), st.binary(max_size=30)))
def test_fuzz_tinyperson(good_tinyperson, doc, raw):
    _coco_run(good_tinyperson, doc, raw)


# --------------------------------------------------------------------------------------------------------- xView
BOUNDS = st.one_of(st.lists(NUMBERS, min_size=3, max_size=5).map(lambda v: ",".join(map(str, v))),
                   st.tuples(*[st.integers(-20, 250)] * 4).map(lambda t: ",".join(map(str, t))), JUNK)
FEATURE = st.one_of(
    st.fixed_dictionaries({"type": st.just("Feature"), "properties": st.one_of(st.fixed_dictionaries({
        "image_id": st.one_of(st.sampled_from(["1.tif", "2.tif", "3.tif", "1395.tif", "../1.tif"]), JUNK),
        "type_id": st.one_of(st.sampled_from([11, 94, 73, 75]), JUNK), "bounds_imcoords": BOUNDS}), JUNK)}),
    JUNK)


@pytest.fixture(scope="module")
def good_xview(tmp_path_factory):
    return Good(tmp_path_factory.mktemp("xview"), "xview", make_xview, "xView_train.geojson")


@SETTINGS
@given(feats=st.lists(FEATURE, max_size=6), raw=st.one_of(st.none(), st.none(), st.binary(max_size=30)))
@example(feats=[{"properties": ["image_id", "1.tif"]}], raw=None)  # known past failure, always tried
def test_fuzz_xview(good_xview, feats, raw):
    good_xview.run(raw if raw is not None else json.dumps({"type": "FeatureCollection", "features": feats},
                                                          allow_nan=True).encode())
