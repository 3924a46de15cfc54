"""experiments/study_report.py on hand-made result files: n per variant, paired differences (95 % CI, p) against the
baseline and the control chosen on val, cost ratios, the Pareto front and figure."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t, ttest_rel

from experiments import study_report as sr


def write(out: Path, variant: str, seed: int, tiny: float, val_tiny: float = 0.0, big: float = 0.8,
          train_s: float = 50.0, infer_ms: float = 4.0, imgsz: int = 160) -> None:
    b = {"tiny": {"n_gt": 100, "p": 0.6, "r": tiny + 0.1, "map50": tiny, "map50_95": tiny / 3},
         "big": {"n_gt": 10, "p": 0.9, "r": 0.9, "map50": big, "map50_95": big / 2}}
    r = {"schema": 1, "variant": variant, "seed": seed, "protocol": {"epochs": 12},
         "test": {"overall": {}, "buckets": b}, "definition": {"imgsz": imgsz},
         "val": {"overall": {}, "buckets": {"tiny": {"map50": val_tiny}}},
         "train_s_per_epoch": train_s, "inference_ms_per_image": infer_ms}
    (out / variant).mkdir(parents=True, exist_ok=True)
    (out / variant / f"seed{seed}.json").write_text(json.dumps(r))


BASE = [0.20, 0.22, 0.25, 0.21, 0.24]
CTRL = [0.23, 0.25, 0.26, 0.25, 0.27]
SCALE = [0.30, 0.31]  # a partial variant: two seeds so far


@pytest.fixture
def study(tmp_path):
    out = tmp_path / "tiny-study-x"
    for s in range(5):
        write(out, "baseline", s, BASE[s], train_s=50 + s, infer_ms=4.0 + 0.1 * s)
        write(out, "posw-x2", s, CTRL[s], val_tiny=0.40, infer_ms=4.2)
    write(out, "posw-x3", 0, 0.26, val_tiny=0.39, infer_ms=4.5)  # better on test, worse on val: not the control
    for s, v in enumerate(SCALE):
        write(out, "scale-2x", s, v, big=0.7, train_s=200, infer_ms=16.0, imgsz=320)
    return out


def test_load_and_best_control_chosen_on_val(study):
    runs, defs = sr.load_results(study)
    assert {k: len(v) for k, v in runs.items()} == {"baseline": 5, "posw-x2": 5, "posw-x3": 1, "scale-2x": 2}
    assert runs["scale-2x"][1]["tiny/map50"] == 0.31 and runs["posw-x2"][0]["val/tiny/map50"] == 0.40
    assert defs["scale-2x"]["imgsz"] == 320
    assert sr.best_control(runs) == "posw-x2"
    assert sr.control_factor("posw-x2.5") == 2.5 and math.isnan(sr.control_factor("baseline"))
    runs["posw-x3"][0]["val/tiny/map50"] = 0.40  # a tie: the smaller factor
    assert sr.best_control(runs) == "posw-x2"
    assert sr.best_control({"baseline": runs["baseline"]}) is None


def test_paired_statistics_by_hand(study):
    runs, _ = sr.load_results(study)
    d = np.array(CTRL) - np.array(BASE)
    half = t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    cell = sr.diff_cell(runs["posw-x2"], runs["baseline"], "tiny/map50")
    assert cell == f"{100 * d.mean():+.2f} ± {100 * half:.2f} (p {ttest_rel(CTRL, BASE).pvalue:.3f}, n 5)"
    # the partial variant is paired over the seeds it has
    d2 = np.array(SCALE) - np.array(BASE[:2])
    h2 = t.ppf(0.975, 1) * d2.std(ddof=1) / math.sqrt(2)
    assert sr.diff_cell(runs["scale-2x"], runs["baseline"], "tiny/map50").startswith(
        f"{100 * d2.mean():+.2f} ± {100 * h2:.2f} (p ")
    assert sr.diff_cell(runs["posw-x3"], runs["baseline"], "tiny/map50") == f"{100 * (0.26 - 0.2):+.2f} (p n/a, n 1)"


def test_cost_ratios_are_medians_over_the_baseline(study):
    runs, _ = sr.load_results(study)
    heads, cost = sr.cost_values(runs)
    assert heads == ("train s/epoch (ratio)", "inference ms (ratio)")
    assert cost["scale-2x"] == (200, 16) and cost["baseline"] == pytest.approx((52, 4.2))
    assert sr.ratio_cell(cost["scale-2x"][0], cost["baseline"][0]) == f"200 ({200 / 52:.2f}x)"
    assert sr.ratio_cell(4.2, 4.2) == "4.2 (1.00x)" and sr.ratio_cell(math.nan, 4.2) == "-"


def test_pareto_front():
    pts = {"a": (1.0, 0.20), "b": (1.0, 0.25), "c": (2.0, 0.24), "d": (4.0, 0.30), "e": (4.0, 0.30),
           "f": (3.0, math.nan)}
    assert sr.pareto_front(pts) == ["b", "d", "e"]  # a: b is as fast and better; c: b is faster and better


def test_report_table_and_figure(study, tmp_path):
    md, png = tmp_path / "r.md", tmp_path / "pareto.png"
    text = sr.report(study, md, png)
    assert md.read_text() == text and png.stat().st_size > 1000
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["baseline"][1] == "5" and rows["scale-2x"][1] == "2" and rows["posw-x2 (control)"][1] == "5"
    assert rows["scale-2x"][2].startswith(f"{100 * np.mean(SCALE):.2f} ± ")
    assert "(3.85x)" in rows["scale-2x"][9] and rows["scale-2x"][11] == "320"
    assert rows["posw-x2 (control)"][13].strip(" |") == "40.00" and rows["baseline"][12] == "-"
    d = np.array(SCALE) - np.array(CTRL[:2])
    assert rows["scale-2x"][7].startswith(f"{100 * d.mean():+.2f} ± ")  # vs the control, over seeds 0 and 1
    assert "Pareto front (tiny AP50 vs inference time): posw-x2, posw-x3, scale-2x" in text


def test_plateau_gain_and_curve(tmp_path):
    from experiments.study_curve import curve_summary
    from experiments.study_report import plateau_gain

    assert plateau_gain(np.array([0.1, 0.2, 0.3, 0.4, 0.41, 0.42, 0.43, 0.44])) == pytest.approx(0.44 / 0.42 - 1)
    assert plateau_gain(np.array([0.5, 0.4, 0.3, 0.2])) == pytest.approx(0.2 / 0.5 - 1)  # falling: negative
    assert math.isnan(plateau_gain(np.array([0.3])))
    d = tmp_path / "run"
    d.mkdir()
    rows = ["epoch,metrics/precision,metrics/recall,metrics/mAP_0.5,metrics/mAP_0.5:0.95,metrics/tiny/map50"]
    rows += [f"{e},0.5,0.5,{0.1 * e},{0.05 * e},{0.02 * e}" for e in range(4)]
    (d / "results.csv").write_text("\n".join(rows) + "\n")
    text = curve_summary([d], tmp_path / "c.png")
    f = [0.1 * 0.1 * e + 0.9 * 0.05 * e for e in range(4)]
    assert f"final val fitness {f[-1]:.4f}, tiny AP50 0.0600" in text and "still improving" in text
    assert (tmp_path / "c.png").stat().st_size > 1000
