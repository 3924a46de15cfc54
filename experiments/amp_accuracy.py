"""Does a speed option cost accuracy? ``train.py`` twice per seed, once plain and once with the option, paired.

Two comparisons (``--compare``):
- ``bf16``: fp32 (``--amp off``) against bf16 mixed precision (``--amp on``). On a CPU without AVX512-BF16/AMX,
  ``--amp on`` trains in fp32 (oneDNN only emulates bf16 there, ~7-9x slower); bf16 is forced anyway
  (``--force-bf16``, default on) by answering the capability check with True in the training subprocess, so the
  numerics can be judged on any machine.
- ``compile``: eager against ``--compile`` (inductor), both fp32. Afterwards the eager run's last.pt is validated
  by val.py eager and compiled (the too-few-images rule switched off), which must agree to 3 decimals.

Each seed trains twice with the same arguments (so the same data order and augmentation) and differs only in the
option; the report gives mAP@.5 / mAP@.5:.95 (overall and tiny) per seed, each epoch's training loss (box + obj +
cls from results.csv), the mean paired difference option - plain with its 95% t interval and the paired t-test
p-value. A finished run (its metrics.json exists) is not trained again. Extra arguments go to train.py unchanged.

    python experiments/amp_accuracy.py --out runs/amp-accuracy --seeds 3 [-- --epochs 10 --weights best.pt]
    python experiments/amp_accuracy.py --compare compile --out runs/compile-accuracy --seeds 3 -- --epochs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(ROOT))

from experiments.tiny_report import ci95  # noqa: E402

# The training subprocess: train.main with the bf16 capability check answered by argv[1] ("1": native bf16).
CHILD = ("import sys; sys.path.insert(0, {root!r}); import train; "
         "train.cpu_bf16_supported = (lambda: True) if sys.argv[1] == '1' else train.cpu_bf16_supported; "
         "sys.exit(train.main(sys.argv[2:]))")
# The validation subprocess: val.main with the too-few-images rule of --compile off (a val split is small).
VAL_CHILD = ("import sys; sys.path.insert(0, {root!r}); import utils.compiler, val; utils.compiler.MIN_IMAGES = 0; "
             "sys.exit(val.main(sys.argv[1:]))")
METRICS = (("mAP50", "metrics/mAP_0.5"), ("mAP50-95", "metrics/mAP_0.5:0.95"))
LOSSES = ("train/box_loss", "train/obj_loss", "train/cls_loss")
# --compare: (plain, option) names and each one's train.py arguments
COMPARISONS = {"bf16": (("fp32", ["--amp", "off"]), ("bf16", ["--amp", "on"])),
               "compile": (("eager", ["--amp", "off"]), ("compiled", ["--amp", "off", "--compile"]))}


def run_one(out: Path, name: str, mode_args: list[str], seed: int, train_args: list[str], force_bf16: bool) -> Path:
    """Train one (mode, seed) run into ``out/<name>/seed<seed>`` unless finished; returns the folder."""
    run = out / name / f"seed{seed}"
    if (run / "metrics.json").is_file():
        return run
    argv = [*mode_args, "--seed", str(seed), "--project", str(out / name), "--name", f"seed{seed}", "--exist-ok",
            "--noplots", *train_args]
    t = time.time()
    force = force_bf16 and "on" in mode_args
    subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), "1" if force else "0", *argv], check=True)
    print(f"{name} seed {seed}: {time.time() - t:.0f} s", flush=True)
    return run


def values(run: Path) -> dict[str, float]:
    """mAP@.5 and mAP@.5:.95, overall and in the tiny bucket, of a finished run's final validation, and each
    epoch's training loss (``loss e<k>``: box + obj + cls, as results.csv logs them)."""
    m = json.loads((run / "metrics.json").read_text())
    out: dict[str, float] = {name: float(m[key]) for name, key in METRICS}
    tiny = (m.get("size_buckets") or {}).get("tiny") or {}
    out.update({f"tiny {name}": float(tiny.get(k, math.nan)) for name, k in (("mAP50", "map50"),
                                                                              ("mAP50-95", "map50_95"))})
    with open(run / "results.csv", newline="") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v for k, v in row.items()}
            out[f"loss e{int(float(row['epoch']))}"] = sum(float(row[k]) for k in LOSSES)
    opt = yaml.safe_load((run / "opt.yaml").read_text())
    out["ran"] = f"{opt.get('precision', '?')}{' compiled' if opt.get('compile') else ''}"  # what really ran
    return out


