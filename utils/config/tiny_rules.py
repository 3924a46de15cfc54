"""The rule table of ``--tiny auto`` (``hyp/tiny_auto.yaml``): YAML -> typed, validated, frozen ``TinyRules``.

The file declares, once, what the tiny-object evidence says: per option its effect in tiny AP50 points, its
inference cost as a ratio to the baseline, and the source (study row or earlier experiment) it comes from; and the
thresholds of the choice (what share of tiny objects makes data "tiny", the smallest effect worth choosing, when a
P2 level is considered). Options: ``scale_<x>`` rows (input scale ``scale``), ``p2``, ``pos_weight`` (``factor``
multiplies the box gain and ``obj_pw``), ``copy_paste`` (``hyp`` overrides) and, optionally, ``tfl`` (``hyp``
overrides that turn Tiny Focal Loss on; measured ``over`` the option it adds to). The choice itself is
``utils.advise.choose``. Every key is checked on load: an unknown, missing or ill-typed key raises
``TinyRulesError`` naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.config.hyp import HYP_DIR, HypError, load_hyp, read_config_yaml
from utils.errors import UserError

DEFAULT_RULES = HYP_DIR / "tiny_auto.yaml"
TOP_KEYS = {"tiny_side": "input px", "min_tiny_share": "share", "min_effect": "points", "p2_below_match": "share"}
FIXED_OPTIONS = ("p2", "pos_weight", "copy_paste")
OPTIONAL = ("tfl",)  # may be absent: never chosen then
COMMON_KEYS = ("row", "effect", "cost", "source", "n", "p", "over")
OWN_KEYS = {"scale": ("scale",), "p2": (), "pos_weight": ("factor",), "copy_paste": ("hyp",), "tfl": ("hyp",)}


class TinyRulesError(UserError):
    """The rule file of --tiny auto is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Option:
    """One option of the table. ``row``: the evidence in a few words (printed), ``source``: in full; ``effect``:
    tiny AP50 points over ``over`` (None: not measured, never chosen); ``cost``: inference time / the baseline's;
    ``n`` runs and ``p`` (paired test) where known; ``scale``: input scale (scale rows); ``factor``: box gain and
    obj_pw multiplier (pos_weight); ``hyp``: overrides (copy_paste, tfl)."""

    name: str
    row: str
    effect: float | None
    cost: float
    source: str
    n: int | None = None
    p: float | None = None
    over: str = "baseline"
    scale: float | None = None
    factor: float | None = None
    hyp: dict[str, Any] = field(default_factory=dict)

    def evidence(self) -> str:
        """One phrase: the measured effect, its statistics, its cost and its source."""
        if self.effect is None:
            return f"effect not measured ({self.row}); cost {self.cost:.2f}x"
        stats = ", ".join(s for s in (f"n {self.n}" if self.n else "", f"p {self.p:g}" if self.p is not None
                                      else "") if s)
        return (f"{self.effect:+.1f} pt tiny AP50 over {self.over}{f' ({stats})' if stats else ''} at "
                f"{self.cost:.2f}x inference; {self.row}")


@dataclass(frozen=True)
class TinyRules:
    """The whole table: thresholds (see ``hyp/tiny_auto.yaml``) and options by name."""

    source: str
    tiny_side: float
    min_tiny_share: float
    min_effect: float
    p2_below_match: float
    options: dict[str, Option]

    @property
    def scales(self) -> list[Option]:
        """The input-scale options, smallest scale first."""
        return sorted((o for o in self.options.values() if o.scale is not None), key=lambda o: o.scale)


