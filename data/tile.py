"""Tiling of a YOLO dataset of large images into overlapping tiles with clipped labels, for training on tiles and
validating with ``val.py --slice`` / ``detect.py --slice`` on the full images.

CLI: ``python -m data.tile --data xView.yaml --size 640 --overlap 0.2 --min-visible 0.5 --out DIR [--splits train
val] [--skip-empty]``

Decisions (documented here once):
- **Grid**: the tile origins are ``utils.infer.slicing.make_tiles``'s (starts advance by
  ``round(size * (1 - overlap))``, the last tile of a row/column flush with the image border), so training tiles
  and sliced inference cut an image at the same places. An image narrower/shorter than ``size`` gives one tile
  along that axis that is the whole image along it, **not padded** (the dataloader letterboxes it like any small image).
- **Labels**: an object is kept in a tile iff ``intersection area / object area >= min_visible`` (and the
  intersection is not empty); it is then clipped to the tile and re-normalised to the tile. Otherwise it is
  *dropped* from that tile and counted; an object kept in no tile at all is *lost* (also counted). The
  comparison allows ``VIS_TOL``: label files hold float32-rounded numbers, so an object exactly half inside a
  tile is kept at ``min_visible`` 0.5.
- **Ignore areas** (``labels/NAME.ignore.txt``, format in ``utils/dataset/ignore.py``) are clipped to each tile they
  overlap (any overlap: an ignored region stays ignored however little of it is in the tile); a tile without any
  gets no ignore file.
- **Files**: ``DIR/images/<split>/NAME_x{x0}_y{y0}.ext`` (sub-folders of the split kept), labels beside as YOLOv5
  expects (``images`` -> ``labels``). JPEG sources (.jpg/.jpeg/.mpo) give JPEG tiles at quality 95, every other
  format lossless PNG. Empty tiles (no object kept) are written as negatives unless ``skip_empty``.
- **Data YAML** ``DIR/data.yaml``: same names; tiled splits point at the tiles, splits not tiled at the original
  images (so ``--splits train`` trains on tiles and validates on full images). Its ``path`` is ``../<DIR name>``
  (relative to the YAML itself), so the folder can be moved.
- **Idempotence**: ``DIR/tile.json`` (parameters, a fingerprint of the source files, counts) is moved in last.
  Same parameters and sources: nothing is done. Otherwise a folder holding ``tile.json`` or ``.tile-incomplete``
  is ours and is redone; a non-empty folder with neither is refused, never deleted.
- **Validate, then write**: every image header, label file and ignore file of the tiled splits is read and checked
  before anything is written; the tiles are written into a temporary folder beside DIR and swapped in at the end
  under DIR's lock (``data/staging.py``), so a failure leaves the previous tiles as they were and a second
  data.tile into the same DIR stops with one line. ``--out`` may not lie inside (or hold) an image or label folder
  of any split of the source dataset: the tiles would be listed as that split's images.
- Images are processed in sorted order, one at a time: the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from data.prepare import check_dataset
from data.staging import locked, staging, swap_in
from data.tile_checks import MARKER, PARTIAL, SPLITS, check_ours, check_out_dir, read_inputs
from utils.cli import one_line
from utils.dataset.ignore import format_ignore, ignore_file_for
from utils.dataset.labels import LabelError, cache_key, img2label_paths
from utils.dataset.sources import imread, list_image_files
from utils.errors import DatasetError, UsageError, UserError
from utils.infer.slicing import make_tiles
from utils.run_dirs import LOCK_NAME
from utils.safe_paths import remove_inside

VERSION = 1  # bump when the tiling rules or the output layout change, so old tile folders are redone
DATA_YAML = "data.yaml"
VIS_TOL = 1e-6  # float32 label files: a fraction within this below min_visible still counts as reaching it
MIN_SIDE = 1e-5  # a clipped side under this share of the tile is no overlap (it would be written as a 0-size row)
JPEG_QUALITY = 95
JPEG_SUFFIXES = {".jpg": ".jpg", ".jpeg": ".jpeg", ".mpo": ".jpg"}


@dataclass(frozen=True)
class TileParams:
    """What a tile folder was made from; a different value redoes it."""

    size: int  # tile side, original px
    overlap: float  # fraction of ``size`` shared by neighbouring tiles, [0, 1)
    min_visible: float  # share of an object's area that must lie inside a tile to keep it there, [0, 1]
    splits: tuple[str, ...]  # splits tiled (others point at the original images)
    skip_empty: bool  # tiles without objects are not written
    data: str  # the source data YAML (resolved path)
    version: int = VERSION

    def check(self) -> None:
        """Raise ValueError naming the bad parameter."""
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise UsageError(f"--size must be a positive number of pixels, got {self.size!r}")
        if not 0 <= self.overlap < 1:
            raise UsageError(f"--overlap must be a fraction in [0, 1), got {self.overlap}")
        if not 0 <= self.min_visible <= 1:
            raise UsageError(f"--min-visible must be a fraction in [0, 1], got {self.min_visible}")
        if not self.splits:
            raise UsageError("--splits needs at least one split (train, val or test)")
        bad = [x for x in self.splits if x not in SPLITS]  # split names become folders under --out
        if bad:
            raise UsageError(f"--splits must be among {', '.join(SPLITS)}, got {bad}")


@dataclass
class TileCounts:
    """Counts of one split (or of all): images read, tiles written, objects in the source labels, object-tile
    placements kept, placements dropped (object partly in a tile, under min_visible), objects lost (kept in no
    tile), empty tiles skipped (``skip_empty``), ignore areas written (area-tile placements)."""

    images: int = 0
    tiles: int = 0
    objects: int = 0
    kept: int = 0
    dropped: int = 0
    lost: int = 0
    skipped_empty: int = 0
    ignore_areas: int = 0

    def add(self, other: TileCounts) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def line(self) -> str:
        return (f"{self.images} images -> {self.tiles} tiles ({self.skipped_empty} empty skipped), {self.objects} "
                f"objects -> {self.kept} kept in tiles, {self.dropped} dropped from a tile (under min-visible), "
                f"{self.lost} lost (in no tile), {self.ignore_areas} ignore areas")


@dataclass
class TileReport:
    """Result of ``tile_dataset``: per-split counts, their total, the written data YAML, and whether the folder was
    already up to date (nothing done)."""

    splits: dict[str, TileCounts] = field(default_factory=dict)
    total: TileCounts = field(default_factory=TileCounts)
    data_yaml: Path | None = None
    up_to_date: bool = False


# --- pure core --------------------------------------------------------------------------------------------------------
def labels_to_px(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """(n, 5) ``[cls, x, y, w, h]`` normalised -> (n, 4) float64 ``[x1, y1, x2, y2]`` original px."""
    lb = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    xy, wh = lb[:, 1:3], lb[:, 3:5]
    return np.concatenate((xy - wh / 2, xy + wh / 2), 1) * np.array([width, height, width, height], np.float64)


def intersect(boxes: np.ndarray, tile: np.ndarray | tuple) -> np.ndarray:
    """(n, 4) xyxy px boxes clipped to ``tile`` ``[x0, y0, x1, y1]`` px; empty intersections have zero width or
    height (never negative)."""
    x0, y0, x1, y1 = (float(v) for v in tile)
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(x0, x1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(y0, y1)
    return out


def _area(b: np.ndarray) -> np.ndarray:
    return (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)


def tile_labels(labels: np.ndarray, width: int, height: int, tiles: np.ndarray,
                min_visible: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Assign an image's objects to its tiles.

    Args:
        labels: (n, 5) ``[cls, x, y, w, h]`` normalised to the ``width`` x ``height`` px image.
        tiles: (t, 4) ``[x0, y0, x1, y1]`` original px (``make_tiles``).
        min_visible: share of an object's area that must lie in a tile to keep it there.
    Returns:
        (per-tile (k_i, 5) float64 ``[cls, x, y, w, h]`` normalised to the tile, clipped to it;
        kept (t, n) bool; dropped (t, n) bool: the object overlaps the tile but less than ``min_visible``).
        An overlap thinner than ``MIN_SIDE`` of the tile counts as none (neither kept nor dropped).
    """
    lb = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    boxes = labels_to_px(lb, width, height)
    area = _area(boxes)
    out, kept, dropped = [], np.zeros((len(tiles), len(lb)), bool), np.zeros((len(tiles), len(lb)), bool)
    for i, tile in enumerate(tiles):
        x0, y0, x1, y1 = (float(v) for v in tile)
        tw, th = x1 - x0, y1 - y0
        clip = intersect(boxes, tile)
        overlaps = (clip[:, 2] - clip[:, 0] > MIN_SIDE * tw) & (clip[:, 3] - clip[:, 1] > MIN_SIDE * th)
        keep = overlaps & (_area(clip) >= (min_visible - VIS_TOL) * area)
        kept[i], dropped[i] = keep, overlaps & ~keep
        c = clip[keep]
        xywh = np.stack((((c[:, 0] + c[:, 2]) / 2 - x0) / tw, ((c[:, 1] + c[:, 3]) / 2 - y0) / th,
                         (c[:, 2] - c[:, 0]) / tw, (c[:, 3] - c[:, 1]) / th), 1)
        out.append(np.concatenate((lb[keep, :1], xywh), 1))
    return out, kept, dropped


