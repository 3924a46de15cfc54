"""ComputeLoss speed alone: bench_core.py's section 3 without the model benchmarks before it.

Ours (TFL off) / the reference YOLOv5 v7.0 ComputeLoss (target <= 1.0) and ours TFL on / off (target <= 1.05 at
batch 16 x 640 px), forward only on yolov5n's heads (80 classes), at batch 16 x 640 px and batch 8 x 320 px,
median of paired calls (``bench_core.paired_ratio``). One intra-op thread by default: the loss is dominated by
small tensor ops, and on a shared machine a second thread mostly adds noise (bench_core.py runs it with 2).

    python benchmarks/bench_loss.py [--reps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_core import build_pair, loss_section  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=200, help="paired calls per comparison")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    o, hyp, ours, ref = build_pair()
    loss_section(ours, o.loss.ComputeLoss(ref), hyp, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
