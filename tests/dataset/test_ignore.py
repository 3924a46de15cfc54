"""utils/dataset/ignore.py: file naming, reading/writing, filling, centre-in-area test (hand-computed values)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from utils.dataset.ignore import (
    IgnoreFileError,
    centres_in_areas,
    fill_ignore,
    ignore_file_for,
    load_ignore,
    to_pixels,
    write_ignore,
)


def test_ignore_file_for():
    assert ignore_file_for("/d/labels/train/a.txt") == Path("/d/labels/train/a.ignore.txt")
    assert ignore_file_for(Path("labels/val/x.y.txt")) == Path("labels/val/x.y.ignore.txt")


def test_write_load_roundtrip_and_absent(tmp_path):
    f = tmp_path / "a.ignore.txt"
    assert load_ignore(f).shape == (0, 4)  # no file: no areas
    assert write_ignore(f, np.array([[0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]]))
    assert f.read_text() == "0.100000 0.200000 0.300000 0.400000\n0.000000 0.000000 1.000000 1.000000\n"
    np.testing.assert_allclose(load_ignore(f), [[0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]], atol=1e-7)
    assert not write_ignore(f, np.zeros((0, 4))) and not f.exists()  # empty: the file is removed


def test_load_clips_tolerance_and_skips_comments(tmp_path):
    f = tmp_path / "a.ignore.txt"
    f.write_text("# areas\n\n-0.0005 0.5 1.0005 0.75  # row\n")
    np.testing.assert_allclose(load_ignore(f), [[0, 0.5, 1, 0.75]])


@pytest.mark.parametrize("row", ["0.1 0.2 0.3", "a b c d", "0.1 0.2 1.5 0.4", "0.3 0.2 0.1 0.4", "0.1 nan 0.2 0.3"])
def test_load_bad_rows_name_file_and_line(tmp_path, row):
    f = tmp_path / "b.ignore.txt"
    f.write_text(f"0 0 1 1\n{row}\n")
    with pytest.raises(IgnoreFileError, match=r"b\.ignore\.txt: line 2"):
        load_ignore(f)


def test_to_pixels():
    np.testing.assert_allclose(to_pixels(np.array([[0.1, 0.2, 0.5, 1.0]]), 200, 100), [[20, 20, 100, 100]])


def test_fill_ignore_covers_touched_pixels_and_clips():
    img = np.zeros((6, 8, 3), np.uint8)
    out = fill_ignore(img, np.array([[1.5, 0.2, 3.0, 2.0], [7.5, 5.5, 20, 20]]), value=114)
    assert out is img  # in place
    expect = np.zeros((6, 8), bool)
    expect[0:2, 1:3] = True  # x 1.5..3.0 -> columns 1, 2; y 0.2..2.0 -> rows 0, 1
    expect[5:6, 7:8] = True  # clipped to the image: the last pixel
    assert ((img == 114).all(2) == expect).all() and (img[~expect] == 0).all()
    gray = np.zeros((4, 4), np.uint8)
    fill_ignore(gray, np.array([[-5, -5, 1, 1], [3, 3, 3, 4]]), value=7)  # second area has zero width
    assert gray.sum() == 7 and gray[0, 0] == 7


def test_centres_in_areas_numpy_and_torch():
    preds = np.array([[0, 0, 10, 10],  # centre (5, 5): inside area 0
                      [18, 18, 22, 22],  # centre (20, 20): on area 0's corner, borders count
                      [30, 0, 40, 10],  # centre (35, 5): outside both
                      [50, 50, 70, 54]], np.float32)  # centre (60, 52): inside area 1
    areas = np.array([[0, 0, 20, 20], [55, 50, 65, 60]], np.float32)
    expect = [True, True, False, True]
    assert centres_in_areas(preds, areas).tolist() == expect
    t = centres_in_areas(torch.tensor(preds), torch.tensor(areas))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.bool and t.tolist() == expect
    assert centres_in_areas(preds, np.zeros((0, 4))).tolist() == [False] * 4
    assert centres_in_areas(torch.tensor(preds), np.zeros((0, 4))).tolist() == [False] * 4
    assert centres_in_areas(np.zeros((0, 4)), areas).shape == (0,)
