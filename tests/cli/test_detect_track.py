"""detect.py --track (videos, folders of frames, --slice, bad input) and the hub model with a tracker."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detect import main, run
from tests.helpers import make_image, save_model_checkpoint
from utils.infer.hub import load_custom
from utils.track.mot import read_mot
from utils.track.tracker import Tracker

LENIENT = "track_high_thresh: 0.2\ntrack_low_thresh: 0.05\nnew_track_thresh: 0.2\n"  # the test model scores low


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_model_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt", {"imgsz": 64})


@pytest.fixture(scope="module")
def tracker_yaml(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("t") / "lenient.yaml"
    f.write_text(LENIENT)
    return f


def frames(n: int = 5) -> list[np.ndarray]:
    """The same scene moved 1 px per frame: detections stay put, so tracks last."""
    base = make_image(72, 96, 3)
    return [np.roll(base, k, axis=1) for k in range(n)]


def test_track_video_draws_ids_and_writes_mot_that_motmetrics_reads(weights, tracker_yaml, tmp_path):
    f = tmp_path / "clip.mp4"
    wr = cv2.VideoWriter(str(f), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 72))
    if not wr.isOpened():
        pytest.skip("this OpenCV build cannot write mp4v videos")
    for im in frames():
        wr.write(im)
    wr.release()
    res = run(weights=weights, source=f, imgsz=64, conf_thres=0.05, project=tmp_path, name="v", track=tracker_yaml)
    assert [r["frame"] for r in res] == [1, 2, 3, 4, 5]
    assert all(len(r["track_ids"]) == len(r["boxes"]) for r in res)
    n_ids = sum(int((r["track_ids"] >= 0).sum()) for r in res)
    assert n_ids > 0
    first = res[0]  # first frame: every detection scoring >= new_track_thresh is confirmed at once
    assert (first["track_ids"] >= 1).tolist() == (first["scores"] >= 0.2).tolist()
    mot = tmp_path / "v" / "tracks" / "clip.txt"
    rows = read_mot(mot)
    assert len(rows) == n_ids and set(rows[:, 0].astype(int)) <= {1, 2, 3, 4, 5}
    mm = pytest.importorskip("motmetrics")
    assert len(mm.io.loadtxt(str(mot), fmt="mot15-2D")) == n_ids
    tracked = first["track_ids"] >= 0
    assert np.allclose(rows[rows[:, 0] == 1][:, 2:6], first["boxes"][tracked], atol=0.01)
    assert rows[rows[:, 0] == 1][:, 1].tolist() == first["track_ids"][tracked].tolist()
    assert cv2.VideoCapture(str(res[0]["save_path"])).get(cv2.CAP_PROP_FRAME_COUNT) == 5


def test_track_folder_of_frames_with_slicing(weights, tracker_yaml, tmp_path):
    seq = tmp_path / "seq01"
    seq.mkdir()
    for k, im in enumerate(frames(4), 1):
        cv2.imwrite(str(seq / f"{k:06d}.png"), im)
    res = run(weights=weights, source=seq, imgsz=64, conf_thres=0.05, project=tmp_path, name="f", track=tracker_yaml,
              slice=48, nosave=True)
    assert len(res) == 4 and all("track_ids" in r for r in res)
    rows = read_mot(tmp_path / "f" / "tracks" / "seq01.txt")  # the folder is one sequence, frames in name order
    assert len(rows) == sum(int((r["track_ids"] >= 0).sum()) for r in res) > 0
    assert set(rows[:, 0].astype(int)) <= {1, 2, 3, 4}
    plain = run(weights=weights, source=seq, imgsz=64, conf_thres=0.05, project=tmp_path, name="p", nosave=True)
    assert "track_ids" not in plain[0] and not (tmp_path / "p" / "tracks").exists()  # default unchanged


def test_track_bad_input_is_one_line_and_writes_nothing(weights, tracker_yaml, tmp_path, capsys):
    im = tmp_path / "one.jpg"
    cv2.imwrite(str(im), frames(1)[0])
    project = tmp_path / "runs"
    argv = ["--weights", str(weights), "--source", str(im), "--project", str(project), "--imgsz", "64"]
    assert main([*argv, "--track", str(tracker_yaml)]) == 1
    err = capsys.readouterr().err.strip()
    assert "--track needs a video, a stream or a folder of frames" in err and "\n" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("association: nwd\nmatch_treshold: 0.3\n")
    seq = tmp_path / "seq"
    seq.mkdir()
    for k, f in enumerate(frames(2)):
        cv2.imwrite(str(seq / f"{k}.png"), f)
    argv[3] = str(seq)
    assert main([*argv, "--track", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{bad}: unknown tracker key 'match_treshold'" in err and "\n" not in err
    assert not project.exists()


def test_hub_results_carry_track_ids(weights):
    model = load_custom(weights, conf=0.05)
    tracker = Tracker({"track_high_thresh": 0.2, "track_low_thresh": 0.05, "new_track_thresh": 0.2})
    results = [model(im[..., ::-1], tracker=tracker) for im in frames(3)]
    for r in results:
        assert len(r.track_ids) == 1 and len(r.track_ids[0]) == len(r.pred[0])
    assert max(int(r.track_ids[0].max(initial=-1)) for r in results) >= 1
    df = results[-1].pandas().xyxy[0]
    assert df["track_id"].tolist() == results[-1].track_ids[0].tolist()
    assert model(frames(1)[0][..., ::-1]).track_ids is None  # no tracker: no IDs, as before
