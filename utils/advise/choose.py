"""The choice of ``--tiny auto``: from the training labels' statistics and the rule table (``hyp/tiny_auto.yaml``,
``utils.config.tiny_rules``) to an input scale, P2 or not, the positive weight and small-object copy-paste.

A pure function of its inputs: no file, no model. The order, and why:
1. Only data like the evidence's (at least ``min_tiny_share`` of the objects tiny at the training size) changes
   anything: every effect in the table was measured on such data.
2. Input scale first, the largest measured effect whose cost fits the cap (a scale s costs ~s^2; a size is rounded
   up to the model's stride, and its cost with it). An unmeasured option, or one under ``min_effect``, is never
   chosen.
3. P2 only where the stride-8 level cannot match most tiny objects at the chosen size (under ``p2_below_match``),
   and only with a measured effect and within the cap together with the scale.
4. Tiny Focal Loss (only when the rule file has a ``tfl`` row): chosen on its measured effect over the option it was
   measured on top of (``over``), and only when that option is chosen too.
5. The positive weight (box gain and obj_pw times ``factor``; not with TFL, which already weighs the positives
   more) and copy-paste cost no inference time: chosen on their measured effect, unless the user set those
   hyperparameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from utils.advise.label_stats import LabelStats
from utils.config.hyp import Hyp
from utils.config.tiny_rules import Option, TinyRules

PREFIX = "tiny auto: "


@dataclass(frozen=True)
class Choice:
    """One decision: ``option`` (what), ``value`` (what was chosen), ``reason`` (from the labels), ``evidence``
    (the measured effect behind it, from the rule table) and that row's full ``source``."""

    option: str
    value: str
    chosen: bool
    reason: str
    evidence: str = ""
    source: str = ""

    def line(self) -> str:
        """The one line printed for this choice."""
        return f"{PREFIX}{self.option}: {self.value} - {self.reason}" + (f" [{self.evidence}]" if self.evidence else "")


@dataclass(frozen=True)
class Advice:
    """What ``--tiny auto`` chose. ``imgsz``: training and validation size (input px); ``cfg``: the P2 model YAML
    or None (unchanged); ``hyp``: hyperparameter overrides; ``cost``: expected inference time / the baseline's."""

    base_imgsz: int
    imgsz: int
    cfg: str | None
    hyp: dict[str, Any]
    cost: float
    max_cost: float | None
    choices: tuple[Choice, ...]
    stats: LabelStats
    rules: str
    stats_at_size: dict[int, LabelStats] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.imgsz != self.base_imgsz or self.cfg is not None or bool(self.hyp)

    def lines(self) -> list[str]:
        """The label statistics, then one line per choice."""
        return [f"{PREFIX}labels: {self.stats.summary()}", *(c.line() for c in self.choices)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tiny_auto.json): the settings, each choice with its reason and evidence, the statistics."""
        return {"settings": {"imgsz": self.imgsz, "cfg": self.cfg, "hyp": self.hyp}, "base_imgsz": self.base_imgsz,
                "cost": self.cost, "max_cost": self.max_cost, "rules": self.rules,
                "choices": [asdict(c) for c in self.choices], "labels": self.stats.to_dict(),
                "labels_at_size": {str(k): v.to_dict() for k, v in self.stats_at_size.items()}}


def scaled_size(imgsz: int, scale: float, gs: int = 32) -> int:
    """``imgsz * scale`` rounded up to a multiple of the model's largest stride ``gs`` (input px)."""
    return math.ceil(imgsz * scale / gs - 1e-9) * gs


def sizes_needed(imgsz: int, rules: TinyRules, gs: int = 32) -> list[int]:
    """The input sizes whose label statistics :func:`choose` reads: ``imgsz`` and each scale option's size."""
    return sorted({imgsz, *(scaled_size(imgsz, o.scale, gs) for o in rules.scales)})


def _usable(o: Option, rules: TinyRules) -> str:
    """Why a measured option is not worth choosing ('' when it is)."""
    if o.effect is None:
        return "effect not measured on a trained model"
    if o.effect < rules.min_effect:
        return f"its measured gain {o.effect:+.1f} pt is under the {rules.min_effect:g} pt bar"
    return ""


def _cap(cost: float, max_cost: float | None) -> str:
    return f"cost {cost:.2f}x is over --tiny-max-cost {max_cost:g}" if max_cost is not None and cost > max_cost else ""


def _hyp_choice(label: str, o: Option, why: str, overrides: dict[str, Any], reason: str) -> Choice:
    """An option made of hyperparameter overrides (``o.hyp``): not chosen with ``why``, else its overrides are added
    to ``overrides``."""
    if why:
        return Choice(label, "unchanged", False, why, o.evidence(), o.source)
    overrides.update(o.hyp)
    return Choice(label, ", ".join(f"{k} {v}" for k, v in o.hyp.items()), True, reason, o.evidence(), o.source)


