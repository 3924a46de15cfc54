"""YOLOv5's training loss, composed from pure parts, with Tiny Focal Loss weights per target.

With ``tfl`` off and ``box_loss: ciou`` the numbers equal YOLOv5 v7.0's ComputeLoss. The composition:

- targets are matched to anchors and grid cells by ``build_targets`` (anchor side ratio < ``anchor_t``, plus the
  two nearest neighbour cells) into one ``Matches`` per level, whose ``t`` says which ground truth each match came
  from (and so selects its TFL weight); ``assign: nwd`` and ``assign_min_pos`` (utils/assign.py) change which
  anchors a ground truth matches, for tiny objects;
- the box term is, per level, ``sum(t_i * f_i * L_i) / sum(f_i)`` over the matches, with ``L`` the chosen box loss
  (utils/box_losses.py), ``f`` its own per-box weight (Focal-EIoU's IoU^gamma; 1 for the others) and ``t`` the TFL
  weight of the match's ground truth (1 when TFL is off). Both reweightings therefore multiply;
- the class term is the mean BCE over (matches x classes), each match's row multiplied by ``t``;
- the objectness term is the mean BCE over all cells, positive cells multiplied by ``t``; negatives keep weight 1.
  When several ground truths land in the same cell, the cell's objectness target is the IoU of the last one
  written (as YOLOv5) and its weight is the LARGEST of their TFL weights, i.e. the tiniest object's, which does
  not depend on the order of the targets (``weight_positive_cells``, utils/tfl.py).

TFL normalisation (``tfl_norm``): ``sum`` multiplies each target's loss by its weight, as the paper does (the loss
grows with the share of tiny objects); ``mean`` divides the weights by their mean over each level's matches, so
the batch's average weight stays 1 and only the balance between tiny and big objects changes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from utils.assign import nwd_anchor_scores, ratio_match, starved_pairs, topk_pairs
from utils.box_losses import BOX_LOSSES
from utils.boxes import xywh2xyxy
from utils.hyp import Hyp, hyp_from_model_or_dict
from utils.tfl import tfl_weights, weight_positive_cells

LOSS_NAMES = ("box", "obj", "cls")
# Neighbour-cell offsets in grid cells: the target's own cell, then left, up, right, down (YOLOv5's order,
# which decides the last write when several matches share a cell).
_CELL_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5


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
        gains: (box, obj, cls) gains; None uses the hyp values as they are (YOLOv5's ComputeLoss behaviour; the
            trainer passes ``loss_gains(...)``).
    Call with ``preds`` (list of nl tensors (bs, na, ny, nx, 5 + nc) raw outputs) and ``targets`` (n, 6)
    ``[img_idx, cls, x, y, w, h]`` normalised; returns ``(loss * bs, tensor([lbox, lobj, lcls]))``.
    """

    gr = 1.0  # objectness target = (1 - gr) + gr * IoU

    def __init__(self, model: nn.Module, hyp: Hyp | dict | None = None,
                 gains: tuple[float, float, float] | None = None) -> None:
        core = model.module if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel) else model
        det = core.model[-1]
        self.hyp = hyp_from_model_or_dict(hyp if hyp is not None else getattr(core, "hyp", None))
        h = self.hyp
        self.device = next(core.parameters()).device
        self.nc, self.na, self.nl = det.nc, det.na, det.nl
        self.anchors = det.anchors  # (nl, na, 2) grid cells
        self.strides = [float(s) for s in det.stride]
        self.balance = [4.0, 1.0, 0.4] if self.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][: self.nl]
        self.gains = gains if gains is not None else (h.box, h.obj, h.cls)
        self.cp, self.cn = smooth_bce(h.label_smoothing)
        self.cls_pw = torch.tensor([h.cls_pw], device=self.device)
        self.obj_pw = torch.tensor([h.obj_pw], device=self.device)
        self.box_loss_fns = [BOX_LOSSES[h.box_loss].bind(h, s) for s in self.strides]  # per level: NWD's c
        self.tfl_terms = frozenset(h.tfl_terms) if h.tfl else frozenset()

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, dev, terms = self.hyp, self.device, self.tfl_terms
        lbox, lobj, lcls = (torch.zeros(1, device=dev) for _ in range(3))
        weights = self.target_weights(preds, targets) if terms else None  # (nt,) TFL weight per ground truth
        for i, (pi, m) in enumerate(zip(preds, self.build_targets(preds, targets))):
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=dev)
            w_obj = mu = None
            if m.n:
                ps = pi[m.b, m.a, m.gj, m.gi]  # (n, 5 + nc) predictions at the matched cells
                w = w_raw = weights[m.t] if weights is not None else None  # (n,) per match, >= 1; None: TFL off
                mu = w.mean() if w is not None and h.tfl_norm == "mean" else None
                if mu is not None:
                    w = w / mu  # the one per-match weight of the box and class terms
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * m.anchors
                box = self.box_loss_fns[i](xywh2xyxy(torch.cat((pxy, pwh), 1)), xywh2xyxy(m.tbox))
                lb = w * box.loss if "box" in terms else box.loss
                if box.weight is None:
                    lbox += lb.sum() / m.n
                else:
                    lbox += lb.sum() / box.weight.sum().clamp(min=1e-12)  # loss holds f * L
                iou = box.score.detach().clamp(0).type(tobj.dtype)  # CIoU for ciou, as YOLOv5
                tobj.view(-1)[m.cell] = (1.0 - self.gr) + self.gr * iou
                if "obj" in terms:
                    w_obj = w_raw  # raw (>= 1) for the cells' max; 'mean' divides after it
                if self.nc > 1:  # YOLOv5 skips the class term for a single class
                    t = torch.full_like(ps[:, 5:], self.cn)
                    t[torch.arange(m.n, device=dev), m.cls] = self.cp
                    wcls = w[:, None] if "cls" in terms else None
                    lcls += focal_bce_with_logits(ps[:, 5:], t, h.fl_gamma, h.fl_alpha, self.cls_pw, wcls).mean()
            bce = focal_bce_with_logits(pi[..., 4], tobj, h.fl_gamma, h.fl_alpha, self.obj_pw)
            if w_obj is not None:
                bce = weight_positive_cells(bce.reshape(-1), m.cell, w_obj, mu)
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

    def build_targets(self, preds: list[torch.Tensor], targets: torch.Tensor) -> list[Matches]:
        """Match ground truths to anchors and cells: one ``Matches`` per level.

        Which (level, anchor) pairs a ground truth matches (utils/assign.py): ``assign: ratio`` is YOLOv5's side
        ratio < ``anchor_t``; ``assign: nwd`` the ``assign_topk`` pairs of highest NWD. Each matched pair gives the
        ground truth's own cell and its two nearest neighbours, anchor-major. With ``assign_min_pos: k`` (ratio) a
        ground truth matched nowhere gets its k best pairs by NWD, own cell only, appended after those.
        """
        h = self.hyp
        nt, na, dev = targets.shape[0], self.na, targets.device
        anchor_idx = torch.arange(na, device=dev).view(na, 1).expand(na, nt)
        target_idx = torch.arange(nt, device=dev).view(1, nt).expand(na, nt)
        offsets = _CELL_OFFSETS.to(dev)
        grids = [torch.tensor([pi.shape[3], pi.shape[2]], device=dev, dtype=targets.dtype) for pi in preds]  # nx, ny
        if h.assign == "ratio":
            matches = [ratio_match(targets[:, 4:6] * g, self.anchors[i], h.anchor_t) for i, g in enumerate(grids)]
            extra = self._starved_pairs(targets, grids, matches) if h.assign_min_pos else None
        else:
            matches, extra = topk_pairs(self._nwd_scores(targets, grids), int(h.assign_topk)), None
        levels = []
        for i, pi in enumerate(preds):
            ny, nx = pi.shape[2:4]
            grid = grids[i]
            match = matches[i]  # (na, nt) bool
            a, t = anchor_idx[match], target_idx[match]  # anchor-major, as YOLOv5 orders them
            gxy = targets[t, 2:4] * grid
            inv = grid - gxy
            near = torch.cat((torch.ones_like(gxy[:, :1], dtype=torch.bool),
                              (gxy % 1 < 0.5) & (gxy > 1), (inv % 1 < 0.5) & (inv > 1)), 1).T  # (5, n)
            a, t = a.expand(5, -1)[near], t.expand(5, -1)[near]
            gxy = gxy.expand(5, -1, -1)[near]
            gij = (gxy - offsets[:, None].expand(-1, near.shape[1], -1)[near]).long()
            if extra is not None:  # the starved ground truths' pairs: own cell only, after the normal matches
                ax, tx = anchor_idx[extra[i]], target_idx[extra[i]]
                gxy_x = targets[tx, 2:4] * grid
                a, t = torch.cat((a, ax)), torch.cat((t, tx))
                gxy, gij = torch.cat((gxy, gxy_x)), torch.cat((gij, gxy_x.long()))
            gi, gj = gij[:, 0].clamp_(0, nx - 1), gij[:, 1].clamp_(0, ny - 1)
            tt = targets[t]  # (n, 6) the matched ground truths
            b = tt[:, 0].long()
            levels.append(Matches(b=b, a=a, gj=gj, gi=gi, cell=((b * na + a) * ny + gj) * nx + gi, t=t,
                                  cls=tt[:, 1].long(), tbox=torch.cat((gxy - gij, tt[:, 4:6] * grid), 1),
                                  anchors=self.anchors[i][a]))
        return levels

    def _nwd_scores(self, targets: torch.Tensor, grids: list[torch.Tensor]) -> torch.Tensor:
        """(nl, na, nt) NWD of every ground truth to every anchor centred in its own cell, C = ``nwd_c`` input px."""
        return torch.stack([nwd_anchor_scores(targets[:, 2:4] * g, targets[:, 4:6] * g, self.anchors[i], g,
                                              self.hyp.nwd_c / self.strides[i]) for i, g in enumerate(grids)])

    def _starved_pairs(self, targets: torch.Tensor, grids: list[torch.Tensor],
                       matches: list[torch.Tensor]) -> torch.Tensor:
        """(nl, na, nt) the ``assign_min_pos`` best pairs by NWD of the ground truths no ratio match reached."""
        return starved_pairs(torch.stack(matches), self._nwd_scores(targets, grids), int(self.hyp.assign_min_pos))
