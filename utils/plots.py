"""Every figure of the project: batch mosaics (``plot_images``), label statistics (``plot_labels``), training
curves (``plot_results``), validation curves and the confusion matrix (``plot_metric_curves``,
``plot_confusion_matrix``), the Tiny Focal Loss weight (``plot_tfl_curves``, ``plot_tfl_auto``) and mAP against
the inference size (``plot_val_study``).

Each figure is a matplotlib ``Figure`` on its own Agg canvas (``new_figure``), written by ``save_figure`` at one
resolution (``DPI``): no pyplot, so no global figure registry and no backend switch; importing or calling this
module leaves the caller's matplotlib configuration as it was, and figures may be drawn from threads. Boxes on
images are drawn with OpenCV. The numbers come from elsewhere (utils/eval/metrics.py, utils/loss/tfl.py): nothing here
computes a metric.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.config.hyp import Hyp
from utils.errors import UserError
from utils.eval.metrics import PRCurves, smooth
from utils.loss.tfl import tfl_weights
from utils.ops.boxes import xywh2xyxy

DPI = 150  # every saved figure; a 9 x 6 in curve is 1350 x 900 px
MAX_LEGEND_CLASSES = 20  # above this, per-class curves are drawn grey without a legend

# 20 distinct colours (RGB), cycled by class id
PALETTE = ((255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49), (72, 249, 10),
           (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (0, 194, 255),
           (52, 69, 147), (100, 115, 255), (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255),
           (255, 149, 200), (255, 55, 199))


def color(i: int) -> tuple[int, int, int]:
    """RGB colour of class ``i``."""
    return PALETTE[int(i) % len(PALETTE)]


def new_figure(figsize: tuple[float, float], nrows: int = 1, ncols: int = 1, **subplots_kw) -> tuple[Figure, Any]:
    """A ``Figure`` (size in inches, tight layout) on its own Agg canvas, and its axes as ``Figure.subplots``
    returns them (one Axes for 1 x 1, else an array)."""
    fig = Figure(figsize=figsize, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def save_figure(fig: Figure, dest: str | Path | BinaryIO) -> Path | BinaryIO:
    """Write ``fig`` at ``DPI`` to a file (format from the suffix, parent folders created) or, as PNG, to a binary
    stream. Returns ``dest`` (a Path for file names)."""
    if isinstance(dest, str | Path):
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(dest, dpi=DPI)
    else:
        fig.savefig(dest, format="png", dpi=DPI)
    return dest


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def plot_images(images: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, paths=None,
                fname: str | Path = "images.jpg", names: dict | list | None = None,
                max_subplots: int = 16, max_size: int = 1920) -> Path:
    """Save a grid of up to ``max_subplots`` images of a batch with their boxes.

    Args:
        images: (B, 3, H, W) RGB, uint8 0-255 or float 0-1.
        targets: (n, 6) labels ``[img_idx, cls, x, y, w, h]`` or (n, 7) predictions ``[..., conf]``; boxes are
            normalised when all <= 1.01, else input pixels. Predictions are drawn dashed-free with their confidence.
        paths: image paths, their file names are written on the tiles.
    Returns:
        the saved file.
    """
    ims = _numpy(images)
    if ims.ndim == 3:
        ims = ims[None]
    if ims.size and ims.max() <= 1.0:
        ims = ims * 255
    t = _numpy(targets).reshape(-1, _numpy(targets).shape[-1] if len(targets) else 6)
    bs, _, h, w = ims.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs**0.5)  # tiles per side
    scale = min(1.0, max_size / (ns * max(h, w)))
    th, tw = math.ceil(h * scale), math.ceil(w * scale)
    canvas = np.full((ns * th, ns * tw, 3), 255, np.uint8)
    lw = max(1, round(th / 200))
    for i in range(bs):
        x0, y0 = tw * (i % ns), th * (i // ns)
        tile = ims[i].transpose(1, 2, 0).clip(0, 255).astype(np.uint8)
        if scale < 1:
            tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
        canvas[y0:y0 + th, x0:x0 + tw] = tile
        cv2.rectangle(canvas, (x0, y0), (x0 + tw - 1, y0 + th - 1), (255, 255, 255), 1)
        if paths is not None and i < len(paths):
            cv2.putText(canvas, Path(paths[i]).name[:40], (x0 + 4, y0 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (220, 220, 220), 1, cv2.LINE_AA)
        ti = t[t[:, 0] == i]
        if not len(ti):
            continue
        boxes = xywh2xyxy(ti[:, 2:6].copy())
        boxes *= np.array([tw, th, tw, th]) if boxes.max() <= 1.01 else scale
        boxes += np.array([x0, y0, x0, y0])
        for j, b in enumerate(boxes):
            cls = int(ti[j, 1])
            conf = ti[j, 6] if ti.shape[1] > 6 else None
            if conf is not None and conf < 0.25:
                continue
            c = color(cls)
            p1, p2 = (int(b[0]), int(b[1])), (int(b[2]), int(b[3]))
            cv2.rectangle(canvas, p1, p2, c, lw)
            name = names[cls] if names is not None and cls in (names if isinstance(names, dict) else
                                                                   range(len(names))) else str(cls)
            text = f"{name} {conf:.2f}" if conf is not None else name
            cv2.putText(canvas, text, (p1[0], max(p1[1] - 2, y0 + 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, c, 1,
                        cv2.LINE_AA)
    fname = Path(fname)
    fname.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(fname), canvas[..., ::-1])
    return fname


def plot_labels(labels: np.ndarray, names: dict | list, save_dir: str | Path = ".", tiny_area: float = 1024,
                imgsz: int = 640, shapes: np.ndarray | None = None) -> Path:
    """Save ``labels.jpg``: class counts, object area and side histograms (with the tiny/big threshold) and centres.

    Args:
        labels: (n, 5) [cls, x, y, w, h] normalised (all images' labels concatenated).
        tiny_area: tiny/big dividing area in input px^2 (COCO small: 32 * 32).
        imgsz: network input size; sizes in input pixels = normalised size x imgsz (exact for square images).
        shapes: optional (n, 2) original (width, height) of each label's image, for exact sizes in input pixels of
            non-square images (long side resized to imgsz).
    """
    lb = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    names = dict(enumerate(names)) if isinstance(names, list | tuple) else dict(names)
    nc = max(len(names), int(lb[:, 0].max()) + 1 if len(lb) else 0)
    if shapes is not None:
        s = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
        wh = lb[:, 3:5] * s * (imgsz / s.max(1, keepdims=True))
    else:
        wh = lb[:, 3:5] * imgsz
    area = wh.prod(1)
    fig, ax = new_figure((10, 8), 2, 2)
    ax = ax.ravel()
    counts = np.bincount(lb[:, 0].astype(int), minlength=nc)
    ax[0].bar(range(nc), counts, color=[np.array(color(i)) / 255 for i in range(nc)])
    ax[0].set_xticks(range(nc), [names.get(i, str(i)) for i in range(nc)], rotation=90 if nc > 10 else 0,
                     fontsize=8 if nc > 10 else 10)
    ax[0].set_ylabel("instances")
    ax[0].set_title(f"{len(lb)} objects, {nc} classes")
    tiny = float((area < tiny_area).mean()) if len(lb) else 0.0
    if len(lb):
        bins = np.logspace(np.log10(max(area.min(), 1.0)), np.log10(max(area.max(), 2.0)), 40)
        ax[1].hist(area.clip(1.0), bins=bins, color="tab:blue")
        ax[1].set_xscale("log")
        side = np.sqrt(area)
        ax[2].hist(side, bins=40, color="tab:green")
        ax[3].hist2d(lb[:, 1], lb[:, 2], bins=30, range=((0, 1), (0, 1)), cmap="Blues")
    ax[1].axvline(tiny_area, color="red", ls="--", label=f"tiny < {tiny_area:g} px² ({tiny:.0%} of objects)")
    ax[1].set_xlabel(f"object area (input px², imgsz {imgsz})")
    ax[1].legend()
    ax[2].axvline(math.sqrt(tiny_area), color="red", ls="--", label=f"side {math.sqrt(tiny_area):g} px")
    ax[2].set_xlabel("object side sqrt(w·h) (input px)")
    ax[2].legend()
    ax[3].set_xlabel("x centre")
    ax[3].set_ylabel("y centre")
    ax[3].set_xlim(0, 1)
    ax[3].set_ylim(1, 0)
    return save_figure(fig, Path(save_dir) / "labels.jpg")


def plot_results(csv_file: str | Path = "results.csv", out: str | Path | None = None) -> Path:
    """Save ``results.png`` beside ``csv_file``: every numeric column of a results CSV against its first column
    (``epoch``). Raises FileNotFoundError / ValueError naming the file when it is missing or has no data rows."""
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise FileNotFoundError(f"results file not found: {csv_file}")
    with open(csv_file, newline="") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if r]
    if len(rows) < 2:
        raise UserError(f"{csv_file}: no data rows to plot")
    header, data = rows[0], rows[1:]

    def num(v: str) -> float:
        try:
            return float(v)
        except ValueError:
            return math.nan

    values = np.array([[num(v) for v in r] + [math.nan] * (len(header) - len(r)) for r in data])[:, :len(header)]
    x = values[:, 0]
    cols = [i for i in range(1, len(header)) if np.isfinite(values[:, i]).any()]
    n = max(len(cols), 1)
    nx = min(5, n)
    ny = math.ceil(n / nx)
    fig, axes = new_figure((3 * nx, 2.6 * ny), ny, nx, squeeze=False)
    axes = axes.ravel()
    for ax, i in zip(axes, cols):
        ax.plot(x, values[:, i], marker=".", lw=1.5, ms=5)
        ax.set_title(header[i], fontsize=10)
    for ax in axes[len(cols):]:
        ax.axis("off")
    return save_figure(fig, Path(out) if out else csv_file.with_name("results.png"))


def plot_pr_curve(px: np.ndarray, pr: np.ndarray, ap: np.ndarray, path: str | Path,
                  names: Sequence[str] = ()) -> Path:
    """Precision-recall curves at IoU 0.5. px: (K,) recall grid in [0, 1]; pr: (nc, K) precision per class;
    ap: (nc, T) AP per IoU threshold (column 0 is written in the legend)."""
    fig, ax = new_figure((9, 6))
    if 0 < len(names) <= MAX_LEGEND_CLASSES:
        for i, y in enumerate(pr):
            ax.plot(px, y, linewidth=1, label=f"{names[i]} {ap[i, 0]:.3f}")
    elif len(pr):
        ax.plot(px, pr.T, linewidth=1, color="grey")
    if len(pr):
        ax.plot(px, pr.mean(0), linewidth=3, color="blue", label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1), title="Precision-Recall Curve")
    return save_figure(fig, path)


def plot_mc_curve(px: np.ndarray, y: np.ndarray, path: str | Path, names: Sequence[str] = (),
                  xlabel: str = "Confidence", ylabel: str = "Metric") -> Path:
    """Metric-confidence curves. px: (K,) confidence grid in [0, 1]; y: (nc, K) metric per class; the class mean,
    smoothed (box filter, fraction 0.05), is drawn thick with its maximum in the legend."""
    fig, ax = new_figure((9, 6))
    if 0 < len(names) <= MAX_LEGEND_CLASSES:
        for i, yi in enumerate(y):
            ax.plot(px, yi, linewidth=1, label=str(names[i]))
    elif len(y):
        ax.plot(px, y.T, linewidth=1, color="grey")
    if len(y):
        ym = smooth(y.mean(0), 0.05)
        ax.plot(px, ym, linewidth=3, color="blue", label=f"all classes {ym.max():.2f} at {px[ym.argmax()]:.3f}")
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=f"{ylabel}-Confidence Curve")
    return save_figure(fig, path)


def plot_metric_curves(curves: PRCurves, save_dir: str | Path = ".", names: dict[int, str] | None = None,
                       prefix: str = "") -> list[Path]:
    """Save ``{prefix}PR_curve.png`` and the F1/P/R-confidence curves of ``curves`` (utils.eval.metrics.pr_curves)
    into ``save_dir``; ``names`` maps class ids to names. Returns the four paths."""
    names = names or {}
    labels = [str(names.get(int(c), int(c))) for c in curves.classes]
    d = Path(save_dir)
    return [plot_pr_curve(curves.px, curves.pr, curves.ap, d / f"{prefix}PR_curve.png", labels),
            plot_mc_curve(curves.px, curves.f1, d / f"{prefix}F1_curve.png", labels, ylabel="F1"),
            plot_mc_curve(curves.px, curves.p, d / f"{prefix}P_curve.png", labels, ylabel="Precision"),
            plot_mc_curve(curves.px, curves.r, d / f"{prefix}R_curve.png", labels, ylabel="Recall")]


def plot_confusion_matrix(matrix: np.ndarray, path: str | Path, names: Sequence[str] = (),
                          normalize: bool = True) -> Path:
    """Heatmap of a (nc + 1, nc + 1) confusion matrix (``ConfusionMatrix.matrix``: rows predicted, columns true,
    last = background). With ``normalize`` each column is divided by its sum. Cells < 0.005 are left blank; values
    are written in the cells when nc < 30; class names label the axes when there are fewer than 99, one per class.
    """
    nc = matrix.shape[0] - 1
    array = matrix / ((matrix.sum(0, keepdims=True) + 1e-9) if normalize else 1)
    array = np.where(array < 0.005, np.nan, array)
    vmax = np.nanmax(array) if np.isfinite(array).any() else 1.0  # all blank: any scale
    fig, ax = new_figure((12, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN matrix
        im = ax.imshow(array, cmap="Blues", vmin=0.0, vmax=vmax)
    fig.colorbar(im, ax=ax)
    if 0 < len(names) < 99 and len(names) == nc:
        ticks = [*map(str, names), "background"]
        ax.set_xticks(range(nc + 1), ticks, rotation=90, fontsize=8)
        ax.set_yticks(range(nc + 1), ticks, fontsize=8)
    if nc < 30:
        for (i, j), v in np.ndenumerate(array):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if v > 0.5 * vmax else "black")
    ax.set(xlabel="True", ylabel="Predicted", title="Confusion Matrix")
    return save_figure(fig, path)


def _tfl_curve(areas_px2: np.ndarray, k: float, s: float, piecewise: bool) -> np.ndarray:
    """TFL weight at each area (input px^2), for a square target of that area."""
    side = torch.from_numpy(np.sqrt(areas_px2)).float()
    return tfl_weights(torch.stack((side, side), 1), k, s, piecewise).numpy()


def plot_tfl_curves(save_path: str | Path, ks: tuple[float, ...] = (0.6, 1.0, 1.6, 3.0, 6.0), s: float = 1024.0,
                    max_area: float | None = None) -> Path:
    """TFL weight vs object area (input px^2, 0 to ``max_area`` or 4 S) for several k, continuous (left) and
    piecewise (right), like the paper's figures; returns the PNG path."""
    areas = np.linspace(0, max_area or 4 * s, 400)
    fig, axes = new_figure((10, 4), 1, 2, sharey=True)
    for ax, piecewise in zip(axes, (False, True)):
        for k in ks:
            ax.plot(areas, _tfl_curve(areas, k, s, piecewise), label=f"k = {k:g}")
        ax.axvline(s, color="grey", ls="--", lw=1, label=f"S = {s:g} px²")
        ax.set(title=f"TFL weight, {'piecewise' if piecewise else 'continuous'}", xlabel="object area w·h (px²)",
               ylim=(0.95, 2.05))
        ax.legend()
    axes[0].set_ylabel("weight w = exp(-k·wh/S) + 1")
    return save_figure(fig, save_path)


def plot_tfl_auto(areas_px2: np.ndarray, hyp: Hyp, save_path: str | Path) -> Path:
    """``--tfl auto``: histogram of the training objects' areas (input px^2, log scale) with the weight curve of
    ``hyp`` (tfl_k, tfl_s, tfl_piecewise) over it; returns the PNG path."""
    areas = np.asarray(areas_px2, dtype=float)
    lo = max(areas.min(), 1.0) if areas.size else 1.0  # log axis: areas under 1 px² share the first bin
    hi = max(areas.max(), 2 * lo) if areas.size else 2.0
    bins = np.logspace(np.log10(lo), np.log10(hi), 50)
    fig, ax = new_figure((7, 4))
    ax.hist(areas.clip(lo), bins=bins, color="tab:blue", alpha=0.6)
    ax.set(xscale="log", xlabel="object area (input px²)", ylabel="objects")
    ax.axvline(hyp.tfl_s, color="grey", ls="--", lw=1)
    ax2 = ax.twinx()
    grid = np.logspace(np.log10(lo), np.log10(hi), 300)
    ax2.plot(grid, _tfl_curve(grid, hyp.tfl_k, hyp.tfl_s, hyp.tfl_piecewise), color="tab:red")
    ax2.set(ylabel="TFL weight", ylim=(0.95, 2.05))
    ax.set_title(f"TFL auto: k = {hyp.tfl_k:g}, {'piecewise' if hyp.tfl_piecewise else 'continuous'}, "
                 f"S = {hyp.tfl_s:g} px²")
    return save_figure(fig, save_path)


def plot_val_study(imgsz: Sequence[int], curves: dict[str, Sequence[float]], ms_per_image: Sequence[float],
                   path: str | Path) -> Path:
    """``val.py --task study``: each of ``curves`` ({label: one mAP per size}, e.g. mAP@.5, mAP@.5:.95 and the tiny
    bucket's mAP@.5) against the inference size ``imgsz`` (input px) on the left, and the time per image (ms) on
    the right. NaN values (a bucket without objects) leave gaps. Returns the file path."""
    fig, (ax, ax2) = new_figure((10, 4), 1, 2)
    for label, y in curves.items():
        ax.plot(imgsz, y, marker=".", ms=8, lw=1.5, label=label)
    ax.set(xlabel="--imgsz (input px)", ylabel="mAP", ylim=(0, None), title="accuracy vs inference size")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax2.plot(imgsz, ms_per_image, marker=".", ms=8, lw=1.5, color="tab:grey")
    ax2.set(xlabel="--imgsz (input px)", ylabel="ms per image (pre-process + inference + NMS)", ylim=(0, None),
            title="time vs inference size")
    ax2.grid(alpha=0.3)
    return save_figure(fig, path)


__all__ = ["DPI", "PALETTE", "color", "new_figure", "plot_confusion_matrix", "plot_images", "plot_labels",
           "plot_mc_curve", "plot_metric_curves", "plot_pr_curve", "plot_results", "plot_tfl_auto",
           "plot_tfl_curves", "plot_val_study", "save_figure"]
