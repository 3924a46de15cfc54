"""YOLOv5 v7.0 detection model built from a YAML description: ``Detect`` head, ``DetectionModel`` (alias ``Model``)
and ``parse_model``.

YAML layers are ``[from, number, module, args]``. Module names are looked up in :data:`MODULES` (never evaluated);
string arguments are resolved from a small table ('nc', 'anchors') or parsed as Python literals ('None'), other
strings (e.g. 'nearest') are passed through. Every problem in the YAML raises a ValueError naming the layer.

Units: model inputs and decoded eval outputs are in input pixels; ``Detect.anchors`` is in grid cells
(input pixels / stride of its level) once the model is built.
"""

from __future__ import annotations

import ast
import logging
import math
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from models.common import C3, SPPF, Bottleneck, Concat, Conv
from utils.errors import UserError
from utils.torch_utils import initialize_weights, model_info, scale_img, time_sync

LOGGER = logging.getLogger(__name__)
MODELS_DIR = Path(__file__).resolve().parent
REQUIRED_KEYS = ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head")
OPTIONAL_KEYS = ("ch", "inplace")  # input channels (saved by v7.0 in model.yaml); in-place flag (unused here)


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of ``divisor`` that is >= x."""
    return math.ceil(x / divisor) * divisor


class ModelConfigError(UserError):
    """A model YAML (``--cfg``) that cannot build a model; the message names the file or layer and the problem."""


class Detect(nn.Module):
    """Detection head: one 1x1 conv per level producing ``na * (5 + nc)`` channels.

    Attributes: ``nc``, ``no = nc + 5``, ``nl`` levels, ``na`` anchors per level, ``stride`` (nl,) input pixels per
    grid cell (a non-persistent buffer set by DetectionModel), ``anchors`` (nl, na, 2) buffer (grid cells once the
    model divides by stride), ``m`` the convolutions.

    Train mode: list of nl raw tensors (bs, na, ny, nx, no). Eval mode: ``(pred, raw list)`` with
    pred (bs, sum(na * ny * nx), no) = [x, y, w, h (input pixels), objectness, class scores (sigmoid)], decoded as
    xy = (2 * sigmoid - 0.5 + cell index) * stride and wh = (2 * sigmoid) ** 2 * anchor * stride.
    """

    def __init__(self, nc: int = 80, anchors: list | tuple = (), ch: list | tuple = ()):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.register_buffer("stride", torch.zeros(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self._grids: list[torch.Tensor | None] = [None] * self.nl  # cell offsets, cached per level

    def _grid(self, i: int, nx: int, ny: int, like: torch.Tensor) -> torch.Tensor:
        """(1, 1, ny, nx, 2) cell indices (x, y) minus 0.5, cached while shape, device and dtype stay the same."""
        g = None if torch.compiler.is_compiling() else self._grids[i]  # compiled: a constant, no cache to guard on
        if g is None or g.shape[2:4] != (ny, nx) or g.device != like.device or g.dtype != like.dtype:
            y, x = torch.arange(ny, device=like.device, dtype=like.dtype), torch.arange(nx, device=like.device,
                                                                                        dtype=like.dtype)
            yv, xv = torch.meshgrid(y, x, indexing="ij")
            g = (torch.stack((xv, yv), 2) - 0.5).view(1, 1, ny, nx, 2)
            if not torch.compiler.is_compiling():
                self._grids[i] = g
        return g

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        raw, decoded = [], []
        for i in range(self.nl):
            p = self.m[i](xs[i])
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()  # (bs, na, ny, nx, no)
            raw.append(p)
            if not self.training:
                xy, wh, conf = p.sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + self._grid(i, nx, ny, p)) * self.stride[i]
                wh = (wh * 2) ** 2 * (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2)
                decoded.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * ny * nx, self.no))
        return raw if self.training else (torch.cat(decoded, 1), raw)


# Module names usable in YAML files.
MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv, "Bottleneck": Bottleneck, "C3": C3, "SPPF": SPPF, "Concat": Concat, "Detect": Detect,
    "nn.Upsample": nn.Upsample, "Upsample": nn.Upsample, "nn.BatchNorm2d": nn.BatchNorm2d,
}
CONV_LIKE = (Conv, Bottleneck, C3, SPPF)  # first arg is output channels, scaled by width_multiple


def _resolve_arg(a: Any, names: dict[str, Any]) -> Any:
    """A YAML argument: known names ('nc', 'anchors'), else a Python literal ('None', '2'), else the string."""
    if not isinstance(a, str):
        return a
    if a in names:
        return names[a]
    try:
        return ast.literal_eval(a)
    except (ValueError, SyntaxError):
        return a


def _check_cfg(d: Any, src: str) -> None:
    """Raise ValueError naming ``src`` and the key when the top level of a model dict is invalid."""
    if not isinstance(d, dict):
        raise ModelConfigError(f"{src}: model config must be a mapping, got {type(d).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ModelConfigError(f"{src}: missing key(s) {missing} (required: {list(REQUIRED_KEYS)})")
    unknown = [k for k in d if k not in REQUIRED_KEYS + OPTIONAL_KEYS]
    if unknown:  # e.g. v7.0's 'activation', which it eval()s: not supported
        raise ModelConfigError(f"{src}: unknown key(s) {unknown} (allowed: {list(REQUIRED_KEYS + OPTIONAL_KEYS)})")
    if not isinstance(d["nc"], int) or isinstance(d["nc"], bool) or d["nc"] < 1:
        raise ModelConfigError(f"{src}: 'nc' must be a positive integer, got {d['nc']!r}")
    for k in ("depth_multiple", "width_multiple"):
        if not isinstance(d[k], (int, float)) or d[k] <= 0:
            raise ModelConfigError(f"{src}: {k!r} must be a positive number, got {d[k]!r}")
    a = d["anchors"]
    if isinstance(a, int) and not isinstance(a, bool):
        if a < 1:
            raise ModelConfigError(f"{src}: 'anchors' as a count must be >= 1, got {a}")
    elif not (isinstance(a, (list, tuple)) and a and all(isinstance(r, (list, tuple)) for r in a)
              and all(len(r) == len(a[0]) and len(r) % 2 == 0 and len(r) > 0 for r in a)):
        raise ModelConfigError(f"{src}: 'anchors' must be an int or a list of equal, even-length lists "
                         f"[w1, h1, w2, h2, ...] per level, got {a!r}")
    for k in ("backbone", "head"):
        if not isinstance(d[k], list):
            raise ModelConfigError(f"{src}: {k!r} must be a list of [from, number, module, args] layers")


def _check_from(i: int, f: Any, multi: bool, name: str) -> list[int]:
    """Validate the 'from' field of layer i; return it as a list. -1 is the previous layer (the input for i=0)."""
    fs = f if isinstance(f, list) else [f]
    if multi != isinstance(f, list) or not fs or not all(isinstance(x, int) and not isinstance(x, bool) for x in fs):
        want = "a list of layer indices" if multi else "one layer index"
        raise ModelConfigError(f"layer {i} ({name}): 'from' must be {want}, got {f!r}")
    for x in fs:
        if x != -1 and not -i <= x < i:
            raise ModelConfigError(f"layer {i} ({name}): 'from' index {x} out of range (layers before it: 0..{i - 1})")
    return fs


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Build the layers of model dict ``d`` for ``ch`` input channels; return (layers, sorted indices of layers
    whose outputs later layers read). Each layer gets attributes i (index), f (from), type (class path), np
    (parameter count). Raises ValueError naming the layer for unknown modules, bad indices or arguments."""
    nc, gd, gw, anchors = d["nc"], d["depth_multiple"], d["width_multiple"], d["anchors"]
    na = len(anchors[0]) // 2 if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    names = {"nc": nc, "anchors": anchors}
    LOGGER.info(f"\n{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}")
    layers, save, c2 = [], [], ch[-1]
    for i, spec in enumerate(d["backbone"] + d["head"]):
        if not isinstance(spec, (list, tuple)) or len(spec) != 4:
            raise ModelConfigError(f"layer {i}: expected [from, number, module, args], got {spec!r}")
        f, n, name, args = spec
        if not isinstance(name, str) or name not in MODULES:
            raise ModelConfigError(f"layer {i}: unknown module {name!r} (known: {sorted(MODULES)})")
        m = MODULES[name]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ModelConfigError(f"layer {i} ({name}): 'number' must be a positive integer, got {n!r}")
        if not isinstance(args, list):
            raise ModelConfigError(f"layer {i} ({name}): 'args' must be a list, got {args!r}")
        fs = _check_from(i, f, m in (Concat, Detect), name)
        args = [_resolve_arg(a, names) for a in args]
        n = n_ = max(round(n * gd), 1) if n > 1 else n  # depth gain
        if m in CONV_LIKE:
            if not args or not isinstance(args[0], int) or isinstance(args[0], bool):
                raise ModelConfigError(f"layer {i} ({name}): first argument must be the output channels, got {args!r}")
            c1, c2 = ch[f], args[0]
            if c2 != no:  # v7.0 quirk: a channel count equal to the head width is not scaled
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m is C3:
                args.insert(2, n)  # repeats live inside C3
                n = 1
        elif m is nn.BatchNorm2d:
            args = [ch[f]]
        elif m is Concat:
            c2 = sum(ch[x] for x in fs)
        elif m is Detect:
            if len(args) != 2:
                raise ModelConfigError(f"layer {i} (Detect): args must be [nc, anchors], got {args!r}")
            if isinstance(args[1], int):  # a count: placeholder anchors for AutoAnchor to replace
                args[1] = [list(range(args[1] * 2))] * len(fs)
            if len(args[1]) != len(fs):
                raise ModelConfigError(f"layer {i} (Detect): {len(args[1])} anchor levels but {len(fs)} inputs {f}")
            args.append([ch[x] for x in fs])
        else:
            c2 = ch[f]
        try:
            m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        except (TypeError, ValueError, RuntimeError, IndexError) as e:
            raise ModelConfigError(f"layer {i} ({name}): cannot build from args {args!r}: {e}") from e
        m_.i, m_.f, m_.type = i, f, f"{m.__module__}.{m.__name__}"
        m_.np = sum(x.numel() for x in m_.parameters())
        LOGGER.info(f"{i:>3}{str(f):>18}{n_:>3}{m_.np:10.0f}  {m_.type:<40}{str(args):<30}")
        save.extend(x % i for x in fs if x != -1)
        layers.append(m_)
        if i == 0:
            ch = []
        ch.append(c2)
    if not layers or not isinstance(layers[-1], Detect):
        raise ModelConfigError(f"layer {len(layers) - 1}: the last layer must be Detect")
    return nn.Sequential(*layers), sorted(set(save))


