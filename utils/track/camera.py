"""Camera-motion compensation: the global motion between consecutive frames, estimated with OpenCV and applied to
the Kalman states of predicted tracks, as BoT-SORT does. Two estimators:
- ``sparse``: corners, pyramidal Lucas-Kanade optical flow and a RANSAC partial affine (rotation, uniform scale and
  translation), BoT-SORT's choice;
- ``phase``: phase correlation of the whole frame (translation only), about 3x cheaper; a drone's frame-to-frame
  motion is mostly translation.
Frames are BGR uint8, original px."""

from __future__ import annotations

import cv2
import numpy as np

IDENTITY = np.eye(2, 3)
METHODS = ("sparse", "phase")


class CameraMotion:
    """Call with each frame in order; returns the (2, 3) affine that maps the previous frame's px to this frame's
    px (the identity for the first frame or when too few corners are followed). Frames are shrunk by
    ``downscale`` first (speed); the translation is scaled back to full-resolution px. The corners that RANSAC
    kept are followed into the next frame; new ones are found only when fewer than half are left (speed)."""

    def __init__(self, downscale: int = 4, max_corners: int = 100, method: str = "sparse"):
        if method not in METHODS:
            raise ValueError(f"unknown camera-motion method {method!r}; choose from {list(METHODS)}")
        self.downscale, self.max_corners, self.method = downscale, max_corners, method
        self.prev: np.ndarray | None = None
        self.window: np.ndarray | None = None  # Hanning window of the phase correlation
        self.pts: np.ndarray | None = None  # (k, 1, 2) float32 corners in ``prev``, downscaled px

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.downscale > 1:  # bilinear, then grey: ~20x cheaper than INTER_AREA on BGR, and corners survive it
            h, w = frame.shape[:2]
            frame = cv2.resize(frame, (max(w // self.downscale, 1), max(h // self.downscale, 1)),
                               interpolation=cv2.INTER_LINEAR)
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        prev, pts, self.prev, self.pts = self.prev, self.pts, gray, None
        if prev is None or prev.shape != gray.shape:
            return IDENTITY.copy()
        if self.method == "phase":
            return self._phase(prev, gray)
        if pts is None or len(pts) < self.max_corners // 2:
            pts = cv2.goodFeaturesToTrack(prev, self.max_corners, qualityLevel=0.01, minDistance=4, blockSize=3)
        if pts is None or len(pts) < 4:
            return IDENTITY.copy()
        nxt, ok, _ = cv2.calcOpticalFlowPyrLK(prev, gray, pts, None, winSize=(11, 11), maxLevel=3)
        ok = ok.ravel() == 1
        if ok.sum() < 4:
            return IDENTITY.copy()
        a, inliers = cv2.estimateAffinePartial2D(pts[ok], nxt[ok], method=cv2.RANSAC, ransacReprojThreshold=1.0)
        if a is None:
            return IDENTITY.copy()
        self.pts = nxt[ok][inliers.ravel() == 1]
        a = a.astype(np.float64)
        a[:, 2] *= self.downscale
        return a

    def _phase(self, prev: np.ndarray, gray: np.ndarray) -> np.ndarray:
        if self.window is None or self.window.shape != gray.shape:
            self.window = cv2.createHanningWindow(gray.shape[::-1], cv2.CV_32F)
        (dx, dy), response = cv2.phaseCorrelate(np.float32(prev), np.float32(gray), self.window)
        if response < 0.02:  # no clear peak (a flat or changed scene): assume no motion
            return IDENTITY.copy()
        return np.array([[1.0, 0.0, dx * self.downscale], [0.0, 1.0, dy * self.downscale]])


def warp_states(mean: np.ndarray, cov: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move n Kalman states (mean (n, 8), cov (n, 8, 8), utils.track.kalman) by the affine ``a`` (2, 3): centres
    are mapped, velocities rotated and scaled, sizes scaled by the affine's uniform scale."""
    if not len(mean):
        return mean, cov
    r, t = a[:, :2], a[:, 2]
    s = float(np.sqrt(abs(np.linalg.det(r))))
    m = np.zeros((8, 8))
    m[0:2, 0:2], m[2:4, 2:4], m[4:6, 4:6], m[6:8, 6:8] = r, s * np.eye(2), r, s * np.eye(2)
    mean = mean @ m.T
    mean[:, :2] += t
    return mean, m @ cov @ m.T