def tile_areas(areas: np.ndarray, width: int, height: int, tile: np.ndarray | tuple) -> np.ndarray:
    """Ignore areas (m, 4) ``[x1, y1, x2, y2]`` normalised to the image -> the (k, 4) parts inside ``tile`` (px),
    normalised to the tile; areas not overlapping the tile are left out."""
    a = np.asarray(areas, dtype=np.float64).reshape(-1, 4) * np.array([width, height, width, height], np.float64)
    x0, y0, x1, y1 = (float(v) for v in tile)
    c = intersect(a, tile)
    c = c[_area(c) > 0]
    return (c - np.array([x0, y0, x0, y0])) / np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])


def tile_stem(stem: str, tile: np.ndarray | tuple) -> str:
    """File stem of a tile: ``NAME_x{x0}_y{y0}`` (origin in original px)."""
    return f"{stem}_x{int(tile[0])}_y{int(tile[1])}"


def tile_suffix(src_suffix: str) -> str:
    """Suffix of the tiles of an image: JPEG sources stay JPEG (.jpeg kept), everything else becomes .png."""
    return JPEG_SUFFIXES.get(src_suffix.lower(), ".png")


def format_labels(rows: np.ndarray) -> str:
    """YOLO label text of (k, 5) ``[cls, x, y, w, h]`` rows: the class as an integer, coordinates with 6 decimals."""
    return "".join(f"{int(r[0])} " + " ".join(f"{v:.6f}" for v in r[1:]) + "\n" for r in rows)


