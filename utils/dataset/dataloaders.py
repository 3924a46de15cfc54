"""Training and validation data: ``LoadImagesAndLabels`` and ``create_dataloader`` (inference sources: sources.py).

Images are read with OpenCV (HWC uint8 BGR, EXIF orientation applied) and returned as CHW uint8 RGB tensors.
Labels come out as (n, 6) ``[img_idx, cls, x, y, w, h]`` **normalised** to the returned image; ``collate_fn``
fills ``img_idx``. Augmentations follow YOLOv5 v7.0 step by step and draw their random numbers in the same order,
from the dataset's own ``random.Random`` / ``numpy.random.RandomState`` (seeded; re-seeded per DataLoader worker).
"""

from __future__ import annotations

import logging
import math
import os
import random
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, distributed, get_worker_info
from tqdm import tqdm

from utils.config.hyp import Hyp, hyp_from_model_or_dict
from utils.dataset.aug_stats import AugLossCounter
from utils.dataset.augmentations import augment_hsv, letterbox, mixup, random_perspective
from utils.dataset.copy_paste import POOL_IMAGES, paste_small_objects
from utils.dataset.ignore import fill_ignore, to_pixels
from utils.dataset.labels import (
    ScanResult,
    cache_key,
    img2label_paths,
    load_label_cache,
    save_label_cache,
    scan_labels,
)
from utils.dataset.sources import DatasetNotFoundError, imread, list_image_files
from utils.errors import UsageError
from utils.ops.boxes import xywhn2xyxy, xyxy2xywhn

