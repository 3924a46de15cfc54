"""What ``data/tile.py`` checks before it writes anything: the output folder (not inside or holding a split folder
of the source dataset, not someone else's non-empty folder) and every input of the tiled splits (image header,
label file, ignore file). Errors name the folder or file; nothing is written or deleted here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.dataset.ignore import IgnoreFileError, ignore_file_for, load_ignore
from utils.dataset.labels import LabelError, img2label_paths, parse_label_file
from utils.dataset.sources import DatasetNotFoundError, list_image_files
from utils.errors import DatasetError
from utils.run_dirs import LOCK_NAME

SPLITS = ("train", "val", "test")
MARKER, PARTIAL = "tile.json", ".tile-incomplete"


def read_inputs(im_file: str, nc: int) -> tuple[np.ndarray, np.ndarray]:
    """Check one source image (its header: readable, not a decompression bomb) and read its labels and ignore areas
    before anything is written: ((n, 5) labels ``[cls, x, y, w, h]`` normalised, (m, 4) areas normalised).

    Raises LabelError/IgnoreFileError naming the file.
    """
    try:
        with Image.open(im_file) as im:
            im.size  # noqa: B018 - reading the header is the check
    except Image.DecompressionBombError as e:
        raise LabelError(f"{im_file}: image too large ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise LabelError(f"{im_file}: cannot read the image (missing, unreadable or not an image: {e})") from None
    lb_file = img2label_paths([im_file])[0]
    labels = parse_label_file(lb_file, nc)[0] if os.path.isfile(lb_file) else np.zeros((0, 5), np.float32)
    try:
        areas = load_ignore(ignore_file_for(lb_file))
    except UnicodeDecodeError:
        raise IgnoreFileError(f"{ignore_file_for(lb_file)}: not a UTF-8 text file") from None
    return labels, areas


def split_folders(data: dict, files: dict[str, list[str]]) -> dict[Path, str]:
    """Resolved folder -> split, for the image and label folders of every split of the source dataset: the folders
    its sources name, the folders holding its images, and their ``labels`` twins (``img2label_paths``)."""
    out: dict[Path, str] = {}
    for split in SPLITS:
        src = data.get(split)
        if not src:
            continue
        try:
            listed = files.get(split) or list_image_files(src)
        except DatasetNotFoundError:  # an untiled split that does not exist holds no tiles either
            listed = []
        folders = {Path(f).parent for f in listed}
        folders |= {Path(x) for x in (src if isinstance(src, list) else [src]) if os.path.isdir(x)}
        for f in folders:
            out.setdefault(f.resolve(), split)
            out.setdefault(Path(img2label_paths([str(f / "x.jpg")])[0]).parent.resolve(), split)
    return out


def check_out_dir(out: Path, data: dict, files: dict[str, list[str]]) -> None:
    """Refuse an ``out`` (resolved) inside a split folder of the source dataset (its images would be listed as
    that split's: tiles of train leaking into val) or holding one (emptying ``out`` would delete sources)."""
    for folder, split in split_folders(data, files).items():
        if out == folder or folder in out.parents:
            raise DatasetError(f"--out {out}: lies inside the {split} split folder {folder} of the source dataset "
                               f"(the {split} split would list the tiles); choose a folder outside images/ and labels/")
        if out in folder.parents:
            raise DatasetError(f"--out {out}: holds the {split} split folder {folder} of the source dataset; "
                               "choose a separate folder")


def check_ours(out: Path, old: dict | None) -> None:
    """Refuse (DatasetError, nothing deleted) an ``out`` that is not a folder, or that is not empty and was not
    written by data.tile (no marker, no ``.tile-incomplete``; a leftover lock file does not count)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DatasetError(f"--out {out}: exists and is not a folder")
    ours = (old is not None and "params" in old) or (out / PARTIAL).is_file()
    if not ours and any(c.name != LOCK_NAME for c in out.iterdir()):
        raise DatasetError(f"--out {out}: folder exists, is not empty and was not written by data.tile "
                           f"(no {MARKER}); choose another folder or empty it yourself")


__all__ = ["MARKER", "PARTIAL", "SPLITS", "check_out_dir", "check_ours", "read_inputs"]
