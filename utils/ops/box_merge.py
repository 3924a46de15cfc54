"""Pairwise box similarity (IoU, IoS, NWD) and the greedy suppression and merging rules built on it.

- ``pairwise(a, b, metric)``: (N, M) similarity of xyxy boxes. IoU; IoS = intersection over the smaller box's area
  (SAHI's "IOS"); NWD = exp(-W2 / C), the normalised Wasserstein distance of the boxes as Gaussians
  N((cx, cy), diag(w²/4, h²/4)) (Wang et al. 2021), with W2² = dcx² + dcy² + (dw / 2)² + (dh / 2)². NWD does not
  fall to 0 for tiny boxes that barely overlap: two 6-px boxes sharing one pixel column have IoU 0.09 and NWD 0.68.
- ``greedy_nms``: classic NMS with any of these metrics, suppressing a box when its similarity to a kept box of
  the same class is *above* the threshold (torchvision's convention; IoU NMS itself stays torchvision's).
- ``merge_groups`` / ``merge_boxes``: SAHI's non-maximum *merging* for sliced inference. Greedy NMM: in score
  order, each box not yet taken takes every later box whose similarity to it is >= the threshold. NMM: the same,
  but a taken box takes further boxes for its keeper (transitive). Then each keeper absorbs its group one box at a
  time, re-checking the match against the grown box (a box that no longer matches is dropped, as SAHI does): the
  union box, the higher score, the class of the higher-scoring one. Ties in score are broken by x1, y1, x2, y2 as
  SAHI does, so the groups are SAHI's.

Units: any, consistent between the boxes and ``nwd_c`` (input px in NMS, original px in the tile merge).
"""

from __future__ import annotations

import math

import numpy as np
import torch

MATCH_METRICS = ("iou", "ios", "nwd")  # similarity of two boxes
NMS_METHODS = ("iou", "nwd")  # --nms: the similarity NMS suppresses on
MERGE_METHODS = ("nms", "nmm", "greedy-nmm")  # --slice-merge: how tiles' detections are combined
NWD_C = 12.8  # px: NWD's constant C, AI-TOD's average object size (Wang et al. 2021), as the hyp's nwd_c
NMS_BLOCK = 512  # candidates compared at once in greedy_nms (memory: block x kept)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``, else ValueError naming the setting and the choices."""
    if value not in choices:
        raise ValueError(f"{name}: unknown value {value!r}, choose from {', '.join(choices)}")
    return value


def add_nms_arguments(p, slicing: bool = True) -> None:
    """The NMS and tile-merge flags of detect.py and val.py (``--nms``, ``--nwd-c``, ``--slice-merge``,
    ``--slice-match``, ``--slice-match-thres``), declared once for both."""
    p.add_argument("--nms", choices=NMS_METHODS, default="iou", help="NMS similarity: iou (YOLOv5) or nwd "
                   "(normalised Wasserstein distance, for tiny objects; --iou-thres is then the NWD threshold)")
    p.add_argument("--nwd-c", type=float, default=NWD_C, help="NWD constant C in px (AI-TOD's 12.8)")
    if slicing:
        p.add_argument("--slice-merge", choices=MERGE_METHODS, default="nms", help="how tiles' detections are "
                       "combined: nms, or SAHI's non-maximum merging nmm / greedy-nmm (union boxes)")
        p.add_argument("--slice-match", choices=MATCH_METRICS, default=None, help="similarity of the tile merge: "
                       "iou, ios (intersection over the smaller box, SAHI's IOS) or nwd; default: as --nms")
        p.add_argument("--slice-match-thres", type=float, default=None, help="threshold of the tile merge "
                       "(default: --iou-thres)")


def pairwise(a: torch.Tensor, b: torch.Tensor, metric: str = "iou", nwd_c: float = NWD_C) -> torch.Tensor:
    """(N, 4) and (M, 4) xyxy boxes -> (N, M) IoU, IoS or NWD (``metric``); ``nwd_c`` > 0 in the boxes' unit."""
    check_choice("match metric", metric, MATCH_METRICS)
    if metric == "nwd":
        if not nwd_c > 0:
            raise ValueError(f"nwd_c must be > 0 (a length in the boxes' unit), got {nwd_c}")
        ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
        ha, hb = (a[:, 2:] - a[:, :2]) / 2, (b[:, 2:] - b[:, :2]) / 2  # half sides = the Gaussians' std devs
        w2 = ((ca[:, None] - cb[None]) ** 2).sum(2) + ((ha[:, None] - hb[None]) ** 2).sum(2)
        return torch.exp(-torch.sqrt(w2) / nwd_c)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    den = area_a[:, None] + area_b[None] - inter if metric == "iou" else torch.minimum(area_a[:, None], area_b[None])
    return torch.where(den > 0, inter / den.clamp(min=1e-12), torch.zeros_like(inter))


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, thres: float, metric: str = "iou",
               classes: torch.Tensor | None = None, nwd_c: float = NWD_C, max_keep: int | None = None,
               block: int = NMS_BLOCK) -> torch.Tensor:
    """Greedy NMS on any ``pairwise`` metric.

    Args:
        boxes: (n, 4) xyxy; scores: (n,); thres: a box is suppressed when its similarity to a kept box is > thres.
        classes: (n,) class ids (boxes of different classes never suppress each other) or None (class-agnostic).
        max_keep: stop once this many are kept (the result is the same prefix as without it).
    Returns:
        (k,) long indices of the kept boxes, by decreasing score.
    """
    n = len(boxes)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    b, c = boxes[order], (classes[order] if classes is not None else None)
    kept: list[torch.Tensor] = []  # positions in ``order``
    n_kept = 0
    for s in range(0, n, block):
        bb = b[s:s + block]
        alive = torch.ones(len(bb), dtype=torch.bool, device=b.device)
        if kept:  # suppressed by an earlier block's kept boxes
            k = torch.cat(kept)
            hit = pairwise(bb, b[k], metric, nwd_c) > thres
            if c is not None:
                hit &= c[s:s + block, None] == c[k][None]
            alive &= ~hit.any(1)
        hit = pairwise(bb, bb, metric, nwd_c) > thres  # within the block: sequential, in score order
        if c is not None:
            hit &= c[s:s + block, None] == c[s:s + block][None]
        hit = torch.triu(hit, diagonal=1).cpu().numpy()
        live = alive.cpu().numpy()
        for i in range(len(bb)):
            if live[i]:
                live[i + 1:] &= ~hit[i, i + 1:]
        idx = torch.from_numpy(np.flatnonzero(live)).to(b.device) + s
        kept.append(idx)
        n_kept += len(idx)
        if max_keep is not None and n_kept >= max_keep:
            break
    keep = order[torch.cat(kept)]
    return keep[:max_keep] if max_keep is not None else keep


