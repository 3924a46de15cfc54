"""``--compile``: a model's forward compiled by ``torch.compile`` (inductor on CPU and CUDA), with bounded
recompiles, the compile time counted, and the compiled artefacts cached between runs.

- :func:`compiled_forward` wraps a module in :class:`CompiledForward`, a callable that pads inference batches to a few
  bucket shapes (so a validation or detection pass compiles a handful of graphs, not one per rectangular shape),
  crops the outputs back, and counts graphs and the seconds spent compiling them. The module itself is never
  replaced: EMA, checkpoints and exports keep seeing the plain module.
- :func:`setup_cache` points inductor's on-disk cache at :func:`compile_cache_dir` before the first compile: a second
  run of the same model, shapes and mode loads the kernels instead of generating and building them again.
- :func:`worth_compiling` says (one line) when a run is too small to pay the compile back; the caller then runs eager.

Imports only torch and the foundation (``utils.downloads`` for the cache root).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch._inductor.config
import torch.nn.functional as F
from torch import nn
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from utils.downloads import weights_cache_dir

LOGGER = logging.getLogger(__name__)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes (--compile MODE)
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # inductor generates code; the others only capture graphs
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # inductor's own variable: when the user sets it, it wins
# Images a run must push through the model before a compile (a few minutes cold on a CPU, ~10 s from the cache)
# can pay back at a ~0.6x step: below this, one line says so and the run stays eager.
MIN_IMAGES = 256
BUCKETS = 4  # rectangular inputs are padded up to multiples of 1/BUCKETS of the long side
MAX_EXACT_SHAPES = 2 * BUCKETS - 1  # a pass with at most this many input shapes runs them unpadded (exact outputs)
PAD_VALUE = 114 / 255  # letterbox grey: the padding looks like the border the letterbox already adds
RECOMPILE_LIMIT = 16  # graphs per compiled forward before dynamo falls back to eager (its default: 8)


@dataclass(frozen=True)
class CompileOptions:
    """What ``--compile`` asks for: torch.compile's ``mode`` and ``backend``, and (inference) the ``batch`` that
    smaller batches are padded to (0: none)."""

    mode: str = "default"
    backend: str = "inductor"
    batch: int = 0


def compile_options(mode: str | None, backend: str = "inductor", batch: int = 0) -> CompileOptions | None:
    """The flags ``--compile [MODE]`` and ``--compile-backend`` as CompileOptions, None without ``--compile``."""
    return None if mode is None else CompileOptions(mode, backend, batch)


def add_compile_arguments(p: argparse.ArgumentParser) -> None:
    """``--compile [MODE]`` and ``--compile-backend``, declared once for train.py, val.py and detect.py."""
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES, metavar="MODE",
                   help="torch.compile the model (inductor; first run compiles for minutes on a CPU, later runs load "
                   "the cache): default, reduce-overhead (CUDA graphs on CUDA) or max-autotune (longer compile)")
    p.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default="inductor", help="--compile's backend: "
                   "inductor generates code; aot_eager and eager only capture the graphs (for debugging)")


def compile_cache_dir() -> Path:
    """Inductor's cache folder: ``$TORCHINDUCTOR_CACHE_DIR`` when set, else ``inductor/`` beside the weights cache
    (``$TINYFOCAL_CACHE/inductor``, else ``$XDG_CACHE_HOME/tinyfocal/inductor``, else ``~/.cache/tinyfocal/inductor``).
    Not created here."""
    own = os.environ.get(CACHE_ENV)
    # importing torch._dynamo sets the variable to inductor's default (a folder under /tmp): that is not a choice
    if own and os.path.abspath(own) != os.path.abspath(default_cache_dir()):
        return Path(own).expanduser()
    return weights_cache_dir().parent / "inductor"


def setup_cache() -> Path:
    """Create :func:`compile_cache_dir` and point inductor at it (it reads the variable when it first writes);
    returns the folder."""
    path = compile_cache_dir().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(path)
    return path


def worth_compiling(n_images: int, what: str) -> bool:
    """False, with one info line, when ``n_images`` (images through the model in the whole run) is too few to pay
    the compile back; ``what`` names the run (e.g. ``'train.py'``)."""
    if n_images >= MIN_IMAGES:
        return True
    LOGGER.info(f"--compile: {what} pushes {n_images} images through the model, fewer than the {MIN_IMAGES} that pay "
                "back a compile: running eager")
    return False


def bucket_side(side: int, long_side: int, stride: int, buckets: int = BUCKETS) -> int:
    """``side`` (input px) rounded up to the next of ``buckets`` stride-aligned steps of ``long_side``, never below
    ``side`` itself: ``bucket_side(200, 640, 32)`` -> 320 (steps of 160 px)."""
    step = math.ceil(long_side / buckets / stride) * stride
    return max(side, min(math.ceil(side / step) * step, math.ceil(long_side / stride) * stride))


@dataclass
class CompileStats:
    """What a compiled forward cost: ``graphs`` compiled (one per input shape) and the ``seconds`` of the calls that
    compiled (the compile and one forward)."""

    graphs: int = 0
    seconds: float = 0.0

    def line(self, what: str, cache: Path | None = None) -> str:
        where = f"; cache {cache}" if cache else ""
        return f"--compile: {what} compiled {self.graphs} graph{'s' * (self.graphs != 1)} in {self.seconds:.1f} s" \
            + where


def _graph_count() -> int:
    """Graphs dynamo has compiled in this process (its global counter)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


