"""utils/dataset/copy_paste.py (small-object copy-paste, Kisantal et al. 2019) and its use in the mosaic
(utils/dataset/dataloaders.py): pixels and labels of the copies, no overlaps, nothing on the border, thresholds, counts,
determinism, soft edges, the pool, the image-size check, and the dataset with the keys off (byte-identical) and on."""

import math

import numpy as np
import pytest

import utils.dataset.dataloaders as dl
from tests.dataset.test_dataloaders import make_dataset
from utils.config.hyp import Hyp, HypError
from utils.dataset.copy_paste import (
    MARGIN,
    TRIES,
    check_paste_hyp,
    feather,
    overlaps,
    paste_small_objects,
    place,
    small_objects,
)
from utils.dataset.dataloaders import LoadImagesAndLabels

S2 = 200  # canvas side (a mosaic of 100 px images)
RECTS = np.array([[0, 0, 90, 100], [90, 10, 200, 100], [20, 100, 90, 200], [90, 100, 170, 180]])  # grey elsewhere
# (cls, x1, y1, x2, y2): small objects of distinct sizes (so each copy names its source), then big ones
SMALL = [(0, 10.5, 10.25, 16.5, 15.25), (1, 120.0, 30.0, 128.0, 41.0), (2, 40.25, 150.5, 43.25, 152.5),
         (0, 100.0, 120.0, 112.0, 134.0)]  # 6 x 5, 8 x 11, 3 x 2, 12 x 14 px
BIG = [(7, 40.0, 20.0, 72.0, 52.0),  # 32 x 32 = 1024: at the threshold, never copied
       (8, 130.0, 60.0, 190.0, 95.0), (9, 60.0, 120.0, 60.5, 130.0)]  # big; thinner than 1 px


def canvas(seed=0):
    """A 200 x 200 canvas: noise inside RECTS, grey 114 outside; labels SMALL + BIG."""
    rng = np.random.default_rng(seed)
    img = np.full((S2, S2, 3), 114, np.uint8)
    for x1, y1, x2, y2 in RECTS:
        img[y1:y2, x1:x2] = rng.integers(0, 256, (y2 - y1, x2 - x1, 3))
    return img, np.array(SMALL + BIG, np.float32)


def content_mask():
    m = np.zeros((S2, S2), bool)
    for x1, y1, x2, y2 in RECTS:
        m[y1:y2, x1:x2] = True
    return m


def whole(b):
    """Whole-pixel box (x1, y1, x2, y2) ints rounded outward."""
    return math.floor(b[0]), math.floor(b[1]), math.ceil(b[2]), math.ceil(b[3])


def pasted(seed=0, blend="hard", n=2, area=1024.0):
    img, labels = canvas()
    out, lb = paste_small_objects(img.copy(), labels, RECTS, np.random.RandomState(seed), n=n, max_area=area,
                                  blend=blend)
    return img, labels, out, lb


def source_of(row):
    """Index in SMALL of the source of a pasted row (same class and size; integer shift)."""
    for i, (c, x1, y1, x2, y2) in enumerate(SMALL):
        dx, dy = row[1] - x1, row[2] - y1
        if c == row[0] and np.allclose([row[3] - x2, row[4] - y2], [dx, dy], atol=1e-4) and \
                abs(dx - round(dx)) < 1e-4 and abs(dy - round(dy)) < 1e-4:
            return i, round(dx), round(dy)
    raise AssertionError(f"pasted row {row} has no source")


def test_feather_values_and_overlaps():
    x = np.arange(0, 9)
    f = feather(x, 2, 6)  # pixels 2..5 inside; Gaussian CDF values at whole-pixel distances
    phi = [0.5 * (1 + math.erf(d / math.sqrt(2))) for d in (1, 0, -1, -2)]
    np.testing.assert_allclose(f[[5, 6, 7, 8]], [phi[0] - (1 - phi[0]) * 0, 0.5, phi[2], phi[3]], atol=1e-3)
    np.testing.assert_allclose(f[[2, 1, 0]], f[[5, 6, 7]], atol=1e-6)  # symmetric
    assert abs(f[5] - 0.8413) < 1e-3 and abs(f[7] - 0.1587) < 1e-3
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[10, 0, 20, 10], [9, 9, 12, 12], [0, 10, 10, 20], [-5, -5, 0.5, 0.5]])
    assert overlaps(a, b).tolist() == [[False, True, False, True]]  # touching edges do not overlap
    assert small_objects(np.array(SMALL + BIG, np.float32)[:, 1:], 1024).tolist() == [1, 1, 1, 1, 0, 0, 0]


