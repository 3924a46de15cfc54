"""Figures of the Tiny Focal Loss weight: the weight curve for several k (like the paper's figures) and, for
``--tfl auto``, the training set's object areas with the chosen weight curve over them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from utils.hyp import Hyp  # noqa: E402
from utils.tfl import tfl_weights  # noqa: E402


def weight_curve(areas_px2: np.ndarray, k: float, s: float, piecewise: bool) -> np.ndarray:
    """TFL weight at each area (input px^2), as a side-by-side square target of that area."""
    side = torch.from_numpy(np.sqrt(areas_px2)).float()
    return tfl_weights(torch.stack((side, side), 1), k, s, piecewise).numpy()


def plot_tfl_curves(save_path: str | Path, ks: tuple[float, ...] = (0.6, 1.0, 1.6, 3.0, 6.0), s: float = 1024.0,
                    max_area: float | None = None) -> Path:
    """Weight vs object area for several k, continuous (left) and piecewise (right); returns the PNG path."""
    areas = np.linspace(0, max_area or 4 * s, 400)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, tight_layout=True)
    for ax, piecewise in zip(axes, (False, True)):
        for k in ks:
            ax.plot(areas, weight_curve(areas, k, s, piecewise), label=f"k = {k:g}")
        ax.axvline(s, color="grey", ls="--", lw=1, label=f"S = {s:g} px²")
        ax.set(title=f"TFL weight, {'piecewise' if piecewise else 'continuous'}", xlabel="object area w·h (px²)",
               ylim=(0.95, 2.05))
        ax.legend()
    axes[0].set_ylabel("weight w = exp(-k·wh/S) + 1")
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(save_path, dpi=150)
    plt.close(fig)
    return save_path


def plot_tfl_auto(areas_px2: np.ndarray, hyp: Hyp, save_path: str | Path) -> Path:
    """Histogram of training object areas (input px^2, log scale) with the chosen weight curve over it."""
    areas = np.asarray(areas_px2, dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4), tight_layout=True)
    bins = np.logspace(np.log10(max(areas.min(initial=1.0), 1.0)), np.log10(max(areas.max(initial=2.0), 2.0)), 50)
    ax.hist(areas, bins=bins, color="tab:blue", alpha=0.6)
    ax.set(xscale="log", xlabel="object area (input px²)", ylabel="objects")
    ax.axvline(hyp.tfl_s, color="grey", ls="--", lw=1)
    ax2 = ax.twinx()
    grid = np.logspace(np.log10(bins[0]), np.log10(bins[-1]), 300)
    ax2.plot(grid, weight_curve(grid, hyp.tfl_k, hyp.tfl_s, hyp.tfl_piecewise), color="tab:red")
    ax2.set(ylabel="TFL weight", ylim=(0.95, 2.05))
    ax.set_title(f"TFL auto: k = {hyp.tfl_k:g}, {'piecewise' if hyp.tfl_piecewise else 'continuous'}, "
                 f"S = {hyp.tfl_s:g} px²")
    save_path = Path(save_path)
    fig.savefig(save_path, dpi=150)
    plt.close(fig)
    return save_path
