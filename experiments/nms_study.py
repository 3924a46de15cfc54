"""NWD-NMS against IoU-NMS on models that have learned: the tiny-object study's final weights, re-evaluated.

Every finished run of a study (``tiny_study.py run``: one result file per variant and seed, its weights under
``runs/<study>/<variant>/seed<N>/weights/last.pt``) is a trained model. Each is evaluated on the **val** and the
**test** split with every NMS setting in ``--configs`` (``iou:0.6`` is YOLOv5's), at the input size it was trained
at; the settings are then compared **paired over the models** (each model under IoU-NMS and under NWD-NMS). The
setting is chosen on val (highest mean tiny AP50); test reports its effect.

One small JSON file per (model, split, setting) in ``--out``, meant to be committed; a rerun skips the files that
exist, so the evaluation can be stopped and continued.

Large images (``--native``): the same models on scenes larger than their training images, read whole at the model's
input size (``iou:0.6``: downscaled, the naive way), whole at their own size (``native:iou:0.6``: the network is
fully convolutional) or cut into tiles of the model's input size (``tile:MERGE:MATCH:T``, val.py --slice), each
setting paired with the naive one.

Usage:
    python experiments/nms_study.py run --results experiments/results/tiny-study-v2 --runs runs \
        --out experiments/results/nms-on-study
    python experiments/nms_study.py run --results experiments/results/tiny-study-v2 --runs runs \
        --data data/synthetic-aerial-1c-large.yaml --native 640 --max-det 3000 --variants baseline \
        --configs native:iou:0.6 tile:nms:iou:0.6 tile:greedy-nmm:ios:0.5 --out experiments/results/tiles-on-study
    python experiments/nms_study.py report experiments/results/nms-on-study
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, NamedTuple

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from experiments.study_report import fmt_p
from experiments.study_runner import StudyError, final_weights, read_result, run_folder, summarise_metrics
from experiments.tiny_report import ci95, paired
from utils.atomic import atomic_write_text
from utils.cli import ArgumentParser, run_main

BASE = "iou:0.6"  # YOLOv5's NMS: the reference every setting is paired against
KEYS = (("tiny/map50", "tiny AP50"), ("tiny/r", "tiny R"), ("big/map50", "big AP50"), ("all/map50", "AP50"))


class Setting(NamedTuple):
    """One evaluation setting: how the image is fed and how boxes are merged."""

    kind: str  # 'model': the whole image at the model's input size; 'native': the whole image at its own size x
    # the model's scale; 'tile': that native image cut into tiles of the model's input size (val.py --slice)
    nms: str  # NMS method (iou | nwd); tiles: inside each tile
    thres: float  # NMS threshold
    merge: str = ""  # tiles: nms | nmm | greedy-nmm across tiles
    match: str = ""  # tiles: iou | ios | nwd


def parse_config(text: str) -> Setting:
    """``iou:0.6`` / ``nwd:0.8`` (whole image at the model's size), ``native:iou:0.6`` (whole image at its own size),
    ``tile:MERGE:MATCH:T`` (tiles, IoU-NMS 0.6 inside each, MERGE on MATCH at T across tiles); StudyError otherwise."""
    parts = text.split(":")
    try:
        t = float(parts[-1])
    except ValueError:
        t = math.nan
    if len(parts) == 2 and parts[0] in ("iou", "nwd") and 0 < t < 1:
        return Setting("model", parts[0], t)
    if len(parts) == 3 and parts[0] == "native" and parts[1] in ("iou", "nwd") and 0 < t < 1:
        return Setting("native", parts[1], t)
    if (len(parts) == 4 and parts[0] == "tile" and parts[1] in ("nms", "nmm", "greedy-nmm")
            and parts[2] in ("iou", "ios", "nwd") and 0 < t < 1):
        return Setting("tile", "iou", 0.6, parts[1], parts[2])
    raise StudyError(f"--configs {text!r}: expected iou:T, nwd:T, native:iou:T, native:nwd:T or "
                     "tile:{nms,nmm,greedy-nmm}:{iou,ios,nwd}:T with 0 < T < 1")


def models(results: Path, runs_root: Path) -> list[tuple[str, int, int, Path]]:
    """(variant, seed, input px, last.pt) of every finished run whose weights exist, in a fixed order."""
    out = []
    for f in sorted(results.glob("*/seed*.json")):
        r = read_result(f)
        w = final_weights(run_folder(runs_root, results.name, r["variant"], int(r["seed"])))
        if w.is_file():
            out.append((r["variant"], int(r["seed"]), int(r["definition"]["imgsz"]), w))
    if not out:
        raise StudyError(f"{results}: no finished run with its weights under {runs_root / results.name}")
    return out


def evaluate(data: str, weights: Path, imgsz: int, split: str, config: str, native: int = 0,
             max_det: int = 300) -> dict[str, Any]:
    """val.py on ``split`` with the setting ``config``: overall and size-bucket (tiny/big at 32² px) metrics.
    ``imgsz``: the model's input size; ``native``: the data's image side x the model's scale (native and tile
    settings: the image is read at this size, and tiles are ``imgsz`` wide)."""
    import val

    st = parse_config(config)
    if st.kind != "model" and native <= 0:
        raise StudyError(f"--configs {config}: needs --native (the data's image side in px)")
    size = imgsz if st.kind == "model" else native
    tile = {"slice_size": imgsz, "slice_merge": st.merge, "slice_match": st.match,
            "slice_match_thres": float(config.split(":")[-1])} if st.kind == "tile" else {}
    m = val.run(data, weights=str(weights), batch_size=32 if st.kind == "model" else 4, imgsz=size, task=split,
                iou_thres=st.thres, nms=st.nms, workers=0, plots=False, save_dir=None, size_buckets_spec="tiny",
                tfl_s=1024.0, project=Path("runs") / "nms-study", name="eval", exist_ok=True, max_det=max_det, **tile)
    return summarise_metrics(m)


def cmd_run(args) -> None:
    configs = list(dict.fromkeys([BASE, *args.configs]))
    for c in configs:
        parse_config(c)
    results, out = Path(args.results), Path(args.out)
    first = read_result(next(iter(sorted(results.glob("*/seed*.json")))))
    data, base_px = args.data or first["protocol"]["data"], int(first["protocol"]["imgsz"])
    todo = [(v, s, px, w, split, c) for v, s, px, w in models(results, Path(args.runs))
            if not args.variants or v in args.variants for split in ("val", "test") for c in configs]
    for i, (v, s, px, w, split, c) in enumerate(todo, 1):
        f = out / f"{v}-seed{s}" / f"{split}-{c.replace(':', '-')}.json"
        if f.is_file():
            continue
        print(f"nms-study: [{i}/{len(todo)}] {v} seed {s} {split} {c}", flush=True)
        native = round(args.native * px / base_px) if args.native else 0  # the variant's scale applies too
        rec = {"variant": v, "seed": s, "imgsz": px, "split": split, "config": c, "data": data, "native": native,
               "max_det": args.max_det, **evaluate(data, w, px, split, c, native, args.max_det)}
        f.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(f, json.dumps(rec, indent=1) + "\n")


def load(out: Path) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """{split: {config: {model index: {'tiny/map50': ..., ...}}}}; models indexed in a fixed order."""
    recs = [json.loads(f.read_text(encoding="utf-8")) for f in sorted(out.glob("*/*.json"))]
    if not recs:
        raise StudyError(f"{out}: no evaluation files yet (run: python experiments/nms_study.py run ...)")
    index = {m: i for i, m in enumerate(sorted({(r["variant"], r["seed"]) for r in recs}))}
    table: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for r in recs:
        vals = {"all/map50": r["overall"].get("map50"), "all/r": r["overall"].get("recall")}
        for b, m in r["buckets"].items():
            vals.update({f"{b}/map50": m.get("map50"), f"{b}/r": m.get("r")})
        table.setdefault(r["split"], {}).setdefault(r["config"], {})[index[(r["variant"], r["seed"])]] = {
            k: math.nan if v is None else float(v) for k, v in vals.items()}
    return table


def report(out: Path) -> str:
    """Markdown: per split, each NMS setting's mean and its paired difference to IoU-NMS 0.6 over the models."""
    t = load(out)
    lines = []
    val_split = t.get("val", {})
    chosen = max(val_split, key=lambda c: np.nanmean([m.get("tiny/map50", math.nan) for m in val_split[c].values()]),
                 default=None)
    for split in ("val", "test"):
        by_cfg = t.get(split, {})
        if BASE not in by_cfg:
            continue
        lines += [f"**{split}** (values x 100; Δ: paired difference to {BASE} ± 95% CI, p, models)", "",
                  "| NMS | models | " + " | ".join(h for _, h in KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
        for c in sorted(by_cfg, key=lambda c: (c != BASE, c)):
            cells = [c + (" (chosen on val)" if c == chosen and split == "test" else ""), str(len(by_cfg[c]))]
            for k, _ in KEYS:
                mean, _ = ci95(np.array([m.get(k, math.nan) for m in by_cfg[c].values()]))
                cell = f"{100 * mean:.2f}"
                if c != BASE:
                    d, half, p, n = paired(by_cfg[c], by_cfg[BASE], k)
                    cell += f" ({100 * d:+.2f} ± {100 * half:.2f}, p {fmt_p(p)}, n {n})" if n > 1 else ""
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="nms_study.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--results", required=True, help="a study's results folder (OUT/<variant>/seed<N>.json)")
    r.add_argument("--runs", default="runs", help="the runs root holding <study>/<variant>/seed<N>/weights")
    r.add_argument("--out", required=True, help="where the evaluation files go")
    r.add_argument("--data", default=None, help="data YAML (default: the study's)")
    r.add_argument("--configs", nargs="+", default=["nwd:0.6", "nwd:0.8"],
                   help="settings: METHOD:T, native:METHOD:T, tile:MERGE:MATCH:T (see parse_config)")
    r.add_argument("--native", type=int, default=0,
                   help="the data's image side (px) for native and tile settings (x each variant's scale)")
    r.add_argument("--variants", nargs="+", default=None, help="only these variants' models")
    r.add_argument("--max-det", type=int, default=300, help="detections kept per image (val.py --max-det)")
    q = sub.add_parser("report")
    q.add_argument("out", help="the evaluation folder")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def call() -> None:
        args = get_args_parser().parse_args(argv)
        if args.cmd == "run":
            cmd_run(args)
        else:
            print(report(Path(args.out)))

    return run_main("nms_study.py", call)


if __name__ == "__main__":
    sys.exit(main())
