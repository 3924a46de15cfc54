"""Variants of a comparison (experiments/compare.py): named hyp files with overrides, a model YAML and train.py
flags of their own, the ``name[key=value,...]`` syntax with short keys, and sweeps that add one variant per value.
Pure: resolving a variant loads and validates its hyperparameters, nothing is trained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from utils.config.hyp import HYP_DIR, HypError, load_hyp
from utils.errors import UserError


class CompareError(UserError):
    """Bad variants, sweeps or arguments, or a run folder that holds a different configuration."""


@dataclass(frozen=True)
class VariantDef:
    hyp: str  # file in hyp/
    overrides: tuple[str, ...] = ()  # key=value hyperparameter overrides
    doc: str = ""
    cfg: str = ""  # model YAML for this variant ('' = --cfg)
    train_args: tuple[str, ...] = ()  # train.py flags of this variant (e.g. --multi-scale)


VARIANTS: dict[str, VariantDef] = {
    "baseline": VariantDef("hyp.scratch-low.yaml", doc="YOLOv5 v7.0 scratch-low: CIoU, no TFL"),
    "tfl": VariantDef("hyp.tfl.yaml", doc="Tiny Focal Loss, continuous (k 1.6, S 32²)"),
    "tfl-piecewise": VariantDef("hyp.tfl-piecewise.yaml", doc="Tiny Focal Loss, piecewise (weight 1 above S)"),
    "focal-eiou": VariantDef("hyp.focal-eiou.yaml", doc="Focal-EIoU box loss (gamma 0.5), no TFL"),
    "tfl-focal-eiou": VariantDef("hyp.tfl-focal-eiou.yaml", doc="TFL + Focal-EIoU"),
    "eiou": VariantDef("hyp.scratch-low.yaml", ("box_loss=eiou",), doc="EIoU box loss, no TFL"),
    "min-pos": VariantDef("hyp.scratch-low.yaml", ("assign_min_pos=3",),
                          doc="YOLOv5 matching + 3 NWD-best anchors for ground truths no anchor matches"),
    "nwd-assign": VariantDef("hyp.scratch-low.yaml", ("assign=nwd",), doc="NWD top-k assignment (Xu et al. 2022)"),
    "paste": VariantDef("hyp.scratch-low.yaml", ("small_paste=0.5",), doc="small-object copy-paste in the mosaic"),
    "p2": VariantDef("hyp.scratch-low.yaml", cfg="yolov5n-p2.yaml", doc="P2 head (stride 4)"),
    "multiscale": VariantDef("hyp.scratch-low.yaml", train_args=("--multi-scale",),
                             doc="multi-scale training (0.5-1.5 x imgsz per batch)"),
    "tiny": VariantDef("hyp.tiny.yaml", doc="the recommended tiny-object recipe (hyp/hyp.tiny.yaml)"),
}
ALIASES = {"k": "tfl_k", "s": "tfl_s", "piecewise": "tfl_piecewise", "norm": "tfl_norm", "terms": "tfl_terms",
           "gamma": "focal_eiou_gamma", "loss": "box_loss", "minpos": "assign_min_pos", "topk": "assign_topk",
           "paste_p": "small_paste", "paste_n": "small_paste_n", "paste_area": "small_paste_area"}
SHORT = {v: k for k, v in ALIASES.items()}  # display names in sweeps: tfl_k -> k
@dataclass(frozen=True)
class Variant:
    name: str  # display name, e.g. 'tfl[k=0.6]'
    hyp: str  # file in hyp/
    overrides: tuple[str, ...]  # full-key 'key=value' overrides on top of the file
    cfg: str = ""  # model YAML ('' = the runner's --cfg)
    train_args: tuple[str, ...] = ()  # train.py flags of this variant

    @property
    def slug(self) -> str:
        """Folder name: 'tfl[k=0.6]' -> 'tfl_k=0.6'."""
        s = "".join(c if c.isalnum() or c in "._=-" else "_" for c in self.name)
        return s.strip("_") or "variant"


def split_top(s: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets: 'k=3,terms=[box,obj]' -> ['k=3', 'terms=[box,obj]']."""
    parts, depth, cur = [], 0, ""
    for c in s:
        depth += (c in "[(") - (c in "])")
        if c == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += c
    return [p.strip() for p in parts + [cur] if p.strip()]


def _full_key(item: str, where: str) -> tuple[str, str]:
    if "=" not in item:
        raise CompareError(f"{where}: expected key=value, got {item!r}")
    k, v = (x.strip() for x in item.split("=", 1))
    return ALIASES.get(k, k), v


def parse_variant(spec: str) -> Variant:
    """'tfl' or 'tfl[k=0.6,piecewise=true]' -> Variant; unknown names raise CompareError listing the valid ones."""
    base, _, rest = spec.partition("[")
    base = base.strip()
    if base not in VARIANTS:
        raise CompareError(f"unknown variant {base!r} (in {spec!r}); valid variants: {', '.join(VARIANTS)} "
                           "(optionally with overrides, e.g. tfl[k=0.6])")
    if rest and not rest.endswith("]"):
        raise CompareError(f"variant {spec!r}: overrides must be in brackets, e.g. tfl[k=0.6]")
    items = [_full_key(x, f"variant {spec!r}") for x in split_top(rest[:-1])] if rest else []
    d = VARIANTS[base]
    return Variant(spec.strip(), d.hyp, d.overrides + tuple(f"{k}={v}" for k, v in items), d.cfg, d.train_args)


def resolve_hyp(v: Variant, common: tuple[str, ...] = ()) -> dict[str, Any]:
    """The variant's validated hyperparameters as a plain dict (CompareError naming the variant when invalid)."""
    try:
        return load_hyp(HYP_DIR / v.hyp, [*common, *v.overrides]).to_dict()
    except HypError as e:
        raise CompareError(f"variant {v.name!r}: {e}") from e


def _sweep_applies(key: str, hyp: dict[str, Any]) -> bool:
    """tfl_* keys sweep the TFL variants, focal_eiou_*/nwd_c the variants using that loss, other keys every one."""
    if key.startswith("tfl_"):
        return bool(hyp["tfl"])
    if key.startswith("focal_eiou"):
        return str(hyp["box_loss"]).startswith("focal_eiou")
    if key == "nwd_c":
        return hyp["box_loss"] == "nwd"
    return True


def expand_sweeps(variants: list[Variant], sweeps: list[str], common: tuple[str, ...] = ()) -> list[Variant]:
    """Add, after each variant a sweep applies to, one variant per swept value (values equal to the variant's own
    are skipped). Several sweeps add their variants one key at a time (no cartesian product)."""
    out = []
    for v in variants:
        out.append(v)
        hyp = resolve_hyp(v, common)
        for sweep in sweeps:
            key, values = _full_key(sweep, f"--sweep {sweep!r}")
            vals = split_top(values)
            if not vals:
                raise CompareError(f"--sweep {sweep!r}: no values (expected key=v1,v2,...)")
            if not _sweep_applies(key, hyp):
                continue
            for val in vals:
                inner = v.name[v.name.index("[") + 1:-1] + "," if "[" in v.name else ""
                nv = Variant(f"{v.name.split('[')[0]}[{inner}{SHORT.get(key, key)}={val}]", v.hyp,
                             v.overrides + (f"{key}={val}",), v.cfg, v.train_args)
                if resolve_hyp(nv, common) != hyp:
                    out.append(nv)
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CompareError(f"variant(s) listed twice: {dup}")
    return out
