"""Building blocks of YOLOv5 v7.0 detection models: Conv, Bottleneck, C3, SPPF, Concat.

Attribute names follow YOLOv5 v7.0 so that state_dict keys are identical (``conv``, ``bn``, ``cv1``, ``cv2``,
``cv3``, ``m``): v7.0 checkpoints load with ``strict=True``. All blocks work on feature maps of shape
(bs, channels, height, width); none of them changes units, only the stride of the map (``s`` in Conv).
"""

from __future__ import annotations

import torch
from torch import nn

from utils.torch_utils import fuse_conv_and_bn

# YOLOv5 v7.0 BatchNorm settings (its initialize_weights sets them after construction; we set them at once).
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(k: int | list[int], p: int | list[int] | None = None, d: int = 1) -> int | list[int]:
    """Padding that keeps the spatial size at stride 1 ('same'), for kernel ``k`` (int or per-axis list) and
    dilation ``d``. An explicit ``p`` is returned unchanged."""
    if d > 1:  # effective kernel size of a dilated kernel
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU. (bs, c1, h, w) -> (bs, c2, ceil(h/s), ceil(w/s)) with auto padding.

    ``act``: True for SiLU, an nn.Module to use it, anything else for no activation.
    After :meth:`fuse` the BatchNorm is folded into the convolution and :meth:`forward_fuse` runs instead.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        """Forward once the BatchNorm has been folded into ``self.conv``."""
        return self.act(self.conv(x))

    def fuse(self) -> Conv:
        """Fold the BatchNorm into the convolution (in place; eval-mode outputs unchanged) and switch the forward."""
        if hasattr(self, "bn"):
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            del self.bn
            self.forward = self.forward_fuse
        return self


class Bottleneck(nn.Module):
    """1x1 Conv to ``c2 * e`` channels, 3x3 Conv back to ``c2``, plus the input when ``shortcut`` and c1 == c2."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convolutions: two 1x1 branches of ``c2 * e`` channels, ``n`` Bottlenecks on the first,
    concatenated and mixed by a 1x1 Conv to ``c2``. Spatial size unchanged."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained k x k stride-1 max-pools (equal to SPP with k, 2k-1, 3k-2)
    concatenated with their input. (bs, c1, h, w) -> (bs, c2, h, w)."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (1 = channels)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)