def test_hard_paste_pixels_labels_counts():
    img, labels, out, lb = pasted(n=2)
    assert np.array_equal(lb[:len(labels)], labels)  # originals first, unchanged
    new = lb[len(labels):]
    assert len(new) == 2 * len(SMALL)  # n copies of every small object: the canvas has room
    counts = np.zeros(len(SMALL), int)
    changed = np.zeros((S2, S2), bool)
    for row in new:
        i, dx, dy = source_of(row)
        counts[i] += 1
        x1, y1, x2, y2 = whole(SMALL[i][1:])
        assert np.array_equal(out[y1 + dy:y2 + dy, x1 + dx:x2 + dx], img[y1:y2, x1:x2])  # the source's pixels
        changed[y1 + dy:y2 + dy, x1 + dx:x2 + dx] = True
        assert row.dtype == labels.dtype
    assert counts.tolist() == [2] * len(SMALL)
    assert np.array_equal(out[~changed], img[~changed])  # nothing else touched (hard: the whole-pixel box only)
    assert not set(new[:, 0].tolist()) & {7, 8, 9}  # at/over the threshold or under 1 px: never copied


def test_no_overlap_and_nothing_on_the_border():
    for seed in range(5):
        img, labels, out, lb = pasted(seed=seed, n=3)
        new = lb[len(labels):]
        assert len(new) > len(SMALL)
        boxes = lb[:, 1:].astype(np.float64)
        iw = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
        ih = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        np.fill_diagonal(inter, 0)
        assert (inter[len(labels):] == 0).all()  # every pasted box: intersection exactly 0 with every other box
        # with the margin: each pasted box grown by MARGIN still misses every other box
        grown = np.concatenate([boxes[len(labels):, :2] - MARGIN, boxes[len(labels):, 2:] + MARGIN], 1)
        ov = overlaps(grown, boxes)
        ov[np.arange(len(grown)), len(labels) + np.arange(len(grown))] = False
        assert not ov.any()
        assert (out[~content_mask()] == 114).all()  # the grey border is untouched
        inside = content_mask()
        for b in new[:, 1:]:  # each pasted box and its margin lie inside the placed images
            x1, y1, x2, y2 = whole(b)
            assert inside[y1 - MARGIN:y2 + MARGIN, x1 - MARGIN:x2 + MARGIN].all() and min(x1, y1) >= MARGIN


def test_threshold_and_degenerate_objects():
    _, labels, _, lb = pasted(area=50.0)  # only 6 x 5 = 30 and 3 x 2 = 6 px^2 are under 50
    classes = sorted(lb[len(labels):, 0].tolist())
    assert classes == [0, 0, 2, 2] and all(source_of(r)[0] in (0, 2) for r in lb[len(labels):])
    _, labels, _, lb = pasted(area=6.0)  # 3 x 2 = 6 is not under 6
    assert len(lb) == len(labels)
    _, labels, _, lb = pasted(area=168.0 + 1e-3, n=1)  # 12 x 14 = 168 px^2 just under the threshold
    assert sorted(source_of(r)[0] for r in lb[len(labels):]) == [0, 1, 2, 3]
    _, labels, out, lb = pasted(n=0)
    assert len(lb) == len(labels) and np.array_equal(out, canvas()[0])


def test_deterministic_for_a_seed():
    _, _, out1, lb1 = pasted(seed=3)
    _, _, out2, lb2 = pasted(seed=3)
    _, _, out3, lb3 = pasted(seed=4)
    assert np.array_equal(out1, out2) and np.array_equal(lb1, lb2)
    assert not np.array_equal(lb1, lb3)


def test_place_draw_count_and_no_room():
    rng = np.random.RandomState(0)
    size = np.array([[10, 10], [300, 5], [6, 6], [100, 100]])  # the last two fit nowhere (no image that big)
    pos = place(size, RECTS, np.zeros((0, 4)), (S2, S2), rng)
    assert (pos[[1, 3]] == -1).all() and (pos[[0, 2]] >= 0).all()
    ref = np.random.RandomState(0)
    ref.random_sample((2, 4, TRIES))  # the draw count does not depend on the outcome
    assert rng.random_sample() == ref.random_sample()
    full = np.array([[0, 0, S2, S2]], np.float32)  # everything occupied: nothing placed
    assert (place(size, RECTS, full, (S2, S2), np.random.RandomState(0)) == -1).all()


