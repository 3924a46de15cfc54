"""AutoAnchor: how well the Detect anchors fit the label sizes (best possible recall), k-means + genetic evolution of
new anchors when they do not, and a per-size-bucket report (same maths and random streams as YOLOv5 v7.0).

Units: label sizes and anchors are in INPUT PIXELS (the image's long side scaled to ``imgsz``) everywhere here,
except ``Detect.anchors`` itself, which is in GRID CELLS (input pixels / stride of its level).

Metric (v7.0): for a target wh and an anchor k, r = wh / k and x = min over (w, h) of min(r, 1 / r); a target is
matchable by an anchor when x > 1 / thr (thr = hyp ``anchor_t``). BPR (best possible recall) is the fraction of
targets matchable by at least one anchor, AAT (anchors above threshold) the mean number of matchable anchors.

Randomness: ``seed=None`` draws from the global ``np.random`` and ``random`` streams exactly as v7.0 does (seed
them with ``utils.torch_utils`` seeding); an int seed uses private ``np.random.RandomState(seed)`` and
``random.Random(seed)`` streams, which give the same numbers as seeding the globals with that int.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.yolo import check_anchor_order
from utils.errors import UserError
from utils.eval.size_metrics import size_buckets

LOGGER = logging.getLogger(__name__)
PREFIX = "AutoAnchor: "
BPR_OK = 0.98  # v7.0: anchors are recomputed unless BPR > this
Rngs = tuple[Any, Any]  # (numpy RandomState-like, python Random-like)


def _rngs(seed: int | Rngs | None) -> Rngs:
    """(numpy stream, python stream): the globals for None, fresh private streams for an int, or the pair given."""
    if seed is None:
        return np.random, random  # the global streams v7.0 draws from (modules with the same methods)
    if isinstance(seed, tuple):
        return seed
    return np.random.RandomState(seed), random.Random(seed)


def _shapes_labels(data: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """(shapes (n, 2), labels) from a dataset (``.shapes``, ``.labels``) or a ``(shapes, labels)`` pair, checked."""
    if hasattr(data, "shapes") and hasattr(data, "labels"):
        shapes, labels = data.shapes, data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        shapes, labels = data
    else:
        raise TypeError(f"{PREFIX}expected a dataset with .shapes/.labels or a (shapes, labels) pair, got {type(data)}")
    shapes = np.asarray(shapes, dtype=np.float64)
    if shapes.ndim != 2 or shapes.shape[1] != 2 or len(shapes) != len(labels):
        raise ValueError(f"{PREFIX}shapes must be (n_images, 2) image (w, h) with one label array per image, got "
                         f"shapes {shapes.shape} and {len(labels)} label arrays")
    if len(shapes) and not (shapes > 0).all():
        raise ValueError(f"{PREFIX}image shapes must be positive, got {shapes[~(shapes > 0).all(1)][:3].tolist()}")
    out = []
    for i, lb in enumerate(labels):
        lb = np.asarray(lb, dtype=np.float64)
        lb = lb.reshape(0, 5) if lb.size == 0 else lb
        if lb.ndim != 2 or lb.shape[1] != 5:
            raise ValueError(f"{PREFIX}labels[{i}] must be (k, 5) [cls, x, y, w, h] normalised, got {lb.shape}")
        out.append(lb)
    return shapes, out


def label_wh_pixels(shapes: np.ndarray, labels: list[np.ndarray], imgsz: int = 640,
                    scale_jitter: tuple[float, float] | None = (0.9, 1.1),
                    seed: int | Rngs | None = None) -> np.ndarray:
    """Label sizes in input pixels at training size: (N, 2) float64 wh, all images' labels concatenated.

    shapes: (n, 2) image (w, h) in original pixels; labels: n arrays (k, 5) [cls, x, y, w, h] normalised. Each image's
    long side is scaled to ``imgsz``; ``scale_jitter`` (lo, hi) multiplies each image by one U(lo, hi) draw (v7.0's
    augment scale, drawn from the numpy stream of ``seed``), None for no jitter.
    """
    shapes, labels = _shapes_labels((shapes, labels))
    s = imgsz * shapes / shapes.max(1, keepdims=True) if len(shapes) else shapes
    if scale_jitter is not None:
        s = s * _rngs(seed)[0].uniform(scale_jitter[0], scale_jitter[1], size=(len(s), 1))
    if not len(s):
        return np.zeros((0, 2))
    return np.concatenate([lb[:, 3:5] * si for si, lb in zip(s, labels)])


def _ratio_metric(k: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    """(N, K) v7.0 ratio metric of targets wh (N, 2) against anchors k (K, 2), float32."""
    r = wh[:, None] / k[None]
    return torch.min(r, 1 / r).min(2)[0]


def anchor_metrics(anchors_px: np.ndarray | torch.Tensor, wh: np.ndarray | torch.Tensor,
                   thr: float = 4.0) -> tuple[float, float]:
    """(BPR, anchors per target) of anchors (K, 2) input pixels for targets wh (N, 2) input pixels, as v7.0
    computes them (float32). Empty wh gives (nan, nan)."""
    k = torch.as_tensor(np.asarray(anchors_px, dtype=np.float32)).view(-1, 2)
    wh = torch.as_tensor(np.asarray(wh, dtype=np.float32)).view(-1, 2)
    if not len(wh):
        return math.nan, math.nan
    x = _ratio_metric(k, wh)
    return float((x.max(1)[0] > 1 / thr).float().mean()), float((x > 1 / thr).float().sum(1).mean())


def kmean_anchors(data: Any, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000,
                  seed: int | Rngs | None = None) -> np.ndarray:
    """k-means then genetic evolution of ``n`` anchors for the labels of ``data`` (dataset or (shapes, labels)).

    Returns (n, 2) float32 anchors in input pixels, sorted by area. v7.0's algorithm: label wh at ``img_size`` (no
    jitter), targets with both sides < 2 px dropped; scipy k-means (30 iterations) on wh whitened by its std, or a
    random init when k-means cannot give n points; then ``gen`` generations of multiplicative mutations
    (probability 0.9 per value, sigma 0.1 * U(0, 1), factors clipped to [0.3, 3], anchors to >= 2 px), keeping a
    mutant when it raises the fitness mean(best * (best > 1 / thr)).
    """
    from scipy.cluster.vq import kmeans

    _check_thr(thr)
    nrng, prng = _rngs(seed)
    wh0 = label_wh_pixels(*_shapes_labels(data), imgsz=img_size, scale_jitter=None)
    if (wh0 < 3.0).any(1).sum():
        LOGGER.info(f"{PREFIX}{int((wh0 < 3.0).any(1).sum())} of {len(wh0)} labels are < 3 pixels in size")
    wh = wh0[(wh0 >= 2.0).any(1)].astype(np.float32)
    k = None
    if 0 < n <= len(wh):
        s = wh.std(0)
        try:  # v7.0 falls back on any k-means failure (e.g. a zero std gives non-finite points)
            k = kmeans(wh / s, n, iter=30, seed=None if nrng is np.random else nrng)[0] * s
        except Exception as e:
            LOGGER.info(f"{PREFIX}k-means failed: {e}")
        if k is not None and len(k) != n:  # too few distinct points
            k = None
    if k is None:
        LOGGER.warning(f"{PREFIX}k-means cannot place {n} anchors on {len(wh)} labels, random init instead")
        k = np.sort(nrng.rand(n * 2)).reshape(n, 2) * img_size

    def fitness(anchors: np.ndarray) -> torch.Tensor:
        # Elementwise float32 maths in numpy (bitwise equal to torch's, 10x less overhead), the mean in torch so
        # that its summation order, and so every keep/reject decision, is v7.0's.
        r = wh[:, None] / anchors.astype(np.float32)[None]
        best = np.minimum(r, 1 / r).min(2).max(1)
        return torch.from_numpy(best * (best > 1 / thr)).mean()

    k = k[np.argsort(k.prod(1))]
    f, sh, mp, sigma = fitness(k), k.shape, 0.9, 0.1
    for _ in range(gen):
        v = np.ones(sh)
        while (v == 1).all():  # mutate until something changes
            v = ((nrng.random(sh) < mp) * prng.random() * nrng.randn(*sh) * sigma + 1).clip(0.3, 3.0)
        kg = (k.copy() * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg.copy()
    return k[np.argsort(k.prod(1))].astype(np.float32)


@dataclass
class AnchorReport:
    """Outcome of ``check_anchors``: anchors (K, 2) as lists in input pixels, BPR/AAT before and after, and per
    size bucket (``buckets[scheme]`` = rows with name, lo/hi area px², n targets, bpr/aat before and after).
    ``after`` equals ``before`` when no new anchors were adopted."""

    thr: float
    imgsz: int
    n_targets: int
    anchors_before: list[list[float]]
    bpr_before: float
    aat_before: float
    anchors_after: list[list[float]]
    bpr_after: float
    aat_after: float
    evolved: bool = False  # k-means + evolution ran (BPR was not > 0.98)
    adopted: bool = False  # the evolved anchors were better and were written into the model
    buckets: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    suggestion: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """Human-readable text: the overall line, the per-bucket table and the suggestion, if any."""
        lines = [f"{PREFIX}{self.n_targets} targets at imgsz={self.imgsz}, anchor_t={self.thr:g}",
                 f"  before: {self.aat_before:.2f} anchors/target, BPR {self.bpr_before:.4f}  anchors "
                 + _fmt_anchors(self.anchors_before)]
        if self.evolved:
            state = "adopted" if self.adopted else "rejected (not better than the original anchors)"
            lines.append(f"  evolved: {state}; after: {self.aat_after:.2f} anchors/target, BPR {self.bpr_after:.4f}"
                         f"  anchors " + _fmt_anchors(self.anchors_after))
        else:
            lines.append("  current anchors are a good fit (BPR > 0.98), kept")
        lines.append(f"  {'scheme':<7}{'bucket':<12}{'area px²':>20}{'targets':>9}{'BPR':>9}{'aat':>7}"
                     f"{'BPR new':>9}{'aat new':>8}")
        for scheme, rows in self.buckets.items():
            for r in rows:
                area = f"[{r['lo']:g}, {r['hi']:g})"
                lines.append(f"  {scheme:<7}{r['name']:<12}{area:>20}{r['n']:>9}{_f(r['bpr_before'], 4):>9}"
                             f"{_f(r['aat_before'], 2):>7}{_f(r['bpr_after'], 4):>9}{_f(r['aat_after'], 2):>8}")
        if self.suggestion:
            lines.append("  " + self.suggestion)
        return "\n".join(lines)


def _f(v: float | None, nd: int) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _fmt_anchors(a: list[list[float]]) -> str:
    return ", ".join(f"{round(w)},{round(h)}" for w, h in a)


def bucket_metrics(anchors_px: np.ndarray, wh: np.ndarray, thr: float = 4.0, tiny_area: float = 1024.0
                   ) -> dict[str, list[dict[str, Any]]]:
    """BPR and anchors per target per size bucket of the targets wh (N, 2) input pixels, bucketed by area w * h in
    input pixels² into half-open [lo, hi) ranges: 'tiny' (tiny/big at ``tiny_area``), 'coco' (small/medium/large)
    and 'aitod' (sqrt-area edges 8, 16, 32, 64 px), as ``utils.eval.size_metrics.size_buckets`` defines them.
    Empty buckets get None. Returns {scheme: [{name, lo, hi, n, bpr, aat}, ...]}."""
    wh = np.asarray(wh, dtype=np.float32).reshape(-1, 2)
    area = wh.prod(1).astype(np.float64)
    out = {}
    for scheme in ("tiny", "coco", "aitod"):
        rows = []
        for b in size_buckets(scheme, tfl_s=tiny_area):
            sel = b.contains(area)
            bpr, aat = anchor_metrics(anchors_px, wh[sel], thr) if sel.any() else (None, None)
            rows.append({"name": b.name, "lo": b.lo, "hi": b.hi, "n": int(sel.sum()), "bpr": bpr, "aat": aat})
        out[scheme] = rows
    return out


def _check_thr(thr: float) -> None:
    if not thr > 1:
        raise ValueError(f"{PREFIX}anchor_t (thr) must be > 1 (a max side ratio), got {thr}")


def _detect_head(model: nn.Module) -> nn.Module:
    m = model.module.model[-1] if hasattr(model, "module") else model.model[-1]
    if not (hasattr(m, "anchors") and hasattr(m, "stride")):
        raise TypeError(f"{PREFIX}the model's last layer {type(m).__name__} has no anchors/stride (not Detect)")
    if not (m.stride > 0).all():
        raise ValueError(f"{PREFIX}Detect.stride is {m.stride.tolist()}: build the model (strides) before AutoAnchor")
    return m


def _p2_suggestion(model: nn.Module, stride_min: float) -> str:
    if stride_min <= 4:
        return ("Tiny-object BPR < 0.98 although the model already has a stride-4 (P2) level: consider a larger "
                "--imgsz or a larger anchor_t.")
    cfg = "models/yolov5n-p2.yaml" if "yolov5n" in Path(str(getattr(model, "yaml_file", ""))).name \
        else "models/yolov5s-p2.yaml"
    return (f"Tiny-object BPR < 0.98: the stride-{stride_min:g} level is too coarse for these objects; consider the "
            f"P2 model ({cfg}, or models/yolov5n-p2.yaml / models/yolov5s-p2.yaml) or a larger --imgsz.")


def check_anchors(data: Any, model: nn.Module, thr: float = 4.0, imgsz: int = 640, gen: int = 1000,
                  seed: int | Rngs | None = None, tiny_area: float = 1024.0) -> AnchorReport:
    """Check the fit of the model's anchors to the labels of ``data`` (dataset or (shapes, labels)); when BPR is
    not > 0.98, evolve ``na`` new anchors (``kmean_anchors``) and write them into ``Detect.anchors`` (grid cells,
    ordered to the strides) only if their BPR is higher. Returns the report (logged here; save it with
    ``save_anchor_report``). Same random draws as v7.0 for the same seed: the jitter, then k-means and evolution.
    """
    _check_thr(thr)
    m = _detect_head(model)
    rngs = _rngs(seed)
    shapes, labels = _shapes_labels(data)
    wh = label_wh_pixels(shapes, labels, imgsz, (0.9, 1.1), rngs)
    stride = m.stride.to(m.anchors.device).view(-1, 1, 1)
    before = (m.anchors.detach().clone() * stride).cpu().view(-1, 2).numpy()
    if not len(wh):
        raise UserError(f"{PREFIX}no labels in the dataset: cannot check anchors (use --noautoanchor)")
    bpr, aat = anchor_metrics(before, wh, thr)
    after, bpr_new, aat_new, evolved, adopted = before, bpr, aat, False, False
    if not bpr > BPR_OK:
        evolved = True
        LOGGER.info(f"{PREFIX}{aat:.2f} anchors/target, BPR {bpr:.3f}: anchors are a poor fit, evolving new ones...")
        cand = kmean_anchors((shapes, labels), n=m.anchors.numel() // 2, img_size=imgsz, thr=thr, gen=gen, seed=rngs)
        if anchor_metrics(cand, wh, thr)[0] > bpr:
            adopted = True
            with torch.no_grad():
                m.anchors[:] = torch.tensor(cand, device=m.anchors.device).type_as(m.anchors).view_as(m.anchors)
                check_anchor_order(m)  # in pixels, before dividing by stride
                m.anchors /= stride
            after = (m.anchors.detach().clone() * stride).cpu().view(-1, 2).numpy()
            bpr_new, aat_new = anchor_metrics(after, wh, thr)
    b0, b1 = bucket_metrics(before, wh, thr, tiny_area), bucket_metrics(after, wh, thr, tiny_area)
    buckets = {s: [{"name": r0["name"], "lo": r0["lo"], "hi": r0["hi"], "n": r0["n"], "bpr_before": r0["bpr"],
                    "aat_before": r0["aat"], "bpr_after": r1["bpr"], "aat_after": r1["aat"]}
                   for r0, r1 in zip(b0[s], b1[s])] for s in b0}
    tiny_bpr = buckets["tiny"][0]["bpr_after"]
    suggestion = _p2_suggestion(model, float(m.stride.min())) if tiny_bpr is not None and tiny_bpr < BPR_OK else ""
    report = AnchorReport(thr=float(thr), imgsz=int(imgsz), n_targets=len(wh), anchors_before=before.tolist(),
                          bpr_before=bpr, aat_before=aat, anchors_after=after.tolist(), bpr_after=bpr_new,
                          aat_after=aat_new, evolved=evolved, adopted=adopted, buckets=buckets, suggestion=suggestion)
    LOGGER.info(report.format())
    return report


def save_anchor_report(report: AnchorReport, save_dir: str | Path) -> tuple[Path, Path]:
    """Write ``anchor_report.json`` and ``anchor_report.txt`` into ``save_dir`` (created); returns both paths.
    Non-finite numbers (an empty bucket) are written as JSON null."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    d = report.to_dict()

    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else (None if math.isnan(x) else str(x))
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    pj, pt = save_dir / "anchor_report.json", save_dir / "anchor_report.txt"
    pj.write_text(json.dumps(clean(d), indent=2))
    pt.write_text(report.format() + "\n")
    return pj, pt
