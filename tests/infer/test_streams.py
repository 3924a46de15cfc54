"""detect.py on streams (utils/infer/streams.py): a video served over HTTP by a local server (every frame, in order,
with and without --vid-stride), an image URL, a server that closes mid-stream (reconnects, then a one-line stop), an
unreachable URL and a missing camera (one line, exit status 1, no run folder), and source parsing."""

from __future__ import annotations

import logging
import socket
import struct
import tempfile
import threading
import time
from collections import Counter
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from detect import main, run
from tests.helpers import make_image, save_model_checkpoint
from utils.dataset.sources import imread
from utils.infer.detector import Detector
from utils.infer.streams import Stream, is_image_url, is_stream_source, is_webcam, stream_sources, stream_stems

N_FRAMES = 7


def avi_frame_ends(data: bytes) -> list[int]:
    """Byte offsets just past each video chunk (``##dc``) of a RIFF AVI file, in file order."""
    ends: list[int] = []

    def walk(pos: int, end: int) -> None:
        while pos + 8 <= end:
            cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            if cid in (b"RIFF", b"LIST"):
                walk(pos + 12, pos + 8 + size)
            elif cid[2:] == b"dc":
                ends.append(pos + 8 + size + (size & 1))
            pos += 8 + size + (size & 1)

    walk(0, len(data))
    return ends


class Handler(BaseHTTPRequestHandler):
    """GET /NAME serves the file NAME of ``media``. GET /cutK/NAME (K frames, an AVI): the first request sends the
    bytes of the first K frames, announces the whole file and closes (a stream dropped mid-way); later requests
    get 503 (a server gone), or the whole file when the path starts with /cutK-resume/ (a server back)."""

    def __init__(self, *args, media: Path, hits: Counter, **kw):
        self.media, self.hits = media, hits
        super().__init__(*args, **kw)

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits[self.path] += 1
        parts = self.path.strip("/").split("/")
        f = self.media / parts[-1]
        if not f.is_file():
            self.send_error(404)
            return
        data = f.read_bytes()
        n = len(data)
        if len(parts) == 2 and parts[0].startswith("cut"):
            k, _, resume = parts[0][3:].partition("-")
            if self.hits[self.path] == 1:
                n = avi_frame_ends(data)[int(k) - 1]
            elif not resume:
                self.send_error(503)
                return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:n])
        self.close_connection = True


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("w") / "tiny.pt"
    return save_model_checkpoint(f)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    for fourcc, name in (("MJPG", "clip.avi"), ("mp4v", "clip.mp4")):
        wr = cv2.VideoWriter(str(d / name), cv2.VideoWriter_fourcc(*fourcc), 5, (96, 64))
        assert wr.isOpened(), f"this OpenCV cannot write {name}"
        for i in range(N_FRAMES):
            wr.write(make_image(64, 96, 20 + i))
        wr.release()
    cv2.imwrite(str(d / "street.jpg"), make_image(150, 200, 1))
    return d


@pytest.fixture(scope="module")
def server(media):
    """(base URL, hits per path) of a ThreadingHTTPServer on 127.0.0.1 at a free port, serving ``media``."""
    hits: Counter = Counter()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, media=media, hits=hits))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    srv.shutdown()
    srv.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def detector(weights) -> Detector:
    return Detector(weights, imgsz=64, conf_thres=0.01)


def boxes(res: list[dict]) -> list[np.ndarray]:
    return [np.concatenate((r["boxes"], r["scores"][:, None], r["classes"][:, None]), 1) for r in res]


def local_frames(detector: Detector, video: Path, stride: int = 1) -> list[np.ndarray]:
    """Detections ``[x1, y1, x2, y2, conf, cls]`` (original px) on frames stride, 2 * stride, ... of ``video``,
    read here frame by frame from the file."""
    cap, out, k = cv2.VideoCapture(str(video)), [], 0
    while (im := cap.read()[1]) is not None:
        k += 1
        if k % stride == 0:
            out.append(detector.detect(im).numpy())
    cap.release()
    return out


def assert_same_detections(res: list[dict], expected: list[np.ndarray]) -> None:
    assert len(res) == len(expected)
    for a, b in zip(boxes(res), expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("name", "stride"), [("clip.avi", 1), ("clip.avi", 2), ("clip.mp4", 1)])
