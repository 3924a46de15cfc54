"""PyTorch helpers: device selection, seeding, Conv+BN fusion, model summary, EMA of weights, optimiser groups.

Nothing here reads environment variables at import time or keeps mutable module state.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from copy import deepcopy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UsageError

LOGGER = logging.getLogger(__name__)


def select_device(device: str | int | torch.device | None = "", batch_size: int = 0) -> torch.device:
    """Return the torch device for ``device``: '' or None (first CUDA device if available, else CPU), 'cpu', 'mps',
    '0' / 0 / 'cuda:0' (that CUDA device) or '0,1' (several devices: returns the first; batch_size must divide).

    Raises ValueError when a CUDA device is requested but unavailable, or the text is not understood.
    """
    if isinstance(device, torch.device):
        return device
    text = str("" if device is None else device).strip().lower().replace("cuda:", "").replace(" ", "")
    if text == "cuda":
        text = "0"
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("device 'mps' requested but torch.backends.mps.is_available() is False; use 'cpu'")
        return torch.device("mps")
    if text == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    ids = text.split(",")
    if not all(i.isdigit() for i in ids):
        raise UsageError(f"device {device!r} not understood: use '', 'cpu', 'mps', '0' or '0,1,...'")
    if not torch.cuda.is_available():
        raise UsageError(f"CUDA device {device!r} requested but CUDA is not available "
                         f"(torch {torch.__version__}); use device 'cpu'")
    n_visible = torch.cuda.device_count()
    bad = [i for i in ids if int(i) >= n_visible]
    if bad:
        raise UsageError(f"CUDA device(s) {','.join(bad)} requested but only {n_visible} visible "
                         f"(use 0..{n_visible - 1})")
    if len(ids) > 1 and batch_size > 0 and batch_size % len(ids):
        raise UsageError(f"batch size {batch_size} is not a multiple of the {len(ids)} devices {text!r}")
    return torch.device(f"cuda:{ids[0]}")


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices). ``deterministic`` also asks torch for deterministic kernels
    (as YOLOv5 v7.0 does; non-deterministic CUDA ops then warn instead of failing)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        os.environ["PYTHONHASHSEED"] = str(seed)


def time_sync() -> float:
    """Wall time in seconds after waiting for queued CUDA work (so timings include the GPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def is_parallel(model: nn.Module) -> bool:
    """True for DataParallel / DistributedDataParallel wrappers."""
    return isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel))


def de_parallel(model: nn.Module) -> nn.Module:
    """The wrapped module of a DP/DDP model or of a ``torch.compile`` wrapper (``_orig_mod``; either order), else
    the model itself: what EMA, checkpoints and exports must hold."""
    model = getattr(model, "_orig_mod", model)
    model = model.module if is_parallel(model) else model
    return getattr(model, "_orig_mod", model)


def initialize_weights(model: nn.Module) -> None:
    """YOLOv5 v7.0 settings: BatchNorm2d eps=1e-3, momentum=0.03; activations in place. Conv init left default."""
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.eps, m.momentum = 1e-3, 0.03
        elif type(m) in (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU):
            m.inplace = True


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d (with bias, no gradient) equal to ``bn(conv(x))`` in eval mode:
    W' = W * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    fused = fused.requires_grad_(False).to(device=conv.weight.device, dtype=conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (c2,)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    b_conv = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((b_conv - bn.running_mean) * scale + bn.bias)
    return fused


