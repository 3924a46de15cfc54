"""Validate-then-write for the commands that produce a dataset folder (``data/convert.py``, ``data/tile.py``): the
new output is written into a temporary folder beside the destination and swapped in at the end, so a failure at
any point (a bad input found late, a full disk, Ctrl-C) leaves the previous output as it was.

- :func:`locked`: the destination's lock, the one training runs use (``utils.run_dirs``: ``DST/run.lock``
  holding ``<pid> <host>``; a stale lock of a dead process is taken over). A second command on the same folder
  stops with one line naming the holder.
- :func:`staging`: a fresh temporary folder ``.<DST name>.staging-<pid>-<hex>`` in DST's parent (or, when that is
  on another file system than DST's contents or not writable, in DST itself), removed when the block exits,
  whatever happened. Temporaries left by killed commands are removed first (the lock proves they are stale).
- :func:`swap_in`: moves the named parts of the new output into DST, each by one rename, after moving the old
  ones away. The marker (what says "complete") is removed first and moved in last, so an interruption in
  between leaves a folder without a marker, which the next run redoes.
Every delete goes through ``utils.safe_paths.remove_inside``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from utils.run_dirs import LOCK_NAME, RunLockError, acquire_run_lock, lock_holder, release_run_lock
from utils.safe_paths import UnsafePathError, is_inside, remove_inside

STAGING_TAG = ".staging-"


@contextlib.contextmanager
def locked(dst: Path, what: str) -> Iterator[Path]:
    """Hold ``dst``'s lock (``dst`` is created) while the block runs. Raises RunLockError with one line when
    another live process holds it."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        lock = acquire_run_lock(dst)
    except RunLockError:
        holder = lock_holder(dst) or "another process"
        raise RunLockError(f"{dst}: another {what} or training run is writing this folder ({holder}, lock file "
                           f"{dst / LOCK_NAME}); wait for it to finish, or delete the lock file if none is running"
                           ) from None
    try:
        yield lock
    finally:
        release_run_lock(lock)


def _same_device(base: Path, dst: Path) -> bool:
    """True when renames between ``base`` and the folders an output lives in (DST, DST/images, DST/labels) work."""
    dev = os.stat(base).st_dev
    return all(os.stat(p).st_dev == dev for p in (dst, dst / "images", dst / "labels") if p.is_dir())


@contextlib.contextmanager
def staging(dst: Path) -> Iterator[Path]:
    """A fresh, empty temporary folder on ``dst``'s file system (module docstring), removed at exit. Call with
    ``dst``'s lock held."""
    prefix = f".{dst.name}{STAGING_TAG}"
    ours = re.compile(re.escape(prefix) + r"\d+-[0-9a-f]{6}")  # exactly: another output's temporaries never match
    for base in (dst.parent, dst):
        for old in base.iterdir():  # left by a killed command: stale, since we hold the lock
            if ours.fullmatch(old.name):
                remove_inside(old, base)
    tmp = None
    for base in (dst.parent, dst):
        if not _same_device(base, dst):
            continue
        with contextlib.suppress(PermissionError):
            tmp = base / f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"
            tmp.mkdir()
            break
        tmp = None
    if tmp is None:
        raise OSError(f"{dst}: cannot create a temporary folder on its file system (in {dst.parent} or in it)")
    try:
        yield tmp
    finally:
        remove_inside(tmp, tmp.parent)


def swap_in(tmp: Path, dst: Path, parts: list[str], marker: str, partial: str | None = None) -> None:
    """Replace each of ``parts`` (paths relative to ``dst``, e.g. ``images/train``) by the same path of ``tmp``:
    the old one (if any) is moved into ``tmp`` (deleted with it), the new one (if any) renamed into place. The
    ``marker`` is removed first and moved in last. ``partial``, when given, names a file written into ``dst``
    before the first move and removed after the last (a sign that the folder is ours and incomplete)."""
    trash = tmp / ".replaced"

    def move_away(rel: str) -> None:
        old = dst / rel
        if not is_inside(old.parent / "x", dst):  # a planted link must not redirect a move out of dst
            raise UnsafePathError(f"{old}: lies outside {dst} once links are followed; refusing to replace it")
        if os.path.lexists(old):
            (trash / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, trash / rel)

    def move_in(rel: str) -> None:
        if os.path.lexists(tmp / rel):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, dst / rel)

    move_away(marker)
    if partial:
        (dst / partial).write_text("")
    for rel in dict.fromkeys(p for p in parts if p != marker):
        move_away(rel)
        move_in(rel)
    move_in(marker)
    if partial:
        remove_inside(dst / partial, dst)


__all__ = ["STAGING_TAG", "locked", "staging", "swap_in"]
