"""Core speed: ours / reference YOLOv5 v7.0, measured in one run on the same inputs.

1. a full training step (forward, ComputeLoss, backward, SGD step): yolov5n, batch 8, 320 px;
2. eval forward + NMS: yolov5n, batch 1, 640 px;
3. ComputeLoss alone with TFL on / off, median of paired ratios: at YOLOv5's default training batch 16 x 640 px
   (target <= 1.05) and at batch 8 x 320 px.

Timings alternate ours / reference repetition by repetition so machine noise hits both alike; the median of the
repetitions is reported. Two intra-op threads by default (``--threads``).

    python benchmarks/bench_core.py [--reps 10] [--threads 2]
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
from utils.hyp import load_hyp  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.nms import non_max_suppression  # noqa: E402


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


def train_step_fn(model, loss_fn, imgs, targets):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        loss, _ = loss_fn(model(imgs), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    o = load_oracle()
    hyp = load_hyp("hyp.scratch-low.yaml")
    ours = DetectionModel("yolov5n.yaml", nc=80)
    ref = o.yolo.Model(str(o.root / "models/yolov5n.yaml"), nc=80)
    ref.load_state_dict(ours.state_dict())
    ref.hyp = {k: v for k, v in hyp.to_dict().items() if not k.startswith("tfl") and k != "box_loss"}

    # 1. training step; ours in channels-last memory format, as train.py and the inference backend run it
    imgs, targets = torch.rand(8, 3, 320, 320), make_targets(8)
    ours.to(memory_format=torch.channels_last)
    imgs_cl = imgs.contiguous(memory_format=torch.channels_last)
    ours.train(), ref.train()
    t_ours, t_ref = alternate(train_step_fn(ours, ComputeLoss(ours, hyp), imgs_cl, targets),
                              train_step_fn(ref, o.loss.ComputeLoss(ref), imgs, targets), args.reps)
    print(f"train step  yolov5n bs8 320px : ours {t_ours * 1e3:8.1f} ms   ref {t_ref * 1e3:8.1f} ms   "
          f"ratio {t_ours / t_ref:.3f}")

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

    # 3. ComputeLoss with TFL on / off (same predictions), forward only as in bench 1's loss call. Single calls
    # alternate on/off, so drifts of this shared machine cancel in each pair's ratio. The target is judged at
    # YOLOv5's default training shape (batch 16, 640 px); the small case shows the fixed per-call cost of TFL's
    # ~20 extra small tensor ops, which weighs more when the loss itself is cheap.
    off, on = ComputeLoss(ours, hyp), ComputeLoss(ours, load_hyp("hyp.tfl.yaml"))
    for bs, imgsz, target in ((16, 640, " (target <= 1.05)"), (8, 320, "")):
        g = torch.Generator().manual_seed(1)
        preds = [torch.randn(bs, 3, imgsz // int(s), imgsz // int(s), 85, generator=g) for s in ours.stride]
        t = make_targets(bs)
        l_on, l_off, ratio = paired_ratio(partial(on, preds, t), partial(off, preds, t), 20 * args.reps)
        print(f"ComputeLoss TFL on / off bs{bs} {imgsz}px: on {l_on * 1e3:6.2f} ms   off {l_off * 1e3:6.2f} ms   "
              f"ratio {ratio:.3f}{target} (median of {20 * args.reps} paired calls)")


if __name__ == "__main__":
    main()
