"""--tiny auto: label statistics (hand-computed), the choice rules on hand-made statistics, the rule file's checks,
the advice command, and train.py with the flag (settings in opt.yaml/hyp.yaml) and without it (nothing changes)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

import train
from tests.helpers import tiny_dataset
from utils.advise import advise
from utils.advise.choose import choose, scaled_size, sizes_needed
from utils.advise.label_stats import LabelStats, label_statistics, level_anchors
from utils.checkpoints import load_checkpoint, trained_imgsz
from utils.config.hyp import load_hyp
from utils.config.tiny_rules import DEFAULT_RULES, TinyRulesError, load_tiny_rules

HYP = load_hyp("hyp/hyp.scratch-low.yaml")
YOLOV5N_ANCHORS = np.array([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
                           dtype=float).reshape(3, 3, 2)
STRIDES = np.array([8.0, 16.0, 32.0])


def rules_dict(**options) -> dict:
    """The committed rule table as a dict, with some option rows updated."""
    d = yaml.safe_load(DEFAULT_RULES.read_text(encoding="utf-8"))
    for name, row in options.items():
        d["options"][name] = {**d["options"].get(name, {}), **row}
    return d


def stats(imgsz: int, tiny_share: float, tiny_match8: float = 1.0, n: int = 100) -> LabelStats:
    """Hand-made statistics: ``tiny_share`` of ``n`` objects tiny, ``tiny_match8`` of them matchable at stride 8."""
    return LabelStats(imgsz=imgsz, n_images=10, n_objects=n, sides=(4.0, 12.0, 40.0),
                      share_under={8: tiny_share / 3, 16: tiny_share / 2, 32: tiny_share}, tiny_share=tiny_share,
                      match={4: 1.0, 8: tiny_match8, 16: 0.5, 32: 0.1},
                      tiny_match={4: 1.0, 8: tiny_match8, 16: 0.3, 32: 0.0})


def at_sizes(imgsz: int, rules, tiny_share: float, tiny_match8: float = 1.0) -> dict[int, LabelStats]:
    return {s: stats(s, tiny_share, tiny_match8) for s in sizes_needed(imgsz, rules)}


# --- label statistics ------------------------------------------------------------------------------------------------
def test_level_anchors_are_input_pixels_with_a_p2_level_by_continuation():
    a = level_anchors(YOLOV5N_ANCHORS / STRIDES[:, None, None], STRIDES)
    assert list(a) == [4, 8, 16, 32]
    np.testing.assert_allclose(a[8], [[10, 13], [16, 30], [33, 23]])
    np.testing.assert_allclose(a[4], [[5, 6.5], [8, 15], [16.5, 11.5]])
    a2 = level_anchors(np.ones((4, 3, 2)), np.array([4.0, 8.0, 16.0, 32.0]))  # a P2 model keeps its own
    np.testing.assert_allclose(a2[4], 4.0)


def test_label_statistics_by_hand():
    # one 200 x 100 image at imgsz 100 (scale 0.5): boxes of 2 x 2, 20 x 20 and 50 x 50 input px
    labels = [np.array([[0, 0.5, 0.5, 0.02, 0.04], [0, 0.5, 0.5, 0.2, 0.4], [1, 0.5, 0.5, 0.5, 1.0]])]
    anchors = level_anchors(YOLOV5N_ANCHORS / STRIDES[:, None, None], STRIDES)
    s = label_statistics(np.array([[200, 100]]), labels, 100, anchors, anchor_t=4.0, tiny_side=32)
    assert (s.n_images, s.n_objects, s.per_image) == (1, 3, 3.0)
    assert s.share_under == {8: pytest.approx(1 / 3), 16: pytest.approx(1 / 3), 32: pytest.approx(2 / 3)}
    assert s.tiny_share == pytest.approx(2 / 3)
    # 2 px: 10 / 2 = 5 > 4 at stride 8, 5 / 2 = 2.5 and 6.5 / 2 = 3.25 < 4 at stride 4; 20 px: stride 4, 8, 16
    assert s.tiny_match == {4: 1.0, 8: 0.5, 16: 0.5, 32: 0.0}
    assert s.match[32] == pytest.approx(1 / 3)  # 50 px: 116 / 50 = 2.3, 90 / 50 = 1.8
    assert s.sides[1] == pytest.approx(20.0)
    empty = label_statistics(np.array([[64, 64]]), [np.zeros((0, 5))], 64, anchors)
    assert (empty.n_objects, empty.tiny_share, empty.tiny_match[8]) == (0, 0.0, 0.0)


# --- the choice rules on hand-made statistics -------------------------------------------------------------------------
def test_tiny_heavy_data_gets_a_larger_input_and_the_positive_weight():
    rules = load_tiny_rules(rules_dict(tfl={"effect": None}))  # without the TFL row: 2x and the positive weight
    a = choose(at_sizes(128, rules, tiny_share=0.9), 128, rules, HYP)
    assert a.imgsz == 256 and a.imgsz > a.base_imgsz and a.cost == pytest.approx(4.0)
    assert a.hyp == {"box": pytest.approx(0.05 * 1.56), "obj_pw": pytest.approx(1.56)}
    assert a.cfg is None  # stride 8 matches the tiny objects: no P2
    assert len(a.lines()) == 6 and all(line.startswith("tiny auto: ") for line in a.lines())
    assert "+21.1 pt" in a.lines()[1] and "n 5" in a.lines()[1]
    assert "+7.8 pt" in a.lines()[4] and "p 0.04" in a.lines()[4]
    assert "copy-paste: unchanged" in a.lines()[5] and "under the 2 pt bar" in a.lines()[5]
    # the committed table: 2x with Tiny Focal Loss (the study's best combination), no positive weight on top
    default = load_tiny_rules()
    b = choose(at_sizes(128, default, tiny_share=0.9), 128, default, HYP)
    assert (b.imgsz, b.cfg, b.hyp) == (256, None, {"tfl": True})


def test_data_without_small_objects_changes_nothing():
    rules = load_tiny_rules()
    for share in (0.0, 0.49):
        a = choose(at_sizes(640, rules, tiny_share=share), 640, rules, HYP)
        assert not a.changed and (a.imgsz, a.cfg, a.hyp, a.cost) == (640, None, {}, 1.0)
        assert [c.chosen for c in a.choices] == [False] * 4
    a = choose({640: stats(640, 0.0, n=0)}, 640, rules, HYP)  # no labels at all
    assert not a.changed


def test_a_cost_cap_of_one_keeps_the_size_and_picks_the_best_method_at_baseline_cost():
    rules = load_tiny_rules()
    a = choose(at_sizes(160, rules, tiny_share=0.93), 160, rules, HYP, max_cost=1.0)
    assert (a.imgsz, a.cfg, a.cost) == (160, None, 1.0)
    assert a.hyp == {"box": pytest.approx(0.078), "obj_pw": pytest.approx(1.56)}
    assert "best method at the baseline's inference cost" in a.lines()[4]
    assert "over --tiny-max-cost 1" in a.lines()[1]


def test_the_cap_is_never_exceeded_and_rounding_to_the_stride_counts():
    rules = load_tiny_rules(rules_dict(**{"scale_1.5": {"effect": 10.0}}))
    assert scaled_size(160, 1.5) == 256 and scaled_size(128, 1.5) == 192
    for base in (128, 160):
        for cap in (1.0, 1.5, 2.0, 2.25, 2.6, 3.9, 4.0, 9.0):
            a = choose(at_sizes(base, rules, 0.9), base, rules, HYP, max_cost=cap)
            assert a.cost <= cap and (a.imgsz / base) ** 2 <= cap + 1e-9, (base, cap, a.imgsz)
    assert choose(at_sizes(128, rules, 0.9), 128, rules, HYP, max_cost=2.0).imgsz == 128  # 1.5x costs 2.25
    assert choose(at_sizes(128, rules, 0.9), 128, rules, HYP, max_cost=2.25).imgsz == 192
    assert choose(at_sizes(160, rules, 0.9), 160, rules, HYP, max_cost=2.5).imgsz == 160  # 256 px: 2.56x
    assert choose(at_sizes(160, rules, 0.9), 160, rules, HYP, max_cost=2.6).imgsz == 256
    assert choose(at_sizes(128, rules, 0.9), 128, rules, HYP).imgsz == 256  # no cap: the largest effect


def test_p2_only_when_stride_8_cannot_match_most_tiny_objects():
    rules = load_tiny_rules(rules_dict(p2={"effect": 5.0}, scale_2={"effect": None}, **{"scale_1.5": {"effect": None}}))
    kw = dict(p2_cfg="yolov5n-p2.yaml")
    assert choose(at_sizes(128, rules, 0.9, tiny_match8=0.9), 128, rules, HYP, **kw).cfg is None
    a = choose(at_sizes(128, rules, 0.9, tiny_match8=0.2), 128, rules, HYP, **kw)
    assert a.cfg == "yolov5n-p2.yaml" and a.cost == pytest.approx(1.17) and "20%" in a.lines()[2]
    assert choose(at_sizes(128, rules, 0.9, 0.2), 128, rules, HYP, max_cost=1.1, **kw).cfg is None  # over the cap
    none = choose(at_sizes(128, rules, 0.9, 0.2), 128, rules, HYP, p2_cfg=None, no_p2="there is no models/x-p2.yaml")
    assert none.cfg is None and "no models/x-p2.yaml" in none.lines()[2]
    # a negative effect is never chosen, even when stride 8 matches nothing
    negative = load_tiny_rules(rules_dict(p2={"effect": -6.3}))
    assert choose(at_sizes(128, negative, 0.9, 0.0), 128, negative, HYP, **kw).cfg is None


def test_settings_the_user_gave_are_left_alone():
    rules = load_tiny_rules(rules_dict(copy_paste={"effect": 3.0}))
    a = choose(at_sizes(128, rules, 0.9), 128, rules, HYP, user_keys=frozenset({"obj_pw"}))
    assert "box" not in a.hyp and a.hyp["small_paste"] == 0.5 and a.hyp["small_paste_area"] == 1024.0
    tfl = choose(at_sizes(128, rules, 0.9), 128, rules, HYP.replace(tfl=True))
    assert "box" not in tfl.hyp and "Tiny Focal Loss" in tfl.lines()[3]


TFL_ROW = {"row": "study row scale-2x+tfl vs scale-2x", "effect": 3.0, "over": "scale_2", "cost": 1.0,
           "source": "hand-made", "hyp": {"tfl": True}}


def test_tfl_is_chosen_only_on_top_of_the_option_it_was_measured_over():
    rules = load_tiny_rules(rules_dict(tfl=TFL_ROW))
    a = choose(at_sizes(128, rules, 0.9), 128, rules, HYP)
    assert a.imgsz == 256 and a.hyp == {"tfl": True}  # 2x, TFL, and no positive weight on top of TFL
    text = "\n".join(a.lines())
    assert "Tiny Focal Loss: tfl True" in text and "+3.0 pt tiny AP50 over scale_2" in text
    assert "positive weight: unchanged" in text and "Tiny Focal Loss is on" in text
    capped = choose(at_sizes(128, rules, 0.9), 128, rules, HYP, max_cost=2.25)  # 1.5x: TFL was not measured there
    assert capped.imgsz == 192 and "tfl" not in capped.hyp and "measured only on top of scale_2" in "\n".join(
        capped.lines())
    weak = load_tiny_rules(rules_dict(tfl={**TFL_ROW, "effect": 1.0}))
    assert "tfl" not in choose(at_sizes(128, weak, 0.9), 128, weak, HYP).hyp
    assert "tfl" not in choose(at_sizes(128, rules, 0.9), 128, rules, HYP, user_keys=frozenset({"tfl"})).hyp
    assert "tfl" not in load_tiny_rules().options or load_tiny_rules().options["tfl"].hyp.get("tfl") is True


# --- the rule file ---------------------------------------------------------------------------------------------------
def test_the_committed_rule_file_loads_and_names_its_sources():
    r = load_tiny_rules()
    assert [o.scale for o in r.scales] == [1.5, 2.0] and r.options["pos_weight"].factor == 1.56
    assert all(o.source and o.row for o in r.options.values())


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(typo=1), ["unknown key 'typo'"]),
    (lambda d: d["options"]["scale_2"].update(efect=3), ["options.scale_2", "unknown key 'efect'"]),
    (lambda d: d["options"].update(mosaic={"row": "x"}), ["unknown key 'options.mosaic'"]),
    (lambda d: d["options"]["p2"].pop("cost"), ["options.p2", "missing key 'cost'"]),
    (lambda d: d["options"]["pos_weight"].update(factor="big"), ["options.pos_weight.factor", "number"]),
    (lambda d: d.update(min_tiny_share=1.5), ["min_tiny_share"]),
    (lambda d: d["options"]["copy_paste"]["hyp"].update(small_pasta=1), ["options.copy_paste.hyp", "small_pasta"]),
    (lambda d: d["options"].update(tfl={**TFL_ROW, "hyp": {"tfl_q": 1}}), ["options.tfl.hyp", "tfl_q"]),
    (lambda d: d["options"].update(tfl={**TFL_ROW, "over": "mosaic"}), ["options.tfl.over", "mosaic"]),
])
def test_a_bad_rule_file_is_one_line_naming_file_and_key(tmp_path, change, words):
    d = rules_dict()
    change(d)
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump(d))
    with pytest.raises(TinyRulesError) as e:
        load_tiny_rules(f)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(f)) and all(w in msg for w in words), msg


# --- the command and train.py ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("synthetic"), n_train=16, n_val=8, imgsz=64)


def test_advise_command_prints_one_line_per_choice(tiny_data, tmp_path, capsys):
    assert advise.main([str(tiny_data), "--imgsz", "64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in out[:6]] == ["labels", "input scale", "P2 model",
                                                                  "Tiny Focal Loss", "positive weight", "copy-paste"]
    assert "--imgsz 128" in out[6]  # the synthetic objects are all under 32 px at 64 px
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT_RULES.read_text(encoding="utf-8") + "extra: 1\n")
    assert advise.main([str(tiny_data), "--rules", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml" in err[0] and "'extra'" in err[0]
    assert advise.main([str(tiny_data), "--tiny-max-cost", "0.5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tiny-max-cost" in err[0] and "0.5" in err[0], err


def run_train(tiny_data: Path, project: Path, name: str, *argv: str) -> Path:
    rc = train.main(["--data", str(tiny_data), "--project", str(project), "--name", name, "--imgsz", "64",
                     "--epochs", "1", "--batch-size", "8", "--workers", "0", "--noplots", *argv])
    assert rc == 0
    return project / name


def test_train_tiny_auto_applies_and_records_its_choice_and_is_off_by_default(tiny_data, tmp_path, caplog,
                                                                              monkeypatch):
    real_save = train.save_epoch

    def save_then_crash(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt("simulated crash after epoch 0")

    monkeypatch.setattr(train, "save_epoch", save_then_crash)
    with caplog.at_level(logging.INFO), pytest.raises(KeyboardInterrupt):
        train.train(train.get_args_parser().parse_args([
            "--data", str(tiny_data), "--project", str(tmp_path), "--name", "auto", "--imgsz", "64", "--epochs", "2",
            "--batch-size", "8", "--workers", "0", "--noplots", "--noval", "--keep-optimizer", "--tiny", "auto"]))
    monkeypatch.setattr(train, "save_epoch", real_save)
    auto = tmp_path / "auto"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tiny auto: ")]
    assert len(lines) == 6 and "input scale: 2x (128 px)" in lines[1]
    advice = json.loads((auto / "tiny_auto.json").read_text())
    opt, hyp = (yaml.safe_load((auto / f).read_text()) for f in ("opt.yaml", "hyp.yaml"))
    assert advice["settings"]["imgsz"] == opt["imgsz"] == 128 and advice["base_imgsz"] == 64
    assert advice["settings"]["hyp"] and all(hyp[k] == v for k, v in advice["settings"]["hyp"].items())
    assert hyp["tfl"] is True and hyp["box"] == pytest.approx(0.05) and opt["tiny"] == "auto"  # TFL, not both
    assert [c["option"] for c in advice["choices"]] == ["input scale", "P2 model", "Tiny Focal Loss",
                                                        "positive weight", "copy-paste"]

    # --resume keeps the chosen settings (from the checkpoint) without choosing again; val.py's default size follows
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train.train(train.get_args_parser().parse_args(["--resume", str(auto / "weights" / "last.pt")]))
    assert not [r for r in caplog.records if r.getMessage().startswith("tiny auto: ")]
    ck = load_checkpoint(auto / "weights" / "last.pt")
    assert ck["epoch"] == 1 and trained_imgsz(ck) == 128 and ck["hyp"]["tfl"] is True
    assert yaml.safe_load((auto / "opt.yaml").read_text())["imgsz"] == 128
    assert json.loads((auto / "tiny_auto.json").read_text()) == advice

    default = run_train(tiny_data, tmp_path, "default")
    opt_d, hyp_d = (yaml.safe_load((default / f).read_text()) for f in ("opt.yaml", "hyp.yaml"))
    assert not (default / "tiny_auto.json").exists()
    assert hyp_d == HYP.to_dict()  # the hyp file as it is
    assert (opt_d["imgsz"], opt_d["cfg"], opt_d["tiny"], opt_d["tiny_max_cost"]) == (64, "", None, None)
    assert set(opt_d) == set(opt) and set(hyp_d) == set(hyp)
