"""Score tracking results with motmetrics (py-motmetrics): MOTA, IDF1, ID switches and the rest of its
MOTChallenge set, boxes matched to ground truth at IoU >= 0.5 (MOTChallenge's rule). When TrackEval (``pip install
trackeval``) is installed, HOTA, DetA and AssA are added (TrackEval's HOTA over IoU thresholds 0.05-0.95).

Usage:
    python -m utils.track.evaluate --gt runs/track-bench/seq0/gt/gt.txt --pred runs/detect/exp/tracks/seq0.txt
    python -m utils.track.evaluate --gt GT_DIR --pred PRED_DIR   # GT_DIR/<seq>/gt/gt.txt or GT_DIR/<seq>.txt

With folders, every ground-truth sequence needs a prediction file ``PRED_DIR/<seq>.txt``; the summary has one row
per sequence and an OVERALL row. Ground-truth rows whose consider flag (7th column) is 0 are left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from utils.cli import ArgumentParser, run_main
from utils.errors import UserError
from utils.ops.pairwise import pairwise_iou
from utils.track.mot import read_mot

METRICS = ("mota", "idf1", "idp", "idr", "num_switches", "num_false_positives", "num_misses", "num_objects",
           "precision", "recall", "mostly_tracked", "mostly_lost", "num_unique_objects")


def accumulate(gt: np.ndarray, pred: np.ndarray, iou: float = 0.5):
    """A ``motmetrics.MOTAccumulator`` of ground truth and predictions, each (n, 7) ``[frame, id, x1, y1, x2, y2,
    conf]`` px (``utils.track.mot.read_mot``); ground-truth rows with conf 0 are ignored."""
    import motmetrics as mm  # an optional dependency: only scoring needs it

    gt = gt[gt[:, 6] != 0]
    acc = mm.MOTAccumulator(auto_id=False)
    frames = np.union1d(gt[:, 0], pred[:, 0]).astype(int)
    for f in frames:
        g, p = gt[gt[:, 0] == f], pred[pred[:, 0] == f]
        # motmetrics' own iou_matrix calls np.asfarray, gone in NumPy 2: the same distances (1 - IoU, NaN = no
        # match) from utils.ops.pairwise
        dist = 1.0 - pairwise_iou(g[:, 2:6], p[:, 2:6])
        dist[dist > 1 - iou] = np.nan
        acc.update(g[:, 1].astype(int).tolist(), p[:, 1].astype(int).tolist(), dist, frameid=int(f))
    return acc


def _trackeval_hota():
    """TrackEval's HOTA metric class, or None when TrackEval is not installed."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints about optional dataset readers on import
            from trackeval.metrics import HOTA
    except ImportError:
        return None
    return HOTA


def hota(gts: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> dict[str, dict[str, float]] | None:
    """{sequence: (n, 7) rows} of ground truth and predictions (as ``accumulate``) -> {sequence (and 'OVERALL' for
    several): {'hota', 'deta', 'assa'}} in [0, 1], averaged over TrackEval's IoU thresholds; None without
    TrackEval. Similarities are IoUs; ground-truth rows with conf 0 are ignored."""
    cls = _trackeval_hota()
    if cls is None:
        return None
    metric, res = cls(), {}
    for seq, gt in gts.items():
        gt, pred = gt[gt[:, 6] != 0], preds[seq]
        gmap = {v: i for i, v in enumerate(np.unique(gt[:, 1]))}
        tmap = {v: i for i, v in enumerate(np.unique(pred[:, 1]))}
        data: dict = {"num_gt_dets": len(gt), "num_tracker_dets": len(pred), "num_gt_ids": len(gmap),
                      "num_tracker_ids": len(tmap), "gt_ids": [], "tracker_ids": [], "similarity_scores": []}
        for f in np.union1d(gt[:, 0], pred[:, 0]):
            g, p = gt[gt[:, 0] == f], pred[pred[:, 0] == f]
            data["gt_ids"].append(np.array([gmap[v] for v in g[:, 1]], int))
            data["tracker_ids"].append(np.array([tmap[v] for v in p[:, 1]], int))
            data["similarity_scores"].append(pairwise_iou(g[:, 2:6], p[:, 2:6]))
        res[seq] = metric.eval_sequence(data)
    if len(res) > 1:
        res["OVERALL"] = metric.combine_sequences(res)
    return {k: {"hota": float(np.mean(r["HOTA"])), "deta": float(np.mean(r["DetA"])),
                "assa": float(np.mean(r["AssA"]))} for k, r in res.items()}


def summarise(accs: dict[str, object]) -> dict[str, dict[str, float]]:
    """{sequence: accumulator} -> {sequence or 'OVERALL': {metric: value}} for ``METRICS``."""
    import motmetrics as mm

    mh = mm.metrics.create()
    names = list(accs)
    df = mh.compute_many([accs[n] for n in names], metrics=list(METRICS), names=names,
                         generate_overall=len(names) > 1)
    return {str(k): {m: float(v) for m, v in row.items()} for k, row in df.iterrows()}


def evaluate_files(gt: str | Path, pred: str | Path, iou: float = 0.5) -> dict[str, dict[str, float]]:
    """Score one prediction file against one ground-truth file, or every sequence of two folders."""
    gt, pred = Path(gt), Path(pred)
    for p in (gt, pred):
        if not p.exists():
            raise FileNotFoundError(f"not found: {p}")
    if gt.is_file():
        if not pred.is_file():
            raise UserError(f"{pred}: expected a prediction file, as --gt is a file")
        pairs = {gt.parent.parent.name if gt.name == "gt.txt" else gt.stem: (gt, pred)}
    else:
        seqs = {p.parent.parent.name: p for p in sorted(gt.glob("*/gt/gt.txt"))} or {
            p.stem: p for p in sorted(gt.glob("*.txt"))}
        if not seqs:
            raise UserError(f"{gt}: no ground truth (<seq>/gt/gt.txt or <seq>.txt)")
        missing = [s for s in seqs if not (pred / f"{s}.txt").is_file()]
        if missing:
            raise UserError(f"{pred}: no prediction file for sequence(s) {missing} (expected <seq>.txt)")
        pairs = {s: (g, pred / f"{s}.txt") for s, g in seqs.items()}
    gts = {s: read_mot(g) for s, (g, _) in pairs.items()}
    preds = {s: read_mot(p) for s, (_, p) in pairs.items()}
    out = summarise({s: accumulate(gts[s], preds[s], iou) for s in pairs})
    for seq, h in (hota(gts, preds) or {}).items():
        out[seq].update(h)
    return out


def format_table(summary: dict[str, dict[str, float]]) -> str:
    cols = ("hota", "mota", "idf1", "num_switches", "num_false_positives", "num_misses", "num_objects")
    cols = tuple(c for c in cols if all(c in m for m in summary.values()))
    lines = [f"{'sequence':<20}" + "".join(f"{c:>20}" for c in cols)]
    for seq, m in summary.items():
        lines.append(f"{seq:<20}" + "".join(f"{m[c]:>20.4g}" for c in cols))
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m utils.track.evaluate", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True, help="ground-truth MOTChallenge file or folder")
    p.add_argument("--pred", required=True, help="prediction MOTChallenge file or folder of <seq>.txt")
    p.add_argument("--iou", type=float, default=0.5, help="least IoU of a match with the ground truth")
    return p


def main(argv: list[str] | None = None) -> int:
    def go():
        args = get_args_parser().parse_args(argv)
        print(format_table(evaluate_files(args.gt, args.pred, args.iou)))

    return run_main("utils.track.evaluate", go)


if __name__ == "__main__":
    sys.exit(main())
