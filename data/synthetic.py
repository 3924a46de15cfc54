"""Deterministic generator of a small tiny-object detection dataset in YOLO format (nothing is committed).

Four classes of filled shapes: 0 circle (reddish), 1 rectangle (greenish), 2 triangle (bluish), 3 cross (yellowish).
Colours are class-correlated but jittered in hue, saturation and value; backgrounds are muted (low saturation)
gradients with texture, noise and distractors (lines, soft blobs, rings) that are not objects. Object sides are
log-uniform from ``min_side`` to ``max_side`` pixels (default 5 px to imgsz / 2), so that about half the objects
are under 32 x 32 px^2 (COCO's "small"). Several objects per image, placed with little overlap.

Layout: ``root/images/{train,val}/*.jpg`` and ``root/labels/{train,val}/*.txt`` (``cls x y w h`` normalised).
Each image has its own seeded generator, so a given (seed, split, index) always gives the same bytes and the
val split does not depend on ``n_train``. A marker file ``root/synthetic.json`` records the parameters: an existing
dataset with the same parameters is reused, a different one is regenerated.

CLI: ``python data/synthetic.py --out datasets/my-synthetic --n-train 400 --n-val 100 --imgsz 256``
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = ROOT / "datasets" / "synthetic-tiny"
NAMES = ("circle", "rectangle", "triangle", "cross")
CLASS_HUES = (0, 60, 115, 28)  # OpenCV hue (0-180): red, green, blue, yellow
VERSION = 1  # bump when the drawing code changes, so old datasets are regenerated
MARKER = "synthetic.json"
SPLIT_IDS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticParams:
    """Generation parameters (all sizes in image pixels); recorded in the marker file."""

    n_train: int = 400  # training images
    n_val: int = 100  # validation images
    imgsz: int = 256  # square image side
    seed: int = 0  # base seed; image i of a split uses (seed, split, i)
    min_objects: int = 4  # objects per image, uniform in [min_objects, max_objects]
    max_objects: int = 10
    min_side: float = 5.0  # object side, log-uniform in [min_side, max_side]
    max_side: float = 0.0  # 0 -> imgsz / 2
    hue_jitter: int = 10  # +/- OpenCV hue units around the class hue
    noise: float = 8.0  # std of the Gaussian pixel noise (0-255 scale)
    jpeg_quality: int = 92
    version: int = VERSION


def _hsv_to_bgr(h: float, s: float, v: float) -> tuple[int, int, int]:
    px = cv2.cvtColor(np.array([[[h % 180, s, v]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return int(px[0]), int(px[1]), int(px[2])


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Muted textured background (n, n, 3) float32 BGR: gradient + soft blobs + lines + rings."""
    c0 = np.array(_hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 60), rng.uniform(70, 200)), np.float32)
    c1 = np.array(_hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 60), rng.uniform(70, 200)), np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    t = (np.cos(ang) * xx + np.sin(ang) * yy)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    im = c0 * (1 - t[..., None]) + c1 * t[..., None]
    layer = im.copy()
    for _ in range(rng.integers(2, 6)):  # soft low-saturation blobs
        col = _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 50), rng.uniform(60, 220))
        centre = (int(rng.integers(0, n)), int(rng.integers(0, n)))
        axes = (int(rng.integers(n // 16, n // 4)), int(rng.integers(n // 16, n // 4)))
        cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, col, -1)
    im = 0.4 * im + 0.6 * cv2.GaussianBlur(layer, (0, 0), n / 50)
    for _ in range(rng.integers(3, 9)):  # distractor lines: thin, muted, any direction
        col = _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 90), rng.uniform(40, 230))
        p1 = (int(rng.integers(0, n)), int(rng.integers(0, n)))
        p2 = (int(rng.integers(0, n)), int(rng.integers(0, n)))
        cv2.line(im, p1, p2, col, int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 4)):  # distractor rings (outlines, not filled shapes)
        col = _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 90), rng.uniform(40, 230))
        centre = (int(rng.integers(0, n)), int(rng.integers(0, n)))
        cv2.circle(im, centre, int(rng.integers(3, n // 6)), col, 1, cv2.LINE_AA)
    return im


def _draw(im: np.ndarray, cls: int, box: np.ndarray, color: tuple[int, int, int], rng: np.random.Generator) -> None:
    """Draw one filled shape of class ``cls`` filling the xyxy pixel ``box`` (float), anti-aliased."""
    sh = 4  # fixed-point bits for sub-pixel drawing
    f = 1 << sh
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    if cls == 0:  # ellipse/circle
        cv2.ellipse(im, (round(cx * f), round(cy * f)), (round(w / 2 * f), round(h / 2 * f)), 0, 0, 360, color, -1,
                    cv2.LINE_AA, sh)
    elif cls == 1:  # rectangle
        pts = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
        cv2.fillPoly(im, [np.round(pts * f).astype(np.int32)], color, cv2.LINE_AA, sh)
    elif cls == 2:  # triangle, apex up or down
        pts = np.array([[cx, y1], [x2, y2], [x1, y2]]) if rng.random() < 0.5 else np.array([[cx, y2], [x2, y1],
                                                                                              [x1, y1]])
        cv2.fillPoly(im, [np.round(pts * f).astype(np.int32)], color, cv2.LINE_AA, sh)
    else:  # cross (plus sign), arms one third thick
        tw, th = w / 3, h / 3
        for pts in (np.array([[cx - tw / 2, y1], [cx + tw / 2, y1], [cx + tw / 2, y2], [cx - tw / 2, y2]]),
                    np.array([[x1, cy - th / 2], [x2, cy - th / 2], [x2, cy + th / 2], [x1, cy + th / 2]])):
            cv2.fillPoly(im, [np.round(pts * f).astype(np.int32)], color, cv2.LINE_AA, sh)


def _overlaps(box: np.ndarray, boxes: list[np.ndarray], max_ioa: float = 0.15) -> bool:
    """True when ``box`` covers more than ``max_ioa`` of an existing box or is itself that much covered."""
    if not boxes:
        return False
    b = np.array(boxes)
    iw = (np.minimum(b[:, 2], box[2]) - np.maximum(b[:, 0], box[0])).clip(0)
    ih = (np.minimum(b[:, 3], box[3]) - np.maximum(b[:, 1], box[1])).clip(0)
    inter = iw * ih
    a1 = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    a2 = (box[2] - box[0]) * (box[3] - box[1])
    return bool((inter / np.minimum(a1, a2) > max_ioa).any())


def make_image(p: SyntheticParams, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One image and its labels: (imgsz, imgsz, 3) uint8 BGR and (n, 5) [cls, x, y, w, h] normalised."""
    rng = np.random.default_rng((p.seed, SPLIT_IDS[split], index))
    n = p.imgsz
    max_side = p.max_side or n / 2
    im = _background(rng, n)
    boxes, classes = [], []
    for _ in range(int(rng.integers(p.min_objects, p.max_objects + 1))):
        cls = int(rng.integers(0, len(NAMES)))
        side = float(np.exp(rng.uniform(np.log(p.min_side), np.log(max_side))))
        aspect = 1.0 if cls == 0 and rng.random() < 0.5 else float(np.exp(rng.uniform(-0.35, 0.35)))
        w, h = min(side * np.sqrt(aspect), n - 1), min(side / np.sqrt(aspect), n - 1)
        for _attempt in range(30):  # the size is drawn once, so rejections do not bias sizes towards small
            x1, y1 = rng.uniform(0, n - w), rng.uniform(0, n - h)
            box = np.array([x1, y1, x1 + w, y1 + h])
            if not _overlaps(box, boxes):
                break
        else:
            continue
        hue = CLASS_HUES[cls] + rng.integers(-p.hue_jitter, p.hue_jitter + 1)
        color = _hsv_to_bgr(float(hue), rng.uniform(150, 255), rng.uniform(150, 255))
        _draw(im, cls, box, color, rng)
        boxes.append(box)
        classes.append(cls)
    im = im + rng.normal(0, p.noise, im.shape).astype(np.float32)
    im = np.clip(im, 0, 255).astype(np.uint8)
    b = np.array(boxes, np.float64).reshape(-1, 4) / n
    labels = np.column_stack([classes, (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0],
                              b[:, 3] - b[:, 1]]) if len(b) else np.zeros((0, 5))
    return im, labels


def _write_split(root: Path, p: SyntheticParams, split: str, count: int) -> None:
    write_split(root, split, count, lambda i: make_image(p, split, i), p.jpeg_quality)


def write_split(root: Path, split: str, count: int, make, jpeg_quality: int) -> None:
    """Write ``count`` images ``make(i) -> (BGR uint8 image, (k, 5) [cls, x, y, w, h] normalised)`` as
    ``root/images/<split>/<i>.jpg`` and their YOLO label files."""
    im_dir, lb_dir = root / "images" / split, root / "labels" / split
    im_dir.mkdir(parents=True, exist_ok=True)
    lb_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        im, labels = make(i)
        ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {split} image {i}")
        (im_dir / f"{i:06d}.jpg").write_bytes(buf.tobytes())
        rows = "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
        (lb_dir / f"{i:06d}.txt").write_text(rows)


def up_to_date(root: Path, marker_name: str, params: dict, splits) -> bool:
    """True when ``root/marker_name`` records exactly ``params``; otherwise remove the marker, the splits' images,
    labels and label caches (nothing else under ``root``) so that the caller regenerates them."""
    marker = root / marker_name
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return True
        except json.JSONDecodeError:
            pass
    marker.unlink(missing_ok=True)
    for split in splits:
        for sub in ("images", "labels"):
            shutil.rmtree(root / sub / split, ignore_errors=True)
        (root / "labels" / f"{split}.cache").unlink(missing_ok=True)
    return False


def generate(root: str | Path = DEFAULT_ROOT, n_train: int = 400, n_val: int = 100, imgsz: int = 256, seed: int = 0,
             **kwargs) -> Path:
    """Generate the dataset under ``root`` unless the marker says it already exists with these parameters.

    Extra keyword arguments are ``SyntheticParams`` fields (e.g. ``min_side``, ``max_objects``). Returns ``root``.
    Only ``root/images/{train,val}``, ``root/labels/{train,val}`` and label caches are removed on regeneration.
    """
    p = SyntheticParams(n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed, **kwargs)
    if p.imgsz < 32 or p.min_side < 1 or (p.max_side and p.max_side < p.min_side) or p.min_objects > p.max_objects:
        raise ValueError(f"invalid synthetic dataset parameters: {p}")
    root = Path(root)
    if up_to_date(root, MARKER, asdict(p), SPLIT_IDS):
        return root
    _write_split(root, p, "train", p.n_train)
    _write_split(root, p, "val", p.n_val)
    (root / MARKER).write_text(json.dumps(asdict(p), indent=1))  # written last: an interrupted run is redone
    return root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "datasets" / "synthetic-custom",
                    help="dataset root (data/synthetic-tiny.yaml generates its own in datasets/synthetic-tiny)")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    root = generate(a.out, a.n_train, a.n_val, a.imgsz, a.seed)
    print(f"synthetic dataset ready in {root} ({a.n_train} train / {a.n_val} val images, {a.imgsz} px)")


if __name__ == "__main__":
    main()
