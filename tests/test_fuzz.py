"""Fuzzing of label-file and data-YAML parsing (issue 9): never a crash, never an invalid box, every rejection
explained by a message naming the file."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data.prepare import check_dataset
from utils.dataset.labels import COORD_TOL, LabelError, img2label_paths, parse_label_file, verify_image_label
from utils.errors import DatasetError

NC = 3
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                              HealthCheck.too_slow])


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("fuzz") / "im.png"
    cv2.imwrite(str(f), np.full((32, 48, 3), 90, np.uint8))
    return f


def check_result(res, lb_file: Path, nc: int | None = NC) -> None:
    """The invariants of issue 9 for one verified pair."""
    for m in res.messages:
        assert lb_file.name in m or Path(res.im_file).name in m, m
    if res.corrupt:
        assert not res.ok and res.labels.shape == (0, 5) and res.shape is None
        assert any("corrupt" in m and lb_file.name in m for m in res.messages), res.messages
        return
    lb = res.labels
    assert lb.dtype == np.float32 and lb.ndim == 2 and lb.shape[1] == 5
    assert np.isfinite(lb).all()
    cls, xywh = lb[:, 0], lb[:, 1:]
    assert (cls >= 0).all() and (cls == np.round(cls)).all()
    if nc is not None:
        assert (cls < nc).all()
    assert ((xywh >= 0) & (xywh <= 1)).all(), lb
    assert (xywh[:, 2:] > 0).all(), lb
    edges = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    assert ((edges >= -COORD_TOL - 1e-6) & (edges <= 1 + COORD_TOL + 1e-6)).all(), lb
    assert len(np.unique(lb, axis=0)) == len(lb)  # duplicates removed


# --- label files -----------------------------------------------------------------------------------------------------
WEIRD = ["nan", "NaN", "inf", "-inf", "+inf", "Infinity", "1e400", "-1e400", "1e-400", "1e-300", "1e-45", "0x10",
         "1_0", "--1", "1e", ".", "abc", "١", "½", "0.5\x00", "\u00a0", "1,5", "True", "None", "0.5.5", "1e308",
         "-0", "-0.0", "0.0", "1.0", "1.0005", "1.002", "-0.0005", "-0.002", "99999999999999999999", "3", "2.5"]
token = st.one_of(
    st.sampled_from(WEIRD),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(0, 1).map(lambda x: f"{x:.6f}"),
    st.integers(-5, 10).map(str),
    st.integers(-2**70, 2**70).map(str),
    st.text(max_size=6).filter(lambda s: s.strip() == s and s),
)
row = st.one_of(
    st.lists(token, min_size=0, max_size=12).map(" ".join),  # wrong column counts, junk
    st.tuples(st.integers(-1, 4), *[st.floats(-0.1, 1.1, allow_nan=False)] * 4)
    .map(lambda r: " ".join(map(str, r))),  # almost valid rows
    st.tuples(st.integers(0, 2), *[st.floats(0, 1)] * 4).map(lambda r: " ".join(map(str, r))),  # mostly valid
)
label_text = st.lists(row, max_size=8).flatmap(lambda rows: st.sampled_from(["\n", "\r\n", "\n\n", " \n\t"])
                                               .map(lambda sep: sep.join(rows)))


@SETTINGS
@given(text=label_text, nc=st.sampled_from([None, NC]))
def test_fuzz_label_rows(image, tmp_path, text, nc):
    lb_file = tmp_path / "rows.txt"
    lb_file.write_text(text, encoding="utf-8")
    res = verify_image_label(str(image), str(lb_file), nc)
    check_result(res, lb_file, nc)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_fuzz_label_random_bytes(image, tmp_path, data):
    lb_file = tmp_path / "bytes.txt"
    lb_file.write_bytes(data)
    check_result(verify_image_label(str(image), str(lb_file), NC), lb_file)


@pytest.mark.parametrize("row, problem", [
    ("0 0.5 0.5 1e-300 0.5", "zero-size"),  # float32 underflow must not produce a w=0 box (was accepted)
    ("0 0.5 0.5 nan 0.5", "NaN or infinite"),
    ("0 0.5 0.5 1e400 0.5", "NaN or infinite"),
    ("3 0.5 0.5 0.1 0.1", "nc=3"),
    ("1.5 0.5 0.5 0.1 0.1", "non-negative integer"),
    ("-1 0.5 0.5 0.1 0.1", "non-negative integer"),
    ("0 0.5 0.5 0.1", "got 4"),
    ("0 0.5 0.5 0.1 x", "not a number: 'x'"),
    ("0 1.5 0.5 0.1 0.1", "outside [0, 1]"),
    ("0 0.5 0.5 0 0.1", "zero-size"),
])
def test_bad_rows_are_named(image, tmp_path, row, problem):
    lb_file = tmp_path / "bad.txt"
    lb_file.write_text(f"0 0.5 0.5 0.2 0.2\n{row}\n")
    res = verify_image_label(str(image), str(lb_file), NC)
    assert res.corrupt == 1 and len(res.labels) == 0
    assert problem in res.messages[-1] and str(lb_file) in res.messages[-1]


unicode_name = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\."),
                       min_size=1, max_size=30).filter(lambda s: s.strip() == s and len(s.encode()) < 200)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=unicode_name, folder=unicode_name)
def test_fuzz_unicode_paths(tmp_path, name, folder):
    from utils.dataset.sources import imread

    im_dir = tmp_path / folder / "images"
    im_dir.mkdir(parents=True, exist_ok=True)
    im_file = im_dir / f"{name}.png"
    ok, buf = cv2.imencode(".png", np.full((20, 30, 3), 7, np.uint8))
    im_file.write_bytes(buf.tobytes())
    lb_file = Path(img2label_paths([str(im_file)])[0])
    assert lb_file == tmp_path / folder / "labels" / f"{name}.txt"
    lb_file.parent.mkdir(exist_ok=True)
    lb_file.write_text("1 0.5 0.5 0.25 0.5\n", encoding="utf-8")
    res = verify_image_label(str(im_file), str(lb_file), NC)
    assert res.ok and res.shape == (30, 20), res.messages
    np.testing.assert_allclose(res.labels, [[1, 0.5, 0.5, 0.25, 0.5]])
    assert imread(str(im_file)).shape == (20, 30, 3)
    lb_file.write_text("1 0.5 0.5 0.25 nan\n", encoding="utf-8")  # a rejection names the unicode file
    res = verify_image_label(str(im_file), str(lb_file), NC)
    assert res.corrupt and str(lb_file) in res.messages[0]


def test_huge_label_file(image, tmp_path):
    rng = np.random.default_rng(0)
    n = 50_000
    lb = np.column_stack([rng.integers(0, NC, n), rng.uniform(0.3, 0.7, (n, 2)), rng.uniform(0.01, 0.2, (n, 2))])
    lb_file = tmp_path / "huge.txt"
    lines = [f"{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}" for r in lb]
    lb_file.write_text("\n".join(lines))
    t = time.perf_counter()
    res = verify_image_label(str(image), str(lb_file), NC)
    dt = time.perf_counter() - t
    assert res.ok and res.labels.shape == (n, 5)
    np.testing.assert_allclose(res.labels, lb, atol=1e-6)
    assert dt < 20, f"50k rows took {dt:.1f} s"
    lines[12345] = "0 0.5 0.5 0.1"  # one bad row among 50k: named by its line number
    lines[40000] = "7 0.5 0.5 0.1 0.1"
    lines += ["x"] * 10
    lb_file.write_text("\n".join(lines))
    with pytest.raises(LabelError) as e:
        parse_label_file(str(lb_file), NC)
    msg = str(e.value)
    assert f"{lb_file}:12346: expected 5 columns" in msg and f"{lb_file}:40001: class id 7 >= nc=3" in msg
    assert "... and 7 more bad rows" in msg and msg.count("\n") <= 6  # bounded message


# --- data YAML -------------------------------------------------------------------------------------------------------
scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**20), st.floats(), st.text(max_size=12),
                   st.sampled_from(["images", "images/*.png", "../images", "synthetic", "http://x/y.zip", "",
                                    "2001-01-01", "\x00"]))
value = st.recursive(scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.one_of(st.integers(-2, 5), st.text(max_size=5)), c, max_size=4), max_leaves=8)
doc = st.dictionaries(st.sampled_from(["path", "train", "val", "test", "names", "nc", "download", "synthetic", "x"]),
                      value, max_size=8)


def check_yaml(f: Path) -> None:
    try:
        d = check_dataset(f, autodownload=False)
    except DatasetError as e:
        assert str(f.resolve()) in str(e) or str(f) in str(e), str(e)
        return
    assert isinstance(d, dict) and d["nc"] == len(d["names"]) >= 1
    assert sorted(d["names"]) == list(range(d["nc"])) and all(isinstance(v, str) for v in d["names"].values())
    for k in ("train", "val"):
        assert isinstance(d[k], str | list)


@SETTINGS
@given(d=doc, valid_splits=st.booleans())
def test_fuzz_data_yaml_documents(tmp_path, d, valid_splits):
    (tmp_path / "images").mkdir(exist_ok=True)
    if valid_splits:
        d = {**d, "path": str(tmp_path), "train": "images", "val": "images"}
    f = tmp_path / "data.yaml"
    f.write_text(yaml.safe_dump(d, allow_unicode=True), encoding="utf-8")
    check_yaml(f)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda s: s.encode("utf-8", "replace")),
                      st.sampled_from([b"train: a\nval: 2001-13-45\n", b"\xff\xfe\x00\x00", b"[1, 2", b"- a\n- b",
                                       b"a: &x [*x]", b"train: !!python/object:os.system x", b"{" * 2000,
                                       b"names: []\ntrain: i\nval: i\n", b"nc: 1e999\ntrain: i\nval: i\n"])))
def test_fuzz_data_yaml_bytes(tmp_path, data):
    f = tmp_path / "raw.yaml"
    f.write_bytes(data)
    check_yaml(f)


@pytest.mark.parametrize("text, problem", [
    (b"\xff\xfe\x00garbage", "not a UTF-8 text file"),  # was a bare UnicodeDecodeError
    (b"train: a\nval: 2001-13-45\n", "not valid YAML"),  # was a bare ValueError from the date constructor
    (b"train: images\nval: images\nnames: []\n", "'names' is empty"),  # was accepted as nc=0
    (b"train: images\nval: images\nnames: {0: a, 2: b}\n", "without gaps"),
    (b"train: images\nval: images\nnc: two\n", "'nc' must be a positive integer"),
    (b"train: images\nval: images\nnc: 1000000000000\n", "more than 100000 classes"),  # was an out-of-memory
    (b"train: 5\nval: images\nnc: 1\n", "'train' must be a path string"),
])
def test_bad_data_yaml_is_named(tmp_path, text, problem):
    (tmp_path / "images").mkdir()
    f = tmp_path / "d.yaml"
    f.write_bytes(text + f"\npath: {tmp_path}\n".encode() if b"names" in text or b"nc" in text else text)
    with pytest.raises(DatasetError, match=problem) as e:
        check_dataset(f, autodownload=False)
    assert str(f) in str(e.value)
