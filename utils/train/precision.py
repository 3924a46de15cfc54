"""Training precision (``train.py --amp {auto,on,off}``): which autocast dtype the forward pass runs in, and whether
the loss needs a GradScaler.

- CUDA: fp16 autocast + GradScaler (YOLOv5's AMP). fp16's 5-bit exponent underflows small gradients, hence the
  loss scaling.
- CPU with native bf16 arithmetic (x86 AVX512-BF16 or AMX-BF16): bf16 autocast and no scaler (bf16 has fp32's
  exponent range, so gradients do not underflow).
- Anything else: fp32. On a CPU without those instructions bf16 autocast still works, but oneDNN emulates it:
  a yolov5n training step measured ~9x slower than fp32 on an AVX2-only CPU, so ``auto`` never picks it there and
  ``on`` falls back to fp32 with one warning line.

Only the model's forward pass runs under autocast: parameters, optimiser, EMA, checkpoints and validation stay
fp32 (validation keeps YOLOv5's fp16 on CUDA), and the loss is computed in fp32 on the head outputs cast back to
float, so ComputeLoss's numerics do not depend on the precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from utils.errors import UsageError

AMP_CHOICES = ("auto", "on", "off")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions with native bf16 dot products (oneDNN's fast path)


class Precision(NamedTuple):
    """How one training run computes: printed once at start and saved as ``precision: <label>`` in opt.yaml."""

    label: str  # "fp16+GradScaler" | "bf16" | "fp32"
    dtype: torch.dtype  # autocast dtype of the forward pass; torch.float32 means no autocast
    use_scaler: bool  # GradScaler on (fp16 only)
    warning: str | None = None  # one line to show when --amp on could not be honoured

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """The context the forward pass runs in: ``torch.autocast`` in ``dtype``, or nothing for fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.dtype)


FP32 = Precision("fp32", torch.float32, use_scaler=False)
FP16 = Precision("fp16+GradScaler", torch.float16, use_scaler=True)
BF16 = Precision("bf16", torch.bfloat16, use_scaler=False)


def choose_precision(device_type: str, amp: str, cpu_has_bf16: bool) -> Precision:
    """The precision for ``--amp amp`` on a ``device_type`` ('cuda', 'cpu', 'mps', ...) device.

    ``off`` -> fp32 everywhere; ``auto`` and ``on`` -> fp16 + GradScaler on CUDA, bf16 on a CPU with native bf16
    (``cpu_has_bf16``, see :func:`cpu_bf16_supported`), else fp32; ``on`` then carries a one-line warning saying
    why. Raises ValueError for an unknown ``amp``.
    """
    if amp not in AMP_CHOICES:
        raise UsageError(f"--amp {amp!r}: expected one of {', '.join(AMP_CHOICES)}")
    if amp == "off":
        return FP32
    if device_type == "cuda":
        return FP16
    if device_type == "cpu" and cpu_has_bf16:
        return BF16
    if amp == "on":
        why = ("this CPU has no bf16 support (no AVX512-BF16/AMX)" if device_type == "cpu"
               else f"no mixed precision on {device_type} devices")
        return FP32._replace(warning=f"train.py: --amp on: {why}; training in fp32")
    return FP32


def cpu_bf16_supported(capabilities: Mapping[str, Any] | None = None, cpuinfo: str | None = None) -> bool:
    """True when this CPU has native bf16 arithmetic and PyTorch can use it for convolutions.

    Rule: oneDNN (``torch.backends.mkldnn``) is available and the CPU reports one of ``BF16_FLAGS`` (AVX512-BF16 or
    AMX-BF16). The flags come from ``capabilities`` or the ``flags`` lines of ``cpuinfo`` text when either is
    given, else from ``torch.cpu.get_capabilities()`` (recent PyTorch), else from /proc/cpuinfo (none on macOS or
    Windows: fp32 there). ``torch.backends.cpu.get_cpu_capability()`` ("AVX2", "AVX512") cannot tell, and
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` (private) also answers True on plain AVX-512 CPUs, where
    oneDNN emulates bf16.
    ARM bf16 extensions are not considered (not measured): fp32.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    if capabilities is None and cpuinfo is None and hasattr(torch.cpu, "get_capabilities"):
        capabilities = torch.cpu.get_capabilities()
    if capabilities is not None:
        return any(bool(capabilities.get(f, False)) for f in BF16_FLAGS)
    return cpuinfo_has_bf16(_read_cpuinfo() if cpuinfo is None else cpuinfo)


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """True when a ``flags`` line of /proc/cpuinfo text names one of ``BF16_FLAGS``."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and set(value.split()) & set(BF16_FLAGS):
            return True
    return False


def _read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:  # not Linux, or not readable: no evidence of bf16
        return ""
