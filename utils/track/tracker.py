"""A ByteTrack-style multi-object tracker for tiny objects.

Each frame (``Tracker.update``):
1. Every track is predicted one frame ahead by its Kalman filter (utils.track.kalman); with ``camera_motion`` the
   predictions are then moved by the frame-to-frame camera motion (utils.track.camera).
2. Stage 1: detections scoring >= ``track_high_thresh`` are matched to tracked and lost tracks (Hungarian, least
   similarity ``match_thresh``). A lost track that matches is re-identified: it keeps its ID.
3. Stage 2: detections scoring in [``track_low_thresh``, ``track_high_thresh``) are matched to the tracks seen in the
   previous frame that stage 1 left (least similarity ``low_match_thresh``); tracked ones still unmatched are lost.
4. Stage 3: high-score detections still unmatched are matched to tracks born in the previous frame
   (``unconfirmed_match_thresh``); a matched newborn track is confirmed and gets the next ID, an unmatched one is
   dropped (a one-frame detection never gets an ID).
5. Births: a high-score detection still unmatched and scoring >= ``new_track_thresh`` starts a newborn track (in
   the first frame it is confirmed at once). Deaths: a lost track unmatched for more than ``track_buffer`` frames is
   deleted; its ID is never reused.

IDs are 1, 2, 3, ... in order of confirmation. The output is the ID of each input detection (-1 when it belongs to
no confirmed track); the box reported for a tracked object is its detection's box. Boxes are xyxy original px.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.config.tracker import TrackerConfig, load_tracker_config
from utils.track import kalman
from utils.track.association import assign, similarity
from utils.track.camera import CameraMotion, warp_states

NEW, TRACKED, LOST = "new", "tracked", "lost"


@dataclass
class Track:
    mean: np.ndarray  # (8,) Kalman state, px and px / frame
    cov: np.ndarray  # (8, 8)
    score: float
    cls: int
    state: str = NEW
    id: int = -1  # -1 until confirmed
    last_frame: int = 0  # the last frame it was matched in (1-based)


class Tracker:
    """Tracks detections through the frames of ONE video or stream (make one tracker per source)."""

    def __init__(self, cfg: TrackerConfig | str | dict | None = None):
        self.cfg = load_tracker_config(cfg)
        self.tracks: list[Track] = []
        self.frame = 0
        self.next_id = 1
        self.cmc = CameraMotion(self.cfg.cmc_downscale, self.cfg.cmc_max_corners, self.cfg.cmc_method) \
            if self.cfg.camera_motion else None

    def _match(self, pool: list[Track], boxes: np.ndarray, det_idx: np.ndarray, least: float
               ) -> tuple[list[tuple[Track, int]], list[Track], list[int]]:
        """Assign ``pool`` to detections ``det_idx`` -> ([(track, det index)], unmatched tracks, unmatched dets)."""
        pred = kalman.to_xyxy(np.array([t.mean for t in pool])) if pool else np.zeros((0, 4))
        m, ut, ud = assign(similarity(self.cfg, pred, boxes[det_idx]), least)
        return [(pool[i], int(det_idx[j])) for i, j in m], [pool[i] for i in ut], [int(det_idx[j]) for j in ud]

    def _correct(self, pairs: list[tuple[Track, int]], boxes: np.ndarray, scores: np.ndarray,
                  classes: np.ndarray) -> None:
        """Kalman-correct every matched track with its detection, all at once."""
        if not pairs:
            return
        d = np.array([j for _, j in pairs])
        mean, cov = kalman.update(np.array([t.mean for t, _ in pairs]), np.array([t.cov for t, _ in pairs]),
                                  kalman.to_cxcywh(boxes[d]))
        for (t, j), m, c in zip(pairs, mean, cov):
            t.mean, t.cov, t.score, t.cls, t.last_frame = m, c, float(scores[j]), int(classes[j]), self.frame

    def _confirm(self, t: Track) -> None:
        t.state, t.id = TRACKED, self.next_id
        self.next_id += 1

    def update(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None = None,
               frame: np.ndarray | None = None) -> np.ndarray:
        """One frame: detections ``boxes`` (n, 4) xyxy original px, ``scores`` (n,), ``classes`` (n,) or None, and
        the BGR ``frame`` (needed for camera-motion compensation; without it none is applied) -> (n,) int64 track
        IDs, -1 for detections that belong to no confirmed track."""
        cfg = self.cfg
        self.frame += 1
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        classes = np.zeros(len(boxes), np.int64) if classes is None else np.asarray(classes).astype(np.int64)
        ids = np.full(len(boxes), -1, np.int64)
        if self.tracks:  # 1. predict, then move by the camera's motion
            mean, cov = kalman.predict(np.array([t.mean for t in self.tracks]), np.array([t.cov for t in self.tracks]))
            if self.cmc is not None and frame is not None:
                mean, cov = warp_states(mean, cov, self.cmc(frame))
            for t, m, c in zip(self.tracks, mean, cov):
                t.mean, t.cov = m, c
        elif self.cmc is not None and frame is not None:
            self.cmc(frame)  # remember the frame for the next estimate
        high = np.flatnonzero(scores >= cfg.track_high_thresh)
        low = np.flatnonzero((scores >= cfg.track_low_thresh) & (scores < cfg.track_high_thresh))
        newborn = [t for t in self.tracks if t.state == NEW]
        pool = [t for t in self.tracks if t.state != NEW]
        # 2. high-score detections against tracked and lost tracks
        matched, rest, high_left = self._match(pool, boxes, high, cfg.match_thresh)
        # 3. low-score detections against tracks seen in the previous frame
        recent = [t for t in rest if t.state == TRACKED]
        matched2, unmatched, _ = self._match(recent, boxes, low, cfg.low_match_thresh)
        for t, _ in [*matched, *matched2]:
            t.state = TRACKED  # a lost track matched again is re-identified
        for t in unmatched:
            t.state = LOST
        # 4. newborn tracks take the high-score detections that are left
        matched3, stillborn, high_left = self._match(newborn, boxes, np.array(high_left, np.int64),
                                                     cfg.unconfirmed_match_thresh)
        for t, _ in matched3:
            self._confirm(t)
        self._correct([*matched, *matched2, *matched3], boxes, scores, classes)
        for t, d in [*matched, *matched2, *matched3]:
            ids[d] = t.id
        dead = {id(t) for t in stillborn}
        dead |= {id(t) for t in self.tracks if t.state == LOST and self.frame - t.last_frame > cfg.track_buffer}
        self.tracks = [t for t in self.tracks if id(t) not in dead]
        # 5. births
        for d in high_left:
            if scores[d] >= cfg.new_track_thresh:
                mean, cov = kalman.initiate(kalman.to_cxcywh(boxes[d][None])[0])
                t = Track(mean, cov, float(scores[d]), int(classes[d]), last_frame=self.frame)
                if self.frame == 1:
                    self._confirm(t)
                    ids[d] = t.id
                self.tracks.append(t)
        return ids


__all__ = ["Track", "Tracker"]
