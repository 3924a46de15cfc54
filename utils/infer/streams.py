"""Live and network sources of detect.py: webcams (``0``), RTSP / RTMP / HTTP(S) video streams, ``.streams`` lists of
them (one source a line), and HTTP(S) image URLs. Video is read through OpenCV (FFmpeg for URLs).

Reading. Each stream has one reader thread that grabs frames (decoding only every ``vid_stride``-th) into a queue
the main thread takes them from, so decoding overlaps inference. What the queue keeps depends on the source:

- a *finite* stream (the source reports a frame count: a video file served over HTTP) is **buffered**: every
  selected frame is delivered, in order, and the reader waits while the queue is full. Results are deterministic
  and equal to those of the same file read locally (frames ``N, 2N, ...`` numbered 1, 2, ... as ``LoadImages``).
- a *live* stream (webcam, RTSP, RTMP, MJPEG over HTTP: no frame count) keeps only the **newest** frame, as YOLOv5
  does: when inference is slower than the camera, older frames are dropped instead of piling up behind it. Frame
  numbers count the selected frames of the source, so dropped frames show as gaps. ``buffer=True`` (detect.py's
  ``--stream-buffer``) delivers every frame of live streams too.

Dropped streams. When no frame can be grabbed, a finite stream that has delivered all its frames has ended. Any
other stream is reopened up to ``reconnects`` times, ``reconnect_delay_s`` apart; a finite stream skips the frames
it has already read, so nothing is repeated. A stream that gives no frame after that stops with one warning line
(``stream URL: no frame after 3 reconnect attempts; stopping``) while the others go on (a file whose header
over-states its frame count ends that way too, after the reconnects). A source that cannot be opened, or gives no
frame at all, raises :class:`StreamError` from the constructor, before anything is written.

An image URL (an http(s) URL whose path ends in an image suffix) is downloaded once with
``utils.downloads.download_file`` (retries, size check) into a temporary folder that is removed at once, and
decoded as local files are (``imread``: EXIF orientation), so it gives the same detections as the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import queue
import re
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from utils.dataset.labels import IMG_FORMATS
from utils.dataset.sources import imread, prepare_image, video_fps
from utils.downloads import download_file
from utils.errors import UserError

LOGGER = logging.getLogger(__name__)

STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt"})
BUFFER_FRAMES = 30  # queue length of a buffered stream: ~1 s of video read ahead of inference
_OPEN_LOCK = threading.Lock()  # serialises opens, so the OpenCV log level lowered around them is restored right


class StreamError(UserError):
    """A stream cannot be opened or gives no frame, or an image URL cannot be fetched; the message names it."""


def is_url(source: object) -> bool:
    """True for a string with a network scheme OpenCV/FFmpeg reads (rtsp, rtmp, http(s), udp, tcp, srt)."""
    return isinstance(source, str) and urlsplit(source).scheme.lower() in STREAM_SCHEMES


def is_image_url(source: object) -> bool:
    """True for an http(s) URL whose path (query ignored) ends in an image suffix (``IMG_FORMATS``)."""
    if not is_url(source):
        return False
    parts = urlsplit(str(source))
    return parts.scheme.lower() in ("http", "https") and Path(parts.path).suffix[1:].lower() in IMG_FORMATS


def is_webcam(source: object) -> bool:
    """True for a camera index: a string of digits (``"0"``), as YOLOv5 reads ``--source 0``."""
    return isinstance(source, str) and source.isdigit()


def is_stream_source(source: object) -> bool:
    """True when ``source`` is read by :class:`LoadStreams`: a camera index, a stream URL (not an image URL) or a
    ``.streams`` file listing sources."""
    if isinstance(source, Path):
        return source.suffix == ".streams"
    return isinstance(source, str) and (is_webcam(source) or (is_url(source) and not is_image_url(source))
                                        or source.endswith(".streams"))


def stream_sources(source: str | Path) -> list[str]:
    """The sources of ``source``: the non-empty lines of a ``.streams`` file, else ``[source]``."""
    if str(source).endswith(".streams"):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"source not found: {path} (a .streams file lists one stream a line)")
        lines = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        if not lines:
            raise StreamError(f"{path}: lists no streams")
        return lines
    return [str(source)]


def stream_stems(sources: list[str]) -> dict[str, str]:
    """{source: the stem its outputs are named after}: ``webcam0`` for camera 0, else the URL path's last name
    without suffix (``rtsp://cam/live/ch1`` -> ``ch1``; the host when the path is empty), with characters other
    than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``. A stem shared by several sources gets
    ``_<6 hex digits of the sha1 of the source>`` (as ``sources.output_stems``)."""
    def base(s: str) -> str:
        if is_webcam(s):
            return f"webcam{s}"
        parts = urlsplit(s)
        name = Path(parts.path).stem if parts.path.strip("/") else (parts.hostname or "stream")
        return re.sub(r"[^\w.-]", "_", name) or "stream"

    stems = {s: base(s) for s in sources}
    counts = Counter(stems.values())
    return {s: (b if counts[b] == 1 else f"{b}_{hashlib.sha1(s.encode()).hexdigest()[:6]}") for s, b in stems.items()}


def open_capture(source: str, timeout_s: float) -> cv2.VideoCapture | None:
    """An opened ``cv2.VideoCapture`` for a camera index or a URL (FFmpeg, open and read timeouts of ``timeout_s``
    seconds), else None. OpenCV's own warnings about the failed backends are silenced during the open (FFmpeg may
    still print its reason, e.g. ``Connection refused``; ``OPENCV_FFMPEG_LOGLEVEL=-8`` silences that too)."""
    ms = int(timeout_s * 1000)
    with _OPEN_LOCK, _opencv_log_level(cv2.utils.logging.LOG_LEVEL_ERROR):
        if is_webcam(source):
            cap = cv2.VideoCapture(int(source))
        else:
            cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    if cap.isOpened():
        return cap
    cap.release()
    return None


@contextlib.contextmanager
def _opencv_log_level(level: int) -> Iterator[None]:
    old = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(min(old, level))
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(old)


@dataclass(frozen=True)
class StreamEnd:
    """Why a stream stopped: ``lost`` after failed reconnects, else its normal end (a finite stream's last frame)."""

    message: str
    lost: bool


class Stream:
    """One source read by a background thread (see the module docstring for buffering and reconnects).

    ``get()`` -> ``(frame number, im0 (h, w, 3) uint8 BGR original pixels)``, or None once the stream has stopped
    (then ``end`` says why). ``frames``: the source's frame count (inf for live streams); ``fps``: frames per second
    of the selected frames (source fps / ``vid_stride``). Raises StreamError when the source cannot be opened or
    gives no frame.
    """

    def __init__(self, source: str, vid_stride: int = 1, buffer: bool | None = None, reconnects: int = 3,
                 reconnect_delay_s: float = 1.0, timeout_s: float = 10.0, prefix: str = ""):
        self.source, self.vid_stride, self.reconnects = source, vid_stride, reconnects
        self.reconnect_delay_s, self.timeout_s, self.prefix = reconnect_delay_s, timeout_s, prefix
        cap = open_capture(source, timeout_s)
        if cap is None:
            raise StreamError(f"cannot open stream {source}")
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frames = int(n) if math.isfinite(n) and n > 0 else math.inf
        self.fps = video_fps(cap, vid_stride)
        self.pos = 0  # frames of the source consumed (grabbed) so far
        self.end: StreamEnd | None = None
        self._cap: cv2.VideoCapture | None = cap
        first = self._next_selected()
        if first is None:
            cap.release()
            raise StreamError(f"cannot open stream {source}: no frame could be read")
        self.shape = first[1].shape[:2]
        self.buffered = math.isfinite(self.frames) if buffer is None else buffer
        self._queue: queue.Queue = queue.Queue(maxsize=BUFFER_FRAMES if self.buffered else 1)
        self._queue.put(first)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name=f"stream {source}", daemon=True)
        self._thread.start()

    def _next_selected(self) -> tuple[int, np.ndarray] | None:
        """Grab up to the next ``vid_stride``-th frame and decode it; None when a grab or the decode fails."""
        while self._cap is not None and self._cap.grab():
            self.pos += 1
            if self.pos % self.vid_stride == 0:
                ok, im = self._cap.retrieve()
                if ok and im is not None:
                    return self.pos // self.vid_stride, im
                self.pos -= 1  # not delivered: a reconnect resumes before it
                return None
        return None

    def _read_loop(self) -> None:
        fails = 0  # reconnect attempts since the last frame
        end = None
        try:
            while not self._stop.is_set():
                item = self._next_selected()
                if item is not None:
                    fails = 0
                    self._put(item, drop_old=not self.buffered)
                    continue
                if self.pos >= self.frames:
                    end = StreamEnd(f"stream {self.source}: end of stream", lost=False)
                    break
                if fails >= self.reconnects:
                    end = StreamEnd(f"stream {self.source}: no frame after {self.reconnects} reconnect attempts; "
                                    "stopping", lost=True)
                    break
                fails += 1
                LOGGER.warning(f"{self.prefix}stream {self.source}: no frame; reconnecting ({fails}/{self.reconnects})")
                if self._stop.wait(self.reconnect_delay_s):
                    break
                self._reopen()
        except Exception as e:  # a bug or an OpenCV error: end the stream rather than leave get() waiting forever
            end = StreamEnd(f"stream {self.source}: reading failed ({type(e).__name__}: {e}); stopping", lost=True)
        finally:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
        if end is not None:
            self._put(end, drop_old=False)

    def _reopen(self) -> None:
        """Open the source again; a finite one skips the ``pos`` frames already read (the server starts over)."""
        if self._cap is not None:
            self._cap.release()
        self._cap = open_capture(self.source, self.timeout_s)
        if self._cap is not None and math.isfinite(self.frames):
            for _ in range(self.pos):
                if not self._cap.grab():
                    self._cap.release()
                    self._cap = None
                    break

    def _put(self, item, drop_old: bool) -> None:
        """Queue ``item``: replacing the queued frame (``drop_old``, live streams), else waiting for room."""
        if drop_old:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()  # the reader is the only producer: room is certain afterwards
                self._queue.put_nowait(item)
            return
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self) -> tuple[int, np.ndarray] | None:
        """The next frame (waiting for it), or None once the stream has stopped (``end`` says why)."""
        if self.end is not None:
            return None
        item = self._queue.get()
        if isinstance(item, StreamEnd):
            self.end = item
            return None
        return item

    def close(self) -> None:
        """Stop the reader thread; it releases the capture itself (a blocked read ends within ``timeout_s``)."""
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 1)


