"""Run a trained detector on images, folders, globs, .txt lists of images, videos, cameras, streams and image URLs.

Usage:
    python detect.py --weights best.pt --source data/images                      # folder, at the trained size
    python detect.py --weights best.pt --source 'imgs/*.jpg' --save-txt --save-conf
    python detect.py --weights best.onnx --source list.txt --imgsz 640             # ONNX Runtime
    python detect.py --weights best.pt --source big.tif --slice 640 --slice-overlap 0.2 --slice-full
    python detect.py --weights best.pt --source big.tif --slice 640 --slice-merge greedy-nmm --slice-match ios
    python detect.py --weights best.pt --source aerial/ --nms nwd --iou-thres 0.6       # NWD-NMS for tiny objects
    python detect.py --weights best.pt --source 0                                  # webcam 0 (Ctrl-C stops)
    python detect.py --weights best.pt --source rtsp://cam/live --vid-stride 5     # also rtmp://, http(s)://
    python detect.py --weights best.pt --source cams.streams                       # one stream URL a line
    python detect.py --weights best.pt --source https://example.com/street.jpg    # an image URL
    python detect.py --weights best.pt --source drone.mp4 --track                  # track: trackers/bytetrack-tiny.yaml
    python detect.py --weights best.pt --source frames/ --track trackers/bytetrack.yaml --slice 640

Outputs go to ``--project/--name`` (runs/detect/exp, exp2, ...): annotated images/videos, ``labels/*.txt`` in YOLO
format (``cls x y w h [conf]``, normalised to the original image, written atomically) and ``crops/<class>/``.
Boxes are found at the network input and mapped back to ORIGINAL-image pixels. EXIF orientation is honoured;
unreadable images and videos are reported and skipped (and listed again at the end); when no input file is
readable, that is a user error. ``run(**kwargs)`` returns one dict per image/frame.

``--imgsz`` defaults to the size the checkpoint was trained at (640 for official YOLOv5 weights); a size more than 2x
from it is warned about. Images with the same name (from different folders of a .txt list) get outputs named
``NAME_<hash of the path>`` instead of overwriting each other. A user error (missing weights or source, not a
checkpoint, bad flags) is one line on stderr and exit status 1, and creates nothing under ``--project``.

Streams (utils/infer/streams.py) are read by a thread per stream: a video file served over HTTP gives every frame in
order; live sources (cameras, RTSP, RTMP) give the newest frame (``--stream-buffer``: every frame). Each stream's
results go to ``NAME.mp4`` (and ``labels/NAME_<frame>.txt``). A stream that stops giving frames is reopened
``--reconnects`` times, ``--reconnect-delay`` seconds apart, then stops with one warning line; what was done is
kept and the exit status is 0. A stream that cannot be opened at the start is a user error (exit status 1).
``--vid-stride N`` keeps every N-th frame of videos and streams.

``--track [TRACKER_YAML]`` follows the detections through each video and stream, and through the source's images
taken as the frames of one sequence in name order (utils/track/, docs/tracking.md): track IDs are drawn (``#ID``)
and returned (``track_ids``), and ``tracks/<sequence>.txt`` holds each sequence's tracks in MOTChallenge format.
A single image cannot be tracked (a user error).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.atomic import atomic_write_text  # noqa: E402
from utils.cli import ArgumentParser, check_args, run_main  # noqa: E402
from utils.compiler import add_compile_arguments, compile_cache_dir, compile_options, worth_compiling  # noqa: E402
from utils.dataset.sources import DatasetNotFoundError, LoadImages, output_stems, skipped_message  # noqa: E402
from utils.infer.annotate import annotate, crop_box, save_image  # noqa: E402
from utils.infer.detector import Detector, size_check  # noqa: E402
from utils.infer.streams import (  # noqa: E402
    LoadImageURL,
    LoadStreams,
    is_image_url,
    is_stream_source,
    is_url,
    stream_sources,
    stream_stems,
)
from utils.ops.box_merge import NWD_C, add_nms_arguments  # noqa: E402
from utils.ops.boxes import xyxy2xywh  # noqa: E402
from utils.run_dirs import increment_path  # noqa: E402
from utils.track.session import TrackSession, check_trackable  # noqa: E402

LOGGER = logging.getLogger(__name__)
MAX_LISTED = 10  # skipped inputs named in one line, then "... and N more"


def yolo_txt_lines(det: np.ndarray, shape: tuple[int, int], save_conf: bool) -> list[str]:
    """(n, 6) ``[x1, y1, x2, y2, conf, cls]`` original px -> YOLO label lines ``cls x y w h [conf]`` normalised to
    the ``shape`` = (h, w) image, numbers as ``%g``."""
    h, w = shape
    xywh = xyxy2xywh(det[:, :4].astype(np.float64)) / np.array([w, h, w, h])
    rows = [(int(c), *b, cf) if save_conf else (int(c), *b) for b, cf, c in zip(xywh, det[:, 4], det[:, 5])]
    return [("%g " * len(r)).rstrip() % tuple(r) for r in rows]


def read_yolo_txt(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`yolo_txt_lines`: a label file -> (n, 5 or 6) ``[x1, y1, x2, y2, cls(, conf)]`` original px."""
    h, w = shape
    rows = np.array([[float(v) for v in line.split()] for line in Path(path).read_text().splitlines() if line.strip()])
    if not len(rows):
        return np.zeros((0, 5))
    c, x, y, bw, bh = rows[:, 0], rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    out = [x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2, c] + ([rows[:, 5]] if rows.shape[1] > 5 else [])
    return np.stack(out, 1)


