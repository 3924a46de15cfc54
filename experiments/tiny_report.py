"""Summary of the tiny-object study (experiments/tiny_study.py): per variant, tiny and big AP50 / AP / R on the test
split with 95% confidence intervals, paired differences against the baseline, the cost of each variant, and the
same numbers on the val split (what the recipe is chosen on).

Reads the run folders under ``OUT/runs/<variant>/seed<N>/`` that compare.py wrote (``compare_run.json``, the val
split's ``metrics.json``, the test split's ``test/metrics.json``), so it works on a study still in progress.

Statistics: mean over seeds; 95% CI = mean ± t(0.975, n - 1) * sd / sqrt(n); paired differences against the
baseline over the seeds both finished, their 95% CI and the two-sided paired t-test p-value. Costs: training wall
time (median over seeds) and inference time per image (median) as ratios to the baseline's; both are measured on a
shared 2-core machine while another run trained beside them, so only large ratios mean something — see the README
for a clean inference timing.

Usage: python experiments/tiny_report.py runs/tiny-study [--split test|val] [--plot tiny_ap50.png] [--md table.md]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import report  # noqa: E402

COLUMNS = (("tiny/mAP50", "tiny AP50"), ("tiny/mAP50-95", "tiny AP"), ("tiny/recall", "tiny R"),
           ("big/mAP50", "big AP50"), ("big/mAP50-95", "big AP"), ("big/recall", "big R"))


def load_runs(out: Path, split: str) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {seed: flat values}} of the finished runs; ``split`` 'test' reads ``test/metrics.json``."""
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for marker in sorted(out.glob("runs/*/seed*/compare_run.json")):
        m = json.loads(marker.read_text())
        d = marker.parent
        f = d / ("test/metrics.json" if split == "test" else "metrics.json")
        if m.get("status") != "done" or not f.is_file():
            continue
        vals = report.run_values(json.loads(f.read_text()))
        vals["wall_s"] = float(m.get("wall_s", math.nan))
        runs.setdefault(m["config"]["variant"], {})[int(m["config"]["seed"])] = vals
    return runs


def ci95(x: np.ndarray) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval); half-width NaN with fewer than 2 values."""
    from scipy.stats import t

    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < 2:
        return float(x.mean()), math.nan
    return float(x.mean()), float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def paired(a: dict[int, dict], b: dict[int, dict], col: str) -> tuple[float, float, float, int]:
    """(mean difference a - b, its 95% CI half-width, paired t-test p, pairs) over the seeds both have."""
    from scipy.stats import ttest_rel

    seeds = sorted(s for s in a if s in b and math.isfinite(a[s].get(col, math.nan))
                   and math.isfinite(b[s].get(col, math.nan)))
    if not seeds:
        return math.nan, math.nan, math.nan, 0
    x = np.array([a[s][col] for s in seeds])
    y = np.array([b[s][col] for s in seeds])
    mean, half = ci95(x - y)
    p = float(ttest_rel(x, y).pvalue) if len(seeds) > 1 and np.var(x - y) > 0 else math.nan
    return mean, half, p, len(seeds)


def table(runs: dict[str, dict[int, dict]], baseline: str = "baseline") -> list[str]:
    """Markdown: per variant n, each column's mean (x100) with its paired difference to the baseline, p, costs."""
    base = runs.get(baseline, {})
    head = ["variant", "n"] + [f"{h} (Δ, p)" for _, h in COLUMNS] + ["train time", "inference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def med(v: dict[int, dict], col: str) -> float:
        x = [r.get(col, math.nan) for r in v.values()]
        return float(np.nanmedian(x)) if x else math.nan

    for name, by_seed in runs.items():
        cells = [name, str(len(by_seed))]
        for col, _ in COLUMNS:
            mean, _ = ci95(np.array([r.get(col, math.nan) for r in by_seed.values()]))
            if name == baseline or not base:
                cells.append(f"{100 * mean:.2f}")
            else:
                d, half, p, _ = paired(by_seed, base, col)
                cells.append(f"{100 * mean:.2f} ({100 * d:+.2f} ± {100 * half:.2f}, p {report.fmt_p(p)})")
        for col in ("wall_s", "speed/inference_ms"):
            r = med(by_seed, col) / med(base, col) if base else math.nan
            cells.append("1.00" if name == baseline else report.fmt(r, 2))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(runs: dict[str, dict[int, dict]], path: Path, col: str = "tiny/mAP50", baseline: str = "baseline") -> None:
    """Two panels: ``col`` per variant (mean, 95% CI, each seed as a dot), and the paired difference to the
    baseline with its 95% CI."""
    from utils.plots import new_figure, save_figure  # late import: matplotlib is only needed for the figure

    names = list(runs)
    fig, (a0, a1) = new_figure((10, 0.45 * len(names) + 1.5), ncols=2, sharey=True)
    base = runs.get(baseline, {})
    for i, n in enumerate(names):
        x = np.array([r.get(col, math.nan) for r in runs[n].values()]) * 100
        mean, half = ci95(x)
        a0.errorbar(mean, i, xerr=half if math.isfinite(half) else None, fmt="o", color="C0", capsize=3)
        a0.plot(x, [i] * len(x), ".", color="C0", alpha=0.35)
        if base and n != baseline:
            d, h, _, _ = paired(runs[n], base, col)
            a1.errorbar(100 * d, i, xerr=100 * h if math.isfinite(h) else None, fmt="o",
                        color="C2" if d - h > 0 else ("C3" if d + h < 0 else "C7"), capsize=3)
    a0.set_yticks(range(len(names)))
    a0.set_yticklabels(names, fontsize=8)
    a0.set_ylim(len(names) - 0.5, -0.5)  # first variant on top; shared with the right panel
    for ax in (a0, a1):
        ax.grid(alpha=0.3)
    a1.tick_params(labelleft=False)
    a1.axvline(0, color="k", lw=0.8)
    a0.set_xlabel(f"{col} x 100 (mean, 95% CI, seeds)")
    a1.set_xlabel(f"paired difference to {baseline} x 100 (95% CI)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the study's output folder (compare.py --out)")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--plot", default="", help="write the tiny AP50 figure here (PNG)")
    p.add_argument("--md", default="", help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    runs = load_runs(Path(args.out), args.split)
    if not runs:
        print(f"tiny_report: no finished runs under {args.out}", file=sys.stderr)
        return 1
    order = ["baseline"] + sorted(v for v in runs if v != "baseline")
    runs = {v: runs[v] for v in order if v in runs}
    text = "\n".join([f"Split: {args.split}. Values x 100: mean (paired difference to the baseline ± 95% CI, "
                      "p). Costs: median ratio to the baseline.", "", *table(runs)])
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n", encoding="utf-8")
    if args.plot:
        plot(runs, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
