"""A constant-velocity Kalman filter over boxes, batched with numpy.

State (8,): ``[cx, cy, w, h, vx, vy, vw, vh]`` in original-image px and px per frame; measurement (4,):
``[cx, cy, w, h]`` px. Noise standard deviations are fractions of the object's size with floors in px, so a 6-px
object is not given a 0.3-px uncertainty that no detector achieves. The initial velocity is unknown (0) with a
standard deviation of half the object's size per frame: tiny objects move a large share of their size between
frames, and a small initial spread would make the filter learn their speed over many frames.
"""

from __future__ import annotations

import numpy as np

STD_POS = 1 / 20  # measurement and position process noise, fraction of the size
STD_VEL = 1 / 10  # velocity process noise per frame, fraction of the size
STD_VEL_INIT = 1 / 2  # initial velocity spread, fraction of the size
FLOOR_POS = 1.0  # px: no detector places a box better than this
FLOOR_VEL = 0.5  # px / frame

F = np.eye(8)
F[:4, 4:] = np.eye(4)  # x += v each frame
H = np.eye(4, 8)


def _sizes(wh: np.ndarray) -> np.ndarray:
    """(..., 4) sizes [w, h, w, h] px from (..., 2) [w, h], for per-coordinate noise."""
    wh = np.abs(wh)
    return np.concatenate([wh, wh], -1)


def initiate(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A track from a measurement ``z`` (4,) [cx, cy, w, h] px -> (mean (8,), covariance (8, 8))."""
    s = _sizes(z[2:4])
    std = np.concatenate([np.maximum(2 * STD_POS * s, FLOOR_POS), np.maximum(STD_VEL_INIT * s, FLOOR_VEL)])
    return np.concatenate([z, np.zeros(4)]), np.diag(std**2)


def predict(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One frame ahead for n tracks at once: mean (n, 8), cov (n, 8, 8) -> the same shapes."""
    if not len(mean):
        return mean, cov
    s = _sizes(mean[:, 2:4])
    std = np.concatenate([np.maximum(STD_POS * s, FLOOR_POS), np.maximum(STD_VEL * s, FLOOR_VEL)], 1)
    q = np.zeros_like(cov)
    q[:, np.arange(8), np.arange(8)] = std**2
    return mean @ F.T, F @ cov @ F.T + q


def update(mean: np.ndarray, cov: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct n tracks at once (mean (n, 8), cov (n, 8, 8)) with their measurements ``z`` (n, 4) [cx, cy, w, h]
    px -> the corrected (mean, cov)."""
    if not len(mean):
        return mean, cov
    r = np.zeros((len(mean), 4, 4))
    r[:, np.arange(4), np.arange(4)] = np.maximum(STD_POS * _sizes(mean[:, 2:4]), FLOOR_POS) ** 2
    ph = cov[:, :, :4]  # cov @ H.T: H picks the first 4 state entries
    s = ph[:, :4, :] + r  # H @ cov @ H.T + R, (n, 4, 4)
    k = np.linalg.solve(s, ph.transpose(0, 2, 1)).transpose(0, 2, 1)  # gain (n, 8, 4); s is symmetric
    mean = mean + (k @ (z - mean[:, :4])[:, :, None])[:, :, 0]
    cov = cov - k @ s @ k.transpose(0, 2, 1)
    return mean, (cov + cov.transpose(0, 2, 1)) / 2


def to_xyxy(mean: np.ndarray) -> np.ndarray:
    """(n, 8) states -> (n, 4) xyxy boxes px."""
    c, wh = mean[:, :2], np.abs(mean[:, 2:4])
    return np.concatenate([c - wh / 2, c + wh / 2], 1)


def to_cxcywh(xyxy: np.ndarray) -> np.ndarray:
    """(n, 4) xyxy px -> (n, 4) measurements [cx, cy, w, h] px."""
    return np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
