"""Validate a trained detector: YOLOv5's P, R, mAP plus a per-size-bucket breakdown (tiny vs big by default).

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/synthetic-tiny.yaml   # at the trained size
    python val.py --weights best.pt --data coco128.yaml --size-buckets coco --save-json
    python val.py --weights best.pt --size-buckets 0 64 256 1024 inf     # explicit area edges (px²)
    python val.py --weights best.pt --task study --study-sizes 320 640 960 1280   # mAP (and tiny mAP) vs --imgsz
    python val.py --weights best.pt --data VisDrone.yaml        # the YAML's protocol: VisDrone's numbers, 500 dets
    python val.py --weights best.pt --data AI-TOD.yaml --task test --protocol aitod --nms nwd

Protocols (utils/config/protocols.py): ``--protocol yolov5`` (default, YOLOv5's numbers) or a benchmark's own
evaluation, ``coco``, ``aitod``, ``visdrone``, ``tinyperson``: its detections per image (also the NMS cap), area ranges,
IoU thresholds and ignore rule, evaluated with pycocotools and written to metrics.json under ``protocol`` with the
benchmark's names (AP_vt, AP50_tiny1, MR50_tiny, AR500, ...). A data YAML's ``protocol:`` key is used when the flag is
not given. ``--max-det`` overrides the protocol's cap; when images reach it, one warning line says how many and the most
ground truths in one image.

Size buckets are measured in ORIGINAL-image pixels (the image on disk), like COCO's small/medium/large; the
default tiny/big split is at the TFL area S (1024 px², or the run's ``tfl_s``). TFL itself weighs objects by their
area at the network input; for letterboxed square inputs the two differ by the resize factor.

``--imgsz`` defaults to the size the checkpoint was trained at (640 for official YOLOv5 weights). ``--single-cls``
validates any model as a one-class detector: label classes and predicted classes are both ignored (as YOLOv5).
A user error (bad data YAML, missing weights, not a checkpoint, a split without labels, bad flags) is one line on
stderr and exit status 1; nothing is created under ``--project`` until the inputs are known usable.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.prepare import check_dataset  # noqa: E402
from utils.atomic import atomic_write_text  # noqa: E402
from utils.cli import check_args, run_main  # noqa: E402
from utils.compiler import CompiledForward, compile_cache_dir, compile_options, for_pass, loader_shapes  # noqa: E402
from utils.dataset.dataloaders import create_dataloader  # noqa: E402
from utils.dataset.ignore import centres_in_areas, to_pixels  # noqa: E402
from utils.dataset.labels import require_labels  # noqa: E402
from utils.dataset.sources import output_stems  # noqa: E402
from utils.errors import DatasetError  # noqa: E402
from utils.eval.coco_eval import coco_evaluate, detections_to_coco_json, image_id_from_path, yolo_labels_to_coco  # noqa: E402
from utils.eval.metrics import ConfusionMatrix, match_predictions, mean_results, pr_curves  # noqa: E402
from utils.eval.protocol_eval import eval_image, protocol_results, resolve_protocol  # noqa: E402
from utils.eval.size_metrics import SizeBucketStats, format_size_table, size_buckets  # noqa: E402
from utils.eval.val_options import STUDY_SIZES, bucket_spec, get_args_parser, run_kwargs  # noqa: E402
from utils.infer.detector import default_imgsz, load_backend, size_check, validation_input, warn_far_from_trained  # noqa: E402
from utils.ops.box_merge import NWD_C  # noqa: E402
from utils.ops.boxes import scale_boxes, xywh2xyxy, xyxy2xywh  # noqa: E402
from utils.ops.nms import non_max_suppression  # noqa: E402
from utils.plots import plot_confusion_matrix, plot_images, plot_metric_curves, plot_val_study  # noqa: E402
from utils.run_dirs import increment_path  # noqa: E402

LOGGER = logging.getLogger(__name__)
IOUV = torch.linspace(0.5, 0.95, 10)  # IoU thresholds of mAP@.5:.95


class Accumulator:
    """Per-image matches for overall, per-class and per-bucket metrics, plus the confusion matrix."""

    def __init__(self, nc: int, buckets) -> None:
        self.stats: list[tuple[np.ndarray, ...]] = []
        self.sizes = SizeBucketStats(buckets, IOUV.tolist())
        self.confusion = ConfusionMatrix(nc=nc)

    def update(self, predn: torch.Tensor, labelsn: torch.Tensor) -> None:
        """predn (N, 6) [x1, y1, x2, y2, conf, cls], labelsn (M, 5) [cls, x1, y1, x2, y2], original pixels."""
        correct = match_predictions(predn, labelsn, IOUV) if len(predn) else torch.zeros(0, len(IOUV), dtype=torch.bool)
        self.stats.append((correct.cpu().numpy(), predn[:, 4].cpu().numpy(), predn[:, 5].cpu().numpy(),
                           labelsn[:, 0].cpu().numpy()))
        self.sizes.update(predn.cpu(), labelsn.cpu())
        self.confusion.process_batch(predn.cpu() if len(predn) else None, labelsn.cpu())

    def compute(self, names: dict[int, str], save_dir: Path | None) -> dict:
        tp, conf, pcls, tcls = (np.concatenate(x, 0) for x in zip(*self.stats)) if self.stats else (
            np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))
        curves = pr_curves(tp, conf, pcls, tcls)
        if save_dir is not None:
            plot_metric_curves(curves, save_dir, names)
        _, _, p, r, _, ap, classes = curves.summary()
        mp, mr, map50, map_ = mean_results(p, r, ap)
        per_class = {names.get(int(c), str(int(c))): {"n_gt": int(n), "p": float(p[i]), "r": float(r[i]),
                                                       "map50": float(ap[i, 0]), "map50_95": float(ap[i].mean())}
                     for i, (c, n) in enumerate(zip(classes, curves.n_gt))}
        conf_op = curves.best_conf
        return {"metrics/precision": mp, "metrics/recall": mr, "metrics/mAP_0.5": map50, "metrics/mAP_0.5:0.95": map_,
                "n_images": len(self.stats), "n_gt": int(len(tcls)), "operating_conf": conf_op,
                "per_class": per_class, "size_buckets": self.sizes.compute(conf_op)}


@torch.no_grad()
def run(data: str | dict, weights: str | None = None, batch_size: int = 32, imgsz: int | None = None,
        conf_thres: float = 0.001, iou_thres: float = 0.6, max_det: int | None = None, task: str = "val",
        device: str = "",
        workers: int = 2, single_cls: bool = False, verbose: bool = False, save_txt: bool = False,
        save_conf: bool = False, save_json: bool = False, project: str | Path = ROOT / "runs/val", name: str = "exp",
        exist_ok: bool = False, half: bool = False, size_buckets_spec: str | list[float] = "tiny",
        tfl_s: float | None = None, model=None, dataloader=None, save_dir: Path | None = None, plots: bool = True,
        compute_loss=None, names: dict[int, str] | None = None, slice_size: int = 0, slice_overlap: float = 0.2,
        protocol: str | None = None, nms: str = "iou", nwd_c: float = NWD_C, slice_merge: str = "nms",
        slice_match: str | None = None, slice_match_thres: float | None = None, compile: str | None = None,
        compile_backend: str = "inductor", forward: CompiledForward | None = None) -> dict:
    """Validate ``model`` (when train.py passes it) or the model in ``weights`` on ``data``'s ``task`` split.

    ``imgsz`` (input px) defaults to the size ``weights`` was trained at (640 when not recorded). ``single_cls``:
    labels and predictions are all class 0, whatever the model's and the data's class counts.
    Returns a dict with 'metrics/precision', 'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95',
    'val/{box,obj,cls}_loss' (when ``compute_loss``), 'per_class', 'size_buckets', 'coco' (with ``save_json``) and
    'speed_ms' (pre-process, inference, NMS per image), 'max_det' (the cap, images that reached it, most ground
    truths in one image) and, under a benchmark protocol (``protocol``, else the data YAML's ``protocol`` when
    not training, else 'yolov5'), 'protocol' (its name, settings and numbers). ``max_det`` defaults to the
    protocol's cap. ``nms``/``nwd_c`` and ``slice_*`` as detect.py. ``compile`` (a mode) runs ``weights`` compiled,
    ``forward`` (train.py) is ``model`` compiled: utils.compiler pads batches to at most 7 shapes (one graph each).
    The same dict is saved as ``metrics.json`` in
    ``save_dir``, which is created only once the weights, data and labels are known usable.
    Raises DatasetError (data YAML), FileNotFoundError / CheckpointError (weights), LabelError (a split without any
    label), UsageError (a bad argument), ValueError (class count mismatch); each names the file or argument.
    """
    check_args(batch_size=(batch_size >= 1, f"must be >= 1, got {batch_size}"),
               imgsz=size_check(imgsz, bounded=model is None),
               conf_thres=(0 <= conf_thres <= 1, f"must be in [0, 1], got {conf_thres}"),
               iou_thres=(0 <= iou_thres <= 1, f"must be in [0, 1], got {iou_thres}"),
               max_det=(max_det is None or max_det >= 1, f"must be >= 1, got {max_det}"),
               nwd_c=(nwd_c > 0, f"must be > 0 px, got {nwd_c}"),
               slice=(slice_size >= 0, f"must be >= 0, got {slice_size}"),
               slice_overlap=(0 <= slice_overlap < 1, f"must be in [0, 1), got {slice_overlap}"))
    training = model is not None
    data = check_dataset(data) if not isinstance(data, dict) or "nc" not in data else data
    split = "val" if task == "speed" else task
    proto, max_det = resolve_protocol(protocol, None if training else data.get("protocol"), max_det)
    if not data.get(split):
        raise DatasetError(f"{data.get('yaml_file') or 'data'}: no '{split}' split to validate on")
    if training:
        device = next(model.parameters()).device
        half &= device.type == "cuda"
        backend = None
        imgsz, rect = default_imgsz(imgsz, getattr(model, "train_imgsz", None)), True
    else:
        backend = load_backend(weights, device=device, half=half, compile=compile_options(compile, compile_backend))
        model, device = backend, backend.device
        tfl_s = tfl_s or (backend.hyp or {}).get("tfl_s")
        imgsz, rect = validation_input(backend, default_imgsz(imgsz, backend.train_imgsz), weights)  # fixed: square
        warn_far_from_trained(imgsz, backend.train_imgsz, weights)
    stride = int(max(model.stride)) if hasattr(model, "stride") else 32
    nc = 1 if single_cls else int(data["nc"])
    acc = Accumulator(nc, size_buckets(bucket_spec(size_buckets_spec), tfl_s or 1024.0))  # checks the spec
    names = names or ({0: "item"} if single_cls else data["names"])
    if backend is not None and backend.nc is not None and backend.nc != nc and not single_cls:
        raise DatasetError(f"{weights} was trained for {backend.nc} classes but {data.get('yaml_file')} has {nc}: "
                         "pass --single-cls or the matching data YAML")
    if dataloader is None:  # labels are checked against the data's classes; single_cls collapses them afterwards
        dataloader = create_dataloader(data[split], imgsz, batch_size, stride, single_cls, pad=0.5 if rect else 0.0,
                                       rect=rect, workers=workers, prefix=f"{split}: ", nc=int(data["nc"]))[0]
        ds = dataloader.dataset
        require_labels(ds.labels, ds.label_files, data[split], prefix=f"{split}: ")
    compiled = for_pass(forward if training else getattr(backend, "compiled", None), batch_size,
                        loader_shapes(dataloader, imgsz), None if training else len(dataloader.dataset), "val.py")
    if backend is not None and hasattr(backend, "compiled"):
        backend.compiled = compiled
    stems = output_stems(getattr(getattr(dataloader, "dataset", None), "im_files", ()))
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok) if save_dir is None else Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if save_txt:
        (save_dir / "labels").mkdir(parents=True, exist_ok=True)
    if training:
        model.half() if half else model.float()
        model.eval()
    ignores = ignore_areas_by_file(dataloader)
    loss = torch.zeros(3, device=device)
    jdict, coco_images, dt = [], [], [0.0, 0.0, 0.0]
    eval_images, at_cap, most_gt = [], 0, 0  # the protocol's inputs; the --max-det report
    for batch_i, (im, targets, paths, shapes) in enumerate(tqdm(dataloader, desc="val", leave=False)):
        t0 = time.perf_counter()
        im = im.to(device, non_blocking=True)
        im = (im.half() if half else im.float()) / 255
        targets = targets.to(device)
        nb, _, height, width = im.shape
        t1 = time.perf_counter()
        if backend is not None:
            preds, train_out = (backend.sliced(im, slice_size, slice_overlap, conf_thres=conf_thres,
                                               iou_thres=iou_thres, max_det=max_det, nms=nms, nwd_c=nwd_c,
                                               merge=slice_merge, match=slice_match, match_thres=slice_match_thres)
                                if slice_size else backend(im)), None
        else:
            preds, train_out = (compiled or model)(im)
        t2 = time.perf_counter()
        if compute_loss is not None and train_out is not None:
            loss += compute_loss(train_out, targets)[1]
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)  # to input pixels
        preds = non_max_suppression(preds, conf_thres, iou_thres, multi_label=True, agnostic=single_cls,
                                    max_det=max_det, method=nms, nwd_c=nwd_c)
        if single_cls:  # the model's classes are ignored (YOLOv5): every detection is class 0
            for p in preds:
                p[:, 5] = 0
        t3 = time.perf_counter()
        dt = [dt[0] + t1 - t0, dt[1] + t2 - t1, dt[2] + t3 - t2]
        for si, pred in enumerate(preds):
            labels = targets[targets[:, 0] == si, 1:]
            path, shape = Path(paths[si]), shapes[si][0]
            stem = stems.get(paths[si], path.stem)  # unique among the split's images (same names in other folders)
            predn = pred.clone()
            scale_boxes(im[si].shape[1:], predn[:, :4], shape, shapes[si][1])  # to original pixels
            tbox = xywh2xyxy(labels[:, 1:5])
            scale_boxes(im[si].shape[1:], tbox, shape, shapes[si][1])
            labelsn = torch.cat((labels[:, 0:1], tbox), 1)
            evaln = drop_ignored(predn, ignores.get(paths[si]), shape)  # what every metric (and COCO JSON) sees
            acc.update(evaln, labelsn)
            at_cap, most_gt = at_cap + (len(pred) >= max_det), max(most_gt, len(labelsn))
            if proto.name != "yolov5":  # the protocol applies its own ignore rule to all detections
                eval_images.append(eval_image(predn, labelsn, ignores.get(paths[si]), shape))
            if save_txt:  # all detections: the ignore rule belongs to the evaluation, not to the model's output
                save_one_txt(predn, save_conf, shape, save_dir / "labels" / f"{stem}.txt")
            if save_json:  # image ids from the unique name, on both sides (detections and annotations)
                out_path = path.with_name(stem + path.suffix)
                jdict += detections_to_coco_json(evaln, image_id_from_path(out_path))
                coco_images.append((out_path, shape, labelsn.cpu().numpy()))
        if plots and batch_i < 3:
            plot_images(im, targets, paths, save_dir / f"val_batch{batch_i}_labels.jpg", names)
            plot_images(im, preds_to_targets(preds), paths, save_dir / f"val_batch{batch_i}_pred.jpg", names)

    results = acc.compute(names, save_dir if plots else None)
    seen = max(results["n_images"], 1)
    results["speed_ms"] = {"preprocess": dt[0] * 1e3 / seen, "inference": dt[1] * 1e3 / seen,
                           "nms": dt[2] * 1e3 / seen}
    if compute_loss is not None:
        results.update({f"val/{n}_loss": float(v) / len(dataloader) for n, v in zip(("box", "obj", "cls"), loss)})
    if plots:
        plot_confusion_matrix(acc.confusion.matrix, save_dir / "confusion_matrix.png", list(names.values()))
    if save_json and jdict:
        results["coco"] = evaluate_coco(jdict, coco_images, names, save_dir, Path(weights or "model").stem)
    results["max_det"] = {"cap": max_det, "images_at_cap": at_cap, "max_gt_per_image": most_gt}
    if proto.name != "yolov5":
        results["protocol"] = protocol_results(proto, eval_images, sorted(names))
    report(results, names, verbose or (not training and nc < 50), training)
    if at_cap and not training:
        LOGGER.warning(f"{at_cap} of {results['n_images']} images reached the cap of {max_det} detections per image "
                       f"(--max-det, protocol {proto.name}); the most ground truths in one image is {most_gt}")
    atomic_write_text(save_dir / "metrics.json", json.dumps(_json_safe(results), indent=2))
    if training:
        model.float()
    else:
        LOGGER.info(f"Results saved to {save_dir}")
        if compiled is not None:  # once per pass; train.py reports its own run's total
            results["compile"] = {"graphs": compiled.stats.graphs, "seconds": compiled.stats.seconds}
            LOGGER.info(compiled.stats.line("val.py", compile_cache_dir()))
    return results


def ignore_areas_by_file(dataloader) -> dict[str, np.ndarray]:
    """{image path: (m, 4) ignore areas [x1, y1, x2, y2] normalised} of the images that have any, from the
    loader's ``LoadImagesAndLabels.ignores``; empty for datasets without ignore files (or other loaders)."""
    ds = getattr(dataloader, "dataset", None)
    return {f: a for f, a in zip(getattr(ds, "im_files", ()), getattr(ds, "ignores", ())) if a is not None}


