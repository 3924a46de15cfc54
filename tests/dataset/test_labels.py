"""utils/dataset/labels.py: one image/label pair verified, every problem named with its file and row."""

import logging
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.dataset.labels import (
    COORD_TOL,
    LabelError,
    cache_key,
    img2label_paths,
    load_label_cache,
    require_labels,
    save_label_cache,
    scan_labels,
    verify_image_label,
)


def _pair(tmp_path, rows: str | None, name="a.jpg", size=(64, 80)):
    """Write a (h, w) = size image and (unless None) a label file with ``rows``; return their paths."""
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "labels").mkdir(exist_ok=True)
    im = tmp_path / "images" / name
    cv2.imwrite(str(im), np.full((*size, 3), 90, np.uint8))
    lb = tmp_path / "labels" / (im.stem + ".txt")
    if rows is not None:
        lb.write_text(rows)
    return str(im), str(lb)


def test_good_pair(tmp_path):
    im, lb = _pair(tmp_path, "0 0.5 0.5 0.2 0.4\n\n3 0.1 0.2 0.1 0.1\n")
    r = verify_image_label(im, lb, nc=4)
    assert r.ok and (r.found, r.missing, r.empty, r.corrupt) == (1, 0, 0, 0)
    assert r.shape == (80, 64)  # (width, height)
    assert r.labels.dtype == np.float32
    np.testing.assert_allclose(r.labels, [[0, 0.5, 0.5, 0.2, 0.4], [3, 0.1, 0.2, 0.1, 0.1]], atol=1e-7)
    assert r.messages == []


def test_missing_and_empty_label_file(tmp_path):
    im, lb = _pair(tmp_path, None)
    r = verify_image_label(im, lb)
    assert r.ok and r.missing == 1 and r.found == 0 and r.labels.shape == (0, 5)
    im, lb = _pair(tmp_path, "\n  \n", name="b.png")
    r = verify_image_label(im, lb)
    assert r.ok and r.found == 1 and r.empty == 1 and r.labels.shape == (0, 5)


@pytest.mark.parametrize("rows, problem, line", [
    ("0 0.5 0.5 0.2\n", "expected 5 columns", 1),
    ("0 0.5 0.5 0.2 0.2 0.9\n", "got 6", 1),
    ("0 0.5 0.5 0.2 0.2\n1 0.5 abc 0.2 0.2\n", "not a number: 'abc'", 2),
    ("0 0.5 nan 0.2 0.2\n", "NaN or infinite", 1),
    ("0 0.5 0.5 inf 0.2\n", "NaN or infinite", 1),
    ("0 1.2 0.5 0.2 0.2\n", "outside [0, 1]", 1),
    ("0 0.5 0.5 0.2 -0.01\n", "outside [0, 1]", 1),
    ("0 0.5 0.5 0.1 0.1\n4 0.5 0.5 0.2 0.2\n", "class id 4 >= nc=4", 2),
    ("-1 0.5 0.5 0.2 0.2\n", "non-negative integer", 1),
    ("1.5 0.5 0.5 0.2 0.2\n", "non-negative integer", 1),
    ("0 0.5 0.5 0 0.2\n", "zero-size box", 1),
])
def test_bad_rows_name_file_and_row(tmp_path, rows, problem, line):
    im, lb = _pair(tmp_path, rows)
    r = verify_image_label(im, lb, nc=4)
    assert not r.ok and r.corrupt == 1 and r.labels.shape == (0, 5) and r.shape is None
    msg = "\n".join(r.messages)
    assert f"{lb}:{line}:" in msg and problem in msg


def test_all_bad_rows_listed(tmp_path):
    im, lb = _pair(tmp_path, "0 0.5 0.5 0.2\n1 0.5 0.5 0.2 0.2\n2 x 0.5 0.2 0.2\n")
    msg = "\n".join(verify_image_label(im, lb).messages)
    assert f"{lb}:1:" in msg and f"{lb}:3:" in msg and f"{lb}:2:" not in msg


def test_tolerance_clip_duplicates_polygon(tmp_path):
    eps = COORD_TOL / 2
    rows = f"0 {1 + eps} 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n2 0.1 0.1 0.5 0.1 0.3 0.4\n"
    im, lb = _pair(tmp_path, rows)
    r = verify_image_label(im, lb)
    assert r.ok
    # row 1: x clipped to 1, then its right half (past the border) clipped: box [0.9, 1] -> x 0.95, w 0.1
    np.testing.assert_allclose(r.labels[0], [0, 0.95, 0.5, 0.1, 0.2], atol=1e-6)
    np.testing.assert_allclose(r.labels[1], [1, 0.5, 0.5, 0.2, 0.2], atol=1e-6)
    # polygon (0.1,0.1) (0.5,0.1) (0.3,0.4) -> box x 0.1..0.5, y 0.1..0.4
    np.testing.assert_allclose(r.labels[2], [2, 0.3, 0.25, 0.4, 0.3], atol=1e-6)
    msg = "\n".join(r.messages)
    assert "1 duplicate label row(s) removed" in msg and "clipped" in msg and lb in msg


