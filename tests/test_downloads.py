"""Tests for utils/downloads.py against a local HTTP server on 127.0.0.1 (started here; nothing reaches the
internet): success into the cache, 404, truncated transfers (retried; never a partial file under the final name),
checksum sidecars, cache reuse, and the wiring into load_checkpoint / load_backend."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from utils.downloads import (
    OFFICIAL_WEIGHTS,
    ChecksumError,
    DownloadError,
    attempt_download_weights,
    is_official_weights,
    weights_cache_dir,
)


class _State:
    """What the server serves and what it saw: files by URL path, how many of the next GETs of a path are cut
    short (half the bytes sent under the full Content-Length), and the paths requested, in order."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.no_length: dict[str, int] = {}  # next GETs of a path: half the bytes, no Content-Length, then close
        self.requests: list[str] = []


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if state.no_length.get(self.path, 0) > 0:
                state.no_length[self.path] -= 1
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])  # the connection closes: nothing says bytes are missing
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.truncate.get(self.path, 0) > 0:
                state.truncate[self.path] -= 1
                body = body[: len(body) // 2]  # then the connection closes (HTTP/1.0): a truncated transfer
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    return Handler


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(base URL, state) of a server in a thread; the weights URL and cache point at it and at tmp_path."""
    state = _State()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/v7.0"
    monkeypatch.setenv("TINYFOCAL_WEIGHTS_URL", base + "/")  # a trailing '/' must not matter
    monkeypatch.setenv("TINYFOCAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # a bare 'yolov5s.pt' must not exist in the working folder
    try:
        yield base, state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _fake_pt() -> bytes:
    """A small torch file (a state_dict) standing in for a release asset."""
    buf = io.BytesIO()
    torch.save({"w": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2, 3])}, buf)
    return buf.getvalue()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_official_names():
    assert len(OFFICIAL_WEIGHTS) == 10
    assert is_official_weights("yolov5s.pt") and is_official_weights("w/yolov5x6.pt")
    assert not any(is_official_weights(n) for n in ("yolov5s6u.pt", "yolov5s.onnx", "yolov5n-p2.pt", "best.pt"))


def test_success_into_cache(server, tmp_path):
    base, state = server
    data = _fake_pt()
    state.files["/v7.0/yolov5s.pt"] = data
    path = attempt_download_weights("yolov5s.pt", backoff_s=0)
    cache = tmp_path / "cache" / "weights"
    assert path == cache / "yolov5s.pt" == weights_cache_dir() / "yolov5s.pt"
    assert path.read_bytes() == data
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(6.0).view(2, 3))
    assert state.requests == ["/v7.0/yolov5s.pt.sha256", "/v7.0/yolov5s.pt"]  # optional sidecar, then the file
    assert _leftovers(cache) == ["yolov5s.pt"]  # no temporary file left behind
    assert not (tmp_path / "yolov5s.pt").exists()


def test_cache_reuse_and_existing_paths_make_no_request(server, tmp_path):
    base, state = server
    state.files["/v7.0/yolov5n6.pt"] = _fake_pt()
    first = attempt_download_weights("yolov5n6.pt", backoff_s=0)
    state.requests.clear()
    assert attempt_download_weights("yolov5n6.pt") == first
    assert attempt_download_weights(Path("some/dir/yolov5n6.pt")) == first  # an official name anywhere
    local = tmp_path / "yolov5n6.pt"  # a file that exists is used as it is
    local.write_bytes(b"local")
    assert attempt_download_weights("yolov5n6.pt") == Path("yolov5n6.pt")
    assert attempt_download_weights("missing/best.pt") == Path("missing/best.pt")  # caller reports not found
    assert state.requests == []


def test_404_is_one_line_naming_file_url_and_destination(server, tmp_path):
    base, state = server
    with pytest.raises(DownloadError) as e:
        attempt_download_weights("yolov5m6.pt", backoff_s=0)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{base}/yolov5m6.pt" in msg and "HTTP 404" in msg
    assert str(tmp_path / "cache" / "weights" / "yolov5m6.pt") in msg and "TINYFOCAL_WEIGHTS_URL" in msg
    assert state.requests.count("/v7.0/yolov5m6.pt") == 1  # a 404 is not retried
    assert _leftovers(tmp_path / "cache" / "weights") == []


def test_offline_is_one_line(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused, like a machine without network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TINYFOCAL_WEIGHTS_URL", f"http://127.0.0.1:{port}/v7.0")
    monkeypatch.setenv("TINYFOCAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DownloadError, match=r"could not download yolov5l\.pt from http://127\.0\.0\.1:\d+/v7\.0/"
                                            r"yolov5l\.pt after 2 attempt\(s\)") as e:
        attempt_download_weights("yolov5l.pt", retries=2, backoff_s=0)
    assert "\n" not in str(e.value) and "put it at" in str(e.value)


def test_truncated_transfer_is_retried(server, tmp_path):
    base, state = server
    data = _fake_pt()
    state.files["/v7.0/yolov5x.pt"] = data
    state.truncate["/v7.0/yolov5x.pt"] = 1  # the first attempt gets half the bytes
    path = attempt_download_weights("yolov5x.pt", backoff_s=0)
    assert path.read_bytes() == data
    assert state.requests.count("/v7.0/yolov5x.pt") == 2
    assert _leftovers(path.parent) == ["yolov5x.pt"]


def test_truncated_every_time_leaves_no_file(server, tmp_path):
    base, state = server
    data = _fake_pt()
    state.files["/v7.0/yolov5x.pt"] = data
    state.truncate["/v7.0/yolov5x.pt"] = 3
    with pytest.raises(DownloadError, match=rf"truncated transfer: {len(data) // 2} of {len(data)} bytes") as e:
        attempt_download_weights("yolov5x.pt", retries=3, backoff_s=0)
    assert "\n" not in str(e.value)
    assert state.requests.count("/v7.0/yolov5x.pt") == 3
    assert _leftovers(tmp_path / "cache" / "weights") == []  # neither the final name nor a temporary file


def test_sha256_sidecar_checked(server, tmp_path):
    base, state = server
    data = _fake_pt()
    digest = hashlib.sha256(data).hexdigest()
    state.files["/v7.0/yolov5l6.pt"] = data
    state.files["/v7.0/yolov5l6.pt.sha256"] = f"{'0' * 64}  yolov5l6.pt\n".encode()  # sha256sum format, wrong
    with pytest.raises(ChecksumError, match=f"SHA-256 {digest} does not match the expected {'0' * 64}") as e:
        attempt_download_weights("yolov5l6.pt", backoff_s=0)
    assert "\n" not in str(e.value)
    assert state.requests.count("/v7.0/yolov5l6.pt") == 1  # a wrong file is refused, not fetched again
    assert _leftovers(tmp_path / "cache" / "weights") == []

    state.files["/v7.0/yolov5l6.pt.sha256"] = digest.upper().encode()  # bare digest: accepted, case-insensitive
    assert attempt_download_weights("yolov5l6.pt", backoff_s=0).read_bytes() == data

    state.files["/v7.0/yolov5m.pt"] = data
    state.files["/v7.0/yolov5m.pt.sha256"] = b"<html>not a digest</html>"  # a broken mirror is refused
    with pytest.raises(ChecksumError, match="not a SHA-256 sidecar"):
        attempt_download_weights("yolov5m.pt", backoff_s=0)
    assert not (tmp_path / "cache" / "weights" / "yolov5m.pt").exists()


def test_load_checkpoint_and_backend_download_official_names(server, tmp_path):
    """The one load point: load_checkpoint (train.py, export.py via load_model) and load_backend (val.py,
    detect.py) resolve 'yolov5n.pt' through the cache; other missing names keep their FileNotFoundError."""
    from models.yolo import Model
    from utils.checkpoints import load_checkpoint, save_checkpoint
    from utils.infer.detector import load_backend

    base, state = server
    model = Model("yolov5n.yaml", nc=2)
    src = save_checkpoint(tmp_path / "src.pt", model=model, epoch=-1, best_fitness=None, hyp=None, opt={},
                          names=["a", "b"])
    state.files["/v7.0/yolov5n.pt"] = src.read_bytes()
    ck = load_checkpoint("yolov5n.pt")
    assert ck["names"] == {0: "a", 1: "b"} and torch.equal(ck["model"]["model.0.conv.weight"],
                                                          model.state_dict()["model.0.conv.weight"])
    state.requests.clear()
    backend = load_backend("yolov5n.pt", device="cpu")
    assert backend.nc == 2 and backend.stride.tolist() == [8.0, 16.0, 32.0]
    assert state.requests == []  # served from the cache
    with pytest.raises(FileNotFoundError, match="no_such.pt"):
        load_checkpoint("no_such.pt")
    with pytest.raises(FileNotFoundError, match="no_such.pt"):
        load_backend("no_such.pt", device="cpu")


# ------------------------------------------------------------------------------ nothing cached that does not load
HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Proxy login required</body></html>\n"


def test_html_page_never_enters_the_cache(server, tmp_path):
    """A mirror answering 200 with an HTML page (a proxy login, an error page): refused, nothing cached, and the
    next call, after the mirror is fixed, downloads the real file."""
    base, state = server
    state.files["/v7.0/yolov5s.pt"] = HTML
    with pytest.raises(ChecksumError, match=r"yolov5s\.pt: the downloaded file was refused, nothing was cached: "
                                            r"not a PyTorch checkpoint \(an HTML page") as e:
        attempt_download_weights("yolov5s.pt", backoff_s=0)
    assert "\n" not in str(e.value) and "put it at" in str(e.value)
    assert _leftovers(tmp_path / "cache" / "weights") == []
    state.files["/v7.0/yolov5s.pt"] = data = _fake_pt()
    assert attempt_download_weights("yolov5s.pt", backoff_s=0).read_bytes() == data


def test_body_cut_short_without_content_length_never_enters_the_cache(server, tmp_path):
    base, state = server
    state.files["/v7.0/yolov5m.pt"] = _fake_pt()
    state.no_length["/v7.0/yolov5m.pt"] = 1
    with pytest.raises(ChecksumError, match="or the transfer stopped early") as e:
        attempt_download_weights("yolov5m.pt", backoff_s=0)
    assert "\n" not in str(e.value)
    assert _leftovers(tmp_path / "cache" / "weights") == []
    assert attempt_download_weights("yolov5m.pt", backoff_s=0).read_bytes() == _fake_pt()


class Evil:
    """Not on the checkpoint allow-list: a torch file holding it is a complete archive that does not load."""


def test_loaders_refuse_a_download_that_does_not_load(server, tmp_path):
    from utils.checkpoints import load_checkpoint
    from utils.infer.detector import load_backend

    base, state = server
    buf = io.BytesIO()
    torch.save({"model": Evil()}, buf)
    state.files["/v7.0/yolov5n.pt"] = buf.getvalue()
    for load in (load_checkpoint, lambda n: load_backend(n, device="cpu")):
        with pytest.raises(ChecksumError, match=r"refused, nothing was cached: .*Evil") as e:
            load("yolov5n.pt")
        assert "\n" not in str(e.value) and ".tmp" not in str(e.value)
        assert _leftovers(tmp_path / "cache" / "weights") == []


def test_cached_file_that_fails_to_load_names_itself_and_the_refresh(server, tmp_path):
    """A cache poisoned before these checks existed (or damaged on disk): the error names the cached file and says
    to delete it; deleting it is enough to recover."""
    from utils.checkpoints import CheckpointError, load_checkpoint
    from utils.infer.detector import load_backend

    base, state = server
    cached = tmp_path / "cache" / "weights" / "yolov5l.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(HTML)
    for load in (load_checkpoint, lambda n: load_backend(n, device="cpu")):
        with pytest.raises(CheckpointError, match=r"not a checkpoint") as e:
            load("yolov5l.pt")
        msg = str(e.value)
        assert "\n" not in msg and f"delete {cached}" in msg and "download it afresh" in msg
    assert state.requests == []  # the cached file is used as it is; only the message changes
    local = tmp_path / "mine.pt"
    local.write_bytes(HTML)
    with pytest.raises(CheckpointError) as e:  # a file outside the cache gets no such advice
        load_checkpoint(local)
    assert "delete" not in str(e.value)
