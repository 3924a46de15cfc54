"""Import the reference packages from .oracle/ for parity tests: yolov5==7.0.14 (``load_oracle``), SAHI's tile merge
and the AI-TOD COCO evaluator (``load_package``).

The reference is a test oracle only: product code never imports it. Quirks handled here (see shared ORACLE.md):
``import yolov5.models.yolo`` appends its own folder to ``sys.path``, so the bare names ``models`` and ``utils``
could silently resolve to the reference's modules; we import ours first and check afterwards. numpy 2 removed
``np.trapz``, which the reference's ``compute_ap`` calls.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest

ROOT = Path(__file__).resolve().parents[1]
ORACLE_DIR = ROOT / ".oracle"


def load_oracle() -> types.SimpleNamespace:
    """Return a namespace with the reference modules: ``yolo``, ``common``, ``loss``, ``general``, ``metrics``,
    ``torch_utils``, ``autoanchor``, ``dataloaders``, ``augmentations`` and the package ``root`` folder.

    Skips the calling test when the oracle is not installed, except under CI (``CI`` set), where that fails.
    """
    if not (ORACLE_DIR / "yolov5").is_dir():
        msg = (f"yolov5 oracle not installed in {ORACLE_DIR} "
               "(pip install --no-deps --target .oracle -r requirements-oracle.txt)")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # the reference's compute_ap needs it under numpy 2
    # Ours first, so that later bare imports of `models`/`utils` keep resolving to this repository.
    import models  # noqa: F401
    import utils  # noqa: F401

    if str(ORACLE_DIR) not in sys.path:
        sys.path.append(str(ORACLE_DIR))
    names = ["models.yolo", "models.common", "utils.loss", "utils.general", "utils.metrics", "utils.torch_utils",
             "utils.autoanchor", "utils.dataloaders", "utils.augmentations"]
    # The reference replaces PIL.Image.open and cv2.imread/imwrite/imshow process-wide on import; put ours back so
    # that tests running after an oracle test see the real libraries.
    originals = (PIL.Image.open, cv2.imread, cv2.imwrite, cv2.imshow)
    try:
        mods = {n.split(".")[-1]: importlib.import_module("yolov5." + n) for n in names}
    finally:
        PIL.Image.open, cv2.imread, cv2.imwrite, cv2.imshow = originals
    for ours in ("models", "utils"):
        assert Path(sys.modules[ours].__file__).resolve().parent.parent == ROOT, f"{ours} resolves to the oracle"
    return types.SimpleNamespace(root=ORACLE_DIR / "yolov5", **mods)


def load_package(name: str):
    """Import the test-only package ``name`` (e.g. ``sahi.postprocess.combine``, ``faster_coco_eval_aitod``) from
    .oracle/ (requirements-oracle.txt). Skips the calling test when it is not installed, except under CI (``CI``
    set), where that fails."""
    if str(ORACLE_DIR) not in sys.path:
        sys.path.append(str(ORACLE_DIR))
    try:
        return importlib.import_module(name)
    except ImportError as e:
        msg = f"{name} not importable from {ORACLE_DIR} ({e}; pip install --no-deps --target .oracle -r " \
              "requirements-oracle.txt)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