def _number(v: Any, where: str, lo: float = 0.0, hi: float = math.inf, open_lo: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise TinyRulesError(f"{where} must be a number, got {v!r}")
    if (v <= lo if open_lo else v < lo) or v > hi:
        raise TinyRulesError(f"{where} = {v!r} must be in {'(' if open_lo else '['}{lo:g}, {hi:g}]")
    return float(v)


def _kind(name: str) -> str:
    return "scale" if name.startswith("scale_") else name


def _option(name: str, row: Any, src: str) -> Option:
    where = f"{src}: options.{name}"
    if not isinstance(row, dict):
        raise TinyRulesError(f"{where} must be a mapping of key: value, got {row!r}")
    kind = _kind(name)
    allowed = (*COMMON_KEYS, *OWN_KEYS[kind])
    unknown = [k for k in row if k not in allowed]
    if unknown:
        raise TinyRulesError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(allowed)})")
    required = ("row", "effect", "cost", "source", *OWN_KEYS[kind])
    missing = [k for k in required if k not in row]
    if missing:
        raise TinyRulesError(f"{where}: missing key '{missing[0]}'")
    for k in ("row", "source"):
        if not isinstance(row[k], str) or not row[k].strip():
            raise TinyRulesError(f"{where}.{k} must say where the numbers come from, got {row[k]!r}")
    over = row.get("over", "baseline")
    if not (over in ("baseline", *FIXED_OPTIONS, *OPTIONAL) or str(over).startswith("scale_")):
        raise TinyRulesError(f"{where}.over = {over!r}: must be 'baseline', a scale_<x> row or one of "
                             f"{list(FIXED_OPTIONS + OPTIONAL)}")
    n = row.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise TinyRulesError(f"{where}.n must be a whole number of runs >= 1, got {n!r}")
    hyp = row.get("hyp", {})
    if kind in ("copy_paste", "tfl"):
        if not isinstance(hyp, dict) or not hyp:
            raise TinyRulesError(f"{where}.hyp must be a mapping of hyperparameter: value")
        try:
            load_hyp(None, hyp)  # the same declarations as any hyp file
        except HypError as e:
            raise TinyRulesError(f"{where}.hyp: {e}") from None
    return Option(
        name=name, row=row["row"].strip(), source=" ".join(row["source"].split()), over=over, n=n, hyp=dict(hyp),
        effect=None if row["effect"] is None else _number(row["effect"], f"{where}.effect", lo=-100, hi=100),
        cost=_number(row["cost"], f"{where}.cost", open_lo=True),
        p=None if row.get("p") is None else _number(row["p"], f"{where}.p", hi=1),
        scale=_number(row["scale"], f"{where}.scale", lo=1, open_lo=True) if kind == "scale" else None,
        factor=_number(row["factor"], f"{where}.factor", open_lo=True) if kind == "pos_weight" else None)


def load_tiny_rules(source: str | Path | dict | None = None) -> TinyRules:
    """Load and check a rule table: a YAML path (a bare name is looked up in ``hyp/``), a dict, or None for
    ``hyp/tiny_auto.yaml``. Raises TinyRulesError naming the file and the key."""
    if isinstance(source, dict):
        src, data = "<dict>", source
    else:
        path, data = read_config_yaml(source or DEFAULT_RULES, TinyRulesError, "rule file")
        src = str(path)
    if not isinstance(data, dict):
        raise TinyRulesError(f"{src}: expected a mapping of key: value, got {type(data).__name__}")
    unknown = [k for k in data if k not in (*TOP_KEYS, "options")]
    if unknown:
        raise TinyRulesError(f"{src}: unknown key '{unknown[0]}' (known: {', '.join([*TOP_KEYS, 'options'])})")
    missing = [k for k in (*TOP_KEYS, "options") if k not in data]
    if missing:
        raise TinyRulesError(f"{src}: missing key '{missing[0]}'")
    rows = data["options"]
    if not isinstance(rows, dict):
        raise TinyRulesError(f"{src}: options must be a mapping of option name: row")
    bad = [k for k in rows if not (str(k).startswith("scale_") or k in FIXED_OPTIONS + OPTIONAL)]
    if bad:
        raise TinyRulesError(f"{src}: unknown key 'options.{bad[0]}' (known: scale_<x>, "
                             f"{', '.join(FIXED_OPTIONS + OPTIONAL)})")
    absent = [k for k in FIXED_OPTIONS if k not in rows]
    if absent:
        raise TinyRulesError(f"{src}: missing key 'options.{absent[0]}'")
    shares = {k: _number(data[k], f"{src}: {k}", hi=1 if TOP_KEYS[k] == "share" else math.inf,
                         open_lo=k == "tiny_side") for k in TOP_KEYS}
    return TinyRules(source=src, options={str(k): _option(str(k), v, src) for k, v in rows.items()}, **shares)


__all__ = ["DEFAULT_RULES", "Option", "TinyRules", "TinyRulesError", "load_tiny_rules"]