class LoadStreams:
    """Frames of one or more streams for inference, taken from the streams in turn (a stopped stream is left out).

    Iterating yields (source, im (3, H, W) uint8 RGB letterboxed, im0 (h0, w0, 3) BGR original pixels, the
    :class:`Stream`, description), like ``LoadImages``; ``frame`` and ``fps`` describe the last item yielded.
    Raises StreamError (naming the source) when any source cannot be opened or gives no frame; call ``close()``
    when done (detect.py does, also on errors and Ctrl-C).
    """

    def __init__(self, sources: list[str], img_size: int = 640, stride: int = 32, auto: bool = True,
                 vid_stride: int = 1, buffer: bool | None = None, reconnects: int = 3, reconnect_delay_s: float = 1.0,
                 timeout_s: float = 10.0, prefix: str = ""):
        self.files, self.img_size, self.stride, self.auto, self.prefix = list(sources), img_size, stride, auto, prefix
        self.streams: list[Stream] = []
        self.frame, self.fps = 0, 30.0
        try:
            for i, s in enumerate(self.files):
                st = Stream(s, vid_stride, buffer, reconnects, reconnect_delay_s, timeout_s, prefix)
                self.streams.append(st)
                n = f"{st.frames} frames" if math.isfinite(st.frames) else "live"
                LOGGER.info(f"{i + 1}/{len(self.files)}: {s}: {n}, {st.shape[1]}x{st.shape[0]} at "
                            f"{st.fps * vid_stride:.2f} FPS, {'every frame' if st.buffered else 'newest frame'}")
        except BaseException:
            self.close()
            raise
        self._order: deque[int] = deque()

    def __len__(self) -> int:
        return len(self.streams)

    def __iter__(self):
        self._order = deque(range(len(self.streams)))
        return self

    def __next__(self):
        while self._order:
            i = self._order.popleft()
            st = self.streams[i]
            item = st.get()
            if item is None:
                (LOGGER.warning if st.end.lost else LOGGER.info)(f"{self.prefix}{st.end.message}")
                continue
            self._order.append(i)
            self.frame, self.fps = item[0], st.fps
            im = prepare_image(item[1], self.img_size, self.stride, self.auto)
            return st.source, im, item[1], st, f"stream {i + 1}/{len(self.streams)} ({item[0]}) {st.source}: "
        raise StopIteration

    def close(self) -> None:
        for st in self.streams:
            st.close()


