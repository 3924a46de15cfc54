"""val.py's options: the command-line flags, each declared once, and their conversion into :func:`val.run`'s
keyword arguments (``--size-buckets`` into a bucket spec, ``--slice`` into ``slice_size``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.cli import ArgumentParser
from utils.compiler import add_compile_arguments
from utils.config.protocols import PROTOCOLS
from utils.errors import UsageError
from utils.ops.box_merge import add_nms_arguments

ROOT = Path(__file__).resolve().parents[2]
STUDY_SIZES = tuple(range(256, 1536 + 128, 128))  # --task study: YOLOv5's sizes (input px)


def get_args_parser(description: str | None = None) -> argparse.ArgumentParser:
    """val.py's options, each declared once here (bad flags raise a one-line UsageError)."""
    p = ArgumentParser(prog="val.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=str, default="data/synthetic-tiny.yaml", help="dataset YAML")
    p.add_argument("--weights", type=str, required=True, help="model: .pt (ours or YOLOv5), .onnx (fp32 or int8), "
                   ".torchscript or a NAME_openvino_model folder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=None,
                   help="inference size (px); default: the size the weights were trained at (else 640)")
    p.add_argument("--conf-thres", type=float, default=0.001)
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=None, help="detections kept per image (default: the protocol's, "
                   "300 for yolov5)")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default=None, help="evaluation protocol (default: the "
                   "data YAML's 'protocol', else yolov5)")
    p.add_argument("--task", default="val", choices=["val", "test", "speed", "study"],
                   help="study: validate at each --study-sizes, write study.csv and study.png")
    p.add_argument("--study-sizes", nargs="+", type=int, default=list(STUDY_SIZES),
                   help="--task study: inference sizes (input px); default 256 384 ... 1536")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    p.add_argument("--verbose", action="store_true", help="report mAP by class")
    p.add_argument("--save-txt", action="store_true", help="save results to *.txt (YOLO format)")
    p.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    p.add_argument("--save-json", action="store_true", help="save COCO-JSON detections and evaluate with pycocotools")
    p.add_argument("--project", default=str(ROOT / "runs/val"))
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true")
    p.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    p.add_argument("--size-buckets", nargs="+", default=["tiny"],
                   help="tiny (split at --tfl-s), coco, aitod, or explicit area edges in original px²")
    p.add_argument("--tfl-s", type=float, default=None, help="tiny/big area S (px²); default: the run's or 1024")
    p.add_argument("--slice", type=int, default=0, help="sliced inference tile size (px), 0 = off")
    p.add_argument("--slice-overlap", type=float, default=0.2)
    add_nms_arguments(p)
    add_compile_arguments(p)
    return p


def bucket_spec(spec: list[str] | str) -> str | list[float]:
    """CLI ``--size-buckets`` -> the spec ``size_buckets`` takes (a name or a list of area edges)."""
    if isinstance(spec, str):
        return spec
    try:
        return [float(x) for x in spec]
    except ValueError:
        if len(spec) == 1:
            return spec[0]  # a scheme name; size_buckets rejects unknown ones
        raise UsageError(f"--size-buckets: expected tiny, coco, aitod or numbers, got {spec}") from None


def run_kwargs(opt: argparse.Namespace) -> dict:
    """Parsed command line -> keyword arguments of :func:`run` (``--study-sizes`` is :func:`study`'s)."""
    kw = vars(opt).copy()
    kw.pop("study_sizes", None)
    kw["size_buckets_spec"] = bucket_spec(kw.pop("size_buckets"))
    kw["slice_size"] = kw.pop("slice")
    return kw
