"""Tiny-object advice from a dataset's training labels: ``train.py --tiny auto`` and a small command.

Usage:
    python -m utils.advise.advise data/synthetic-tiny.yaml                       # at train.py's default --imgsz
    python -m utils.advise.advise DATA.yaml --imgsz 640 --tiny-max-cost 2.0      # at most 2x the inference time

It reads the training split's labels through the dataset code (the label cache train.py uses), measures their sizes
at the input size (``utils.advise.label_stats``) and applies the rule table ``hyp/tiny_auto.yaml``
(``utils.advise.choose``): one line per choice, with its reason and the measured effect behind it. The command
never writes anything; ``train.py --tiny auto`` applies the choice (``--imgsz``, ``--cfg`` and the hyperparameters
recorded in opt.yaml and hyp.yaml, so --resume and val.py follow them) and writes ``tiny_auto.json`` into the run
folder. The dataset must exist (train.py and val.py download or generate one whose data YAML says how).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from models.yolo import MODELS_DIR, DetectionModel
from utils.advise.choose import Advice, choose, sizes_needed
from utils.advise.label_stats import P2_STRIDE, LabelStats, label_statistics, level_anchors
from utils.atomic import atomic_write_text
from utils.checkpoints import load_checkpoint
from utils.cli import ArgumentParser, check_args, run_main
from utils.config.data_yaml import data_source, load_data_yaml, source_exists
from utils.config.hyp import Hyp, load_hyp, parse_overrides
from utils.config.tiny_rules import DEFAULT_RULES, load_tiny_rules
from utils.dataset.dataloaders import LoadImagesAndLabels
from utils.errors import DatasetError
from utils.train.options import TrainOptions
from utils.train.options import get_args_parser as train_args

LOGGER = logging.getLogger(__name__)
JSON_NAME = "tiny_auto.json"


def p2_variant(cfg: str | Path | dict, strides: Sequence[int]) -> tuple[str | None, str]:
    """(the P2 variant of model YAML ``cfg`` as a name in models/, or None; why there is none)."""
    if P2_STRIDE in strides:
        return None, "the model already has a stride-4 level"
    if isinstance(cfg, dict):
        return None, "the model comes from --weights: give --cfg to let --tiny auto choose its P2 variant"
    name = f"{Path(cfg).name.removesuffix('.yaml')}-p2.yaml"
    if not (MODELS_DIR / name).is_file():
        return None, f"there is no models/{name}"
    return name, ""


def quiet_model(cfg: str | Path | dict, nc: int) -> DetectionModel:
    """The model of ``cfg`` (for its strides and anchors), built without printing its layer table: train.py
    prints the real one a moment later."""
    logs = [logging.getLogger(name) for name in (DetectionModel.__module__, "utils.torch_utils")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.WARNING)
    try:
        return DetectionModel(cfg, ch=3, nc=nc)
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def train_label_stats(data: dict, sizes: Sequence[int], anchors: dict, anchor_t: float, tiny_side: float,
                      workers: int = 2) -> dict[int, LabelStats]:
    """{input size: LabelStats} of the training split of ``data`` (a parsed data YAML), read through
    ``LoadImagesAndLabels`` (its label cache and checks); raises what the dataset raises."""
    ds = LoadImagesAndLabels(data["train"], img_size=max(sizes), augment=False, nc=data["nc"], prefix="tiny auto: ",
                             workers=workers)
    return {s: label_statistics(ds.shapes, ds.labels, s, anchors, anchor_t, tiny_side) for s in sizes}


def advise(data: dict, imgsz: int, hyp: Hyp, cfg: str | Path | dict = "yolov5n.yaml", max_cost: float | None = None,
           rules: str | Path | dict | None = None, user_keys: frozenset[str] = frozenset(), workers: int = 2
           ) -> Advice:
    """The advice for training model ``cfg`` on ``data`` (a parsed data YAML) at ``imgsz`` input px (rounded up to
    the model's stride) with ``hyp``; see utils.advise.choose.choose for the rest."""
    check_args(tiny_max_cost=(max_cost is None or max_cost >= 1,
                              f"must be >= 1 (times the baseline's inference time), got {max_cost}"))
    table = load_tiny_rules(rules)
    model = quiet_model(cfg, data["nc"])
    head = model.model[-1]
    gs = max(int(model.stride.max()), 32)
    imgsz = math.ceil(imgsz / gs) * gs
    anchors = level_anchors(head.anchors, head.stride)
    stats = train_label_stats(data, sizes_needed(imgsz, table, gs), anchors, hyp.anchor_t, table.tiny_side, workers)
    p2_cfg, no_p2 = p2_variant(cfg, [int(s) for s in head.stride])
    return choose(stats, imgsz, table, hyp, max_cost=max_cost, gs=gs, p2_cfg=p2_cfg, no_p2=no_p2,
                  user_keys=user_keys)


def apply_tiny_auto(opt: TrainOptions, hyp: Hyp, data: dict) -> tuple[TrainOptions, Hyp, Advice]:
    """``train.py --tiny auto`` on a new run: prints the advice and applies it: returns (``opt`` with ``imgsz`` and
    ``cfg`` the chosen values (opt.yaml records them), the hyp with the overrides (hyp.yaml records it), the advice).
    ``opt`` itself is left as it is. Save the advice with :func:`save_advice` once the run folder exists."""
    cfg = opt.cfg or (load_checkpoint(opt.weights)["model_yaml"] if opt.weights else "yolov5n.yaml")
    advice = advise(data, opt.imgsz, hyp, cfg, max_cost=opt.tiny_max_cost,
                    user_keys=frozenset(parse_overrides(opt.hyp_set)), workers=opt.workers)
    for line in advice.lines():
        LOGGER.info(line)
    chosen = opt.replace(imgsz=advice.imgsz, cfg=advice.cfg or opt.cfg)
    return chosen, (hyp.replace(**advice.hyp) if advice.hyp else hyp), advice


def save_advice(advice: Advice, save_dir: str | Path) -> Path:
    """Write ``tiny_auto.json`` (the settings, each choice with its reason and evidence, the label statistics)."""
    path = Path(save_dir) / JSON_NAME
    atomic_write_text(path, json.dumps(advice.to_dict(), indent=2) + "\n")
    return path


def get_args_parser() -> argparse.ArgumentParser:
    """The command's options; --imgsz, --cfg and --hyp default to train.py's own defaults."""
    train = train_args()
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="dataset YAML (its train split is read)")
    p.add_argument("--imgsz", "--img", type=int, default=train.get_default("imgsz"), help="training size (input px)")
    p.add_argument("--tiny-max-cost", type=float, default=None, help="at most this many times the baseline's "
                   "inference time (a scale s costs ~s^2)")
    p.add_argument("--cfg", default="yolov5n.yaml", help="model YAML whose anchors and P2 variant are judged")
    p.add_argument("--hyp", default=train.get_default("hyp"), help="hyperparameter YAML the advice starts from")
    p.add_argument("--rules", default=str(DEFAULT_RULES), help="rule table YAML")
    return p