def test_soft_blend_differs_only_near_edges():
    img, labels, hard, lb_h = pasted(seed=1, blend="hard")
    _, _, soft, lb_s = pasted(seed=1, blend="soft")
    assert np.array_equal(lb_h, lb_s)  # same places
    diff = (hard != soft).any(-1)
    assert diff.any()
    near = np.zeros((S2, S2), bool)
    for row in lb_h[len(labels):]:
        x1, y1, x2, y2 = whole(row[1:])
        near[y1 - MARGIN:y2 + MARGIN, x1 - MARGIN:x2 + MARGIN] = True  # the feathered band ...
        near[y1 + 3:y2 - 3, x1 + 3:x2 - 3] = False  # ... but not the interior, 3 px in from the box edge
    assert not (diff & ~near).any()
    assert (soft[~content_mask()] == 114).all()
    # a blended edge pixel lies between source and destination: alpha 0.5 one pixel outside the box
    row = lb_h[len(labels)]
    i, dx, dy = source_of(row)
    x1, y1, x2, y2 = whole(SMALL[i][1:])
    yc = (y1 + y2) // 2
    src, dst = img[yc, x2].astype(float), img[yc + dy, x2 + dx].astype(float)
    ay = feather(np.array([yc]), y1, y2)[0]
    np.testing.assert_allclose(soft[yc + dy, x2 + dx], np.floor(0.5 * ay * src + (1 - 0.5 * ay) * dst + 0.5),
                               atol=1)


def test_pool_objects_are_pasted_with_their_pixels():
    img = np.full((S2, S2, 3), 114, np.uint8)
    img[RECTS[0, 1]:RECTS[0, 3], RECTS[0, 0]:RECTS[0, 2]] = 50
    other = np.random.default_rng(1).integers(0, 256, (80, 100, 3)).astype(np.uint8)
    pool_lb = np.array([[5, 0.5, 0.5, 0.1, 0.125], [6, 0.2, 0.2, 0.5, 0.5]], np.float32)  # 10 x 10 px; 50 x 40
    labels = np.zeros((0, 5), np.float32)
    out, lb = paste_small_objects(img.copy(), labels, RECTS[:1], np.random.RandomState(0), n=3, max_area=1024,
                                  pool=[(other, pool_lb)])
    assert lb[:, 0].tolist() == [5, 5, 5]  # the 50 x 40 object is not small
    for row in lb:
        np.testing.assert_allclose(row[3:] - row[1:3], [10, 10], atol=1e-4)
        x1, y1 = round(row[1]), round(row[2])
        assert np.array_equal(out[y1:y1 + 10, x1:x1 + 10], other[35:45, 45:55])


def test_check_paste_hyp():
    check_paste_hyp(Hyp(small_paste=0.5, small_paste_area=4096.0), 64)  # = the image area: fine
    check_paste_hyp(Hyp(small_paste=0.0, small_paste_area=1e6), 64)  # off: not checked
    with pytest.raises(HypError, match=r"hyperparameter 'small_paste_area' = 5000.0: larger than the image area "
                                       r"4096 \(64 x 64 input px\)"):
        check_paste_hyp(Hyp(small_paste=0.5, small_paste_area=5000.0), 64)


# --- in the mosaic -----------------------------------------------------------------------------------------------
def items(ds, n=6):
    return [(im.numpy().tobytes(), lb.numpy().tobytes()) for im, lb, _, _ in (ds[i % len(ds)] for i in range(n))]


def test_dataset_off_is_byte_identical(tmp_path):
    images = make_dataset(tmp_path, n=6)
    plain = {k: v for k, v in Hyp(mixup=0.5).to_dict().items() if not k.startswith("small_paste")}
    keyed = {**plain, "small_paste": 0.0, "small_paste_n": 3.0, "small_paste_area": 10.0,
             "small_paste_blend": "soft", "small_paste_pool": True}
    a = LoadImagesAndLabels(images, 96, augment=True, hyp=plain, seed=5)
    b = LoadImagesAndLabels(images, 96, augment=True, hyp=keyed, seed=5)
    assert items(a, 8) == items(b, 8)


