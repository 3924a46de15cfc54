"""The tiny-object study (issue 15): which methods find more tiny objects, judged against loss-scale controls.

Two phases, both through ``experiments/compare.py`` with the same seeds, epochs and data, each run evaluated on the
data YAML's **test** split (``--eval-task test``); nothing is chosen on the test split:

- ``--phase methods``: the baseline; the controls that separate causes — the baseline with its box/obj/cls gains
  multiplied by TFL's average weight on this data (``m``, measured here through the training dataloader), the
  baseline with box gain x m and objectness positive weight ``obj_pw = m``, a second value of each (x ``--sweep``),
  and TFL with k = 0 (every target weighs 2) — then TFL (sum), TFL (mean), min-positive assignment, NWD
  assignment, small-object copy-paste, P2 and multi-scale.
- ``--phase recipe``: adds ``hyp/hyp.tiny.yaml`` (the combination chosen from the methods phase's **val** split
  numbers, each run's own final validation) to the same output folder, so its report holds every variant.

Usage:
    python experiments/tiny_study.py --phase methods --out runs/tiny-study --seeds 5 --epochs 30
    python experiments/tiny_study.py --phase recipe --out runs/tiny-study --seeds 5 --epochs 30
    python experiments/tiny_study.py --print-m      # only measure TFL's average weight on the data

Arguments after ``--`` go to train.py (e.g. ``-- --weights pretrained.pt --noval``).

The study of models that have learned (docs/tiny-study.md) has five subcommands; its runs, result files, costs and
report live in experiments/study_runner.py, experiments/study_costs.py and experiments/study_report.py:

    python experiments/tiny_study.py prepare --start runs/tiny-study-v2/start.pt   # the common starting checkpoint
    python experiments/tiny_study.py run --out experiments/results/tiny-study-v2 --seeds 5 \
        --start runs/tiny-study-v2/start.pt                                         # resumable; skips finished runs
    python experiments/tiny_study.py costs experiments/results/tiny-study-v2 --runs runs  # re-time, quiet machine
    python experiments/tiny_study.py report experiments/results/tiny-study-v2 \
        --md report.md --plot docs/tiny_study_pareto.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def mean_tfl_weight(data: str, imgsz: int, batches: int = 20, seed: int = 0) -> float:
    """TFL's average weight (k 1.6, S 32², sum normalisation) over the ground truths of ``batches`` augmented
    training batches of ``data`` at ``imgsz``: the factor by which TFL scales the positive targets' loss on
    average, i.e. the loss scale that the controls give the baseline without any size dependence."""
    import torch

    from data.prepare import check_dataset
    from utils.config.hyp import load_hyp
    from utils.dataset.dataloaders import create_dataloader
    from utils.loss.tfl import tfl_weights

    hyp = load_hyp("hyp.tfl.yaml")
    d = check_dataset(data)
    loader, _ = create_dataloader(d["train"], imgsz, 16, 32, hyp=hyp, augment=True, workers=0, shuffle=True,
                                  seed=seed, nc=d["nc"])
    ws = []
    for i, (_, targets, _, _) in enumerate(loader):
        if i == batches:
            break
        ws.append(tfl_weights(targets[:, 4:6] * imgsz, hyp.tfl_k, hyp.tfl_s, hyp.tfl_piecewise))
    return float(torch.cat(ws).mean())


def variants(phase: str, m: float, sweep: float) -> list[str]:
    """compare.py variant specs of a phase; ``m``: TFL's mean weight; ``sweep``: the controls' second factor."""
    def gains(f: float) -> str:
        return f"baseline[box={0.05 * f:.4g},obj={1.0 * f:.4g},cls={0.5 * f:.4g}]"

    def pos(f: float) -> str:
        return f"baseline[box={0.05 * f:.4g},obj_pw={f:.4g}]"

    methods = ["baseline", gains(m), gains(sweep), pos(m), pos(sweep), "tfl[k=0]", "tfl", "tfl[norm=mean]",
               "min-pos", "nwd-assign", "paste", "p2", "multiscale"]
    return methods + (["tiny"] if phase == "recipe" else [])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("prepare", "run", "curve", "costs", "report"):
        from experiments import study_cli

        return study_cli.main(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=["methods", "recipe"], default="methods")
    p.add_argument("--data", default="data/synthetic-aerial.yaml")
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seed-start", type=int, default=0, help="first seed (run two processes on disjoint seeds)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--m", type=float, default=0.0, help="TFL's mean weight (0: measure it)")
    p.add_argument("--sweep", type=float, default=0.0, help="the controls' second factor (0: 2 m - 1)")
    p.add_argument("--out", default=str(ROOT / "runs/tiny-study"))
    p.add_argument("--print-m", action="store_true", help="print TFL's mean weight on --data and exit")
    p.add_argument("--only", nargs="+", default=None, help="run only these variant specs (after resolving m)")
    args = p.parse_args(argv[:cut])
    m = args.m or mean_tfl_weight(args.data, args.imgsz)
    print(f"tiny_study: TFL mean weight on {args.data} at {args.imgsz} px: m = {m:.3f}", flush=True)
    if args.print_m:
        return 0
    sweep = args.sweep or 2 * m - 1  # twice the extra weight TFL gives on average
    specs = args.only or variants(args.phase, round(m, 2), round(sweep, 2))
    from experiments import compare

    return compare.main(["--data", args.data, "--imgsz", str(args.imgsz), "--epochs", str(args.epochs),
                         "--batch-size", str(args.batch_size), "--seeds", str(args.seeds),
                         "--seed-start", str(args.seed_start), "--workers", str(args.workers),
                         "--eval-task", "test", "--out", args.out, "--variants", *specs, "--", *argv[cut + 1:]])


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
