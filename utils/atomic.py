"""Atomic file writes: a reader (or a run resumed after a crash) sees either the old file or the new one, never a
half-written mix.

Each writer writes a temporary file in the destination's folder (same file system, so the rename is atomic),
flushes and fsyncs it, ``os.replace``s it over the destination, then fsyncs the folder so the rename itself is
durable (where the platform supports opening folders). On any error the temporary file is removed and the
destination is left as it was. A process killed (SIGKILL, power loss) mid-write can leave a stray
``.<name>.<pid>.<random>.tmp`` next to the destination; :func:`remove_stale_temps` clears them.

Used for checkpoints, results.csv, label caches and metrics.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

TMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable. Not supported on Windows (folders cannot be opened): skipped there."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. certain network mounts) refuse fsync on folders
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_open(path: str | Path, check: Callable[[Path], Any] | None = None) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` atomically when the block exits without error.

    The temporary file is created with mode 0o666 minus the umask (like ``open``), exclusively (no clobbering of
    another writer's temporary), in ``path``'s folder, which must exist. ``check(temporary path)``, when given, runs
    on the complete, closed file before the rename; an exception from it leaves ``path`` untouched.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any],
                 check: Callable[[Path], Any] | None = None) -> Path:
    """Call ``write(binary_file)`` on a temporary file, then ``check(temporary path)`` when given (raise to refuse
    the file), then atomically move it to ``path``. Returns ``path``."""
    with _atomic_open(path, check) as fh:
        write(fh)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically. Returns ``path``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation). Returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8, non-ASCII kept, trailing newline) to ``path`` atomically. Returns ``path``.

    Raises TypeError (from ``json``) before touching ``path`` when ``obj`` is not JSON-serialisable.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` atomically. Returns ``path``."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temporaries left next to ``path`` by writers that were killed mid-write; return what was removed.

    Only call this when no other process is writing ``path``.
    """
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    for p in path.parent.iterdir():
        if not (p.name.startswith(prefix) and p.name.endswith(TMP_SUFFIX)):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed
