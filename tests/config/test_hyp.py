"""Hyperparameter loading: shipped files, validation messages, overrides."""

from pathlib import Path

import pytest
import yaml

from utils.config.hyp import REQUIRED_KEYS, HypError, load_hyp

HYP_FILES = sorted((Path(__file__).resolve().parents[2] / "hyp").glob("hyp.*.yaml"))  # not evolve.yaml: a space


@pytest.mark.parametrize("path", HYP_FILES, ids=lambda p: p.name)
def test_shipped_files_load(path):
    h = load_hyp(path)
    assert h.lr0 == 0.01 and h.box == 0.05 and h.anchor_t == 4.0
    assert load_hyp(h.to_dict()) == h  # round trip through a plain dict (checkpoints, hyp.yaml)


def test_tfl_files_carry_their_settings():
    assert load_hyp("hyp.tfl.yaml").tfl and not load_hyp("hyp.tfl.yaml").tfl_piecewise
    assert load_hyp("hyp.tfl-piecewise.yaml").tfl_piecewise
    assert load_hyp("hyp.focal-eiou.yaml").box_loss == "focal_eiou"
    both = load_hyp("hyp.tfl-focal-eiou.yaml")
    assert both.tfl and both.box_loss == "focal_eiou" and both.tfl_terms == ("box", "obj", "cls")
    base = load_hyp("hyp.scratch-low.yaml")
    assert not base.tfl and base.box_loss == "ciou"


def write(tmp_path, data) -> Path:
    p = tmp_path / "hyp.bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def base() -> dict:
    return load_hyp("hyp.scratch-low.yaml").to_dict()


def test_unknown_key_named_with_file(tmp_path):
    p = write(tmp_path, {**base(), "lr_0": 0.1})
    with pytest.raises(HypError, match=r"hyp\.bad\.yaml.*unknown hyperparameter.*'lr_0'"):
        load_hyp(p)


def test_missing_key_named_with_file(tmp_path):
    d = base()
    del d["obj_pw"]
    with pytest.raises(HypError, match=r"hyp\.bad\.yaml: missing hyperparameter.*'obj_pw'"):
        load_hyp(write(tmp_path, d))
    assert "obj_pw" in REQUIRED_KEYS and "tfl" not in REQUIRED_KEYS


@pytest.mark.parametrize("key,value,message", [
    ("tfl_k", -1, "tfl_k.*>= 0"),
    ("focal_eiou_gamma", -0.5, "focal_eiou_gamma.*>= 0"),
    ("tfl_s", 0, "tfl_s.*> 0"),
    ("tfl_terms", ["box", "size"], "tfl_terms.*unknown term.*'size'"),
    ("tfl_norm", "median", "tfl_norm"),
    ("box_loss", "l2", "box_loss.*unknown box loss"),
    ("focal_l1_beta", 0.2, r"focal_l1_beta.*\[1/e, 1\]"),
    ("lr0", "fast", "lr0.*must be a number"),
    ("tfl", "maybe", "tfl.*true or false"),
    ("fliplr", 1.5, r"fliplr.*\[0, 1\]"),
    ("anchor_t", float("nan"), "anchor_t.*finite"),
])
def test_bad_values(tmp_path, key, value, message):
    with pytest.raises(HypError, match=message):
        load_hyp(write(tmp_path, {**base(), key: value}))


def test_overrides_win_and_are_typed():
    h = load_hyp("hyp.tfl.yaml", ["tfl_k=3", "tfl_piecewise=true", "tfl_terms=[box,cls]", "box_loss=EIoU"])
    assert h.tfl_k == 3.0 and isinstance(h.tfl_k, float) and h.tfl_piecewise
    assert h.tfl_terms == ("box", "cls") and h.box_loss == "eiou"
    with pytest.raises(HypError, match="unknown hyperparameter 'tflk'"):
        load_hyp(None, ["tflk=3"])
    with pytest.raises(HypError, match="key=value"):
        load_hyp(None, ["tfl_k"])


def test_yolov5_style_access_and_replace():
    h = load_hyp()
    assert h["cls_pw"] == 1.0 and h.get("label_smoothing", 0.5) == 0.0
    h2 = h.replace(tfl=True)
    assert h2.tfl and not h.tfl


def test_not_a_mapping_and_missing_file(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(HypError, match="list.yaml: expected a mapping"):
        load_hyp(p)
    with pytest.raises(HypError, match="not found"):
        load_hyp(tmp_path / "nope.yaml")


@pytest.mark.parametrize("key,value,message", [
    ("assign_min_pos", -1, r"assign_min_pos.*>= 0"),
    ("assign_min_pos", 1.5, r"assign_min_pos.*whole number"),
    ("assign_topk", 0, r"assign_topk.*>= 1"),
    ("assign", "iou", r"assign.*choose from \['ratio', 'nwd'\]"),
    ("nwd_c", 0, r"nwd_c.*> 0 \(input px\)"),
    ("small_paste", 1.5, r"small_paste.*\[0, 1\]"),
    ("small_paste_n", -2, r"small_paste_n.*>= 0"),
    ("small_paste_area", 0, r"small_paste_area.*> 0"),
    ("small_paste_blend", "alpha", r"small_paste_blend.*choose from"),
])
def test_tiny_object_options_fail_at_load_time_naming_the_key(tmp_path, key, value, message):
    with pytest.raises(HypError, match=message):
        load_hyp(write(tmp_path, {**base(), key: value}))


def test_override_errors_name_the_override_not_the_file(tmp_path):
    with pytest.raises(HypError, match=r"^override: hyperparameter 'tfl_k' = -1.0: must be >= 0"):
        load_hyp("hyp.tfl.yaml", ["tfl_k=-1"])
    with pytest.raises(HypError, match=r"hyp\.bad\.yaml: hyperparameter 'tfl_k' = -1.0"):
        load_hyp(write(tmp_path, {**base(), "tfl_k": -1}))


def test_options_off_by_default_and_in_the_saved_dict():
    h = load_hyp("hyp.scratch-low.yaml")
    assert (h.assign, h.assign_min_pos, h.small_paste) == ("ratio", 0.0, 0.0)
    d = load_hyp("hyp.scratch-low.yaml", ["assign=nwd", "assign_topk=4", "small_paste=0.5", "small_paste_pool=on"])
    assert {k: d.to_dict()[k] for k in ("assign", "assign_topk", "small_paste", "small_paste_pool")} == {
        "assign": "nwd", "assign_topk": 4.0, "small_paste": 0.5, "small_paste_pool": True}


def test_markdown_table_lists_every_key_once():
    from utils.config.hyp import SPECS, markdown_table

    rows = [r for r in markdown_table().splitlines()[2:]]
    assert [r.split("`")[1] for r in rows] == list(SPECS)
    assert "| `nwd_c` | `12.8` | > 0 (input px) |" in markdown_table()


def test_docs_table_is_the_generated_one():
    """docs/hyperparameters.md holds exactly the table ``python -m utils.config.hyp`` prints (it cannot drift)."""
    from utils.config.hyp import markdown_table

    doc = (Path(__file__).resolve().parents[2] / "docs" / "hyperparameters.md").read_text(encoding="utf-8")
    assert markdown_table() in doc
    assert markdown_table().replace("`0.01`", "`0.02`", 1) not in doc  # the check bites on a changed default