def _describe(det: np.ndarray, names: dict[int, str]) -> str:
    counts = Counter(int(c) for c in det[:, 5])
    text = ", ".join(f"{n} {names.get(c, str(c))}{'s' * (n > 1)}" for c, n in sorted(counts.items()))
    return text or "(no detections)"


@torch.no_grad()
def run(weights: str | Path, source: str | Path | list, imgsz: int | list[int] | None = None,
        conf_thres: float = 0.25,
        iou_thres: float = 0.45, max_det: int = 1000, device: str = "", save_txt: bool = False,
        save_conf: bool = False, save_crop: bool = False, nosave: bool = False, classes: list[int] | None = None,
        agnostic_nms: bool = False, project: str | Path = ROOT / "runs/detect", name: str = "exp",
        exist_ok: bool = False, line_thickness: int = 3, hide_labels: bool = False, hide_conf: bool = False,
        half: bool = False, slice: int = 0, slice_overlap: float = 0.2, slice_full: bool = False,
        slice_batch: int = 8, vid_stride: int = 1, stream_buffer: bool = False, reconnects: int = 3,
        reconnect_delay: float = 1.0, stream_timeout: float = 10.0, nms: str = "iou", nwd_c: float = NWD_C,
        slice_merge: str = "nms", slice_match: str | None = None, slice_match_thres: float | None = None,
        track: str | Path | None = None, compile: str | None = None, compile_backend: str = "inductor"
        ) -> list[dict]:
    """Detect objects in ``source``; return one dict per image / video frame with keys ``path``, ``frame`` (video
    or stream frame number, or None), ``shape`` (h, w original px), ``boxes`` (n, 4) xyxy original px, ``scores``
    (n,), ``classes`` (n,), ``save_path`` (annotated file or None), ``txt_path`` (or None) and ``times_ms``
    (pre-process, inference, NMS), and with ``track`` (a tracker YAML) ``track_ids`` (n,) (-1: no track). The run
    folder is in each dict's ``save_dir``; it is created only once the
    weights are loaded and the source's first image or frame is read (streams: opened and gave a frame; image URL:
    downloaded). ``imgsz`` (input px) defaults to the trained size. Streams: see the module docstring and
    utils/infer/streams.py; a stream lost mid-way ends the run normally with the results so far.

    Raises FileNotFoundError (missing weights/source; DatasetNotFoundError: no file of the source is readable; the
    message names it), CheckpointError (not a model), StreamError (a stream that cannot be opened), DownloadError
    (an image URL), UsageError (a bad argument, ``track`` on a single image) and TrackerConfigError (a bad
    tracker YAML). ``compile`` (a mode): torch.compile the model (utils.compiler), unless the source has too few
    images to pay the compile back.
    """
    imgsz = imgsz[0] if isinstance(imgsz, list | tuple) else imgsz
    check_args(imgsz=size_check(imgsz),
               conf_thres=(0 <= conf_thres <= 1, f"must be in [0, 1], got {conf_thres}"),
               iou_thres=(0 <= iou_thres <= 1, f"must be in [0, 1], got {iou_thres}"),
               max_det=(max_det >= 1, f"must be >= 1, got {max_det}"),
               slice=(slice >= 0, f"must be >= 0, got {slice}"),
               slice_overlap=(0 <= slice_overlap < 1, f"must be in [0, 1), got {slice_overlap}"),
               slice_batch=(slice_batch >= 1, f"must be >= 1, got {slice_batch}"),
               vid_stride=(vid_stride >= 1, f"must be >= 1, got {vid_stride}"),
               reconnects=(reconnects >= 0, f"must be >= 0, got {reconnects}"),
               reconnect_delay=(reconnect_delay >= 0, f"must be >= 0, got {reconnect_delay}"),
               stream_timeout=(stream_timeout > 0, f"must be > 0, got {stream_timeout}"),
               nwd_c=(nwd_c > 0, f"must be > 0 px, got {nwd_c}"),
               slice_match_thres=(slice_match_thres is None or 0 <= slice_match_thres <= 1,
                                  f"must be in [0, 1], got {slice_match_thres}"))
    if isinstance(source, str | Path) and not is_url(source) and not is_stream_source(source) \
            and "*" not in str(source) and not Path(source).exists():
        raise FileNotFoundError(f"source not found: {source} (expected an image, video, folder, glob, .txt list, "
                                "camera index, stream URL or image URL)")
    detector = Detector(weights, imgsz, conf_thres, iou_thres, max_det, device, slice=slice,
                        slice_overlap=slice_overlap, slice_full=slice_full, slice_batch=slice_batch,
                        classes=classes, agnostic=agnostic_nms, half=half, nms=nms, nwd_c=nwd_c,
                        slice_merge=slice_merge, slice_match=slice_match, slice_match_thres=slice_match_thres,
                        compile=compile_options(compile, compile_backend))
    folder = not isinstance(source, list) and Path(source).is_dir()  # its images' sequence is named after it
    tracks = None if track is None else TrackSession(track, Path(source).resolve().name if folder else "frames")
    dataset = open_source(source, detector, vid_stride, stream_buffer, reconnects, reconnect_delay, stream_timeout)
    streaming = isinstance(dataset, LoadStreams)
    compiled = getattr(detector.backend, "compiled", None)
    images = len(dataset) if isinstance(dataset, LoadImages) and not any(dataset.video_flag) else None  # else frames
    if compiled and images is not None and not worth_compiling(images, "detect.py"):
        detector.backend.compiled = compiled = None
    if tracks:
        n_vid = sum(getattr(dataset, "video_flag", []))
        check_trackable(source, len(dataset.files) - n_vid, n_vid, streaming)
    # two a.jpg from different folders (or two streams ending in /live) must not share outputs
    stems = (output_stems if isinstance(dataset, LoadImages) else stream_stems)(dataset.files)
    frames = from_first_readable(dataset, source) if isinstance(dataset, LoadImages) else iter(dataset)
    results, totals, writers = [], np.zeros(3), {}
    try:
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
        if save_txt:
            (save_dir / "labels").mkdir(parents=True, exist_ok=True)
        names = detector.names
        detector.backend.warmup((1, 3, detector.imgsz, detector.imgsz))
        for path, im, im0, cap, desc in frames:
            times = [0.0, 0.0, 0.0]
            det = detector.detect(im0, None if slice else im, times).cpu().numpy()
            p = Path(path)
            frame = dataset.frame if cap is not None else None
            stem = stems[path] if frame is None else f"{stems[path]}_{frame}"
            r = {"path": path if is_url(path) or streaming else str(p), "frame": frame, "shape": im0.shape[:2],
                 "boxes": det[:, :4], "scores": det[:, 4], "classes": det[:, 5].astype(np.int64),
                 "save_path": None, "txt_path": None, "times_ms": [t * 1e3 for t in times], "save_dir": save_dir}
            ids = None if tracks is None else tracks.update(stems[path] if cap is not None else None, frame, det, im0)
            if tracks:
                r["track_ids"] = ids
            if save_txt and len(det):
                r["txt_path"] = save_dir / "labels" / f"{stem}.txt"
                atomic_write_text(r["txt_path"], "\n".join(yolo_txt_lines(det, im0.shape[:2], save_conf)) + "\n")
            if save_crop:
                for k, d in enumerate(det):
                    c = int(d[5])
                    f = save_dir / "crops" / names.get(c, str(c)) / f"{stem}{k + 1 if k else ''}.jpg"
                    f.parent.mkdir(parents=True, exist_ok=True)
                    save_image(f, crop_box(im0, d[:4]))
            if not nosave:
                drawn = annotate(im0, det, names, line_thickness, hide_labels, hide_conf, ids)
                if cap is None:
                    suffix = Path(urlsplit(path).path).suffix if is_url(path) else p.suffix
                    r["save_path"] = save_dir / f"{stems[path]}{suffix}"
                    save_image(r["save_path"], drawn)
                else:
                    r["save_path"] = save_dir / f"{stems[path]}.mp4"
                    if path not in writers:
                        if not streaming:  # videos come one after the other: the previous one is complete
                            for wr in writers.values():
                                wr.release()
                            writers = {}
                        writers[path] = cv2.VideoWriter(str(r["save_path"]), cv2.VideoWriter_fourcc(*"mp4v"),
                                                        dataset.fps, (im0.shape[1], im0.shape[0]))
                    writers[path].write(drawn)
            totals += times
            results.append(r)
            h, w = (detector.imgsz, detector.imgsz) if slice else im.shape[1:]
            LOGGER.info(f"{desc}{h}x{w} {_describe(det, names)}, {times[1] * 1e3:.1f}ms")
    except KeyboardInterrupt:
        if not streaming or not results:
            raise
        LOGGER.info("stopped by the user (Ctrl-C)")  # the way to end a live stream: keep what was done
    finally:
        for wr in writers.values():
            wr.release()
        if streaming:
            dataset.close()
        if tracks and results:
            files = tracks.write(save_dir / "tracks")
            LOGGER.info(f"{len(files)} MOTChallenge track file{'s' * (len(files) != 1)} saved to {files[0].parent}")
    n = max(len(results), 1)
    t = totals * 1e3 / n
    LOGGER.info(f"Speed: {t[0]:.1f}ms pre-process, {t[1]:.1f}ms inference, {t[2]:.1f}ms NMS per image at shape "
                f"(1, 3, {detector.imgsz}, {detector.imgsz}){f', sliced {slice} px' if slice else ''}")
    if compiled:
        LOGGER.info(compiled.stats.line("detect.py", compile_cache_dir()))
    if save_txt:
        nl = len(list((save_dir / "labels").glob("*.txt")))
        LOGGER.info(f"{nl} label{'s' * (nl != 1)} saved to {save_dir / 'labels'}")
    if save_txt or save_crop or not nosave:
        LOGGER.info(f"Results saved to {save_dir}")
    skipped = getattr(dataset, "skipped", [])
    if skipped:
        LOGGER.warning(f"{len(skipped)} of {dataset.nf} input files could not be read and were skipped: "
                       f"{listed(skipped)}")
    return results


