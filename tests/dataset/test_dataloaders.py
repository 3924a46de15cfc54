"""utils/dataset/dataloaders.py (+ plots smoke test): bad inputs named and skipped, cache reuse/invalidation, mosaic
geometry against drawn objects, rect batches, collate, LoadImages, and parity with YOLOv5 v7.0's loader."""

import logging
import random

import cv2
import numpy as np
import pytest
from PIL import Image

import utils.dataset.dataloaders as dl
from utils.config.hyp import Hyp
from utils.dataset.dataloaders import DatasetNotFoundError, LoadImagesAndLabels, create_dataloader
from utils.dataset.sources import LoadImages
from utils.plots import plot_images, plot_labels, plot_results

OBJ_BGR = (0, 0, 255)  # pure red objects on a pure blue background
BG_BGR = (255, 0, 0)


def make_dataset(root, n=6, sizes=((96, 128), (128, 96), (80, 160)), seed=0):
    """Images (h, w) cycling through ``sizes`` with 1-3 red rectangles each, labels exact to the pixel."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        im = np.zeros((h, w, 3), np.uint8)
        im[:] = BG_BGR
        rows = []
        for _ in range(rng.integers(1, 4)):
            bw, bh = rng.integers(12, 30, 2)
            x1, y1 = rng.integers(0, w - bw), rng.integers(0, h - bh)
            im[y1:y1 + bh, x1:x1 + bw] = OBJ_BGR
            rows.append(f"{rng.integers(0, 3)} {(x1 + bw / 2) / w} {(y1 + bh / 2) / h} {bw / w} {bh / h}")
        cv2.imwrite(str(root / "images" / f"{i}.png"), im)
        (root / "labels" / f"{i}.txt").write_text("\n".join(rows) + "\n")
    return root / "images"


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nope")):
        LoadImagesAndLabels(tmp_path / "nope", 64)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt.md").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="no images found in .*empty"):
        LoadImagesAndLabels(tmp_path / "empty", 64)
    with pytest.raises(DatasetNotFoundError, match="no files match"):
        LoadImagesAndLabels(str(tmp_path / "*.jpg"), 64)


def test_corrupt_items_listed_and_skipped(tmp_path, caplog):
    images = make_dataset(tmp_path, n=4)
    (images / "zero.jpg").write_bytes(b"")
    (images / "junk.png").write_text("not an image")
    cv2.imwrite(str(images / "badrow.png"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "labels" / "badrow.txt").write_text("0 0.5 0.5 0.1\n")
    cv2.imwrite(str(images / "badcls.png"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "labels" / "badcls.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with caplog.at_level(logging.WARNING):
        ds = LoadImagesAndLabels(images, 64, nc=3)
    assert len(ds) == 4 and ds.counts["corrupt"] == 4 and ds.counts["total"] == 8
    log = caplog.text
    for name in ("zero.jpg", "junk.png", "badrow.txt:1:", "badcls.txt:1:"):
        assert name in log
    assert "4 of 8 images skipped as corrupt" in log
    for i in range(len(ds)):  # never crashes on what is left
        assert ds[i][0].shape == (3, 64, 64)


def test_all_corrupt_and_no_labels_for_training(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="all 1 are corrupt.*a.jpg"):
        LoadImagesAndLabels(tmp_path / "images", 64)
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((32, 32, 3), np.uint8))
    assert len(LoadImagesAndLabels(tmp_path / "images", 64)) == 1  # validation: backgrounds are fine
    with pytest.raises(DatasetNotFoundError, match="no labels found"):
        LoadImagesAndLabels(tmp_path / "images", 64, augment=True)


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    images = make_dataset(tmp_path, n=3)
    ds = LoadImagesAndLabels(images, 64)
    assert ds.cache_path == tmp_path / "labels.cache" and ds.cache_path.is_file()
    calls = []
    real = dl.scan_labels
    monkeypatch.setattr(dl, "scan_labels", lambda *a, **k: calls.append(1) or real(*a, **k))
    LoadImagesAndLabels(images, 64)
    assert calls == []  # reused
    (tmp_path / "labels" / "0.txt").write_text("1 0.5 0.5 0.25 0.25\n")  # content change
    ds = LoadImagesAndLabels(images, 64)
    assert calls == [1] and ds.labels[0].tolist() == [[1, 0.5, 0.5, 0.25, 0.25]]
    LoadImagesAndLabels(images, 64, nc=5)  # other class count: other key
    assert calls == [1, 1]
    ds.cache_path.write_bytes(b"corrupt cache")
    LoadImagesAndLabels(images, 64, nc=5)
    assert calls == [1, 1, 1]
    assert not list(tmp_path.glob("labels/*.tmp")) and not list(tmp_path.glob("*.tmp"))


def test_plain_item_letterboxed_labels(tmp_path):
    images = make_dataset(tmp_path, n=3)
    ds = LoadImagesAndLabels(images, 64)
    img, labels, path, shapes = ds[1]  # 128 x 96 (h, w): resized to 64 x 48, padded 8 px left/right
    assert img.shape == (3, 64, 64) and img.dtype.__str__() == "torch.uint8"
    (h0, w0), ((rh, rw), (padw, padh)) = shapes
    assert (h0, w0) == (128, 96) and (rh, rw) == (0.5, 0.5) and (padw, padh) == (8.0, 0.0)
    orig = ds.labels[1]
    np.testing.assert_allclose(labels[:, 2].numpy(), (orig[:, 1] * 48 + 8) / 64, atol=1e-6)
    np.testing.assert_allclose(labels[:, 4].numpy(), orig[:, 3] * 48 / 64, atol=1e-6)
    rgb = img.permute(1, 2, 0).numpy()
    assert (rgb[:, :8] == 114).all() and (rgb[:, -8:] == 114).all()
    assert tuple(rgb[0, 30]) in ((0, 0, 255), (255, 0, 0))  # RGB: blue background or red object


def test_mosaic_labels_match_drawn_objects(tmp_path):
    images = make_dataset(tmp_path, n=6)
    hyp = Hyp(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=0.0, translate=0.1, scale=0.3, mosaic=1.0, fliplr=0.5,
              flipud=0.5)
    ds = LoadImagesAndLabels(images, 96, augment=True, hyp=hyp, seed=1)
    n_checked = 0
    for i in range(12):
        img, labels, _, shapes = ds[i % len(ds)]
        assert img.shape == (3, 96, 96) and shapes is None
        lb = labels.numpy()
        assert lb.shape[1] == 6 and (lb[:, 2:] >= 0).all() and (lb[:, 2:] <= 1).all()
        x1, x2 = (lb[:, 2] - lb[:, 4] / 2) * 96, (lb[:, 2] + lb[:, 4] / 2) * 96
        y1, y2 = (lb[:, 3] - lb[:, 5] / 2) * 96, (lb[:, 3] + lb[:, 5] / 2) * 96
        assert (x1 >= -1e-3).all() and (x2 <= 96 + 1e-3).all() and (y1 >= -1e-3).all() and (y2 <= 96 + 1e-3).all()
        rgb = img.permute(1, 2, 0).numpy().astype(int)
        red = (rgb[..., 0] > 200) & (rgb[..., 2] < 60)
        for a, b, c, d in zip(x1, y1, x2, y2):  # every label box is filled with object pixels
            inner = red[int(np.ceil(b)) + 1:int(d) - 1, int(np.ceil(a)) + 1:int(c) - 1]
            if inner.size:
                assert inner.mean() > 0.9
                n_checked += 1
        covered = np.zeros_like(red)  # and every object pixel lies in a label box (up to edge blur)
        for a, b, c, d in zip(x1, y1, x2, y2):
            covered[max(int(b) - 1, 0):int(np.ceil(d)) + 1, max(int(a) - 1, 0):int(np.ceil(c)) + 1] = True
        strong = (rgb[..., 0] > 250) & (rgb[..., 2] < 5)
        assert (strong & ~covered).sum() <= 0.05 * max(strong.sum(), 1) + 4
    assert n_checked > 10


@pytest.mark.oracle
def test_getitem_parity_with_oracle(tmp_path, oracle):
    images = make_dataset(tmp_path, n=6)
    hyp = Hyp().replace(degrees=5.0, shear=2.0, mixup=0.5, flipud=0.3).to_dict()
    ours = LoadImagesAndLabels(images, 96, augment=True, hyp=hyp, seed=7)
    ref = oracle.dataloaders.LoadImagesAndLabels(str(images), 96, augment=True, hyp=hyp)
    random.seed(7)
    np.random.seed(7)
    for i in range(8):
        a, b = ours[i % 6], ref[i % 6]
        assert np.array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_allclose(a[1].numpy(), b[1].numpy(), atol=1e-6)
    for rect in (False, True):  # validation items, letterbox and rect batch shapes
        ours = LoadImagesAndLabels(images, 64, batch_size=4, rect=rect, pad=0.5)
        ref = oracle.dataloaders.LoadImagesAndLabels(str(images), 64, batch_size=4, rect=rect, pad=0.5)
        if rect:
            assert np.array_equal(ours.batch_shapes, ref.batch_shapes) and ours.im_files == ref.im_files
        for i in range(6):
            a, b = ours[i], ref[i]
            assert np.array_equal(a[0].numpy(), b[0].numpy()) and a[3] == b[3]
            np.testing.assert_allclose(a[1].numpy(), b[1].numpy(), atol=1e-6)


def test_rect_batches_and_collate(tmp_path):
    images = make_dataset(tmp_path, n=6)  # h/w ratios 0.75, 1.33, 0.5 twice each
    loader, ds = create_dataloader(images, 128, 2, 32, rect=True, workers=0, single_cls=True)
    # sorted ratios 0.5 0.5 | 0.75 0.75 | 1.33 1.33 -> (h, w) = (0.5 * 128, 128), (96, 128), (128, 0.75 * 128)
    assert ds.batch_shapes.tolist() == [[64, 128], [96, 128], [128, 96]]
    shapes = []
    for imgs, targets, paths, _ in loader:
        assert imgs.shape[0] == len(paths) == 2
        assert targets.shape[1] == 6 and (targets[:, 1] == 0).all()  # single_cls
        n_per = [len(ds.labels[ds.im_files.index(p)]) for p in paths]
        assert targets[:, 0].tolist() == sum(([i] * k for i, k in enumerate(n_per)), [])  # collate image index
        shapes.append(list(imgs.shape[2:]))
    assert shapes == ds.batch_shapes.tolist()


def test_create_dataloader_seeded_shuffle(tmp_path):
    images = make_dataset(tmp_path, n=6)
    orders = []
    for _ in range(2):
        loader, _ = create_dataloader(images, 64, 2, 32, shuffle=True, workers=0, seed=3)
        orders.append([p for _, _, paths, _ in loader for p in paths])
    assert orders[0] == orders[1] and len(orders[0]) == 6 and orders[0] != sorted(orders[0])


def test_load_images(tmp_path, caplog):
    make_dataset(tmp_path, n=2)
    (tmp_path / "images" / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    im = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "images" / "rot.jpg", exif=exif.tobytes())
    with caplog.at_level(logging.WARNING):
        items = list(LoadImages(tmp_path / "images", img_size=64, stride=32))
    assert [p.rsplit("/", 1)[-1] for p, *_ in items] == ["0.png", "1.png", "rot.jpg"]
    assert "bad.jpg" in caplog.text
    path, im, im0, cap, s = items[2]
    assert im0.shape == (40, 20, 3) and im.shape == (3, 64, 32) and cap is None and "image 4/4" in s
    with pytest.raises(FileNotFoundError, match="nothere.jpg"):
        LoadImages(tmp_path / "nothere.jpg")
    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 32))
    for k in range(3):
        writer.write(np.full((32, 48, 3), 50 * k, np.uint8))
    writer.release()
    items = list(LoadImages([tmp_path / "images" / "0.png", video], img_size=64, stride=32))
    assert len(items) == 4 and items[0][3] is None and all(it[3] is not None for it in items[1:])
    assert items[3][2].shape == (32, 48, 3) and items[3][1].shape == (3, 64, 64) and "(3/3)" in items[3][4]


def test_plots_smoke(tmp_path):
    images = make_dataset(tmp_path, n=4)
    loader, ds = create_dataloader(images, 64, 4, 32, workers=0)
    imgs, targets, paths, _ = next(iter(loader))
    f = plot_images(imgs, targets, paths, tmp_path / "b.jpg", names={0: "a", 1: "b", 2: "c"})
    assert cv2.imread(str(f)).shape == (128, 128, 3)
    preds = np.concatenate([targets.numpy(), np.full((len(targets), 1), 0.9)], 1)
    assert plot_images(imgs.float() / 255, preds, fname=tmp_path / "p.jpg").is_file()
    assert plot_labels(np.concatenate(ds.labels), ["a", "b", "c"], tmp_path, imgsz=64).is_file()
    (tmp_path / "results.csv").write_text("epoch,loss,mAP\n0,1.0,0.1\n1,0.5,0.3\n")
    assert plot_results(tmp_path / "results.csv").name == "results.png"
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        plot_results(tmp_path / "missing.csv")
