"""Training hyperparameters: YAML -> a typed, validated, immutable ``Hyp`` -> the code that needs it.

Every key is declared once below with its default and a reason. YOLOv5 v7.0 hyp files load unchanged: its keys
are required (a missing one is an error naming it), ours (TFL, box-loss choice) default to "off" so that a plain
YOLOv5 hyp file gives YOLOv5's numbers. Unknown keys are rejected by name. Derived values (e.g. the box gain
scaled by the number of detection levels) are computed where used, never written back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

HYP_DIR = Path(__file__).resolve().parents[1] / "hyp"
TFL_TERMS = ("box", "obj", "cls")
TFL_NORMS = ("sum", "mean")


@dataclass(frozen=True)
class Hyp:
    # --- optimiser and schedule (YOLOv5 v7.0) ---
    lr0: float = 0.01  # initial learning rate (SGD 1e-2, Adam 1e-3)
    lrf: float = 0.01  # final learning rate as a fraction of lr0
    momentum: float = 0.937  # SGD momentum / Adam beta1
    weight_decay: float = 0.0005  # applied to conv/linear weights only
    warmup_epochs: float = 3.0  # linear warmup length (fractions allowed)
    warmup_momentum: float = 0.8  # momentum at the start of warmup
    warmup_bias_lr: float = 0.1  # bias learning rate at the start of warmup
    # --- loss gains and matching (YOLOv5 v7.0) ---
    box: float = 0.05  # box loss gain (scaled by 3 / number of levels where used)
    cls: float = 0.5  # class loss gain (scaled by nc / 80 and levels where used)
    cls_pw: float = 1.0  # BCE positive weight for classes
    obj: float = 1.0  # objectness gain (scaled by image size and levels where used)
    obj_pw: float = 1.0  # BCE positive weight for objectness
    iou_t: float = 0.20  # unused by v7.0 training, kept for file compatibility
    anchor_t: float = 4.0  # max target/anchor side ratio for a match
    fl_gamma: float = 0.0  # focal loss gamma for class/objectness (0 = plain BCE)
    # --- augmentation (YOLOv5 v7.0) ---
    hsv_h: float = 0.015  # hue gain (fraction)
    hsv_s: float = 0.7  # saturation gain (fraction)
    hsv_v: float = 0.4  # value gain (fraction)
    degrees: float = 0.0  # rotation (+/- degrees)
    translate: float = 0.1  # translation (+/- fraction of image)
    scale: float = 0.5  # scale gain (+/-)
    shear: float = 0.0  # shear (+/- degrees)
    perspective: float = 0.0  # perspective (+/- fraction), 0 to 0.001
    flipud: float = 0.0  # probability of an up-down flip
    fliplr: float = 0.5  # probability of a left-right flip
    mosaic: float = 1.0  # probability of a 4-image mosaic
    mixup: float = 0.0  # probability of mixup
    copy_paste: float = 0.0  # segment copy-paste probability (needs segments; kept for file compatibility)
    # --- optional in YOLOv5 files ---
    anchors: float | None = None  # anchors per output level; None keeps the model YAML's anchors
    label_smoothing: float = 0.0  # class label smoothing epsilon (YOLOv5's --label-smoothing)
    fl_alpha: float = 0.25  # focal loss alpha, used only when fl_gamma > 0 (YOLOv5's fixed 0.25)
    # --- Tiny Focal Loss (ours; off by default so YOLOv5 numbers hold) ---
    tfl: bool = False  # weight each target by w = exp(-k * area_px / S) + 1
    tfl_k: float = 1.6  # focusing coefficient k >= 0 (k = 0: weight 2 everywhere; k -> inf: weight 1)
    tfl_s: float = 1024.0  # tiny/big dividing area S in input px^2 (COCO: 32 * 32)
    tfl_piecewise: bool = False  # weight 1 for targets with area >= S
    tfl_terms: tuple[str, ...] = TFL_TERMS  # which loss terms are weighted
    tfl_norm: str = "sum"  # 'sum': loss times weight (the paper); 'mean': weights divided by their batch mean
    # --- box-regression loss (ours; 'ciou' is YOLOv5's) ---
    box_loss: str = "ciou"  # iou | giou | diou | ciou | eiou | focal_eiou | focal_eiou_star | focal_eiou_v1 | nwd
    focal_eiou_gamma: float = 0.5  # gamma of Focal-EIoU (IoU^gamma * EIoU); the paper's best
    focal_l1_beta: float = 0.8  # beta of FocalL1 in [1/e, 1]; the paper's best
    nwd_c: float = 12.8  # NWD normalising constant C in input pixels (AI-TOD's value)

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for saving (hyp.yaml, checkpoints); tuples become lists."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tfl_terms"] = list(self.tfl_terms)
        if d["anchors"] is None:
            del d["anchors"]
        return d

    def get(self, key: str, default: Any = None) -> Any:
        """dict-style access so YOLOv5-style code (``hyp.get('label_smoothing', 0.0)``) keeps working."""
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        if key not in _FIELD_TYPES:
            raise KeyError(key)
        return getattr(self, key)

    def replace(self, **changes: Any) -> Hyp:
        """A new Hyp with ``changes`` applied and validated (the original is unchanged)."""
        return load_hyp({**self.to_dict(), **changes})


_FIELD_TYPES = {f.name: f for f in fields(Hyp)}
_OPTIONAL = {"anchors", "label_smoothing", "fl_alpha", "tfl", "tfl_k", "tfl_s", "tfl_piecewise", "tfl_terms",
             "tfl_norm", "box_loss", "focal_eiou_gamma", "focal_l1_beta", "nwd_c"}
REQUIRED_KEYS = tuple(k for k in _FIELD_TYPES if k not in _OPTIONAL)
_BOOLS = {"tfl", "tfl_piecewise"}
_STRINGS = {"tfl_norm", "box_loss"}


class HypError(ValueError):
    """A hyperparameter file or override is invalid; the message names the source and key."""


def _validate(h: Hyp) -> None:
    def fail(key: str, why: str) -> None:
        raise HypError(f"hyperparameter '{key}' = {getattr(h, key)!r}: {why}")

    for name in _FIELD_TYPES:
        v = getattr(h, name)
        if name in _BOOLS or name in _STRINGS or name in ("tfl_terms", "anchors"):
            continue
        if not isinstance(v, float) or not math.isfinite(v):
            fail(name, "must be a finite number")
    for name in ("lr0", "lrf", "box", "cls", "obj", "cls_pw", "obj_pw", "anchor_t", "fl_gamma", "weight_decay",
                 "warmup_epochs", "label_smoothing", "tfl_k", "focal_eiou_gamma", "mosaic", "mixup"):
        if getattr(h, name) < 0:
            fail(name, "must be >= 0")
    for name in ("flipud", "fliplr", "mosaic", "mixup", "copy_paste", "label_smoothing", "fl_alpha"):
        if not 0 <= getattr(h, name) <= 1:
            fail(name, "must be in [0, 1]")
    if h.tfl_s <= 0:
        fail("tfl_s", "the tiny/big area S must be > 0 (input px^2)")
    if h.anchor_t <= 1:
        fail("anchor_t", "must be > 1 (a ratio threshold)")
    if h.nwd_c <= 0:
        fail("nwd_c", "must be > 0 (input pixels)")
    if not 1 / math.e - 1e-9 <= h.focal_l1_beta <= 1:
        fail("focal_l1_beta", "must be in [1/e, 1]")
    bad = [t for t in h.tfl_terms if t not in TFL_TERMS]
    if bad or not h.tfl_terms:
        fail("tfl_terms", f"unknown term(s) {bad}; choose from {list(TFL_TERMS)}" if bad else "must not be empty")
    if h.tfl_norm not in TFL_NORMS:
        fail("tfl_norm", f"choose from {list(TFL_NORMS)}")
    from utils.box_losses import BOX_LOSSES  # late import: box_losses does not depend on hyp

    if h.box_loss not in BOX_LOSSES:
        fail("box_loss", f"unknown box loss; choose from {sorted(BOX_LOSSES)}")
    if h.anchors is not None and (not isinstance(h.anchors, float) or h.anchors < 1):
        fail("anchors", "anchors per level must be a number >= 1")


def _coerce(key: str, value: Any, source: str) -> Any:
    """Coerce a YAML value to the declared type of ``key``; raise HypError naming ``source`` and the key."""
    where = f"{source}: hyperparameter '{key}'"
    if key in _BOOLS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "yes", "no", "1", "0"):
            return value.lower() in ("true", "on", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise HypError(f"{where} must be true or false, got {value!r}")
    if key in _STRINGS:
        if not isinstance(value, str):
            raise HypError(f"{where} must be a string, got {value!r}")
        return value.lower()
    if key == "tfl_terms":
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(t, str) for t in items):
            raise HypError(f"{where} must be a list of terms from {list(TFL_TERMS)}, got {value!r}")
        return tuple(items)
    if key == "anchors" and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HypError(f"{where} must be a number, got {value!r}")
    return float(value)


def load_hyp(source: str | Path | dict | Hyp | None = None, overrides: dict | list[str] | None = None) -> Hyp:
    """Load and validate hyperparameters.

    Args:
        source: a YAML path (or a bare name found in ``hyp/``), a dict (e.g. a checkpoint's), a Hyp, or None for
            YOLOv5's scratch-low defaults.
        overrides: ``{key: value}`` or ``["key=value", ...]`` (command line ``--hyp-set``); they win over the file.
    Raises:
        HypError: unknown or missing key, wrong type or out-of-range value; the message names file and key.
    """
    if isinstance(source, Hyp):
        source = source.to_dict()
    if source is None:
        name, data, strict = "<defaults>", {}, False
    elif isinstance(source, dict):
        name, data, strict = "<dict>", dict(source), False
    else:
        path = Path(source)
        if not path.exists() and (HYP_DIR / path.name).exists():
            path = HYP_DIR / path.name
        if not path.is_file():
            raise HypError(f"hyperparameter file not found: {source}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise HypError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(data, dict):
            raise HypError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
        name, strict = str(path), True
    unknown = [k for k in data if k not in _FIELD_TYPES]
    if unknown:
        raise HypError(f"{name}: unknown hyperparameter(s) {unknown}; valid keys are {sorted(_FIELD_TYPES)}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if strict and missing:
        raise HypError(f"{name}: missing hyperparameter(s) {missing}")
    values = {k: _coerce(k, v, name) for k, v in data.items()}
    for k, v in parse_overrides(overrides).items():
        if k not in _FIELD_TYPES:
            raise HypError(f"override: unknown hyperparameter '{k}'; valid keys are {sorted(_FIELD_TYPES)}")
        values[k] = _coerce(k, v, "override")
    try:
        return Hyp(**values)
    except HypError as e:
        raise HypError(f"{name}: {e}") from None


def parse_overrides(overrides: dict | list[str] | None) -> dict[str, Any]:
    """``["tfl_k=3", "tfl_terms=[box,cls]"]`` -> ``{"tfl_k": 3, "tfl_terms": ["box", "cls"]}`` (YAML-typed values)."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out = {}
    for item in overrides:
        if "=" not in item:
            raise HypError(f"override {item!r}: expected key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise HypError(f"override {item!r}: value is not valid YAML ({e})") from e
    return out


def hyp_from_model_or_dict(hyp: Hyp | dict | None) -> Hyp:
    """Accept a Hyp, a YOLOv5-style dict (``model.hyp``) or None (defaults)."""
    return hyp if isinstance(hyp, Hyp) else load_hyp(hyp)


__all__ = ["Hyp", "HypError", "load_hyp", "parse_overrides", "hyp_from_model_or_dict", "REQUIRED_KEYS",
           "TFL_TERMS", "TFL_NORMS"]
