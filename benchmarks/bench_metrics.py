"""Time our validation metrics against pycocotools' COCOeval on the same synthetic detections.

Ours: per-image ``match_predictions`` (10 IoU thresholds) + ``ap_per_class`` + per size-bucket matching and
metrics (``SizeBucketStats``, 'tiny' buckets). pycocotools: ``loadRes`` + ``evaluate`` + ``accumulate`` +
``summarize`` (12 stats including 3 area ranges). Boxes in original-image pixels of 640x640 images.

    python benchmarks/bench_metrics.py [--images 5000] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.eval.coco_eval import coco_evaluate, detections_to_coco_json  # noqa: E402
from utils.eval.metrics import ap_per_class, match_predictions, mean_results, pr_curves  # noqa: E402
from utils.eval.size_metrics import SizeBucketStats, format_size_table  # noqa: E402


def synthetic(n_images: int, nc: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: labels (M, 5) [cls, xyxy] and detections (N, 6) [xyxy, conf, cls] sorted by conf, pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_images):
        m = int(rng.integers(1, 20))
        xy = rng.uniform(0, 600, (m, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(160), (m, 2)))  # many tiny objects, some big
        lab = np.concatenate([rng.integers(0, nc, (m, 1)), xy, xy + wh], 1)
        k = int(rng.integers(0, 2 * m))
        src = rng.integers(0, m, k)
        det = lab[src, 1:] + rng.normal(0, 1, (k, 4)) * np.tile(wh[src], 2) * rng.uniform(0.01, 0.3, (k, 1))
        fp_xy = rng.uniform(0, 600, (m, 2))
        det = np.concatenate([det, np.concatenate([fp_xy, fp_xy + rng.uniform(4, 60, (m, 2))], 1)])
        det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 1)
        cls = np.concatenate([np.where(rng.random(k) < 0.9, lab[src, 0], rng.integers(0, nc, k)),
                              rng.integers(0, nc, m)])
        conf = rng.random(len(det))
        d = np.concatenate([det, conf[:, None], cls[:, None]], 1)[np.argsort(-conf)]
        out.append((torch.tensor(d, dtype=torch.float32), torch.tensor(lab, dtype=torch.float32)))
    return out


def ours(images: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict, str]:
    iouv = torch.linspace(0.5, 0.95, 10)
    sizes = SizeBucketStats()
    stats = []
    for det, lab in images:
        stats.append((match_predictions(det, lab, iouv), det[:, 4], det[:, 5], lab[:, 0]))
        sizes.update(det, lab)
    tp, conf, pcls, tcls = (torch.cat(x, 0).numpy() for x in zip(*stats))
    curves = pr_curves(tp, conf, pcls, tcls)
    _, _, p, r, _, ap, _ = ap_per_class(tp, conf, pcls, tcls)
    mp, mr, map50, map_ = mean_results(p, r, ap)
    return {"P": mp, "R": mr, "mAP50": map50, "mAP50-95": map_}, format_size_table(sizes.compute(curves.best_conf))


def to_coco(images: list[tuple[torch.Tensor, torch.Tensor]], nc: int) -> tuple[dict, list]:
    anns, dets = [], []
    for i, (det, lab) in enumerate(images):
        for c, x1, y1, x2, y2 in lab.tolist():
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        dets += detections_to_coco_json(det, i)
    anno = {"images": [{"id": i, "width": 640, "height": 640} for i in range(len(images))], "annotations": anns,
            "categories": [{"id": c} for c in range(nc)]}
    return anno, dets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--nc", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    images = synthetic(args.images, args.nc, args.seed)
    n_det, n_gt = sum(len(d) for d, _ in images), sum(len(g) for _, g in images)
    print(f"{args.images} images, {n_gt} ground truths, {n_det} detections, {args.nc} classes")

    t0 = time.perf_counter()
    res, table = ours(images)
    t_ours = time.perf_counter() - t0
    anno, dets = to_coco(images, args.nc)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_evaluate(anno, dets)
    t_coco = time.perf_counter() - t0

    print("ours:", {k: round(v, 4) for k, v in res.items()})
    print(table)
    print("pycocotools:", {k: round(coco[k], 4) for k in ("AP", "AP50", "AP_S", "AP_M", "AP_L")})
    print(f"time ours (match + ap_per_class + size buckets): {t_ours:.2f} s")
    print(f"time pycocotools COCOeval (loadRes + evaluate + accumulate + summarize): {t_coco:.2f} s")
    print(f"ratio pycocotools / ours: {t_coco / t_ours:.1f}x")


if __name__ == "__main__":
    main()