# --- files ------------------------------------------------------------------------------------------------------------
def _encode(im: np.ndarray, suffix: str, name: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, im, params)
    if not ok:
        raise OSError(f"{name}: could not encode the tile as {suffix}")
    return buf.tobytes()


def tile_image(im_file: str, rel: Path, out_images: Path, p: TileParams, labels: np.ndarray,
               areas: np.ndarray) -> TileCounts:
    """Tile one image (``rel``: its path relative to the split's folder) with its ``labels`` (n, 5) and ignore
    ``areas`` (m, 4), both normalised (``read_inputs``), into ``out_images``; return its counts.

    Raises LabelError/OSError naming the file when the image cannot be decoded or a tile not encoded.
    """
    im = imread(im_file)
    if im is None:
        raise LabelError(f"{im_file}: cannot read the image (missing, unreadable or not an image)")
    h, w = im.shape[:2]
    tiles = make_tiles(h, w, p.size, p.overlap)
    per_tile, kept, dropped = tile_labels(labels, w, h, tiles, p.min_visible)
    c = TileCounts(images=1, objects=len(labels), kept=int(kept.sum()), dropped=int(dropped.sum()),
                   lost=int((~kept.any(0)).sum()) if len(labels) else 0)
    suffix = tile_suffix(Path(im_file).suffix)
    folder = out_images / rel.parent
    folder.mkdir(parents=True, exist_ok=True)
    for tile, rows in zip(tiles, per_tile):
        if p.skip_empty and not len(rows):
            c.skipped_empty += 1
            continue
        x0, y0, x1, y1 = (int(v) for v in tile)
        out = folder / (tile_stem(rel.stem, tile) + suffix)
        out.write_bytes(_encode(np.ascontiguousarray(im[y0:y1, x0:x1]), suffix, str(out)))
        out_lb = Path(img2label_paths([str(out)])[0])
        out_lb.parent.mkdir(parents=True, exist_ok=True)
        out_lb.write_text(format_labels(rows), encoding="utf-8")
        ign = tile_areas(areas, w, h, tile)
        if len(ign):
            ignore_file_for(out_lb).write_text(format_ignore(ign), encoding="utf-8")
        c.tiles += 1
        c.ignore_areas += len(ign)
    return c


def _split_base(files: list[str]) -> Path:
    """The folder the split's images are kept relative to (their common folder)."""
    return Path(os.path.commonpath([str(Path(f).parent) for f in files]))


def _source_files(data: dict, split: str) -> list[str]:
    src = data.get(split)
    if not src:
        raise DatasetError(f"{data.get('yaml_file') or 'data'}: no '{split}' split to tile")
    return list_image_files(src, prefix=f"{split}: ")


def _fingerprint(files_by_split: dict[str, list[str]], nc: int) -> str:
    """Paths, sizes and mtimes of every image, label and ignore file (``cache_key``), over the tiled splits."""
    ims = [f for s in sorted(files_by_split) for f in files_by_split[s]]
    lbs = img2label_paths(ims)
    return cache_key(ims, lbs + [str(ignore_file_for(f)) for f in lbs], nc)


