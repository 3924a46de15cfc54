"""Deterministic generator of a harder, aerial-like tiny-object benchmark in YOLO format (nothing is committed).

Six classes whose shapes differ only at small scale and whose colours come from ONE shared palette (colour says
nothing about the class): 0 car (rectangle ~1.8:1 with a windscreen), 1 van (longer, darker front), 2 truck (long
trailer and a separate cab), 3 plane (fuselage, swept wings, tail), 4 ship (pointed lens hull, superstructure),
5 storage-tank (circle with a darker rim). Scenes: muted ground, striped fields, gable-shaded roofs, straight and
curved roads with lane marks, vegetation; unlabelled look-alikes (blobs, square boxes, rings, road bars); dense
groups (parking lots, tank farms, marinas, aprons); trees over parts of objects (an object keeps its full label
when at least ``min_visible`` of its pixels are visible, else it is dropped).

Sizes, in image px: the label side sqrt(w * h) is log-normal (median ``side_median``, log-std ``side_sigma``) clipped
to [min_side, max_side], except a ``big_frac`` share log-uniform in [big_min_side, max_side], so that the COCO
"medium" bucket (area >= 32^2) has objects to measure (AI-TOD-like: ~90% of objects under 32^2, ~75% under 16^2).
Each label is the tight axis-aligned box of the object's drawn pixels (rotation included), clipped to the image.

Layout: ``root/images/{train,val,test}/*.jpg``, ``root/labels/{train,val,test}/*.txt`` (``cls x y w h``
normalised). Image i of a split has its own generator seeded by (seed, split, i): the same bytes every time, and no
split depends on another's count. The marker ``root/synthetic_aerial.json`` records the parameters: an existing
dataset with the same parameters is reused, a different one is regenerated.

CLI: ``python data/synthetic_aerial.py --out datasets/synthetic-aerial --n-train 400 --n-val 150 --n-test 300``
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np

try:
    from data import aerial_scene as scene
    from data.synthetic import up_to_date, write_split
except ImportError:  # run as a script (python data/synthetic_aerial.py): data/ is on sys.path, not ROOT
    import aerial_scene as scene
    from synthetic import up_to_date, write_split

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = ROOT / "datasets" / "synthetic-aerial"
NAMES = ("car", "van", "truck", "plane", "ship", "storage-tank")
VERSION = 1  # bump when the drawing code changes, so old datasets are regenerated
MARKER = "synthetic_aerial.json"
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
Part = tuple[np.ndarray, float]  # (polygon (k, 2) xy, shade multiplying the object's colour)
STREAM = 0xAE  # image seeds are (seed, STREAM, split, i): independent of data/synthetic.py's (seed, split, i)


@dataclass(frozen=True)
class AerialParams:
    """Generation parameters (sizes in image px); recorded in the marker file."""

    n_train: int = 400  # training images
    n_val: int = 150  # validation images
    n_test: int = 300  # test images
    imgsz: int = 256  # square image side
    seed: int = 0  # base seed; image i of a split uses (seed, split, i)
    min_objects: int = 15  # objects attempted per image, uniform in [min_objects, max_objects]; a few are dropped
    max_objects: int = 40  # (occluded, outside the image, or no free place)
    side_median: float = 9.0  # median label side sqrt(w * h) of the log-normal part
    side_sigma: float = 0.6  # its log-std
    min_side: float = 2.0  # sides are clipped to [min_side, max_side] (and to imgsz / 2)
    max_side: float = 64.0
    big_frac: float = 0.10  # share of sides log-uniform in [big_min_side, max_side]: fills the area >= 32^2 bucket
    big_min_side: float = 32.0
    max_clusters: int = 2  # dense groups (parking lot, tank farm, marina, apron) per image, uniform in [0, this]
    occlusion_prob: float = 0.12  # probability that an object gets a tree over part of it
    min_visible: float = 0.5  # an object is labelled when at least this share of its pixels is visible
    distractors: int = 20  # mean number of unlabelled look-alikes per image (Poisson)
    blur: float = 0.6  # sensor blur, Gaussian sigma in px (0 = off)
    noise: float = 3.0  # std of the Gaussian pixel noise (0-255 scale)
    jpeg_quality: int = 92
    single_class: bool = False  # label every object as class 0 (same images): detection without classification
    version: int = VERSION


def _rect(x1: float, x2: float, y1: float, y2: float) -> np.ndarray:
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64)


def _lens() -> np.ndarray:
    x = np.linspace(-0.5, 0.5, 13)
    y = 0.5 * (1 - (2 * x) ** 2) ** 0.6
    return np.concatenate([np.column_stack([x, y]), np.column_stack([x[::-1], -y[::-1]])])


_CIRCLE = 0.5 * np.column_stack([np.cos(np.linspace(0, 2 * np.pi, 24, endpoint=False)),
                                 np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False))])
# Parts of each class in the object frame (x along the length, y across, both in [-0.5, 0.5] before the aspect
# stretch), each with a shade multiplying the object's colour; later parts are drawn over earlier ones.
PARTS: dict[int, list[Part]] = {
    0: [(_rect(-.5, .5, -.5, .5), 1.0), (_rect(.1, .26, -.4, .4), 0.55)],  # car: body, dark windscreen
    1: [(_rect(-.5, .5, -.5, .5), 1.0), (_rect(.3, .5, -.5, .5), 0.6)],  # van: body, darker front
    2: [(_rect(-.5, .2, -.5, .5), 1.0), (_rect(.28, .5, -.42, .42), 0.8)],  # truck: trailer, gap, narrower cab
    3: [(_rect(-.5, .5, -.08, .08), 1.0),  # plane: fuselage, swept wings, tailplane
        (np.array([[.2, 0], [-.02, .5], [-.14, .5], [.02, 0], [-.14, -.5], [-.02, -.5]], np.float64), 1.0),
        (_rect(-.5, -.4, -.18, .18), 1.0)],
    4: [(_lens(), 1.0), (_rect(-.32, -.06, -.2, .2), 0.75)],  # ship: pointed hull, superstructure
    5: [(_CIRCLE, 0.7), (0.72 * _CIRCLE, 1.05)],  # storage tank: darker rim, lighter roof
}
ASPECT = ((1.6, 2.0), (1.9, 2.4), (2.8, 3.6), (0.9, 1.1), (2.6, 4.0), (1.0, 1.0))  # length / width per class
ROTATES = (True, True, True, True, True, False)  # a tank looks the same at every angle
CLASS_FREQ = np.array([0.34, 0.16, 0.12, 0.10, 0.14, 0.14])  # class prior of scattered objects
CLASS_SIZE = np.array([0.85, 1.1, 1.45, 1.35, 1.2, 1.0])  # typical side / side_median: means differ, ranges overlap

def sample_sides(rng: np.random.Generator, count: int, p: AerialParams) -> np.ndarray:
    """(count,) label sides sqrt(w * h) in image px: clipped log-normal, a ``big_frac`` share log-uniform big."""
    side = p.side_median * np.exp(p.side_sigma * rng.standard_normal(count))
    big = rng.random(count) < p.big_frac
    side[big] = np.exp(rng.uniform(np.log(p.big_min_side), np.log(p.max_side), int(big.sum())))
    return side.clip(p.min_side, p.max_side)


def choose_class(rng: np.random.Generator, side: float, allowed: tuple[int, ...], p: AerialParams) -> int:
    """A class among ``allowed`` for an object of label side ``side`` (px): prior x log-normal size preference."""
    a = np.array(allowed)
    w = CLASS_FREQ[a] * np.exp(-0.5 * np.log(side / (p.side_median * CLASS_SIZE[a])) ** 2)
    return int(a[min(np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right"), len(a) - 1)])


def object_polygons(cls: int, cx: float, cy: float, side: float, aspect: float,
                    angle: float) -> list[Part]:
    """Parts of one object as (polygon (k, 2) xy in image px, shade); all vertices span a box of sqrt(w*h) = side.

    ``angle`` (radians) turns the object's length axis from +x towards +y; ``aspect`` = length / width.
    """
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # row vectors @ rot == rotation by +angle
    stretch = np.array([np.sqrt(aspect), 1 / np.sqrt(aspect)])
    parts = [(q * stretch) @ rot for q, _ in PARTS[cls]]
    ext = np.ptp(np.concatenate(parts), axis=0)
    k = side / np.sqrt(ext[0] * ext[1])
    return [(q * k + (cx, cy), shade) for q, (_, shade) in zip(parts, PARTS[cls])]


def rasterise(polys: list[Part]) -> tuple[int, int, np.ndarray]:
    """Draw the parts into a patch: (x0, y0, shade (h, w) float32), shade > 0 exactly on the object's pixels.

    Patch pixel (i, j) is image pixel (x0 + j, y0 + i), which covers [x0 + j, x0 + j + 1) in image px. No
    anti-aliasing, so the object's pixels are a crisp set and its label box is exact; the sensor blur comes later.
    """
    allp = np.concatenate([q for q, _ in polys])
    x0, y0 = (np.floor(allp.min(0)) - 1).astype(int)
    x1, y1 = (np.ceil(allp.max(0)) + 1).astype(int)
    patch = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.float32)
    for q, shade in polys:  # cv2 puts pixel centres at integer coordinates, hence the -0.5
        pts = np.round((q - (x0, y0) - 0.5) * (1 << scene.SUBPIX)).astype(np.int32)
        cv2.fillPoly(patch, [pts], float(shade), cv2.LINE_8, scene.SUBPIX)
    return int(x0), int(y0), patch



def paint(im: np.ndarray, x0: int, y0: int, patch: np.ndarray, colour: np.ndarray) -> None:
    """Paint ``colour`` x shade over the object's pixels (patch > 0) of the (n, n, 3) image, clipped to it."""
    wi, wp = scene.windows(x0, y0, patch.shape, im.shape[0])
    sub = patch[wp]
    m = sub > 0
    im[wi][m] = colour * sub[m][:, None]


