"""Training-loader throughput: our LoadImagesAndLabels vs YOLOv5 v7.0's, mosaic on, same data, same hyp.

Both datasets are indexed directly (workers=0: one process, no DataLoader), in interleaved rounds so that load on
a shared machine hits both alike; the median round rate of each is reported with the ratio ours / reference.

    python benchmarks/bench_dataloader.py [--data DIR] [--imgsz 256] [--items 200] [--rounds 7]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.synthetic import generate  # noqa: E402
from utils.config.hyp import load_hyp  # noqa: E402
from utils.dataset.dataloaders import LoadImagesAndLabels  # noqa: E402


def rate(ds, indices: list[int]) -> float:
    """Items per second over ``indices``."""
    t = time.perf_counter()
    for i in indices:
        ds[i]
    return len(indices) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Its own folder: generating with other parameters into datasets/synthetic-tiny would replace the embedded
    # dataset under a training run that is reading it.
    ap.add_argument("--data", type=Path, default=ROOT / "datasets" / "synthetic-bench",
                    help="synthetic dataset root (generated if needed)")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--items", type=int, default=200, help="items per round and loader")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args(argv)

    from tests.oracle import load_oracle  # late: the reference is only needed here

    oracle = load_oracle()
    root = generate(a.data)  # idempotent: default parameters
    images = str(root / "images" / "train")
    hyp = load_hyp("hyp/hyp.scratch-low.yaml")
    ours = LoadImagesAndLabels(images, a.imgsz, 16, augment=True, hyp=hyp, seed=0, workers=0)
    ref = oracle.dataloaders.LoadImagesAndLabels(images, a.imgsz, 16, augment=True, hyp=hyp.to_dict(), workers=0)
    rng = random.Random(0)
    indices = [rng.randrange(len(ours)) for _ in range(a.items)]
    random.seed(0)
    np.random.seed(0)
    rate(ours, indices[:20]), rate(ref, indices[:20])  # warm-up (page cache, lazy imports)
    r_ours, r_ref = [], []
    for k in range(a.rounds):
        pair = [(ours, r_ours), (ref, r_ref)]
        for ds, out in pair if k % 2 == 0 else pair[::-1]:
            out.append(rate(ds, indices))
    mo, mr = statistics.median(r_ours), statistics.median(r_ref)
    print(f"dataset {images}: {len(ours)} images, imgsz {a.imgsz}, mosaic 1.0, workers 0, "
          f"{a.rounds} rounds x {a.items} items")
    print(f"ours      : {mo:7.1f} images/s (rounds: {', '.join(f'{x:.0f}' for x in r_ours)})")
    print(f"reference : {mr:7.1f} images/s (rounds: {', '.join(f'{x:.0f}' for x in r_ref)})")
    print(f"ratio ours/reference: {mo / mr:.2f} (target >= 1.0)")
    return dict(ours=mo, reference=mr, ratio=mo / mr)


if __name__ == "__main__":
    main()