class CompiledForward:
    """``module``'s forward compiled with ``torch.compile(dynamic=False)``; called like the module.

    ``pad_batch``/``pad_shape`` (inference only; a training forward must see its own batch, BatchNorm learns from
    it): a (b, 3, h, w) input is padded with letterbox grey to ``pad_batch`` images and to bucket shapes
    (:func:`bucket_side` of ``long_side``), and a DetectionModel eval output ``(pred (b, N, no), [raw (b, na, ny, nx,
    no) per level])`` is cropped back to the input's own grid cells, so one pass compiles at most
    ``2 * BUCKETS - 1`` graphs. ``strides``: the model's per-level strides (px). ``freeze`` (fixed weights, no
    grad: val.py, detect.py, the hub): inductor folds the weights in as constants and uses oneDNN's prepacked
    convolutions with fused activations (yolov5n at 640 px on an AVX2 CPU: forward ~0.75x eager against ~0.8x
    without); never for a module whose weights change (training, the EMA). ``stats`` counts the graphs.
    """

    def __init__(self, module: nn.Module, mode: str = "default", backend: str = "inductor",
                 pad_batch: int = 0, pad_shape: bool = False, long_side: int = 0,
                 strides: Sequence[int] = (), freeze: bool = False):
        self.module, self.freeze = module, freeze
        kw: dict[str, Any] = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
        self.fn: Callable = torch.compile(module, dynamic=False, backend=backend, **kw)
        self.pad_batch, self.pad_shape, self.long_side = pad_batch, pad_shape, long_side
        self.strides = [int(s) for s in strides]
        self.stats = CompileStats()

    def __call__(self, x: torch.Tensor) -> Any:
        b, _, h, w = x.shape
        x = x.contiguous(memory_format=torch.channels_last)  # one layout: a graph is specialised to its strides
        xp = self._pad(x) if (self.pad_batch or self.pad_shape) else x
        n = _graph_count()
        t = time.perf_counter()
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT), \
                torch._inductor.config.patch(freezing=self.freeze):
            out = self.fn(xp)
        if _graph_count() > n:
            self.stats.graphs += _graph_count() - n
            self.stats.seconds += time.perf_counter() - t
        return out if xp is x else crop_output(out, b, h, w, self.strides)

    def pad_for(self, batch: int, shapes: Sequence[tuple[int, int]]) -> CompiledForward:
        """Set up an inference pass whose batches hold at most ``batch`` images of the (h, w) input-px ``shapes``:
        smaller batches are padded to ``batch``; shapes are padded to buckets only when there are more than
        MAX_EXACT_SHAPES of them (else each compiles once and outputs equal the module's). Returns self."""
        self.pad_batch, self.pad_shape = batch, len(set(shapes)) > MAX_EXACT_SHAPES
        self.long_side = max((max(s) for s in shapes), default=0)
        return self

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        stride = max(self.strides)
        long_side = max(self.long_side, h, w)
        hp, wp = (bucket_side(h, long_side, stride), bucket_side(w, long_side, stride)) if self.pad_shape else (h, w)
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, wp - w, 0, hp - h), value=PAD_VALUE)
        if b < self.pad_batch:
            x = torch.cat((x, x.new_full((self.pad_batch - b, *x.shape[1:]), PAD_VALUE)))
        return x.contiguous(memory_format=torch.channels_last)


def crop_output(out: Any, b: int, h: int, w: int, strides: Sequence[int]) -> Any:
    """A DetectionModel eval output of a padded batch, cut back to ``b`` images of ``h`` x ``w`` input px:
    ``(pred (B, N', no), raws)`` -> ``(pred (b, N, no), raws)`` with each level's raw (B, na, ny', nx', no) cut to
    its first ``ceil(h / stride)`` x ``ceil(w / stride)`` cells, the order of ``pred``'s rows (level, anchor, y, x)
    kept. A plain tensor (training output list) is cut on the batch only."""
    if isinstance(out, list):
        return [o[:b] for o in out]
    pred, raws = out
    parts, raws_out, start = [], [], 0
    for s, raw in zip(strides, raws):
        _, na, nyp, nxp, no = raw.shape
        ny, nx = math.ceil(h / s), math.ceil(w / s)
        level = pred[:b, start:start + na * nyp * nxp].reshape(b, na, nyp, nxp, no)[:, :, :ny, :nx]
        parts.append(level.reshape(b, na * ny * nx, no))
        raws_out.append(raw[:b, :, :ny, :nx])
        start += na * nyp * nxp
    return torch.cat(parts, 1), raws_out


def compiled_forward(module: nn.Module, mode: str = "default", backend: str = "inductor", **pad: Any
                     ) -> CompiledForward:
    """:class:`CompiledForward` of ``module`` (``pad``: its padding arguments), with the cache set up first."""
    setup_cache()
    return CompiledForward(module, mode, backend, **pad)


def for_pass(compiled: CompiledForward | None, batch: int, shapes: Sequence[tuple[int, int]],
             n_images: int | None, what: str) -> CompiledForward | None:
    """``compiled`` set up for one inference pass (:meth:`CompiledForward.pad_for`), or None (run eager) when
    ``n_images`` is too few to pay the compile back (:func:`worth_compiling`; None: the caller decided)."""
    if compiled is None or (n_images is not None and not worth_compiling(n_images, what)):
        return None
    return compiled.pad_for(batch, shapes)


def loader_shapes(dataloader: Any, imgsz: int) -> list[tuple[int, int]]:
    """The (h, w) input-px shapes of a LoadImagesAndLabels loader's batches: its rect ``batch_shapes``, else square
    ``imgsz``."""
    ds = getattr(dataloader, "dataset", None)
    shapes = getattr(ds, "batch_shapes", None) if getattr(ds, "rect", False) else None
    return [(int(h), int(w)) for h, w in shapes] if shapes is not None and len(shapes) else [(imgsz, imgsz)]
