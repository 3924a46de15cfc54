"""utils/track: the tracker's documented behaviour (tiny fast objects, camera pans, births, deaths,
re-identification, the low-score stage), camera-motion estimates, pairwise similarities and tracker YAMLs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.config.tracker import TrackerConfig, TrackerConfigError, docs_table, load_tracker_config
from utils.ops.pairwise import pairwise_centre, pairwise_iou, pairwise_nwd
from utils.track.camera import CameraMotion
from utils.track.tracker import Tracker


def box(x: float, y: float, s: float = 6.0) -> np.ndarray:
    return np.array([[x, y, x + s, y + s]], np.float64)


def follow(cfg: dict, boxes: list[np.ndarray], frames: list[np.ndarray] | None = None,
           scores: list[float] | None = None) -> list[int]:
    """Track one object per frame (an empty array: not detected) -> the ID given each frame (-1 or 0 when none)."""
    tr, out = Tracker(cfg), []
    for k, b in enumerate(boxes):
        s = np.full(len(b), 0.9 if scores is None else scores[k])
        ids = tr.update(b, s, None, None if frames is None else frames[k])
        out.append(int(ids[0]) if len(ids) else 0)
    return out


# ------------------------------------------------------------------------------------------------ similarities
def test_pairwise_similarities_hand_computed():
    a = np.array([[0, 0, 10, 10], [100, 100, 106, 106]], np.float64)
    b = np.array([[5, 0, 15, 10], [103, 104, 109, 110]], np.float64)
    iou = pairwise_iou(a, b)
    assert iou[0, 0] == pytest.approx(50 / 150) and iou[0, 1] == 0
    assert iou[1, 1] == pytest.approx(6 / 66)  # overlap 3 x 2
    # NWD: same sizes, centre offset (3, 4) -> W2 = 5
    assert pairwise_nwd(a, b, 12.8)[1, 1] == pytest.approx(np.exp(-5 / 12.8))
    assert pairwise_nwd(a, b, 12.8)[0, 0] == pytest.approx(np.exp(-5 / 12.8))
    # centre: d = 5, mean size 6 -> exp(-5 / (2 * 6))
    assert pairwise_centre(a, b, 2.0)[1, 1] == pytest.approx(np.exp(-5 / 12))
    assert pairwise_iou(np.zeros((0, 4)), b).shape == (0, 2) and pairwise_nwd(a, np.zeros((0, 4))).shape == (2, 0)
    with pytest.raises(ValueError, match="c must be > 0"):
        pairwise_nwd(a, b, 0)


# ------------------------------------------------------------------------------------------------ acceptance
def test_nwd_keeps_one_id_for_a_6px_object_moving_5px_per_frame_iou_does_not():
    boxes = [box(100 + 5 * f, 50) for f in range(40)]
    nwd = follow({"association": "nwd", "camera_motion": False}, boxes)
    assert nwd == [1] * 40
    iou = follow({"association": "iou", "camera_motion": False}, boxes)
    assert iou[0] == 1 and max(iou[1:]) == -1  # IoU 1/11 < 0.2 at every step: never associated again


def textured_world(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (n, n)).astype(np.float32), (0, 0), 2.0)
    im = np.clip(128 + 400 * noise, 0, 255).astype(np.uint8)
    return cv2.cvtColor(im, cv2.COLOR_GRAY2BGR)


def panning_clip(frames: int = 30, view: int = 200, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A camera panning 4 px/frame with +-12 px shake over a textured world, and a 6-px object moving 5 px/frame in
    the world: (frames BGR, the object's box in each frame, view px)."""
    rng = np.random.default_rng(seed)
    world = textured_world(view + 8 * frames + 60, seed)
    ims, boxes = [], []
    for f in range(frames):
        ox, oy = int(20 + 4 * f + rng.integers(-12, 13)), int(20 + rng.integers(-12, 13))
        im = world[oy:oy + view, ox:ox + view].copy()
        x, y = 80 + 5 * f - ox, 120 - oy  # world position minus the camera's offset
        b = box(x, y)
        cv2.rectangle(im, (int(x), int(y)), (int(x) + 5, int(y) + 5), (0, 0, 255), -1)
        ims.append(im)
        boxes.append(b)
    return ims, boxes


def test_camera_motion_keeps_the_id_through_a_shaking_pan_and_iou_alone_loses_it():
    ims, boxes = panning_clip()
    assert follow({"association": "nwd", "camera_motion": True}, boxes, ims) == [1] * len(ims)
    iou = follow({"association": "iou", "camera_motion": False}, boxes, ims)
    assert max(iou[1:]) == -1
    # the shake alone (no compensation) costs NWD its track at least once
    assert len(set(follow({"association": "nwd", "camera_motion": False}, boxes, ims)) - {-1}) > 1