def choose(stats: dict[int, LabelStats], imgsz: int, rules: TinyRules, hyp: Hyp, max_cost: float | None = None,
           gs: int = 32, p2_cfg: str | None = None, no_p2: str = "", user_keys: frozenset[str] = frozenset()
           ) -> Advice:
    """Choose the tiny-object options (module docstring).

    Args:
        stats: {input size px: LabelStats} at ``imgsz`` and at every size of :func:`sizes_needed`.
        imgsz: the training size asked for (input px, a multiple of ``gs``).
        rules: the rule table; hyp: the run's hyperparameters (the positive weight multiplies its box and obj_pw).
        max_cost: cap on the expected inference time / the baseline's (None: no cap).
        p2_cfg: the model's P2 variant (YAML name), or None with ``no_p2`` saying why there is none.
        user_keys: hyperparameters the user set on the command line; their options are left alone.
    """
    base = stats[imgsz]
    choices: list[Choice] = []
    mk = dict(base_imgsz=imgsz, max_cost=max_cost, stats=base, rules=rules.source,
              stats_at_size={k: v for k, v in stats.items() if k != imgsz})
    if base.n_objects == 0 or base.tiny_share < rules.min_tiny_share:
        why = (f"{base.tiny_share:.0%} of the {base.n_objects} training objects are under {rules.tiny_side:g} px at "
               f"{imgsz} px; the rules act from {rules.min_tiny_share:.0%} (the evidence is from tiny-object data)")
        for option in ("input scale", "P2 model", "positive weight", "copy-paste"):
            choices.append(Choice(option, "unchanged", False, why))
        return Advice(imgsz=imgsz, cfg=None, hyp={}, cost=1.0, choices=tuple(choices), **mk)

    # 1. input scale: the largest measured effect within the cap
    best: tuple[Option, int, float] | None = None
    skipped = []
    for o in rules.scales:
        size = scaled_size(imgsz, o.scale, gs)
        cost = o.cost * (size / (imgsz * o.scale)) ** 2  # rounding up to the stride costs ~s^2 too
        why = _usable(o, rules) or _cap(cost, max_cost)
        if why:
            skipped.append(f"{o.scale:g}x: {why}")
        elif best is None or o.effect > best[0].effect or (o.effect == best[0].effect and cost < best[2]):
            best = (o, size, cost)
    under = f"{base.tiny_share:.0%} of the objects are under {rules.tiny_side:g} px at {imgsz} px"
    if best:
        o, size, cost = best
        reason = f"{under}; objects grow with the input" + (f" (not {'; '.join(skipped)})" if skipped else "")
        choices.append(Choice("input scale", f"{size / imgsz:g}x ({size} px)", True, reason, o.evidence(), o.source))
    else:
        size, cost = imgsz, 1.0
        choices.append(Choice("input scale", f"1x ({imgsz} px)", False, f"{under}, but " + "; ".join(
            skipped or ["no scale option in the rules"]),
            "; ".join(o.evidence() for o in rules.scales if o.effect is not None),
            "; ".join(o.source for o in rules.scales)))

    # 2. P2: only where stride 8 cannot match most tiny objects at the chosen size
    at, p2 = stats[size], rules.options["p2"]
    m8, m4 = at.tiny_match.get(8, 0.0), at.tiny_match.get(4, 0.0)
    matched = f"at {size} px stride 8 can match {m8:.0%} of the tiny objects (stride 4: {m4:.0%})"
    if m8 >= rules.p2_below_match:
        why = f"{matched}; P2 only under {rules.p2_below_match:.0%}"
    elif p2_cfg is None:
        why = f"{matched}, but {no_p2 or 'the model has no P2 variant'}"
    else:
        why = _usable(p2, rules) or _cap(cost * p2.cost, max_cost)
        why = f"{matched}, but {why}" if why else ""
    if why:
        choices.append(Choice("P2 model", "no", False, why, p2.evidence(), p2.source))
    else:
        cost *= p2.cost
        choices.append(Choice("P2 model", f"yes ({p2_cfg})", True, matched, p2.evidence(), p2.source))

    # 3-5. options without inference cost
    overrides: dict[str, Any] = {}
    tfl = rules.options.get("tfl")
    if tfl is not None:
        chosen_now = {"baseline"} | ({best[0].name} if best else set()) | (
            {"p2"} if any(c.chosen and c.option == "P2 model" for c in choices) else set())
        why = ("TFL set on the command line" if user_keys & set(tfl.hyp) else "") or (
            "already on in the hyp file" if hyp.tfl else "") or _usable(tfl, rules) or (
            f"measured only on top of {tfl.over}, which is not chosen" if tfl.over not in chosen_now else "")
        choices.append(_hyp_choice("Tiny Focal Loss", tfl, why, overrides,
                                   f"{under}; tiny targets weigh more in every loss term"))
    pw = rules.options["pos_weight"]
    why = ("box / obj_pw set on the command line" if user_keys & {"box", "obj_pw"} else "") or (
        "Tiny Focal Loss is on: it already weighs the positives more" if hyp.tfl or overrides.get("tfl") else ""
    ) or _usable(pw, rules)
    if why:
        choices.append(Choice("positive weight", "unchanged", False, why, pw.evidence(), pw.source))
    else:
        overrides.update(box=hyp.box * pw.factor, obj_pw=hyp.obj_pw * pw.factor)
        at_cost = " (the best method at the baseline's inference cost)" if max_cost is not None and max_cost <= 1 \
            else ""
        choices.append(Choice("positive weight", f"box {hyp.box:g} -> {overrides['box']:.4g}, obj_pw {hyp.obj_pw:g} "
                              f"-> {overrides['obj_pw']:.4g}", True, f"{under}; more weight on the few positive "
                              f"cells of tiny objects{at_cost}", pw.evidence(), pw.source))
    cp = rules.options["copy_paste"]
    why = ("copy-paste set on the command line" if user_keys & set(cp.hyp) else "") or (
        "already on in the hyp file" if hyp.small_paste > 0 else "") or _usable(cp, rules)
    choices.append(_hyp_choice("copy-paste", cp, why, overrides, f"{under}; more tiny positives per image"))
    return Advice(imgsz=size, cfg=p2_cfg if any(c.chosen and c.option == "P2 model" for c in choices) else None,
                  hyp=overrides, cost=cost, choices=tuple(choices), **mk)


__all__ = ["PREFIX", "Advice", "Choice", "choose", "scaled_size", "sizes_needed"]
