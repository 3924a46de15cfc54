"""experiments/study_runner.py and study_cli.py: run order, result files, skipping finished runs, redoing interrupted
and failed ones, refusing results of another protocol (no training: a stand-in run function)."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from experiments import study_cli
from experiments.study_runner import (
    PlannedRun,
    Protocol,
    RunOutcome,
    StudyError,
    StudyVariant,
    execute,
    is_done,
    plan,
    read_result,
    seed_starts,
    sha256,
    train_argv,
)

P = Protocol("data/synthetic-aerial-1c.yaml", epochs=4, imgsz=160, batch_size=16, nbs=16, weights_sha256="ab" * 32)
VS = [StudyVariant("baseline"), StudyVariant("big", scale=2.0, cost=4.0), StudyVariant("p2", cfg="p2.yaml", cost=1.4),
      StudyVariant("tfl", hyp="hyp.tfl.yaml", cost=1.0)]


def fake_outcome(tiny: float) -> RunOutcome:
    buckets = {"tiny": {"n_gt": 10, "p": 0.5, "r": 0.4, "map50": tiny, "map50_95": tiny / 3},
               "big": {"n_gt": 2, "p": 0.9, "r": 0.9, "map50": 0.8, "map50_95": 0.5}}
    return RunOutcome({"overall": {"map50": tiny}, "buckets": buckets}, {"overall": {}, "buckets": buckets},
                      train_s=40.0, train_s_per_epoch=10.0, inference_ms=3.0)


class Recorder:
    """A run function that records its calls and optionally fails for some variants."""

    def __init__(self, fail: tuple[str, ...] = ()):
        self.calls: list[tuple[str, int]] = []
        self.fail = fail

    def __call__(self, r: PlannedRun, p: Protocol) -> RunOutcome:
        self.calls.append((r.variant.name, r.seed))
        r.run_dir.mkdir(parents=True, exist_ok=True)  # as train.py would
        if r.variant.name in self.fail:
            raise RuntimeError("boom")
        return fake_outcome(0.1 * (r.seed + 1))


def test_plan_is_seed_major_cheapest_first(tmp_path):
    runs = plan(VS, [0, 1], tmp_path / "study-a", tmp_path / "runs")
    assert [(r.variant.name, r.seed) for r in runs] == [
        ("baseline", 0), ("tfl", 0), ("p2", 0), ("big", 0), ("baseline", 1), ("tfl", 1), ("p2", 1), ("big", 1)]
    assert runs[2].result == tmp_path / "study-a" / "p2" / "seed0.json"
    assert runs[2].run_dir == tmp_path / "runs" / "study-a" / "p2" / "seed0"
    with pytest.raises(StudyError, match="twice"):
        plan([VS[0], VS[0]], [0], tmp_path, tmp_path)


def test_variant_input_size_and_train_argv(tmp_path):
    assert [StudyVariant("x", scale=s).imgsz(160) for s in (1.0, 1.5, 1.6, 2.0)] == [160, 256, 256, 320]
    r = plan([StudyVariant("c", overrides=("box=0.1", "obj_pw=2")), VS[1]], [3], tmp_path / "s", tmp_path / "runs")
    a = train_argv(r[0], P, "start.pt")
    assert a[a.index("--imgsz") + 1] == "160" and a[a.index("--seed") + 1] == "3"
    assert a[a.index("--weights") + 1] == "start.pt" and a[-3:] == ["--hyp-set", "box=0.1", "obj_pw=2"]
    assert "--noval" not in a and a[a.index("--nbs") + 1] == "16"
    b = train_argv(r[1], P)
    assert b[b.index("--imgsz") + 1] == "320" and "--weights" not in b and "--hyp-set" not in b


def test_execute_writes_results_and_skips_them_next_time(tmp_path):
    out = tmp_path / "study"
    runs = plan(VS, [0, 1], out, tmp_path / "runs")
    rec = Recorder()
    assert execute(runs, P, rec, "abc123", "cpu", log=lambda m: None) == (0, 8, 0)
    assert len(rec.calls) == 8 and len(list(out.glob("*/seed*.json"))) == 8
    r = read_result(out / "big" / "seed1.json")
    assert r["seed"] == 1 and r["variant"] == "big" and r["git_commit"] == "abc123"
    assert r["protocol"] == asdict(P) and r["definition"]["imgsz"] == 320
    assert r["train_s_per_epoch"] == 10.0 and r["inference_ms_per_image"] == 3.0
    assert r["test"]["buckets"]["tiny"]["map50"] == pytest.approx(0.2)
    # a second invocation trains nothing
    rec2 = Recorder()
    assert execute(runs, P, rec2, "abc123", "cpu", log=lambda m: None) == (8, 0, 0) and rec2.calls == []
    # a lost result (an interrupted run) is redone, its old run folder kept aside
    (out / "p2" / "seed1.json").unlink()
    rec3 = Recorder()
    assert execute(runs, P, rec3, "abc123", "cpu", log=lambda m: None) == (7, 1, 0)
    assert rec3.calls == [("p2", 1)]
    assert (tmp_path / "runs" / "study" / "p2" / "seed1.attempt1").is_dir()


def test_failed_run_has_no_result_and_does_not_stop_the_others(tmp_path):
    out = tmp_path / "s"
    runs = plan(VS, [0], out, tmp_path / "runs")
    logs: list[str] = []
    assert execute(runs, P, Recorder(fail=("tfl",)), "c", "m", log=logs.append) == (0, 3, 1)
    assert not (out / "tfl" / "seed0.json").exists() and (out / "big" / "seed0.json").is_file()
    assert any("tfl seed 0 FAILED" in m and "boom" in m for m in logs)
    rec = Recorder()
    assert execute(runs, P, rec, "c", "m", log=lambda m: None, max_runs=5) == (3, 1, 0)
    assert rec.calls == [("tfl", 0)]


def test_max_runs_stops_early(tmp_path):
    rec = Recorder()
    runs = plan(VS, [0, 1], tmp_path / "s", tmp_path / "runs")
    assert execute(runs, P, rec, "c", "m", log=lambda m: None, max_runs=3) == (0, 3, 0)
    assert rec.calls == [("baseline", 0), ("tfl", 0), ("p2", 0)]


def test_results_of_another_protocol_or_definition_are_refused_before_training(tmp_path):
    out = tmp_path / "s"
    runs = plan(VS, [0], out, tmp_path / "runs")
    execute(runs[:1], P, Recorder(), "c", "m", log=lambda m: None)
    rec = Recorder()
    other = Protocol(**{**asdict(P), "epochs": 5})
    with pytest.raises(StudyError, match=r"baseline.seed0\.json was run with a different protocol"):
        execute(runs, other, rec, "c", "m", log=lambda m: None)
    assert rec.calls == []  # nothing trained
    changed = plan([StudyVariant("baseline", overrides=("box=0.1",))], [0], out, tmp_path / "runs")
    with pytest.raises(StudyError, match="different definition"):
        is_done(changed[0], P)
    f = out / "baseline" / "seed0.json"
    f.write_text("{not json")
    with pytest.raises(StudyError, match=r"seed0\.json: not a readable result file"):
        is_done(runs[0], P)
    f.write_text(json.dumps({"seed": 0}))
    with pytest.raises(StudyError, match="missing schema"):
        read_result(f)


def test_later_seeds_run_only_the_control_chosen_on_val(tmp_path):
    out = tmp_path / "s"
    vs = [study_cli.VARIANTS[0], study_cli.control(1.5), study_cli.control(2.0), study_cli.control(3.0)]
    assert study_cli.variants_for_seed(vs, 1, out) == vs  # nothing finished yet: keep every control
    for v, val_tiny in zip(vs, (0.1, 0.30, 0.35, 0.35)):  # x2 and x3 tie on val: the smaller factor wins
        o = fake_outcome(0.5)  # test numbers must not matter
        o.val = {"overall": {}, "buckets": {"tiny": {"map50": val_tiny}}}
        execute(plan([v], [0], out, tmp_path / "runs"), P, lambda r, p, o=o: o, "c", "m", log=lambda m: None)
    assert [v.name for v in study_cli.variants_for_seed(vs, 1, out)] == ["baseline", "posw-x2"]
    assert study_cli.variants_for_seed(vs, 0, out) == vs
    assert study_cli.control(2.0).overrides == ("box=0.1", "obj_pw=2")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert study_cli.main(["run", "--out", str(tmp_path / "s"), "--variants", "nope",
                           "--start", ""]) == 1
    assert "unknown variant(s) ['nope']" in capsys.readouterr().err
    assert study_cli.main(["run", "--out", str(tmp_path / "s"), "--start", str(tmp_path / "missing.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.pt: no such checkpoint" in err
    assert study_cli.main(["report", str(tmp_path / "empty")]) == 1
    assert "no result files" in capsys.readouterr().err
    assert study_cli.main(["run", "--out", str(tmp_path), "--epochs", "0"]) == 1
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_one_real_run_end_to_end(tmp_path):
    """train.py (1 epoch, 64 px), val.py on the test split with both bucket schemes, the inference timing."""
    import yaml

    from experiments.study_runner import run_one
    from tests.helpers import tiny_dataset

    cfg = tiny_dataset(tmp_path, n_train=8, n_val=4)
    d = yaml.safe_load(cfg.read_text())
    cfg.write_text(yaml.safe_dump({**d, "test": "images/val"}))
    p = Protocol(str(cfg), epochs=1, imgsz=64, batch_size=4, nbs=4)
    runs = plan([StudyVariant("paste", overrides=("small_paste=0.5",))], [0], tmp_path / "s", tmp_path / "runs")
    assert execute(runs, p, run_one, "c", "m", log=lambda m: None) == (0, 1, 0)
    r = read_result(runs[0].result)
    b = {k: v["n_gt"] for k, v in r["test"]["buckets"].items()}
    assert set(b) == {"tiny", "big", "aitod/very_tiny", "aitod/tiny", "aitod/small", "aitod/medium", "aitod/large"}
    assert b["tiny"] == b["aitod/very_tiny"] + b["aitod/tiny"] + b["aitod/small"] > 0  # both: sides under 32 px
    assert b["big"] == b["aitod/medium"] + b["aitod/large"]
    assert r["inference_ms_per_image"] > 0 and r["train_s_per_epoch"] > 0
    assert set(r["val"]["overall"]) == {"precision", "recall", "map50", "map50_95"}
    assert [c["epoch"] for c in r["curve"]] == [0] and r["curve"][0]["fitness"] >= 0
    hyp = yaml.safe_load((runs[0].run_dir / "hyp.yaml").read_text())
    assert hyp["small_paste"] == 0.5


def test_prepare_chains_the_cycles_and_refuses_to_overwrite(tmp_path, monkeypatch):
    import train

    calls = []

    def fake_train(opt):
        calls.append((opt.seed, opt.weights, opt.epochs, opt.noval))
        d = Path(opt.project) / opt.name
        (d / "weights").mkdir(parents=True)
        (d / "weights" / "last.pt").write_bytes(opt.name.encode())
        (d / "results.csv").write_text(f"epoch\n{opt.name}\n")
        return {"save_dir": str(d)}

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(study_cli, "strip_optimizer",
                        lambda a, b: Path(b).write_bytes(b"stripped " + Path(a).read_bytes()))
    start, project = tmp_path / "s" / "start.pt", tmp_path / "p"
    argv = ["prepare", "--start", str(start), "--epochs", "3", "--cycles", "2", "--project", str(project)]
    assert study_cli.main(argv) == 0
    assert calls == [(0, "", 3, False), (1, str(project / "start-cycle1" / "weights" / "last.pt"), 3, False)]
    assert start.read_bytes() == b"stripped start-cycle2"
    tag = sha256(start)[:8]
    assert (start.parent / f"{tag}-cycle2.csv").read_text() == "epoch\nstart-cycle2\n"
    assert (start.parent / f"{tag}-cycle1.csv").is_file()
    assert study_cli.main(["prepare", "--start", str(start)]) == 1 and len(calls) == 2


def test_a_seed_begun_from_another_starting_checkpoint_is_skipped(tmp_path, monkeypatch, capsys):
    """Variants are paired within a seed: a seed whose results came from another start is never mixed."""
    out, start = tmp_path / "s", tmp_path / "start.pt"
    start.write_bytes(b"new start")
    old = Protocol(**{**asdict(P), "epochs": 1, "weights_sha256": "cd" * 32})
    execute(plan([VS[0]], [0], out, tmp_path / "runs"), old, Recorder(), "c", "m", log=lambda m: None)
    rec = Recorder()
    monkeypatch.setattr(study_cli, "run_one", lambda r, p, w, prec: rec(r, p))
    monkeypatch.setattr(study_cli, "VARIANTS", (VS[0], VS[3]))
    argv = ["run", "--out", str(out), "--start", str(start), "--epochs", "1", "--seeds", "2"]
    assert study_cli.main(argv) == 0
    assert rec.calls == [("baseline", 1), ("tfl", 1)]  # seed 0 (begun from 'cdcd...') untouched
    assert "seed 0 skipped: its runs started from checkpoint cdcdcdcdcdcd" in capsys.readouterr().out
    assert seed_starts(out, 1) == {sha256(start)} and seed_starts(out, 0) == {"cd" * 32}


def test_a_variant_with_its_own_start_trains_from_it_and_waits_for_it(tmp_path, monkeypatch, capsys):
    out, start, own = tmp_path / "s", tmp_path / "start.pt", tmp_path / "own.pt"
    start.write_bytes(b"protocol start")
    v = StudyVariant("p2-own", cfg="p2.yaml", start=str(own))
    weights_used = []
    monkeypatch.setattr(study_cli, "run_one", lambda r, p, w, prec: weights_used.append(w) or fake_outcome(0.2))
    monkeypatch.setattr(study_cli, "VARIANTS", (VS[0], v))
    argv = ["run", "--out", str(out), "--start", str(start), "--epochs", "1", "--seeds", "1"]
    assert study_cli.main(argv) == 0
    assert weights_used == [str(start)]  # only the baseline: the variant's own start does not exist yet
    assert f"p2-own skipped: its starting checkpoint {own} does not exist" in capsys.readouterr().out
    own.write_bytes(b"own start")
    assert study_cli.main(argv) == 0
    assert weights_used == [str(start), str(own)]
    d = read_result(out / "p2-own" / "seed0.json")["definition"]
    assert d["start"] == str(own) and d["start_sha256"] == sha256(own)
    own.write_bytes(b"another own start")  # the definition changed: the old result is never silently reused
    assert study_cli.main(argv) == 1 and "different definition" in capsys.readouterr().err


def test_a_seed_is_one_precision(tmp_path, monkeypatch, capsys):
    """Old results (no field) count as fp32; a new seed takes bf16 only where the CPU has it natively; a bf16 seed
    is skipped on a CPU without it; a seed with both is refused."""
    out, start = tmp_path / "s", tmp_path / "start.pt"
    start.write_bytes(b"start")
    p = Protocol(**{**asdict(P), "epochs": 1, "weights_sha256": sha256(start)})
    execute(plan([VS[0]], [0], out, tmp_path / "runs"), p, Recorder(), "c", "m", log=lambda m: None)  # no field
    used = []

    def fake(r, q, w, prec):
        used.append((r.variant.name, r.seed, prec))
        o = fake_outcome(0.2)
        o.extra["precision"] = prec
        return o

    monkeypatch.setattr(study_cli, "run_one", fake)
    monkeypatch.setattr(study_cli, "VARIANTS", (VS[0], VS[3]))
    monkeypatch.setattr(study_cli, "cpu_bf16_supported", lambda: True)
    argv = ["run", "--out", str(out), "--start", str(start), "--epochs", "1", "--seeds", "2"]
    assert study_cli.main(argv) == 0
    assert used == [("tfl", 0, "fp32"), ("baseline", 1, "bf16"), ("tfl", 1, "bf16")]
    assert study_cli.seed_precision(out, 0, True) == "fp32" and study_cli.seed_precision(out, 1, False) is None
    assert study_cli.seed_precision(out, 2, False) == "fp32"
    (out / "tfl" / "seed1.json").unlink()
    monkeypatch.setattr(study_cli, "cpu_bf16_supported", lambda: False)
    assert study_cli.main(argv) == 0 and len(used) == 3  # seed 1 (bf16) is not continued in emulated bf16
    assert "seed 1 skipped: its runs trained in bf16" in capsys.readouterr().out
    f = out / "baseline" / "seed0.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "precision": "bf16"}))
    assert study_cli.main(argv) == 1 and "seed 0 has runs in bf16 and fp32" in capsys.readouterr().err


def test_train_argv_fixes_the_precision(tmp_path):
    r = plan([VS[0]], [0], tmp_path / "s", tmp_path / "runs")[0]
    a, b = train_argv(r, P, "w.pt"), train_argv(r, P, "w.pt", "bf16")
    assert a[a.index("--amp") + 1] == "off" and b[b.index("--amp") + 1] == "on"


def test_report_names_each_seeds_start_and_precision(tmp_path):
    from experiments.study_report import seed_groups

    out = tmp_path / "s"
    execute(plan([VS[0]], [0, 2], out, tmp_path / "runs"), P, Recorder(), "c", "m", log=lambda m: None)
    other = Protocol(**{**asdict(P), "weights_sha256": "cd" * 32})
    execute(plan([VS[0]], [1], out, tmp_path / "runs"), other, lambda r, p: fake_outcome(0.1), "c", "m",
            log=lambda m: None)
    f = out / "baseline" / "seed1.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "precision": "bf16"}))
    assert seed_groups(out) == "abababab/fp32: seeds 0, 2; cdcdcdcd/bf16: seeds 1"


def test_report_gives_the_median_last_quarter_gain_over_seeds(tmp_path):
    from experiments.study_report import report

    out = tmp_path / "s"
    for seed, last in enumerate((0.102, 0.104, 0.110)):  # best before the last quarter 0.1: +2, +4, +10 %

        def run(r, p, last=last):
            o = fake_outcome(0.2)
            o.extra["curve"] = [{"epoch": e, "fitness": f} for e, f in enumerate([0.05, 0.1, 0.08, last])]
            return o

        execute(plan([VS[0]], [seed], out, tmp_path / "runs"), P, run, "c", "m", log=lambda m: None)
    row = next(line for line in report(out).splitlines() if line.startswith("| baseline"))
    assert "+4.0 % (median; +2.0 to +10.0)" in row
