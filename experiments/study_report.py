"""Report of a resumable study (experiments/study_runner.py): reads whatever result files are complete.

Per variant: n (seeds finished), test-split tiny / big AP50 and tiny recall (mean, x100), the paired difference
to the baseline AND to the best positive-weight control (95 % CI, two-sided paired t-test p, over the seeds both
have), and the costs as ratios to the baseline. Costs come from ``OUT/costs.json`` when it exists (every
variant's final weights re-timed together by ``tiny_study.py costs``, experiments/study_costs.py: train step ms and
inference ms per image), else from each run's own timing (median training seconds per epoch, median inference ms
per image over the seeds; taken while other processes may have shared the cores). A Pareto figure plots tiny AP50
against inference time (the same source); a variant is on the front when no other variant has both a higher mean
tiny AP50 and a lower (or equal) inference time.

The best positive-weight control is chosen on the **val** split: among the control variants (``posw-x<f>``, box
gain and ``obj_pw`` x f), the one whose seed-0 val tiny AP50 is highest (ties: the smaller factor).

Statistics: mean over seeds; 95 % CI = mean ± t(0.975, n - 1) * sd / sqrt(n) (NaN below 2 seeds); p of
``scipy.stats.ttest_rel`` (NaN below 2 pairs or when every paired difference is the same).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.study_runner import StudyError, read_result
from experiments.tiny_report import ci95, paired

CONTROL_PREFIX = "posw-x"  # the positive-weight controls' names: posw-x<factor>
BASELINE = "baseline"
# (flat key, heading) of the table's metric columns, all on the test split
COLUMNS = (("tiny/map50", "tiny AP50"), ("tiny/r", "tiny R"), ("aitod/very_tiny/map50", "AP50 < 8 px"),
           ("big/map50", "big AP50"))
Runs = dict[str, dict[int, dict[str, float]]]  # {variant: {seed: {flat key: value}}}
COSTS_FILE, COSTS_SCHEMA = "costs.json", 1  # OUT/costs.json, written by experiments/study_costs.py
PLATEAU_REL = 0.05  # converged: the last quarter's best val fitness beats the earlier best by less than this share


def plateau_gain(f: np.ndarray) -> float:
    """Relative gain of the best value in the last quarter of ``f`` (>= 1 epoch) over the best before it; NaN
    with fewer than 2 epochs."""
    f = np.asarray(f, float)
    q = max(len(f) // 4, 1)
    if len(f) <= q:
        return float("nan")
    before, last = np.nanmax(f[:-q]), np.nanmax(f[-q:])
    return float(last / before - 1) if before > 0 else float("inf")


def _f(x: Any) -> float:
    try:
        return math.nan if x is None or isinstance(x, bool) else float(x)
    except (TypeError, ValueError):
        return math.nan


def flat_values(r: Mapping[str, Any]) -> dict[str, float]:
    """One result file -> {'tiny/map50': ..., 'val/tiny/map50': ..., 'train_s_per_epoch': ..., ...}."""
    out: dict[str, float] = {}
    for split in ("test", "val"):
        s = r.get(split) or {}
        pre = "" if split == "test" else "val/"
        out.update({f"{pre}all/{k}": _f(v) for k, v in (s.get("overall") or {}).items()})
        for b, m in (s.get("buckets") or {}).items():
            out.update({f"{pre}{b}/{k}": _f(v) for k, v in (m or {}).items()})
    for k in ("train_s_per_epoch", "inference_ms_per_image", "wall_s"):
        out[k] = _f(r.get(k))
    out["plateau_gain"] = plateau_gain(np.array([_f(c.get("fitness")) for c in r.get("curve") or []]))
    return out


def load_results(out: Path) -> tuple[Runs, dict[str, dict[str, Any]]]:
    """({variant: {seed: flat values}}, {variant: definition}) of every result file under ``out``."""
    runs: Runs = {}
    defs: dict[str, dict[str, Any]] = {}
    for f in sorted(out.glob("*/seed*.json")):
        r = read_result(f)
        runs.setdefault(r["variant"], {})[int(r["seed"])] = flat_values(r)
        defs[r["variant"]] = r["definition"]
    return runs, defs


def seed_groups(out: Path) -> str:
    """'start/precision: seeds' for the seeds of ``out`` (a seed is one starting checkpoint and one precision;
    results without a recorded precision trained in fp32)."""
    groups: dict[str, set[int]] = {}
    for f in sorted(out.glob("*/seed*.json")):
        r = read_result(f)
        key = f"{(r['protocol'].get('weights_sha256') or 'scratch')[:8]}/{r.get('precision', 'fp32')}"
        groups.setdefault(key, set()).add(int(r["seed"]))
    return "; ".join(f"{k}: seeds {', '.join(map(str, sorted(v)))}" for k, v in sorted(groups.items(),
                                                                                   key=lambda kv: min(kv[1])))


def control_factor(name: str) -> float:
    """'posw-x2.5' -> 2.5; NaN for other names."""
    if not name.startswith(CONTROL_PREFIX):
        return math.nan
    try:
        return float(name[len(CONTROL_PREFIX):])
    except ValueError:
        return math.nan


def best_control(runs: Runs, key: str = "val/tiny/map50", seed: int = 0) -> str | None:
    """The positive-weight control with the highest ``key`` (val tiny AP50) at ``seed``; ties: smaller factor.
    None when no control has that seed finished."""
    cands = [(v[seed][key], -control_factor(n), n) for n, v in runs.items()
             if math.isfinite(control_factor(n)) and seed in v and math.isfinite(v[seed].get(key, math.nan))]
    return max(cands)[2] if cands else None


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names whose (cost, value) no other point dominates (cost <= and value > , or cost < and value >=)."""
    front = []
    for n, (c, v) in points.items():
        if not (math.isfinite(c) and math.isfinite(v)):
            continue
        dominated = any((c2 <= c and v2 > v) or (c2 < c and v2 >= v) for m, (c2, v2) in points.items()
                        if m != n and math.isfinite(c2) and math.isfinite(v2))
        if not dominated:
            front.append(n)
    return front


