"""utils/archives.py: dataset archives are checked before anything is extracted (unsafe paths, links, member
count, total size, compression ratio, free space), through both users: the converters' SRC folder and a data
YAML's ``download: URL.zip`` (fetched from a 127.0.0.1 server)."""

from __future__ import annotations

import functools
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from data import convert as convert_mod
from data.prepare import download_zip
from tests.data.test_convert import make_visdrone
from utils import archives
from utils.archives import MAX_RATIO, RATIO_FLOOR_BYTES, ArchiveError, extract
from utils.errors import DatasetError


def _zeros_zip(path: Path, mib: int) -> Path:
    """A zip holding one file of ``mib`` MiB of zeros: a few hundred KB on disk (deflate ratio ~1000)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("zeros.bin", "w") as f:
        chunk = bytes(2**20)
        for _ in range(mib):
            f.write(chunk)
    return path


def test_zip_bomb_refused_before_writing(tmp_path):
    mib = RATIO_FLOOR_BYTES // 2**20 + 6  # just over the floor: the ratio rule applies
    bomb = _zeros_zip(tmp_path / "bomb.zip", mib)
    assert bomb.stat().st_size * MAX_RATIO < mib * 2**20  # a ratio far over the limit
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ArchiveError, match=rf"bomb\.zip: unpacks to {mib} MiB from .* compression ratio of \d+ "
                                           rf"\(limit {MAX_RATIO}\): refused") as e:
        extract(bomb, out)
    assert "\n" not in str(e.value) and list(out.iterdir()) == []


def test_small_archives_that_compress_well_are_fine(tmp_path):
    z = _zeros_zip(tmp_path / "small.zip", 2)  # ratio ~1000 but only 2 MiB: under the floor
    extract(z, tmp_path)
    assert (tmp_path / "zeros.bin").stat().st_size == 2 * 2**20


def test_total_size_and_member_limits(tmp_path, monkeypatch):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        for i in range(5):
            f.writestr(f"f{i}.txt", "x" * 1000)
    monkeypatch.setattr(archives, "MAX_TOTAL_BYTES", 4000)
    with pytest.raises(ArchiveError, match="more than the limit of"):
        extract(z, tmp_path / "o")
    monkeypatch.setattr(archives, "MAX_TOTAL_BYTES", 10**12)
    monkeypatch.setattr(archives, "MAX_MEMBERS", 4)
    with pytest.raises(ArchiveError, match="5 members, more than the limit of 4"):
        extract(z, tmp_path / "o")


def test_free_space_checked(tmp_path, monkeypatch):
    z = _zeros_zip(tmp_path / "a.zip", 1)
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(ArchiveError, match="has only 0.00 GiB free"):
        extract(z, tmp_path)
    assert not (tmp_path / "zeros.bin").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt", "C:/evil.txt",
                                  "..\\evil.txt"])
def test_unsafe_member_paths(tmp_path, name):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr(name, "x")
    (tmp_path / "o").mkdir()
    with pytest.raises(ArchiveError, match="unsafe path in archive"):
        extract(z, tmp_path / "o")


def test_tar_links_and_special_files(tmp_path):
    for kind in (tarfile.SYMTYPE, tarfile.FIFOTYPE):
        t = tmp_path / f"{kind!r}.tar"
        with tarfile.open(t, "w") as f:
            info = tarfile.TarInfo("x")
            info.type, info.linkname = kind, "/etc/passwd"
            f.addfile(info)
        with pytest.raises(ArchiveError, match="refused"):
            extract(t, tmp_path)
        assert not (tmp_path / "x").exists()


def test_converter_source_bomb_is_one_line(tmp_path, capsys):
    src = make_visdrone(tmp_path / "src")
    _zeros_zip(src / "extra.zip", RATIO_FLOOR_BYTES // 2**20 + 6)
    assert convert_mod.main(["visdrone", str(src), str(tmp_path / "dst")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "extra.zip" in err and "decompression bomb" in err
    assert not (src / "zeros.bin").exists() and not (tmp_path / "dst").exists()


def test_data_yaml_zip_download_bomb(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    _zeros_zip(www / "ds.zip", RATIO_FLOOR_BYTES // 2**20 + 6)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        type("H", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}), directory=str(www)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DatasetError, match=r"ds\.zip: the downloaded zip: unpacks to .* decompression bomb"):
            download_zip(f"http://127.0.0.1:{srv.server_address[1]}/ds.zip", tmp_path / "dest")
    finally:
        srv.shutdown()
        srv.server_close()
    assert list((tmp_path / "dest").iterdir()) == []  # neither the zip nor anything from it


def test_corrupt_zip_is_an_archive_error(tmp_path):
    z = tmp_path / "bad.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as f:
        f.writestr("a.txt", "hello" * 100)
    z.write_bytes(buf.getvalue()[:-30])
    with pytest.raises(ArchiveError, match=r"bad\.zip: corrupt or incomplete archive"):
        extract(z, tmp_path)