MERGE_BLOCK = 512  # rows of the similarity matrix computed at once (merge_groups)


def _sahi_order(d: np.ndarray) -> np.ndarray:
    """Indices by decreasing score, ties broken by x1, y1, x2, y2 (SAHI's order)."""
    return np.lexsort((d[:, 3], d[:, 2], d[:, 1], d[:, 0], -d[:, 4]))


def merge_groups(dets: torch.Tensor, thres: float, metric: str = "iou", greedy: bool = True,
                 agnostic: bool = False, nwd_c: float = NWD_C) -> dict[int, list[int]]:
    """SAHI's NMM grouping: {keeper index: [indices to merge into it, in order]} (module docstring).

    dets: (n, 6) ``[x1, y1, x2, y2, conf, cls]``; a pair matches when its ``metric`` is >= ``thres`` (and the
    classes agree unless ``agnostic``). ``greedy``: SAHI's greedy_nmm, else its transitive nmm.
    """
    d = dets.detach().double().cpu()
    n = len(d)
    if n == 0:
        return {}
    # row blocks: the full n x n similarity in float64 would need 8 n² bytes (3.2 GB for the 20,000 boxes of a large
    # image at val.py's confidence 0.001); the boolean matrix needs n² bytes
    m = np.empty((n, n), dtype=bool)
    for i in range(0, n, MERGE_BLOCK):
        m[i:i + MERGE_BLOCK] = (pairwise(d[i:i + MERGE_BLOCK, :4], d[:, :4], metric, nwd_c) >= thres).numpy()
    if not agnostic:
        m &= (d[:, 5, None] == d[None, :, 5]).numpy()
    np.fill_diagonal(m, False)
    d = d.numpy()
    order = _sahi_order(d)
    groups: dict[int, list[int]] = {}
    if greedy:
        taken = np.zeros(n, dtype=bool)
        for pos, i in enumerate(order):
            if taken[i]:
                continue
            later = order[pos + 1:]
            group = later[~taken[later] & m[i, later]]
            taken[group] = True
            groups[int(i)] = group.tolist()
        return groups
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)  # a box claims only boxes after it in the order (lower score, or tie after it)
    owner = np.full(n, -1, dtype=np.int64)
    for i in order:
        if owner[i] < 0:
            owner[i] = i
            groups[int(i)] = []
        keeper = int(owner[i])
        for j in np.flatnonzero(m[i] & (rank > rank[i])):
            if owner[j] < 0:
                owner[j] = keeper
                groups[keeper].append(int(j))
    return groups


def _similarity(a: list[float], b: list[float], metric: str, nwd_c: float) -> float:
    """``pairwise`` of two single xyxy boxes as Python floats (the merge loop calls it once per merged box)."""
    if metric == "nwd":
        w2 = (((a[0] + a[2]) - (b[0] + b[2])) / 2) ** 2 + (((a[1] + a[3]) - (b[1] + b[3])) / 2) ** 2 \
            + (((a[2] - a[0]) - (b[2] - b[0])) / 2) ** 2 + (((a[3] - a[1]) - (b[3] - b[1])) / 2) ** 2
        return math.exp(-math.sqrt(w2) / nwd_c)
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    den = area_a + area_b - inter if metric == "iou" else min(area_a, area_b)
    return inter / den if den > 0 else 0.0


def merge_boxes(dets: torch.Tensor, groups: dict[int, list[int]], thres: float, metric: str = "iou",
                nwd_c: float = NWD_C) -> torch.Tensor:
    """Apply ``merge_groups``: each keeper grows by the boxes of its group that still match it (>= ``thres``);
    returns (k, 6) ``[x1, y1, x2, y2, conf, cls]`` by decreasing confidence."""
    check_choice("match metric", metric, MATCH_METRICS)
    rows = dets.detach().cpu().double().tolist()
    out = []
    for keeper, members in groups.items():
        box = list(rows[keeper])
        for j in members:
            other = rows[j]
            if _similarity(box, other, metric, nwd_c) >= thres:
                cls = box[5] if box[4] > other[4] else other[5]  # the higher score's class; a tie: the merged one's
                box = [min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]), max(box[3], other[3]),
                       max(box[4], other[4]), cls]
        out.append(box)
    if not out:
        return dets[:0]
    merged = torch.tensor(out, dtype=dets.dtype, device=dets.device)
    return merged[merged[:, 4].argsort(descending=True, stable=True)]


__all__ = ["MATCH_METRICS", "MERGE_METHODS", "NMS_METHODS", "NWD_C", "add_nms_arguments", "check_choice",
           "greedy_nms", "merge_boxes", "merge_groups", "pairwise"]
