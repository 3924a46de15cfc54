"""Where images come from: file discovery (folders, .txt lists, globs), reading, and ``LoadImages``, the image and
video source of detect.py (streams, cameras and image URLs: utils/infer/streams.py).

Images are read with OpenCV as HWC uint8 BGR with EXIF orientation applied.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from utils.dataset.augmentations import letterbox
from utils.dataset.labels import IMG_FORMATS, VID_FORMATS
from utils.errors import UserError

LOGGER = logging.getLogger(__name__)


class DatasetNotFoundError(UserError, FileNotFoundError):
    """An image source is missing or holds no usable images; the message names the path."""


def list_image_files(path: str | Path | list, prefix: str = "") -> list[str]:
    """Image files of a source: a folder (recursive), a .txt list of paths (relative ones are relative to the
    list's folder), a glob, or a list of those. Sorted, absolute. Raises DatasetNotFoundError naming the path."""
    files = []
    for p in path if isinstance(path, list | tuple) else [path]:
        p = str(p)
        if "*" in p:
            matches = glob.glob(p, recursive=True)
            if not matches:
                raise DatasetNotFoundError(f"{prefix}{p}: no files match this glob")
            files += matches
        elif os.path.isdir(p):
            files += glob.glob(os.path.join(p, "**", "*.*"), recursive=True)
        elif os.path.isfile(p) and p.endswith(".txt"):
            parent = Path(p).parent
            for line in Path(p).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    q = Path(line.strip())
                    files.append(str(q if q.is_absolute() else parent / q))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise DatasetNotFoundError(f"{prefix}{p} does not exist (expected an image folder, a .txt list or a glob)")
    ims = sorted({str(Path(f).resolve()) for f in files if f.rsplit(".", 1)[-1].lower() in IMG_FORMATS})
    if not ims:
        raise DatasetNotFoundError(f"{prefix}no images found in {path} (supported formats: {', '.join(IMG_FORMATS)})")
    return ims


def output_stems(files: Iterable[str | Path]) -> dict[str, str]:
    """{file: the stem its outputs are named after (labels/STEM.txt, STEM.jpg, COCO image id)}.

    A stem shared by several files (``a/x.jpg`` and ``b/x.jpg`` from a .txt list, or ``x.jpg`` beside ``x.png``)
    would make their outputs overwrite each other: each such file gets ``STEM_<6 hex digits of the sha1 of its
    absolute path>`` instead, which depends on the file alone, not on the order or the other files. Unique stems
    are kept unchanged."""
    files = [str(f) for f in files]
    counts = Counter(Path(f).stem for f in files)
    return {f: (Path(f).stem if counts[Path(f).stem] == 1 else
                f"{Path(f).stem}_{hashlib.sha1(str(Path(f).resolve()).encode()).hexdigest()[:6]}") for f in files}


def imread(path: str) -> np.ndarray | None:
    """Read an image file as HWC uint8 BGR with EXIF orientation applied; None when unreadable.

    ``imdecode`` of the file's bytes: works with non-ASCII paths and is faster than ``cv2.imread`` (and than
    ``np.fromfile``, whose per-call overhead shows at dataloader rates: 348 vs 372 and 365 us for a 256 px JPEG).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    except (OSError, cv2.error):
        return None


def skipped_message(path: str | Path) -> str:
    """The warning for an input file that could not be read (not an image or video, damaged, or an image over
    OpenCV's limit of 2^30 pixels)."""
    return f"could not be read as an image or video, skipped: {path}"


def prepare_image(im0: np.ndarray, img_size: int, stride: int, auto: bool) -> np.ndarray:
    """(h0, w0, 3) BGR original pixels -> (3, H, W) uint8 RGB letterboxed to ``img_size`` input px (the network's
    input before scaling to [0, 1]); ``auto``: minimal padding to a multiple of ``stride``."""
    im = letterbox(im0, img_size, stride=stride, auto=auto)[0]
    return np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])