def main(argv: list[str] | None = None) -> int:
    """Print the advice for a dataset; 0, or 1 after a user error printed as one line."""

    def call() -> None:
        opt = get_args_parser().parse_args(argv)
        check_args(imgsz=(opt.imgsz >= 1, f"must be >= 1 px, got {opt.imgsz}"))
        hyp = load_hyp(opt.hyp)
        data = load_data_yaml(opt.data)
        if not source_exists(data["train"]):
            raise DatasetError(f"{data_source(data)}: train images not found ({data['train']}); prepare the dataset "
                               "first (train.py and val.py download or generate it as its YAML says)")
        advice = advise(data, opt.imgsz, hyp, opt.cfg, max_cost=opt.tiny_max_cost, rules=opt.rules)
        print("\n".join(advice.lines()))
        print(f"{'tiny auto: settings' if advice.changed else 'tiny auto: nothing to change'}: --imgsz "
              f"{advice.imgsz}" + (f" --cfg {advice.cfg}" if advice.cfg else "")
              + "".join(f" --hyp-set {k}={v:.4g}" if isinstance(v, float) else f" --hyp-set {k}={v}"
                        for k, v in advice.hyp.items()) + f" (expected inference cost {advice.cost:.2f}x)")

    return run_main("utils.advise.advise", call)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
