"""Validation plots: PR curve, metric-confidence curves (F1, P, R) and the confusion-matrix heatmap.

Built on ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot global state, no backend switch, safe to call
from threads. Confidences and recalls are in [0, 1]. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.metrics import smooth

MAX_LEGEND_CLASSES = 20  # above this, per-class curves are drawn grey without a legend


def _new_figure(figsize: tuple[float, float]) -> tuple[Figure, object]:
    fig = Figure(figsize=figsize, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=250)
    return path


def plot_pr_curve(px: np.ndarray, pr: np.ndarray, ap: np.ndarray, path: str | Path,
                  names: Sequence[str] = ()) -> Path:
    """Precision-recall curves at IoU 0.5. px: (K,) recall grid; pr: (nc, K) precision per class; ap: (nc, T)."""
    fig, ax = _new_figure((9, 6))
    if 0 < len(names) <= MAX_LEGEND_CLASSES:
        for i, y in enumerate(pr):
            ax.plot(px, y, linewidth=1, label=f"{names[i]} {ap[i, 0]:.3f}")
    elif len(pr):
        ax.plot(px, pr.T, linewidth=1, color="grey")
    if len(pr):
        ax.plot(px, pr.mean(0), linewidth=3, color="blue", label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if len(pr):
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_title("Precision-Recall Curve")
    return _save(fig, path)


def plot_mc_curve(px: np.ndarray, y: np.ndarray, path: str | Path, names: Sequence[str] = (),
                  xlabel: str = "Confidence", ylabel: str = "Metric") -> Path:
    """Metric-confidence curves. px: (K,) confidence grid; y: (nc, K) metric per class; the class mean, smoothed
    (box filter, fraction 0.05), is drawn thick with its maximum in the legend."""
    fig, ax = _new_figure((9, 6))
    if 0 < len(names) <= MAX_LEGEND_CLASSES:
        for i, yi in enumerate(y):
            ax.plot(px, yi, linewidth=1, label=str(names[i]))
    elif len(y):
        ax.plot(px, y.T, linewidth=1, color="grey")
    if len(y):
        ym = smooth(y.mean(0), 0.05)
        ax.plot(px, ym, linewidth=3, color="blue", label=f"all classes {ym.max():.2f} at {px[ym.argmax()]:.3f}")
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{ylabel}-Confidence Curve")
    return _save(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, path: str | Path, names: Sequence[str] = (),
                          normalize: bool = True) -> Path:
    """Heatmap of a (nc + 1, nc + 1) confusion matrix (rows predicted, columns true, last = background).

    With ``normalize`` each column is divided by its sum. Cells < 0.005 are left blank; values are written in the
    cells when nc < 30; class names label the axes when there are fewer than 99 of them and one per class.
    """
    nc = matrix.shape[0] - 1
    array = matrix / ((matrix.sum(0, keepdims=True) + 1e-9) if normalize else 1)
    array = np.where(array < 0.005, np.nan, array)
    fig, ax = _new_figure((12, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN matrix
        im = ax.imshow(array, cmap="Blues", vmin=0.0, vmax=np.nanmax(array) if np.isfinite(array).any() else 1.0)
    fig.colorbar(im, ax=ax)
    if 0 < len(names) < 99 and len(names) == nc:
        ticks = [*map(str, names), "background"]
        ax.set_xticks(range(nc + 1), ticks, rotation=90, fontsize=8)
        ax.set_yticks(range(nc + 1), ticks, fontsize=8)
    if nc < 30:
        for (i, j), v in np.ndenumerate(array):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if v > 0.5 * np.nanmax(array) else "black")
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    ax.set_title("Confusion Matrix")
    return _save(fig, path)
