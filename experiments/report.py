"""Summaries of a multi-seed comparison (experiments/compare.py): per-run values, mean ± std per variant, paired
t-tests against the baseline, and the Markdown / CSV / PNG renderings of them.

Everything here is a pure function of the runs' ``metrics.json`` contents (as written by val.py), so the report
can be rebuilt from the run folders alone. Statistics:
- mean and std over the seeds whose value is finite; std is the sample standard deviation (ddof=1), NaN ("n/a")
  with fewer than 2 values;
- p: two-sided paired t-test (``scipy.stats.ttest_rel``) of a variant against the baseline over the seeds both have
  a finite value for; NaN ("n/a") with fewer than 2 pairs or when the paired differences have zero variance.
Size buckets (e.g. 'tiny' / 'big') are areas in original-image px², as computed by utils/eval/size_metrics.py.
``git_commit`` and ``machine`` give the run facts the report records.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Table 1 columns: (column name, metrics.json key, heading)
OVERALL = (("precision", "metrics/precision", "P"), ("recall", "metrics/recall", "R"),
           ("mAP50", "metrics/mAP_0.5", "mAP@.5"), ("mAP50-95", "metrics/mAP_0.5:0.95", "mAP@.5:.95"))
BUCKET_FIELDS = (("precision", "p"), ("recall", "r"), ("mAP50", "map50"), ("mAP50-95", "map50_95"))
COCO_KEYS = ("AP", "AP50", "AP_S", "AP_M", "AP_L")


@dataclass(frozen=True)
class RunRecord:
    """One (variant, seed) run. ``metrics``: its metrics.json (empty unless ``status == 'done'``); ``coco``: the
    'coco' dict of its COCO evaluation, when one was made; ``wall_s``: training time in seconds."""

    variant: str
    seed: int
    status: str  # 'done' | 'failed' | 'pending'
    run_dir: str
    metrics: Mapping[str, Any] = field(default_factory=dict)
    coco: Mapping[str, Any] = field(default_factory=dict)
    wall_s: float = math.nan
    trained_now: bool = False  # trained (or resumed) by this invocation
    error: str = ""


@dataclass(frozen=True)
class Stat:
    """Mean ± std over ``n`` seeds and the paired-test p-value against the baseline (NaN where not applicable)."""

    n: int
    mean: float
    std: float
    p: float = math.nan


def _num(x: Any) -> float:
    """A metrics.json value as a float: None (val.py's NaN) and non-numbers -> NaN, 'inf' -> inf."""
    if isinstance(x, bool) or x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def run_values(metrics: Mapping[str, Any], coco: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Flat {column: value} of one run: overall P/R/mAP, '<bucket>/<field>' and '<bucket>/n_gt' per size bucket,
    'coco/<key>' for the COCO stats when available."""
    out = {col: _num(metrics.get(key)) for col, key, _ in OVERALL}
    for bucket, m in (metrics.get("size_buckets") or {}).items():
        out[f"{bucket}/n_gt"] = _num(m.get("n_gt"))
        out.update({f"{bucket}/{col}": _num(m.get(key)) for col, key in BUCKET_FIELDS})
    coco = coco or metrics.get("coco") or {}
    out.update({f"coco/{k}": _num(coco[k]) for k in COCO_KEYS if k in coco})
    speed = metrics.get("speed_ms")
    if isinstance(speed, Mapping) and "inference" in speed:  # the forward pass, ms per image: inference cost
        out["speed/inference_ms"] = _num(speed["inference"])
    return out


def bucket_names(records: Iterable[RunRecord]) -> list[str]:
    """Size-bucket names in first-seen order over the finished runs."""
    names: list[str] = []
    for r in records:
        for b in r.metrics.get("size_buckets") or {}:
            if b not in names:
                names.append(b)
    return names


def bucket_edges(records: Iterable[RunRecord]) -> dict[str, set[tuple[float, float]]]:
    """{bucket: {(lo, hi) area edges in original px²}} over the finished runs (more than one pair: not comparable)."""
    edges: dict[str, set[tuple[float, float]]] = {}
    for r in records:
        for b, m in (r.metrics.get("size_buckets") or {}).items():
            edges.setdefault(b, set()).add((_num(m.get("lo")), _num(m.get("hi"))))
    return edges


def mean_std(values: Sequence[float]) -> tuple[int, float, float]:
    """(n finite, mean, sample std ddof=1) of ``values``; mean NaN when n == 0, std NaN when n < 2."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return 0, math.nan, math.nan
    return len(v), float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def paired_p(values: Mapping[int, float], baseline: Mapping[int, float]) -> float:
    """Two-sided paired t-test p-value over the seeds where both have a finite value; NaN with fewer than 2 pairs
    or zero variance of the differences (the test is undefined there)."""
    from scipy.stats import ttest_rel  # late import: scipy is only needed for the report

    seeds = sorted(s for s in values if s in baseline and math.isfinite(values[s]) and math.isfinite(baseline[s]))
    if len(seeds) < 2:
        return math.nan
    a = np.array([values[s] for s in seeds], dtype=np.float64)
    b = np.array([baseline[s] for s in seeds], dtype=np.float64)
    if float(np.var(a - b)) == 0.0:
        return math.nan
    return float(ttest_rel(a, b).pvalue)


def summarise(records: Sequence[RunRecord], variants: Sequence[str], baseline: str | None = "baseline",
              ) -> dict[str, dict[str, Stat]]:
    """{variant: {column: Stat}} over the finished runs, variants in the given order; p-values against
    ``baseline`` (NaN for the baseline itself or when it is not among the variants)."""
    per_seed: dict[str, dict[str, dict[int, float]]] = {v: {} for v in variants}  # variant -> column -> seed -> x
    for r in records:
        if r.status != "done" or r.variant not in per_seed:
            continue
        for col, x in run_values(r.metrics, r.coco).items():
            per_seed[r.variant].setdefault(col, {})[r.seed] = x
    base = per_seed.get(baseline, {}) if baseline else {}
    out: dict[str, dict[str, Stat]] = {}
    for v in variants:
        out[v] = {}
        for col, by_seed in per_seed[v].items():
            n, mean, std = mean_std(list(by_seed.values()))
            p = paired_p(by_seed, base[col]) if v != baseline and col in base else math.nan
            out[v][col] = Stat(n, mean, std, p)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Renderings
# ----------------------------------------------------------------------------------------------------------------
def fmt(x: float, digits: int = 4) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else f"{p:.3g}"


def fmt_stat(s: Stat | None) -> str:
    """'mean ± std' (std 'n/a' with one seed); '-' when the column is missing."""
    if s is None or s.n == 0:
        return "-"
    return f"{fmt(s.mean)} ± {fmt(s.std)}"


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header row; floats written with repr precision, NaN as an empty cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buf.getvalue()


def runs_table(records: Sequence[RunRecord]) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, columns) of runs.csv: one row per run with every value of ``run_values``."""
    cols: list[str] = []
    rows = []
    for r in records:
        vals = run_values(r.metrics, r.coco) if r.status == "done" else {}
        cols += [c for c in vals if c not in cols]
        rows.append({"variant": r.variant, "seed": r.seed, "status": r.status, "wall_s": r.wall_s,
                     "run_dir": r.run_dir, **vals, "error": r.error.splitlines()[-1] if r.error else ""})
    return rows, ["variant", "seed", "status", "wall_s", *cols, "run_dir", "error"]


def summary_table(summary: Mapping[str, Mapping[str, Stat]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, columns) of summary.csv: per variant n and, per column, '<col>_mean', '<col>_std', '<col>_p'."""
    cols: list[str] = []
    for stats in summary.values():
        cols += [c for c in stats if c not in cols]
    rows = []
    for v, stats in summary.items():
        row: dict[str, Any] = {"variant": v, "n": max((s.n for s in stats.values()), default=0)}
        for c in cols:
            s = stats.get(c, Stat(0, math.nan, math.nan))
            row.update({f"{c}_mean": s.mean, f"{c}_std": s.std, f"{c}_p": s.p})
        rows.append(row)
    return rows, ["variant", "n"] + [f"{c}_{k}" for c in cols for k in ("mean", "std", "p")]


def _md_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(summary: Mapping[str, Mapping[str, Stat]], records: Sequence[RunRecord], meta: Mapping[str, Any],
             variant_table: Sequence[Sequence[str]], baseline: str | None, plot_name: str | None) -> str:
    """The report: run facts, Table 1 (overall), Table 2 (per size bucket), COCO AP by size, runs, failures."""
    done = [r for r in records if r.status == "done"]
    lines = [f"# {meta.get('title', 'Comparison')}", ""]
    lines += [f"- **{k}**: {v}" for k, v in meta.items() if k != "title"]
    lines += ["", "## Variants", ""]
    lines += _md_table(("variant", "hyp file", "overrides"), variant_table)
    lines += ["", f"Runs finished: {len(done)} of {len(records)}. Values are mean ± std over seeds (sample std, "
              "ddof=1); p: two-sided paired t-test against "
              + (f"`{baseline}` over the seeds both finished" if baseline else "the baseline (none selected)")
              + " (n/a with fewer than 2 pairs or zero variance of the differences).", ""]

    lines += ["## Table 1: overall metrics", ""]
    head = ["variant", "n"] + [h for *_, h in OVERALL] + [f"p ({h})" for *_, h in OVERALL]
    rows = []
    for v, st in summary.items():
        n = max((s.n for s in st.values()), default=0)
        rows.append([v, str(n)] + [fmt_stat(st.get(c)) for c, *_ in OVERALL]
                    + [fmt_p(st[c].p) if c in st else "n/a" for c, *_ in OVERALL])
    lines += _md_table(head, rows)

    buckets = bucket_names(done)
    if buckets:
        lines += ["", "## Table 2: precision and recall per object size", ""]
        edges = bucket_edges(done)
        desc = ", ".join(f"{b} = [{lo:g}, {hi:g})" for b in buckets for lo, hi in sorted(edges[b]))
        lines += [f"Area ranges in original-image px²: {desc}. P and R at each run's overall max-F1 confidence.", ""]
        if any(len(e) > 1 for e in edges.values()):
            lines += ["**Warning**: the bucket edges differ between runs (e.g. a sweep over tfl_s): those columns "
                      "do not compare the same objects.", ""]
        head = ["variant"] + [f"{b} {m}" for b in buckets for m in ("P", "R", "p (R)")] + [f"{b} GTs" for b in buckets]
        rows = []
        for v, st in summary.items():
            row = [v]
            for b in buckets:
                row += [fmt_stat(st.get(f"{b}/precision")), fmt_stat(st.get(f"{b}/recall")),
                        fmt_p(st[f"{b}/recall"].p) if f"{b}/recall" in st else "n/a"]
            row += [fmt(st[f"{b}/n_gt"].mean, 0) if f"{b}/n_gt" in st else "-" for b in buckets]
            rows.append(row)
        lines += _md_table(head, rows)
        if plot_name:
            lines += ["", f"![recall and precision per size bucket]({plot_name})"]

    coco_cols = [f"coco/{k}" for k in COCO_KEYS if any(f"coco/{k}" in st for st in summary.values())]
    lines += ["", "## COCO AP by object size (pycocotools)", ""]
    if coco_cols:
        lines += _md_table(["variant"] + [c.split("/", 1)[1] for c in coco_cols] + ["p (AP_S)"],
                           [[v] + [fmt_stat(st.get(c)) for c in coco_cols]
                            + [fmt_p(st["coco/AP_S"].p) if "coco/AP_S" in st else "n/a"] for v, st in summary.items()])
    else:
        lines += ["Not available: rerun compare.py with `--coco` to evaluate every run with pycocotools."]

    lines += ["", "## Runs", ""]
    lines += _md_table(("variant", "seed", "status", "train s", "P", "R", "mAP@.5", "mAP@.5:.95", "folder"),
                       [[r.variant, str(r.seed), r.status + (" (now)" if r.trained_now else ""), fmt(r.wall_s, 1)]
                        + [fmt(run_values(r.metrics).get(c, math.nan)) if r.status == "done" else "-"
                           for c, *_ in OVERALL] + [f"`{r.run_dir}`"] for r in records])
    failed = [r for r in records if r.status == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""]
        for r in failed:
            lines += [f"### {r.variant} seed {r.seed}", "", "```", r.error.strip()[-3000:], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def plot_buckets(summary: Mapping[str, Mapping[str, Stat]], buckets: Sequence[str]) -> bytes:
    """PNG bytes: grouped bars of mean recall (left) and precision (right) per size bucket and variant, error bars
    = std over seeds (none where n/a)."""
    from utils.plots import new_figure, save_figure  # lazy: utils.plots imports torch, the statistics do not

    variants = list(summary)
    fig, axes = new_figure((max(8.0, 2.2 * len(buckets) * max(len(variants), 1) / 2), 4.2), 1, 2)
    width = 0.8 / max(len(variants), 1)
    x = np.arange(len(buckets))
    for ax, col, title in zip(axes, ("recall", "precision"), ("Recall", "Precision")):
        for i, v in enumerate(variants):
            stats = [summary[v].get(f"{b}/{col}") for b in buckets]
            mean = [s.mean if s and s.n else 0.0 for s in stats]
            std = [s.std if s and math.isfinite(s.std) else 0.0 for s in stats]
            ax.bar(x + (i - (len(variants) - 1) / 2) * width, mean, width, yerr=std, capsize=3, label=v)
        ax.set_xticks(x, buckets)
        ax.set_ylim(0, 1)
        ax.set_title(f"{title} per object size")
        ax.set_ylabel(f"{title.lower()} (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_figure(fig, io.BytesIO()).getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Run facts
# ----------------------------------------------------------------------------------------------------------------
def git_commit(repo: Path) -> str:
    """HEAD's hash, '+ uncommitted changes' when tracked files differ from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if head.returncode:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def machine() -> str:
    """Platform, CPU count, GPUs, Python and torch versions, for the report."""
    import torch  # late import: the statistics do not need torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"
    return (f"{platform.platform()}; {os.cpu_count()} CPUs ({cpus} usable, torch threads {torch.get_num_threads()}); "
            f"GPU: {gpu}; Python {platform.python_version()}, torch {torch.__version__}")
