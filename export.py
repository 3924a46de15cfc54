"""Export a trained detector to ONNX and check it against PyTorch.

Usage:
    python export.py --weights runs/train/exp/weights/best.pt    # -> best.onnx, 1x3xSxS at the trained size S
    python export.py --weights best.pt --imgsz 640 --dynamic --opset 17              # batch/height/width dynamic

The model is rebuilt from the checkpoint (ours or official YOLOv5 v7.0), Conv+BN fused, and exported with
PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it runs offline with no extra
package (the dynamo exporter needs ``onnxscript``) and handles the Detect head's shape-dependent grids with dynamic
axes. The single output ``output0`` is the eval ``pred`` (batch, N, 5 + nc) ``[x, y, w, h, obj, cls...]`` in input
pixels. The file passes ``onnx.checker``, carries ``names``, ``stride``, ``nc``, ``imgsz`` (and ``hyp``,
``train_imgsz`` when known) as JSON in its ``metadata_props`` (read back by ``utils.inference.OnnxBackend``), and
its ONNX Runtime outputs must match PyTorch's: ``max |onnx - torch| / max(1, |torch|) <= --atol`` (1e-4: absolute
for scores, relative for pixel coordinates), else the export fails with the figures. ``--imgsz`` defaults to the
size the checkpoint was trained at (640 when not recorded). A user error (missing weights, not a checkpoint, bad
flags) is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.atomic import atomic_write_bytes  # noqa: E402
from utils.checkpoints import load_model  # noqa: E402
from utils.cli import ArgumentParser, UsageError, check_args, run_main  # noqa: E402
from utils.inference import default_imgsz  # noqa: E402

LOGGER = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The exported model is invalid or does not reproduce PyTorch's outputs."""


class PredOnly(nn.Module):
    """Wraps a DetectionModel so that its forward returns the eval ``pred`` tensor only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def compare(ref: np.ndarray, out: np.ndarray) -> float:
    """max |out - ref| / max(1, |ref|): absolute for values <= 1 (scores), relative for pixel coordinates."""
    if ref.shape != out.shape:
        raise ExportError(f"ONNX output shape {out.shape} differs from PyTorch's {ref.shape}")
    return float((np.abs(out - ref) / np.maximum(1.0, np.abs(ref))).max()) if ref.size else 0.0


def _metadata(model: nn.Module, imgsz: tuple[int, int]) -> dict[str, str]:
    meta = {"names": json.dumps({str(k): v for k, v in model.names.items()}),
            "stride": json.dumps([float(s) for s in model.stride]), "nc": json.dumps(int(model.yaml["nc"])),
            "imgsz": json.dumps(list(imgsz))}
    if getattr(model, "train_imgsz", None):
        meta["train_imgsz"] = json.dumps(int(model.train_imgsz))
    hyp = getattr(model, "hyp", None)
    if hyp is not None:
        try:
            meta["hyp"] = json.dumps(hyp.to_dict() if hasattr(hyp, "to_dict") else dict(hyp))
        except (TypeError, ValueError):
            LOGGER.warning("hyperparameters are not JSON-serialisable: not stored in the ONNX metadata")
    return meta


def run(weights: str | Path, imgsz: int | list[int] | tuple[int, int] | None = None, batch_size: int = 1,
        dynamic: bool = False, opset: int = 17, output: str | Path | None = None, atol: float = 1e-4,
        seed: int = 0) -> dict:
    """Export ``weights`` to ONNX; return {'file': Path, 'max_diff': {input shape: diff}, 'metadata': dict}.

    ``imgsz``: (h, w) or one side in input px; None: the size the checkpoint was trained at (else 640).
    Raises FileNotFoundError / CheckpointError for bad weights (via load_model), ValueError (UsageError) for bad
    arguments and ExportError when the checker fails or the outputs differ by more than ``atol`` (see
    :func:`compare`).
    """
    import onnx
    import onnxruntime as ort

    check_args(opset=(opset >= 17, f"must be >= 17, got {opset}"),
               batch_size=(batch_size >= 1, f"must be >= 1, got {batch_size}"),
               imgsz=(imgsz is None or isinstance(imgsz, int) or len(imgsz) in (1, 2),
                      f"takes one or two sizes (h w), got {imgsz}"))
    model = load_model(weights, "cpu", fuse=True)
    if imgsz is None:
        imgsz = default_imgsz(None, getattr(model, "train_imgsz", None))
    hw = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz) * (2 // len(imgsz))
    gs = int(model.stride.max())
    if any(s % gs or s <= 0 for s in hw):
        raise UsageError(f"--imgsz {imgsz}: sizes must be positive multiples of the model stride {gs}")
    f = Path(output) if output else Path(weights).with_suffix(".onnx")
    wrapper = PredOnly(model).eval()
    detect = model.model[-1]
    detect._grids = [None] * detect.nl  # cached grids would be traced as constants
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size, 3, *hw), generator=gen)
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}}
    tmp = f.with_name(f".{f.name}.export.tmp")
    LOGGER.info(f"ONNX: exporting {weights} with torch {torch.__version__} (TorchScript exporter, opset {opset})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on the grid cache and the exporter's deprecation notice
        torch.onnx.export(wrapper, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=["output0"], dynamic_axes=dynamic_axes if dynamic else None,
                          do_constant_folding=True)
    detect._grids = [None] * detect.nl
    try:
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    meta = _metadata(model, hw)
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{f}: onnx.checker rejected the exported model: {e}") from e
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    shapes = [x.shape] + ([(batch_size + 1, 3, hw[0] + gs, hw[1] + 2 * gs)] if dynamic else [])
    diffs = {}
    for shape in shapes:
        xi = torch.rand(shape, generator=gen)
        with torch.no_grad():
            ref = wrapper(xi).numpy()
        out = session.run(None, {"images": xi.numpy()})[0]
        diffs[tuple(shape)] = d = compare(ref, out)
        LOGGER.info(f"ONNX: input {tuple(shape)}: max |onnx - torch| / max(1, |torch|) = {d:.2e} "
                    f"(max absolute difference {float(np.abs(out - ref).max()) if ref.size else 0.0:.2e})")
        if not d <= atol:
            raise ExportError(f"{f}: ONNX Runtime output differs from PyTorch by {d:.3e} > {atol:g} on input "
                              f"{tuple(shape)}: not saved")
    atomic_write_bytes(f, data)
    LOGGER.info(f"ONNX: saved {f} ({len(data) / 1e6:.1f} MB), outputs match PyTorch within {atol:g}")
    return {"file": f, "max_diff": diffs, "metadata": meta}


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, required=True, help="checkpoint .pt (ours or official YOLOv5 v7.0)")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=None,
                   help="image (h, w) or one side, px; default: the size the weights were trained at (else 640)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width axes")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--output", type=str, default=None, help="output file (default: weights with .onnx)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed ONNX/PyTorch difference")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line: 0 on success, 1 after printing a user error (or a failed export check) as one line on stderr."""
    def call() -> None:
        opt = get_args_parser().parse_args(argv)
        run(opt.weights, opt.imgsz, opt.batch_size, opt.dynamic, opt.opset, opt.output, opt.atol)

    return run_main("export.py", call, errors=(ExportError,))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