def fetch_image(url: str, retries: int = 3, backoff_s: float = 1.0, timeout_s: float = 30.0) -> np.ndarray:
    """Download the image at ``url`` (``download_file``: retries, size check) into a temporary folder removed
    before returning, and decode it as ``imread`` does: (h, w, 3) uint8 BGR, EXIF orientation applied.
    Raises DownloadError (one line: what, from where, why) or StreamError (not a readable image)."""
    name = re.sub(r"[^\w.-]", "_", Path(urlsplit(url).path).name)  # named in download_file's messages
    with tempfile.TemporaryDirectory(prefix="tinyfocal-url-") as d:
        im = imread(str(download_file(url, Path(d) / name, retries=retries, backoff_s=backoff_s,
                                      timeout_s=timeout_s)))
    if im is None:
        raise StreamError(f"{url}: not a readable image")
    return im


class LoadImageURL:
    """One image downloaded from an http(s) URL (:func:`fetch_image`, in the constructor), yielded once as
    ``LoadImages`` yields images: (url, im (3, H, W) RGB letterboxed, im0 BGR original pixels, None, description)."""

    def __init__(self, url: str, img_size: int = 640, stride: int = 32, auto: bool = True, retries: int = 3,
                 backoff_s: float = 1.0, timeout_s: float = 30.0):
        self.files, self.frame, self.fps = [url], 0, 30.0
        self.im0 = fetch_image(url, retries, backoff_s, timeout_s)
        self.im = prepare_image(self.im0, img_size, stride, auto)

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield self.files[0], self.im, self.im0, None, f"image 1/1 {self.files[0]}: "
