"""Plain builders shared by several test files (no pytest fixtures here: those live in conftest.py or in the
test file that uses them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from data import synthetic
from models.yolo import DetectionModel
from utils.checkpoints import save_checkpoint
from utils.config.hyp import hyp_from_model_or_dict, load_hyp
from utils.loss.compute_loss import ComputeLoss

NAMES = ["car", "person", "boat"]  # the classes of make_model()'s model


def tiny_dataset(root: Path, n_train: int = 16, n_val: int = 8, imgsz: int = 64, seed: int = 3) -> Path:
    """Generate a small synthetic dataset under ``root/ds`` and return the path of its data YAML."""
    synthetic.generate(root / "ds", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    cfg = root / "data.yaml"
    cfg.write_text(yaml.safe_dump({"path": str(root / "ds"), "train": "images/train", "val": "images/val",
                                   "names": dict(enumerate(synthetic.NAMES))}))
    return cfg


def randomise_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights and BatchNorm statistics (anchors kept), so that a wrong or missing tensor changes the
    outputs; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point() and not k.endswith("anchors"):
                t.add_(0.05 * torch.randn(t.shape, generator=g))
                if k.endswith("running_var"):
                    t.abs_().add_(0.5)
    return model.eval()


def make_model(seed: int = 0) -> DetectionModel:
    """yolov5n, 3 classes (``NAMES``), randomised weights and BatchNorm statistics; head biases raised so that a
    few boxes of level 1 (anchor 1, class 1) and level 2 (anchor 0, class 0) pass conf 0.25 on any image."""
    torch.manual_seed(seed)
    model = randomise_weights(DetectionModel("yolov5n.yaml", nc=3), seed)
    with torch.no_grad():
        head = model.model[-1]
        b1, b2 = head.m[1].bias.view(head.na, -1), head.m[2].bias.view(head.na, -1)
        b1[1, 4] += 9.0
        b1[1, 6] += 6.0
        b2[0, 4] += 9.0
        b2[0, 5] += 6.0
    return model.eval()


# A five-conv detector (strides 8, 16, 32): what torch.compile tests build in seconds where yolov5n takes minutes.
MICRO_CFG = {"nc": 3, "depth_multiple": 1.0, "width_multiple": 1.0,
             "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
             "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]],
                          [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
             "head": [[[2, 3, 4], 1, "Detect", ["nc", "anchors"]]]}


def micro_model(seed: int = 0) -> DetectionModel:
    """:data:`MICRO_CFG`'s model, randomised weights and BatchNorm statistics, eval mode."""
    torch.manual_seed(seed)
    return randomise_weights(DetectionModel(MICRO_CFG), seed)


def micro_cfg_file(folder: Path) -> Path:
    """:data:`MICRO_CFG` as a model YAML in ``folder`` (for train.py --cfg)."""
    f = folder / "micro.yaml"
    f.write_text(yaml.safe_dump(MICRO_CFG))
    return f


def save_model_checkpoint(f: Path, opt: dict | None = None) -> Path:
    """Save :func:`make_model`'s model as one of our checkpoints at ``f`` (``opt``: the run options it records,
    e.g. ``{"imgsz": 128}`` for the trained size); returns ``f``."""
    save_checkpoint(f, model=make_model(), epoch=0, best_fitness=None, hyp=None, opt=opt or {}, names=NAMES)
    return f


def make_image(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8 BGR image: grey background with six random solid squares of side 6-29 px."""
    rng = np.random.default_rng(seed)
    im = np.full((h, w, 3), 90, np.uint8)
    for _ in range(6):
        x, y = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        s = int(rng.integers(6, 30))
        im[y:y + s, x:x + s] = rng.integers(0, 255, 3)
    return im


# ---------------------------------------------------------------- ComputeLoss fixtures (test_loss, test_assign)
IMGSZ = 256  # input px of the loss fixtures below: grids of 32, 16 and 8 cells at strides 8, 16, 32


class FakeDetect(torch.nn.Module):
    """The attributes ComputeLoss reads from a Detect head (anchors in grid cells, as YOLOv5 stores them)."""

    def __init__(self, nc: int, strides=(8, 16, 32)):
        super().__init__()
        anchors = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326],
                                [400, 420, 500, 510, 600, 590]], dtype=torch.float32)[: len(strides)]
        self.nc, self.na, self.nl = nc, 3, len(strides)
        self.stride = torch.tensor(strides, dtype=torch.float32)
        self.register_buffer("anchors", anchors.view(len(strides), 3, 2) / self.stride.view(-1, 1, 1))
        self.conv = torch.nn.Conv2d(1, 1, 1)


class FakeModel(torch.nn.Module):
    """A model whose last module is ``FakeDetect``: all ComputeLoss needs."""

    def __init__(self, nc: int, strides=(8, 16, 32)):
        super().__init__()
        self.model = torch.nn.ModuleList([FakeDetect(nc, strides)])


def make_preds(nc: int, bs: int = 4, strides=(8, 16, 32), seed: int = 0) -> list[torch.Tensor]:
    """Random raw head outputs (bs, na, IMGSZ / stride, IMGSZ / stride, 5 + nc) per level, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bs, 3, IMGSZ // s, IMGSZ // s, 5 + nc, generator=g).requires_grad_() for s in strides]


def make_targets(nc: int, seed: int = 0) -> torch.Tensor:
    """Several boxes per image from 4 px to 250 px at IMGSZ, image 2 left empty, normalised xywh."""
    g = torch.Generator().manual_seed(seed)
    sides = torch.tensor([4, 5, 8, 12, 20, 32, 48, 64, 100, 160, 250, 4, 6, 250, 30, 90], dtype=torch.float32)
    n = sides.numel()
    img = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 0, 1], dtype=torch.float32)
    cls = torch.randint(0, nc, (n,), generator=g).float()
    wh = torch.stack((sides, sides * (0.5 + torch.rand(n, generator=g)).clamp(max=250 / sides)), 1) / IMGSZ
    xy = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
    return torch.cat((img[:, None], cls[:, None], xy, wh), 1)


def yolo_loss(model: torch.nn.Module, hyp=None) -> ComputeLoss:
    """ComputeLoss with the gains YOLOv5's ComputeLoss uses: the hyp's box/obj/cls as they are (YOLOv5's train.py
    scales them in ``model.hyp`` beforehand), so that ours compares with the reference's on the same hyp dict."""
    h = hyp_from_model_or_dict(hyp if hyp is not None else getattr(model, "hyp", None))
    return ComputeLoss(model, h, gains=(h.box, h.obj, h.cls))


def base_hyp(**kw) -> dict:
    """hyp.scratch-low.yaml as a dict, with ``kw`` changed."""
    return {**load_hyp("hyp.scratch-low.yaml").to_dict(), **kw}
