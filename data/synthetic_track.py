"""A synthetic drone-video tracking benchmark with ground-truth tracks (MOTChallenge layout), and a detector
simulator that turns the ground truth into noisy detections.

Scene: the aerial scene of data/aerial_scene.py (ground, fields, roofs, roads with lane marks, vegetation) drawn
once as a world larger than the view. Vehicles (car, van, truck of data/synthetic_aerial.py, label sides 4-32 px)
drive along the roads in both directions and lanes at their own speeds (``min_speed``-``max_speed`` px per frame),
some stop for a while and start again, faster ones drive through slower ones (the later-drawn one covers the other),
trees stand over parts of the roads, and vehicles enter and leave the world at its edges. The camera pans across the
world (``pan`` px per frame) and shakes (``jitter`` px std, integer offsets), so objects also enter and leave the
view. Each frame's ground truth: the tight box of a vehicle's in-view pixels with its visibility (share of its
pixels not covered by trees or other vehicles); rows with visibility below ``min_visible`` are written with
consider flag 0 (ignored by the evaluator).

``simulate_detections`` stands in for a detector so that tracking can be studied without one: each visible object
is found with a probability that grows with its size and visibility, its box is jittered by a share of its size,
its score is lower for smaller objects, and false positives appear anywhere. All boxes are view px (xyxy).

Layout written by ``write_sequence``: ``root/<name>/img1/000001.jpg ...``, ``gt/gt.txt``, ``det/det.txt`` and
``seqinfo.ini``. CLI: ``python data/synthetic_track.py --out datasets/synthetic-track --seeds 0 1 2``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the repository root is needed for utils/
    sys.path.insert(0, str(ROOT))

from data import aerial_scene as scene  # noqa: E402
from data import synthetic_aerial as aerial  # noqa: E402
from utils.track.mot import gt_rows, write_mot  # noqa: E402

STREAM = 0x7AC  # seeds are (seed, STREAM, ...): independent of the image generators' streams


@dataclass(frozen=True)
class TrackParams:
    """Generation parameters (px and frames)."""

    size: int = 640  # view side, px
    frames: int = 150
    vehicles: int = 120  # vehicles over the whole world and sequence
    min_side: float = 4.0  # label side sqrt(w * h), log-normal around side_median, clipped to [min_side, max_side]
    max_side: float = 32.0
    side_median: float = 9.0
    min_speed: float = 0.5  # px / frame
    max_speed: float = 5.0
    stop_prob: float = 0.3  # share of vehicles that stop once, for 10-40 frames
    pan: float = 2.0  # camera drift, px / frame
    jitter: float = 2.0  # camera shake, px std per frame
    trees: int = 25  # trees over roads
    min_visible: float = 0.3  # ground truth below this visibility is ignored in scoring
    fps: float = 25.0


@dataclass
class Vehicle:
    road: int
    start: float  # frame at which it is at arc position ``arc0``
    arc0: float
    speed: float  # px / frame along the road, signed by direction
    lane: float  # px offset across the road
    stop_at: float  # frame of the stop (inf: never)
    stop_len: float
    cls: int
    side: float
    aspect: float
    colour: np.ndarray


def _arc(v: Vehicle, t: float) -> float:
    """Arc position (px along the road's centre line) at frame ``t``: constant speed with one optional stop."""
    moving = t - v.start - np.clip(t - v.stop_at, 0, v.stop_len)
    return v.arc0 + v.speed * moving


def _vehicles(rng: np.random.Generator, p: TrackParams, roads: list[scene.Road]) -> list[Vehicle]:
    ap = aerial.AerialParams(side_median=p.side_median, min_side=p.min_side, max_side=p.max_side, big_frac=0.05,
                             big_min_side=min(24.0, p.max_side))
    out = []
    for side in aerial.sample_sides(rng, p.vehicles, ap):
        r = int(rng.integers(len(roads)))
        length = len(roads[r][0])
        direction = 1 if rng.random() < 0.5 else -1
        speed = direction * float(rng.uniform(p.min_speed, p.max_speed))
        enters = rng.random() < 0.5  # enters at the world's edge during the sequence, or is on the road at frame 1
        start = float(rng.uniform(0, p.frames)) if enters else 0.0
        arc0 = (0.0 if direction > 0 else length - 1.0) if enters else float(rng.uniform(0, length))
        stop = float(rng.uniform(start, p.frames)) if rng.random() < p.stop_prob else np.inf
        cls = aerial.choose_class(rng, float(side), (0, 1, 2), ap)
        out.append(Vehicle(r, start, arc0, speed, direction * roads[r][1] / 4, stop, float(rng.uniform(10, 40)),
                           cls, float(side), float(rng.uniform(*aerial.ASPECT[cls])), scene.palette_colour(rng)))
    return out


def _pose(v: Vehicle, t: int, roads: list[scene.Road]) -> tuple[np.ndarray, float] | None:
    """(centre xy world px, heading rad) at frame ``t``, or None when not on its road then."""
    if t < v.start:
        return None
    dense = roads[v.road][0]
    a = _arc(v, t)
    if not 0 <= a <= len(dense) - 2:
        return None
    i = int(a)
    d = dense[i + 1] - dense[i]
    d = d / max(float(np.linalg.norm(d)), 1e-6)
    c = dense[i] + (a - i) * (dense[i + 1] - dense[i]) + v.lane * np.array([-d[1], d[0]])
    return c, float(np.arctan2(d[1], d[0]) + (np.pi if v.speed < 0 else 0.0))


def camera_path(rng: np.random.Generator, p: TrackParams, world: int) -> np.ndarray:
    """(frames, 2) integer view origins (world px): a drift of ``pan`` px per frame in a random direction plus
    shake, kept inside the world."""
    a = rng.uniform(0, 2 * np.pi)
    drift = np.arange(p.frames)[:, None] * p.pan * np.array([np.cos(a), np.sin(a)])
    start = (world - p.size) / 2 - drift[-1] / 2
    o = start + drift + rng.normal(0, p.jitter, (p.frames, 2))
    return np.round(o.clip(0, world - p.size)).astype(int)


def make_sequence(p: TrackParams, seed: int):
    """Yield (frame (size, size, 3) uint8 BGR, ground truth (k, 7) ``[id, x1, y1, x2, y2, cls, visibility]`` view
    px) for frames 1..``frames`` of sequence ``seed``; IDs are 1-based vehicle numbers."""
    rng = np.random.default_rng((seed, STREAM))
    world = int(p.size + p.pan * p.frames + 6 * p.jitter + 64)
    bg, roads = scene.background(rng, world)
    used = np.zeros((world, world), bool)
    while len(roads) < 4:
        roads.append(scene.draw_road(bg, rng, used))
    for _ in range(world * world // 8000):  # bushes and look-alikes: texture for the camera-motion estimate
        scene.draw_tree(bg, rng, rng.uniform(0, world, 2), float(rng.uniform(2, 6)), None)
    scene.draw_distractors(bg, rng, roads, world * world // 8000)
    vehicles = _vehicles(rng, p, roads)
    tree_im, tree_occ = np.zeros_like(bg), np.zeros((world, world), bool)
    for _ in range(p.trees):
        dense, _w = roads[int(rng.integers(len(roads)))]
        scene.draw_tree(tree_im, rng, dense[int(rng.integers(len(dense)))] + rng.normal(0, 4, 2),
                        float(rng.uniform(4, 9)), tree_occ)
    origins = camera_path(rng, p, world)
    n = p.size
    grain = 2.0 * rng.standard_normal((2 * n, 2 * n, 3), dtype=np.float32)  # sensor noise, cropped per frame
    for t in range(p.frames):
        ox, oy = origins[t]
        im = bg[oy:oy + n, ox:ox + n].copy()
        owner = np.full((n, n), -1, np.int32)
        drawn = []
        for k, v in enumerate(vehicles):
            pose = _pose(v, t, roads)
            if pose is None:
                continue
            c, heading = pose
            x0, y0, patch = aerial.rasterise(aerial.object_polygons(v.cls, c[0] - ox, c[1] - oy, v.side, v.aspect,
                                                                    heading))
            mask = patch > 0
            if aerial.patch_box(x0, y0, mask, n) is None:
                continue
            aerial.paint(im, x0, y0, patch, v.colour)
            wi, wp = scene.windows(x0, y0, patch.shape, n)
            owner[wi][mask[wp]] = k
            drawn.append((k, x0, y0, mask))
        occ = tree_occ[oy:oy + n, ox:ox + n]
        np.copyto(im, tree_im[oy:oy + n, ox:ox + n], where=occ[..., None])
        rows = []
        for k, x0, y0, mask in drawn:
            box = aerial.patch_box(x0, y0, mask, n)
            wi, wp = scene.windows(x0, y0, mask.shape, n)
            vis = ((owner[wi] == k) & mask[wp] & ~occ[wi]).sum() / max(int(mask.sum()), 1)
            rows.append([k + 1, *box, vehicles[k].cls, vis])
        gx, gy = rng.integers(0, n, 2)
        im = cv2.GaussianBlur(im, (0, 0), 0.6) + grain[gy:gy + n, gx:gx + n]
        yield np.clip(im, 0, 255).astype(np.uint8), np.array(rows, np.float64).reshape(-1, 7)


def simulate_detections(gt: np.ndarray, rng: np.random.Generator, size: int, fp_rate: float = 3.0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector-like noise on one frame's ground truth (k, 7) -> (boxes (m, 4) xyxy px, scores (m,), classes (m,)).

    Found with probability ``clip(0.45 + 0.025 * side, 0.5, 0.95) * clip((visibility - 0.2) / 0.5, 0, 1)``; centre
    jitter N(0, 0.08 * side + 0.3) px and size x exp(N(0, 0.1)); score N(0.35 + 0.025 * side, 0.15) clipped to
    [0.05, 0.99], so most objects under ~8 px score below 0.5 (ByteTrack's second stage); Poisson(``fp_rate``)
    false positives per frame, sides 4-16 px, scores U(0.05, 0.7).
    """
    side = np.sqrt((gt[:, 3] - gt[:, 1]) * (gt[:, 4] - gt[:, 2]))
    p = np.clip(0.45 + 0.025 * side, 0.5, 0.95) * np.clip((gt[:, 6] - 0.2) / 0.5, 0, 1)
    keep = rng.random(len(gt)) < p
    g, s = gt[keep], side[keep]
    c = (g[:, 1:3] + g[:, 3:5]) / 2 + rng.normal(0, 1, (len(g), 2)) * (0.08 * s + 0.3)[:, None]
    wh = (g[:, 3:5] - g[:, 1:3]) * np.exp(rng.normal(0, 0.1, (len(g), 2)))
    score = np.clip(rng.normal(0.35 + 0.025 * s, 0.15), 0.05, 0.99)
    nfp = int(rng.poisson(fp_rate))
    fc, fs = rng.uniform(0, size, (nfp, 2)), rng.uniform(4, 16, (nfp, 1))
    boxes = np.concatenate([np.concatenate([c - wh / 2, c + wh / 2], 1), np.concatenate([fc - fs / 2, fc + fs / 2], 1)])
    scores = np.concatenate([score, rng.uniform(0.05, 0.7, nfp)])
    classes = np.concatenate([g[:, 5], rng.integers(0, 3, nfp)]).astype(np.int64)
    return boxes, scores, classes


def write_sequence(root: str | Path, p: TrackParams, seed: int, jpeg_quality: int = 92) -> Path:
    """Write sequence ``seed`` as ``root/synthetic-track-<seed>/`` (frames, gt/gt.txt, det/det.txt of
    ``simulate_detections``, seqinfo.ini); returns that folder."""
    seq = Path(root) / f"synthetic-track-{seed}"
    (seq / "img1").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng((seed, STREAM, 1))
    gt_lines, det_lines = [], []
    for f, (im, gt) in enumerate(make_sequence(p, seed), 1):
        cv2.imwrite(str(seq / "img1" / f"{f:06d}.jpg"), im, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        gt_lines += [line.replace(",1,", ",0,", 1) if v < p.min_visible else line for line, v in
                     zip(gt_rows(f, gt[:, 0], gt[:, 1:5], gt[:, 5], gt[:, 6]), gt[:, 6])]
        b, s, _ = simulate_detections(gt, rng, p.size)
        det_lines += [f"{f},-1,{x1 + 1:.2f},{y1 + 1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{sc:.4f},-1,-1,-1"
                      for (x1, y1, x2, y2), sc in zip(b, s)]
    write_mot(seq / "gt" / "gt.txt", gt_lines)
    write_mot(seq / "det" / "det.txt", det_lines)
    (seq / "seqinfo.ini").write_text(f"[Sequence]\nname={seq.name}\nimDir=img1\nframeRate={p.fps:g}\n"
                                     f"seqLength={p.frames}\nimWidth={p.size}\nimHeight={p.size}\nimExt=.jpg\n")
    return seq


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "datasets" / "synthetic-track")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--frames", type=int, default=TrackParams.frames)
    ap.add_argument("--size", type=int, default=TrackParams.size)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    for s in a.seeds:
        print(write_sequence(a.out, TrackParams(size=a.size, frames=a.frames), s))
    print(f"{len(a.seeds)} sequence(s) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