def median(by_seed: Mapping[int, Mapping[str, float]], key: str) -> float:
    x = [v.get(key, math.nan) for v in by_seed.values()]
    x = [a for a in x if math.isfinite(a)]
    return float(np.median(x)) if x else math.nan


def read_costs(out: Path) -> dict[str, Any] | None:
    """``OUT/costs.json`` (experiments/study_costs.py), or None when there is none; StudyError naming the file when
    it is not a readable costs file."""
    f = out / COSTS_FILE
    if not f.is_file():
        return None
    try:
        c = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StudyError(f"{f}: not a readable costs file ({e}); run the costs command again or move it away") from None
    if not isinstance(c, dict) or c.get("schema") != COSTS_SCHEMA or not isinstance(c.get("variants"), dict):
        raise StudyError(f"{f}: not a costs file of schema {COSTS_SCHEMA}; run the costs command again or move it away")
    return c


def cost_values(runs: Runs, costs: Mapping[str, Any] | None = None) -> tuple[tuple[str, str],
                                                                          dict[str, tuple[float, float]]]:
    """(the two cost columns' headings, {variant: (train cost, inference ms per image)}). With ``costs``
    (costs.json's content): its train step ms and inference ms (NaN for a variant it lacks); without: the medians
    over each variant's runs of training seconds per epoch and inference ms."""
    if costs is None:
        return ("train s/epoch (ratio)", "inference ms (ratio)"), {
            n: (median(v, "train_s_per_epoch"), median(v, "inference_ms_per_image")) for n, v in runs.items()}
    c = costs["variants"]
    return ("train step ms (ratio)", "inference ms (ratio)"), {
        n: (_f((c.get(n) or {}).get("train_step_ms")), _f((c.get(n) or {}).get("inference_ms"))) for n in runs}


def ratio_cell(x: float, base: float) -> str:
    """'12.3 (1.50x)': a cost and its ratio to the baseline's ('nan' ratio without a baseline); '-' without a cost."""
    if not math.isfinite(x):
        return "-"
    return f"{x:.3g} ({x / base if math.isfinite(base) and base > 0 else math.nan:.2f}x)"


def costs_source(costs: Mapping[str, Any] | None) -> str:
    """The report header's words on where the costs come from."""
    if costs is None:
        return ("each run's own timing, median over seeds (taken while other processes may have shared the cores; "
                "`tiny_study.py costs` re-times them together)")
    return (f"{COSTS_FILE}, the final weights re-timed together ({costs.get('rounds')} interleaved rounds, "
            f"{costs.get('threads')} thread(s), commit {str(costs.get('git_commit'))[:7]}; train: ms per step on a "
            f"synthetic batch of {costs.get('batch')}, data loading and augmentation not included)")


def fmt_p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def diff_cell(a: Mapping[int, Mapping[str, float]], b: Mapping[int, Mapping[str, float]] | None, key: str) -> str:
    if not b:
        return "-"
    d, half, p, n = paired(a, b, key)
    if n == 0:
        return "-"
    h = f" ± {100 * half:.2f}" if math.isfinite(half) else ""
    return f"{100 * d:+.2f}{h} (p {fmt_p(p)}, n {n})"


