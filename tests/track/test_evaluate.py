"""Scoring tracks: MOTChallenge files (written here, parsed by motmetrics), the evaluator on a hand-worked 3-track
fixture, its command line, the VisDrone-MOT converter on a hand-made fixture, and the synthetic drone video."""

from __future__ import annotations

import numpy as np
import pytest

from data.convert_visdrone_mot import convert, parse_mot_annotation
from data.convert_visdrone_mot import main as convert_main
from data.synthetic_track import TrackParams, make_sequence, simulate_detections
from utils.errors import DatasetError
from utils.track.evaluate import accumulate, evaluate_files, hota, main, summarise
from utils.track.mot import MotFileError, mot_rows, read_mot, write_mot

mm = pytest.importorskip("motmetrics")


def sq(x: float, y: float) -> list[float]:
    return [x, y, x + 10, y + 10]


def fixture_3_tracks() -> tuple[np.ndarray, np.ndarray]:
    """Ground truth A (id 1), B (2), C (3) in frames 1-4 (12 objects); predictions: track 1 follows A, B is
    track 2 in frames 1-2 then track 4 (one ID switch), track 3 follows C in frames 1-3 (one miss in frame 4),
    and track 5 is a false positive in frames 2-3. Rows ``[frame, id, x1, y1, x2, y2, conf]`` px."""
    pos = {1: (0, 0), 2: (100, 0), 3: (200, 0)}
    gt = [[f, i, *sq(x + 2 * f, y), 1] for f in range(1, 5) for i, (x, y) in pos.items()]
    pred = [[f, 1, *sq(2 * f + 1, 0), 0.9] for f in range(1, 5)]
    pred += [[f, 2 if f <= 2 else 4, *sq(100 + 2 * f, 1), 0.9] for f in range(1, 5)]
    pred += [[f, 3, *sq(200 + 2 * f, 0), 0.9] for f in range(1, 4)]
    pred += [[f, 5, *sq(400, 400), 0.5] for f in (2, 3)]
    return np.array(gt, float), np.array(pred, float)


def test_evaluator_matches_hand_worked_values_on_3_tracks():
    gt, pred = fixture_3_tracks()
    m = summarise({"seq": accumulate(gt, pred)})["seq"]
    # MOTA = 1 - (FN + FP + IDSW) / GT = 1 - (1 + 2 + 1) / 12
    assert m["num_objects"] == 12 and m["num_misses"] == 1 and m["num_false_positives"] == 2
    assert m["num_switches"] == 1 and m["mota"] == pytest.approx(1 - 4 / 12)
    # IDF1: best one-to-one ID pairing A-1 (4), B-2 or B-4 (2), C-3 (3): IDTP 9 of 12 GT and 13 predicted boxes
    assert m["idf1"] == pytest.approx(2 * 9 / (12 + 13))
    assert m["idp"] == pytest.approx(9 / 13) and m["idr"] == pytest.approx(9 / 12)
    # a box beside its object (IoU < 0.5) is no match: a miss and a false positive
    shifted = pred.copy()
    shifted[0, 2:6] += [6, 0, 6, 0]  # track 1 in frame 1 moved to IoU (3 x 10) / (17 x 10) with A
    m2 = summarise({"s": accumulate(gt, shifted)})["s"]
    assert m2["num_misses"] == 2 and m2["num_false_positives"] == 3


def test_hota_matches_hand_worked_values_on_3_tracks():
    pytest.importorskip("trackeval")
    gt, pred = fixture_3_tracks()
    exact = pred.copy()  # the same tracks with the ground-truth boxes: IoU 1, so every threshold agrees
    for r in exact:
        if r[1] != 5:
            gid = {1: 1, 2: 2, 4: 2, 3: 3}[int(r[1])]
            r[2:6] = gt[(gt[:, 0] == r[0]) & (gt[:, 1] == gid)][0, 2:6]
    h = hota({"s": gt}, {"s": exact})["s"]
    # DetA = TP / (TP + FN + FP) = 11 / (11 + 1 + 2); AssA: A-1 4 TPs x 4/4, B-2 and B-4 2 TPs each x 2/4,
    # C-3 3 TPs x 3/4 -> (4 + 1 + 1 + 2.25) / 11 = 0.75; HOTA = sqrt(DetA * AssA)
    assert h["deta"] == pytest.approx(11 / 14) and h["assa"] == pytest.approx(0.75)
    assert h["hota"] == pytest.approx(np.sqrt(11 / 14 * 0.75))
    two = hota({"a": gt, "b": gt}, {"a": exact, "b": gt})
    assert two["b"]["hota"] == pytest.approx(1.0) and two["a"]["hota"] < two["OVERALL"]["hota"] < 1