def test_http_video_gives_every_frame_in_order(weights, detector, media, server, tmp_path, name, stride):
    url = f"{server[0]}/{name}"
    res = run(weights=weights, source=url, imgsz=64, conf_thres=0.01, vid_stride=stride, save_txt=True,
              project=tmp_path, name="s")
    n = N_FRAMES // stride  # frames 2, 4, 6 of 7 with stride 2
    assert [r["frame"] for r in res] == list(range(1, n + 1)) and all(r["path"] == url for r in res)
    assert_same_detections(res, local_frames(detector, media / name, stride))  # same frames, same order
    out = cv2.VideoCapture(str(tmp_path / "s" / "clip.mp4"))
    assert int(out.get(cv2.CAP_PROP_FRAME_COUNT)) == n and out.get(cv2.CAP_PROP_FPS) == pytest.approx(5 / stride)
    out.release()
    labelled = sorted(p.name for p in (tmp_path / "s" / "labels").glob("*.txt"))
    assert labelled == sorted(f"clip_{r['frame']}.txt" for r in res if len(r["boxes"])) and labelled


def test_image_url_equals_the_local_file(weights, detector, media, server, tmp_path):
    before = set(Path(tempfile.gettempdir()).glob("tinyfocal-url-*"))
    res = run(weights=weights, source=f"{server[0]}/street.jpg", imgsz=64, conf_thres=0.01, project=tmp_path,
              name="u")
    assert len(res) == 1 and res[0]["frame"] is None and res[0]["shape"] == (150, 200) and len(res[0]["boxes"])
    assert_same_detections(res, [detector.detect(imread(str(media / "street.jpg"))).numpy()])
    assert res[0]["save_path"] == tmp_path / "u" / "street.jpg" and cv2.imread(str(res[0]["save_path"])) is not None
    assert set(Path(tempfile.gettempdir()).glob("tinyfocal-url-*")) == before  # the download left nothing behind


def test_server_closing_mid_stream_stops_with_one_line(weights, server, tmp_path, caplog):
    url = f"{server[0]}/cut3/clip.avi"
    with caplog.at_level(logging.INFO):
        assert main(["--weights", str(weights), "--source", url, "--imgsz", "64", "--conf-thres", "0.01",
                     "--save-txt", "--reconnects", "2", "--reconnect-delay", "0.05", "--project", str(tmp_path)]) == 0
    assert server[1]["/cut3/clip.avi"] == 3  # the first request, then 2 reconnect attempts
    assert f"detect.py: stream {url}: no frame after 2 reconnect attempts; stopping" in caplog.messages
    out = cv2.VideoCapture(str(tmp_path / "exp" / "clip.mp4"))
    assert int(out.get(cv2.CAP_PROP_FRAME_COUNT)) == 3  # the results so far are saved: frames 1-3
    out.release()
    assert sorted(p.name for p in (tmp_path / "exp" / "labels").glob("*.txt")) == [f"clip_{i}.txt" for i in (1, 2, 3)]


def test_reconnect_resumes_after_the_frames_already_read(weights, detector, media, server, tmp_path):
    res = run(weights=weights, source=f"{server[0]}/cut4-resume/clip.avi", imgsz=64, conf_thres=0.01, nosave=True,
              reconnect_delay=0.05, project=tmp_path)
    assert [r["frame"] for r in res] == list(range(1, N_FRAMES + 1))
    assert server[1]["/cut4-resume/clip.avi"] == 2
    assert_same_detections(res, local_frames(detector, media / "clip.avi"))  # frames 5-7 after it, none repeated