def test_zero_byte_truncated_and_non_images(tmp_path):
    im, lb = _pair(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    open(im, "wb").close()
    r = verify_image_label(im, lb)
    assert r.corrupt and im in r.messages[0] and "0 bytes" in r.messages[0]

    ok = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    trunc = tmp_path / "images" / "t.jpg"
    trunc.write_bytes(ok[: len(ok) // 2])
    r = verify_image_label(str(trunc), str(tmp_path / "labels" / "t.txt"))
    assert r.corrupt and str(trunc) in r.messages[0] and "truncated or corrupt" in r.messages[0]

    junk = tmp_path / "images" / "junk.png"
    junk.write_text("this is not an image")
    r = verify_image_label(str(junk), str(tmp_path / "labels" / "junk.txt"))
    assert r.corrupt and str(junk) in r.messages[0] and "not a readable image" in r.messages[0]

    small, _ = _pair(tmp_path, None, name="small.png", size=(8, 40))
    r = verify_image_label(small, "nope.txt")
    assert r.corrupt and "under 10 px" in r.messages[0] and small in r.messages[0]


def test_jpeg_with_trailing_bytes_missing_marker_is_kept(tmp_path):
    data = cv2.imencode(".jpg", np.full((32, 32, 3), 128, np.uint8))[1].tobytes()
    f = tmp_path / "x.jpg"
    f.write_bytes(data + b"\x00\x00")  # decodes fine but does not end with FFD9
    r = verify_image_label(str(f), str(tmp_path / "x.txt"))
    assert r.ok and "no end-of-image marker" in r.messages[0]


def test_exif_rotation_swaps_shape(tmp_path):
    im = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 270: displayed 20 wide, 40 high
    f = tmp_path / "r.jpg"
    im.save(f, exif=exif.tobytes())
    assert verify_image_label(str(f), str(tmp_path / "r.txt")).shape == (20, 40)


def test_img2label_paths():
    sep = os.sep
    out = img2label_paths([f"{sep}d{sep}images{sep}x{sep}images{sep}train{sep}a.b.jpg"])
    assert out == [f"{sep}d{sep}images{sep}x{sep}labels{sep}train{sep}a.b.txt"]


def test_scan_and_cache_roundtrip(tmp_path):
    pairs = [_pair(tmp_path, "0 0.5 0.5 0.2 0.2\n", name=f"{i}.png") for i in range(3)]
    pairs.append(_pair(tmp_path, "0 0.5 0.5 0.2\n", name="bad.png"))
    ims, lbs = [p[0] for p in pairs], [p[1] for p in pairs]
    scan = scan_labels(ims, lbs, nc=2, workers=2)
    assert scan.counts == dict(found=4, missing=0, empty=0, corrupt=1, total=4)
    assert len(scan.im_files) == 3 and pairs[3][0] not in scan.im_files
    key = cache_key(ims, lbs, 2)
    assert key != cache_key(ims, lbs, 3)  # the class count is part of the key
    f = tmp_path / "labels.cache"
    assert save_label_cache(f, key, scan)
    back = load_label_cache(f, key)
    assert back.im_files == scan.im_files and back.counts == scan.counts and back.messages == scan.messages
    assert all(np.array_equal(a, b) for a, b in zip(back.labels, scan.labels))
    assert load_label_cache(f, "other") is None
    f.write_bytes(b"garbage")
    assert load_label_cache(f, key) is None


def test_missing_label_files_are_counted_in_one_line(tmp_path):
    """Half the label files missing (one saved as .TXT): one line with the count and the first expected path."""
    pairs = [_pair(tmp_path, "0 0.5 0.5 0.2 0.2\n" if i % 2 else None, name=f"{i}.png") for i in range(4)]
    (tmp_path / "labels" / "0.TXT").write_text("0 0.5 0.5 0.2 0.2\n")
    scan = scan_labels([p[0] for p in pairs], [p[1] for p in pairs], workers=1)
    assert scan.counts["missing"] == 2
    assert scan.messages == [f"2 of 4 images have no label file (e.g. {tmp_path / 'labels' / '0.txt'}; found 0.TXT: "
                             "label files must end in .txt)"]
    full = scan_labels([p[0] for p in pairs[1::2]], [p[1] for p in pairs[1::2]], workers=1)
    assert full.messages == []  # nothing missing: nothing said


def test_training_loader_reports_missing_labels(tmp_path, caplog):
    from utils.dataset.dataloaders import LoadImagesAndLabels

    for i in range(3):
        _pair(tmp_path, "0 0.5 0.5 0.2 0.2\n" if i else None, name=f"{i}.png")
    with caplog.at_level(logging.WARNING):
        LoadImagesAndLabels(str(tmp_path / "images"), 64, prefix="train: ", workers=1)
    assert f"train: 1 of 3 images have no label file (e.g. {tmp_path / 'labels' / '0.txt'})" in caplog.text


def test_require_labels_refuses_a_split_without_any(tmp_path):
    ims, lbs = zip(*[_pair(tmp_path, None, name=f"{i}.png") for i in range(3)])
    none = [np.zeros((0, 5), np.float32)] * 3
    with pytest.raises(LabelError, match=r"^val: SRC: no labels to validate against: none of its 3 images has a label "
                                         r"file \(expected YOLO \.txt files in .*labels\)$"):
        require_labels(none, list(lbs), "SRC", prefix="val: ")
    open(lbs[0], "w").close()
    with pytest.raises(LabelError, match="2 of its 3 images have no label file and the other 1 are empty"):
        require_labels(none, list(lbs), "SRC")
    for f in lbs[1:]:
        open(f, "w").close()
    with pytest.raises(LabelError, match="all 3 label files are empty"):
        require_labels(none, list(lbs), "SRC")
    require_labels([none[0], np.ones((1, 5), np.float32), none[0]], list(lbs), "SRC")  # one label is enough