def count_gflops(model: nn.Module, imgsz: int | tuple[int, int] | list[int] = 640) -> float:
    """GFLOPs (2 x multiply-accumulates, as YOLOv5 reports) of one forward of a (1, ch, h, w) image, counted with
    forward hooks on Conv2d and Linear layers at a small multiple of the stride and scaled by area. BatchNorm,
    activations, pooling and additions are not counted. Train/eval mode is restored; returns 0.0 on failure.
    """
    h, w = (imgsz, imgsz) if isinstance(imgsz, (int, float)) else imgsz
    try:
        p = next(model.parameters())
    except StopIteration:
        return 0.0
    stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    ch = model.yaml.get("ch", 3) if isinstance(getattr(model, "yaml", None), dict) else 3
    im = torch.zeros((1, ch, stride, stride), device=p.device, dtype=p.dtype)
    macs = [0]

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            macs[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:  # Linear
            macs[0] += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()  # no BatchNorm statistic updates
        with torch.no_grad():
            model(im)
    except Exception as e:  # a summary must not break training
        LOGGER.debug(f"FLOP count failed: {e}")
        return 0.0
    finally:
        model.train(was_training)
        for hnd in handles:
            hnd.remove()
    return 2 * macs[0] / 1e9 * (h / stride) * (w / stride)


def model_info(model: nn.Module, verbose: bool = False, imgsz: int | list[int] | None = 640,
               ) -> tuple[int, int, int, float]:
    """Log a one-line summary (and each parameter if ``verbose``); return (n_layers, n_params, n_grads, gflops)
    where n_layers counts all modules and gflops is at an ``imgsz`` input (see count_gflops; 0.0 and not
    computed when imgsz is None or 0)."""
    params = list(model.parameters())
    n_p = sum(x.numel() for x in params)
    n_g = sum(x.numel() for x in params if x.requires_grad)
    n_l = len(list(model.modules()))
    if verbose:
        LOGGER.info(f"{'layer':>5} {'name':>40} {'gradient':>9} {'parameters':>12} {'shape':>20} {'mu':>10} "
                    f"{'sigma':>10}")
        for i, (name, p) in enumerate(model.named_parameters()):
            sd = p.std().item() if p.numel() > 1 else 0.0
            LOGGER.info(f"{i:5d} {name:>40} {p.requires_grad!s:>9} {p.numel():12d} {str(list(p.shape)):>20} "
                        f"{p.mean().item():10.3g} {sd:10.3g}")
    gflops = count_gflops(model, imgsz) if imgsz else 0.0
    name = getattr(model, "yaml_file", None) or "Model"
    fs = f", {gflops:.1f} GFLOPs" if imgsz else ""
    LOGGER.info(f"{name} summary: {n_l} layers, {n_p} parameters, {n_g} gradients{fs}")
    return n_l, n_p, n_g, gflops


def scale_img(img: torch.Tensor, ratio: float = 1.0, same_shape: bool = False, gs: int = 32) -> torch.Tensor:
    """Resize a (bs, c, h, w) batch by ``ratio`` (bilinear), then pad right/bottom with 0.447 up to the next multiple
    of ``gs`` of the scaled size, or back to (h, w) when ``same_shape`` (YOLOv5 v7.0 test-time augmentation)."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    s = (int(h * ratio), int(w * ratio))
    img = F.interpolate(img, size=s, mode="bilinear", align_corners=False)
    if not same_shape:
        h, w = (math.ceil(x * ratio / gs) * gs for x in (h, w))
    return F.pad(img, [0, w - s[1], 0, h - s[0]], value=0.447)


def copy_attr(a: Any, b: Any, include: tuple | list = (), exclude: tuple | list = ()) -> None:
    """Copy the public instance attributes of ``b`` to ``a`` (only ``include`` if given; never ``exclude``)."""
    for k, v in b.__dict__.items():
        if (include and k not in include) or k.startswith("_") or k in exclude:
            continue
        setattr(a, k, v)


def _norm_types() -> tuple[type, ...]:
    """All normalisation layer classes of torch.nn (BatchNorm*, LayerNorm, GroupNorm, InstanceNorm*, ...)."""
    return tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))


def smart_optimizer(model: nn.Module, name: str = "Adam", lr: float = 0.001, momentum: float = 0.9,
                    decay: float = 1e-5) -> torch.optim.Optimizer:
    """Optimiser with YOLOv5 v7.0's three parameter groups, in this order:
    0) biases (no weight decay), 1) other weights (weight_decay=decay), 2) normalisation-layer weights (no decay).

    ``name``: 'SGD' (Nesterov), 'Adam', 'AdamW' (betas (momentum, 0.999)) or 'RMSProp'; ValueError otherwise.
    """
    biases, weights, norm_weights = [], [], []
    norm = _norm_types()
    for module in model.modules():
        for p_name, p in module.named_parameters(recurse=False):
            if p_name == "bias":
                biases.append(p)
            elif p_name == "weight" and isinstance(module, norm):
                norm_weights.append(p)
            else:
                weights.append(p)
    key = name.lower()
    if key == "adam":
        optimizer = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif key == "adamw":
        optimizer = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif key == "rmsprop":
        optimizer = torch.optim.RMSprop(biases, lr=lr, momentum=momentum)
    elif key == "sgd":
        optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    else:
        raise UsageError(f"optimizer {name!r} not supported: use 'SGD', 'Adam', 'AdamW' or 'RMSProp'")
    optimizer.add_param_group({"params": weights, "weight_decay": decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    LOGGER.info(f"optimizer: {type(optimizer).__name__}(lr={lr}) with parameter groups {len(norm_weights)} "
                f"weight(decay=0.0), {len(weights)} weight(decay={decay}), {len(biases)} bias")
    return optimizer


class ModelEMA:
    """Exponential moving average of a model's state_dict (parameters and floating buffers), YOLOv5 v7.0 maths:
    after update number u, ``ema = d * ema + (1 - d) * model`` with ``d = decay * (1 - exp(-u / tau))``
    (a ramp that lets early updates move the average quickly). The copy ``self.ema`` is kept in eval mode.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = deepcopy(de_parallel(model)).eval()
        self.updates = updates
        self.decay_max = decay
        self.tau = tau
        for p in self.ema.parameters():
            p.requires_grad_(False)

    def decay(self, updates: int) -> float:
        """Averaging weight of the old value at update number ``updates``."""
        return self.decay_max * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the current weights of ``model`` (unwrapped from DP/DDP) into the average."""
        self.updates += 1
        d = self.decay(self.updates)
        msd = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)

    def update_attr(self, model: nn.Module, include: tuple | list = (),
                    exclude: tuple | list = ("process_group", "reducer")) -> None:
        """Copy non-tensor attributes such as ``names``, ``nc``, ``hyp`` from ``model`` to the EMA copy."""
        copy_attr(self.ema, model, include, exclude)


# --- AutoBatch --------------------------------------------------------------------------------------------------------
AUTOBATCH_SIZES = (1, 2, 4, 8, 16)  # batch sizes profiled by autobatch


def fit_batch_size(sizes: list[int], mem_bytes: list[float], budget_bytes: float) -> int | None:
    """Largest batch size whose memory fits ``budget_bytes``, from a straight line fitted through the memory
    ``mem_bytes[i]`` measured at batch ``sizes[i]`` (intercept: the model, slope: one image's activations and
    gradients). None when the fit is unusable (fewer than 2 points, a slope <= 0, or not even a batch of 1 fits)."""
    if len(sizes) < 2:
        return None
    slope, intercept = np.polyfit(np.asarray(sizes, float), np.asarray(mem_bytes, float), deg=1)
    if slope <= 1e-9 * max(mem_bytes):  # flat (or falling): no per-image cost measured, nothing to extrapolate
        return None
    b = math.floor((budget_bytes - intercept) / slope + 1e-6)  # + 1e-6: an exact fit's 17.999... is 18
    return b if b >= 1 else None


def profile_memory(model: nn.Module, imgsz: int, device: torch.device, sizes: tuple[int, ...] = AUTOBATCH_SIZES,
                   ) -> tuple[list[int], list[float]]:
    """Peak CUDA memory (bytes above what was allocated before) of one training step (forward + backward, AMP) of a
    copy of ``model`` at each batch size of zeros of ``imgsz`` px; stops at the first size that runs out of memory.
    The model itself and every random generator are left untouched."""
    m = deepcopy(de_parallel(model)).to(device).train()
    base = torch.cuda.memory_allocated(device)
    done, mems = [], []
    for b in sizes:
        try:
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.zeros(b, 3, imgsz, imgsz, device=device)
            with torch.autocast("cuda"):
                y = m(x)
            sum(yi.float().sum() for yi in (y if isinstance(y, list | tuple) else [y])).backward()
            mems.append(float(torch.cuda.max_memory_allocated(device) - base))
            done.append(b)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            m.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    del m
    torch.cuda.empty_cache()
    return done, mems


def autobatch(model: nn.Module, imgsz: int, device: torch.device, fraction: float = 0.6, default: int = 16) -> int:
    """``--batch-size -1``: the batch size that uses about ``fraction`` of the free CUDA memory (measured with
    :func:`profile_memory`, fitted with :func:`fit_batch_size`); ``default`` on a CPU/MPS device or when the
    measurement is unusable, with one line saying why."""
    if device.type != "cuda":
        LOGGER.warning(f"AutoBatch: --batch-size -1 needs a CUDA device; training on {device.type} with the default "
                       f"batch size {default}")
        return default
    free, total = torch.cuda.mem_get_info(device)
    sizes, mems = profile_memory(model, imgsz, device)
    b = fit_batch_size(sizes, mems, free * fraction)
    if b is None:
        LOGGER.warning(f"AutoBatch: could not fit memory {mems} at batch sizes {sizes}; using batch size {default}")
        return default
    b = min(b, 1024)
    LOGGER.info(f"AutoBatch: batch size {b} for {device} at {imgsz} px: {free / 2**30:.1f} of {total / 2**30:.1f} GiB "
                f"free, using {fraction:.0%} of it")
    return b
