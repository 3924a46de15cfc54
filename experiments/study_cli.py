"""The tiny-object study of models that have learned (docs/tiny-study.md): its protocol, its variants and the
``prepare`` / ``run`` / ``curve`` / ``costs`` / ``report`` subcommands of ``experiments/tiny_study.py``.

Protocol (chosen on the val split, see the docs): single-class aerial-like data (``data/synthetic-aerial-1c.yaml``,
600 / 200 / 400 train / val / test images of 160 px, ~91 % of the objects under 32² px), yolov5n, every run starting
from the same checkpoint (yolov5n trained from scratch on the **train split only**, two cycles of 30 epochs,
``prepare``) and trained ``EPOCHS`` more epochs at batch 16, ``--nbs 16``, validated every epoch (the learning
curve in each result). One run of the baseline takes ~10 min on one quiet CPU core.

Positive-weight controls: ``posw-x<f>`` (box gain and ``obj_pw`` x f, no TFL), one per factor of ``CONTROL_SWEEP``
at seed 0; the factor with the best **val** tiny AP50 at seed 0 (study_report.best_control) is the one trained for
the other seeds, and the one the report compares against.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from experiments import study_report
from experiments.study_costs import costs_table, run_costs
from experiments.study_runner import (
    Protocol,
    StudyError,
    StudyVariant,
    execute,
    git_commit,
    machine,
    plan,
    run_one,
    seed_precisions,
    seed_starts,
    sha256,
)
from utils.checkpoints import strip_optimizer
from utils.cli import ArgumentParser, check_args, run_main
from utils.train.precision import cpu_bf16_supported

ROOT = Path(__file__).resolve().parents[1]
DATA = "data/synthetic-aerial-1c.yaml"
IMGSZ = 160  # native image size (px)
EPOCHS = 10  # per study run, from the starting checkpoint (~10 min of the baseline on one core)
PRETRAIN_EPOCHS = 30  # the starting checkpoint's schedule (train split only): epochs per cycle
PRETRAIN_CYCLES = 2  # cycle k > 1 starts from cycle k - 1's last.pt with a fresh lr schedule (one cycle had not
# reached a plateau on val: its last quarter still gained 20 %)
BATCH, NBS = 16, 16  # nbs 16: an optimiser step per batch (4x YOLOv5's steps at nbs 64)
START = "experiments/results/tiny-study-v2/start/start.pt"  # made by prepare (git-ignored); SHA-256 recorded
START_P2 = "experiments/results/tiny-study-v2/start/start-p2.pt"  # the P2 model's own, made the same way
CONTROL_SWEEP = (1.5, 2.0, 3.0)  # positive-weight factors tried at seed 0 (the real data: 1.56)


def control(f: float) -> StudyVariant:
    """Box gain and objectness positive weight x ``f``, no TFL."""
    return StudyVariant(f"{study_report.CONTROL_PREFIX}{f:g}", overrides=(f"box={0.05 * f:.4g}", f"obj_pw={f:g}"),
                        doc=f"control: box gain x {f:g} and obj_pw {f:g}, no TFL")


VARIANTS: tuple[StudyVariant, ...] = (
    StudyVariant("baseline", doc="YOLOv5 v7.0 scratch-low"),
    *(control(f) for f in CONTROL_SWEEP),
    StudyVariant("tfl", hyp="hyp.tfl.yaml", cost=1.05, doc="Tiny Focal Loss (k 1.6, S 32², sum)"),
    StudyVariant("paste", overrides=("small_paste=0.5",), cost=1.05, doc="small-object copy-paste (p 0.5, 2 copies)"),
    StudyVariant("p2", cfg="yolov5n-p2.yaml", cost=1.4, doc="P2 head (stride 4); backbone from the start checkpoint"),
    # P2 trained as long as the others: its own starting checkpoint, made like the protocol's (prepare --cfg
    # yolov5n-p2.yaml --start START_P2), so that its stride-4 head has had the same 70 epochs
    StudyVariant("p2-own-start", cfg="yolov5n-p2.yaml", cost=1.45, start=START_P2,
                 doc="P2 head (stride 4) from its own starting checkpoint (same schedule as the protocol's)"),
    StudyVariant("scale-1.6x", scale=1.6, cost=2.6, doc="input x 1.6: 256 px (x 1.5 is no multiple of 32)"),
    StudyVariant("scale-2x", scale=2.0, cost=4.0, doc="input x 2: 320 px"),
    # the best combination, chosen on val at seed 0: the two single methods with the highest val tiny AP50 over
    # the baseline's (scale-2x 45.3, tfl 27.1; baseline 25.3); run last within each seed
    StudyVariant("scale-2x+tfl", hyp="hyp.tfl.yaml", scale=2.0, cost=4.2, doc="input x 2 with Tiny Focal Loss"),
)


def variants_for_seed(all_variants: list[StudyVariant], seed: int, out: Path) -> list[StudyVariant]:
    """Seed 0: every variant. Later seeds: one positive-weight control, the best on val at seed 0 (all of them
    while seed 0 has none finished, so that the pairing is never lost)."""
    is_ctrl = [v.name.startswith(study_report.CONTROL_PREFIX) for v in all_variants]
    if seed == 0 or sum(is_ctrl) <= 1:
        return list(all_variants)
    runs, _ = study_report.load_results(out) if out.is_dir() else ({}, {})
    best = study_report.best_control(runs)
    return [v for v, c in zip(all_variants, is_ctrl) if not c or best is None or v.name == best]


def protocol(args, start: Path | None) -> Protocol:
    return Protocol(DATA if args.data is None else args.data, args.epochs, args.imgsz, args.batch_size, args.nbs,
                    sha256(start) if start else "")


def seed_precision(out: Path, seed: int, native_bf16: bool) -> str | None:
    """The precision of ``seed``'s runs: the one its finished runs used (a seed is one precision, as it is one
    start), else bf16 on a CPU with native bf16 (train.py's own default there, ~1.8x faster) and fp32 elsewhere;
    None when the seed trained in bf16 and this CPU would only emulate it."""
    done = seed_precisions(out, seed)
    if len(done) > 1:
        raise StudyError(f"{out}: seed {seed} has runs in {' and '.join(sorted(done))}; a seed is one precision")
    want = done.pop() if done else ("bf16" if native_bf16 else "fp32")
    return None if want == "bf16" and not native_bf16 else want


def cmd_prepare(args) -> None:
    """Train the starting checkpoint on the train split in ``--cycles`` cycles of ``--epochs`` (cycle k: seed k - 1,
    from cycle k - 1's last.pt, its own lr warm-up and decay), and copy the last cycle's last.pt to ``--start``.
    Each cycle is validated every epoch for its learning curve; the val split never changes the weights (last.pt
    is kept, not best.pt)."""
    import train

    dest = Path(args.start)
    if dest.exists():
        raise StudyError(f"{dest} exists; the starting checkpoint is trained once (move it away to retrain)")
    project, weights = Path(args.project), ""
    for k in range(1, args.cycles + 1):
        argv = ["--data", args.data or DATA, "--imgsz", str(args.imgsz), "--epochs", str(args.epochs),
                "--batch-size", str(args.batch_size), "--nbs", str(args.nbs), "--seed", str(k - 1), "--workers",
                "0", "--noplots", "--project", str(project), "--name", f"{dest.stem}-cycle{k}"]
        # cycle 1 builds --cfg from scratch; later cycles take the model (and its anchors) from the checkpoint
        argv += ["--weights", weights] if weights else ["--cfg", args.cfg]
        out = train.train(train.get_args_parser().parse_args(argv))
        weights = str(Path(out["save_dir"]) / "weights" / "last.pt")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # EMA weights in fp16, no optimiser (what train.py --weights loads anyway): the results record its SHA-256; a
    # new checkpoint (another machine) starts new seeds
    strip_optimizer(weights, dest)
    for k in range(1, args.cycles + 1):  # the learning curve of each cycle, named by the checkpoint it made
        csv = project / f"{dest.stem}-cycle{k}" / "results.csv"
        shutil.copyfile(csv, dest.parent / f"{sha256(dest)[:8]}-cycle{k}.csv")
    print(f"study: starting checkpoint {dest} (sha256 {sha256(dest)})")


def cmd_run(args) -> None:
    out = Path(args.out)
    start = Path(args.start) if args.start else None
    if start is not None and not start.is_file():
        raise StudyError(f"--start {start}: no such checkpoint (make it with: python experiments/tiny_study.py "
                         "prepare --start PATH)")
    names = {v.name: v for v in VARIANTS}
    unknown = [n for n in args.variants or [] if n not in names]
    if unknown:
        raise StudyError(f"unknown variant(s) {unknown}; valid: {', '.join(names)}")
    chosen = [names[n] for n in args.variants] if args.variants else list(VARIANTS)
    for v in [v for v in chosen if v.start and not Path(v.start).is_file()]:
        print(f"study: {v.name} skipped: its starting checkpoint {v.start} does not exist (make it with: python "
              f"experiments/tiny_study.py prepare --cfg {v.cfg} --start {v.start})")
        chosen.remove(v)
    p = protocol(args, start)
    commit, mach, native_bf16 = git_commit(), machine(), cpu_bf16_supported()
    runs_root = ROOT / "runs"
    weights = str(start) if start else ""
    for s in range(args.seed_start, args.seed_start + args.seeds):
        other = seed_starts(out, s) - {p.weights_sha256}
        if other:  # a seed is one start: its variants are compared with each other (paired), never across starts
            began = ", ".join(sorted(x[:12] for x in other))
            print(f"study: seed {s} skipped: its runs started from checkpoint {began}, not --start {start} "
                  f"({p.weights_sha256[:12]})")
            continue
        precision = seed_precision(out, s, native_bf16)
        if precision is None:
            print(f"study: seed {s} skipped: its runs trained in bf16, which this CPU only emulates (no AVX512-BF16 "
                  "or AMX)")
            continue
        todo = plan(variants_for_seed(chosen, s, out), [s], out, runs_root)
        _, _, failed = execute(todo, p, lambda r, q, prec=precision: run_one(r, q, r.variant.start or weights, prec),
                               commit, mach, log=lambda m: print(m, flush=True))
        if failed:
            print(f"study: {failed} run(s) of seed {s} failed; they are redone when the study is run again")


def cmd_curve(args) -> None:
    from experiments.study_curve import curve_summary

    dirs = [Path(d) for d in args.run_dirs]
    missing = [str(d) for d in dirs if not (d.is_file() or (d / "results.csv").is_file())]
    if missing:
        raise StudyError(f"no results.csv in {', '.join(missing)}")
    print(curve_summary(dirs, Path(args.plot) if args.plot else None))


def cmd_costs(args) -> None:
    """Re-time every variant's final weights together (experiments/study_costs.py) and print the table."""
    out = Path(args.out)
    record = run_costs(out, Path(args.runs), args.rounds, args.passes, args.train_steps, args.threads,
                       log=lambda m: print(m, flush=True))
    print(costs_table(record), end="")
    print(f"study: wrote {out / study_report.COSTS_FILE}")


def cmd_report(args) -> None:
    print(study_report.report(Path(args.out), Path(args.md) if args.md else None,
                              Path(args.plot) if args.plot else None), end="")


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="tiny_study.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("prepare", "run"):
        q = sub.add_parser(name)
        q.add_argument("--data", default=None, help=f"data YAML (default {DATA})")
        q.add_argument("--imgsz", type=int, default=IMGSZ, help="native input size (px)")
        q.add_argument("--batch-size", type=int, default=BATCH)
        q.add_argument("--nbs", type=int, default=NBS)
        q.add_argument("--start", default=START, help="the starting checkpoint")
    sub.choices["prepare"].add_argument("--epochs", type=int, default=PRETRAIN_EPOCHS, help="epochs per cycle")
    sub.choices["prepare"].add_argument("--cycles", type=int, default=PRETRAIN_CYCLES)
    sub.choices["prepare"].add_argument("--cfg", default="yolov5n.yaml", help="model YAML (a variant's own start)")
    sub.choices["prepare"].add_argument("--project", default=str(ROOT / "runs" / "tiny-study-start"),
                                        help="where the cycles' train.py run folders go")
    r = sub.choices["run"]
    r.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per run")
    r.add_argument("--out", required=True, help="results folder (OUT/<variant>/seed<N>.json)")
    r.add_argument("--seeds", type=int, default=5)
    r.add_argument("--seed-start", type=int, default=0)
    r.add_argument("--variants", nargs="+", default=None, help=f"subset of: {', '.join(v.name for v in VARIANTS)}")
    q = sub.add_parser("report")
    q.add_argument("out", help="results folder")
    q.add_argument("--md", default="", help="also write the table here")
    q.add_argument("--plot", default="", help="write the Pareto figure here (PNG)")
    q = sub.add_parser("costs", help="re-time every variant's final weights together, interleaved (OUT/costs.json)")
    q.add_argument("out", help="results folder")
    q.add_argument("--runs", required=True, help="the runs root holding <study>/<variant>/seed<N>/weights/last.pt")
    q.add_argument("--rounds", type=int, default=7, help="rounds over the variants (median over rounds)")
    q.add_argument("--passes", type=int, default=20, help="inference passes per round (the fastest counts)")
    q.add_argument("--train-steps", type=int, default=5, help="training steps per round (their mean counts)")
    q.add_argument("--threads", type=int, default=1, help="torch threads")
    q = sub.add_parser("curve", help="learning curve and plateau check of run folders validated every epoch")
    q.add_argument("run_dirs", nargs="+", help="train.py run folders (or their results.csv), in training order")
    q.add_argument("--plot", default="", help="write the figure here (PNG)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def call() -> None:
        args = get_args_parser().parse_args(argv)
        if args.cmd in ("prepare", "run"):
            check_args(epochs=(args.epochs >= 1, f"must be >= 1, got {args.epochs}"),
                       imgsz=(args.imgsz >= 32, f"must be >= 32, got {args.imgsz}"))
        if args.cmd == "costs":
            check_args(**{k: (getattr(args, k) >= 1, f"must be >= 1, got {getattr(args, k)}")
                          for k in ("rounds", "passes", "train_steps", "threads")})
        {"prepare": cmd_prepare, "run": cmd_run, "curve": cmd_curve, "costs": cmd_costs,
         "report": cmd_report}[args.cmd](args)

    return run_main("tiny_study.py", call)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
