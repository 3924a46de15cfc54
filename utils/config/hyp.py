"""Training hyperparameters: YAML -> a typed, validated, immutable ``Hyp`` -> the code that needs it.

Every key is declared once, in its field below: default, range or choices, whether a file may omit it, and its
meaning. Loading, coercion, validation, the docs' table (docs/hyperparameters.md, ``python -m utils.config.hyp``) and
the command line's ``--hyp-set`` all derive from those declarations. YOLOv5 v7.0 hyp files load unchanged: its keys are
required (a missing one is an error naming it); ours default to "off" so that a plain YOLOv5 file gives YOLOv5's
numbers. Unknown keys are rejected by name. Derived values (e.g. the box gain scaled by the number of detection levels)
are computed where used, never written back.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from utils.errors import UserError

HYP_DIR = Path(__file__).resolve().parents[2] / "hyp"
TFL_TERMS = ("box", "obj", "cls")
TFL_NORMS = ("sum", "mean")
ASSIGNERS = ("ratio", "nwd")
PASTE_BLENDS = ("hard", "soft")


class HypError(UserError):
    """A hyperparameter file or override is invalid; the message names the source and key."""


@dataclass(frozen=True)
class Spec:
    """How one hyperparameter is checked. ``lo``/``hi`` bound numbers (``open_lo``: strictly above ``lo``);
    ``choices`` list the allowed strings (or list items); ``whole`` asks for a whole number; ``required``: a
    YOLOv5 key that every hyp file must give; ``unit`` is shown in tables and messages."""

    meaning: str
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    choices: tuple[str, ...] | None = None
    whole: bool = False
    required: bool = False
    unit: str = ""


def hp(default: Any, meaning: str, **spec: Any) -> Any:
    """Declare a hyperparameter: its default and its Spec, in one place."""
    return field(default=default, metadata={"spec": Spec(meaning, **spec)})


def yolo(default: Any, meaning: str, **spec: Any) -> Any:
    """A YOLOv5 v7.0 key: required in hyp files."""
    return hp(default, meaning, required=True, **spec)


def _box_loss_names() -> tuple[str, ...]:
    from utils.ops.box_losses import BOX_LOSSES  # late import: box_losses imports torch, hyp must stay light

    return tuple(sorted(BOX_LOSSES))


@dataclass(frozen=True)
class Hyp:
    # --- optimiser and schedule (YOLOv5 v7.0) ---
    lr0: float = yolo(0.01, "initial learning rate (SGD 1e-2, Adam 1e-3)", lo=0)
    lrf: float = yolo(0.01, "final learning rate as a fraction of lr0", lo=0)
    momentum: float = yolo(0.937, "SGD momentum / Adam beta1", lo=0, hi=1)
    weight_decay: float = yolo(0.0005, "weight decay of conv/linear weights", lo=0)
    warmup_epochs: float = yolo(3.0, "linear warmup length in epochs (fractions allowed)", lo=0)
    warmup_momentum: float = yolo(0.8, "momentum at the start of warmup", lo=0, hi=1)
    warmup_bias_lr: float = yolo(0.1, "bias learning rate at the start of warmup", lo=0)
    # --- loss gains and matching (YOLOv5 v7.0) ---
    box: float = yolo(0.05, "box loss gain (x 3 / detection levels where used)", lo=0)
    cls: float = yolo(0.5, "class loss gain (x nc / 80 x 3 / levels where used)", lo=0)
    cls_pw: float = yolo(1.0, "BCE positive weight of the class term", lo=0)
    obj: float = yolo(1.0, "objectness gain (x (imgsz / 640)^2 x 3 / levels where used)", lo=0)
    obj_pw: float = yolo(1.0, "BCE positive weight of objectness (weighs positive cells against negatives)", lo=0)
    iou_t: float = yolo(0.20, "unused by v7.0 training, kept for file compatibility", lo=0, hi=1)
    anchor_t: float = yolo(4.0, "largest target/anchor side ratio of a match", lo=1, open_lo=True)
    fl_gamma: float = yolo(0.0, "focal loss gamma of class/objectness (0 = plain BCE)", lo=0)
    # --- augmentation (YOLOv5 v7.0) ---
    hsv_h: float = yolo(0.015, "hue gain (fraction)", lo=0, hi=1)
    hsv_s: float = yolo(0.7, "saturation gain (fraction)", lo=0, hi=1)
    hsv_v: float = yolo(0.4, "value gain (fraction)", lo=0, hi=1)
    degrees: float = yolo(0.0, "rotation (+/- degrees)", lo=0, hi=180)
    translate: float = yolo(0.1, "translation (+/- fraction of the image)", lo=0, hi=1)
    scale: float = yolo(0.5, "scale gain (+/-)", lo=0)
    shear: float = yolo(0.0, "shear (+/- degrees)", lo=0, hi=180)
    perspective: float = yolo(0.0, "perspective (+/- fraction), 0 to 0.001", lo=0, hi=1)
    flipud: float = yolo(0.0, "probability of an up-down flip", lo=0, hi=1)
    fliplr: float = yolo(0.5, "probability of a left-right flip", lo=0, hi=1)
    mosaic: float = yolo(1.0, "probability of a 4-image mosaic", lo=0, hi=1)
    mixup: float = yolo(0.0, "probability of mixup", lo=0, hi=1)
    copy_paste: float = yolo(0.0, "segment copy-paste probability (YOLOv5's; needs segments, unused here)", lo=0, hi=1)
    # --- optional in YOLOv5 files ---
    anchors: float | None = hp(None, "anchors per output level; absent keeps the model YAML's anchors", lo=1)
    label_smoothing: float = hp(0.0, "class label smoothing epsilon (YOLOv5's --label-smoothing)", lo=0, hi=1)
    fl_alpha: float = hp(0.25, "focal loss alpha, used only when fl_gamma > 0", lo=0, hi=1)
    aug_min_side: float = hp(2.0, "after augmentation, boxes with a side <= this are dropped (YOLOv5's fixed 2; "
                             "0 keeps every visible box)", lo=0, unit="input px")
    # --- Tiny Focal Loss (ours; off by default so YOLOv5 numbers hold) ---
    tfl: bool = hp(False, "weight each target by w = exp(-k * area_px / S) + 1")
    tfl_k: float = hp(1.6, "TFL focusing coefficient k (0: weight 2 everywhere; large: weight 1)", lo=0)
    tfl_s: float = hp(1024.0, "TFL tiny/big dividing area S (COCO: 32 x 32)", lo=0, open_lo=True, unit="input px^2")
    tfl_piecewise: bool = hp(False, "TFL weight 1 for targets with area >= S")
    tfl_terms: tuple[str, ...] = hp(TFL_TERMS, "loss terms TFL weights", choices=TFL_TERMS)
    tfl_norm: str = hp("sum", "'sum': loss x weight (the paper); 'mean': weights / their batch mean",
                       choices=TFL_NORMS)
    # --- box-regression loss (ours; 'ciou' is YOLOv5's) ---
    box_loss: str = hp("ciou", "box loss (utils/ops/box_losses.py registry)", choices=())  # choices: the registry
    focal_eiou_gamma: float = hp(0.5, "gamma of Focal-EIoU (IoU^gamma x EIoU); the paper's best", lo=0)
    focal_l1_beta: float = hp(0.8, "beta of FocalL1; the paper's best", lo=1 / math.e, hi=1)
    nwd_c: float = hp(12.8, "NWD constant C (AI-TOD's value); NWD box loss and NWD assignment", lo=0, open_lo=True,
                      unit="input px")
    # --- tiny-object assignment (ours; off by default so YOLOv5's shape-ratio matching holds) ---
    assign: str = hp("ratio", "'ratio': YOLOv5 (side ratio < anchor_t per level); 'nwd': top-k anchors by NWD "
                     "(Xu et al. 2022)", choices=ASSIGNERS)
    assign_topk: float = hp(3.0, "'nwd': positives per ground truth, the k anchors (all levels) of highest NWD",
                            lo=1, whole=True)
    assign_min_pos: float = hp(0.0, "'ratio': a ground truth no anchor matches gets its k best anchors by NWD "
                               "(0 = off)", lo=0, whole=True)
    # --- small-object copy-paste inside the mosaic (ours; Kisantal et al. 2019; off by default) ---
    small_paste: float = hp(0.0, "probability that a mosaic gets small-object copy-paste", lo=0, hi=1)
    small_paste_n: float = hp(2.0, "copies pasted per small object", lo=0, whole=True)
    small_paste_area: float = hp(1024.0, "objects under this area (in the mosaic) are copied", lo=0, open_lo=True,
                                 unit="input px^2")
    small_paste_blend: str = hp("hard", "'hard': paste the box as is; 'soft': feathered (Gaussian) edges",
                                choices=PASTE_BLENDS)
    small_paste_pool: bool = hp(False, "also paste small objects cut from other images of the dataset")

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for saving (hyp.yaml, checkpoints); tuples become lists, an absent ``anchors`` is left out."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["tfl_terms"] = list(self.tfl_terms)
        if d["anchors"] is None:
            del d["anchors"]
        return d

    def get(self, key: str, default: Any = None) -> Any:
        """dict-style access so YOLOv5-style code (``hyp.get('label_smoothing', 0.0)``) keeps working."""
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        if key not in SPECS:
            raise KeyError(key)
        return getattr(self, key)

    def replace(self, **changes: Any) -> Hyp:
        """A new Hyp with ``changes`` applied and validated (the original is unchanged)."""
        return load_hyp(self.to_dict(), changes)


SPECS: dict[str, Spec] = {f.name: f.metadata["spec"] for f in fields(Hyp)}
_KINDS: dict[str, str] = {f.name: str(f.type).split(" |")[0].split("[")[0] for f in fields(Hyp)}  # float/bool/str/tuple
REQUIRED_KEYS = tuple(k for k, s in SPECS.items() if s.required)


def _choices(key: str) -> tuple[str, ...] | None:
    return _box_loss_names() if key == "box_loss" else SPECS[key].choices


def _check(key: str, v: Any) -> None:
    """Raise HypError naming ``key`` when ``v`` breaks its declaration."""
    s, kind = SPECS[key], _KINDS[key]

    def fail(why: str) -> None:
        raise HypError(f"hyperparameter '{key}' = {v!r}: {why}")

    if kind == "bool":
        if not isinstance(v, bool):
            fail("must be true or false")
        return
    if kind == "str":
        if v not in _choices(key):
            fail(f"{'unknown box loss; ' if key == 'box_loss' else ''}choose from {list(_choices(key))}")
        return
    if kind == "tuple":
        bad = [t for t in v if t not in s.choices]
        if bad or not v:
            fail(f"unknown term(s) {bad}; choose from {list(s.choices)}" if bad else "must not be empty")
        return
    if v is None and key == "anchors":
        return
    if isinstance(v, bool) or not isinstance(v, float) or not math.isfinite(v):
        fail("must be a finite number")
    below = s.lo is not None and (v <= s.lo if s.open_lo else v < s.lo)
    unit = f" ({s.unit})" if s.unit else ""
    if s.hi is not None and (below or v > s.hi):
        fail(f"must be in {'(' if s.open_lo else '['}{_fmt(s.lo)}, {_fmt(s.hi)}]{unit}")
    if below:
        fail(f"must be {'>' if s.open_lo else '>='} {_fmt(s.lo)}{unit}")
    if s.whole and v != int(v):
        fail("must be a whole number")


def _fmt(x: float | None) -> str:
    return "1/e" if x is not None and abs(x - 1 / math.e) < 1e-12 else f"{x:g}"


def coerce(key: str, value: Any, source: str) -> Any:
    """A YAML or Python value as the declared type of ``key`` (strings are parsed: '3', 'true', 'box,cls');
    HypError naming ``source`` and the key otherwise. Ranges are checked later, by the Hyp itself."""
    where, kind = f"{source}: hyperparameter '{key}'", _KINDS[key]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "yes", "no", "1", "0"):
            return value.lower() in ("true", "on", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise HypError(f"{where} must be true or false, got {value!r}")
    if kind == "str":
        if not isinstance(value, str):
            raise HypError(f"{where} must be a string, got {value!r}")
        return value.lower()
    if kind == "tuple":
        items = value.strip("[]").replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(t, str) for t in items):
            raise HypError(f"{where} must be a list of terms from {list(SPECS[key].choices)}, got {value!r}")
        return tuple(items)
    if key == "anchors" and (value is None or str(value).lower() in ("null", "none", "~", "")):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HypError(f"{where} must be a number, got {value!r}")
    return float(value)


def _validated(values: dict[str, Any], source_of: dict[str, str]) -> Hyp:
    """Hyp(**values); a range error names where its key came from (the file or the override)."""
    try:
        return Hyp(**values)
    except HypError as e:
        key = str(e).split("'")[1]
        raise HypError(f"{source_of.get(key, '<defaults>')}: {e}") from None


def load_hyp(source: str | Path | dict | Hyp | None = None, overrides: dict | list[str] | None = None) -> Hyp:
    """Load and validate hyperparameters.

    Args:
        source: a YAML path (or a bare name found in ``hyp/``), a dict (e.g. a checkpoint's), a Hyp, or None for
            YOLOv5's scratch-low defaults.
        overrides: ``{key: value}`` (typed values, e.g. from command-line flags) or ``["key=value", ...]``
            (``--hyp-set``); they win over the file.
    Raises:
        HypError: unknown or missing key, wrong type or out-of-range value; the message names the file (or
            'override') and the key.
    """
    if isinstance(source, Hyp):
        source = source.to_dict()
    if source is None:
        name, data, strict = "<defaults>", {}, False
    elif isinstance(source, dict):
        name, data, strict = "<dict>", dict(source), False
    else:
        name, data, strict = *_read_file(source), True
    unknown = [k for k in data if k not in SPECS]
    if unknown:
        raise HypError(f"{name}: unknown hyperparameter(s) {unknown}; valid keys are {sorted(SPECS)}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if strict and missing:
        raise HypError(f"{name}: missing hyperparameter(s) {missing}")
    values = {k: coerce(k, v, name) for k, v in data.items()}
    source_of = dict.fromkeys(values, name)
    for k, v in parse_overrides(overrides).items():
        values[k] = coerce(k, v, "override")
        source_of[k] = "override"
    return _validated(values, source_of)


def read_config_yaml(source: str | Path, error: type[UserError], what: str) -> tuple[Path, Any]:
    """Read a YAML file given by path, or by name from ``hyp/`` (hyp files, the --evolve space, the --tiny auto
    rules): ``(path, parsed content)``. ``error(...)`` with one line naming the file when it is missing or not
    valid YAML; the caller checks the content's shape."""
    path = Path(source)
    if not path.is_file() and (HYP_DIR / path.name).is_file():
        path = HYP_DIR / path.name
    if not path.is_file():
        raise error(f"{what} not found: {source}")
    try:
        return path, yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def _read_file(source: str | Path) -> tuple[str, dict]:
    path, data = read_config_yaml(source, HypError, "hyperparameter file")
    data = data or {}
    if not isinstance(data, dict):
        raise HypError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return str(path), data


def parse_overrides(overrides: dict | list[str] | None) -> dict[str, Any]:
    """``["tfl_k=3", "tfl_terms=[box,cls]"]`` -> ``{"tfl_k": "3", "tfl_terms": "[box,cls]"}``; a dict passes
    through. Values stay strings here and are parsed by ``coerce`` against the key's declared type; unknown keys
    raise HypError naming the override."""
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        out = dict(overrides)
    else:
        out = {}
        for item in overrides:
            if "=" not in item:
                raise HypError(f"override {item!r}: expected key=value")
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
    unknown = [k for k in out if k not in SPECS]
    if unknown:
        raise HypError(f"override: unknown hyperparameter '{unknown[0]}'; valid keys are {sorted(SPECS)}")
    return out


def hyp_from_model_or_dict(hyp: Hyp | dict | None) -> Hyp:
    """Accept a Hyp, a YOLOv5-style dict (``model.hyp``) or None (defaults)."""
    return hyp if isinstance(hyp, Hyp) else load_hyp(hyp)


def markdown_table() -> str:
    """The hyperparameter table of docs/hyperparameters.md, generated from the declarations."""
    rows = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Hyp):
        s, kind = SPECS[f.name], _KINDS[f.name]
        if kind == "bool":
            allowed = "true / false"
        elif kind in ("str", "tuple"):
            allowed = " / ".join(_choices(f.name))
        else:
            lo = "" if s.lo is None else f"{'>' if s.open_lo else '>='} {_fmt(s.lo)}"
            allowed = f"[{_fmt(s.lo)}, {_fmt(s.hi)}]" if s.hi is not None else lo
            allowed += ", whole" if s.whole else ""
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        req = " (required in hyp files)" if s.required else ""
        unit = f" ({s.unit})" if s.unit else ""
        rows.append(f"| `{f.name}` | `{default}` | {allowed}{unit} | {s.meaning}{req} |")
    return "\n".join(rows)


__all__ = ["Hyp", "HypError", "Spec", "SPECS", "load_hyp", "parse_overrides", "coerce", "hyp_from_model_or_dict",
           "markdown_table", "REQUIRED_KEYS", "TFL_TERMS", "TFL_NORMS", "ASSIGNERS", "PASTE_BLENDS"]

if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
