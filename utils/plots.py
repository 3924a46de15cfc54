"""Plots: a batch mosaic with boxes (``plot_images``), label statistics (``plot_labels``), training curves
(``plot_results``). Matplotlib figures are drawn with the Agg canvas directly (no pyplot, no global backend
change); boxes are drawn with OpenCV.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure

from utils.boxes import xywh2xyxy

# 20 distinct colours (RGB), cycled by class id
PALETTE = ((255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49), (72, 249, 10),
           (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (0, 194, 255),
           (52, 69, 147), (100, 115, 255), (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255),
           (255, 149, 200), (255, 55, 199))


def color(i: int) -> tuple[int, int, int]:
    """RGB colour of class ``i``."""
    return PALETTE[int(i) % len(PALETTE)]


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
    fig = Figure(figsize=(10, 8), tight_layout=True)
    ax = fig.subplots(2, 2).ravel()
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
    f = Path(save_dir) / "labels.jpg"
    f.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(f, dpi=100)
    return f


def plot_results(csv_file: str | Path = "results.csv", out: str | Path | None = None) -> Path:
    """Save ``results.png`` beside ``csv_file``: every numeric column of a results CSV against its first column
    (``epoch``). Raises FileNotFoundError / ValueError naming the file when it is missing or has no data rows."""
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise FileNotFoundError(f"results file not found: {csv_file}")
    with open(csv_file, newline="") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if r]
    if len(rows) < 2:
        raise ValueError(f"{csv_file}: no data rows to plot")
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
    fig = Figure(figsize=(3 * nx, 2.6 * ny), tight_layout=True)
    axes = np.atleast_1d(fig.subplots(ny, nx, squeeze=False).ravel())
    for ax, i in zip(axes, cols):
        ax.plot(x, values[:, i], marker=".", lw=1.5, ms=5)
        ax.set_title(header[i], fontsize=10)
    for ax in axes[len(cols):]:
        ax.axis("off")
    out = Path(out) if out else csv_file.with_name("results.png")
    fig.savefig(out, dpi=100)
    return out


__all__ = ["plot_images", "plot_labels", "plot_results", "color", "PALETTE"]