def _read_marker(path: Path) -> dict | None:
    """The marker's content, None when absent or not a marker (unreadable, not a JSON mapping)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return old if isinstance(old, dict) else None


def _old_report(old: dict | None, marker: dict) -> TileReport | None:
    """The report of the tiling recorded in ``old`` (the marker read back) when it matches ``marker``, else None."""
    if old is None or old.get("params") != marker["params"] or old.get("source") != marker["source"]:
        return None
    report = TileReport()
    try:
        report.splits = {s: TileCounts(**c) for s, c in old["counts"].items()}
    except (AttributeError, KeyError, TypeError):  # a damaged marker: tile again
        return None
    for c in report.splits.values():
        report.total.add(c)
    report.up_to_date = True
    return report


def _data_yaml(data: dict, out: Path, splits: tuple[str, ...]) -> str:
    d = {"path": f"../{out.name}"}
    for k in ("train", "val", "test"):
        if k in splits:
            d[k] = f"images/{k}"
        elif data.get(k):
            d[k] = data[k]
    d["names"] = dict(data["names"])
    head = (f"# Tiles of {data.get('yaml_file')} written by data/tile.py (see tile.json); 'path' is this folder,\n"
            "# relative to this file. Splits that were not tiled point at the original images.\n")
    return head + yaml.safe_dump(d, sort_keys=False, allow_unicode=True)


def tile_dataset(data: str | Path, out: str | Path, size: int = 640, overlap: float = 0.2, min_visible: float = 0.5,
                 splits: tuple[str, ...] | list[str] = ("train", "val"), skip_empty: bool = False) -> TileReport:
    """Tile the ``splits`` of the dataset of the data YAML ``data`` into ``out`` (see the module docstring).

    Raises DatasetError/LabelError/DatasetNotFoundError/OSError naming the file, ValueError for bad parameters.
    """
    d = check_dataset(data)
    p = TileParams(int(size) if float(size).is_integer() else size, float(overlap), float(min_visible),
                   tuple(dict.fromkeys(splits)), bool(skip_empty), str(d.get("yaml_file") or data))
    p.check()
    out = Path(out).resolve()
    files = {s: _source_files(d, s) for s in p.splits}
    for s, fs in files.items():
        inside = next((f for f in fs if out in Path(f).parents), None)
        if inside:
            raise DatasetError(f"--out {out}: holds the source image {inside} ({s}); choose a separate folder")
    check_out_dir(out, d, files)
    marker = {"params": asdict(p) | {"splits": list(p.splits)}, "source": _fingerprint(files, d["nc"])}
    old = _read_marker(out / MARKER)
    report = _old_report(old, marker)
    if report is not None:
        if (out / PARTIAL).exists():  # killed between moving the marker in and removing this
            remove_inside(out / PARTIAL, out)
        report.data_yaml = out / DATA_YAML
        return report
    check_ours(out, old)
    inputs = {f: read_inputs(f, d["nc"]) for fs in files.values() for f in fs}  # every input checked first
    report = TileReport(data_yaml=out / DATA_YAML)
    with locked(out, "data.tile"), staging(out) as tmp:
        for s, fs in files.items():
            base, counts = _split_base(fs), TileCounts()
            for f in tqdm(fs, desc=f"tiling {s}", leave=False, mininterval=0.5, disable=None):  # no bar off a tty
                counts.add(tile_image(f, Path(f).relative_to(base), tmp / "images" / s, p, *inputs[f]))
            report.splits[s] = counts
            report.total.add(counts)
        (tmp / DATA_YAML).write_text(_data_yaml(d, out, p.splits), encoding="utf-8")
        marker["counts"] = {s: asdict(c) for s, c in report.splits.items()}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        parts = sorted({c.name for c in (*out.iterdir(), *tmp.iterdir())} - {LOCK_NAME, PARTIAL, tmp.name})
        swap_in(tmp, out, parts, MARKER, partial=PARTIAL)  # the marker last: complete from there
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.tile", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="data YAML of the dataset to tile")
    ap.add_argument("--size", type=int, default=640, help="tile side, original px")
    ap.add_argument("--overlap", type=float, default=0.2, help="fraction of the tile shared with its neighbour")
    ap.add_argument("--min-visible", type=float, default=0.5,
                    help="keep an object in a tile when at least this share of its area is inside")
    ap.add_argument("--out", required=True, type=Path, help="output folder (created; must be empty or a tile folder)")
    ap.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val", "test"])
    ap.add_argument("--skip-empty", action="store_true", help="do not write tiles without objects (default: keep)")
    a = ap.parse_args(argv)
    try:
        r = tile_dataset(a.data, a.out, a.size, a.overlap, a.min_visible, a.splits, a.skip_empty)
    except (UserError, OSError) as e:
        print(f"data.tile: error: {one_line(e)}".encode("utf-8", "backslashreplace").decode(), file=sys.stderr)
        return 1
    if r.up_to_date:
        print(f"{a.out}: already tiled with these parameters (tile.json), nothing to do")
    for s, c in r.splits.items():
        print(f"{s}: {c.line()}")
    if len(r.splits) > 1:
        print(f"all: {r.total.line()}")
    print(f"data YAML: {r.data_yaml}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
