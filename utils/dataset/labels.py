"""YOLO labels: verification of one image/label pair (messages name the file and row), a parallel scan of a
dataset, and its label cache (pickle-free .npz written atomically, keyed by paths, sizes, mtimes and nc).

Label files hold one object per row: ``cls x y w h`` with x, y the box centre and w, h its size, all **normalised**
to [0, 1] by the image width/height. A missing label file means an image with no objects (as YOLOv5).

Decisions (documented here once):
- Polygon rows (``cls x1 y1 x2 y2 x3 y3 ...``, an odd number >= 7 of columns) are converted to their bounding box
  like YOLOv5 does for segment datasets; the polygon itself is not kept (no copy-paste augmentation).
- One bad row makes the whole pair *corrupt*: it is skipped, because keeping the other rows would teach the model
  that the unlabelled object is background. The message names every bad row (1-based line numbers).
- Coordinates within ``COORD_TOL`` outside [0, 1] are clipped; further out the row is rejected. Box edges that run
  past the image border are clipped to it (a warning counts them); zero-size boxes are rejected.
- Duplicate rows are removed and counted in a warning; the pair is kept.
- A JPEG without its end-of-image marker is fully decoded: kept with a warning if that works, else corrupt.
  Files are never rewritten (YOLOv5 re-saves them; we do not touch user data).
- An optional ignore-area file ``NAME.ignore.txt`` beside ``NAME.txt`` (utils/dataset/ignore.py) is read with the labels
  and
  kept in the cache; a malformed one makes the pair corrupt, like a bad label row.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from utils.dataset.ignore import IgnoreFileError, ignore_file_for, load_ignore
from utils.errors import UserError

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")
COORD_TOL = 1e-3  # normalised coordinates in [-tol, 1 + tol] are clipped to [0, 1]; beyond is an error
MIN_IMAGE_SIDE = 10  # pixels; YOLOv5 rejects images under 10 px
MAX_ROW_ERRORS = 5  # rows listed in one message before "... and N more"
_EXIF_ORIENTATION = 0x0112


@dataclass
class LabelResult:
    """Outcome of verifying one image/label pair.

    ``labels`` (n, 5) float32 rows ``[cls, x, y, w, h]`` normalised; ``ignore`` (m, 4) float32 ignore areas
    ``[x1, y1, x2, y2]`` normalised (m = 0 without an ignore file); ``shape`` (width, height) in original pixels
    after EXIF rotation, None when the image is unusable. Counts are 0/1 flags summed over a dataset:
    ``found`` label file present, ``missing`` label file absent, ``empty`` present but without rows,
    ``corrupt`` pair rejected (then ``labels`` is empty and ``ok`` False). ``messages`` name the file (and row).
    """

    im_file: str
    lb_file: str
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.float32))
    shape: tuple[int, int] | None = None
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    found: int = 0
    missing: int = 0
    empty: int = 0
    corrupt: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt


class LabelError(UserError):
    """A label file or image is unusable; the message names the file (and row)."""


def img2label_paths(img_paths: list[str] | tuple[str, ...]) -> list[str]:
    """YOLOv5 convention: the last ``/images/`` path component becomes ``/labels/``, the extension ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(str(x).rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]