def val_twice(weights: Path, out: Path, val_args: list[str]) -> dict[str, dict[str, float]]:
    """val.py's metrics of ``weights`` eager and with --compile: {'eager': {...}, 'compiled': {...}}."""
    res = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        d = out / "val" / name
        if not (d / "metrics.json").is_file():
            argv = ["--weights", str(weights), "--project", str(out / "val"), "--name", name, "--exist-ok",
                    "--workers", "0", *val_args, *extra]
            subprocess.run([sys.executable, "-c", VAL_CHILD.format(root=str(ROOT)), *argv], check=True)
        m = json.loads((d / "metrics.json").read_text())
        res[name] = {k: float(m[k]) for k in ("metrics/precision", "metrics/recall", *dict(METRICS).values())}
    return res


def report(rows: dict[str, dict[int, dict[str, float]]], names: tuple[str, str]) -> str:
    """Markdown: per-seed values and the paired differences option - plain (metrics x100 in points; losses as
    logged)."""
    from scipy.stats import ttest_rel

    a_name, b_name = names
    seeds = sorted(set(rows.get(a_name, {})) & set(rows.get(b_name, {})))
    if not seeds:
        return "no seed finished in both modes\n"
    keys = [k for k in rows[a_name][seeds[0]] if k != "ran" and all(k in rows[p][s] for p in names for s in seeds)]
    scale = {k: 1.0 if k.startswith("loss") else 100.0 for k in keys}
    lines = ["| seed | " + " | ".join(f"{k} {a_name} | {k} {b_name}" for k in keys) + " |",
             "| --- |" + " ---: |" * (2 * len(keys))]
    for s in seeds:
        cells = [f"{scale[k] * rows[p][s][k]:.4g}" for k in keys for p in names]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", f"| value | mean {a_name} | mean {b_name} | {b_name} - {a_name} (95% CI) | paired p |",
              "| --- | ---: | ---: | --- | ---: |"]
    for k in keys:
        a = np.array([rows[a_name][s][k] for s in seeds]) * scale[k]
        b = np.array([rows[b_name][s][k] for s in seeds]) * scale[k]
        d, half = ci95(b - a)
        p = float(ttest_rel(b, a).pvalue) if len(seeds) > 1 and np.var(b - a) > 0 else math.nan
        lines.append(f"| {k} | {a.mean():.4g} | {b.mean():.4g} | {d:+.3g} ± {half:.2g} | {p:.2f} |")
    ran = {p: sorted({str(rows[p][s]["ran"]) for s in seeds}) for p in names}
    lines.append(f"\nWhat ran (opt.yaml): {a_name} runs {ran[a_name]}, {b_name} runs {ran[b_name]}.")
    return "\n".join(lines) + "\n"


def val_report(res: dict[str, dict[str, float]]) -> str:
    """Markdown: val.py eager vs compiled on the same weights, and whether they agree to 3 decimals."""
    lines = ["| metric | eager | compiled | equal to 3 decimals |", "| --- | ---: | ---: | --- |"]
    for k in res["eager"]:
        e, c = res["eager"][k], res["compiled"][k]
        lines.append(f"| {k} | {e:.5f} | {c:.5f} | {'yes' if round(e, 3) == round(c, 3) else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--compare", choices=sorted(COMPARISONS), default="bf16")
    p.add_argument("--out", type=Path, default=None, help="default runs/amp-accuracy or runs/compile-accuracy")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-force-bf16", dest="force_bf16", action="store_false",
                   help="use --amp on as is (fp32 on CPUs without native bf16)")
    p.add_argument("--val-weights", type=Path, default=None,
                   help="compile: the weights val.py checks eager vs compiled (default: the eager seed-0 run's)")
    p.add_argument("--val-data", default="", help="compile: their data YAML (default: the runs')")
    p.add_argument("--val-imgsz", type=int, default=0, help="compile: their size (default: the runs')")
    args = p.parse_args(own)
    out = args.out or ROOT / "runs" / ("amp-accuracy" if args.compare == "bf16" else "compile-accuracy")
    modes = COMPARISONS[args.compare]
    rows: dict[str, dict[int, dict[str, float]]] = {name: {} for name, _ in modes}
    for seed in range(args.seeds):
        for name, mode_args in modes:
            rows[name][seed] = values(run_one(out, name, mode_args, seed, train_args, args.force_bf16))
    text = report(rows, (modes[0][0], modes[1][0]))
    if args.compare == "compile":
        run = out / modes[0][0] / "seed0"
        opt = yaml.safe_load((run / "opt.yaml").read_text())
        weights = args.val_weights or run / "weights" / "last.pt"
        val_args = ["--data", args.val_data or str(opt["data"]), "--imgsz", str(args.val_imgsz or opt["imgsz"])]
        text += f"\nval.py on {weights} ({' '.join(val_args)}):\n\n" + val_report(val_twice(weights, out, val_args))
    (out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
