"""``--compile`` speed: ours eager and compiled / reference YOLOv5 v7.0, measured in one process on the same inputs.

1. eval forward + NMS: yolov5n (Conv+BN fused on both sides, as detect.py and val.py run it), batch 1, ``--eval-size``
   px (640); ours eager and ours compiled (``utils.compiler``, as ``detect.py --compile``) against the reference;
2. a training step (forward, ComputeLoss, backward, SGD step): yolov5n, batch 8, ``--train-size`` px (320), fp32; ours
   with the forward compiled and the loss eager (as ``train.py --compile``) against the reference (``--skip-train``:
   leave it out; its first compile takes the longest);
3. end to end (``--e2e``): images/s of ``val.run`` on the embedded synthetic data (``--e2e-images`` val images, yolov5n,
   ``--eval-size`` px), eager and compiled, the compile time included and excluded.

Every figure is labelled with the CPU (``lscpu`` model name; AVX2 / AVX-512 / BF16 / VNNI / AMX), the threads and the
load average. The compile time of each compiled graph is printed: run the script twice to see the inductor cache
(utils.compiler.compile_cache_dir) save it. bf16 (``--amp``) and int8 (export.py) rows appear only on a CPU that
runs them natively (AVX512-BF16/AMX, VNNI): elsewhere they are emulated and slower, and are not timed.
Timings alternate ours / reference in pairs so machine noise hits both alike; medians are reported.

    python benchmarks/bench_compile.py [--reps 10] [--threads 1] [--skip-train] [--e2e] [--profile]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_core import build_pair, make_targets, paired_ratio, train_step_fn, yolo_gains  # noqa: E402
from utils.compiler import compile_cache_dir, compiled_forward  # noqa: E402
from utils.loss.compute_loss import ComputeLoss  # noqa: E402
from utils.ops.nms import non_max_suppression  # noqa: E402
from utils.train.precision import BF16, cpu_bf16_supported  # noqa: E402

FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "BF16", "avx512_vnni": "VNNI", "avx_vnni": "VNNI",
            "amx_tile": "AMX"}


def cpu_label() -> str:
    """``lscpu``'s model name and which of AVX2 / AVX-512 / BF16 / VNNI / AMX its flags hold."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    have = sorted({v for k, v in FEATURES.items() if k in flags}, key=list(FEATURES.values()).index)
    return f"{fields.get('Model name', '?').strip()} ({' '.join(have) or 'no AVX2'})"


def eval_section(o, ours, ref, size: int, reps: int, profile: bool = False) -> None:
    ours, ref = ours.fuse().eval(), ref.fuse().eval()
    ours.to(memory_format=torch.channels_last)
    im = torch.rand(1, 3, size, size)
    im_cl = im.contiguous(memory_format=torch.channels_last)
    fwd = compiled_forward(ours, strides=ours.stride.int().tolist(), freeze=True)  # as detect.py --compile

    def run(f, nms, x):
        def go():
            with torch.no_grad():
                nms(f(x)[0], 0.001, 0.6, multi_label=True)
        return go

    t = time.perf_counter()
    with torch.no_grad():
        out, ref_out = fwd(im_cl)[0], ours(im_cl)[0]
    print(f"eval compile: {time.perf_counter() - t:.1f} s wall ({fwd.stats.graphs} graph, {fwd.stats.seconds:.1f} s); "
          f"max |compiled - eager| / max |eager| = {float((out - ref_out).abs().max() / ref_out.abs().max()):.1e}")
    ref_fn = run(ref, o.general.non_max_suppression, im)
    e, r, ratio = paired_ratio(run(ours, non_max_suppression, im_cl), ref_fn, reps)
    print(f"eval + NMS  yolov5n bs1 {size}px eager    : ours {e * 1e3:8.1f} ms   ref {r * 1e3:8.1f} ms   "
          f"ratio {ratio:.3f}")
    c, r, ratio = paired_ratio(run(fwd, non_max_suppression, im_cl), ref_fn, reps)
    print(f"eval + NMS  yolov5n bs1 {size}px compiled : ours {c * 1e3:8.1f} ms   ref {r * 1e3:8.1f} ms   "
          f"ratio {ratio:.3f} (target <= 0.55)")
    if profile:
        profile_shares(run(fwd, non_max_suppression, im_cl), "eval + NMS compiled")


