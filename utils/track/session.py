"""Tracking inside detect.py: one :class:`~utils.track.tracker.Tracker` per sequence (each video, each stream, and
the images of the source taken together as the frames of one sequence, in name order), the track IDs of each
frame's detections, and one MOTChallenge file per sequence (``tracks/<sequence>.txt``, utils.track.mot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.config.tracker import TrackerConfig, load_tracker_config
from utils.errors import UsageError
from utils.track.mot import mot_rows, write_mot
from utils.track.tracker import Tracker


def check_trackable(source: str | Path, n_images: int, n_videos: int, streaming: bool) -> None:
    """Raise UsageError unless the source has frames to follow: a video, a stream, or at least 2 images."""
    if not streaming and not n_videos and n_images < 2:
        raise UsageError(f"--track needs a video, a stream or a folder of frames; {source} gives a single image")


class TrackSession:
    """Per-sequence trackers of one detect.py run. ``frames_name`` names the sequence of the source's images."""

    def __init__(self, cfg: TrackerConfig | str | Path | None, frames_name: str):
        self.cfg = load_tracker_config(cfg)
        self.frames_name = frames_name or "frames"
        self.trackers: dict[str, Tracker] = {}
        self.lines: dict[str, list[str]] = {}
        self.count: dict[str, int] = {}

    def update(self, sequence: str | None, frame: int | None, det: np.ndarray, im0: np.ndarray) -> np.ndarray:
        """Track one frame: ``sequence`` (a video's or stream's output stem; None for the source's images),
        ``frame`` (its 1-based number; None: the next), ``det`` (n, 6) ``[x1, y1, x2, y2, conf, cls]`` original px,
        ``im0`` the BGR frame -> (n,) track IDs (-1: no confirmed track)."""
        seq = self.frames_name if sequence is None else sequence
        if seq not in self.trackers:
            self.trackers[seq], self.lines[seq], self.count[seq] = Tracker(self.cfg), [], 0
        self.count[seq] += 1
        f = self.count[seq] if frame is None else int(frame)
        ids = self.trackers[seq].update(det[:, :4], det[:, 4], det[:, 5], im0)
        self.lines[seq] += mot_rows(f, ids, det[:, :4], det[:, 4])
        return ids

    def write(self, folder: Path) -> list[Path]:
        """Write ``folder/<sequence>.txt`` for every sequence seen; returns the files."""
        return [write_mot(folder / f"{seq}.txt", lines) for seq, lines in self.lines.items()]


__all__ = ["TrackSession", "check_trackable"]
