"""experiments/nms_study.py: NMS settings parsed strictly; the report pairs each setting with IoU-NMS over models
and marks the setting chosen on val (hand-made evaluation files, hand-computed differences)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.nms_study import Setting, main, parse_config, report
from experiments.study_runner import StudyError


def _write(out: Path, variant: str, seed: int, split: str, config: str, tiny: float, big: float) -> None:
    f = out / f"{variant}-seed{seed}" / f"{split}-{config.replace(':', '-')}.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    rec = {"variant": variant, "seed": seed, "imgsz": 160, "split": split, "config": config,
           "overall": {"map50": 0.5, "recall": 0.5},
           "buckets": {"tiny": {"map50": tiny, "r": tiny}, "big": {"map50": big, "r": big}}}
    f.write_text(json.dumps(rec))


def test_configs_are_parsed_strictly():
    assert parse_config("nwd:0.8") == Setting("model", "nwd", 0.8) and parse_config("iou:0.6").nms == "iou"
    assert parse_config("native:nwd:0.6") == Setting("native", "nwd", 0.6)
    assert parse_config("tile:greedy-nmm:ios:0.5") == Setting("tile", "iou", 0.6, "greedy-nmm", "ios")
    for bad in ("nwd", "giou:0.5", "nwd:1.5", "iou:x", "native:ios:0.5", "tile:nms:giou:0.5", "tile:nms:0.5"):
        with pytest.raises(StudyError, match="--configs"):
            parse_config(bad)


def test_report_pairs_over_models_and_marks_the_val_choice(tmp_path, capsys):
    # three models; NWD 0.6 adds +0.02 / +0.04 / +0.03 tiny AP50 (mean +3.00 points), NWD 0.8 loses on val
    for i, (base, d6, d8) in enumerate([(0.20, 0.02, -0.01), (0.30, 0.04, -0.02), (0.25, 0.03, 0.0)]):
        for split in ("val", "test"):
            _write(tmp_path, "m", i, split, "iou:0.6", base, 0.6)
            _write(tmp_path, "m", i, split, "nwd:0.6", base + d6, 0.58)
            _write(tmp_path, "m", i, split, "nwd:0.8", base + d8, 0.6)
    text = report(tmp_path)
    test_part = text.split("**test**")[1]
    row = next(line for line in test_part.splitlines() if line.startswith("| nwd:0.6"))
    assert "(chosen on val)" in row and "| 3 |" in row
    # mean 0.25 + 0.03; diffs 2, 4, 3 points: sd 1, CI 4.303 / sqrt(3) = 2.48, t = 3 sqrt(3) = 5.20 on 2 df: p 0.035
    assert "28.00 (+3.00 ± 2.48, p 0.035, n 3)" in row
    assert "58.00 (-2.00 ± 0.00, p n/a, n 3)" in row  # -2 points on every model: no variance, no p
    assert "(chosen on val)" not in text.split("**test**")[0]
    assert main(["report", str(tmp_path / "none")]) == 1
    assert "no evaluation files yet" in capsys.readouterr().err