def check_anchor_order(m: Detect) -> None:
    """Reverse ``m.anchors`` (in place) when mean anchor area does not grow with stride, as YOLOv5 v7.0 does."""
    a = m.anchors.prod(-1).mean(-1).view(-1)  # mean area per level
    da, ds = a[-1] - a[0], m.stride[-1] - m.stride[0]
    if da and da.sign() != ds.sign():
        LOGGER.info("Reversing anchor order to match strides")
        m.anchors[:] = m.anchors.flip(0)


def _load_cfg(cfg: str | Path) -> tuple[dict, str]:
    """Read a model YAML given as a path or a bare name in models/ ('yolov5n.yaml' or 'yolov5n')."""
    p = Path(cfg)
    candidates = [p, MODELS_DIR / p.name, MODELS_DIR / f"{p.name}.yaml"]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"model config {str(cfg)!r} not found (tried {[str(c) for c in candidates]})")
    with open(path, encoding="utf-8") as fh:
        try:
            d = yaml.safe_load(fh)
        except yaml.YAMLError as e:
            raise ModelConfigError(f"{path}: invalid YAML: {e}") from e
    return d, str(path)


class DetectionModel(nn.Module):
    """YOLOv5 detection model from a YAML path, a bare name in models/, or a dict.

    ``nc``/``anchors`` override the config (logged). Attributes: ``yaml`` (the dict, with 'ch'), ``yaml_file``,
    ``model`` (nn.Sequential of layers, Detect last), ``save``, ``names`` ({i: 'class{i}'}), ``stride`` (nl,)
    input pixels per cell. Input (bs, ch, h, w) with h, w multiples of the largest stride; outputs as Detect.
    """

    def __init__(self, cfg: str | Path | dict = "yolov5s.yaml", ch: int = 3, nc: int | None = None,
                 anchors: int | list | None = None):
        super().__init__()
        if isinstance(cfg, dict):
            self.yaml, src = deepcopy(cfg), "model dict"
        else:
            self.yaml, src = _load_cfg(cfg)
            self.yaml_file = Path(src).name
        _check_cfg(self.yaml, src)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml["nc"]:
            LOGGER.info(f"Overriding model.yaml nc={self.yaml['nc']} with nc={nc}")
            self.yaml["nc"] = nc
        if anchors:
            LOGGER.info(f"Overriding model.yaml anchors with anchors={anchors}")
            self.yaml["anchors"] = round(anchors) if isinstance(anchors, (int, float)) else anchors
            _check_cfg(self.yaml, src)
        try:
            self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch])
        except ValueError as e:
            raise ModelConfigError(f"{src}: {e}") from e
        self.names = {i: f"class{i}" for i in range(self.yaml["nc"])}

        # Strides from a dry run, then anchors to grid cells. The dry run is an eval-mode forward of a small zero
        # image, so BatchNorm statistics do not change (v7.0's train-mode run is reproduced explicitly below).
        m = self.model[-1]
        s = 128  # >= the largest stride (P7: 128), small so the dry run is cheap
        self.eval()
        with torch.no_grad():
            _, raw = self.forward(torch.zeros(1, ch, s, s), check=f"{src}: ")
        self.train()
        m._grids = [None] * m.nl
        m.stride.copy_(torch.tensor([s / x.shape[-3] for x in raw]))
        check_anchor_order(m)
        with torch.no_grad():
            m.anchors /= m.stride.view(-1, 1, 1)
        self._initialize_biases()
        self._match_v7_batchnorm_state()
        initialize_weights(self)
        self.info(imgsz=None)  # parameter summary; FLOPs on request (info()) to keep construction fast

    @property
    def stride(self) -> torch.Tensor:
        """(nl,) input pixels per grid cell of each Detect level."""
        return self.model[-1].stride

    def forward(self, x: torch.Tensor, augment: bool = False, profile: bool = False, visualize: bool = False,
                check: str | None = None):
        """(bs, ch, h, w) images -> Detect output (see Detect); ``augment``: flip/scale test-time augmentation
        (eval mode, returns (pred, None)); ``profile``: log per-layer time; ``check``: a prefix for errors that
        name the failing layer (used by the build-time dry run)."""
        if visualize:
            raise NotImplementedError("feature visualisation is not supported by this model")
        if augment:
            return self._forward_augment(x)
        return self._forward_once(x, profile=profile, check=check)

    def _forward_once(self, x: torch.Tensor, profile: bool = False, check: str | None = None):
        y: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            t = time_sync() if profile else 0.0
            if check is None:
                x = m(x)
            else:  # dry run: name the layer whose inputs do not fit
                try:
                    x = m(x)
                except (RuntimeError, ValueError, TypeError, IndexError) as e:
                    raise ModelConfigError(f"{check}layer {m.i} ({m.type}, from {m.f}) failed on a dry run: {e}") from e
            if profile:
                LOGGER.info(f"{(time_sync() - t) * 1000:10.2f} ms {m.np:10.0f}  {m.type}")
            y.append(x if m.i in self.save else None)
        return x

    def _forward_augment(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Test-time augmentation as YOLOv5 v7.0: scales (1, 0.83, 0.67), the middle one flipped left-right;
        predictions mapped back to input pixels, the large-object tail of scale 1 and small-object head of scale
        0.67 dropped."""
        h, w = x.shape[-2:]
        gs = int(self.stride.max())
        preds = []
        for scale, flip in ((1.0, False), (0.83, True), (0.67, False)):
            xi = scale_img(x.flip(3) if flip else x, scale, gs=gs)
            p = self._forward_once(xi)[0]
            xy_wh = p[..., :4] / scale
            if flip:
                xy_wh = torch.cat((w - xy_wh[..., :1], xy_wh[..., 1:]), -1)
            preds.append(torch.cat((xy_wh, p[..., 4:]), -1))
        nl = self.model[-1].nl
        g = sum(4**k for k in range(nl))  # grid points per smallest-level cell
        preds[0] = preds[0][:, : -(preds[0].shape[1] // g)]  # drop the coarsest level of scale 1
        preds[-1] = preds[-1][:, (preds[-1].shape[1] // g) * 4 ** (nl - 1):]  # drop the finest level of scale 0.67
        return torch.cat(preds, 1), None

    def _initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """Detect bias priors (RetinaNet section 3.3): objectness log(8 / (640 / s) ** 2) (8 objects per 640 image),
        classes log(0.6 / (nc - 0.99999)), or log of class frequencies ``cf`` (nc,) when given."""
        m = self.model[-1]
        with torch.no_grad():
            for mi, s in zip(m.m, m.stride):
                b = mi.bias.view(m.na, -1)  # (na, no) view into the parameter
                b[:, 4] += math.log(8 / (640 / s) ** 2)  # float32 arithmetic, as v7.0
                b[:, 5:5 + m.nc] += math.log(0.6 / (m.nc - 0.99999)) if cf is None else torch.log(cf / cf.sum())

    def _match_v7_batchnorm_state(self) -> None:
        """Give a fresh model the BatchNorm statistics a fresh v7.0 model has, so that equal seeds give equal
        state_dicts. v7.0 finds strides with a train-mode forward of a zero image before setting momentum 0.03:
        every BatchNorm then sees batch mean 0 and variance 0 (the first Conv has no bias, BN biases start at 0 and
        SiLU(0) = 0), i.e. one update at momentum 0.1: running_var 1 -> 0.9, running_mean stays 0, one batch counted.
        """
        with torch.no_grad():
            for bn in self.modules():
                if isinstance(bn, nn.BatchNorm2d):
                    bn.running_var.mul_(0.9)
                    bn.num_batches_tracked += 1

    def fuse(self) -> DetectionModel:
        """Fold every Conv's BatchNorm into its convolution (for inference; eval outputs unchanged)."""
        LOGGER.info("Fusing layers...")
        for m in self.model.modules():
            if isinstance(m, Conv):
                m.fuse()
        self.info()
        return self

    def info(self, verbose: bool = False, imgsz: int | list[int] | None = 640) -> tuple[int, int, int, float]:
        """Log and return (n_layers, n_params, n_grads, GFLOPs at imgsz; 0.0 if imgsz is None)."""
        return model_info(self, verbose, imgsz)


Model = DetectionModel  # YOLOv5 name