def exif_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of a PIL image as displayed, i.e. swapped for EXIF orientations 5-8 (90/270 degree)."""
    w, h = img.size
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF: ignore orientation
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def verify_image(im_file: str) -> tuple[tuple[int, int], list[str]]:
    """Check that ``im_file`` is a readable image of a supported format, >= 10 px a side.

    Returns ((width, height) EXIF-corrected, warnings). Raises LabelError naming the file and the problem.
    """
    path = Path(im_file)
    if not path.is_file():
        raise LabelError(f"{im_file}: image file not found")
    if path.stat().st_size == 0:
        raise LabelError(f"{im_file}: image file is empty (0 bytes)")
    warnings = []
    try:
        with Image.open(im_file) as im:
            fmt = (im.format or "").lower()
            im.verify()  # structure check, no decode
        if fmt not in IMG_FORMATS:
            raise LabelError(f"{im_file}: unsupported image format '{fmt}' (supported: {', '.join(IMG_FORMATS)})")
        with Image.open(im_file) as im:
            shape = exif_size(im)
            if fmt in ("jpeg", "jpg", "mpo"):
                with open(im_file, "rb") as f:
                    f.seek(-2, 2)
                    complete = f.read() == b"\xff\xd9"
                im.load()  # decode the pixels: a truncated or corrupt file raises here
                if not complete:
                    warnings.append(f"{im_file}: JPEG has no end-of-image marker but decodes; kept")
            else:
                im.load()
    except LabelError:
        raise
    except UnidentifiedImageError:
        raise LabelError(f"{im_file}: not a readable image (unknown or corrupt format)") from None
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError/struct.error... for damaged files
        raise LabelError(f"{im_file}: image pixels cannot be decoded (truncated or corrupt file: {e})") from None
    if shape[0] < MIN_IMAGE_SIDE or shape[1] < MIN_IMAGE_SIDE:
        raise LabelError(f"{im_file}: image size {shape[0]}x{shape[1]} px is under {MIN_IMAGE_SIDE} px a side")
    return shape, warnings


def _parse_row(values: list[str], nc: int | None) -> tuple[list[float] | None, str | None]:
    """One label row -> ([cls, x, y, w, h] normalised, None) or (None, problem)."""
    n = len(values)
    if n != 5 and (n < 7 or n % 2 == 0):
        return None, f"expected 5 columns 'cls x y w h' (or a polygon 'cls x1 y1 x2 y2 x3 y3 ...'), got {n}"
    try:
        nums = [float(v) for v in values]
    except ValueError:
        bad = next(v for v in values if not _is_float(v))
        return None, f"not a number: {bad!r}"
    if not all(math.isfinite(v) for v in nums):
        return None, "NaN or infinite value"
    cls, coords = nums[0], np.array(nums[1:], dtype=np.float64)
    if cls < 0 or cls != int(cls):
        return None, f"class id {values[0]} must be a non-negative integer"
    if nc is not None and cls >= nc:
        return None, f"class id {int(cls)} >= nc={nc} (valid ids 0..{nc - 1})"
    if (coords < -COORD_TOL).any() or (coords > 1 + COORD_TOL).any():
        return None, f"coordinates {values[1:]} outside [0, 1]: labels must be normalised by the image size"
    coords = coords.clip(0.0, 1.0)
    if n > 5:  # polygon -> bounding box
        xy = coords.reshape(-1, 2)
        (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
        coords = np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
    if coords[2] <= 0 or coords[3] <= 0:
        return None, f"zero-size box (w={coords[2]:g}, h={coords[3]:g})"
    return [cls, *coords.tolist()], None


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def parse_label_file(lb_file: str, nc: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Parse one YOLO label file -> ((n, 5) float32 [cls, x, y, w, h] normalised, warnings).

    Raises LabelError listing every bad row as ``file:line: problem``. Boxes whose edges run past the image are
    clipped to it; duplicate rows are removed; both are reported in the warnings.
    """
    try:
        text = Path(lb_file).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LabelError(f"{lb_file}: not a text file (cannot decode as UTF-8)") from None
    rows, errors = [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        values = line.split()
        if not values:
            continue
        row, problem = _parse_row(values, nc)
        if problem:
            errors.append(f"{lb_file}:{line_no}: {problem}")
        else:
            rows.append(row)
    if errors:
        more = f"\n  ... and {len(errors) - MAX_ROW_ERRORS} more bad rows" if len(errors) > MAX_ROW_ERRORS else ""
        raise LabelError("\n  ".join(errors[:MAX_ROW_ERRORS]) + more)
    warnings = []
    lb = np.array(rows, dtype=np.float32).reshape(-1, 5)
    if len(lb):
        x1y1 = lb[:, 1:3] - lb[:, 3:5] / 2
        x2y2 = lb[:, 1:3] + lb[:, 3:5] / 2
        outside = ((x1y1 < -COORD_TOL) | (x2y2 > 1 + COORD_TOL)).any(1)
        if outside.any():
            x1y1, x2y2 = x1y1.clip(0, 1), x2y2.clip(0, 1)
            lb[:, 1:3], lb[:, 3:5] = (x1y1 + x2y2) / 2, x2y2 - x1y1
            lines = ", ".join(str(i + 1) for i in np.flatnonzero(outside)[:MAX_ROW_ERRORS])
            warnings.append(f"{lb_file}: {int(outside.sum())} box(es) extending past the image border clipped "
                            f"(rows {lines}{', ...' if outside.sum() > MAX_ROW_ERRORS else ''})")
        zero = (lb[:, 3] <= 0) | (lb[:, 4] <= 0)  # after clipping, or sizes that underflow float32 (1e-300)
        if zero.any():
            rows_ = ", ".join(str(i + 1) for i in np.flatnonzero(zero)[:MAX_ROW_ERRORS])
            raise LabelError(f"{lb_file}: zero-size box(es) after clipping to the image / float32 (rows {rows_})")
        _, first = np.unique(lb, axis=0, return_index=True)
        if len(first) < len(lb):
            warnings.append(f"{lb_file}: {len(lb) - len(first)} duplicate label row(s) removed")
            lb = lb[np.sort(first)]
    return lb, warnings


def verify_image_label(im_file: str, lb_file: str, nc: int | None = None) -> LabelResult:
    """Verify one image and its label file; never raises for bad data (the result says what is wrong).

    Args:
        im_file: image path.
        lb_file: YOLO label path (see ``img2label_paths``); a missing file means no objects.
        nc: number of classes; class ids must be < nc when given.
    Returns:
        LabelResult with labels (n, 5) [cls, x, y, w, h] normalised, shape (width, height) in original pixels,
        found/missing/empty/corrupt flags and messages naming the file (and row).
    """
    res = LabelResult(str(im_file), str(lb_file))
    try:
        res.shape, warnings = verify_image(str(im_file))
        res.messages += warnings
        if os.path.isfile(lb_file):
            res.found = 1
            res.labels, warnings = parse_label_file(str(lb_file), nc)
            res.messages += warnings
            res.empty = int(len(res.labels) == 0)
        else:
            res.missing = 1
        ign_file = ignore_file_for(lb_file)
        try:
            res.ignore = load_ignore(ign_file)  # (0, 4) when there is no ignore file
        except UnicodeDecodeError:
            raise LabelError(f"{ign_file}: not a text file (cannot decode as UTF-8)") from None
    except (LabelError, IgnoreFileError) as e:
        res.corrupt, res.shape, res.labels = 1, None, np.zeros((0, 5), np.float32)
        res.ignore = np.zeros((0, 4), np.float32)
        res.messages.append(f"ignoring corrupt image/label: {e}")
    except OSError as e:  # unreadable label file (permissions, a folder, ...)
        res.corrupt, res.shape, res.labels = 1, None, np.zeros((0, 5), np.float32)
        res.messages.append(f"ignoring corrupt image/label: {lb_file}: cannot read ({e})")
    return res




# --- a whole dataset: parallel scan and the label cache -------------------------------------------------------------
CACHE_VERSION = 3  # 2: ignore areas; 3: missing-label summary. Bump when the layout or the rules change


@dataclass
class ScanResult:
    """Verified labels of a dataset: only the usable images are listed (corrupt ones are skipped).

    ``labels[i]`` (n_i, 5) [cls, x, y, w, h] normalised for ``im_files[i]``; ``shapes`` (n, 2) int (width, height)
    original pixels; ``counts`` found/missing/empty/corrupt/total; ``messages`` one line per problem;
    ``ignores[i]`` (m_i, 4) [x1, y1, x2, y2] normalised ignore areas (m_i = 0 for most images; an empty list
    means none anywhere).
    """

    im_files: list[str]
    labels: list[np.ndarray]
    shapes: np.ndarray
    counts: dict[str, int]
    messages: list[str]
    ignores: list[np.ndarray] = field(default_factory=list)


def cache_key(im_files: list[str], label_files: list[str], nc: int | None) -> str:
    """sha256 over every image/label path with its size and mtime, the class count and the cache version; an
    ignore-area file (``ignore_file_for``) enters only when present, so adding, changing or removing one
    invalidates the cache."""
    h = hashlib.sha256(f"v{CACHE_VERSION} nc={nc}\n".encode())
    for f in (*im_files, *label_files):
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0missing\n".encode())
    for lb in label_files:
        try:
            st = os.stat(ignore_file_for(lb))
            h.update(f"{lb}\0ignore\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # no ignore file: the usual case, adds nothing
            pass
    return h.hexdigest()


def scan_labels(im_files: list[str], label_files: list[str], nc: int | None = None, workers: int = 8,
                desc: str = "Scanning") -> ScanResult:
    """Verify every image/label pair in parallel (a thread pool: PIL decodes without the GIL) with a tqdm bar."""
    counts = dict(found=0, missing=0, empty=0, corrupt=0, total=len(im_files))
    kept, labels, shapes, msgs, ignores, no_label = [], [], [], [], [], []
    nw = max(1, min(workers, os.cpu_count() or 1, len(im_files)))
    with ThreadPool(nw) as pool:
        results = pool.imap(lambda a: verify_image_label(a[0], a[1], nc), zip(im_files, label_files), chunksize=8)
        bar = tqdm(results, desc=desc, total=len(im_files), leave=False, mininterval=0.5)
        for r in bar:
            for k in ("found", "missing", "empty", "corrupt"):
                counts[k] += getattr(r, k)
            msgs += r.messages
            if r.missing:
                no_label.append(r.lb_file)
            if r.ok:
                kept.append(r.im_file)
                labels.append(r.labels)
                shapes.append(r.shape)
                ignores.append(r.ignore)
            bar.set_postfix_str(f"{counts['found']} labelled, {counts['missing'] + counts['empty']} backgrounds, "
                                f"{counts['corrupt']} corrupt", refresh=False)
    if no_label:
        msgs.append(missing_labels_message(no_label, counts["total"]))
    return ScanResult(kept, labels, np.array(shapes, dtype=np.int64).reshape(-1, 2), counts, msgs, ignores)


def missing_labels_message(missing: list[str], total: int) -> str:
    """One line: how many of ``total`` images have no label file, with the first expected path (and a hint when a
    file differing only in the case of its extension exists, e.g. ``a.TXT``)."""
    first = Path(missing[0])
    hint = next((f"; found {q.name}: label files must end in .txt" for q in (first.with_suffix(".TXT"),
                                                                             first.with_suffix(".Txt"))
                 if q.is_file() and q.name != first.name), "")
    return f"{len(missing)} of {total} images have no label file (e.g. {first}{hint})"


def require_labels(labels: list[np.ndarray], label_files: list[str], source: str | Path | list,
                   prefix: str = "") -> None:
    """Refuse a split without a single label row (validation would report 0 for every metric and say nothing).

    ``labels[i]`` (n_i, 5) of image i, ``label_files[i]`` its label path (``img2label_paths``). Raises LabelError in
    one line naming the split's source and label folder.
    """
    if any(len(lb) for lb in labels):
        return
    folder = Path(label_files[0]).parent if label_files else Path("labels")
    n, n_files = len(label_files), sum(os.path.isfile(f) for f in label_files)
    if not n_files:
        what = f"none of its {n} images has a label file"
    elif n_files == n:
        what = f"all {n} label files are empty"
    else:
        what = f"{n - n_files} of its {n} images have no label file and the other {n_files} are empty"
    raise LabelError(f"{prefix}{source}: no labels to validate against: {what} (expected YOLO .txt files in "
                     f"{folder})")


def save_label_cache(path: Path, key: str, scan: ScanResult) -> bool:
    """Write the cache atomically (temp file + os.replace) as a pickle-free .npz; False when not writeable."""
    n_per = np.array([len(lb) for lb in scan.labels], dtype=np.int64)
    ignores = scan.ignores or [np.zeros((0, 4), np.float32)] * len(scan.labels)
    arrays = dict(version=np.array(CACHE_VERSION), key=np.array(key), im_files=np.array(scan.im_files, dtype=str),
                  n_per=n_per, shapes=scan.shapes, messages=np.array(scan.messages, dtype=str),
                  labels=np.concatenate(scan.labels, 0) if scan.labels else np.zeros((0, 5), np.float32),
                  counts=np.array([scan.counts[k] for k in ("found", "missing", "empty", "corrupt", "total")]),
                  n_ign=np.array([len(a) for a in ignores], dtype=np.int64),
                  ignores=np.concatenate(ignores, 0) if ignores else np.zeros((0, 4), np.float32))
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
            np.savez(f, **arrays)
        os.replace(f.name, path)
        return True
    except OSError:
        with contextlib.suppress(Exception):
            os.unlink(f.name)
        return False


def load_label_cache(path: Path, key: str) -> ScanResult | None:
    """Read a cache written by ``save_label_cache``; None when absent, stale (other key/version) or corrupt."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION or str(z["key"]) != key:
                return None
            n_per, labels = z["n_per"], z["labels"].astype(np.float32)
            split = np.split(labels, np.cumsum(n_per)[:-1]) if len(n_per) else []
            counts = dict(zip(("found", "missing", "empty", "corrupt", "total"), (int(c) for c in z["counts"])))
            n_ign, ign = z["n_ign"], z["ignores"].astype(np.float32).reshape(-1, 4)
            ignores = np.split(ign, np.cumsum(n_ign)[:-1]) if len(n_ign) else []
            if len(ignores) != len(split):
                return None
            return ScanResult([str(f) for f in z["im_files"]], [s.reshape(-1, 5) for s in split],
                              z["shapes"].astype(np.int64).reshape(-1, 2), counts, [str(m) for m in z["messages"]],
                              ignores)
    except Exception:  # missing, truncated, not an npz, wrong keys: rebuild
        return None


__all__ = ["IMG_FORMATS", "VID_FORMATS", "COORD_TOL", "LabelResult", "LabelError", "img2label_paths", "exif_size",
           "verify_image", "parse_label_file", "verify_image_label", "ScanResult", "cache_key", "scan_labels",
           "save_label_cache", "load_label_cache", "CACHE_VERSION", "missing_labels_message", "require_labels"]
