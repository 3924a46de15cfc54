"""Run folders shared by every entry point: numbered names (runs/train/exp2, ...) and the lock a training process holds
in its folder."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from utils.errors import UserError

LOGGER = logging.getLogger(__name__)
LOCK_NAME = "run.lock"  # in the run folder while a training process writes to it: "<pid> <host>"


class RunLockError(UserError):
    """The run folder is in use by another live training process; the message names the lock file."""


# --- run folders ----------------------------------------------------------------------------------------------------
def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """``path`` itself when it does not exist (or ``exist_ok``), else the first free numbered sibling.

    The user's name is never changed, only extended (YOLOv5's ``exp`` -> ``exp2``, but with a separator when the
    name ends in a digit, so its digits stay readable): ``exp`` -> ``exp2``, ``exp3``, ...; ``seed1`` -> ``seed1-2``,
    ``seed1-3``, ...; ``lr0.01`` -> ``lr0.01-2``.
    """
    path = Path(path)
    if path.exists() and not exist_ok:
        sep = "-" if path.name[-1:].isdigit() else ""
        n = 2
        while (path.parent / f"{path.name}{sep}{n}").exists():
            n += 1
        path = path.parent / f"{path.name}{sep}{n}"
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _pid_alive(pid: int) -> bool:
    """True when process ``pid`` runs on this machine (a zombie, killed but not yet reaped, counts as dead).
    Windows cannot be asked without side effects (signal 0 is CTRL_C_EVENT there): always True."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS, Windows): trust kill(0)
        return True


def lock_holder(folder: str | Path) -> str | None:
    """Who holds ``folder``'s run lock (``"pid 123"``), or None when there is no lock or it is stale: left by a dead
    process of this machine, or by this very process. An unreadable lock or one from another host counts as held
    (its process cannot be checked from here)."""
    path = Path(folder) / LOCK_NAME
    try:
        fields = path.read_text().split()
    except FileNotFoundError:
        return None
    except OSError:
        return "an unknown process"
    if len(fields) != 2 or not fields[0].isdigit():
        return "an unknown process"
    pid, host = int(fields[0]), fields[1]
    if host != socket.gethostname():
        return f"pid {pid} on host {host}"
    return f"pid {pid}" if pid != os.getpid() and _pid_alive(pid) else None


def check_run_lock(folder: str | Path) -> None:
    """Raise RunLockError when a live process holds ``folder``'s run lock (checked before any work is done)."""
    holder = lock_holder(folder)
    if holder:
        raise RunLockError(f"{Path(folder) / LOCK_NAME}: the run folder is in use by another training process "
                           f"({holder}); choose another --name, or delete the lock file if no run uses the folder")


def acquire_run_lock(folder: str | Path) -> Path:
    """Create ``folder/run.lock`` holding this process's pid, atomically (O_EXCL): two runs given the same folder
    can never both write to it. A stale lock (dead pid) is taken over with a warning. Returns the lock's path;
    :func:`release_run_lock` removes it. Raises RunLockError when a live process holds it."""
    path = Path(folder) / LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            check_run_lock(folder)
            LOGGER.warning(f"{path}: taking over the stale lock of a process that is no longer running")
            # two runs taking over the same stale lock at the same instant could both get here; the retry's O_EXCL
            # then lets only one of them create the new lock
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return path
    check_run_lock(folder)
    raise RunLockError(f"{path}: could not take the run lock; another run is starting in this folder")


def release_run_lock(path: Path | None) -> None:
    """Remove a lock taken by :func:`acquire_run_lock`, if it still holds this process's pid."""
    try:
        mine = path is not None and path.read_text().split()[:1] == [str(os.getpid())]
    except OSError:
        return
    if mine:
        path.unlink(missing_ok=True)
