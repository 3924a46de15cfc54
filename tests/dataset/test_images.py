"""Odd and damaged image files (issue 9): each loads as a 3-channel uint8 BGR image of the right (EXIF-rotated)
size with its labels, or is reported by name and skipped; a dataset mixing them still builds and iterates."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.dataset.dataloaders import LoadImagesAndLabels
from utils.dataset.labels import verify_image_label
from utils.dataset.sources import imread

LABEL = [[1, 0.5, 0.5, 0.2, 0.3]]


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def make_images(d: Path) -> dict[str, tuple[Path, tuple[int, int] | None]]:
    """Write every kind of odd file into ``d/images`` with a label each -> {kind: (file, (w, h) or None if bad)}."""
    (d / "images").mkdir(parents=True)
    (d / "labels").mkdir()
    out = {}

    def add(kind: str, name: str, size):
        out[kind] = (d / "images" / name, size)
        (d / "labels" / (Path(name).stem + ".txt")).write_text(" ".join(map(str, LABEL[0])) + "\n")

    cv2.imwrite(str(d / "images/good.jpg"), _noise(24, 40))
    add("good", "good.jpg", (40, 24))
    cv2.imwrite(str(d / "images/full.jpg"), _noise(64, 64, 1), [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = (d / "images/full.jpg").read_bytes()
    (d / "images/truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "images/full.jpg").unlink()
    add("truncated", "truncated.jpg", None)
    (d / "images/zero.jpg").write_bytes(b"")
    add("zero", "zero.jpg", None)
    rgba = np.dstack([_noise(20, 30, 2), np.full((20, 30), 128, np.uint8)])
    cv2.imwrite(str(d / "images/alpha.png"), rgba)
    add("alpha", "alpha.png", (30, 20))
    cv2.imwrite(str(d / "images/sixteen.png"), np.full((22, 33, 3), 40000, np.uint16))
    add("16bit", "sixteen.png", (33, 22))
    cv2.imwrite(str(d / "images/gray.png"), np.full((25, 15), 77, np.uint8))
    add("gray", "gray.png", (15, 25))
    Image.new("CMYK", (30, 20), (0, 255, 0, 0)).save(d / "images/cmyk.jpg", quality=95)  # magenta
    add("cmyk", "cmyk.jpg", (30, 20))
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left: on top after a 90 degree clockwise turn
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(d / "images/rotated.jpg", exif=exif.tobytes(), quality=95)
    add("exif6", "rotated.jpg", (20, 40))  # displayed size: width and height swapped
    cv2.imwrite(str(d / "images/tiny.png"), np.zeros((1, 1, 3), np.uint8))
    add("1x1", "tiny.png", None)
    (d / "images/text.jpg").write_text("this is not an image\n" * 20)
    add("text", "text.jpg", None)
    return out


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("odd")
    return d, make_images(d)


KINDS = ["good", "truncated", "zero", "alpha", "16bit", "gray", "cmyk", "exif6", "1x1", "text"]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_or_is_reported(odd, kind):
    d, files = odd
    f, size = files[kind]
    res = verify_image_label(str(f), str(d / "labels" / (f.stem + ".txt")), nc=3)
    if size is None:
        assert res.corrupt == 1 and not res.ok and len(res.labels) == 0
        assert len(res.messages) == 1 and str(f) in res.messages[0] and "corrupt" in res.messages[0]
        return
    assert res.ok, res.messages
    assert res.shape == size
    np.testing.assert_allclose(res.labels, LABEL, rtol=1e-6)
    im = imread(str(f))
    assert im is not None and im.dtype == np.uint8 and im.shape == (size[1], size[0], 3)


def test_problem_named_per_kind(odd):
    d, files = odd
    want = {"truncated": "truncated or corrupt", "zero": "empty (0 bytes)", "1x1": "1x1 px is under 10 px",
            "text": "not a readable image"}
    for kind, problem in want.items():
        f = files[kind][0]
        res = verify_image_label(str(f), str(d / "labels" / (f.stem + ".txt")))
        assert problem in res.messages[0], res.messages


def test_pixels_converted(odd):
    _, files = odd
    assert imread(str(files["16bit"][0]))[0, 0].tolist() == [156] * 3  # 40000 / 65535 * 255, rounded
    g = imread(str(files["gray"][0]))
    assert (g == 77).all()
    c = imread(str(files["cmyk"][0]))[10, 15].astype(int)  # magenta in BGR ~ (255, 0, 255)
    assert c[0] > 230 and c[1] < 25 and c[2] > 230, c
    a = imread(str(files["alpha"][0]))
    np.testing.assert_array_equal(a, _noise(20, 30, 2))  # alpha dropped, colour kept exactly (PNG is lossless)


def test_exif_rotation_applied(odd):
    _, files = odd
    im = imread(str(files["exif6"][0]))
    assert im.shape == (40, 20, 3)  # 40 x 20 stored, displayed 20 wide and 40 high
    red = im[..., 2].astype(int)
    assert red[:8].mean() > 200 and red[12:].mean() < 30  # the left strip is now the top


def test_mixed_dataset_builds_and_iterates(odd, caplog):
    d, files = odd
    bad = [k for k, (_, s) in files.items() if s is None]
    with caplog.at_level(logging.WARNING):
        ds = LoadImagesAndLabels(str(d / "images"), img_size=64, batch_size=4, augment=False, nc=3, workers=1)
    assert ds.counts["corrupt"] == len(bad) == 4 and ds.counts["total"] == len(files) and ds.n == len(files) - 4
    for k in bad:
        assert any(str(files[k][0]) in m for m in ds.messages), k
        assert str(files[k][0]) in caplog.text
    assert sorted(ds.im_files) == sorted(str(f.resolve()) for f, s in files.values() if s)
    want = {str(f.resolve()): s for f, s in files.values() if s}
    for i in range(ds.n):
        assert tuple(ds.shapes[i]) == want[ds.im_files[i]]
        img, labels, path, shapes = ds[i]
        assert img.shape == (3, 64, 64) and img.dtype.is_floating_point is False
        w, h = want[path]
        assert shapes[0] == (h, w)
        assert labels.shape == (1, 6) and labels[0, 1] == 1
        assert abs(float(labels[0, 2]) - 0.5) < 0.02 and abs(float(labels[0, 3]) - 0.5) < 0.02  # centre kept
    ims, targets, paths, _ = LoadImagesAndLabels.collate_fn([ds[i] for i in range(ds.n)])
    assert ims.shape == (ds.n, 3, 64, 64) and targets[:, 0].tolist() == list(range(ds.n))
