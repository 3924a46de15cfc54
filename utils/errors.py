"""The errors a user's input causes, as one family: :class:`UserError` and the types every layer shares.

Entry points (``utils.cli.run_main``) print a ``UserError`` as ONE line and exit with 1; any other exception is a bug
and keeps its traceback. Each typed error of the project derives from ``UserError``: the shared ones are declared
here (a bad flag, a bad data YAML or dataset), the others beside the code that raises them (``HypError``,
``LabelError``, ``CheckpointError``, ``DownloadError``, ...). ``UserError`` derives from ``ValueError`` so that code
written against the former ``ValueError`` contract still catches it; the reverse is not true: a plain
``ValueError`` is never shown as a user error.
"""

from __future__ import annotations


class UserError(ValueError):
    """An error caused by the user's input (a flag, a file, a dataset); its message names the input and the
    problem, on one line."""


class UsageError(UserError):
    """A bad command-line flag or value; the message names the flag."""


class DatasetError(UserError):
    """A data YAML or dataset is invalid or missing; the message names the file/key and the problem."""


__all__ = ["DatasetError", "UsageError", "UserError"]
