"""Checks of a training run's options and data before and while it runs: flag combinations, --freeze, the share of
images skipped as corrupt."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence

from utils.cli import check_args
from utils.errors import DatasetError, UsageError
from utils.train.schedule import NOMINAL_BATCH

SKIP_LIMIT = 0.1  # share of a split's images skipped as corrupt above which training stops (--allow-skipped: go on)
CACHE_MODES = ("ram", "disk")


# --- options --------------------------------------------------------------------------------------------------------
def validate_options(opt: argparse.Namespace) -> None:
    """Check train.py's options that argparse cannot (ranges, optional values) before any work is done.
    Raises UsageError naming the flag."""
    check_args(epochs=(opt.epochs >= 1, f"must be >= 1, got {opt.epochs}"),
               batch_size=(opt.batch_size >= 1 or opt.batch_size == -1,
                           f"must be >= 1, or -1 for AutoBatch (CUDA), got {opt.batch_size}"),
               imgsz=(opt.imgsz >= 1, f"must be >= 1 px, got {opt.imgsz}"),
               nbs=(getattr(opt, "nbs", NOMINAL_BATCH) >= 1, f"must be >= 1, got {getattr(opt, 'nbs', None)}"),
               workers=(opt.workers >= 0, f"must be >= 0, got {opt.workers}"),
               cache=(opt.cache in (None, False, *CACHE_MODES), f"must be 'ram' or 'disk', got {opt.cache!r}"),
               freeze=(min(opt.freeze, default=0) >= 0, f"layer numbers must be >= 0, got {opt.freeze}"))


def check_freeze(freeze: Sequence[int], n_layers: int) -> None:
    """``--freeze n`` (the first n layers) or ``--freeze i j k`` (those layers) must leave a trainable layer of a
    model of ``n_layers`` layers. Raises UsageError naming the flag and the model's layer count."""
    frozen = set(freeze) if len(freeze) > 1 else set(range(freeze[0]))
    flag = f"--freeze {' '.join(map(str, freeze))}"
    if any(i >= n_layers for i in frozen):
        raise UsageError(f"{flag}: the model has {n_layers} layers (0..{n_layers - 1})")
    if len(frozen) == n_layers:
        raise UsageError(f"{flag}: freezes all {n_layers} layers of the model, nothing would train")


# --- images skipped as corrupt --------------------------------------------------------------------------------------
_CORRUPT = "ignoring corrupt image/label: "


_REASONS = (  # (text in a corrupt-pair message, reason counted); the first match wins
    (".ignore.txt", "bad ignore file"),
    ("must be a non-negative integer", "class id not an integer >= 0"),
    ("outside [0, 1]", "coordinates not normalised"),
    ("zero-size", "zero-size box"),
    ("columns", "wrong number of columns"),
    ("not a number", "not a number"),
    ("NaN or infinite", "NaN or infinite value"),
    ("not a text file", "label file not text"),
    ("cannot read", "unreadable label file"),
    ("image", "unreadable image"),
)


def skip_reason(message: str) -> str:
    """Short reason of one corrupt-pair message of the label scan (utils/dataset/labels.py), e.g. ``class id >=
    nc=1``."""
    m = re.search(r"class id \d+ >= (nc=\d+)", message)
    if m:
        return f"class id >= {m.group(1)}"
    return next((reason for key, reason in _REASONS if key in message), "other")


def check_skipped(counts: dict[str, int], messages: Sequence[str], source: str, split: str,
                  limit: float = SKIP_LIMIT) -> None:
    """Raise DatasetError when more than ``limit`` of a split's images were skipped as corrupt (a data YAML whose
    class list is too short would otherwise train on a few images and exit 0). One line: the data YAML, the
    counts and each reason's count."""
    skipped, total = counts.get("corrupt", 0), counts.get("total", 0)
    if not total or skipped / total <= limit:
        return
    reasons = Counter(skip_reason(m) for m in messages if m.startswith(_CORRUPT))
    why = ", ".join(f"{r}: {n}" for r, n in reasons.most_common())
    raise DatasetError(f"{source}: {skipped} of {total} {split} images skipped as corrupt ({why}), more than "
                       f"{limit:.0%}: fix the labels or the data YAML, or pass --allow-skipped to go on without them")
