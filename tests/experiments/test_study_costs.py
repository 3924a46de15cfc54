"""experiments/study_costs.py (``tiny_study.py costs``): finished variants re-timed together from tiny real
checkpoints (64 and 256 px, one round: fast), costs.json's content, the report switching to it, the one-line errors."""

import json
import math
import shutil
from pathlib import Path

import pytest

from experiments import study_cli, study_costs
from experiments import study_report as sr
from experiments.study_runner import Protocol, StudyError, StudyVariant, execute, final_weights, plan
from tests.experiments.test_study_runner import fake_outcome
from tests.helpers import save_model_checkpoint

P = Protocol("d.yaml", epochs=1, imgsz=64, batch_size=16, nbs=16)
VS = [StudyVariant("baseline"), StudyVariant("tfl", hyp="hyp.tfl.yaml"), StudyVariant("scale-4x", scale=4.0),
      StudyVariant("paste", overrides=("small_paste=0.5",))]


def finish(runs, weights: Path | None) -> None:
    """Result files for ``runs`` (a stand-in run function), each with a copy of ``weights`` as its last.pt."""
    def fake_run(r, p):
        if weights:
            final_weights(r.run_dir).parent.mkdir(parents=True)
            shutil.copyfile(weights, final_weights(r.run_dir))
        return fake_outcome(0.3)

    assert execute(runs, P, fake_run, "c", "m", log=lambda m: None)[1] == len(runs)


@pytest.fixture
def study(tmp_path):
    """OUT with baseline and scale-4x (seed 0), tfl (seeds 0 and 1, weights only for seed 1) and paste (no
    weights); the runs root beside it."""
    out, runs = tmp_path / "results" / "study-c", tmp_path / "runs"
    w = save_model_checkpoint(tmp_path / "yolov5n.pt")  # one tiny yolov5n (3 classes) for every run
    finish(plan(VS[:3], [0], out, runs), w)
    final_weights(runs / "study-c" / "tfl" / "seed0").unlink()
    finish(plan([VS[1]], [1], out, runs), w)
    finish(plan([VS[3]], [0], out, runs), None)
    return out, runs


def test_costs_json_and_the_report_use_it(study, capsys):
    out, runs = study
    rc = study_cli.main(["costs", str(out), "--runs", str(runs), "--rounds", "1", "--passes", "2",
                         "--train-steps", "1"])
    printed = capsys.readouterr().out
    assert rc == 0 and "| scale-4x | 0 | 256 |" in printed and "copy-paste) are not included" in printed
    assert "paste skipped: no " in printed and f"wrote {out / 'costs.json'}" in printed
    c = json.loads((out / "costs.json").read_text())
    assert c["schema"] == 1 and c["threads"] == 1 and c["rounds"] == 1 and len(c["load_before"]) == 3
    assert "torch threads" in c["machine"] and set(c["cpu_flags"]) <= set(study_costs.CPU_FLAGS)
    v = c["variants"]
    assert list(v) == ["baseline", "scale-4x", "tfl"]  # baseline first; paste has no weights
    assert v["tfl"]["seed"] == 1 and v["baseline"]["imgsz"] == 64 and v["scale-4x"]["imgsz"] == 256
    for x in v.values():
        assert x["inference_ms"] > 0 and x["train_step_ms"] > 0
        assert x["inference_ms_rounds"] == [x["inference_ms"]] and x["train_step_ms_rounds"] == [x["train_step_ms"]]
    assert v["scale-4x"]["inference_ms"] > v["baseline"]["inference_ms"]  # 16x the pixels

    text = sr.report(out)
    assert "Costs (ratio to the baseline): costs.json, the final weights re-timed together (1 interleaved" in text
    head = next(line for line in text.splitlines() if line.startswith("| variant"))
    assert "train step ms (ratio)" in head and "train s/epoch" not in head
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    b, s = v["baseline"], v["scale-4x"]
    assert rows["scale-4x"][9] == sr.ratio_cell(s["train_step_ms"], b["train_step_ms"])
    assert rows["scale-4x"][10] == f"{s['inference_ms']:.3g} ({s['inference_ms'] / b['inference_ms']:.2f}x)"
    assert rows["paste"][9] == rows["paste"][10] == "-"  # a variant costs.json lacks has no cost
    (out / "costs.json").unlink()
    head = next(line for line in sr.report(out).splitlines() if line.startswith("| variant"))
    assert "train s/epoch (ratio)" in head


def test_synthetic_targets_are_small_and_fixed():
    t = study_costs.synthetic_targets()
    assert t.shape[1] == 6 and set(t[:, 0].unique().tolist()) == set(range(study_costs.BATCH))
    assert (t[:, 2:] > 0).all() and (t[:, 2:4] - t[:, 4:] / 2 >= 0).all() and (t[:, 2:4] + t[:, 4:] / 2 <= 1).all()
    side_px = (t[:, 4] * t[:, 5]).sqrt() * study_costs.NATIVE_PX
    assert (side_px < 32).float().mean() > 0.8  # mostly tiny, as the study data
    assert study_costs.synthetic_targets().equal(t)


def test_errors_name_the_path(tmp_path, capsys):
    out, runs = tmp_path / "study-e", tmp_path / "runs"
    assert study_cli.main(["costs", str(out), "--runs", str(runs)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}: no result files" in err
    finish(plan(VS[:1], [0], out, runs), None)
    assert study_cli.main(["costs", str(out), "--runs", str(runs)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{runs / 'study-e' / '<variant>' / 'seed<N>' / 'weights' / 'last.pt'}" in err
    assert study_cli.main(["costs", str(out), "--runs", str(runs), "--rounds", "0"]) == 1
    assert "--rounds must be >= 1" in capsys.readouterr().err
    (out / "costs.json").write_text("{}")
    with pytest.raises(StudyError, match=r"costs\.json: not a costs file of schema 1"):
        sr.report(out)
    assert math.isnan(sr.cost_values(*sr.load_results(out)[:1], {"variants": {}})[1]["baseline"][0])