def drop_ignored(predn: torch.Tensor, areas: np.ndarray | None, shape: tuple[int, int]) -> torch.Tensor:
    """Detections minus those whose box centre lies in an ignore area (VisDrone/TinyPerson protocol: neither TP
    nor FP). predn (N, 6) [x1, y1, x2, y2, conf, cls] original pixels; areas (m, 4) normalised or None;
    shape (h0, w0) original pixels. Returns predn itself when there is nothing to drop."""
    if areas is None or not len(predn):
        return predn
    inside = centres_in_areas(predn[:, :4], to_pixels(areas, shape[1], shape[0]))
    return predn[~inside] if bool(inside.any()) else predn


def preds_to_targets(preds: list[torch.Tensor]) -> torch.Tensor:
    """NMS output per image -> (n, 7) [img_idx, cls, x, y, w, h, conf] input pixels, for plot_images."""
    rows = [torch.cat((torch.full((len(p), 1), i, device=p.device), p[:, 5:6], xyxy2xywh(p[:, :4]), p[:, 4:5]), 1)
            for i, p in enumerate(preds)]
    return torch.cat(rows, 0) if rows else torch.zeros((0, 7))


def save_one_txt(predn: torch.Tensor, save_conf: bool, shape: tuple[int, int], file: Path) -> None:
    """Detections (original pixels) -> a YOLO-format label file: cls x y w h [conf], normalised."""
    gain = torch.tensor(shape, device=predn.device)[[1, 0, 1, 0]]
    lines = []
    for *xyxy, conf, cls in predn.tolist():
        xywh = (xyxy2xywh(torch.tensor(xyxy, device=predn.device).view(1, 4)) / gain).view(-1).tolist()
        row = (cls, *xywh, conf) if save_conf else (cls, *xywh)
        lines.append(("%g " * len(row)).rstrip() % row)
    atomic_write_text(file, "\n".join(lines) + ("\n" if lines else ""))


