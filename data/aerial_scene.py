"""Scene drawing for data/synthetic_aerial.py: muted aerial backgrounds and unlabelled look-alikes (image px).

Background: ground with low-frequency brightness variation and grain, striped fields, straight or curved roads with
dashed lane marks, gable-shaded roofs with roof units, vegetation. Distractors: blobs, square boxes, L shapes, rings
and road bars in the objects' palette. Trees (also used to occlude objects) are discs with a leafy texture. All
coordinates are image px with pixel j covering [j, j + 1); cv2 puts pixel centres at integers, hence the -0.5s.
"""

from __future__ import annotations

import cv2
import numpy as np

try:
    from data.synthetic import _hsv_to_bgr as hsv_to_bgr
    from data.synthetic import _overlaps
except ImportError:  # run as a script (python data/synthetic_aerial.py): data/ is on sys.path, not the repository
    from synthetic import _hsv_to_bgr as hsv_to_bgr
    from synthetic import _overlaps

SUBPIX = 4  # fixed-point bits of cv2 drawing coordinates
Road = tuple[np.ndarray, float]  # (centre line (m, 2) xy at 1 px steps, width), image px
# One palette for every class (BGR): white, silver, grey, dark grey, black, red, blue, beige, green, yellow
PALETTE = np.array([[225, 225, 220], [185, 185, 178], [135, 135, 130], [95, 95, 95], [50, 50, 55], [50, 50, 145],
                    [125, 80, 45], [140, 168, 185], [70, 105, 75], [60, 150, 195]], np.float32)


