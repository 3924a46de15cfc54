"""Inference speed, one run, batch 1 at 640 px, 2 threads (``--threads``):

1. eval latency of ours (PyTorch, Conv+BN fused) / reference YOLOv5 v7.0 DetectionModel (fused, same weights);
2. ours through each export of export.py / the same reference: ONNX Runtime fp32, ONNX Runtime int8 (static QDQ
   quantisation calibrated on ``--calib`` images of ``--data``), TorchScript, OpenVINO (fp32 IR); and int8 / fp32
   within ONNX Runtime;
3. our achieved GFLOP/s (model GFLOPs / our PyTorch latency) as a fraction of this machine's fp32 matmul GFLOP/s,
   measured in the same run (a 2048 x 2048 ``torch.matmul``: 2 * 2048**3 FLOPs).

The engines run in turn, repetition by repetition (order rotated), so machine noise hits all alike; medians
are reported, minima in brackets. Model forward only (``pred``): no pre-processing, no NMS. The weights are random
(latency does not depend on them); ``--val-weights best.pt`` adds the accuracy side: val.py mAP of that trained
checkpoint in PyTorch, ONNX fp32 and ONNX int8 (exported at its training size, calibrated on ``--data``'s train
images) on ``--data``'s val split.

    python benchmarks/bench_inference.py [--cfg yolov5s.yaml] [--reps 20] [--threads 2] [--imgsz 640]
    python benchmarks/bench_inference.py --reps 0 --val-weights runs/train/exp/weights/best.pt   # accuracy only
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
from utils.infer.detector import load_backend  # noqa: E402
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


ENGINES = ("PyTorch", "ONNX RT fp32", "ONNX RT int8", "TorchScript", "OpenVINO")


def build_engines(model: DetectionModel, args, d: Path) -> dict:
    """{engine name: backend} for ``model`` saved in ``d``: ours in PyTorch and each export (fixed 1x3xSxS)."""
    pt = d / "bench.pt"
    save_checkpoint(pt, model=model, epoch=0, best_fitness=None, hyp=None, opt={}, names=None)
    out = export.run(pt, args.imgsz, dynamic=False, include=["onnx", "torchscript", "openvino"], int8=True,
                     data=args.data, int8_images=args.calib)
    files = out["files"]
    return {"PyTorch": load_backend(pt, device="cpu", fuse=True),
            "ONNX RT fp32": load_backend(files["onnx"], device="cpu", threads=args.threads),
            "ONNX RT int8": load_backend(files["onnx-int8"], device="cpu", threads=args.threads),
            "TorchScript": load_backend(files["torchscript"], device="cpu"),
            "OpenVINO": load_backend(files["openvino"], device="cpu", threads=args.threads)}


def accuracy(weights: str, data: str, d: Path) -> None:
    """val.py mAP of ``weights`` in PyTorch, ONNX fp32 and ONNX int8 on ``data``'s val split."""
    import val

    pt = d / "val.pt"
    pt.write_bytes(Path(weights).read_bytes())
    files = export.run(pt, None, dynamic=True, include=["onnx"], int8=True, data=data)["files"]
    for name, w in (("PyTorch fp32", pt), ("ONNX RT fp32", files["onnx"]), ("ONNX RT int8", files["onnx-int8"])):
        r = val.run(data, weights=str(w), workers=0, plots=False, project=d / "val", name=name.replace(" ", "_"))
        print(f"val {name:13s} mAP@.5 {r['metrics/mAP_0.5']:.4f}  mAP@.5:.95 {r['metrics/mAP_0.5:0.95']:.4f}  "
              f"P {r['metrics/precision']:.3f}  R {r['metrics/recall']:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="yolov5s.yaml")
    p.add_argument("--reps", type=int, default=20, help="timed repetitions (0: no timing)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--data", default=str(ROOT / "data/synthetic-tiny.yaml"), help="int8 calibration / val data")
    p.add_argument("--calib", type=int, default=32, help="int8 calibration images for the timing model")
    p.add_argument("--val-weights", default=None, help="trained checkpoint: also compare val mAP fp32 vs int8")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        if args.val_weights:
            accuracy(args.val_weights, args.data, Path(d))
        if args.reps > 0:
            timing(args, Path(d))


def timing(args, d: Path) -> None:
    o = load_oracle()
    model = DetectionModel(args.cfg, nc=80).eval()
    engines = build_engines(model, args, d)
    ref = o.yolo.Model(str(o.root / "models" / Path(args.cfg).name), nc=80)
    ref.load_state_dict(model.state_dict())
    ref = ref.fuse().eval()

    im = torch.rand(1, 3, args.imgsz, args.imgsz)
    with torch.no_grad():
        b = ref(im)[0]
        outs = {k: e(im) for k, e in engines.items()}
    a = outs["PyTorch"]

    def run_ref():
        with torch.no_grad():
            ref(im)

    fns = [run_ref] + [lambda e=e: e(im) for e in engines.values()]
    med, mins = median_times(fns, args.reps)
    t = dict(zip(("ref", *engines), med))
    m = dict(zip(("ref", *engines), mins))
    gflops = count_gflops(engines["PyTorch"].model, args.imgsz)
    peak = matmul_gflops()
    achieved = gflops / t["PyTorch"]
    name = Path(args.cfg).stem
    print(f"{name} bs1 {args.imgsz}px, {args.threads} threads, torch {torch.__version__}, fused, {args.reps} reps "
          f"(median); |ours - ref| max {float((a - b).abs().max()):.2e}; reference PyTorch fp32 {t['ref'] * 1e3:.1f} "
          f"ms (min {m['ref'] * 1e3:.1f})")
    for k in engines:
        diff = export.compare(a.numpy(), outs[k].numpy())
        print(f"{k:13s} {t[k] * 1e3:8.1f} ms   / ref {t[k] / t['ref']:.3f}   (min: {m[k] * 1e3:.1f} ms, "
              f"{m[k] / m['ref']:.3f})   vs ours PyTorch: max diff {diff:.2e}")
    print(f"int8 / fp32 ONNX Runtime {t['ONNX RT int8'] / t['ONNX RT fp32']:.3f} "
          f"(min {m['ONNX RT int8'] / m['ONNX RT fp32']:.3f})")
    print(f"GFLOP/s  model {gflops:.1f} GFLOPs -> {achieved:.1f} GFLOP/s achieved; fp32 matmul 2048^2 {peak:.1f} "
          f"GFLOP/s; fraction {achieved / peak:.3f}")


if __name__ == "__main__":
    main()
