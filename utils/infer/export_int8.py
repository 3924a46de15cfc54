"""Static int8 quantisation of an exported ONNX model with ONNX Runtime (QDQ format), calibrated on dataset images.

Weights: int8, per output channel, the full 8-bit range. ONNX Runtime advises 7-bit weights (``reduce_range``) on
x86 CPUs without VNNI, where u8 x s8 products summed in pairs can saturate AVX2's 16-bit ``vpmaddubsw``; on this
AVX2-only machine the 8-bit weights gave the higher val mAP (yolov5n on synthetic-tiny, mAP@.5: 7-bit 0.448 with
MinMax ranges, 8-bit 0.454; fp32 0.458), so saturation did not show.
Activations: uint8, asymmetric, ranges from the 99.999th percentile of each tensor's histogram over the calibration
images (8-bit weights with these ranges: mAP@.5 0.458-0.460, the fp32 model's), collected a few images at a time to
bound the memory (ONNX Runtime keeps every intermediate tensor of a chunk until it is histogrammed). A tensor of
(nearly) one value breaks ONNX Runtime's histograms (untrained models have some): min/max ranges are used then.
Kept in float: the Detect head's decode (sigmoid, grid and anchor arithmetic, the concatenations: everything between
the head's 1x1 convolutions and the output, :func:`decode_nodes`); quantising it too collapses mAP to 0 (pixel
coordinates and scores share the output's uint8 range). The head's 1x1 convolutions themselves are quantised: kept
in float they cost 7% more latency (yolov5s, 640 px) for +0.001 mAP@.5 / +0.002 mAP@.5:.95 (``quantize_head=False``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from utils.dataset.augmentations import letterbox
from utils.dataset.sources import DatasetNotFoundError, imread, list_image_files

LOGGER = logging.getLogger(__name__)
CHUNK = 4  # calibration images whose intermediate tensors are held at once (yolov5s at 640 px: ~0.25 GB each)


def calibration_files(d: dict, n: int) -> list[str]:
    """``n`` images of the train split of the checked data YAML ``d`` (``data.prepare.check_dataset``; all when
    fewer), evenly spaced through its sorted file list so that every part of the split is represented, each read
    once here: unreadable ones (missing files of a .txt list, damaged images) are dropped with a warning. Called
    before anything is written. Raises DatasetNotFoundError naming the file, also when none of the chosen images
    is readable."""
    files = list_image_files(d["train"], prefix="train: ")
    idx = np.unique(np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int))
    chosen = [files[i] for i in idx]
    ok = [imread(f) is not None for f in chosen]
    if not any(ok):
        raise DatasetNotFoundError(f"train: none of the {len(chosen)} calibration images of {d['train']} is a readable "
                                   f"image (first: {chosen[0]})")
    for f, good in zip(chosen, ok):
        if not good:
            LOGGER.warning(f"int8 calibration: {f} is not a readable image, skipped")
    return [f for f, good in zip(chosen, ok) if good]


class LetterboxReader(CalibrationDataReader):
    """Calibration inputs one image at a time, pre-processed as ``Detector``/detect.py do: BGR read, letterbox to the
    exported (h, w) input px with grey padding (``auto=False``: the full size, which a fixed-size export needs),
    RGB, CHW, /255, float32 (1, 3, h, w)."""

    def __init__(self, files: list[str], hw: tuple[int, int], input_name: str, stride: int):
        self.files, self.hw, self.input_name, self.stride = files, hw, input_name, stride
        self._it = iter(files)

    def get_next(self) -> dict[str, np.ndarray] | None:
        for f in self._it:
            im = imread(f)
            if im is None:
                LOGGER.warning(f"int8 calibration: {f} is not a readable image, skipped")
                continue
            x = letterbox(im, self.hw, stride=self.stride, auto=False)[0].transpose(2, 0, 1)[::-1]
            return {self.input_name: np.ascontiguousarray(x)[None].astype(np.float32) / 255}
        return None

    def rewind(self) -> None:
        self._it = iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read only files[start_index:end_index] next (ONNX Runtime's chunked calibration)."""
        self._it = iter(self.files[start_index:end_index])


def decode_nodes(graph: onnx.GraphProto, include_head_convs: bool = False) -> list[str]:
    """Names of the nodes that compute the outputs from the last convolutions: walking back from each graph
    output, every node up to (not including) a ``Conv``; with ``include_head_convs`` those Conv nodes too."""
    producer = {out: node for node in graph.node for out in node.output}
    seen: set[str] = set()
    names: list[str] = []
    stack = [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            if include_head_convs:
                names.append(node.name)
            continue
        names.append(node.name)
        stack.extend(node.input)
    return names


def quantize_int8(fp32: Path, out: Path, reader: LetterboxReader, quantize_head: bool = True) -> onnx.ModelProto:
    """Quantise the ONNX model ``fp32`` with the calibration inputs of ``reader``; return the int8 model (QDQ, not
    yet saved: the caller adds metadata and writes it). ``out`` names the temporary files' folder. Node names
    must be unique and non-empty (torch.onnx's are)."""
    with tempfile.TemporaryDirectory(prefix=".int8.", dir=out.parent) as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        # ONNX shape inference + basic graph optimisation, as ORT recommends (its symbolic shape inference gives up
        # on the dynamic grids of the Detect head)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        keep_float = decode_nodes(graph, include_head_convs=not quantize_head)
        LOGGER.info(f"int8: {len(graph.node) - len(keep_float)} nodes quantised, {len(keep_float)} kept in float "
                    f"(Detect decode{'' if quantize_head else ' and head convolutions'})")
        chunk = max(k for k in range(1, CHUNK + 1) if len(reader) % k == 0)  # ORT wants chunks that divide the total
        for method in (CalibrationMethod.Percentile, CalibrationMethod.MinMax):
            reader.rewind()
            try:
                with contextlib.redirect_stdout(io.StringIO()) as printed:  # ORT prints its calibration progress
                    quantize_static(str(pre), str(q), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                                    reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    calibrate_method=method, nodes_to_exclude=keep_float,
                                    extra_options={"CalibStridedMinMax": chunk})  # despite the name: any method
                break
            except ValueError as e:  # np.histogram on a tensor of (nearly) one value: "Too many bins for data range"
                if method != CalibrationMethod.Percentile or "bins" not in str(e):
                    raise
                LOGGER.warning(f"int8: percentile calibration failed ({e}): using min/max ranges")
        LOGGER.debug(printed.getvalue())
        return onnx.load(str(q))