def test_mosaic_canvas_keeps_its_labels_and_adds_copies(tmp_path, monkeypatch):
    images = make_dataset(tmp_path, n=6)
    seen = []
    monkeypatch.setattr(dl, "random_perspective", lambda img, labels, **kw: seen.append((img, labels)) or (img, labels))
    for p in (0.0, 1.0):
        ds = LoadImagesAndLabels(images, 96, augment=True, hyp=Hyp(small_paste=p, small_paste_area=2000.0), seed=2)
        ds.load_mosaic(0)
    (img0, lb0), (img1, lb1) = seen
    assert len(lb1) > len(lb0) and np.array_equal(lb1[:len(lb0)], lb0)  # same mosaic, copies appended
    new = lb1[len(lb0):]
    assert ((new[:, 1:] >= 0) & (new[:, 1:] <= 192)).all() and set(new[:, 0].tolist()) <= set(lb0[:, 0].tolist())
    border = (img0 == 114).all(-1)  # the objects and background are red and blue: only the border is grey
    assert border.any() and (img1[border] == 114).all() and (img0 != img1).any()
    for x1, y1, x2, y2 in new[:, 1:]:  # pasted pixels are object red or background blue, never grey
        patch = img1[int(y1) + 1:int(y2), int(x1) + 1:int(x2)].reshape(-1, 3)
        assert not (patch == 114).all(-1).any()


def test_dataset_on_more_labels_inside_and_reproducible(tmp_path):
    images = make_dataset(tmp_path, n=6)
    counts = {}
    for p in (0.0, 1.0):
        for pool in (False, True):
            hyp = Hyp(small_paste=p, small_paste_area=2000.0, small_paste_pool=pool, degrees=3.0)
            ds = LoadImagesAndLabels(images, 96, augment=True, hyp=hyp, seed=4)
            n = 0
            for i in range(12):
                _, lb, _, _ = ds[i % len(ds)]
                lb = lb.numpy()
                assert (lb[:, 2] - lb[:, 4] / 2 >= -1e-6).all() and (lb[:, 2] + lb[:, 4] / 2 <= 1 + 1e-6).all()
                assert (lb[:, 3] - lb[:, 5] / 2 >= -1e-6).all() and (lb[:, 3] + lb[:, 5] / 2 <= 1 + 1e-6).all()
                n += len(lb)
            counts[p, pool] = n
            if p:  # the dataset's own seeded generators: the same items again
                fresh = [LoadImagesAndLabels(images, 96, augment=True, hyp=hyp, seed=4) for _ in range(2)]
                assert items(fresh[0]) == items(fresh[1])
    assert counts[1.0, False] > 1.5 * counts[0.0, False] and counts[1.0, True] > 1.5 * counts[0.0, True]


def test_pool_objects_come_from_other_images(tmp_path, monkeypatch):
    images = make_dataset(tmp_path, n=6)
    seen = []
    monkeypatch.setattr(dl, "random_perspective", lambda img, labels, **kw: seen.append(labels) or (img, labels))
    hyp = Hyp(small_paste=1.0, small_paste_area=2000.0, small_paste_pool=True)
    ds = LoadImagesAndLabels(images, 96, augment=True, hyp=hyp, seed=0)
    sizes = []  # (cls, w, h) of every dataset object at the mosaic scale
    for j in range(len(ds)):
        _, _, (h, w) = ds.load_image(j)
        sizes += [(c, bw * w, bh * h) for c, _, _, bw, bh in ds.labels[j].tolist()]
    from_pool = 0
    for i in range(6):
        off = LoadImagesAndLabels(images, 96, augment=True, hyp=hyp.replace(small_paste=0.0), seed=i)
        ds.reseed(i)
        off.load_mosaic(i)
        ds.load_mosaic(i)
        lb0, lb1 = seen[-2:]
        assert np.array_equal(lb1[:len(lb0)], lb0)
        here = [(c, x2 - x1, y2 - y1) for c, x1, y1, x2, y2 in lb0.tolist()]
        for c, x1, y1, x2, y2 in lb1[len(lb0):].tolist():
            in_canvas, in_data = (any(c == k and abs(x2 - x1 - w) < 1e-3 and abs(y2 - y1 - h) < 1e-3
                                      for k, w, h in objs) for objs in (here, sizes))
            assert in_canvas or in_data  # a canvas object or one of another image, same class and size
            from_pool += not in_canvas
    assert from_pool > 0