def windows(x0: int, y0: int, shape: tuple[int, ...], n: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(image window, patch window) of the part of a patch at (x0, y0) that lies inside the n x n image."""
    h, w = shape[:2]
    ix1, iy1, ix2, iy2 = max(x0, 0), max(y0, 0), min(x0 + w, n), min(y0 + h, n)
    if ix2 <= ix1 or iy2 <= iy1:
        return (slice(0, 0), slice(0, 0)), (slice(0, 0), slice(0, 0))
    return (slice(iy1, iy2), slice(ix1, ix2)), (slice(iy1 - y0, iy2 - y0), slice(ix1 - x0, ix2 - x0))


def palette_colour(rng: np.random.Generator) -> np.ndarray:
    """(3,) float32 BGR: a jittered palette colour, the same draw for every class."""
    return (PALETTE[rng.integers(len(PALETTE))] + rng.normal(0, 8, 3)).clip(0, 255).astype(np.float32)


def fill(im: np.ndarray, pts: np.ndarray, colour, line: int = cv2.LINE_AA) -> None:
    """Fill the polygon ``pts`` (k, 2) xy image px with ``colour`` at sub-pixel precision."""
    ipts = np.round((pts - 0.5) * (1 << SUBPIX)).astype(np.int32)
    cv2.fillPoly(im, [ipts], tuple(float(c) for c in colour), line, SUBPIX)


def oriented_rect(c: np.ndarray, length: float, width: float, angle: float) -> np.ndarray:
    """(4, 2) corners of a rectangle centred at ``c`` whose length axis is turned by ``angle`` rad from +x."""
    u, v = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    return np.array([c + su * length / 2 * u + sv * width / 2 * v for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))])


def draw_tree(im: np.ndarray, rng: np.random.Generator, centre: np.ndarray, r: float, occ: np.ndarray | None) -> None:
    """A tree crown: 1-3 dark green discs of radius ~r px with a leafy texture; marks its pixels in ``occ``."""
    x0, y0 = (np.floor(centre - 2 * r) - 1).astype(int)  # a local patch holds every disc (offsets, radii <= r)
    m = np.zeros((int(4 * r) + 3, int(4 * r) + 3), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        c = np.round((centre - (x0, y0) + rng.normal(0, 0.35 * r, 2).clip(-r, r) - 0.5) * (1 << SUBPIX)).astype(int)
        cv2.circle(m, (int(c[0]), int(c[1])), int(round(max(r * rng.uniform(0.6, 1.0), 1.0) * (1 << SUBPIX))), 1,
                   -1, cv2.LINE_8, SUBPIX)
    wi, wp = windows(int(x0), int(y0), m.shape, im.shape[0])
    sel = m[wp] > 0
    col = np.array(hsv_to_bgr(rng.uniform(35, 75), rng.uniform(70, 150), rng.uniform(45, 95)), np.float32)
    im[wi][sel] = col * (1 + 0.12 * rng.standard_normal((int(sel.sum()), 1))).astype(np.float32)
    if occ is not None:
        occ[wi] |= sel


def draw_road(im: np.ndarray, rng: np.random.Generator, used: np.ndarray) -> Road:
    """A straight or curved road between two image edges with dashed lane marks; returns (centre line (m, 2) at
    1 px steps in image px, width px)."""
    n = im.shape[0]
    edges = rng.choice(4, 2, replace=False)
    ends = [np.array([(u * n, 0), (n, u * n), (u * n, n), (0, u * n)][e], np.float64) for e, u in
            zip(edges, rng.uniform(0.1, 0.9, 2))]
    mid = (ends[0] + ends[1]) / 2 if rng.random() < 0.5 else rng.uniform(0.2 * n, 0.8 * n, 2)
    t = np.linspace(0, 1, 48)[:, None]
    pts = (1 - t) ** 2 * ends[0] + 2 * t * (1 - t) * mid + t ** 2 * ends[1]  # quadratic Bezier
    width = float(rng.uniform(8, 18))
    col = hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 15), rng.uniform(70, 115))
    ipts = np.round((pts - 0.5) * (1 << SUBPIX)).astype(np.int32)
    cv2.polylines(im, [ipts], False, col, int(round(width)), cv2.LINE_AA, SUBPIX)
    u8 = np.zeros(used.shape, np.uint8)
    cv2.polylines(u8, [ipts], False, 1, int(round(width)), cv2.LINE_8, SUBPIX)
    used |= u8 > 0
    arc = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    s = np.arange(0, arc[-1], 1.0)
    dense = np.column_stack([np.interp(s, arc, pts[:, 0]), np.interp(s, arc, pts[:, 1])])
    mark = hsv_to_bgr(0, 0, rng.uniform(185, 230))
    dash = rng.uniform(3, 7)
    on = (s // dash) % 2 == 0
    for run in np.split(np.arange(len(s)), np.flatnonzero(np.diff(on.astype(int))) + 1):
        if on[run[0]] and len(run) > 1:
            cv2.polylines(im, [np.round((dense[run] - 0.5) * (1 << SUBPIX)).astype(np.int32)], False, mark, 1,
                          cv2.LINE_AA, SUBPIX)
    return dense, width


def background(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[Road]]:
    """Muted aerial scene (n, n, 3) float32 BGR: ground, striped fields, roads, gable roofs, vegetation."""
    ground = np.array(hsv_to_bgr(rng.uniform(15, 45), rng.uniform(25, 70), rng.uniform(95, 150)), np.float32)
    low = cv2.resize(rng.normal(0, 1, (6, 6, 3)).astype(np.float32), (n, n), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (n, n)).astype(np.float32), (0, 0), 0.8)[..., None]
    im = ground + 12 * low[..., :1] + 3 * low + 6 * grain  # mostly brightness variation: muted colours
    for _ in range(int(rng.integers(0, 4))):  # fields: rotated patches with plough stripes
        m = np.zeros((n, n), np.uint8)
        fill(m, oriented_rect(rng.uniform(0, n, 2), *rng.uniform(n / 4, n / 1.5, 2), rng.uniform(0, np.pi)), (1,),
              cv2.LINE_8)
        a, period = rng.uniform(0, np.pi), rng.uniform(3, 9)
        ys, xs = np.nonzero(m)
        stripe = np.sin((xs * np.cos(a) + ys * np.sin(a)) * 2 * np.pi / period + rng.uniform(0, 2 * np.pi))
        col = np.array(hsv_to_bgr(rng.uniform(20, 70), rng.uniform(30, 90), rng.uniform(80, 170)), np.float32)
        im[ys, xs] = col * (1 + 0.08 * stripe.astype(np.float32))[:, None] + 4 * grain[ys, xs]
    used = np.zeros((n, n), bool)
    roads = [draw_road(im, rng, used) for _ in range(int(rng.choice(4, p=[0.2, 0.4, 0.3, 0.1])))]
    houses: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 8))):  # roofs: rectangles split along the ridge into a lit and a dark half
        length, width, ang = rng.uniform(12, 48), rng.uniform(10, 36), rng.uniform(0, np.pi)
        c = rng.uniform(0, n, 2)
        half = max(length, width) / 2 + 1
        box = np.array([*(c - half), *(c + half)])
        lo, hi = np.clip(box, 0, n).astype(int).reshape(2, 2)
        if _overlaps(box, houses, 0.0) or used[lo[1]:hi[1], lo[0]:hi[0]].sum() > 0.05 * np.prod(hi - lo):
            continue
        houses.append(box)
        col = np.array(hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 60), rng.uniform(90, 200)), np.float32)
        v = np.array([-np.sin(ang), np.cos(ang)])
        for sgn, shade in ((-1, 0.8), (1, 1.1)):
            fill(im, oriented_rect(c + sgn * width / 4 * v, length, width / 2, ang), col * shade)
        for _ in range(int(rng.integers(0, 3))):  # roof units: small light squares, unlabelled look-alikes
            q = c + rng.uniform(-.3, .3) * length * np.array([v[1], -v[0]]) + rng.uniform(-.2, .2) * width * v
            s = rng.uniform(2, 4)
            fill(im, oriented_rect(q, s, s, ang), hsv_to_bgr(0, 0, rng.uniform(170, 230)), cv2.LINE_8)
    for _ in range(int(rng.integers(2, 10))):  # vegetation under the objects
        draw_tree(im, rng, rng.uniform(0, n, 2), rng.uniform(2, 9), None)
    return im, roads


def draw_distractors(im: np.ndarray, rng: np.random.Generator, roads: list[Road], mean: int) -> None:
    """Unlabelled look-alikes in the shared palette: irregular blobs, square boxes, L shapes, rings, road bars."""
    n = im.shape[0]
    for _ in range(int(rng.poisson(mean))):
        kind, c, col = int(rng.integers(5)), rng.uniform(0, n, 2), palette_colour(rng)
        if kind == 0:  # irregular blob
            k = int(rng.integers(5, 9))
            t = np.sort(rng.uniform(0, 2 * np.pi, k))
            r = rng.uniform(1.5, 7) * rng.uniform(0.6, 1.0, k)
            fill(im, c + np.column_stack([r * np.cos(t), r * np.sin(t)]), col, cv2.LINE_8)
        elif kind == 1:  # square box: same size and colours as a car, not elongated
            s = rng.uniform(2, 9)
            fill(im, oriented_rect(c, s, s * rng.uniform(0.9, 1.15), rng.uniform(0, np.pi)), col, cv2.LINE_8)
        elif kind == 2:  # L shape
            s, ang = rng.uniform(3, 10), rng.uniform(0, 2 * np.pi)
            u = np.array([np.cos(ang), np.sin(ang)])
            fill(im, oriented_rect(c, s, s / 3, ang), col, cv2.LINE_8)
            fill(im, oriented_rect(c + s / 3 * u + np.array([-u[1], u[0]]) * s / 3, s / 3, s, ang), col, cv2.LINE_8)
        elif kind == 3:  # ring (manhole, well, small roundabout): a tank's outline without its roof
            cv2.circle(im, (int(c[0]), int(c[1])), int(rng.integers(2, 7)), tuple(float(x) for x in col), 1,
                       cv2.LINE_AA)
        elif roads:  # road bar: a white stop line across a road
            dense, width = roads[int(rng.integers(len(roads)))]
            i = int(rng.integers(1, len(dense)))
            d = dense[i] - dense[i - 1]
            fill(im, oriented_rect(dense[i], rng.uniform(1.5, 3), width * rng.uniform(0.3, 0.5),
                                     float(np.arctan2(d[1], d[0]))), hsv_to_bgr(0, 0, rng.uniform(190, 235)))
