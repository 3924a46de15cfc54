"""utils/dataset/augmentations.py: hand-computed letterbox numbers, properties, and parity with YOLOv5 v7.0."""

import random

import numpy as np
import pytest

from utils.dataset.augmentations import (
    augment_hsv,
    box_candidates,
    flip_lr,
    flip_ud,
    letterbox,
    mixup,
    random_perspective,
)


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_letterbox_hand_computed():
    im, ratio, (dw, dh) = letterbox(_img(100, 200), 640, auto=False)
    assert im.shape == (640, 640, 3) and ratio == (3.2, 3.2) and (dw, dh) == (0.0, 160.0)
    assert (im[:160] == 114).all() and (im[-160:] == 114).all()
    im, ratio, (dw, dh) = letterbox(_img(100, 200), 640, auto=True, stride=32)  # 640x320: already a multiple
    assert im.shape == (320, 640, 3) and (dw, dh) == (0.0, 0.0)
    im, ratio, (dw, dh) = letterbox(_img(90, 200), 640, auto=True, stride=32)  # 640x288 -> pad 0 (288 = 9 * 32)
    assert im.shape == (288, 640, 3)
    im, ratio, (dw, dh) = letterbox(_img(100, 100), (64, 64), scaleup=False, auto=False)  # shrink only
    assert ratio == (0.64, 0.64) and im.shape == (64, 64, 3)
    im, ratio, _ = letterbox(_img(30, 50), (64, 64), scaleup=False, auto=False)  # no enlarging
    assert ratio == (1.0, 1.0) and (im[17:47, 7:57] == _img(30, 50)).all()
    im, ratio, pad = letterbox(_img(30, 50), (64, 96), auto=False, scaleFill=True)
    assert im.shape == (64, 96, 3) and ratio == (96 / 50, 64 / 30) and pad == (0.0, 0.0)


@pytest.mark.oracle
def test_letterbox_parity(oracle):
    for (h, w), shape, kw in [((100, 200), 640, {}), ((333, 517), 256, dict(auto=False)),
                              ((97, 61), (128, 96), dict(auto=False, scaleup=False)),
                              ((480, 640), 320, dict(stride=64)),
                              ((50, 70), (64, 80), dict(auto=False, scaleFill=True)),
                              ((41, 41), 160, dict(color=(0, 10, 20), auto=False))]:
        im = _img(h, w, seed=h)
        a, b = letterbox(im.copy(), shape, **kw), oracle.augmentations.letterbox(im.copy(), shape, **kw)
        assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2], (h, w, shape, kw)


def test_box_candidates_hand():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 100]], float).T
    after = np.array([[0, 0, 10, 10], [0, 0, 2, 10], [0, 0, 3, 3], [0, 0, 300, 2.5]], float).T
    # kept; too narrow (w == 2 not > 2); area ratio 0.09 < 0.1; aspect ratio 120 > 100
    assert box_candidates(before, after).tolist() == [True, False, False, False]


def test_random_perspective_identity_and_labels():
    im = _img(64, 64)
    t = np.array([[1, 10, 10, 30, 20]], np.float32)
    out, t2 = random_perspective(im, t, degrees=0, translate=0, scale=0, shear=0, perspective=0)
    assert np.array_equal(out, im) and np.array_equal(t2, t)
    out, t2 = random_perspective(im, t, degrees=30, translate=0.2, scale=0.5, shear=5, border=(-16, -16),
                                 rng=random.Random(1))
    assert out.shape == (32, 32, 3)
    assert (t2[:, 1:] >= 0).all() and (t2[:, [1, 3]] <= 32).all() and (t2[:, [2, 4]] <= 32).all()
    _, empty = random_perspective(im, np.zeros((0, 5)), rng=random.Random(1))
    assert empty.shape == (0, 5)


@pytest.mark.oracle
def test_random_perspective_parity(oracle):
    im = _img(128, 160, seed=3)
    t = np.array([[0, 10, 10, 60, 50], [1, 100, 20, 150, 120], [2, 5, 100, 12, 110]], np.float32)
    for seed, kw in enumerate([dict(degrees=10, translate=0.1, scale=0.5, shear=3),
                               dict(degrees=0, translate=0.1, scale=0.5, shear=0, border=(-32, -40)),
                               dict(degrees=5, translate=0.2, scale=0.3, shear=2, perspective=0.0005)]):
        a_im, a_t = random_perspective(im.copy(), t.copy(), rng=random.Random(seed), **kw)
        random.seed(seed)
        b_im, b_t = oracle.augmentations.random_perspective(im.copy(), t.copy(), **kw)
        assert np.array_equal(a_im, b_im)
        np.testing.assert_allclose(a_t, b_t, rtol=0, atol=1e-4)


@pytest.mark.oracle
def test_hsv_and_mixup_parity(oracle):
    for seed, gains in enumerate([(0.015, 0.7, 0.4), (0.5, 0.5, 0.5), (0.0, 0.0, 0.9)]):
        a, b = _img(48, 64, seed), _img(48, 64, seed)
        augment_hsv(a, *gains, np_rng=np.random.RandomState(seed))
        np.random.seed(seed)
        oracle.augmentations.augment_hsv(b, *gains)
        assert np.array_equal(a, b)
    im1, im2 = _img(32, 32, 1), _img(32, 32, 2)
    l1, l2 = np.ones((2, 5), np.float32), np.zeros((1, 5), np.float32)
    a = mixup(im1, l1, im2, l2, np_rng=np.random.RandomState(5))
    np.random.seed(5)
    b = oracle.augmentations.mixup(im1, l1, im2, l2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_hsv_zero_gain_is_identity():
    im = _img(16, 16)
    ref = im.copy()
    augment_hsv(im, 0, 0, 0)
    assert np.array_equal(im, ref)


def test_flips():
    im = _img(4, 6)
    lb = np.array([[0, 0.25, 0.1, 0.2, 0.2]], np.float32)
    a, la = flip_lr(im, lb)
    assert np.array_equal(a, im[:, ::-1]) and la[0, 1] == 0.75 and lb[0, 1] == 0.25
    b, lb2 = flip_ud(im, lb)
    assert np.array_equal(b, im[::-1]) and np.isclose(lb2[0, 2], 0.9)
