"""YOLOv5's training loss, composed from pure parts, with Tiny Focal Loss weights per target.

With ``tfl`` off and ``box_loss: ciou`` the numbers equal YOLOv5 v7.0's ComputeLoss. The composition:

- targets are matched to anchors and grid cells by ``build_targets`` (anchor side ratio < ``anchor_t``, plus the
  two nearest neighbour cells) into one ``Matches`` per level, whose ``t`` says which ground truth each match came
  from (and so selects its TFL weight); ``assign: nwd`` and ``assign_min_pos`` (utils/loss/assign.py) change which
  anchors a ground truth matches, for tiny objects;
- the box term is, per level, ``sum(t_i * f_i * L_i) / sum(f_i)`` over the matches, with ``L`` the chosen box loss
  (utils/ops/box_losses.py), ``f`` its own per-box weight (Focal-EIoU's IoU^gamma; 1 for the others) and ``t`` the TFL
  weight of the match's ground truth (1 when TFL is off). Both reweightings therefore multiply;
- the class term is the mean BCE over (matches x classes), each match's row multiplied by ``t``;
- the objectness term is the mean BCE over all cells, positive cells multiplied by ``t``; negatives keep weight 1.
  When several ground truths land in the same cell, the cell's objectness target is the IoU of the last one
  written (as YOLOv5) and its weight is the LARGEST of their TFL weights, i.e. the tiniest object's, which does
  not depend on the order of the targets (``weight_positive_cells``, utils/loss/tfl.py).

TFL normalisation (``tfl_norm``): ``sum`` multiplies each target's loss by its weight, as the paper does (the loss
grows with the share of tiny objects); ``mean`` divides the weights by their mean over each level's matches, so
the batch's average weight stays 1 and only the balance between tiny and big objects changes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from utils.config.hyp import Hyp, hyp_from_model_or_dict
from utils.loss.assign import nwd_anchor_scores, ratio_match, starved_pairs, topk_pairs
from utils.loss.tfl import tfl_weights, weight_positive_cells
from utils.ops.box_losses import BOX_LOSSES

LOSS_NAMES = ("box", "obj", "cls")
# Neighbour-cell offsets in grid cells: the target's own cell, then left, up, right, down (YOLOv5's order,
# which decides the last write when several matches share a cell); the sixth, zero row is the own cell of the
# ``assign_min_pos`` extra pairs, which so sort after a level's normal matches.
_CELL_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1], [0, 0]], dtype=torch.float32) * 0.5
_GRIDS_CACHED = 64  # level-shape sets kept (multi-scale training and rectangular batches each add one)


def smooth_bce(eps: float = 0.0) -> tuple[float, float]:
    """Label-smoothed BCE targets (positive, negative) for smoothing ``eps``."""
    return 1.0 - 0.5 * eps, 0.5 * eps


def focal_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 0.0, alpha: float = 0.25,
                          pos_weight: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise BCE on logits, with YOLOv5's focal modulation when ``gamma > 0`` (no reduction).

    ``loss * alpha_t * (1 - p_t)^gamma`` (Lin et al. 2017); with ``pos_weight`` None it equals
    ``torchvision.ops.sigmoid_focal_loss``. ``gamma = 0`` is plain BCE (alpha unused, as YOLOv5). ``weight``
    (broadcastable to ``logits``) multiplies each element's loss, inside the BCE kernel.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, pos_weight=pos_weight, reduction="none")
    if gamma > 0:
        p = logits.sigmoid()
        p_t = targets * p + (1 - targets) * (1 - p)
        alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** gamma
    return loss


def loss_gains(hyp: Hyp, nl: int, nc: int, imgsz: int) -> tuple[float, float, float]:
    """YOLOv5 train.py's scaling of the (box, obj, cls) gains to the number of levels, classes and image size."""
    layers = 3 / nl
    return hyp.box * layers, hyp.obj * (imgsz / 640) ** 2 * layers, hyp.cls * nc / 80 * layers