def test_mot_files_round_trip_and_parse_with_motmetrics(tmp_path):
    gt, pred = fixture_3_tracks()
    lines = []
    for f in range(1, 5):
        p = pred[pred[:, 0] == f]
        ids = p[:, 1].astype(int).copy()
        ids[-1:] = -1 if f == 4 else ids[-1:]  # an untracked detection is not written
        lines += mot_rows(f, ids, p[:, 2:6], p[:, 6])
    path = write_mot(tmp_path / "seq.txt", lines)
    assert len(path.read_text().splitlines()) == len(pred) - 1
    df = mm.io.loadtxt(str(path), fmt="mot15-2D")  # the evaluator package's own reader
    assert len(df) == len(pred) - 1
    row = df.loc[(2, 5)]
    assert (row["X"], row["Y"], row["Width"], row["Height"]) == (400, 400, 10, 10)  # 1-based in the file
    back = read_mot(path)
    order = np.lexsort((pred[:, 1], pred[:, 0]))
    assert np.allclose(back[np.lexsort((back[:, 1], back[:, 0]))], pred[order][:-1])  # frame 4's last one dropped
    (tmp_path / "bad.txt").write_text("1,2,3\n")
    with pytest.raises(MotFileError, match=r"bad\.txt:1"):
        read_mot(tmp_path / "bad.txt")


def test_evaluate_command_on_folders(tmp_path, capsys):
    gt, pred = fixture_3_tracks()
    fmt = "{:g},{:g},{:g},{:g},{:g},{:g},{:g},-1,-1,-1"
    for folder, rows in (("gt/seqA/gt", gt), ("pred", pred)):
        name = "gt.txt" if folder.startswith("gt") else "seqA.txt"
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / name).write_text("".join(
            fmt.format(r[0], r[1], r[2] + 1, r[3] + 1, r[4] - r[2], r[5] - r[3], r[6]) + "\n" for r in rows))
    assert evaluate_files(tmp_path / "gt", tmp_path / "pred")["seqA"]["mota"] == pytest.approx(2 / 3)
    assert main(["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]) == 0
    assert "seqA" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip()
    assert "no prediction file for sequence(s) ['seqA']" in err and "\n" not in err


def test_visdrone_mot_converter_on_a_hand_made_fixture(tmp_path):
    src = tmp_path / "VisDrone2019-MOT-val"
    (src / "annotations").mkdir(parents=True)
    (src / "annotations" / "uav0001.txt").write_text(
        "2,7,10,20,5,8,1,4,0,1\n"  # car, partly occluded
        "1,7,8,20,5,8,1,4,0,0\n"  # same car, frame 1 (sorted first)
        "1,0,0,0,50,40,0,0,0,0\n"  # ignored region
        "1,3,30,30,4,4,1,11,0,2\n")  # 'others', heavily occluded
    out = convert(src, tmp_path / "mot")
    assert out == [tmp_path / "mot" / "uav0001" / "gt" / "gt.txt"]
    assert out[0].read_text().splitlines() == ["1,0,1,1,50,40,0,-1,1", "1,3,31,31,4,4,0,-1,0.25",
                                               "1,7,9,21,5,8,1,3,1", "2,7,11,21,5,8,1,3,0.75"]
    gt = read_mot(out[0])
    assert gt[gt[:, 6] == 1][:, 2:6].tolist() == [[8, 20, 13, 28], [10, 20, 15, 28]]  # back to 0-based xyxy
    bad = src / "annotations" / "uav0002.txt"
    bad.write_text("1,7,8,20,5,8,1,4,0,0\n1,7,8,20,5,8,1,4,0\n")
    with pytest.raises(DatasetError, match=r"uav0002\.txt: line 2: expected 10"):
        parse_mot_annotation(bad)
    before = out[0].stat().st_mtime_ns
    assert convert_main(["--src", str(src), "--dst", str(tmp_path / "mot")]) == 1  # checked before any write
    assert out[0].stat().st_mtime_ns == before and not (tmp_path / "mot" / "uav0002").exists()


def test_synthetic_drone_video_has_moving_tracks_and_noisy_detections():
    p = TrackParams(size=256, frames=12, vehicles=40)
    seq = list(make_sequence(p, 3))
    assert len(seq) == 12 and seq[0][0].shape == (256, 256, 3) and seq[0][0].dtype == np.uint8
    assert np.array_equal(seq[5][0], list(make_sequence(p, 3))[5][0])  # deterministic
    gts = [g for _, g in seq]
    ids = set().union(*(set(g[:, 0].astype(int)) for g in gts))
    assert len(ids) >= 5
    sides = np.concatenate([np.sqrt((g[:, 3] - g[:, 1]) * (g[:, 4] - g[:, 2])) for g in gts])
    assert sides.min() >= 2 and sides.max() <= 40 and np.median(sides) < 16
    vis = np.concatenate([g[:, 6] for g in gts])
    assert ((vis >= 0) & (vis <= 1)).all()
    moved = [np.abs(gts[0][gts[0][:, 0] == i, 1] - gts[-1][gts[-1][:, 0] == i, 1]) for i in ids
             if (gts[0][:, 0] == i).any() and (gts[-1][:, 0] == i).any()]
    assert max(float(m[0]) for m in moved) > 5  # vehicles (and the camera) move
    rng = np.random.default_rng(0)
    b, s, c = simulate_detections(gts[0], rng, 256)
    assert len(b) == len(s) == len(c) and ((s >= 0.05) & (s <= 0.99)).all()