def test_camera_motion_estimate_matches_the_known_shift():
    world = textured_world(400, 1)
    a, b = world[50:250, 50:250], world[47:247, 58:258]  # the view moved by (+8, -3): content moves (-8, +3)
    for method in ("sparse", "phase"):
        cm = CameraMotion(downscale=2, max_corners=200, method=method)
        assert np.allclose(cm(a), np.eye(2, 3))  # first frame: identity
        m = cm(b)
        assert m[:, 2] == pytest.approx([-8, 3], abs=0.5) and m[:, :2] == pytest.approx(np.eye(2), abs=0.02)
        assert np.allclose(cm(b), np.eye(2, 3), atol=0.3)  # the same frame again: no motion


def test_births_deaths_and_reidentification_after_a_5_frame_occlusion():
    cfg = {"association": "nwd", "camera_motion": False, "track_buffer": 8}
    path = [box(100 + 2 * f, 50) for f in range(40)]
    seen = [path[f] if not 10 <= f < 15 else np.zeros((0, 4)) for f in range(40)]  # occluded 5 frames
    ids = follow(cfg, seen)
    assert set(ids) - {0} == {1}  # re-identified: the same ID after the occlusion
    gone = [path[f] if not 10 <= f < 20 else np.zeros((0, 4)) for f in range(40)]  # 10 frames > track_buffer 8
    ids = follow(cfg, gone)
    assert ids[:10] == [1] * 10 and ids[20] == -1 and ids[21:] == [2] * 19  # deleted; reborn, confirmed next frame
    # births after the first frame: unconfirmed for one frame; a one-frame detection never gets an ID
    tr = Tracker(cfg)
    assert tr.update(box(0, 0), [0.9]).tolist() == [1]  # first frame: confirmed at once
    assert tr.update(np.concatenate([box(2, 0), box(200, 200)]), [0.9, 0.9]).tolist() == [1, -1]
    assert tr.update(np.concatenate([box(4, 0), box(202, 200)]), [0.9, 0.9]).tolist() == [1, 2]
    assert tr.update(np.concatenate([box(6, 0), box(400, 10)]), [0.9, 0.9]).tolist() == [1, -1]
    assert tr.update(box(8, 0), [0.9]).tolist() == [1]
    assert tr.update(np.concatenate([box(10, 0), box(400, 10)]), [0.9, 0.9]).tolist() == [1, -1]  # not 3
    # below new_track_thresh nothing is born
    tr = Tracker(cfg)
    assert [tr.update(box(5 * f, 0), [0.55]).tolist() for f in range(3)] == [[-1]] * 3


def test_low_score_detections_extend_tracks_but_start_none():
    cfg = {"association": "nwd", "camera_motion": False}
    scores = [0.9] * 5 + [0.3] * 5 + [0.9] * 5
    assert follow(cfg, [box(3 * f, 0) for f in range(15)], scores=scores) == [1] * 15
    assert follow(cfg, [box(3 * f, 0) for f in range(5)], scores=[0.3] * 5) == [-1] * 5
    assert follow(cfg, [box(3 * f, 0) for f in range(5)], scores=[0.05] * 5) == [-1] * 5  # below track_low_thresh


# ------------------------------------------------------------------------------------------------ config
def test_tracker_yaml_is_validated(tmp_path):
    assert load_tracker_config() == load_tracker_config("bytetrack-tiny") == TrackerConfig()
    assert load_tracker_config("bytetrack.yaml").association == "iou"
    f = tmp_path / "t.yaml"
    f.write_text("association: nwd\ntrack_bufer: 10\n")
    with pytest.raises(TrackerConfigError, match=r"t\.yaml: unknown tracker key 'track_bufer'"):
        load_tracker_config(f)
    for text, msg in (("association: giou\n", "'association': must be one of"), ("match_thresh: 1.5\n", "<= 1"),
                      ("track_buffer: 2.5\n", "'track_buffer' must be a int"), ("- 1\n", "expected a mapping"),
                      ("camera_motion: 1\n", "must be a bool"),
                      ("track_low_thresh: 0.6\ntrack_high_thresh: 0.5\n", "above track_high_thresh")):
        f.write_text(text)
        with pytest.raises(TrackerConfigError, match=msg) as e:
            load_tracker_config(f)
        assert str(f) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TrackerConfigError, match="not found"):
        load_tracker_config(tmp_path / "missing.yaml")
    assert docs_table().count("\n") == len(TrackerConfig.__dataclass_fields__) + 1


def test_docs_table_is_the_declared_keys():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "tracking.md").read_text(encoding="utf-8")
    assert docs_table() in doc


def test_pairwise_numpy_functions_agree_with_the_torch_merge_metrics():
    import torch

    from utils.ops.box_merge import pairwise

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (7, 2))
    a = np.concatenate([xy, xy + rng.uniform(2, 20, (7, 2))], 1)
    b = a[::-1] + rng.normal(0, 3, a.shape)
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert np.allclose(pairwise_iou(a, b), pairwise(ta, tb, "iou").numpy(), atol=1e-6)
    assert np.allclose(pairwise_nwd(a, b, 12.8), pairwise(ta, tb, "nwd", 12.8).numpy(), atol=1e-6)
