"""The shape every command line shares (val.py, detect.py, export.py; train.py may use it too).

``main(argv) -> int`` parses with :class:`ArgumentParser` (bad flags raise :class:`UsageError` instead of printing the
usage and exiting 2), calls the script's Python API and hands it to :func:`run_main`, which turns a user error into
ONE line on stderr (``prog: error: message``) and exit status 1. Logging is configured only by the script's
``if __name__ == "__main__"`` block, never on import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from utils.errors import UsageError, UserError

# Errors caused by the user's input: the UserError family (utils/errors.py: UsageError, DatasetError, HypError,
# LabelError, CheckpointError, DownloadError, ...) and a user path that does not open as expected. Anything else,
# a plain ValueError included, is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors raise :class:`UsageError` (one line, caught by :func:`run_main`)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (multi-line messages joined with '; ')."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return "; ".join(lines) or type(e).__name__


def run_main(prog: str, call: Callable[[], object], errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``call()``; 0 on success, 1 after printing a user error (``USER_ERRORS`` + ``errors``) as one line on
    stderr. ``--help`` (argparse's exit status 0) returns 0; other exceptions propagate."""
    try:
        call()
    except (*USER_ERRORS, *errors) as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 1
    except SystemExit as e:  # argparse's --help / --version
        if e.code in (0, None):
            return 0
        raise
    return 0


def check_args(**conditions: tuple[bool, str]) -> None:
    """Raise UsageError for the first ``--flag=(ok, requirement)`` whose ``ok`` is False, e.g.
    ``check_args(batch_size=(bs >= 1, f"must be >= 1, got {bs}"))`` -> ``--batch-size must be >= 1, got 0``."""
    for name, (ok, requirement) in conditions.items():
        if not ok:
            raise UsageError(f"--{name.replace('_', '-')} {requirement}")


__all__ = ["ArgumentParser", "USER_ERRORS", "check_args", "one_line", "run_main"]
