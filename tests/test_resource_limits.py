"""Resource limits (issue 9): a dataset of 10,000 label files and small images is scanned with a progress bar and
cached in bounded memory, and the cache is reused."""

from __future__ import annotations

import resource
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.dataset.dataloaders import LoadImagesAndLabels

N = 10_000
MAX_EXTRA_MB = 300


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """10k distinct 16x16 PNGs (10 px is the smallest accepted side) with 1-3 boxes each, 1% corrupt labels."""
    d = tmp_path_factory.mktemp("big")
    (d / "images").mkdir()
    (d / "labels").mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (N, 16, 16, 3), dtype=np.uint8)
    for i in range(N):
        ok, buf = cv2.imencode(".png", pixels[i])
        (d / "images" / f"{i:05d}.png").write_bytes(buf.tobytes())
        k = 1 + i % 3
        rows = [f"{j % 4} {0.2 + 0.3 * j:.3f} 0.5 0.1 0.2" for j in range(k)]
        if i % 100 == 7:
            rows.append("0 0.5 0.5 0.1")  # corrupt: 4 columns
        (d / "labels" / f"{i:05d}.txt").write_text("\n".join(rows) + "\n")
    return d


@pytest.mark.slow
def test_scan_10k_bounded_memory_progress_and_cache(big, capfd):
    capfd.readouterr()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: the process peak so far
    tracemalloc.start()
    t = time.perf_counter()
    ds = LoadImagesAndLabels(str(big / "images"), img_size=64, batch_size=16, augment=False, nc=4, workers=2)
    dt_scan = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    err = capfd.readouterr().err
    n_bad = N // 100
    assert ds.counts == dict(found=N, missing=0, empty=0, corrupt=n_bad, total=N)
    assert ds.n == N - n_bad and len(ds.labels) == ds.n
    assert sum(len(lb) for lb in ds.labels) == sum(1 + i % 3 for i in range(N) if i % 100 != 7)
    assert sum("expected 5 columns" in m for m in ds.messages) == n_bad
    assert peak / 2**20 < MAX_EXTRA_MB, f"scan peak {peak / 2**20:.0f} MB (Python allocations)"
    rss_extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**10
    assert rss_extra < MAX_EXTRA_MB, f"scan raised the process peak RSS by {rss_extra:.0f} MB (PIL/OpenCV included)"
    assert "Scanning" in err and f"/{N}" in err  # the tqdm progress bar
    cache = big / "labels.cache"
    assert cache.is_file() and cache.stat().st_size < 20 * 2**20

    tracemalloc.start()
    t = time.perf_counter()
    ds2 = LoadImagesAndLabels(str(big / "images"), img_size=64, batch_size=16, augment=False, nc=4, workers=2)
    dt_cache = time.perf_counter() - t
    _, peak2 = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "Scanning" not in capfd.readouterr().err  # read back from the cache, no rescan
    assert ds2.im_files == ds.im_files and ds2.counts == ds.counts
    assert all(np.array_equal(a, b) for a, b in zip(ds2.labels, ds.labels))
    assert peak2 / 2**20 < MAX_EXTRA_MB and dt_cache < dt_scan
    img, labels, path, _ = ds2[ds2.n - 1]
    assert img.shape == (3, 64, 64) and labels.shape[1] == 6
    print(f"10k scan {dt_scan:.1f} s peak {peak / 2**20:.1f} MB (RSS +{rss_extra:.0f} MB); "
          f"cached load {dt_cache:.1f} s peak {peak2 / 2**20:.1f} MB; cache {cache.stat().st_size / 2**20:.2f} MB")