LOGGER = logging.getLogger(__name__)


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class LoadImagesAndLabels(Dataset):
    """YOLO-format dataset with YOLOv5 v7.0 augmentation (mosaic, perspective, HSV, flips, mixup) and rect batches.

    Attributes (YOLOv5-compatible): ``im_files``, ``label_files``, ``labels`` (list of (n_i, 5) [cls, x, y, w, h]
    normalised), ``shapes`` (n, 2) (width, height) original pixels, ``n``, ``batch``, ``batch_shapes`` (rect),
    ``counts`` (found/missing/empty/corrupt/total) and ``messages`` from the label scan. ``aug_lost`` (augmenting
    sets only, else None): the per-size counts of labels augmentation dropped (utils/dataset/aug_stats.py).
    ``ignores[i]``: image i's ignore areas (m, 4) [x1, y1, x2, y2] normalised, or None without any
    (utils/dataset/ignore.py); ``load_image`` fills them with the letterbox grey before any augmentation, and val.py
    drops detections centred in them. ``__getitem__`` -> (img (3, H, W) uint8 RGB tensor, labels (n, 6) [0, cls, x, y,
    w, h] normalised, path, shapes ``((h0, w0), ((h / h0, w / w0), (padw, padh)))`` for rescaling to original pixels,
    None for mosaics).
    """

    def __init__(self, path: str | Path | list, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: Hyp | dict | None = None, rect: bool = False, cache_images: bool | str = False,
                 single_cls: bool = False, stride: int = 32, pad: float = 0.0, prefix: str = "",
                 nc: int | None = None, seed: int = 0, workers: int = 8):
        self.img_size, self.augment, self.rect, self.stride = img_size, augment, rect, stride
        self.hyp = hyp_from_model_or_dict(hyp) if (augment or hyp is not None) else None
        self.mosaic = augment and not rect
        self.mosaic_border = (-img_size // 2, -img_size // 2)
        self.path = path
        self.aug_lost = AugLossCounter() if augment else None  # labels augmentation drops (utils/dataset/aug_stats.py)
        self.reseed(seed)

        im_files = list_image_files(path, prefix)
        label_files = img2label_paths(im_files)
        self.cache_path = self._cache_path(path, label_files)
        key = cache_key(im_files, label_files, nc)
        scan = load_label_cache(self.cache_path, key)
        if scan is None:
            desc = f"{prefix}Scanning {self.cache_path.with_suffix('')}"
            scan = scan_labels(im_files, label_files, nc, workers, desc=desc)
            if not save_label_cache(self.cache_path, key, scan):
                LOGGER.warning(f"{prefix}label cache folder {self.cache_path.parent} is not writeable, cache not saved")
        self._report(scan, prefix, path)

        self.im_files, self.labels, self.shapes = scan.im_files, [lb.copy() for lb in scan.labels], scan.shapes
        # None where an image has no ignore areas: the only per-item cost for datasets without ignore files
        self.ignores: list[np.ndarray | None] = ([a if len(a) else None for a in scan.ignores]
                                                 or [None] * len(scan.im_files))
        self.label_files = img2label_paths(self.im_files)
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        self.n = n = len(self.im_files)
        self.batch = np.arange(n) // batch_size  # batch index of each image
        self.indices = range(n)
        if rect:
            self._sort_for_rect(batch_size, pad)
        self.ims: list[np.ndarray | None] = [None] * n
        self.im_hw0: list[tuple[int, int] | None] = [None] * n
        self.im_hw: list[tuple[int, int] | None] = [None] * n
        self.npy_files: list[Path] | None = None  # --cache disk: resized images saved beside the originals
        if cache_images in (True, "ram"):
            self._cache_ram(prefix)
        elif cache_images == "disk":
            self._cache_disk(prefix, workers)
        elif cache_images not in (False, None, ""):
            raise UsageError(f"{prefix}cache {cache_images!r}: use 'ram', 'disk' or no caching")

    # --- construction helpers --------------------------------------------------------------------------------------
    @staticmethod
    def _cache_path(path: str | Path | list, label_files: list[str]) -> Path:
        p = Path(path[0] if isinstance(path, list | tuple) else path)
        return p.with_suffix(".cache") if p.is_file() else Path(label_files[0]).parent.with_suffix(".cache")

    def _report(self, scan: ScanResult, prefix: str, path) -> None:
        self.counts, self.messages = scan.counts, scan.messages
        c = scan.counts
        for m in scan.messages:
            LOGGER.warning(f"{prefix}{m}")
        if c["corrupt"]:
            LOGGER.warning(f"{prefix}{c['corrupt']} of {c['total']} images skipped as corrupt (listed above)")
        if not scan.im_files:
            raise DatasetNotFoundError(f"{prefix}no usable images in {path}: all {c['total']} are corrupt, e.g. "
                                       + "; ".join(scan.messages[:3]))
        if self.augment and not sum(len(lb) for lb in scan.labels):
            raise DatasetNotFoundError(f"{prefix}no labels found for {path} (expected .txt files in a 'labels' folder "
                                       f"beside 'images', e.g. {img2label_paths(scan.im_files[:1])[0]}): "
                                       "cannot train")

    def _sort_for_rect(self, batch_size: int, pad: float) -> None:
        """Sort images by aspect ratio and give each batch the smallest stride-multiple shape (input pixels)."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # height / width
        order = ar.argsort()
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.ignores = [self.ignores[i] for i in order]
        self.shapes, ar = self.shapes[order], ar[order]
        nb = int(self.batch[-1]) + 1
        shapes = np.ones((nb, 2))
        for i in range(nb):
            ari = ar[self.batch == i]
            lo, hi = ari.min(), ari.max()
            if hi < 1:
                shapes[i] = [hi, 1]
            elif lo > 1:
                shapes[i] = [1, 1 / lo]
        self.batch_shapes = np.ceil(shapes * self.img_size / self.stride + pad).astype(int) * self.stride

    def _cache_ram(self, prefix: str) -> None:
        r = self.img_size / self.shapes.max(1)
        need = int((self.shapes.prod(1) * r**2 * 3).sum())
        avail = _available_memory()
        if avail is not None and need * 1.1 > avail:
            LOGGER.warning(f"{prefix}caching images needs {need / 2**30:.1f} GB RAM, {avail / 2**30:.1f} GB available: "
                           "not caching")
            return
        for i in range(self.n):
            self.ims[i], self.im_hw0[i], self.im_hw[i] = self.load_image(i)

    def npy_path(self, i: int) -> Path:
        """--cache disk file of image i, beside it: ``NAME.EXT.<img_size><l|a>.npy`` (the size and the resize
        interpolation, linear or area, are in the name, so train and val or two image sizes never share a file)."""
        f = Path(self.im_files[i])
        return f.with_name(f"{f.name}.{self.img_size}{'l' if self.augment else 'a'}.npy")

    def _cache_disk(self, prefix: str, workers: int) -> None:
        """Decode and resize every image once into its .npy (see ``npy_path``); a .npy older than its image is
        redone. ``load_image`` then reads the .npy instead of decoding. Unwritable folders: a warning, no cache."""
        self.npy_files = [self.npy_path(i) for i in range(self.n)]

        def one(i: int) -> int:
            f, npy = Path(self.im_files[i]), self.npy_files[i]
            if npy.is_file() and npy.stat().st_mtime_ns >= f.stat().st_mtime_ns:
                return 0
            im = self._read_resized(i)[0]
            tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")  # rename: a killed run never leaves half a file
            with open(tmp, "wb") as fh:
                np.save(fh, im)
            os.replace(tmp, npy)
            return im.nbytes

        try:
            with ThreadPool(max(1, min(workers, os.cpu_count() or 1))) as pool:
                written = sum(tqdm(pool.imap(one, range(self.n)), total=self.n, desc=f"{prefix}Caching images (disk)",
                                   bar_format="{l_bar}{bar:10}{r_bar}"))
        except OSError as e:
            LOGGER.warning(f"{prefix}--cache disk: {e}; not caching")
            self.npy_files = None
            return
        LOGGER.info(f"{prefix}--cache disk: {written / 2**20:.1f} MiB written, {self.n} images cached as .npy")

    def reseed(self, seed: int) -> None:
        """(Re)seed the augmentation random generators (called per DataLoader worker by ``seed_worker``)."""
        self.rng = random.Random(seed)
        self.np_rng = np.random.RandomState(seed % 2**32)

    # --- items -----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image ``i`` resized so its long side is ``img_size`` -> (BGR image, (h0, w0) original, (h, w) resized).

        Ignore areas are filled with grey 114 here, after the resize (every touched resized pixel, so no sliver
        survives interpolation) and before any augmentation: mosaic, perspective, mixup and copy-paste see grey.
        """
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        if self.npy_files is not None:
            im = np.load(self.npy_files[i])
            w0, h0 = (int(x) for x in self.shapes[i])  # original px, from the label scan
        else:
            im, (h0, w0) = self._read_resized(i)
        if self.ignores[i] is not None:
            fill_ignore(im, to_pixels(self.ignores[i], im.shape[1], im.shape[0]))
        return im, (h0, w0), im.shape[:2]

    def _read_resized(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image ``i`` decoded and resized so its long side is ``img_size`` -> (BGR image, (h0, w0) original)."""
        f = self.im_files[i]
        im = imread(f)
        if im is None:
            raise FileNotFoundError(f"image could not be read: {f} (deleted or changed since the label scan?)")
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        return im, (h0, w0)

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """4-image mosaic around a random centre, then random_perspective down to (img_size, img_size).

        With probability ``hyp.small_paste`` small objects are copied on the canvas before the perspective
        (utils/dataset/copy_paste.py); when that is off no random number is drawn for it, so YOLOv5's sequence holds.
        Returns (image, (n, 5) [cls, x1, y1, x2, y2] input pixels).
        """
        s, hyp, rng = self.img_size, self.hyp, self.rng
        yc, xc = (int(rng.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        indices = [index] + rng.choices(self.indices, k=3)
        rng.shuffle(indices)
        img4 = None
        labels4, rects = [], []  # rects: canvas x1y1x2y2 of each placed image (the content, not the border)
        for i, j in enumerate(indices):
            img, _, (h, w) = self.load_image(j)
            if img4 is None:
                img4 = np.full((s * 2, s * 2, img.shape[2]), 114, dtype=np.uint8)
            if i == 0:  # top left
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif i == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif i == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            img4[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            rects.append((x1a, y1a, x2a, y2a))
            labels = self.labels[j].copy()
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, x1a - x1b, y1a - y1b)
            labels4.append(labels)
        labels4 = np.concatenate(labels4, 0)
        np.clip(labels4[:, 1:], 0, 2 * s, out=labels4[:, 1:])
        if hyp.small_paste > 0 and hyp.small_paste_n >= 1 and rng.random() < hyp.small_paste:
            pool = [(self.load_image(j)[0], self.labels[j])  # resized as in a mosaic: canvas scale
                    for j in (rng.choices(self.indices, k=POOL_IMAGES) if hyp.small_paste_pool else ())]
            img4, labels4 = paste_small_objects(img4, labels4, rects, self.np_rng, n=int(hyp.small_paste_n),
                                                max_area=hyp.small_paste_area, blend=hyp.small_paste_blend,
                                                pool=pool)
        return random_perspective(img4, labels4, degrees=hyp.degrees, translate=hyp.translate, scale=hyp.scale,
                                  shear=hyp.shear, perspective=hyp.perspective, border=self.mosaic_border, rng=rng,
                                  min_side=hyp.aug_min_side, on_boxes=self.aug_lost)

    def __getitem__(self, index: int):
        index = self.indices[index]
        hyp, rng = self.hyp, self.rng
        if self.mosaic and rng.random() < hyp.mosaic:
            img, labels = self.load_mosaic(index)
            shapes = None
            if rng.random() < hyp.mixup:
                img, labels = mixup(img, labels, *self.load_mosaic(rng.randint(0, self.n - 1)), np_rng=self.np_rng)
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)
            labels = self.labels[index].copy()
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
            if self.augment:
                img, labels = random_perspective(img, labels, degrees=hyp.degrees, translate=hyp.translate,
                                                 scale=hyp.scale, shear=hyp.shear, perspective=hyp.perspective,
                                                 rng=rng, min_side=hyp.aug_min_side, on_boxes=self.aug_lost)
        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(img, hgain=hyp.hsv_h, sgain=hyp.hsv_s, vgain=hyp.hsv_v, np_rng=self.np_rng)
            if rng.random() < hyp.flipud:
                img = np.flipud(img)
                if nl:
                    labels[:, 2] = 1 - labels[:, 2]
            if rng.random() < hyp.fliplr:
                img = np.fliplr(img)
                if nl:
                    labels[:, 1] = 1 - labels[:, 1]
        labels_out = np.zeros((nl, 6), np.float32)
        if nl:
            labels_out[:, 1:] = labels
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), torch.from_numpy(labels_out), self.im_files[index], shapes

    @staticmethod
    def collate_fn(batch):
        """Stack images (B, 3, H, W) uint8 and concatenate labels (N, 6) with column 0 set to the image index."""
        im, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i
        return torch.stack(im, 0), torch.cat(label, 0), path, shapes


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's dataset copy its own seed (torch's per-worker seed)."""
    info = get_worker_info()
    cv2.setNumThreads(0)  # this process only: OpenCV threads would compete with the other workers
    seed = info.seed % 2**32
    random.seed(seed)
    np.random.seed(seed)
    if hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


def create_dataloader(path: str | Path | list, imgsz: int, batch_size: int, stride: int, single_cls: bool = False,
                      hyp: Hyp | dict | None = None, augment: bool = False, cache: bool | str = False,
                      pad: float = 0.0, rect: bool = False, rank: int = -1, workers: int = 8, prefix: str = "",
                      shuffle: bool = False, seed: int = 0, nc: int | None = None
                      ) -> tuple[DataLoader, LoadImagesAndLabels]:
    """Build a ``LoadImagesAndLabels`` and its DataLoader (DistributedSampler when ``rank != -1``).

    Workers are capped by the CPU count (per CUDA device) and the batch size; the shuffle order and worker seeds
    come from a generator seeded with ``seed + rank``. Returns (loader, dataset).
    """
    if rect and shuffle:
        LOGGER.warning(f"{prefix}rect batches are incompatible with shuffle: shuffle turned off")
        shuffle = False
    dist = torch.distributed.is_available() and torch.distributed.is_initialized() and rank != -1
    if dist and rank != 0:
        torch.distributed.barrier()  # let rank 0 build the label cache first
    dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect, cache_images=cache,
                                  single_cls=single_cls, stride=int(stride), pad=pad, prefix=prefix, nc=nc,
                                  seed=seed + max(rank, 0), workers=workers)
    if dist and rank == 0:
        torch.distributed.barrier()
    batch_size = min(batch_size, len(dataset))
    nd = torch.cuda.device_count()
    nw = min((os.cpu_count() or 1) // max(nd, 1), batch_size if batch_size > 1 else 0, workers)
    sampler = None if rank == -1 else distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(6148914691236517205 + seed + max(rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, num_workers=nw,
                        sampler=sampler, pin_memory=torch.cuda.is_available(),
                        collate_fn=LoadImagesAndLabels.collate_fn,
                        worker_init_fn=seed_worker, generator=generator)  # new workers each epoch: reseeding replays it
    return loader, dataset


__all__ = ["LoadImagesAndLabels", "create_dataloader", "seed_worker", "DatasetNotFoundError", "img2label_paths"]