def video_fps(cap: cv2.VideoCapture, vid_stride: int = 1) -> float:
    """Frames per second of every ``vid_stride``-th frame of ``cap``, for writing results at the source's speed;
    30 / ``vid_stride`` when the source reports none or a nonsense rate (some RTSP servers report 90000)."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return (fps if math.isfinite(fps) and 0 < fps < 1000 else 30.0) / vid_stride


class LoadImages:
    """Images and videos for inference: files, folders, globs, .txt lists (as ``list_image_files``) and videos.

    Iterating yields (path, im (3, H, W) uint8 RGB letterboxed numpy array, im0 (h0, w0, 3) BGR original pixels,
    cv2.VideoCapture or None, description string). Unreadable images and videos are skipped, listed in ``skipped``
    and reported (one warning each, unless ``warn`` is False). Videos give every ``vid_stride``-th frame (frames N,
    2N, ... numbered 1, 2, ... in ``frame``); ``fps`` is their rate (source fps / ``vid_stride``), for writing
    results at the source's speed.
    """

    def __init__(self, path: str | Path | list, img_size: int = 640, stride: int = 32, auto: bool = True,
                 vid_stride: int = 1):
        files = []
        for p in path if isinstance(path, list | tuple) else [path]:
            p = str(p)
            if "*" in p:
                files += sorted(glob.glob(p, recursive=True))
            elif os.path.isdir(p):
                files += sorted(glob.glob(os.path.join(p, "*.*")))
            elif os.path.isfile(p) and p.endswith(".txt"):
                parent = Path(p).parent
                files += [str(q if (q := Path(x.strip())).is_absolute() else parent / q)
                          for x in Path(p).read_text(encoding="utf-8").splitlines() if x.strip()]
            elif os.path.isfile(p):
                files.append(p)
            else:
                raise FileNotFoundError(f"source {p} does not exist")
        images = [f for f in files if f.rsplit(".", 1)[-1].lower() in IMG_FORMATS]
        videos = [f for f in files if f.rsplit(".", 1)[-1].lower() in VID_FORMATS]
        if not images and not videos:
            raise FileNotFoundError(f"no images or videos found in {path} (images: {', '.join(IMG_FORMATS)}; "
                                    f"videos: {', '.join(VID_FORMATS)})")
        self.files, self.video_flag = images + videos, [False] * len(images) + [True] * len(videos)
        self.nf, self.img_size, self.stride, self.auto, self.vid_stride = len(self.files), img_size, stride, auto, \
            vid_stride
        self.cap, self.frame, self.frames, self.fps = None, 0, 0, 30.0
        self.skipped: list[str] = []  # files that could not be read, in order
        self.warn = True

    def __len__(self) -> int:
        return self.nf

    def __iter__(self):
        self.count, self.skipped = 0, []
        return self

    def _skip(self, path: str) -> None:
        self.skipped.append(path)
        if self.warn:
            LOGGER.warning(skipped_message(path))

    def _open_video(self, path: str) -> None:
        self.cap = cv2.VideoCapture(path)
        self.frame = 0
        self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) / self.vid_stride)
        self.fps = video_fps(self.cap, self.vid_stride)

    def __next__(self):
        while self.count < self.nf:
            path = self.files[self.count]
            if self.video_flag[self.count]:
                if self.cap is None:
                    self._open_video(path)
                for _ in range(self.vid_stride - 1):
                    self.cap.grab()
                ok, im0 = self.cap.read()
                if not ok:  # end of this video (or unreadable): next file
                    if self.frame == 0:
                        self._skip(path)
                    self.cap.release()
                    self.cap, self.count = None, self.count + 1
                    continue
                self.frame += 1
                s = f"video {self.count + 1}/{self.nf} ({self.frame}/{self.frames}) {path}: "
            else:
                self.count += 1
                im0 = imread(path)  # honours EXIF orientation
                if im0 is None:  # not an image, or over OpenCV's pixel limit (2^30 px)
                    self._skip(path)
                    continue
                s = f"image {self.count}/{self.nf} {path}: "
            return path, prepare_image(im0, self.img_size, self.stride, self.auto), im0, self.cap, s
        raise StopIteration