def evaluate_coco(jdict: list, images: list, names: dict[int, str], save_dir: Path, stem: str) -> dict:
    """Save detections as COCO JSON, build the annotations from the YOLO labels, evaluate with pycocotools."""
    files = [str(p) for p, _, _ in images]
    sizes = [(s[1], s[0]) for _, s, _ in images]  # (w, h)
    labels = []
    for _, (h, w), lab in images:  # back to normalised xywh for the converter
        xywh = xyxy2xywh(torch.from_numpy(lab[:, 1:5].copy())).numpy() / np.array([w, h, w, h])
        labels.append(np.concatenate((lab[:, :1], xywh), 1))
    anno = yolo_labels_to_coco(files, labels, sizes, names)
    atomic_write_text(save_dir / f"{stem}_predictions.json", json.dumps(jdict))
    return coco_evaluate(anno, jdict)


def report(results: dict, names: dict[int, str], per_class: bool, training: bool) -> None:
    """Print the overall line, per-class lines and the size-bucket table."""
    head = f"{'Class':>20}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"
    lines = [head, f"{'all':>20}{results['n_images']:>11}{results['n_gt']:>11}"
             + "".join(f"{results[k]:>11.3g}" for k in ("metrics/precision", "metrics/recall", "metrics/mAP_0.5",
                                                          "metrics/mAP_0.5:0.95"))]
    if per_class:
        for name, m in results["per_class"].items():
            lines.append(f"{name:>20}{results['n_images']:>11}{m['n_gt']:>11}"
                         + "".join(f"{m[k]:>11.3g}" for k in ("p", "r", "map50", "map50_95")))
    lines += ["", "Size buckets (original-image px², P and R at the overall operating confidence "
              f"{results['operating_conf']:.3f}):", format_size_table(results["size_buckets"])]
    if "coco" in results:
        lines.append("COCO: " + ", ".join(f"{k}={v:.3f}" for k, v in results["coco"].items()))
    if "protocol" in results:
        pr = results["protocol"]
        lines.append(f"{pr['benchmark']} (--protocol {pr['name']}, {pr['max_dets'][-1]} detections per image): "
                     + ", ".join(f"{k}={v:.4f}" for k, v in pr["metrics"].items()))
    if not training:
        s = results["speed_ms"]
        lines.append(f"Speed: {s['preprocess']:.1f}ms pre-process, {s['inference']:.1f}ms inference, "
                     f"{s['nms']:.1f}ms NMS per image")
    LOGGER.info("\n".join(lines))


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else str(x)
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def study(sizes: Sequence[int] = STUDY_SIZES, project: str | Path = ROOT / "runs/val", name: str = "exp",
          exist_ok: bool = False, **kw) -> list[dict]:
    """``--task study``: validate on the 'val' split at each inference size in ``sizes`` (input px), as :func:`run`
    with ``kw``, to choose ``--imgsz`` (tiny objects usually gain from a larger input, at a cost in time).

    Returns one row per size: ``imgsz``, ``precision``, ``recall``, ``map50``, ``map50_95``, ``map50_<bucket>`` for
    each size bucket (original px², so the same objects at every size) and ``ms_per_image`` (pre-process +
    inference + NMS). Writes ``study.csv`` (those columns), ``study.png`` (mAP@.5, mAP@.5:.95 and the first,
    smallest bucket's mAP@.5 against the size) and ``imgsz<N>/metrics.json`` under project/name, created once the
    first size's inputs are known usable (every size is checked first); prints a table. Raises what :func:`run` raises.
    """
    check_args(study_sizes=size_check(list(sizes)))
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    rows = []
    for s in sizes:
        r = run(**{**kw, "task": "val", "plots": False}, imgsz=s, save_dir=save_dir / f"imgsz{s}")
        rows.append({"imgsz": s, "precision": r["metrics/precision"], "recall": r["metrics/recall"],
                     "map50": r["metrics/mAP_0.5"], "map50_95": r["metrics/mAP_0.5:0.95"],
                     **{f"map50_{b}": m["map50"] for b, m in r["size_buckets"].items()},
                     "ms_per_image": sum(r["speed_ms"].values())})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # floats as repr: they read back exactly
    atomic_write_text(save_dir / "study.csv", buf.getvalue())
    tiny = next(iter(r["size_buckets"]))  # the first bucket holds the smallest objects
    plot_val_study(sizes, {"mAP@.5": [r["map50"] for r in rows], "mAP@.5:.95": [r["map50_95"] for r in rows],
                           f"mAP@.5 {tiny}": [r[f"map50_{tiny}"] for r in rows]}, [r["ms_per_image"] for r in rows],
                   save_dir / "study.png")
    cols = list(rows[0])
    LOGGER.info("\n".join([f"Study on {kw.get('data')} ({len(sizes)} sizes):", "".join(f"{c:>14}" for c in cols)]
                          + ["".join(f"{r[c]:>14.4g}" for c in cols) for r in rows] + [f"Results saved to {save_dir}"]))
    return rows


def _main(opt: argparse.Namespace) -> None:
    kw = run_kwargs(opt)
    if kw["task"] == "study":  # the sizes replace --imgsz
        kw.pop("imgsz")
        study(opt.study_sizes, **kw)
    else:
        run(**kw)


def main(argv: list[str] | None = None) -> int:
    """Command line: 0 on success, 1 after printing a user error as one line on stderr."""
    return run_main("val.py", lambda: _main(get_args_parser(__doc__).parse_args(argv)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
