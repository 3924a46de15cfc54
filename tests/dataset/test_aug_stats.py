"""Labels lost to augmentation: the min-side hyperparameter, the per-size counts, the 5 % warning, the log columns."""

import logging
import random
from pathlib import Path

import numpy as np
import pytest

import train
from data import synthetic
from tests.helpers import tiny_dataset
from utils.config.hyp import load_hyp
from utils.dataset.aug_stats import AugLossCounter, lost_row, lost_warning, size_bucket, tiny_share
from utils.dataset.augmentations import random_perspective
from utils.dataset.dataloaders import LoadImagesAndLabels, create_dataloader
from utils.train.loggers import read_results_csv

IDENTITY = dict(degrees=0, translate=0, scale=0, shear=0, perspective=0)


def warp(targets, **kw):
    seen = []
    _, out = random_perspective(np.zeros((64, 64, 3), np.uint8), np.array(targets, np.float32), **IDENTITY,
                                rng=random.Random(0), on_boxes=lambda *a: seen.append(a), **kw)
    return out, seen[0]


def test_min_side_and_what_the_callback_reports():
    # 2x2 px (YOLOv5 drops it: a side must be > 2), 3x3 px, 10x10 px, and a box half outside a cropped output
    t = [[0, 10, 10, 12, 12], [0, 20, 20, 23, 23], [0, 30, 30, 40, 40], [0, 0, 20, 6, 26]]
    out, (area, inside, kept) = warp(t)
    assert area.tolist() == [4, 9, 100, 36] and inside.all()
    assert kept.tolist() == [False, True, True, True] and len(out) == 3
    out, (_, _, kept) = warp(t, min_side=1.0)
    assert kept.all() and len(out) == 4
    out, (_, _, kept) = warp(t, min_side=3.0)  # 3 px is not > 3
    assert kept.tolist() == [False, False, True, True]
    _, (_, inside, _) = warp(t, border=(-4, -4))  # output cropped by 4 px on each side: the last box is cut
    assert inside.tolist() == [True, True, True, False]


def test_counter_buckets_and_share_by_hand():
    assert size_bucket(np.array([0, 63.9, 64, 255, 256, 1023, 1024, 4096, 1e6])).tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 4]
    c = AugLossCounter()
    area = np.array([16.0, 16.0, 100.0, 400.0, 0.0, 9.0])
    c(area, np.array([True, True, True, True, True, False]), np.array([False, True, True, False, False, False]))
    seen, lost = c.take()
    # the zero-area label (clipped away by the mosaic) and the one outside the output are not counted
    assert seen.tolist() == [2, 1, 1, 0, 0] and lost.tolist() == [1, 0, 1, 0, 0]
    assert tiny_share(seen, lost) == (3, 1, pytest.approx(1 / 3))
    assert c.take()[0].sum() == 0  # take() clears
    row = lost_row(seen, lost)
    assert list(row) == ["aug/lost/very_tiny", "aug/lost/tiny", "aug/lost/small", "aug/lost/medium",
                         "aug/lost/large", "aug/tiny_lost_frac"]
    assert row["aug/lost/small"] == 1.0 and row["aug/tiny_lost_frac"] == pytest.approx(1 / 3)
    msg = lost_warning(seen, lost, scale=0.5, min_side=2.0, epoch=3)
    assert "33.3%" in msg and "'scale' 0.5" in msg and "'aug_min_side' 2" in msg and "epoch 3" in msg
    assert "\n" not in msg
    assert lost_warning(np.array([100, 0, 0, 0, 0]), np.array([5, 0, 0, 0, 0]), 0.5, 2.0, 0) is None  # 5 %: not more


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """The embedded data's generator with its default-run parameters (128 px, sides from 4 px), fewer images."""
    root = tmp_path_factory.mktemp("embedded") / "ds"
    synthetic.generate(root, n_train=64, n_val=4, imgsz=128, min_side=4.0, seed=0)
    return root / "images" / "train"


def one_epoch(path: Path, overrides: list[str], workers: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    hyp = load_hyp("hyp.scratch-low.yaml", overrides)
    loader, ds = create_dataloader(str(path), 128, 16, 32, hyp=hyp, augment=True, workers=workers, seed=0)
    for _ in loader:
        pass
    seen, lost = ds.aug_lost.take()
    return seen, lost, lost_warning(seen, lost, hyp.scale, hyp.aug_min_side, 0)


def test_default_hyp_on_the_embedded_data_does_not_warn_but_shrinking_tiny_boxes_away_does(embedded):
    seen, lost, msg = one_epoch(embedded, [])
    assert seen[:2].sum() > 100 and msg is None and tiny_share(seen, lost)[2] < 0.05
    seen6, lost6, msg6 = one_epoch(embedded, ["aug_min_side=6"])
    assert msg6 is not None and "'aug_min_side' 6" in msg6 and tiny_share(seen6, lost6)[2] > 0.2
    assert lost6[2:].sum() == 0  # boxes of 16 px and more never shrink under 6 px at scale >= 0.5
    seen0, lost0, _ = one_epoch(embedded, ["aug_min_side=0"])
    assert lost0.sum() == 0


def test_worker_processes_add_to_the_same_counts(embedded):
    seen, _, _ = one_epoch(embedded, [], workers=2)
    assert seen.sum() > 100  # every count comes from the two worker processes
    ds = LoadImagesAndLabels(str(embedded), 128, 16, augment=False)
    assert ds.aug_lost is None


@pytest.mark.slow
def test_train_logs_lost_labels_as_last_columns_and_warns(tmp_path, caplog):
    data = tiny_dataset(tmp_path / "data", imgsz=96)
    opt = train.get_args_parser().parse_args(
        ["--data", str(data), "--imgsz", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--noplots",
         "--project", str(tmp_path), "--name", "run", "--seed", "1", "--hyp-set", "aug_min_side=8"])
    with caplog.at_level(logging.WARNING):
        run = Path(train.train(opt)["save_dir"])
    keys, rows = read_results_csv(run / "results.csv")
    assert keys[-6:] == ["aug/lost/very_tiny", "aug/lost/tiny", "aug/lost/small", "aug/lost/medium",
                         "aug/lost/large", "aug/tiny_lost_frac"]
    assert keys[:4] == ["train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision"]
    assert all(r["aug/lost/very_tiny"] + r["aug/lost/tiny"] > 0 for r in rows)
    warnings = [r.message for r in caplog.records if "augmentation dropped" in r.message]
    assert len(warnings) == 1 and "'aug_min_side' 8" in warnings[0] and "epoch 0" in warnings[0]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next(run.glob("events.out.tfevents*"))))
    acc.Reload()
    assert acc.Scalars("aug/lost/tiny")[-1].value == pytest.approx(rows[-1]["aug/lost/tiny"])