def profile_shares(fn, label: str, steps: int = 3) -> None:
    """Where the time of ``fn`` goes (torch.profiler, ``steps`` calls after one warm-up): the share of convolutions
    (forward and backward, oneDNN or ATen), of inductor's generated kernels, and the top operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in rows) or 1.0
    conv = sum(t for k, t in rows if "conv" in k.lower())
    gen = sum(t for k, t in rows if k.startswith(("cpp_fused", "## Call CompiledFxGraph", "CompiledFunction")))
    print(f"profile {label}: convolutions {100 * conv / total:.0f} % of the self time, inductor's generated code "
          f"{100 * gen / total:.0f} %; top operators:")
    for k, t in sorted(rows, key=lambda r: -r[1])[:8]:
        print(f"    {100 * t / total:5.1f} %  {k[:90]}")


def train_section(o, ours, ref, hyp, size: int, reps: int, profile: bool = False) -> None:
    imgs, targets = torch.rand(8, 3, size, size), make_targets(8)
    ours.to(memory_format=torch.channels_last).train(), ref.train()
    imgs_cl = imgs.contiguous(memory_format=torch.channels_last)
    loss = ComputeLoss(ours, hyp, gains=yolo_gains(hyp))
    fwd = compiled_forward(ours)
    ref_step = train_step_fn(ref, o.loss.ComputeLoss(ref), imgs, targets)
    compiled_step = train_step_fn(fwd, loss, imgs_cl, targets)
    t = time.perf_counter()
    compiled_step()
    print(f"train compile: {time.perf_counter() - t:.1f} s wall ({fwd.stats.graphs} graph(s) forward+backward)")
    e, r, ratio = paired_ratio(train_step_fn(ours, loss, imgs_cl, targets), ref_step, reps)
    print(f"train step  yolov5n bs8 {size}px eager    : ours {e * 1e3:8.1f} ms   ref {r * 1e3:8.1f} ms   "
          f"ratio {ratio:.3f}")
    c, r, ratio = paired_ratio(compiled_step, ref_step, reps)
    print(f"train step  yolov5n bs8 {size}px compiled : ours {c * 1e3:8.1f} ms   ref {r * 1e3:8.1f} ms   "
          f"ratio {ratio:.3f} (target <= 0.70)")
    if profile:
        profile_shares(compiled_step, "train step compiled")
    if not cpu_bf16_supported():
        return
    # train.py --amp auto on this CPU: bf16 autocast forward, fp32 loss (the reference stays fp32: YOLOv5 has no
    # CPU AMP)
    bf16_eager = train_step_fn(ours, loss, imgs_cl, targets, BF16)
    bf16_compiled = train_step_fn(fwd, loss, imgs_cl, targets, BF16)
    t = time.perf_counter()
    bf16_compiled()
    print(f"train compile bf16: {time.perf_counter() - t:.1f} s wall")
    for label, step in (("bf16 eager   ", bf16_eager), ("bf16 compiled", bf16_compiled)):
        c, r, ratio = paired_ratio(step, ref_step, reps)
        print(f"train step  yolov5n bs8 {size}px {label}: ours {c * 1e3:8.1f} ms   ref {r * 1e3:8.1f} ms   "
              f"ratio {ratio:.3f}")


def e2e_section(size: int, n_images: int) -> None:
    """val.py end to end on synthetic data: images/s eager and compiled (compile included and excluded)."""
    import utils.compiler as compiler
    import val
    from data import synthetic
    from models.yolo import DetectionModel
    from utils.checkpoints import save_checkpoint

    compiler.MIN_IMAGES = 0  # measure even a small set
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        synthetic.generate(root / "ds", n_train=1, n_val=n_images, imgsz=size, seed=0)
        names = dict(enumerate(synthetic.NAMES))
        data = {"path": str(root / "ds"), "train": str(root / "ds/images/train"), "val": str(root / "ds/images/val"),
                "nc": len(names), "names": names}
        w = root / "w.pt"
        save_checkpoint(w, model=DetectionModel("yolov5n.yaml", nc=data["nc"]), epoch=0, best_fitness=None, hyp=None,
                        opt={"imgsz": size}, names=synthetic.NAMES)
        for mode in (None, "default"):
            t = time.perf_counter()
            r = val.run(data, str(w), batch_size=8, imgsz=size, project=root, plots=False, compile=mode, workers=0)
            wall = time.perf_counter() - t
            n, spent = r["n_images"], r.get("compile", {}).get("seconds", 0.0)
            print(f"val.py e2e {size}px {n} images {'compiled' if mode else 'eager   '}: {n / wall:7.1f} images/s "
                  f"(compile included)" + (f", {n / (wall - spent):7.1f} images/s (compile of {spent:.1f} s "
                                           "excluded)" if mode else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-size", type=int, default=640)
    p.add_argument("--train-size", type=int, default=320)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--e2e", action="store_true")
    p.add_argument("--profile", action="store_true", help="profile the compiled eval and train step (time shares)")
    p.add_argument("--e2e-images", type=int, default=64)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"CPU {cpu_label()}; {a.threads} thread(s); load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}"
          f"; inductor cache {compile_cache_dir()}")
    if not cpu_bf16_supported():
        print("bf16: not timed (no AVX512-BF16/AMX on this CPU: emulated); int8: see benchmarks/bench_inference.py "
              "(pays only with VNNI)")
    if not a.skip_eval:
        o, hyp, ours, ref = build_pair()
        eval_section(o, ours, ref, a.eval_size, a.reps, a.profile)
    if not a.skip_train:
        o, hyp, ours, ref = build_pair()
        train_section(o, ours, ref, hyp, a.train_size, a.reps, a.profile)
    if a.e2e:
        e2e_section(a.eval_size, a.e2e_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