def patch_box(x0: int, y0: int, mask: np.ndarray, n: int) -> np.ndarray | None:
    """Tight xyxy box (image px, pixel edges) of the in-image pixels of ``mask``; None when none is inside."""
    ys, xs = np.nonzero(mask)
    xs, ys = xs + x0, ys + y0
    keep = (xs >= 0) & (xs < n) & (ys >= 0) & (ys < n)
    if not keep.any():
        return None
    return np.array([xs[keep].min(), ys[keep].min(), xs[keep].max() + 1, ys[keep].max() + 1], np.float64)



@dataclass
class _Scene:
    im: np.ndarray  # (n, n, 3) float32 BGR
    occupied: np.ndarray  # (n, n) bool: pixels of placed objects
    objects: list[tuple[int, int, int, np.ndarray]]  # (cls, x0, y0, shade patch)


def _place(sc: _Scene, rng: np.random.Generator, cls: int, c: np.ndarray, side: float, angle: float,
           inside: bool) -> bool:
    """Draw one object (centre ``c``, label side ``side`` px) unless it touches another or (``inside``) leaves
    the image; True when drawn."""
    aspect = float(rng.uniform(*ASPECT[cls]))
    x0, y0, patch = rasterise(object_polygons(cls, float(c[0]), float(c[1]), side, aspect,
                                              angle if ROTATES[cls] else 0.0))
    n = sc.im.shape[0]
    mask = patch > 0
    if not mask.any() or (inside and (x0 < 0 or y0 < 0 or x0 + patch.shape[1] > n or y0 + patch.shape[0] > n)):
        return False
    wi, wp = scene.windows(x0, y0, patch.shape, n)
    if (sc.occupied[wi] & cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))[wp].astype(bool)).any():
        return False
    paint(sc.im, x0, y0, patch, scene.palette_colour(rng))
    sc.occupied[wi] |= mask[wp]
    sc.objects.append((cls, x0, y0, patch))
    return True