def test_unreachable_url_is_one_line_and_no_run_folder(weights, tmp_path, capsys):
    dead = f"http://127.0.0.1:{free_port()}/live"
    assert main(["--weights", str(weights), "--source", dead, "--project", str(tmp_path / "dead")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"detect.py: error: cannot open stream {dead}"]
    assert not (tmp_path / "dead").exists()  # no run folder
    assert main(["--weights", str(weights), "--source", f"http://127.0.0.1:{free_port()}/a.jpg", "--reconnects", "0",
                 "--project", str(tmp_path / "dead")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detect.py: error: could not download a.jpg from http://127.0.0.1:")
    assert not (tmp_path / "dead").exists()


def test_missing_camera_is_one_clear_line(weights, tmp_path, capsys):
    index = next(k for k in range(64) if not Path(f"/dev/video{k}").exists())
    assert main(["--weights", str(weights), "--source", str(index), "--project", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"detect.py: error: cannot open stream {index}"]
    assert not any(tmp_path.iterdir())


def test_source_parsing(tmp_path):
    assert is_webcam("0") and is_stream_source("0") and is_stream_source("12")
    for s in ("rtsp://cam:554/live/ch1", "rtmp://host/app", "http://host/video.mjpg", "https://x/clip.mp4",
              "cams.streams", tmp_path / "cams.streams"):
        assert is_stream_source(s), s
    for s in ("0.jpg", "images/", "http://host/a.JPG?size=2", "https://x/b.png", tmp_path / "0", "C:/data/0.png"):
        assert not is_stream_source(s), s
    assert is_image_url("http://host/a.JPG?size=2") and not is_image_url("http://host/a.mp4")
    assert not is_image_url("a.jpg")
    f = tmp_path / "cams.streams"
    f.write_text("rtsp://a/live\n\n  rtsp://b/live  \n0\n")
    assert stream_sources(f) == ["rtsp://a/live", "rtsp://b/live", "0"] and stream_sources("0") == ["0"]
    stems = stream_stems(["rtsp://a/live", "rtsp://b/live", "0", "http://h:81/", "http://h/v?id=3&x"])
    assert stems["0"] == "webcam0" and stems["http://h:81/"] == "h" and stems["http://h/v?id=3&x"] == "v"
    assert stems["rtsp://a/live"].startswith("live_") and stems["rtsp://a/live"] != stems["rtsp://b/live"]


def test_streams_file_reads_sources_in_turn(weights, server, tmp_path):
    f = tmp_path / "two.streams"
    a, b = f"{server[0]}/clip.avi", f"{server[0]}/clip.mp4"
    f.write_text(f"{a}\n{b}\n")
    res = run(weights=weights, source=f, imgsz=64, vid_stride=3, project=tmp_path, name="t")
    assert [(r["path"], r["frame"]) for r in res] == [(a, 1), (b, 1), (a, 2), (b, 2)]
    assert sorted(p.name for p in (tmp_path / "t").glob("*.mp4")) == sorted(
        f"{s}.mp4" for s in stream_stems([a, b]).values())


def test_live_stream_keeps_only_the_newest_frame(server):
    st = Stream(f"{server[0]}/clip.avi", buffer=False)  # read like a live stream, though it is a file
    try:
        deadline = time.monotonic() + 10
        while st.pos < N_FRAMES and time.monotonic() < deadline:  # the reader runs ahead of a slow consumer
            time.sleep(0.01)
        time.sleep(0.2)
        got = []
        while (item := st.get()) is not None:
            got.append(item[0])
        # frames 1-5 at least were dropped, not queued (6 only when frame 7 was still being decoded)
        assert got[-1] == N_FRAMES and got in ([N_FRAMES], [N_FRAMES - 1, N_FRAMES])
        assert not st.end.lost and st.end.message.endswith("end of stream")
    finally:
        st.close()


def test_stream_tracking_writes_one_mot_file_per_stream(weights, server, tmp_path):
    yaml = tmp_path / "lenient.yaml"
    yaml.write_text("track_high_thresh: 0.2\ntrack_low_thresh: 0.01\nnew_track_thresh: 0.2\n")
    url = f"{server[0]}/clip.avi"
    res = run(weights=weights, source=url, imgsz=64, conf_thres=0.01, project=tmp_path, name="t", track=yaml,
              nosave=True)
    assert [r["frame"] for r in res] == list(range(1, N_FRAMES + 1))
    assert all(len(r["track_ids"]) == len(r["boxes"]) for r in res)
    lines = (tmp_path / "t" / "tracks" / "clip.txt").read_text().splitlines()
    assert len(lines) == sum(int((r["track_ids"] >= 0).sum()) for r in res) > 0
    assert {int(line.split(",")[0]) for line in lines} <= set(range(1, N_FRAMES + 1))