def table(runs: Runs, defs: Mapping[str, Mapping[str, Any]] | None = None,
          costs: Mapping[str, Any] | None = None) -> list[str]:
    """Markdown table lines: one row per variant (baseline first, then by mean tiny AP50); the cost columns from
    ``costs`` (costs.json's content) when given (:func:`cost_values`)."""
    defs = defs or {}
    cost_heads, cost = cost_values(runs, costs)
    base_cost = cost.get(BASELINE, (math.nan, math.nan))
    ctrl = best_control(runs)
    base = runs.get(BASELINE)
    order = sorted(runs, key=lambda n: (n != BASELINE, -np.nanmean([v.get("tiny/map50", math.nan)
                                                                     for v in runs[n].values()] or [math.nan])))
    head = ["variant", "n", *[h for _, h in COLUMNS], "Δ tiny AP50 vs baseline", f"Δ tiny AP50 vs control "
            f"({ctrl or 'none yet'})", "Δ big AP50 vs baseline", *cost_heads, "input px", "last-quarter val gain",
            "val tiny AP50"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in order:
        v = runs[n]
        cells = [n + (" (control)" if n == ctrl else ""), str(len(v))]
        for key, _ in COLUMNS:
            mean, half = ci95(np.array([r.get(key, math.nan) for r in v.values()]))
            cells.append(f"{100 * mean:.2f}" + (f" ± {100 * half:.2f}" if math.isfinite(half) else ""))
        cells.append("-" if n == BASELINE else diff_cell(v, base, "tiny/map50"))
        cells.append("-" if n == ctrl or ctrl is None else diff_cell(v, runs[ctrl], "tiny/map50"))
        cells.append("-" if n == BASELINE else diff_cell(v, base, "big/map50"))
        cells += [ratio_cell(x, b) for x, b in zip(cost[n], base_cost)]
        cells.append(str((defs.get(n) or {}).get("imgsz", "?")))
        g = [x.get("plateau_gain", math.nan) for x in v.values()]
        g = [x for x in g if math.isfinite(x)]
        cells.append(f"{100 * float(np.median(g)):+.1f} % (median; {100 * min(g):+.1f} to {100 * max(g):+.1f})"
                     if len(g) > 1 else f"{100 * g[0]:+.1f} %" if g else "-")
        cells.append(f"{100 * np.nanmean([x.get('val/tiny/map50', math.nan) for x in v.values()]):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pareto_plot(runs: Runs, path: Path, costs: Mapping[str, Any] | None = None) -> list[str]:
    """tiny AP50 (mean ± 95 % CI, test) against inference ms per image (costs.json's when ``costs`` is given, else
    the median over the seeds); the Pareto front joined by a line. Returns the front's names."""
    from utils.plots import new_figure, save_figure  # late import: matplotlib only for the figure

    _, cost = cost_values(runs, costs)
    pts = {n: (cost[n][1], float(np.nanmean([r.get("tiny/map50", math.nan) for r in v.values()])))
           for n, v in runs.items() if math.isfinite(cost[n][1])}
    front = pareto_front(pts)
    fig, ax = new_figure((7, 4.5))
    for n, (c, m) in pts.items():
        _, half = ci95(np.array([r.get("tiny/map50", math.nan) for r in runs[n].values()]))
        ax.errorbar(c, 100 * m, yerr=100 * half if math.isfinite(half) else None, fmt="o", capsize=3,
                    color="C3" if n in front else "C0")
        ax.annotate(f"{n} (n={len(runs[n])})", (c, 100 * m), textcoords="offset points", xytext=(5, 4), fontsize=7)
    f = sorted((pts[n][0], 100 * pts[n][1]) for n in front)
    if len(f) > 1:
        ax.plot(*zip(*f), "--", color="C3", lw=1, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel("inference ms per image (batch 1; " + ("re-timed together, costs.json" if costs else
                                                         "median over seeds") + ")")
    ax.set_ylabel("tiny AP50 x 100 (test, mean ± 95% CI)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return front


def report(out: Path, md: Path | None = None, plot: Path | None = None) -> str:
    """The report's Markdown (also written to ``md``); the Pareto figure to ``plot``. StudyError when ``out`` has
    no result file."""
    runs, defs = load_results(out)
    if not runs:
        raise StudyError(f"{out}: no result files (OUT/<variant>/seed<N>.json) yet")
    costs = read_costs(out)
    lines = [f"Study `{out.name}`: {sum(len(v) for v in runs.values())} finished runs. Test split, values x 100: "
             "mean ± 95% CI over seeds; Δ: paired difference ± 95% CI (p, pairs). Control: the positive-weight "
             f"control with the best val tiny AP50 (seed 0). Costs (ratio to the baseline): {costs_source(costs)}. "
             f"Starting checkpoint (SHA-256 prefix) and training precision: {seed_groups(out)}.",
             "", *table(runs, defs, costs)]
    if plot:
        front = pareto_plot(runs, plot, costs)
        lines += ["", f"Pareto front (tiny AP50 vs inference time): {', '.join(front)}"]
    text = "\n".join(lines) + "\n"
    if md:
        md.write_text(text, encoding="utf-8")
    return text
