"""utils/plots.py: the figure/save helper (one DPI, Agg canvas), metric curves, confusion matrix and TFL figures.
(plot_images / plot_labels / plot_results are tested with the data loader in tests/dataset/test_dataloaders.py.)"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from utils.eval.metrics import ConfusionMatrix, pr_curves
from utils.plots import (
    DPI,
    _tfl_curve,
    new_figure,
    plot_confusion_matrix,
    plot_metric_curves,
    plot_tfl_auto,
    plot_tfl_curves,
    save_figure,
)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_save_figure_writes_file_and_stream_at_one_dpi(tmp_path):
    fig, ax = new_figure((2, 1))
    assert isinstance(fig.canvas, FigureCanvasAgg)
    ax.plot([0, 1], [0, 1])
    buf = save_figure(fig, io.BytesIO())
    assert png_size(buf.getvalue()) == (2 * DPI, DPI)
    f = save_figure(fig, tmp_path / "new" / "dir" / "f.png")  # parent folders created
    assert f == tmp_path / "new" / "dir" / "f.png" and png_size(f.read_bytes()) == (2 * DPI, DPI)
    _, axes = new_figure((3, 1), 1, 3)
    assert axes.shape == (3,)


def test_metric_curves_and_confusion_matrix_written(tmp_path):
    # class 0: two detections (0.9 correct, 0.8 wrong), class 1: one correct detection at 0.7
    curves = pr_curves(np.array([[1], [0], [1]], bool), np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]),
                       np.array([0, 1]))
    files = plot_metric_curves(curves, tmp_path, {0: "a", 1: "b"}, prefix="val_")
    assert [f.name for f in files] == ["val_PR_curve.png", "val_F1_curve.png", "val_P_curve.png", "val_R_curve.png"]
    for f in files:
        assert png_size(f.read_bytes()) == (9 * DPI, 6 * DPI)
    cm = ConfusionMatrix(2)
    cm.process_batch(torch.tensor([[0.0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.9, 0]]),
                     torch.tensor([[0.0, 0, 0, 10, 10], [1, 20, 20, 30, 30]]))
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 0, 0], [0, 0, 0]])
    f = plot_confusion_matrix(cm.matrix, tmp_path / "confusion_matrix.png", ["a", "b"])
    assert png_size(f.read_bytes()) == (12 * DPI, 9 * DPI)
    empty = plot_confusion_matrix(np.zeros((3, 3)), tmp_path / "empty.png")  # no detections, no labels
    assert empty.stat().st_size > 0


def test_tfl_weight_curve_values():
    k, s = 1.6, 1024.0
    np.testing.assert_allclose(_tfl_curve(np.array([0.0, s, 4 * s]), k, s, False),
                               [2.0, 1 + math.exp(-k), 1 + math.exp(-4 * k)], rtol=1e-6)
    np.testing.assert_allclose(_tfl_curve(np.array([0.0, s - 1, s]), k, s, True),
                               [2.0, 1 + math.exp(-k * (s - 1) / s), 1.0], rtol=1e-6)


def test_tfl_figures_written(tmp_path):
    f = plot_tfl_curves(tmp_path / "tfl" / "curves.png", ks=(0.6, 3.0), s=256.0)
    assert png_size(f.read_bytes()) == (10 * DPI, 4 * DPI)
    hyp = SimpleNamespace(tfl_k=1.6, tfl_s=1024.0, tfl_piecewise=True)
    for name, areas in (("auto.png", np.array([0.25, 16.0, 400.0, 5000.0])), ("none.png", np.zeros(0)),
                        ("same.png", np.full(5, 64.0))):
        f = plot_tfl_auto(areas, hyp, tmp_path / name)
        assert isinstance(f, Path) and png_size(f.read_bytes()) == (7 * DPI, 4 * DPI)
