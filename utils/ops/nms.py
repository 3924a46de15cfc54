"""Non-maximum suppression over YOLOv5 outputs: torchvision.ops.nms on IoU (YOLOv5's), or greedy NMS on NWD
(``method="nwd"``, utils/ops/box_merge.py), which also suppresses tiny boxes that barely overlap."""

from __future__ import annotations

import logging
import time

import torch
import torchvision

from utils.errors import UsageError
from utils.ops.box_merge import NMS_METHODS, NWD_C, check_choice, greedy_nms
from utils.ops.boxes import xywh2xyxy

LOGGER = logging.getLogger(__name__)
MAX_WH = 7680  # input px: per-class offset so boxes of different classes never overlap in one nms call
# Largest input side (px) train.py, val.py and detect.py accept: boxes then stay inside MAX_WH with rect padding, and
# one 7168 px image is already 0.6 GB as float32 (99999 px asks OpenCV for 30 GB).
MAX_IMGSZ = 7168
MAX_NMS = 30000  # most boxes handed to torchvision.ops.nms per image, highest confidence first


def non_max_suppression(prediction: torch.Tensor | tuple | list, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: list[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                        labels: tuple | list = (), max_det: int = 300, time_limit: float | None = None,
                        method: str = "iou", nwd_c: float = NWD_C) -> list[torch.Tensor]:
    """Filter and suppress YOLOv5 predictions, per image.

    Args:
        prediction: (bs, N, 5 + nc) eval-mode model output ``[x, y, w, h, obj, cls...]`` in input pixels (or the
            ``(pred, train_out)`` tuple the model returns in eval mode).
        conf_thres: keep candidates with ``obj > conf_thres`` and ``obj * cls > conf_thres``.
        iou_thres: similarity (IoU, or NWD with ``method="nwd"``) above which a lower-scoring box of the same class
            is suppressed.
        classes: keep only these class ids.
        agnostic: suppress across classes.
        multi_label: one candidate per (box, class) whose score passes ``conf_thres`` (used by validation).
        labels: per image (n, 5) ``[cls, x, y, w, h]`` input-pixel boxes added as perfect candidates (autolabelling).
        max_det: most detections kept per image.
        time_limit: seconds; None (default) never truncates. When set and exceeded, a warning says how many
            images were left unprocessed (YOLOv5 truncates silently, which lowers mAP on slow CPUs).
        method: 'iou' (YOLOv5, torchvision.ops.nms) or 'nwd' (normalised Wasserstein distance, constant ``nwd_c``
            in input px; Wang et al. 2021 use it in NMS for tiny objects).
    Returns:
        list of bs tensors (n, 6) ``[x1, y1, x2, y2, conf, cls]`` in input pixels, sorted by confidence.
    """
    if not 0 <= conf_thres <= 1:
        raise UsageError(f"conf_thres must be in [0, 1], got {conf_thres}")
    if not 0 <= iou_thres <= 1:
        raise UsageError(f"iou_thres must be in [0, 1], got {iou_thres}")
    check_choice("nms", method, NMS_METHODS)
    if isinstance(prediction, list | tuple):
        prediction = prediction[0]
    bs, nc = prediction.shape[0], prediction.shape[2] - 5
    multi_label &= nc > 1
    start = time.time()
    output = [torch.zeros((0, 6), device=prediction.device)] * bs
    for xi, x in enumerate(prediction):
        x = x[x[:, 4] > conf_thres]
        if labels and len(labels[xi]):
            x = torch.cat((x, _labels_as_candidates(labels[xi], nc).to(x)), 0)
        if x.shape[0]:
            output[xi] = _suppress(x, conf_thres, iou_thres, classes, agnostic, multi_label, max_det, method, nwd_c)
        if time_limit is not None and time.time() - start > time_limit:
            LOGGER.warning(f"NMS time limit {time_limit:.3f}s exceeded: {bs - xi - 1} of {bs} images left without "
                           "detections. Pass time_limit=None to process every image.")
            break
    return output


def _labels_as_candidates(lb: torch.Tensor, nc: int) -> torch.Tensor:
    """(n, 5) [cls, xywh] labels -> (n, 5 + nc) candidates with objectness and class score 1."""
    v = torch.zeros((len(lb), 5 + nc), device=lb.device)
    v[:, :4] = lb[:, 1:5]
    v[:, 4] = 1.0
    v[torch.arange(len(lb)), lb[:, 0].long() + 5] = 1.0
    return v


def _suppress(x: torch.Tensor, conf_thres: float, iou_thres: float, classes: list[int] | None, agnostic: bool,
              multi_label: bool, max_det: int, method: str = "iou", nwd_c: float = NWD_C) -> torch.Tensor:
    """One image's candidates (n, 5 + nc) -> kept detections (k, 6) [x1, y1, x2, y2, conf, cls]."""
    scores = x[:, 5:] * x[:, 4:5]  # class confidence = objectness * class probability
    box = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=False).T
        x = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
    else:
        conf, j = scores.max(1, keepdim=True)
        x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
    if classes is not None:
        x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
    if not x.shape[0]:
        return torch.zeros((0, 6), device=x.device)
    x = x[x[:, 4].argsort(descending=True)[:MAX_NMS]]
    if method == "nwd":  # NWD never reaches 0: classes are kept apart by the mask, not by coordinate offsets
        keep = greedy_nms(x[:, :4], x[:, 4], iou_thres, "nwd", None if agnostic else x[:, 5], nwd_c, max_det)
        return x[keep]
    offsets = x[:, 5:6] * (0 if agnostic else MAX_WH)
    keep = torchvision.ops.nms(x[:, :4] + offsets, x[:, 4], iou_thres)[:max_det]
    return x[keep]
