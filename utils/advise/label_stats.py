"""Size statistics of a training set's labels at one input size: what ``--tiny auto`` decides from.

Units: object sides are sqrt(w * h) in INPUT PIXELS, each image's long side scaled to ``imgsz`` (AutoAnchor's
``label_wh_pixels``, without its random scale jitter); anchors are in input pixels per level, keyed by stride.

Matching is YOLOv5's ratio rule (``utils.loss.assign.ratio_match``): a ground truth can be a positive of a level
when some anchor of that level is within ``anchor_t`` of it in both sides. A level with no anchor in reach never
trains that ground truth, whatever the loss. A P2 level (stride 4) that the model lacks is judged with the stride-8
anchors halved: the same shapes in grid cells one level finer, which is where AutoAnchor's k-means puts them for
data of tiny objects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from utils.loss.assign import ratio_match
from utils.train.autoanchor import label_wh_pixels

SIDE_LIMITS = (8, 16, 32)  # input px: the shares of objects under these sides (AI-TOD's very tiny / tiny / small)
P2_STRIDE = 4


@dataclass(frozen=True)
class LabelStats:
    """Label statistics at ``imgsz`` (input px). ``sides``: (10th percentile, median, 90th percentile) object side;
    ``share_under``: {side px: share of objects under it}; ``tiny_share``: share under the rules' tiny side;
    ``match`` / ``tiny_match``: {stride: share of all / of tiny objects that level can match}."""

    imgsz: int
    n_images: int
    n_objects: int
    sides: tuple[float, float, float]
    share_under: dict[int, float]
    tiny_share: float
    match: dict[int, float]
    tiny_match: dict[int, float]

    @property
    def per_image(self) -> float:
        """Mean objects per image."""
        return self.n_objects / self.n_images if self.n_images else 0.0

    def summary(self) -> str:
        """One line: counts, sides, shares under 8/16/32 px and what each stride matches of the tiny objects."""
        under = ", ".join(f"<{k} px {v:.0%}" for k, v in self.share_under.items())
        match = ", ".join(f"stride {s} {v:.0%}" for s, v in sorted(self.tiny_match.items()))
        return (f"{self.n_objects} objects in {self.n_images} images ({self.per_image:.1f} per image) at "
                f"{self.imgsz} px: side p10/median/p90 {'/'.join(f'{s:.1f}' for s in self.sides)} px, {under}; "
                f"tiny objects matchable at {match}")

    def to_dict(self) -> dict:
        """JSON-safe dict (tiny_auto.json)."""
        d = asdict(self)
        d["per_image"] = self.per_image
        return d


def level_anchors(anchors_grid: torch.Tensor | np.ndarray, strides: torch.Tensor | np.ndarray
                  ) -> dict[int, np.ndarray]:
    """{stride: (na, 2) anchors in input px} from a Detect's ``anchors`` (nl, na, 2) grid cells and ``stride``
    (nl,), with a stride-4 level added (the stride-8 anchors halved) when the model has none."""
    a = np.asarray(anchors_grid, dtype=np.float64)
    s = np.asarray(strides, dtype=np.float64).reshape(-1)
    out = {int(si): a[i] * si for i, si in enumerate(s)}
    if P2_STRIDE not in out and 8 in out:
        out[P2_STRIDE] = out[8] / 2
    return dict(sorted(out.items()))


def matchable(wh: np.ndarray, anchors: dict[int, np.ndarray], anchor_t: float) -> dict[int, np.ndarray]:
    """{stride: (N,) bool, ground truth i can be a positive of that level}; ``wh`` (N, 2) input px."""
    gwh = torch.as_tensor(wh, dtype=torch.float64).view(-1, 2)
    return {s: ratio_match(gwh / s, torch.as_tensor(a, dtype=torch.float64) / s, anchor_t).any(0).numpy()
            for s, a in anchors.items()}


def label_statistics(shapes: np.ndarray, labels: list[np.ndarray], imgsz: int, anchors: dict[int, np.ndarray],
                     anchor_t: float = 4.0, tiny_side: float = 32.0) -> LabelStats:
    """Statistics of ``labels`` (n arrays (k, 5) [cls, x, y, w, h] normalised) of images ``shapes`` (n, 2) (w, h)
    original px, letterboxed to ``imgsz``; ``anchors`` {stride: (na, 2) input px} as :func:`level_anchors`."""
    wh = label_wh_pixels(shapes, labels, imgsz, scale_jitter=None)
    sides = np.sqrt(wh[:, 0] * wh[:, 1])
    n = len(sides)
    tiny = sides < tiny_side
    ok = matchable(wh, anchors, anchor_t)

    def share(mask: np.ndarray, of: np.ndarray | None = None) -> float:
        of = np.ones(n, bool) if of is None else of
        return float(mask[of].mean()) if of.any() else 0.0

    return LabelStats(
        imgsz=int(imgsz), n_images=len(labels), n_objects=n,
        sides=tuple(float(np.percentile(sides, q)) for q in (10, 50, 90)) if n else (0.0, 0.0, 0.0),
        share_under={k: share(sides < k) for k in SIDE_LIMITS}, tiny_share=share(tiny),
        match={s: share(m) for s, m in ok.items()}, tiny_match={s: share(m, tiny) for s, m in ok.items()})


__all__ = ["P2_STRIDE", "SIDE_LIMITS", "LabelStats", "label_statistics", "level_anchors", "matchable"]
