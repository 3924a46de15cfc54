"""Does bf16 mixed precision cost accuracy? ``train.py`` in fp32 (``--amp off``) and in bf16, paired over seeds.

Each seed trains twice with the same arguments (so the same data order and augmentation) and differs only in the
precision of the forward pass; the report gives mAP@.5 / mAP@.5:.95 (overall and tiny) per seed, the mean paired
difference bf16 - fp32 with its 95% t interval and the paired t-test p-value.

On a CPU without AVX512-BF16/AMX, ``--amp on`` trains in fp32 (oneDNN only emulates bf16 there, ~7-9x slower);
this script forces bf16 anyway (``--force-bf16``, default on) by answering the capability check with True in the
training subprocess, so the numerics can be judged on any machine. Extra arguments go to train.py unchanged.

    python experiments/amp_accuracy.py --out runs/amp-accuracy --seeds 3 [-- --epochs 10 --weights best.pt]
"""

from __future__ import annotations

import argparse
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
METRICS = (("mAP50", "metrics/mAP_0.5"), ("mAP50-95", "metrics/mAP_0.5:0.95"))


def run_one(out: Path, precision: str, seed: int, train_args: list[str], force_bf16: bool) -> Path:
    """Train one (precision, seed) run into ``out/<precision>/seed<seed>`` unless finished; returns the folder."""
    run = out / precision / f"seed{seed}"
    if (run / "metrics.json").is_file():
        return run
    amp = "off" if precision == "fp32" else "on"
    argv = ["--amp", amp, "--seed", str(seed), "--project", str(out / precision), "--name", f"seed{seed}",
            "--exist-ok", "--noplots", *train_args]
    child = CHILD.format(root=str(ROOT))
    t = time.time()
    subprocess.run([sys.executable, "-c", child, "1" if force_bf16 and amp == "on" else "0", *argv], check=True)
    print(f"{precision} seed {seed}: {time.time() - t:.0f} s", flush=True)
    return run


def values(run: Path) -> dict[str, float]:
    """mAP@.5 and mAP@.5:.95, overall and in the tiny bucket, of a finished run's final validation."""
    m = json.loads((run / "metrics.json").read_text())
    out = {name: float(m[key]) for name, key in METRICS}
    tiny = (m.get("size_buckets") or {}).get("tiny") or {}
    out.update({f"tiny {name}": float(tiny.get(k, math.nan)) for name, k in (("mAP50", "map50"),
                                                                              ("mAP50-95", "map50_95"))})
    out["precision"] = yaml.safe_load((run / "opt.yaml").read_text()).get("precision", "?")  # what really ran
    return out


def report(rows: dict[str, dict[int, dict[str, float]]]) -> str:
    """Markdown: per-seed values and the paired bf16 - fp32 differences (x100, points)."""
    from scipy.stats import ttest_rel

    seeds = sorted(set(rows.get("fp32", {})) & set(rows.get("bf16", {})))
    names = [k for k in rows["fp32"][seeds[0]] if k != "precision"] if seeds else []
    ran = {p: sorted({str(rows[p][s]["precision"]) for s in seeds}) for p in ("fp32", "bf16")}
    lines = ["| seed | " + " | ".join(f"{n} fp32 | {n} bf16" for n in names) + " |",
             "| --- |" + " ---: |" * (2 * len(names))]
    for s in seeds:
        cells = [f"{100 * rows[p][s][n]:.2f}" for n in names for p in ("fp32", "bf16")]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "| metric (points) | mean fp32 | mean bf16 | bf16 - fp32 (95% CI) | paired p |",
              "| --- | ---: | ---: | --- | ---: |"]
    for n in names:
        a = np.array([rows["fp32"][s][n] for s in seeds]) * 100
        b = np.array([rows["bf16"][s][n] for s in seeds]) * 100
        d, half = ci95(b - a)
        p = float(ttest_rel(b, a).pvalue) if len(seeds) > 1 and np.var(b - a) > 0 else math.nan
        lines.append(f"| {n} | {a.mean():.2f} | {b.mean():.2f} | {d:+.2f} ± {half:.2f} | {p:.2f} |")
    lines.append(f"\nPrecisions recorded in opt.yaml: fp32 runs {ran['fp32']}, bf16 runs {ran['bf16']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "amp-accuracy")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-force-bf16", dest="force_bf16", action="store_false",
                   help="use --amp on as is (fp32 on CPUs without native bf16)")
    args = p.parse_args(own)
    rows: dict[str, dict[int, dict[str, float]]] = {"fp32": {}, "bf16": {}}
    for seed in range(args.seeds):
        for precision in ("fp32", "bf16"):
            rows[precision][seed] = values(run_one(args.out, precision, seed, train_args, args.force_bf16))
    text = report(rows)
    (args.out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