# Dense groups: allowed classes, object angle relative to the row, surface colour (HSV) or None
CLUSTERS = (((0, 1, 2), np.pi / 2, (0, 5, 90)), ((5,), 0.0, (0, 5, 165)), ((4,), np.pi / 2, (105, 60, 70)),
            ((3,), np.pi / 2, (0, 5, 150)))


def _cluster(sc: _Scene, rng: np.random.Generator, p: AerialParams, budget: int) -> None:
    """A parking lot, tank farm, marina or apron: rows of similar objects on their own surface."""
    n = sc.im.shape[0]
    allowed, rel, surface = CLUSTERS[int(rng.choice(4, p=[0.55, 0.15, 0.15, 0.15]))]
    base = float(min(sample_sides(rng, 1, p)[0], n / 6))
    phi = float(rng.uniform(0, np.pi))
    u, v = np.array([np.cos(phi), np.sin(phi)]), np.array([-np.sin(phi), np.cos(phi)])
    ext = np.zeros(2)  # largest extent along (u, v) of the allowed classes at this size: the slot pitch
    for cls in allowed:
        pts = np.concatenate([q for q, _ in object_polygons(cls, 0, 0, base * 1.08, ASPECT[cls][1],
                                                             phi + rel if ROTATES[cls] else 0.0)])
        ext = np.maximum(ext, [np.ptp(pts @ u), np.ptp(pts @ v)])
    pitch = ext * (1.3, 1.25) + 1.5
    cols = int(min(rng.integers(3, 11), max(0.8 * n // pitch[0], 1)))
    rows = int(min(rng.integers(1, 4), max(0.5 * n // pitch[1], 1)))
    size = np.array([cols * pitch[0], rows * pitch[1]])
    half = np.minimum(np.abs(u) * size[0] / 2 + np.abs(v) * size[1] / 2, n / 2)  # of the rotated lot, per axis
    c = rng.uniform(half, n - half)
    scene.fill(sc.im, scene.oriented_rect(c, size[0] + 4, size[1] + 4, phi), scene.hsv_to_bgr(*surface))
    if allowed[0] == 0:  # parking: slot lines between the columns
        for j in range(cols + 1):
            a = c + (j - cols / 2) * pitch[0] * u
            scene.fill(sc.im, scene.oriented_rect(a, 1.0, size[1], phi), scene.hsv_to_bgr(0, 0, 200), cv2.LINE_8)
    for i in range(rows):
        for j in range(cols):
            if budget <= 0 or rng.random() > 0.8:
                continue
            q = c + (j - (cols - 1) / 2) * pitch[0] * u + (i - (rows - 1) / 2) * pitch[1] * v
            side = base * float(np.exp(rng.normal(0, 0.06)))
            cls = choose_class(rng, side, allowed, p)
            budget -= _place(sc, rng, cls, q, side, phi + rel + np.pi * rng.integers(2), inside=False)


def _scatter(sc: _Scene, rng: np.random.Generator, p: AerialParams, roads: list[scene.Road],
             count: int) -> None:
    """Single objects anywhere; vehicles often on roads, in a lane and along the road."""
    n = sc.im.shape[0]
    for side in sample_sides(rng, count, p).clip(max=n / 2):
        cls = choose_class(rng, float(side), tuple(range(len(NAMES))), p)
        on_road = cls <= 2 and bool(roads) and rng.random() < 0.6
        for _ in range(10):  # the size is fixed first, so failed places do not bias sizes
            if on_road:
                dense, width = roads[int(rng.integers(len(roads)))]
                i = int(rng.integers(1, len(dense)))
                d = (dense[i] - dense[i - 1]) / max(float(np.linalg.norm(dense[i] - dense[i - 1])), 1e-6)
                c = dense[i] + np.array([-d[1], d[0]]) * width * rng.choice([-0.25, 0.25])
                angle = float(np.arctan2(d[1], d[0]) + np.pi * rng.integers(2))
            else:
                c, angle = rng.uniform(side / 2, n - side / 2, 2), float(rng.uniform(0, 2 * np.pi))
            if _place(sc, rng, cls, c, float(side), angle, inside=True):
                break


def object_labels(objects: list[tuple[int, int, int, np.ndarray]], occ: np.ndarray, min_visible: float) -> np.ndarray:
    """(k, 5) [cls, x, y, w, h] normalised labels of the objects (cls, x0, y0, shade patch) of an (n, n) image.

    An object is labelled when at least ``min_visible`` of its pixels are inside the image and not under ``occ``
    (n, n) bool; its box is then the tight box of all its in-image pixels, the occluded ones included.
    """
    n = occ.shape[0]
    rows = []
    for cls, x0, y0, patch in objects:
        mask = patch > 0
        wi, wp = scene.windows(x0, y0, patch.shape, n)
        visible = (mask[wp] & ~occ[wi]).sum() / max(int(mask.sum()), 1)
        box = patch_box(x0, y0, mask, n)
        if box is not None and visible >= min_visible:
            rows.append([cls, (box[0] + box[2]) / 2 / n, (box[1] + box[3]) / 2 / n, (box[2] - box[0]) / n,
                         (box[3] - box[1]) / n])
    return np.array(rows, np.float64).reshape(-1, 5)


def make_image(p: AerialParams, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One image and its labels: (imgsz, imgsz, 3) uint8 BGR and (k, 5) [cls, x, y, w, h] normalised."""
    rng = np.random.default_rng((p.seed, STREAM, SPLIT_IDS[split], index))
    n = p.imgsz
    im, roads = scene.background(rng, n)
    scene.draw_distractors(im, rng, roads, p.distractors)
    sc = _Scene(im, np.zeros((n, n), bool), [])
    target = int(rng.integers(p.min_objects, p.max_objects + 1))
    for _ in range(int(rng.integers(0, p.max_clusters + 1))):
        _cluster(sc, rng, p, target - len(sc.objects))
    _scatter(sc, rng, p, roads, target - len(sc.objects))
    occ = np.zeros((n, n), bool)
    for _, x0, y0, patch in sc.objects:  # trees over parts of some objects
        if rng.random() < p.occlusion_prob:
            side = float(np.sqrt(patch.shape[0] * patch.shape[1])) - 2
            d = rng.uniform(0, 2 * np.pi)
            centre = np.array([x0 + patch.shape[1] / 2, y0 + patch.shape[0] / 2])
            scene.draw_tree(sc.im, rng, centre + side * rng.uniform(0.2, 0.8) * np.array([np.cos(d), np.sin(d)]),
                            max(side * rng.uniform(0.35, 0.7), 1.5), occ)
    for _ in range(int(rng.integers(0, 6))):  # and a few anywhere
        scene.draw_tree(sc.im, rng, rng.uniform(0, n, 2), rng.uniform(2, 8), occ)
    labels = object_labels(sc.objects, occ, p.min_visible)
    if p.single_class:
        labels[:, 0] = 0
    im = sc.im * rng.uniform(0.9, 1.1, 3).astype(np.float32)  # illumination and tint of the whole scene
    if p.blur > 0:
        im = cv2.GaussianBlur(im, (0, 0), p.blur)
    im = im + p.noise * rng.standard_normal(im.shape, dtype=np.float32)
    return np.clip(im, 0, 255).astype(np.uint8), labels


def _write_split(root: Path, p: AerialParams, split: str, count: int) -> None:
    write_split(root, split, count, lambda i: make_image(p, split, i), p.jpeg_quality)


def check_params(p: AerialParams) -> None:
    """Raise ValueError naming the first invalid parameter."""
    bad = [k for k in ("n_train", "n_val", "n_test", "min_objects", "max_clusters", "distractors")
           if getattr(p, k) < 0]
    bad += [k for k, ok in (("imgsz", p.imgsz >= 32), ("min_side", p.min_side >= 1),
                            ("max_side", p.max_side >= p.min_side),
                            ("big_min_side", p.min_side <= p.big_min_side <= p.max_side),
                            ("max_objects", p.max_objects >= p.min_objects), ("side_sigma", p.side_sigma >= 0),
                            ("side_median", p.side_median > 0), ("big_frac", 0 <= p.big_frac <= 1),
                            ("occlusion_prob", 0 <= p.occlusion_prob <= 1), ("min_visible", 0 < p.min_visible <= 1),
                            ("blur", p.blur >= 0), ("noise", p.noise >= 0),
                            ("jpeg_quality", 0 <= p.jpeg_quality <= 100)) if not ok]
    if bad:
        raise ValueError(f"invalid synthetic-aerial parameter {bad[0]}={getattr(p, bad[0])!r}")


def marker_params(p: AerialParams) -> dict:
    """What the marker records: every field, except ``single_class`` when off (datasets generated before that
    option existed stay up to date)."""
    d = asdict(p)
    if not d["single_class"]:
        del d["single_class"]
    return d


def generate(root: str | Path = DEFAULT_ROOT, params: AerialParams | None = None, **overrides) -> Path:
    """Generate the dataset under ``root`` unless the marker says it already exists with these parameters.

    ``overrides`` are ``AerialParams`` fields (what a data YAML's ``synthetic:`` mapping holds); an unknown one is a
    TypeError naming it. Only ``root/{images,labels}/{train,val,test}`` and label caches are removed on regeneration.
    Returns ``root``.
    """
    p = replace(params or AerialParams(), **overrides)
    check_params(p)
    root = Path(root)
    if up_to_date(root, MARKER, marker_params(p), SPLIT_IDS):
        return root
    for split, count in (("train", p.n_train), ("val", p.n_val), ("test", p.n_test)):
        _write_split(root, p, split, count)
    (root / MARKER).write_text(json.dumps(marker_params(p), indent=1))  # written last: an interrupted run is redone
    return root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_ROOT, help="dataset root")
    for f in fields(AerialParams):
        if f.name == "single_class":
            ap.add_argument("--single-class", action="store_true", help="label every object as class 0")
        elif f.name != "version":
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    a = vars(ap.parse_args(argv))
    out = a.pop("out")
    t0 = time.perf_counter()
    root = generate(out, AerialParams(**a))
    print(f"synthetic-aerial dataset ready in {root} ({a['n_train']} train / {a['n_val']} val / {a['n_test']} test "
          f"images, {a['imgsz']} px, {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
