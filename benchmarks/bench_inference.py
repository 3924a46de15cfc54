"""Inference speed, one run, batch 1 at 640 px, 2 threads (``--threads``):

1. eval latency of ours (PyTorch, Conv+BN fused) / reference YOLOv5 v7.0 DetectionModel (fused, same weights);
2. ours through ONNX Runtime (export.py's file, ``intra_op_num_threads`` = threads) / the same reference;
3. our achieved GFLOP/s (model GFLOPs / our PyTorch latency) as a fraction of this machine's fp32 matmul GFLOP/s,
   measured in the same run (a 2048 x 2048 ``torch.matmul``: 2 * 2048**3 FLOPs).

The three models run in turn, repetition by repetition (order rotated), so machine noise hits all alike; medians
are reported, minima in brackets.
Model forward only (``pred``): no pre-processing, no NMS.

    python benchmarks/bench_inference.py [--cfg yolov5s.yaml] [--reps 20] [--threads 2] [--imgsz 640]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import export  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402
from tests.oracle import load_oracle  # noqa: E402
from utils.checkpoints import save_checkpoint  # noqa: E402
from utils.inference import load_backend  # noqa: E402
from utils.torch_utils import count_gflops  # noqa: E402


def median_times(fns: list, reps: int, warmup: int = 3, gap: float = 0.05) -> tuple[list[float], list[float]]:
    """(median, min) seconds per call of each function. The functions are interleaved repetition by repetition,
    their order rotated each repetition so that none always runs right after another. Each timed call is the
    second of two back-to-back calls that start after ``gap`` idle seconds: no thread pool still spinning from
    another engine's call (ONNX Runtime's or PyTorch's OpenMP workers) competes for the cores, and each engine is
    timed warm, as in a stream of images."""
    for _ in range(warmup):
        for f in fns:
            f()
    times = [[] for _ in fns]
    for r in range(reps):
        for k in range(len(fns)):
            i = (k + r) % len(fns)
            time.sleep(gap)
            fns[i]()
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times], [min(t) for t in times]


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    """fp32 GFLOP/s of an n x n matmul (best of ``reps``: the machine's attainable peak for this kernel)."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="yolov5s.yaml")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--imgsz", type=int, default=640)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    o = load_oracle()

    model = DetectionModel(args.cfg, nc=80).eval()
    with tempfile.TemporaryDirectory() as d:
        pt = Path(d) / "bench.pt"
        save_checkpoint(pt, model=model, epoch=0, best_fitness=None, hyp=None, opt={}, names=None)
        ours = load_backend(pt, device="cpu", fuse=True)
        onnx_file = export.run(pt, args.imgsz, dynamic=False, opset=17)["file"]
        ox = load_backend(onnx_file, device="cpu", threads=args.threads)
    ref = o.yolo.Model(str(o.root / "models" / Path(args.cfg).name), nc=80)
    ref.load_state_dict(model.state_dict())
    ref = ref.fuse().eval()

    im = torch.rand(1, 3, args.imgsz, args.imgsz)
    with torch.no_grad():
        a, b, c = ours(im), ref(im)[0], ox(im)
    diff_ref = float((a - b).abs().max())
    diff_onnx = export.compare(a.numpy(), c.numpy())

    def run_ref():
        with torch.no_grad():
            ref(im)

    (t_ours, t_ref, t_onnx), (m_ours, m_ref, m_onnx) = median_times([lambda: ours(im), run_ref, lambda: ox(im)],
                                                                    args.reps)
    gflops = count_gflops(ours.model, args.imgsz)
    peak = matmul_gflops()
    achieved = gflops / t_ours
    name = Path(args.cfg).stem
    print(f"{name} bs1 {args.imgsz}px, {args.threads} threads, torch {torch.__version__}, fused, {args.reps} reps "
          f"(median); |ours - ref| max {diff_ref:.2e}, ONNX vs torch {diff_onnx:.2e}")
    print(f"PyTorch  ours {t_ours * 1e3:8.1f} ms   ref {t_ref * 1e3:8.1f} ms   ours/ref {t_ours / t_ref:.3f}   "
          f"(min: {m_ours * 1e3:.1f} / {m_ref * 1e3:.1f} = {m_ours / m_ref:.3f})")
    print(f"ONNX RT  ours {t_onnx * 1e3:8.1f} ms   ref {t_ref * 1e3:8.1f} ms   ours/ref {t_onnx / t_ref:.3f}   "
          f"(min: {m_onnx * 1e3:.1f} / {m_ref * 1e3:.1f} = {m_onnx / m_ref:.3f})")
    print(f"GFLOP/s  model {gflops:.1f} GFLOPs -> {achieved:.1f} GFLOP/s achieved; fp32 matmul 2048^2 {peak:.1f} "
          f"GFLOP/s; fraction {achieved / peak:.3f}")


if __name__ == "__main__":
    main()
