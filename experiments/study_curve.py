"""The study's learning curve: val fitness and val tiny AP50 per epoch from train.py's ``results.csv`` files (the
starting checkpoint's run, then a baseline study run validated every epoch), and the plateau check.

Plateau ("converged"): the best val fitness reached in the last quarter of a run's epochs is less than 5 % (relative)
above the best reached before it. Fitness is YOLOv5's 0.1 mAP@.5 + 0.9 mAP@.5:.95.

Usage: python experiments/tiny_study.py curve RUN_DIR|results.csv [...] --plot docs/tiny_study_curve.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.study_report import PLATEAU_REL, plateau_gain
from utils.eval.metrics import fitness
from utils.train.loggers import read_results_csv


def read_curve(run: Path) -> dict[str, np.ndarray]:
    """{'fitness', 'tiny_map50', 'map50'} per epoch (val split) of a run folder's results.csv (or of that file)."""
    _, rows = read_results_csv(run if run.is_file() else run / "results.csv")
    keys = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")
    x = np.array([[r.get(k, np.nan) for k in keys] for r in rows], float).reshape(-1, 4)
    return {"fitness": np.asarray(fitness(x), float).reshape(-1),
            "tiny_map50": np.array([r.get("metrics/tiny/map50", np.nan) for r in rows], float),
            "map50": x[:, 2]}


def plot_curve(runs: list[tuple[str, dict[str, np.ndarray]]], path: Path) -> None:
    """Val fitness and tiny AP50 per epoch, the runs one after another on the epoch axis (a line marks each start)."""
    from utils.plots import new_figure, save_figure  # late import: matplotlib only for the figure

    fig, ax = new_figure((8, 4))
    start = 0
    for i, (label, c) in enumerate(runs):
        e = np.arange(start + 1, start + len(c["fitness"]) + 1)
        ax.plot(e, 100 * c["fitness"], "-o", ms=2.5, color="C0", label="val fitness" if i == 0 else None)
        ax.plot(e, 100 * c["tiny_map50"], "-s", ms=2.5, color="C1", label="val tiny AP50" if i == 0 else None)
        if i:
            ax.axvline(start + 0.5, color="k", lw=0.8, ls="--")
        ax.annotate(label, (start + 1, 2), fontsize=8)
        start += len(c["fitness"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("x 100 (val split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    save_figure(fig, path)


def curve_summary(run_dirs: list[Path], plot: Path | None = None) -> str:
    """A line per run: epochs, final val fitness and tiny AP50, the plateau gain and whether it is under 5 %."""
    runs = [(d.stem if d.is_file() else d.name, read_curve(d)) for d in run_dirs]
    lines = []
    for name, c in runs:
        g = plateau_gain(c["fitness"])
        lines.append(f"{name}: {len(c['fitness'])} epochs, final val fitness {c['fitness'][-1]:.4f}, tiny AP50 "
                     f"{c['tiny_map50'][-1]:.4f}; best fitness in the last quarter vs before it: {100 * g:+.1f} % "
                     f"({'plateau' if g < PLATEAU_REL else 'still improving'})")
    if plot:
        plot_curve(runs, plot)
    return "\n".join(lines)
