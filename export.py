"""Export a trained detector to ONNX (fp32 or int8), TorchScript, OpenVINO or a YOLOv5 state_dict, checked against
PyTorch.

Usage:
    python export.py --weights runs/train/exp/weights/best.pt    # -> best.onnx, 1x3xSxS at the trained size S
    python export.py --weights best.pt --imgsz 640 --dynamic --opset 17              # batch/height/width dynamic
    python export.py --weights best.pt --include onnx --int8 --data data/synthetic-tiny.yaml   # + best-int8.onnx
    python export.py --weights best.pt --include torchscript openvino yolov5-pt

Formats (``--include``, any combination; files next to ``--output``, default next to the weights):
  onnx         best.onnx: PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, offline,
               no onnxscript), checked by ``onnx.checker`` and against PyTorch within ``--atol``.
               ``--int8 --data D.yaml`` adds best-int8.onnx: ONNX Runtime static quantisation (QDQ, per-channel
               int8 weights, uint8 activations calibrated on ``--int8-images`` train images of D.yaml
               pre-processed as detect.py does; the Detect head's convolutions and decode stay float, see
               utils/infer/export_int8.py). Run it like any .onnx (val.py, detect.py, Detector).
  torchscript  best.torchscript: ``torch.jit.trace``, loadable with ``torch.jit.load`` alone; metadata in its
               ``config.txt`` extra file (JSON), as YOLOv5 writes it.
  openvino     best_openvino_model/{best.xml, best.bin, best.yaml}: OpenVINO IR (fp32) converted from the ONNX
               graph with ``openvino.convert_model``; needs ``pip install openvino``.
  yolov5-pt    best-yolov5.pt: a plain state_dict (tensors only) that YOLOv5 v7.0's ``Model(cfg)`` loads with
               ``strict=True``, and best-yolov5.yaml: that cfg plus ``names`` and ``stride``.

The model is rebuilt from the checkpoint (ours or official YOLOv5 v7.0) and Conv+BN fused (not for yolov5-pt). The
single output ``output0`` is the eval ``pred`` (batch, N, 5 + nc) ``[x, y, w, h, obj, cls...]`` in input pixels.
Every format carries the metadata YOLOv5 v7.0's DetectMultiBackend reads (``stride`` as an int, ``names`` as a dict:
a Python literal in ONNX ``metadata_props``) plus ours (``strides``, ``nc``, ``imgsz``, ``train_imgsz``, ``hyp``),
read back by ``utils.infer.detector.load_backend``. fp32 outputs must match PyTorch's: ``max |export - torch| /
max(1, |torch|) <= --atol`` (1e-4: absolute for scores, relative for pixel coordinates; OpenVINO: 10x that), else
the export fails with the figures; int8 differences are reported, not checked. ``--imgsz`` defaults to the size
the checkpoint was trained at (640 when not recorded). A user error (missing weights, not a checkpoint, bad flags,
``--int8`` without ``--data``, openvino not installed) is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.prepare import check_dataset  # noqa: E402
from utils.atomic import atomic_write_bytes  # noqa: E402
from utils.checkpoints import load_model  # noqa: E402
from utils.cli import ArgumentParser, check_args, run_main  # noqa: E402
from utils.errors import UsageError  # noqa: E402
from utils.infer.backends import OpenVinoBackend, TorchScriptBackend, import_openvino  # noqa: E402
from utils.infer.detector import default_imgsz  # noqa: E402
from utils.infer.export_formats import (  # noqa: E402
    export_metadata,
    export_openvino,
    export_torchscript,
    export_yolov5_pt,
    onnx_props,
)

LOGGER = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript", "openvino", "yolov5-pt")
OPENVINO_ATOL_FACTOR = 10  # OpenVINO's CPU kernels reorder fp32 sums more than ONNX Runtime's


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
        raise ExportError(f"exported output shape {out.shape} differs from PyTorch's {ref.shape}")
    return float((np.abs(out - ref) / np.maximum(1.0, np.abs(ref))).max()) if ref.size else 0.0


def _export_onnx(wrapper: nn.Module, x: torch.Tensor, opset: int, dynamic: bool, f: Path) -> bytes:
    """The ONNX graph of ``wrapper`` traced on ``x`` (a temporary file next to ``f``), serialised."""
    import onnx

    detect = wrapper.model.model[-1]
    detect._grids = [None] * detect.nl  # cached grids would be traced as constants
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}}
    tmp = f.with_name(f".{f.name}.export.tmp")
    LOGGER.info(f"ONNX: exporting with torch {torch.__version__} (TorchScript exporter, opset {opset})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on the grid cache and the exporter's deprecation notice
            torch.onnx.export(wrapper, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["images"],
                              output_names=["output0"], dynamic_axes=dynamic_axes if dynamic else None,
                              do_constant_folding=True)
        return onnx.load(str(tmp)).SerializeToString()
    finally:
        detect._grids = [None] * detect.nl
        tmp.unlink(missing_ok=True)


def _finish_onnx(data: bytes, props: dict[str, str], f: Path) -> bytes:
    """``data`` with ``props`` as its metadata_props, checked by onnx.checker; raises ExportError naming ``f``."""
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{f}: onnx.checker rejected the exported model: {e}") from e
    return proto.SerializeToString()


def check_outputs(name: str, wrapper: nn.Module, run_fn, shapes: list[tuple], gen: torch.Generator, atol: float,
                  f: Path, written: bool = False) -> dict[tuple, float]:
    """{input shape: :func:`compare` of ``run_fn(x)`` with PyTorch's ``wrapper(x)``} on random inputs of ``shapes``;
    raises ExportError naming ``f`` when one exceeds ``atol`` (after deleting ``f`` when it was ``written``)."""
    diffs = {}
    for shape in shapes:
        x = torch.rand(shape, generator=gen)
        with torch.no_grad():
            ref = wrapper(x).numpy()
        out = np.asarray(run_fn(x))
        diffs[tuple(shape)] = d = compare(ref, out)
        LOGGER.info(f"{name}: input {tuple(shape)}: max |{name} - torch| / max(1, |torch|) = {d:.2e} "
                    f"(max absolute difference {float(np.abs(out - ref).max()) if ref.size else 0.0:.2e})")
        if not d <= atol:
            if written:
                shutil.rmtree(f) if f.is_dir() else f.unlink(missing_ok=True)
            raise ExportError(f"{f}: {name} output differs from PyTorch by {d:.3e} > {atol:g} on input "
                              f"{tuple(shape)}: {'removed' if written else 'not saved'}")
    return diffs


def _export_int8(fp32_data: bytes, props: dict[str, str], f: Path, hw: tuple[int, int], stride: int,
                 data: str | Path | dict, files: list[str]) -> tuple[Path, dict[str, float]]:
    """Write ``f`` = the int8 quantisation of ``fp32_data`` calibrated on ``files`` (images of ``data``); return it
    and its differences from the fp32 model on the first calibration images: max |score| (obj and classes,
    absolute) and max relative xywh difference over boxes with objectness > 0.25 in either model."""
    import onnxruntime as ort

    from utils.infer.export_int8 import LetterboxReader, quantize_int8

    LOGGER.info(f"int8: calibrating on {len(files)} train images of {data} at {hw[0]}x{hw[1]} px")
    tmp = f.with_name(f".{f.name}.fp32.tmp")
    atomic_write_bytes(tmp, fp32_data)
    try:
        q = _finish_onnx(quantize_int8(tmp, f, LetterboxReader(files, hw, "images", stride)).SerializeToString(),
                         props, f)
    finally:
        tmp.unlink(missing_ok=True)
    s32, s8 = (ort.InferenceSession(d, providers=["CPUExecutionProvider"]) for d in (fp32_data, q))
    reader, score, box = LetterboxReader(files[:8], hw, "images", stride), 0.0, 0.0
    while (feed := reader.get_next()) is not None:
        a, b = s32.run(None, feed)[0], s8.run(None, feed)[0]
        if not np.isfinite(b).all():
            raise ExportError(f"{f}: the int8 model gives non-finite outputs: not saved")
        score = max(score, float(np.abs(a[..., 4:] - b[..., 4:]).max()))
        sure = (a[..., 4] > 0.25) | (b[..., 4] > 0.25)
        if sure.any():
            box = max(box, float((np.abs(a[..., :4] - b[..., :4]) / np.maximum(1.0, np.abs(a[..., :4])))[sure].max()))
    atomic_write_bytes(f, q)
    LOGGER.info(f"int8: saved {f} ({len(q) / 1e6:.1f} MB); vs fp32: max score difference {score:.3f}, max relative "
                f"box difference {box:.3f} (boxes with obj > 0.25)")
    return f, {"score": score, "box": box}


def run(weights: str | Path, imgsz: int | list[int] | tuple[int, int] | None = None, batch_size: int = 1,
        dynamic: bool = False, opset: int = 17, output: str | Path | None = None, atol: float = 1e-4,
        seed: int = 0, include: list[str] | tuple[str, ...] = ("onnx",), int8: bool = False,
        data: str | Path | dict | None = None, int8_images: int = 100) -> dict:
    """Export ``weights`` to the ``include`` formats (see the module docstring); return {'file': the ONNX file (else
    the first written), 'files': {format: Path}, 'max_diff': {input shape: ONNX diff}, 'diffs': {format: {input
    shape: diff}} ('int8': {'score', 'box'}), 'metadata': plain metadata dict}.

    ``imgsz``: (h, w) or one side in input px; None: the size the checkpoint was trained at (else 640). ``output``:
    the ONNX file name; the other formats are named after its stem, in its folder (default: the weights').
    Raises FileNotFoundError / CheckpointError for bad weights (via load_model), ValueError (UsageError) for bad
    arguments, DatasetError for a bad ``data``, MissingPackageError (a ValueError) when openvino is missing, and
    ExportError when a checker fails or an fp32 output differs by more than ``atol`` (see :func:`compare`).
    """
    include = list(dict.fromkeys(include))
    check_args(include=(bool(include) and all(x in FORMATS for x in include),
                        f"takes formats among {list(FORMATS)}, got {include}"),
               opset=(opset >= 17, f"must be >= 17, got {opset}"),
               batch_size=(batch_size >= 1, f"must be >= 1, got {batch_size}"),
               imgsz=(imgsz is None or isinstance(imgsz, int) or len(imgsz) in (1, 2),
                      f"takes one or two sizes (h w), got {imgsz}"),
               int8=(not int8 or "onnx" in include, "quantises the ONNX model: add onnx to --include"),
               data=(not int8 or data is not None, "is required with --int8: a dataset YAML whose train images "
                                                   "calibrate the int8 activation ranges"),
               int8_images=(int8_images >= 1, f"must be >= 1, got {int8_images}"))
    if "openvino" in include:
        import_openvino("--include openvino")  # before any work: one line saying how to install it
    calibration = []
    if int8:  # before anything is written: a --data without readable train images stops here
        from utils.infer.export_int8 import calibration_files

        calibration = calibration_files(check_dataset(data), int8_images)
    model = load_model(weights, "cpu", fuse=True)
    if imgsz is None:
        imgsz = default_imgsz(None, getattr(model, "train_imgsz", None))
    hw = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz) * (2 // len(imgsz))
    gs = int(model.stride.max())
    if any(s % gs or s <= 0 for s in hw):
        raise UsageError(f"--imgsz {imgsz}: sizes must be positive multiples of the model stride {gs}")
    f = Path(output) if output else Path(weights).with_suffix(".onnx")
    named = lambda tail: f.with_name(f.stem + tail)  # noqa: E731 - siblings of the ONNX file, YOLOv5's names
    wrapper = PredOnly(model).eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size, 3, *hw), generator=gen)
    shapes = [x.shape] + ([(batch_size + 1, 3, hw[0] + gs, hw[1] + 2 * gs)] if dynamic else [])
    meta = export_metadata(model, hw)
    props = onnx_props(meta)
    files, diffs = {}, {}
    LOGGER.info(f"Exporting {weights} ({hw[0]}x{hw[1]} px, batch {batch_size}{', dynamic' if dynamic else ''}) to "
                f"{', '.join(include)}{' + int8' if int8 else ''}")
    if {"onnx", "openvino"} & set(include):
        import onnxruntime as ort

        onnx_data = _finish_onnx(_export_onnx(wrapper, x, opset, dynamic, f), props, f)
        session = ort.InferenceSession(onnx_data, providers=["CPUExecutionProvider"])
        diffs["onnx"] = check_outputs("ONNX", wrapper, lambda xi: session.run(None, {"images": xi.numpy()})[0],
                                      shapes, gen, atol, f)
        onnx_file = atomic_write_bytes(f if "onnx" in include else named(".fp32.tmp.onnx"), onnx_data)
        if "onnx" in include:
            files["onnx"] = f
            LOGGER.info(f"ONNX: saved {f} ({len(onnx_data) / 1e6:.1f} MB), outputs match PyTorch within {atol:g}")
        if int8:
            files["onnx-int8"], diffs["int8"] = _export_int8(onnx_data, props, named("-int8.onnx"), hw, gs, data,
                                                             calibration)
        if "openvino" in include:
            try:
                files["openvino"] = export_openvino(onnx_file, named("_openvino_model"), meta)
            finally:
                if "onnx" not in include:
                    onnx_file.unlink(missing_ok=True)
            ov = OpenVinoBackend(files["openvino"], torch.device("cpu"))
            diffs["openvino"] = check_outputs("OpenVINO", wrapper, lambda xi: ov(xi).numpy(), shapes, gen,
                                              OPENVINO_ATOL_FACTOR * atol, files["openvino"], written=True)
            LOGGER.info(f"OpenVINO: saved {files['openvino']}")
    if "torchscript" in include:
        files["torchscript"] = export_torchscript(wrapper, x, named(".torchscript"), meta)
        ts = TorchScriptBackend(files["torchscript"], torch.device("cpu"))
        diffs["torchscript"] = check_outputs("TorchScript", wrapper, lambda xi: ts(xi).numpy(), shapes, gen, atol,
                                             files["torchscript"], written=True)
        LOGGER.info(f"TorchScript: saved {files['torchscript']}")
    if "yolov5-pt" in include:
        files["yolov5-pt"], _ = export_yolov5_pt(load_model(weights, "cpu", fuse=False), named("-yolov5.pt"))
        LOGGER.info(f"YOLOv5 state_dict: saved {files['yolov5-pt']} and {files['yolov5-pt'].with_suffix('.yaml')}")
    return {"file": files.get("onnx", next(iter(files.values()))), "files": files,
            "max_diff": diffs.get("onnx", {}), "diffs": diffs, "metadata": meta}


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=str, required=True, help="checkpoint .pt (ours or official YOLOv5 v7.0)")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=None,
                   help="image (h, w) or one side, px; default: the size the weights were trained at (else 640)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width axes")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--output", type=str, default=None,
                   help="ONNX file (default: weights with .onnx); other formats are named after its stem")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed export/PyTorch difference")
    p.add_argument("--include", nargs="+", default=["onnx"], metavar="FORMAT",
                   help=f"formats to write, any of {' '.join(FORMATS)}")
    p.add_argument("--int8", action="store_true", help="also write NAME-int8.onnx (static quantisation, needs --data)")
    p.add_argument("--data", type=str, default=None, help="dataset YAML whose train images calibrate --int8")
    p.add_argument("--int8-images", type=int, default=100, help="number of --int8 calibration images")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line: 0 on success, 1 after printing a user error (or a failed export check) as one line on stderr."""
    def call() -> None:
        opt = get_args_parser().parse_args(argv)
        run(opt.weights, opt.imgsz, opt.batch_size, opt.dynamic, opt.opset, opt.output, opt.atol,
            include=opt.include, int8=opt.int8, data=opt.data, int8_images=opt.int8_images)

    return run_main("export.py", call, errors=(ExportError,))

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
