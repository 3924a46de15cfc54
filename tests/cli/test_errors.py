"""One user-error family: every typed error derives from UserError, entry points print a UserError as one line with
exit status 1, and any other exception (a plain ValueError included) keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.yolo import ModelConfigError
from utils.checkpoints import CheckpointError
from utils.cli import run_main
from utils.config.hyp import HypError
from utils.dataset.ignore import IgnoreFileError
from utils.dataset.labels import LabelError
from utils.dataset.sources import DatasetNotFoundError
from utils.downloads import DownloadError
from utils.errors import DatasetError, UsageError, UserError
from utils.infer.streams import StreamError
from utils.run_dirs import RunLockError
from utils.train.loggers import LoggerError
from utils.train.state import ResumeError

ROOT = Path(__file__).resolve().parents[2]


def test_every_typed_error_is_a_user_error():
    for cls in (UsageError, DatasetError, HypError, LabelError, CheckpointError, DownloadError, IgnoreFileError,
                StreamError, RunLockError, LoggerError, ResumeError, ModelConfigError, DatasetNotFoundError):
        assert issubclass(cls, UserError), cls
    assert not issubclass(ValueError, UserError)


def test_user_error_is_one_line_and_an_internal_value_error_keeps_its_traceback(capsys):
    def user():
        raise DatasetError("data.yaml: 'val' is missing\n(a folder, .txt list or glob of images)")

    assert run_main("prog.py", user) == 1
    assert capsys.readouterr().err == "prog.py: error: data.yaml: 'val' is missing; (a folder, .txt list or glob of " \
                                      "images)\n"

    def bug():
        return np.zeros(3) + np.zeros(4)  # numpy raises ValueError: a bug, not the user's input

    with pytest.raises(ValueError, match="broadcast"):
        run_main("prog.py", bug)
    assert capsys.readouterr().err == ""


def test_entry_point_prints_user_error_as_one_line_but_a_bug_as_a_traceback(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    r = subprocess.run([sys.executable, "val.py", "--data", str(missing), "--weights", str(tmp_path / "x.pt")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [f"val.py: error: data YAML not found: {missing}"]
    code = ("import sys, numpy as np, val\n"
            "val._main = lambda opt: np.zeros(3) + np.zeros(4)\n"
            "sys.exit(val.main(['--data', 'x.yaml', '--weights', 'x.pt']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr and "broadcast" in r.stderr
    assert "error: operands could not be broadcast" not in r.stderr  # not dressed up as a user error
