"""Safe extraction of dataset archives (.zip, .tar, .tgz, .tar.gz): every member is checked before the first byte
is written.

Refused, with one line naming the archive:
- a member with an absolute path or a ``..`` part (it would land outside the target folder), and links in tars;
- more than :data:`MAX_MEMBERS` members;
- more than :data:`MAX_TOTAL_BYTES` in all once extracted, or more than :data:`MAX_RATIO` times the archive's own
  size once extracted (a "zip bomb": a few hundred KB that unpack to gigabytes) when that is more than
  :data:`RATIO_FLOOR_BYTES`, so small archives of text are never refused for compressing well;
- more than the free space of the target's file system.
The sizes are the ones the archive declares; the extraction itself writes no more than declared (zipfile and
tarfile stop at the declared size of each member), so the checks bound what reaches the disk.
A dataset bigger than these limits is extracted by hand into the target folder (the archive then removed).
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from utils.errors import UserError

MAX_TOTAL_BYTES = 200 * 2**30  # 200 GiB: the largest public tiny-object benchmarks unpack to well under 100 GiB
MAX_RATIO = 100  # extracted bytes per archive byte; images barely compress, annotation text about 10x
RATIO_FLOOR_BYTES = 64 * 2**20  # the ratio is only checked above 64 MiB extracted
MAX_MEMBERS = 2_000_000  # files and folders; the largest of these datasets has under 100,000 files
SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz")


class ArchiveError(UserError):
    """An archive is corrupt, unsafe or over a limit; the message names it and says what to do."""


def is_archive(path: Path) -> bool:
    """True for a visible file whose name ends in one of :data:`SUFFIXES`."""
    return path.is_file() and path.name.lower().endswith(SUFFIXES) and not path.name.startswith(".")


def _unsafe(name: str) -> bool:
    posix, win = PurePosixPath(name.replace("\\", "/")), PureWindowsPath(name)
    return posix.is_absolute() or win.is_absolute() or bool(win.drive) or ".." in posix.parts or "\0" in name


def check_members(archive: Path, names: list[str], sizes: list[int], dest: Path) -> None:
    """Raise ArchiveError when the members ``names`` (declared extracted ``sizes`` in bytes) of ``archive`` may not
    be extracted into ``dest`` (module docstring: paths, count, total, ratio, free space)."""
    bad = next((n for n in names if _unsafe(n)), None)
    if bad is not None:
        raise ArchiveError(f"{archive}: unsafe path in archive: {bad!r} (absolute or with '..'); refused")
    if len(names) > MAX_MEMBERS:
        raise ArchiveError(f"{archive}: {len(names)} members, more than the limit of {MAX_MEMBERS}; extract it by "
                           f"hand into {dest} if you trust it")
    total, packed = sum(sizes), max(archive.stat().st_size, 1)
    if total > MAX_TOTAL_BYTES:
        raise ArchiveError(f"{archive}: unpacks to {total / 2**30:.1f} GiB, more than the limit of "
                           f"{MAX_TOTAL_BYTES / 2**30:.0f} GiB; extract it by hand into {dest} if you trust it")
    if total > RATIO_FLOOR_BYTES and total > MAX_RATIO * packed:
        raise ArchiveError(f"{archive}: unpacks to {total / 2**20:.0f} MiB from {packed / 2**20:.2f} MiB, a "
                           f"compression ratio of {total / packed:.0f} (limit {MAX_RATIO}): refused as a "
                           f"decompression bomb; extract it by hand into {dest} if you trust it")
    free = shutil.disk_usage(dest).free
    if total > free:
        raise ArchiveError(f"{archive}: unpacks to {total / 2**30:.2f} GiB but {dest} has only "
                           f"{free / 2**30:.2f} GiB free")


def extract(archive: str | Path, dest: str | Path) -> None:
    """Extract ``archive`` (.zip, or a tar, compressed or not) into the existing folder ``dest`` after
    :func:`check_members`. Raises ArchiveError naming the archive when it is unsafe or over a limit (before
    anything is written) or corrupt or incomplete (a damaged member may be detected only while extracting)."""
    archive, dest = Path(archive), Path(dest)
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                infos = z.infolist()
                check_members(archive, [i.filename for i in infos], [i.file_size for i in infos], dest)
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                members = t.getmembers()
                check_members(archive, [m.name for m in members], [max(m.size, 0) for m in members], dest)
                if any(m.issym() or m.islnk() for m in members):
                    raise ArchiveError(f"{archive}: archive holds links; refused")
                if any(not (m.isfile() or m.isdir()) for m in members):
                    raise ArchiveError(f"{archive}: archive holds devices, pipes or other special files; refused")
                if hasattr(tarfile, "data_filter"):  # Python >= 3.12 (and security backports): no special bits
                    t.extractall(dest, filter="data")
                else:
                    t.extractall(dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, NotImplementedError) as e:
        raise ArchiveError(f"{archive}: corrupt or incomplete archive ({type(e).__name__}: {e}); delete it and "
                           "download it again") from None


__all__ = ["ArchiveError", "MAX_MEMBERS", "MAX_RATIO", "MAX_TOTAL_BYTES", "RATIO_FLOOR_BYTES", "SUFFIXES",
           "check_members", "extract", "is_archive"]