class _Grids(NamedTuple):
    """The constants of one set of level shapes (cached per shapes, dtype and device by ComputeLoss)."""

    gain: torch.Tensor  # (nl, 4) nx, ny, nx, ny: normalised xywh -> grid cells, in the targets' dtype
    offsets: torch.Tensor  # (6, 2) _CELL_OFFSETS in the targets' dtype
    sizes: torch.Tensor  # (nl, 4) long: nx - 1, ny - 1 (the largest cell indices), ny, nx


def _xyxy(xy: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    """(n, 4) corners from (n, 2) centres and (n, 2) sizes, any unit: ``utils.ops.boxes.xywh2xyxy``'s arithmetic (so
    the same floats) in 4 kernels instead of its copy and four column writes."""
    half = wh / 2
    return torch.cat((xy - half, xy + half), 1)


class Matches(NamedTuple):
    """One level's matches of ground truths to (anchor, cell) pairs, ``n`` of them, each field a tensor of length n."""

    b: torch.Tensor  # (n,) image index in the batch
    a: torch.Tensor  # (n,) anchor index
    gj: torch.Tensor  # (n,) cell row
    gi: torch.Tensor  # (n,) cell column
    cell: torch.Tensor  # (n,) flat index into the level's (bs, na, ny, nx) map
    t: torch.Tensor  # (n,) index of the matched ground truth in ``targets`` (selects its TFL weight)
    cls: torch.Tensor  # (n,) class
    tbox: torch.Tensor  # (n, 4) xywh target in grid cells, xy relative to the cell's corner
    anchors: torch.Tensor  # (n, 2) anchor width, height in grid cells

    @property
    def n(self) -> int:
        return self.t.shape[0]


class ComputeLoss:
    """YOLOv5 detection loss with optional TFL weights and a selectable box loss.

    Args:
        model: a DetectionModel (or DDP-wrapped); its last module is Detect with ``anchors`` (nl, na, 2) in grid
            cells and ``stride`` (nl,).
        hyp: hyperparameters (Hyp or YOLOv5-style dict); None falls back to ``model.hyp`` like YOLOv5.
        imgsz: training image size (input px): the (box, obj, cls) gains are the hyp's scaled to the model's levels
            and classes and to this size, as YOLOv5's train.py scales them (:func:`loss_gains`).
        gains: the (box, obj, cls) gains themselves, instead of ``imgsz`` (e.g. YOLOv5's ComputeLoss, which reads
            gains that its train.py already scaled). Exactly one of ``imgsz`` and ``gains`` is required, so that no
            caller uses the unscaled hyp values by accident.
    Call with ``preds`` (list of nl tensors (bs, na, ny, nx, 5 + nc) raw outputs) and ``targets`` (n, 6)
    ``[img_idx, cls, x, y, w, h]`` normalised; returns ``(loss * bs, tensor([lbox, lobj, lcls]))``.
    """

    gr = 1.0  # objectness target = (1 - gr) + gr * IoU

    def __init__(self, model: nn.Module, hyp: Hyp | dict | None = None, *, imgsz: int | None = None,
                 gains: tuple[float, float, float] | None = None) -> None:
        if (imgsz is None) == (gains is None):
            raise TypeError("ComputeLoss needs exactly one of imgsz= (gains scaled as train.py does) and gains=")
        core = model.module if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel) else model
        det = core.model[-1]
        self.hyp = hyp_from_model_or_dict(hyp if hyp is not None else getattr(core, "hyp", None))
        h = self.hyp
        self.device = next(core.parameters()).device
        self.nc, self.na, self.nl = det.nc, det.na, det.nl
        self.anchors = det.anchors  # (nl, na, 2) grid cells
        self.strides = [float(s) for s in det.stride]
        self.balance = [4.0, 1.0, 0.4] if self.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][: self.nl]
        self.gains = tuple(gains) if gains is not None else loss_gains(h, self.nl, self.nc, imgsz)
        self.cp, self.cn = smooth_bce(h.label_smoothing)
        self.cls_pw = torch.tensor([h.cls_pw], device=self.device)
        self.obj_pw = torch.tensor([h.obj_pw], device=self.device)
        self.box_loss_fns = [BOX_LOSSES[h.box_loss].bind(h, s) for s in self.strides]  # per level: NWD's c
        self.tfl_terms = frozenset(h.tfl_terms) if h.tfl else frozenset()
        self._grid_cache: dict[tuple, _Grids] = {}  # see grids()

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, dev, terms = self.hyp, self.device, self.tfl_terms
        lbox, lobj, lcls = (torch.zeros(1, device=dev) for _ in range(3))
        weights = self.target_weights(preds, targets) if terms else None  # (nt,) TFL weight per ground truth
        for i, (pi, m) in enumerate(zip(preds, self.build_targets(preds, targets))):
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=dev)
            w_obj = mu = None
            if m.n:
                # (n, 5 + nc) predictions at the matched cells: pi[m.b, m.a, m.gj, m.gi] as one row gather
                ps = pi.reshape(-1, pi.shape[-1]).index_select(0, m.cell)
                w = w_raw = weights.index_select(0, m.t) if weights is not None else None  # (n,) >= 1; None: off
                mu = w.mean() if w is not None and h.tfl_norm == "mean" else None
                if mu is not None:
                    w = w / mu  # the one per-match weight of the box and class terms
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * m.anchors
                box = self.box_loss_fns[i](_xyxy(pxy, pwh), _xyxy(m.tbox[:, :2], m.tbox[:, 2:]))
                lb = w * box.loss if "box" in terms else box.loss
                if box.weight is None:
                    lbox += lb.sum() / m.n
                else:
                    lbox += lb.sum() / box.weight.sum().clamp(min=1e-12)  # loss holds f * L
                iou = box.score.detach().clamp(0).type(tobj.dtype)  # CIoU for ciou, as YOLOv5
                tobj.view(-1)[m.cell] = iou if self.gr == 1 else (1.0 - self.gr) + self.gr * iou
                if "obj" in terms:
                    w_obj = w_raw  # raw (>= 1) for the cells' max; 'mean' divides after it
                if self.nc > 1:  # YOLOv5 skips the class term for a single class
                    t = torch.full_like(ps[:, 5:], self.cn).scatter_(1, m.cls[:, None], self.cp)
                    wcls = w[:, None] if "cls" in terms else None
                    lcls += focal_bce_with_logits(ps[:, 5:], t, h.fl_gamma, h.fl_alpha, self.cls_pw, wcls).mean()
            bce = focal_bce_with_logits(pi[..., 4], tobj, h.fl_gamma, h.fl_alpha, self.obj_pw)
            if w_obj is not None:
                bce = weight_positive_cells(bce.reshape(-1), m.cell, w_obj, mu, overwrite=True)
            lobj += bce.mean() * self.balance[i]
        lbox *= self.gains[0]
        lobj *= self.gains[1]
        lcls *= self.gains[2]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def target_weights(self, preds: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """(nt,) TFL weight of every ground truth from its size in input pixels (called when TFL is on)."""
        ny, nx = preds[0].shape[2:4]
        input_area = nx * ny * self.strides[0] ** 2  # px^2
        # w * h normalised against S / input area: the same l = w_px * h_px / S without building a pixel tensor
        return tfl_weights(targets[:, 4:6], self.hyp.tfl_k, self.hyp.tfl_s / input_area, self.hyp.tfl_piecewise)

    def grids(self, preds: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> _Grids:
        """The level constants of ``preds``' grid shapes, built once per (shapes, dtype, device)."""
        key = (tuple(tuple(pi.shape[2:4]) for pi in preds), dtype, device)
        g = self._grid_cache.get(key)
        if g is None:
            if len(self._grid_cache) >= _GRIDS_CACHED:
                self._grid_cache.clear()
            nxy = [(pi.shape[3], pi.shape[2]) for pi in preds]
            g = self._grid_cache[key] = _Grids(
                gain=torch.tensor([[nx, ny, nx, ny] for nx, ny in nxy], dtype=dtype, device=device),
                offsets=_CELL_OFFSETS.to(device, dtype),
                sizes=torch.tensor([[nx - 1, ny - 1, ny, nx] for nx, ny in nxy], device=device))
        return g

    def build_targets(self, preds: list[torch.Tensor], targets: torch.Tensor) -> list[Matches]:
        """Match ground truths to anchors and cells: one ``Matches`` per level.

        Which (level, anchor) pairs a ground truth matches (utils/loss/assign.py): ``assign: ratio`` is YOLOv5's side
        ratio < ``anchor_t``; ``assign: nwd`` the ``assign_topk`` pairs of highest NWD. Each matched pair gives the
        ground truth's own cell and its two nearest neighbours, anchor-major. With ``assign_min_pos: k`` (ratio) a
        ground truth matched nowhere gets its k best pairs by NWD, own cell only, appended after those.

        All levels are matched at once (one ``nonzero``, one gather per field, then split per level): the same
        element-wise arithmetic as YOLOv5's per-level loop, so the same matches in the same order.
        """
        h = self.hyp
        nt, na = targets.shape[0], self.na
        g = self.grids(preds, targets.dtype, targets.device)
        grid_xywh = targets[:, 2:6] * g.gain[:, None]  # (nl, nt, 4) every target in grid cells of every level
        gxy, gwh = grid_xywh[..., :2], grid_xywh[..., 2:]
        if h.assign == "ratio":
            match = ratio_match(gwh, self.anchors, h.anchor_t)  # (nl, na, nt)
            extra = (starved_pairs(match, self._nwd_scores(gxy, gwh, g.gain), int(h.assign_min_pos))
                     if h.assign_min_pos else None)
        else:
            match, extra = topk_pairs(self._nwd_scores(gxy, gwh, g.gain), int(h.assign_topk)), None
        inv = g.gain[:, None, :2] - gxy
        near = torch.cat((torch.ones_like(gxy[..., :1], dtype=torch.bool),
                          (gxy % 1 < 0.5) & (gxy > 1), (inv % 1 < 0.5) & (inv > 1)), 2)  # (nl, nt, 5)
        pairs = near.transpose(1, 2).unsqueeze(2) & match.unsqueeze(1)  # (nl, 5, na, nt) offset x anchor x target
        if extra is not None:  # the starved ground truths' pairs: own cell only (offset row 5), after the others
            pairs = torch.cat((pairs, extra.unsqueeze(1)), 1)
        counts = pairs.flatten(1).sum(1).tolist()  # matches per level
        lvl, o, a, t = pairs.nonzero().unbind(1)  # (n,) each, sorted level, offset, anchor, target: YOLOv5's order
        rows = grid_xywh.view(-1, 4).index_select(0, lvl * nt + t)  # (n, 4) the matched targets in grid cells
        size = g.sizes.index_select(0, lvl)  # (n, 4) the level's nx - 1, ny - 1, ny, nx
        gij = torch.minimum((rows[:, :2] - g.offsets.index_select(0, o)).long().clamp_(min=0), size[:, :2])
        gi, gj = gij.unbind(1)
        b, cls = targets[:, :2].long().index_select(0, t).unbind(1)
        cell = ((b * na + a) * size[:, 2] + gj) * size[:, 3] + gi
        tbox = torch.cat((rows[:, :2] - gij, rows[:, 2:]), 1)
        anchors = self.anchors.reshape(-1, 2).index_select(0, lvl * na + a)
        fields = (b, a, gj, gi, cell, t, cls, tbox, anchors)  # Matches' order
        return [Matches(*level) for level in zip(*(f.split(counts) for f in fields))]

    def _nwd_scores(self, gxy: torch.Tensor, gwh: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """(nl, na, nt) NWD of every ground truth to every anchor centred in its own cell, C = ``nwd_c`` input px.

        ``gxy``, ``gwh``: (nl, nt, 2) targets in grid cells of each level; ``gain``: (nl, 4) starting with nx, ny."""
        return torch.stack([nwd_anchor_scores(gxy[i], gwh[i], self.anchors[i], gain[i, :2],
                                              self.hyp.nwd_c / self.strides[i]) for i in range(gxy.shape[0])])
