"""Guards for names and paths that come from untrusted input (data YAMLs, converter options, markers read back from
disk, annotation files): a split name must be a plain folder name, a path from a dataset must stay below its root,
and nothing is ever deleted outside the folder a command was given.

Every delete of ``data/convert.py`` and ``data/tile.py`` goes through :func:`remove_inside`, which resolves the
path right before deleting (so a link planted in the output cannot redirect it) and refuses anything that is not
strictly inside the given root.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath

from utils.errors import UserError

_FORBIDDEN = ("/", "\\", ":", "\0")  # separators of any platform, drive letters, and what no file system accepts


class UnsafePathError(UserError):
    """A name or path from the input would reach outside the folder it belongs to; the message names it."""


def plain_name(name: object, what: str) -> str:
    """``name`` itself when it is a plain folder or file name: a non-empty string without any path separator
    (``/`` or ``\\``), drive colon or NUL, and not ``.`` or ``..``. Raises UnsafePathError naming ``what``."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in _FORBIDDEN):
        raise UnsafePathError(f"{what} {name!r} is not a plain folder name (no '/', '\\', ':', '..', not empty)")
    return name


def relative_path(path: object, what: str) -> str:
    """``path`` (a string) as a POSIX relative path that stays below the folder it is relative to: not empty, not
    absolute on any platform, no ``..`` part, no NUL. Raises UnsafePathError naming ``what``."""
    s = path if isinstance(path, str) else None
    if s is None or not s.strip() or "\0" in s:
        raise UnsafePathError(f"{what}: {path!r} must be a relative path (a non-empty string)")
    posix, win = PurePosixPath(s.replace("\\", "/")), PureWindowsPath(s)
    if posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts:
        raise UnsafePathError(f"{what}: {path!r} must be a relative path without '..' (it would leave its folder)")
    return posix.as_posix()


def is_inside(path: str | Path, root: str | Path) -> bool:
    """True when ``path`` lies strictly below ``root``, both resolved (links followed); ``root`` itself is not."""
    p, r = Path(path).resolve(), Path(root).resolve()
    return p != r and r in p.parents


def remove_inside(path: str | Path, root: str | Path) -> None:
    """Delete the file, link or folder ``path`` (nothing when absent), only when it lies strictly inside ``root``.

    The folder holding ``path`` is resolved (links followed) right before the delete, the last part is not: a link
    is removed itself, never its target, and ``shutil.rmtree`` does not follow links inside the tree.
    Raises UnsafePathError (nothing deleted) when the resolved path is ``root`` itself or outside it.
    """
    p, r = Path(path), Path(root).resolve()
    if p.name in ("", ".", ".."):
        raise UnsafePathError(f"refusing to delete {path}: it is not inside {root}")
    target = p.parent.resolve() / p.name
    if target == r or r not in target.parents:
        raise UnsafePathError(f"refusing to delete {path}: it is not inside {root} (resolved: {target})")
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    elif target.exists():  # a socket, a FIFO, ...
        target.unlink()


__all__ = ["UnsafePathError", "is_inside", "plain_name", "relative_path", "remove_inside"]
