"""Multi-seed comparison of training variants, the TFL paper's protocol (its Tables 1-2, 10-11): every variant is
trained with the same seeds (so the same data order and augmentation), validated, and summarised as mean ± std with
a paired t-test against the baseline.

Usage:
    python experiments/compare.py --data data/synthetic-tiny.yaml --cfg yolov5n.yaml \\
        --variants baseline tfl tfl-piecewise focal-eiou tfl-focal-eiou --seeds 3 --epochs 30 --imgsz 256 \\
        --out runs/compare/paper --sweep tfl_k=0.6,1.6,3 -- --noplots --workers 0

A variant is a name from VARIANTS, optionally with hyperparameter overrides in brackets: ``tfl[k=0.6]``,
``tfl[k=3,piecewise=true]`` (short keys: see ALIASES; any hyp key works). ``--sweep key=v1,v2`` adds one variant
per value to every selected variant the key applies to (tfl_* keys: the TFL variants). Arguments after ``--``
(or in ``--extra-args "..."``) go to train.py unchanged.

Layout under --out: ``runs/<variant>/seed<N>/`` (train.py's run folder, with ``compare_run.json``: the run's
configuration and status), ``report.md``, ``runs.csv``, ``summary.csv``, ``size_buckets.png``. Resumable: a run
whose status is done is not trained again; an interrupted or failed one is resumed from its last.pt (or started
again when it has none); a run folder whose configuration differs from the requested one is an error. One failed
run is reported and does not stop the others (exit code 1 at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import report  # noqa: E402
from experiments.variants import (  # noqa: E402, F401  (re-exported: compare.VARIANTS etc. stay its API)
    ALIASES,
    SHORT,
    VARIANTS,
    CompareError,
    Variant,
    VariantDef,
    expand_sweeps,
    parse_variant,
    resolve_hyp,
    split_top,
)
from utils.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from utils.config.hyp import HYP_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MARKER = "compare_run.json"


# train.py flags the runner sets itself (passing them after -- would silently change what is compared)
RESERVED = ("--hyp", "--hyp-set", "--seed", "--epochs", "--imgsz", "--img", "--img-size", "--batch-size", "--data",
            "--cfg", "--project", "--name", "--exist-ok", "--resume", "--device", "--workers")


# ----------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------
def train_argv(args: argparse.Namespace, v: Variant, seed: int, run_dir: Path) -> list[str]:
    """train.py arguments of one (variant, seed) run."""
    argv = ["--data", args.data, "--hyp", str(HYP_DIR / v.hyp), "--epochs", str(args.epochs), "--imgsz",
            str(args.imgsz), "--batch-size", str(args.batch_size), "--seed", str(seed), "--project",
            str(run_dir.parent), "--name", run_dir.name, "--exist-ok"]
    cfg = v.cfg or args.cfg
    argv += ["--cfg", cfg] if cfg else []
    argv += ["--device", args.device] if args.device else []
    argv += ["--workers", str(args.workers)] if args.workers is not None else []
    overrides = [*args.hyp_set, *v.overrides]
    return argv + (["--hyp-set", *overrides] if overrides else []) + list(v.train_args) + list(args.extra)


def run_config(args: argparse.Namespace, v: Variant, seed: int) -> dict[str, Any]:
    """What a run's results depend on; a run folder holding another configuration is not reused."""
    return {"variant": v.name, "seed": seed, "data": args.data, "cfg": v.cfg or args.cfg, "epochs": args.epochs,
            "imgsz": args.imgsz, "batch_size": args.batch_size, "hyp": resolve_hyp(v, tuple(args.hyp_set)),
            "extra": [*v.train_args, *args.extra]}


def run_state(run_dir: Path, config: dict[str, Any]) -> tuple[str, str]:
    """('done' | 'resume' | 'fresh', why) for a planned run; CompareError when the folder holds another config."""
    marker = run_dir / MARKER
    if not marker.is_file():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise CompareError(f"{run_dir} exists but has no {MARKER}: not a compare.py run; use another --out")
        return "fresh", "new"
    m = json.loads(marker.read_text())
    if m.get("config") != config:
        old = m.get("config") or {}
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise CompareError(f"{run_dir} was run with a different configuration (differs in {diff}); use another "
                           "--out, or delete that folder to train it again")
    if m.get("status") == "done" and (run_dir / "metrics.json").is_file():
        return "done", "finished earlier"
    last = run_dir / "weights" / "last.pt"
    if not last.is_file():
        return "fresh", f"previous attempt {m.get('status')} without a checkpoint"
    from utils.checkpoints import CheckpointError, load_checkpoint  # late import: torch

    try:
        ck = load_checkpoint(last)
    except CheckpointError as e:
        return "fresh", f"unreadable last.pt ({e})"
    finished = ck["epoch"] < 0 or ck["epoch"] + 1 >= int(ck["opt"]["epochs"])  # -1: stripped at the run's end
    if finished and (run_dir / "metrics.json").is_file():
        return "done", "all epochs finished (status not recorded)"
    return "resume", f"interrupted after epoch {ck['epoch']}"


def _move_aside(run_dir: Path) -> None:
    """Keep a failed attempt's folder as '<name>.attempt<k>' so that a fresh run starts clean."""
    k = 1
    while (run_dir.parent / f"{run_dir.name}.attempt{k}").exists():
        k += 1
    run_dir.rename(run_dir.parent / f"{run_dir.name}.attempt{k}")


