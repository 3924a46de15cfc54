"""VisDrone2019-MOT ground truth -> MOTChallenge ``gt.txt`` files, for ``python -m utils.track.evaluate``.

Source layout (the official VisDrone2019-MOT-{train,val,test-dev} zips unpacked): ``SRC/annotations/<seq>.txt`` and
``SRC/sequences/<seq>/0000001.jpg ...``. Each annotation line is ``frame,target_id,left,top,width,height,score,
category,truncation,occlusion`` (frames from 1, original px from 0). Written: ``DST/<seq>/gt/gt.txt`` with
MOTChallenge columns ``frame,id,left + 1,top + 1,width,height,consider,class,visibility`` where
- categories 1..10 (pedestrian ... motor) become classes 0..9, as data/convert_visdrone.py numbers them;
- ``consider`` is 0 (ignored by the evaluator) for score 0, category 0 (ignored region) and 11 (others);
- visibility is 1.0, 0.75 or 0.25 for occlusion 0 (none), 1 (partial, 1-50 %), 2 (heavy, 50-100 %).
Every annotation file is read and checked (a malformed line is an error naming the file and line) before the first
file is written; sequence names must be plain names. Track with ``detect.py --source SRC/sequences/<seq> --track``:
its ``tracks/<seq>.txt`` then pairs with ``DST/<seq>/gt/gt.txt``.

CLI: ``python data/convert_visdrone_mot.py --src VisDrone2019-MOT-val --dst datasets/visdrone-mot-val``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from data.convert_visdrone import parse_int_rows  # noqa: E402
from utils.atomic import atomic_write_text  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.errors import DatasetError  # noqa: E402
from utils.safe_paths import plain_name  # noqa: E402

IGNORED, OTHERS = 0, 11
VISIBILITY = {0: 1.0, 1: 0.75, 2: 0.25}


def parse_mot_annotation(path: Path) -> np.ndarray:
    """One VisDrone-MOT annotation file -> (n, 10) int64 rows ``frame id left top w h score category truncation
    occlusion``. Raises DatasetError naming the file and line for a row that is not 10 integers with frame >= 1,
    w, h >= 0 and occlusion in 0..2."""
    return parse_int_rows(
        path, 10, "10 comma-separated integers 'frame,id,left,top,width,height,score,category,truncation,"
        "occlusion' (frame >= 1, occlusion 0-2)",
        ok=lambda v: all(x == int(x) for x in v) and v[0] >= 1 and v[4] >= 0 and v[5] >= 0 and v[9] in VISIBILITY)


def mot_gt_lines(rows: np.ndarray) -> list[str]:
    """(n, 10) VisDrone-MOT rows -> MOTChallenge ground-truth lines (module docstring), sorted by frame then id."""
    out = []
    for f, i, x, y, w, h, score, cat, _trunc, occ in sorted(rows.tolist()):
        consider = int(score != 0 and cat not in (IGNORED, OTHERS))
        cls = cat - 1 if 1 <= cat <= 10 else -1
        out.append(f"{f},{i},{x + 1},{y + 1},{w},{h},{consider},{cls},{VISIBILITY[occ]:g}")
    return out


def convert(src: str | Path, dst: str | Path) -> list[Path]:
    """Convert every ``src/annotations/<seq>.txt``; returns the written ``dst/<seq>/gt/gt.txt`` files."""
    src, dst = Path(src), Path(dst)
    files = sorted((src / "annotations").glob("*.txt"))
    if not files:
        raise DatasetError(f"{src}: no VisDrone-MOT annotations (expected annotations/<sequence>.txt)")
    parsed = {plain_name(f.stem, f"sequence name of {f}"): mot_gt_lines(parse_mot_annotation(f)) for f in files}
    out = []
    for seq, lines in parsed.items():  # everything was checked: now write
        (dst / seq / "gt").mkdir(parents=True, exist_ok=True)
        atomic_write_text(dst / seq / "gt" / "gt.txt", "".join(f"{line}\n" for line in lines))
        out.append(dst / seq / "gt" / "gt.txt")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="VisDrone2019-MOT folder with annotations/ and sequences/")
    ap.add_argument("--dst", required=True, help="output folder: <seq>/gt/gt.txt")
    a = ap.parse_args(argv)
    return run_main("convert_visdrone_mot", lambda: print(f"{len(convert(a.src, a.dst))} sequence(s) -> {a.dst}"))


if __name__ == "__main__":
    sys.exit(main())
