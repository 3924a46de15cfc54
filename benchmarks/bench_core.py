"""Core speed: ours / reference YOLOv5 v7.0, measured in one run on the same inputs.

1. a full training step (forward, ComputeLoss, backward, SGD step): yolov5n, batch 8, 320 px, in fp32; then, when
   ``train.py --amp auto`` would choose bf16 on this CPU (AVX512-BF16/AMX, utils/train/precision.py), ours in bf16 vs
   the reference in fp32 (``--force-bf16``: time bf16 anyway, for information: emulated, hence slow, without them); 2.
   eval forward + NMS: yolov5n, batch 1, 640 px; 3. ComputeLoss alone (``loss_section``; also
   ``benchmarks/bench_loss.py``), median of paired ratios, at YOLOv5's default training batch 16 x 640 px and at batch 8
   x 320 px: ours (TFL off) / reference (target <= 1.0) and ours TFL on / off (target <= 1.05 at 16 x 640 px).

Timings alternate ours / reference repetition by repetition so machine noise hits both alike; the median of the
repetitions is reported. Two intra-op threads by default (``--threads``).

    python benchmarks/bench_core.py [--reps 10] [--threads 2] [--force-bf16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.yolo import DetectionModel  # noqa: E402
from tests.oracle import load_oracle  # noqa: E402
from utils.config.hyp import load_hyp  # noqa: E402
from utils.loss.compute_loss import ComputeLoss  # noqa: E402
from utils.ops.nms import non_max_suppression  # noqa: E402
from utils.train.precision import BF16, FP32, Precision, choose_precision, cpu_bf16_supported  # noqa: E402


def yolo_gains(hyp) -> tuple[float, float, float]:
    """The (box, obj, cls) gains YOLOv5's ComputeLoss reads from ``model.hyp``: the hyp's values as they are."""
    return hyp.box, hyp.obj, hyp.cls


def make_targets(bs: int, per_image: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = bs * per_image
    wh = torch.exp(torch.empty(n, 2).uniform_(-4.5, -0.8, generator=g))  # ~1% to ~45% of the image side
    xy = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
    img = torch.arange(bs).repeat_interleave(per_image).float()
    cls = torch.randint(0, 80, (n,), generator=g).float()
    return torch.cat((img[:, None], cls[:, None], xy, wh), 1)


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def alternate(fa, fb, reps: int, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of fa and fb, interleaved."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(reps):
        ta += timed(fa, 1)
        tb += timed(fb, 1)
    return statistics.median(ta), statistics.median(tb)


def paired_ratio(fa, fb, reps: int, warmup: int = 2) -> tuple[float, float, float]:
    """(median seconds of fa, of fb, median of the per-pair ratios fa / fb).

    Each repetition times fa and fb back to back, in A-B then B-A order on alternate repetitions, so slow drifts
    of the machine (clock, other load) hit both sides of a pair alike and cancel in its ratio.
    """
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for r in range(reps):
        if r % 2:
            b, a = timed(fb, 1)[0], timed(fa, 1)[0]
        else:
            a, b = timed(fa, 1)[0], timed(fb, 1)[0]
        ta.append(a)
        tb.append(b)
    return statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb))


def train_step_fn(model, loss_fn, imgs, targets, precision: Precision = FP32):
    """One training step as train.py runs it: forward under ``precision``'s autocast, the loss in fp32. ``model``
    may be a compiled forward (utils.compiler.CompiledForward): its ``module`` holds the parameters."""
    opt = torch.optim.SGD(getattr(model, "module", model).parameters(), lr=1e-4, momentum=0.9)

    def step():
        with precision.autocast("cpu"):
            preds = model(imgs)
        loss, _ = loss_fn([p.float() for p in preds], targets)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def loss_section(model: torch.nn.Module, ref_loss, hyp, reps: int) -> None:
    """Print ComputeLoss's speed: ours with TFL off / ``ref_loss`` (the reference's ComputeLoss on the same head;
    target <= 1.0 at both shapes) and ours TFL on / off (target <= 1.05 at batch 16, 640 px; at batch 8, 320 px
    TFL's ~25 extra small tensor ops show as a larger share), each the median of ``reps`` paired calls.

    Forward only on the same predictions (yolov5n's three heads, 80 classes, no autograd graph) and targets
    (``make_targets``), at YOLOv5's default training shape (batch 16, 640 px) and at batch 8, 320 px, where the
    loss's fixed per-call cost (its small tensor ops) weighs more. Single calls alternate in pairs, so drifts of a
    shared machine cancel in each pair's ratio.
    """
    tfl = load_hyp("hyp.tfl.yaml")
    off, on = ComputeLoss(model, hyp, gains=yolo_gains(hyp)), ComputeLoss(model, tfl, gains=yolo_gains(tfl))
    det = model.model[-1]
    for bs, imgsz, tfl_target in ((16, 640, "target <= 1.05"), (8, 320, "TFL's fixed per-call cost")):
        g = torch.Generator().manual_seed(1)
        preds = [torch.randn(bs, det.na, imgsz // int(s), imgsz // int(s), det.no, generator=g) for s in det.stride]
        t = make_targets(bs)
        l_off, l_ref, ratio = paired_ratio(partial(off, preds, t), partial(ref_loss, preds, t), reps)
        print(f"ComputeLoss ours / ref   bs{bs} {imgsz}px: ours {l_off * 1e3:6.2f} ms   ref {l_ref * 1e3:6.2f} ms   "
              f"ratio {ratio:.3f} (target <= 1.0, median of {reps} paired calls)")
        l_on, l_off, ratio = paired_ratio(partial(on, preds, t), partial(off, preds, t), reps)
        print(f"ComputeLoss TFL on / off bs{bs} {imgsz}px: on   {l_on * 1e3:6.2f} ms   off {l_off * 1e3:6.2f} ms   "
              f"ratio {ratio:.3f} ({tfl_target}, median of {reps} paired calls)")


def build_pair(seed: int = 0):
    """(oracle, hyp, our yolov5n, the reference's yolov5n with our weights and the hyp without our keys)."""
    torch.manual_seed(seed)
    o = load_oracle()
    hyp = load_hyp("hyp.scratch-low.yaml")
    ours = DetectionModel("yolov5n.yaml", nc=80)
    ref = o.yolo.Model(str(o.root / "models/yolov5n.yaml"), nc=80)
    ref.load_state_dict(ours.state_dict())  # the same weights, anchors and strides
    ref.hyp = {k: v for k, v in hyp.to_dict().items() if not k.startswith("tfl") and k != "box_loss"}
    return o, hyp, ours, ref


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force-bf16", action="store_true", help="also time our training step in bf16 when --amp auto "
                   "would not choose it (no AVX512-BF16/AMX: emulated, several times slower)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    o, hyp, ours, ref = build_pair()

    # 1. training step; ours in channels-last memory format, as train.py and the inference backend run it
    imgs, targets = torch.rand(8, 3, 320, 320), make_targets(8)
    ours.to(memory_format=torch.channels_last)
    imgs_cl = imgs.contiguous(memory_format=torch.channels_last)
    ours.train(), ref.train()
    ours_loss = ComputeLoss(ours, hyp, gains=yolo_gains(hyp))
    t_ours, t_ref = alternate(train_step_fn(ours, ours_loss, imgs_cl, targets),
                              train_step_fn(ref, o.loss.ComputeLoss(ref), imgs, targets), args.reps)
    print(f"train step  yolov5n bs8 320px : ours {t_ours * 1e3:8.1f} ms   ref {t_ref * 1e3:8.1f} ms   "
          f"ratio {t_ours / t_ref:.3f}")
    auto = choose_precision("cpu", "auto", cpu_bf16_supported())
    print(f"train.py --amp auto on this CPU ({torch.backends.cpu.get_cpu_capability()}): {auto.label}"
          + (" (the fp32 row above)" if auto == FP32 else ""))
    precisions = [] if auto == FP32 else [auto]
    if args.force_bf16 and BF16 not in precisions:
        precisions.append(BF16)
    for prec in precisions:
        t_p, t_r, ratio = paired_ratio(train_step_fn(ours, ours_loss, imgs_cl, targets, prec),
                                       train_step_fn(ref, o.loss.ComputeLoss(ref), imgs, targets), args.reps, 1)
        print(f"train step  {prec.label:>4} vs ref fp32      : ours {t_p * 1e3:8.1f} ms   ref {t_r * 1e3:8.1f} ms   "
              f"ratio {ratio:.3f} (median of {args.reps} paired steps)")

    # 2. eval forward + NMS at 640
    ref.load_state_dict(ours.state_dict())
    ours.eval(), ref.eval()
    im = torch.rand(1, 3, 640, 640)
    im_cl = im.contiguous(memory_format=torch.channels_last)

    def eval_ours():
        with torch.no_grad():
            non_max_suppression(ours(im_cl)[0], 0.001, 0.6, multi_label=True)

    def eval_ref():
        with torch.no_grad():
            o.general.non_max_suppression(ref(im)[0], 0.001, 0.6, multi_label=True)

    e_ours, e_ref = alternate(eval_ours, eval_ref, args.reps)
    print(f"eval + NMS  yolov5n bs1 640px : ours {e_ours * 1e3:8.1f} ms   ref {e_ref * 1e3:8.1f} ms   "
          f"ratio {e_ours / e_ref:.3f}")

    # 3. ComputeLoss alone: ours (TFL off) / the reference, and ours TFL on / off
    loss_section(ours, o.loss.ComputeLoss(ref), hyp, 20 * args.reps)

if __name__ == "__main__":
    main()
