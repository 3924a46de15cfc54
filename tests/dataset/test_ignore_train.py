"""Ignore areas in training data (utils/dataset/dataloaders.py, utils/dataset/labels.py): filled with grey 114 before
any augmentation, exact after letterbox; images without an ignore file are byte-identical; the label cache notices
added, changed and removed ignore files; a malformed one makes the pair corrupt with a named line."""

import logging
import shutil

import cv2
import numpy as np

import utils.dataset.dataloaders as dl
from utils.config.hyp import Hyp
from utils.dataset.dataloaders import LoadImagesAndLabels

GREEN = (0, 255, 0)  # BGR; everything else in these images is noise < 100, so G > 114 means a green pixel


def make_images(root, n=4, seed=0):
    """Noise images (values 0..99, never 114) of (h, w) 128 x 96, a labelled red-ish box, and a 32 x 32 green
    patch at x 24..56, y 32..64 (original px) = the ignore area (0.25, 0.25, 0.583.., 0.5) of the image."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        im = rng.integers(0, 100, (128, 96, 3), dtype=np.uint8)
        im[32:64, 24:56] = GREEN
        cv2.imwrite(str(root / "images" / f"{i}.png"), im)
        (root / "labels" / f"{i}.txt").write_text("0 0.5 0.8 0.2 0.1\n")
    return root / "images"


def add_ignore(root, i, text="0.25 0.25 0.5833333 0.5\n"):
    f = root / "labels" / f"{i}.ignore.txt"
    f.write_text(text)
    return f


def test_letterboxed_item_is_grey_exactly_on_the_area(tmp_path):
    plain = make_images(tmp_path / "plain")
    shutil.copytree(tmp_path / "plain", tmp_path / "ign")
    add_ignore(tmp_path / "ign", 0, "0.3 0.25 0.8 0.5\n")
    a = LoadImagesAndLabels(tmp_path / "ign" / "images", 64)
    b = LoadImagesAndLabels(plain, 64)
    assert a.ignores[1] is None and b.ignores == [None] * 4
    np.testing.assert_allclose(a.ignores[0], [[0.3, 0.25, 0.8, 0.5]])
    # 128 x 96 -> 64 x 48 resized, 8 px padding left and right. Area in resized px: x 14.4..38.4 -> columns
    # 14..38, y 16..32 -> rows 16..31; in the letterboxed item columns 22..46, rows 16..31.
    ia, ib = a[0][0].numpy(), b[0][0].numpy()
    expect = np.zeros((64, 64), bool)
    expect[16:32, 22:47] = True
    assert (ia[:, expect] == 114).all()
    assert ((ia != ib).any(0) == expect).all()  # nothing else changed
    for i in (1, 2, 3):  # images without an ignore file: byte-identical items
        assert np.array_equal(a[i][0].numpy(), b[i][0].numpy())
        assert np.array_equal(a[i][1].numpy(), b[i][1].numpy())
    assert np.array_equal(a[0][1].numpy(), b[0][1].numpy())  # labels unchanged


def test_mosaic_mixup_items_never_show_ignored_pixels(tmp_path):
    """Every image's green patch is an ignore area: no green survives mosaic, perspective and mixup (the fill
    happens before them). The same dataset without ignore files does show green (the check can fail)."""
    plain = make_images(tmp_path / "plain")
    shutil.copytree(tmp_path / "plain", tmp_path / "ign")
    for i in range(4):
        add_ignore(tmp_path / "ign", i)
    hyp = Hyp(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=5.0, translate=0.1, scale=0.3, shear=2.0, mosaic=1.0,
              mixup=1.0, fliplr=0.5, flipud=0.5)
    a = LoadImagesAndLabels(tmp_path / "ign" / "images", 96, augment=True, hyp=hyp, seed=3)
    b = LoadImagesAndLabels(plain, 96, augment=True, hyp=hyp, seed=3)
    g_a = max(int(a[i % 4][0][1].max()) for i in range(6))  # channel 1 of RGB = G
    g_b = max(int(b[i % 4][0][1].max()) for i in range(6))
    assert g_a <= 114 < 140 < g_b  # mixup halves the green of the plain set: about 255 / 2 + noise / 2
    plain_item = LoadImagesAndLabels(tmp_path / "ign" / "images", 96, augment=False)[0][0].numpy()
    assert plain_item[1].max() <= 114  # and without augmentation


def test_label_cache_notices_ignore_files(tmp_path, monkeypatch):
    images = make_images(tmp_path)
    calls = []
    real = dl.scan_labels
    monkeypatch.setattr(dl, "scan_labels", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert LoadImagesAndLabels(images, 64).ignores == [None] * 4 and calls == [1]
    assert LoadImagesAndLabels(images, 64).ignores == [None] * 4 and calls == [1]  # cache reused
    f = add_ignore(tmp_path, 2, "0.1 0.1 0.2 0.2\n")  # added after the first scan
    ds = LoadImagesAndLabels(images, 64)
    assert calls == [1, 1] and np.allclose(ds.ignores[2], [[0.1, 0.1, 0.2, 0.2]])
    ds = LoadImagesAndLabels(images, 64)  # read back from the cache
    assert calls == [1, 1] and np.allclose(ds.ignores[2], [[0.1, 0.1, 0.2, 0.2]])
    assert ds.ignores[0] is None and ds.ignores[1] is None and ds.ignores[3] is None
    f.write_text("0.1 0.1 0.2 0.2\n0.5 0.5 0.75 1\n")  # changed
    ds = LoadImagesAndLabels(images, 64)
    assert calls == [1, 1, 1] and np.allclose(ds.ignores[2], [[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.75, 1]])
    f.unlink()  # removed
    assert LoadImagesAndLabels(images, 64).ignores == [None] * 4 and calls == [1, 1, 1, 1]


def test_rect_order_keeps_areas_with_their_images(tmp_path):
    images = make_images(tmp_path, n=3)
    cv2.imwrite(str(images / "wide.png"), np.zeros((40, 120, 3), np.uint8))  # sorts first in rect order
    add_ignore(tmp_path, "wide", "0 0 0.5 0.5\n")
    ds = LoadImagesAndLabels(images, 64, batch_size=1, rect=True)
    k = [i for i, f in enumerate(ds.im_files) if f.endswith("wide.png")]
    assert k == [0] and ds.ignores[0].tolist() == [[0, 0, 0.5, 0.5]] and ds.ignores[1:] == [None] * 3
    img = ds[0][0].numpy()  # 40 x 120 -> 22 x 64 (ceil), rect batch shape 32 x 64: 5 px pad top and bottom
    assert img.shape == (3, 32, 64)
    assert (img[:, 5:5 + 11, 0:32] == 114).all()  # area: rows 0..10, columns 0..31 of the resized image
    assert (img[:, 16:27] == 0).all() and (img[:, 5:16, 32:] == 0).all()


def test_malformed_ignore_file_makes_the_pair_corrupt(tmp_path, caplog):
    images = make_images(tmp_path, n=2)
    add_ignore(tmp_path, 1, "0.1 0.1 0.2\n")
    with caplog.at_level(logging.WARNING):
        ds = LoadImagesAndLabels(images, 64)
    assert len(ds) == 1 and ds.counts["corrupt"] == 1
    assert "1.ignore.txt: line 1" in caplog.text
    (tmp_path / "labels" / "1.ignore.txt").write_bytes(b"\xff\xfe\x00binary")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(LoadImagesAndLabels(images, 64)) == 1
    assert "1.ignore.txt: not a text file" in caplog.text