def listed(paths: list[str], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` of ``paths`` joined by ', ', then '... and N more'."""
    more = len(paths) - limit
    return ", ".join(paths[:limit]) + (f", ... and {more} more" if more > 0 else "")


def from_first_readable(dataset: LoadImages, source: str | Path | list) -> Iterator:
    """Iterate ``dataset`` from its first readable image or video frame, which is read here, before the run folder
    exists. Raises DatasetNotFoundError (one line naming ``source`` and the files) when no file is readable; the
    files skipped before the first readable one are then reported as the later ones are (one warning each)."""
    dataset.warn = False  # a source with nothing readable gets one error line, not a warning per file first
    items = iter(dataset)
    first = next(items, None)
    dataset.warn = True
    if first is None:
        raise DatasetNotFoundError(f"{source}: none of the {dataset.nf} input files could be read as an image or "
                                   f"video: {listed(dataset.skipped)}")
    for path in dataset.skipped:
        LOGGER.warning(skipped_message(path))
    return _resume(first, items)


def _resume(first: tuple, items: Iterator) -> Iterator:
    """``first``, then the rest of ``items`` (not itertools.chain: it calls iter(), which restarts LoadImages)."""
    yield first
    while (item := next(items, None)) is not None:
        yield item


def open_source(source: str | Path | list, detector: Detector, vid_stride: int = 1, stream_buffer: bool = False,
                reconnects: int = 3, reconnect_delay: float = 1.0, stream_timeout: float = 10.0
                ) -> LoadImages | LoadStreams | LoadImageURL:
    """The loader of ``source``: LoadStreams for camera indices, stream URLs and .streams files, LoadImageURL for
    an http(s) image URL (downloaded here, attempts = 1 + ``reconnects``), else LoadImages. Streams are opened
    here: one that cannot be opened raises StreamError before anything is written."""
    kw = {"img_size": detector.imgsz, "stride": detector.stride, "auto": detector.backend.dynamic}
    if is_stream_source(source):
        return LoadStreams(stream_sources(source), vid_stride=vid_stride, buffer=True if stream_buffer else None,
                           reconnects=reconnects, reconnect_delay_s=reconnect_delay, timeout_s=stream_timeout,
                           prefix="detect.py: ", **kw)
    if is_image_url(source):
        return LoadImageURL(str(source), retries=1 + reconnects, backoff_s=reconnect_delay, timeout_s=stream_timeout,
                            **kw)
    return LoadImages(source, vid_stride=vid_stride, **kw)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="detect.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, required=True, help="model: .pt (ours or YOLOv5), .onnx (fp32 or int8), "
                   ".torchscript or a NAME_openvino_model folder")
    p.add_argument("--source", type=str, required=True,
                   help="image, video, folder, glob, .txt list, camera index (0), stream URL, .streams file, image URL")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=None,
                   help="inference size (px); default: the size the weights were trained at (else 640)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    p.add_argument("--nosave", action="store_true", help="do not save images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--project", default=ROOT / "runs/detect", help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--half", action="store_true", help="use FP16 half-precision inference (CUDA)")
    p.add_argument("--vid-stride", type=int, default=1, help="keep every N-th frame of videos and streams")
    p.add_argument("--stream-buffer", action="store_true",
                   help="live streams: process every frame (default: the newest, dropping what inference misses)")
    p.add_argument("--reconnects", type=int, default=3, help="streams: reopen attempts after frames stop coming")
    p.add_argument("--reconnect-delay", type=float, default=1.0, help="streams: seconds between reopen attempts")
    p.add_argument("--stream-timeout", type=float, default=10.0, help="streams, image URLs: open/read timeout (s)")
    p.add_argument("--slice", type=int, default=0, help="sliced inference: tile size in original px (0 = off)")
    p.add_argument("--slice-overlap", type=float, default=0.2, help="overlap of neighbouring tiles (fraction)")
    p.add_argument("--slice-full", action="store_true", help="also run the whole image downscaled when slicing")
    p.add_argument("--slice-batch", type=int, default=8, help="tiles per forward pass")
    add_nms_arguments(p)
    add_compile_arguments(p)
    p.add_argument("--track", nargs="?", const="bytetrack-tiny.yaml", default=None, metavar="TRACKER_YAML",
                   help="track objects through videos, streams and folders of frames (default tracker: "
                        "trackers/bytetrack-tiny.yaml)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line: 0 on success, 1 after printing a user error as one line on stderr."""
    return run_main("detect.py", lambda: run(**vars(get_args_parser().parse_args(argv))))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