def train_run(args: argparse.Namespace, v: Variant, seed: int, run_dir: Path, config: dict, state: str) -> float:
    """Train (or resume) one run in this process; returns its wall time in seconds. Raises what train raises."""
    import train  # late import: torch and the whole training stack

    if state == "fresh" and run_dir.exists():
        _move_aside(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / MARKER
    prev = json.loads(marker.read_text()) if marker.is_file() else {}
    argv = train_argv(args, v, seed, run_dir)
    atomic_write_json(marker, {"config": config, "status": "running", "train_argv": argv,
                               "wall_s": prev.get("wall_s", 0.0), "attempts": prev.get("attempts", 0) + 1})
    t0 = time.perf_counter()
    opt = train.get_args_parser().parse_args(
        ["--resume", str(run_dir / "weights" / "last.pt")] if state == "resume" else argv)
    train.train(opt)
    return time.perf_counter() - t0


def coco_eval(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """pycocotools AP/AP_S/M/L of the run's last.pt (saved under ``run_dir/coco``); cached."""
    out = run_dir / "coco" / "metrics.json"
    if not out.is_file():
        import val  # late import: torch

        val.run(args.data, weights=str(run_dir / "weights" / "last.pt"), batch_size=args.batch_size * 2,
                imgsz=args.imgsz, device=args.device or "", workers=args.workers if args.workers is not None else 2,
                save_json=True, project=run_dir, name="coco", exist_ok=True, plots=False)
    return json.loads(out.read_text()).get("coco") or {}


def split_eval(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """metrics.json of the run's last.pt on the ``--eval-task`` split (saved under ``run_dir/<task>``); cached. The
    training run's own metrics.json (the val split) is used when ``--eval-task val``."""
    if args.eval_task == "val":
        return json.loads((run_dir / "metrics.json").read_text())
    out = run_dir / args.eval_task / "metrics.json"
    if not out.is_file():
        import val  # late import: torch

        val.run(args.data, weights=str(run_dir / "weights" / "last.pt"), batch_size=args.batch_size * 2,
                imgsz=args.imgsz, task=args.eval_task, device=args.device or "",
                workers=args.workers if args.workers is not None else 2, project=run_dir, name=args.eval_task,
                exist_ok=True, plots=False)
    return json.loads(out.read_text())


def finish_record(args, v: Variant, seed: int, run_dir: Path, trained_now: bool) -> report.RunRecord:
    """Read a finished run's metrics on the ``--eval-task`` split (and COCO stats with --coco) into a RunRecord."""
    m = json.loads((run_dir / MARKER).read_text())
    metrics = split_eval(args, run_dir)
    coco = coco_eval(args, run_dir) if args.coco else {}
    return report.RunRecord(v.name, seed, "done", str(run_dir), metrics, coco, float(m.get("wall_s", math.nan)),
                            trained_now)


def execute(args: argparse.Namespace, variants: list[Variant], command: str) -> list[report.RunRecord]:
    """Train every (variant, seed) not done yet (seed-major, so paired results arrive early), rewriting the report
    after each run. Returns one RunRecord per planned run."""
    out = Path(args.out)
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    plan = [(v, s, out / "runs" / v.slug / f"seed{s}") for s in seeds for v in variants]
    configs = [run_config(args, v, s) for v, s, _ in plan]
    states = [run_state(d, c) for (_, _, d), c in zip(plan, configs)]  # every config check before any training
    out.mkdir(parents=True, exist_ok=True)
    records: dict[int, report.RunRecord] = {}
    for i, ((v, s, d), (state, _)) in enumerate(zip(plan, states)):
        records[i] = report.RunRecord(v.name, s, "pending", str(d)) if state != "done" else \
            finish_record(args, v, s, d, False)
    t_start, trained = time.perf_counter(), []
    todo = [i for i, (state, _) in enumerate(states) if state != "done"]
    print(f"compare: {len(plan)} runs planned, {len(plan) - len(todo)} done earlier, {len(todo)} to train", flush=True)
    for j, i in enumerate(todo):
        (v, s, d), (state, why) = plan[i], states[i]
        eta = f", ETA {sum(trained) / len(trained) * (len(todo) - j) / 60:.1f} min" if trained else ""
        print(f"compare: [{j + 1}/{len(todo)}] {v.name} seed {s}: {state} ({why}){eta}", flush=True)
        try:
            wall = train_run(args, v, s, d, configs[i], state)
            marker = json.loads((d / MARKER).read_text())
            atomic_write_json(d / MARKER, {**marker, "status": "done", "wall_s": marker["wall_s"] + wall})
            trained.append(wall)
            records[i] = finish_record(args, v, s, d, True)
        except Exception:  # one failed run must not lose the others: record it and go on
            err = traceback.format_exc()
            print(f"compare: {v.name} seed {s} FAILED:\n{err}", file=sys.stderr, flush=True)
            if (d / MARKER).is_file():
                marker = json.loads((d / MARKER).read_text())
                atomic_write_json(d / MARKER, {**marker, "status": "failed", "error": err})
            records[i] = report.RunRecord(v.name, s, "failed", str(d), error=err, trained_now=True)
        write_report(args, variants, list(records.values()), command, time.perf_counter() - t_start)
    recs = [records[i] for i in range(len(plan))]
    if not todo:
        write_report(args, variants, recs, command, time.perf_counter() - t_start)
    return recs


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def write_report(args, variants: list[Variant], records: list[report.RunRecord], command: str,
                 elapsed: float) -> Path:
    """report.md, runs.csv, summary.csv and size_buckets.png under --out, each written atomically."""
    out = Path(args.out)
    names = [v.name for v in variants]
    baseline = "baseline" if "baseline" in names else None
    summary = report.summarise(records, names, baseline)
    done = [r for r in records if r.status == "done"]
    buckets = report.bucket_names(done)
    plot = "size_buckets.png" if buckets else None
    if plot:
        atomic_write_bytes(out / plot, report.plot_buckets(summary, buckets))
    train_s = sum(r.wall_s for r in done if math.isfinite(r.wall_s))
    meta = {"title": f"Comparison: {', '.join(names)}", "command": f"`{command}`",
            "git commit": report.git_commit(ROOT), "machine": report.machine(), "data": f"`{args.data}`",
            "model": f"`{args.cfg or 'yolov5n.yaml'}`",
            "settings": f"{args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch_size}, seeds "
                        f"{args.seed_start}..{args.seed_start + args.seeds - 1}"
                        + (f", train.py extra arguments `{shlex.join(args.extra)}`" if args.extra else ""),
            "wall time": f"{elapsed / 60:.1f} min this invocation; {train_s / 60:.1f} min of training summed over "
                         f"the {len(done)} finished runs (all invocations)",
            "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    table = [(v.name, f"`{v.hyp}`", ", ".join(f"`{o}`" for o in [*args.hyp_set, *v.overrides]) or "-")
             for v in variants]
    atomic_write_text(out / "report.md", report.markdown(summary, records, meta, table, baseline, plot))
    atomic_write_text(out / "runs.csv", report.csv_text(*report.runs_table(records)))
    atomic_write_text(out / "summary.csv", report.csv_text(*report.summary_table(summary)))
    return out / "report.md"


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/synthetic-tiny.yaml", help="dataset YAML")
    p.add_argument("--cfg", default="", help="model YAML (train.py's default yolov5n.yaml when empty)")
    p.add_argument("--variants", nargs="+", default=["baseline", "tfl"],
                   help=f"variants to compare, from: {', '.join(VARIANTS)}; overrides in brackets: tfl[k=0.6]")
    p.add_argument("--sweep", nargs="+", default=[], metavar="KEY=V1,V2",
                   help="add one variant per value, e.g. tfl_k=0.6,1.6,3 or tfl_piecewise=true")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (the same for every variant)")
    p.add_argument("--seed-start", type=int, default=0, help="first seed")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=256, help="train and val image size (input px)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=None, help="dataloader workers (train.py's default when unset)")
    p.add_argument("--device", default="", help="cuda device, i.e. 0, or cpu")
    p.add_argument("--hyp-set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every variant")
    p.add_argument("--eval-task", default="val", choices=["val", "test"],
                   help="split the report is computed on: 'test' evaluates each run's last.pt on the data YAML's "
                        "test split (choose variants on val, report on test)")
    p.add_argument("--coco", action="store_true", help="also evaluate each run with pycocotools (AP_S/M/L)")
    p.add_argument("--out", default=str(ROOT / "runs/compare/exp"), help="output folder (resumed when it exists)")
    p.add_argument("--extra-args", default="", help="more train.py arguments as one string (or put them after --)")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Arguments before ``--`` are ours, after it train.py's; checks everything before any training."""
    cut = argv.index("--") if "--" in argv else len(argv)
    args = get_args_parser().parse_args(argv[:cut])
    args.extra = shlex.split(args.extra_args) + argv[cut + 1:]
    bad = [a for a in args.extra if a.split("=", 1)[0] in RESERVED]
    if bad:
        raise CompareError(f"train.py argument(s) {bad} are set by compare.py itself; use its own options")
    if args.seeds < 1 or args.epochs < 1:
        raise CompareError(f"--seeds and --epochs must be >= 1, got {args.seeds} and {args.epochs}")
    import train  # late import: torch

    try:  # unknown train.py flags fail now, not after hours of training
        train.get_args_parser().parse_args(args.extra)
    except SystemExit as e:
        raise CompareError(f"invalid train.py arguments {args.extra}") from e
    return args


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 when every run finished, 1 when some failed, 2 on bad arguments or configuration."""
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join([Path(sys.executable).name, "experiments/compare.py", *argv])
    try:
        args = parse_args(argv)
        common = tuple(args.hyp_set)
        variants = expand_sweeps([parse_variant(s) for s in args.variants], args.sweep, common)
        records = execute(args, variants, command)
    except CompareError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in records if r.status == "failed"]
    print(f"compare: report {Path(args.out) / 'report.md'}; {len(records) - len(failed)} runs done, "
          f"{len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
