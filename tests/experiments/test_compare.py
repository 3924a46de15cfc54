"""experiments/compare.py and experiments/report.py: variants and sweeps, statistics (hand-computed), and the whole
runner end to end on a tiny generated dataset (report numbers vs the runs' metrics.json, failure isolation,
resuming without retraining, configuration checks)."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import ttest_rel

import train
from experiments import compare, report
from tests.helpers import tiny_dataset
from utils.checkpoints import load_checkpoint


# ----------------------------------------------------------------------------------------------------------------
# Variants and sweeps
# ----------------------------------------------------------------------------------------------------------------
def test_unknown_variant_lists_valid_ones():
    with pytest.raises(compare.CompareError, match=r"unknown variant 'tlf'.*baseline, tfl, tfl-piecewise"):
        compare.parse_variant("tlf")
    with pytest.raises(compare.CompareError, match="brackets"):
        compare.parse_variant("tfl[k=0.6")


def test_variant_overrides_and_aliases():
    v = compare.parse_variant("tfl[k=0.6,terms=[box,obj]]")
    assert v.hyp == "hyp.tfl.yaml" and v.overrides == ("tfl_k=0.6", "tfl_terms=[box,obj]")
    h = compare.resolve_hyp(v)
    assert h["tfl"] is True and h["tfl_k"] == 0.6 and h["tfl_terms"] == ["box", "obj"]
    assert compare.resolve_hyp(compare.parse_variant("eiou"))["box_loss"] == "eiou"
    with pytest.raises(compare.CompareError, match=r"variant 'tfl\[nonsense=1\]'.*nonsense"):
        compare.resolve_hyp(compare.parse_variant("tfl[nonsense=1]"))


def test_sweep_adds_tfl_variants_only_and_skips_the_default():
    base = [compare.parse_variant(s) for s in ("baseline", "tfl", "tfl-piecewise", "focal-eiou")]
    out = compare.expand_sweeps(base, ["tfl_k=0.6,1.6,3", "focal_eiou_gamma=1"])
    assert [v.name for v in out] == ["baseline", "tfl", "tfl[k=0.6]", "tfl[k=3]", "tfl-piecewise",
                                     "tfl-piecewise[k=0.6]", "tfl-piecewise[k=3]", "focal-eiou",
                                     "focal-eiou[gamma=1]"]
    hyps = {v.name: compare.resolve_hyp(v) for v in out}
    assert hyps["tfl[k=3]"]["tfl_k"] == 3.0 and hyps["tfl-piecewise[k=0.6]"]["tfl_piecewise"] is True
    assert hyps["focal-eiou[gamma=1]"]["focal_eiou_gamma"] == 1.0
    assert out[2].slug == "tfl_k=0.6"
    with pytest.raises(compare.CompareError, match="listed twice"):
        compare.expand_sweeps([compare.parse_variant("tfl[k=3]")] * 2, [])


def test_extra_args_that_the_runner_owns_are_rejected():
    with pytest.raises(compare.CompareError, match=r"--seed"):
        compare.parse_args(["--variants", "tfl", "--", "--seed", "3"])
    with pytest.raises(compare.CompareError, match="invalid train.py arguments"):
        compare.parse_args(["--", "--no-such-flag"])


# ----------------------------------------------------------------------------------------------------------------
# Statistics, hand-computed
# ----------------------------------------------------------------------------------------------------------------
def _metrics(p: float, r: float, tiny_r: float | None = 0.5) -> dict:
    return {"metrics/precision": p, "metrics/recall": r, "metrics/mAP_0.5": p * r, "metrics/mAP_0.5:0.95": p * r / 2,
            "size_buckets": {"tiny": {"lo": 0, "hi": 1024, "n_gt": 7, "p": 0.1, "r": tiny_r, "map50": 0.0,
                                      "map50_95": 0.0},
                             "big": {"lo": 1024, "hi": "inf", "n_gt": 0, "p": None, "r": None, "map50": None,
                                     "map50_95": None}}}


def test_summary_statistics_by_hand():
    rec = [report.RunRecord("baseline", s, "done", "", _metrics(p, 0.4)) for s, p in enumerate((0.5, 0.6, 0.7))]
    rec += [report.RunRecord("tfl", s, "done", "", _metrics(p, 0.4, tr)) for s, (p, tr) in
            enumerate(((0.6, 0.5), (0.65, None), (0.9, 0.7)))]
    rec += [report.RunRecord("tfl", 3, "failed", "", error="boom")]
    s = report.summarise(rec, ["baseline", "tfl"])
    b, t = s["baseline"]["precision"], s["tfl"]["precision"]
    assert b.n == 3 and b.mean == pytest.approx(0.6) and b.std == pytest.approx(0.1) and math.isnan(b.p)
    m = 2.15 / 3
    assert t.mean == pytest.approx(m) and t.std == pytest.approx(math.sqrt(((0.6 - m) ** 2 + (0.65 - m) ** 2
                                                                            + (0.9 - m) ** 2) / 2))
    # differences 0.1, 0.05, 0.2: t^2 = 7 exactly, df 2 -> two-sided p = 1 - t / sqrt(t^2 + 2) = 1 - sqrt(7) / 3
    assert t.p == pytest.approx(1 - math.sqrt(7) / 3, rel=1e-9)
    assert math.isnan(s["tfl"]["recall"].p)  # identical recalls: zero variance of the differences -> n/a
    tiny = s["tfl"]["tiny/recall"]  # seed 1 has no value (None in metrics.json): pairs (0.5, 0.5), (0.7, 0.5)
    # differences 0, 0.2: t = 0.1 / (0.2 / sqrt(2) / sqrt(2)) = 1, df 1 -> two-sided p = 1 - 2 atan(1) / pi = 0.5
    assert tiny.n == 2 and tiny.mean == pytest.approx(0.6) and tiny.p == pytest.approx(0.5, rel=1e-9)
    assert s["tfl"]["big/recall"].n == 0 and math.isnan(s["tfl"]["big/recall"].mean)
    one = report.summarise(rec[:1], ["baseline"])["baseline"]["precision"]
    assert one.n == 1 and math.isnan(one.std) and report.fmt_stat(one) == "0.5000 ± n/a"
    md = report.markdown(s, rec, {"title": "T"}, [("baseline", "h", "-")], "baseline", None)
    assert f"| tfl | 3 | {2.15 / 3:.4f} ± {t.std:.4f} |" in md and f"{1 - math.sqrt(7) / 3:.3g}" in md
    assert "## Failed runs" in md and "boom" in md
    assert report.bucket_edges(rec)["big"] == {(1024.0, math.inf)}


# ----------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("synthetic"))


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_runner_end_to_end(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    argv = ["--data", str(tiny_data), "--variants", "baseline", "tfl", "--seeds", "2", "--epochs", "1", "--imgsz",
            "64", "--batch-size", "8", "--workers", "0", "--out", str(out), "--", "--noplots", "--noautoanchor"]
    real_train, calls = train.train, []

    def counting_train(opt, fail=None):
        calls.append((Path(opt.hyp).name, opt.seed))
        if (Path(opt.hyp).name, opt.seed) == fail:
            raise RuntimeError("injected failure")
        return real_train(opt)

    # 1st invocation: tfl seed 1 fails; the other three finish and the report says so.
    monkeypatch.setattr(train, "train", lambda opt: counting_train(opt, ("hyp.tfl.yaml", 1)))
    assert compare.main(argv) == 1
    assert sorted(calls) == [("hyp.scratch-low.yaml", 0), ("hyp.scratch-low.yaml", 1), ("hyp.tfl.yaml", 0),
                             ("hyp.tfl.yaml", 1)]
    assert [(r["variant"], r["seed"], r["status"]) for r in _read_csv(out / "runs.csv")] == [
        ("baseline", "0", "done"), ("tfl", "0", "done"), ("baseline", "1", "done"), ("tfl", "1", "failed")]
    assert "## Failed runs" in (out / "report.md").read_text() and "injected failure" in (out / "report.md").read_text()

    # 2nd: only the failed run is trained (the same seed order as the others: seed 1), the rest are not touched.
    lasts = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed*/weights/last.pt")}
    assert len(lasts) == 3
    calls.clear()
    monkeypatch.setattr(train, "train", counting_train)
    assert compare.main(argv) == 0
    assert calls == [("hyp.tfl.yaml", 1)]
    assert all(p.stat().st_mtime_ns == t for p, t in lasts.items())
    assert (out / "runs/tfl/seed1.attempt1/compare_run.json").is_file()  # the failed attempt is kept aside
    run_dirs = {(v, s): out / "runs" / v / f"seed{s}" for v in ("baseline", "tfl") for s in (0, 1)}
    for (_, s), d in run_dirs.items():
        assert load_checkpoint(d / "weights/last.pt")["opt"]["seed"] == s
        assert json.loads((d / "compare_run.json").read_text())["status"] == "done"

    # The report must be computed from the runs' metrics.json: give them distinct numbers (a 1-epoch model scores
    # ~0 everywhere), then a 3rd invocation trains nothing and rebuilds the report from them.
    rng = np.random.default_rng(0)
    metrics = {}
    for key, d in run_dirs.items():
        m = json.loads((d / "metrics.json").read_text())
        for k in report.OVERALL:
            m[k[1]] = float(rng.uniform(0.1, 0.9))
        for b in m["size_buckets"].values():
            b["p"], b["r"] = float(rng.uniform()), float(rng.uniform())
        (d / "metrics.json").write_text(json.dumps(m))
        metrics[key] = m
    calls.clear()
    assert compare.main(argv) == 0
    assert calls == []
    assert all(p.stat().st_mtime_ns == t for p, t in lasts.items())

    summary = {r["variant"]: r for r in _read_csv(out / "summary.csv")}
    md = (out / "report.md").read_text()
    for title in ("## Table 1: overall metrics", "## Table 2: precision and recall per object size", "## Runs",
                  "**command**", "**git commit**", "**machine**", "**wall time**", "size_buckets.png"):
        assert title in md, title
    assert "Failed runs" not in md and (out / "size_buckets.png").stat().st_size > 1000
    cols = [(c, k) for c, k, _ in report.OVERALL] + [(f"{b}/{f}", (b, k)) for b in ("tiny", "big")
                                                      for f, k in (("precision", "p"), ("recall", "r"))]
    for col, key in cols:
        def val(v, s, key=key):
            m = metrics[(v, s)]
            return m[key] if isinstance(key, str) else m["size_buckets"][key[0]][key[1]]

        for v in ("baseline", "tfl"):
            x = [val(v, s) for s in (0, 1)]
            assert float(summary[v][f"{col}_mean"]) == pytest.approx(np.mean(x), abs=1e-12), (v, col)
            assert float(summary[v][f"{col}_std"]) == pytest.approx(np.std(x, ddof=1), abs=1e-12), (v, col)
        p = ttest_rel([val("tfl", s) for s in (0, 1)], [val("baseline", s) for s in (0, 1)]).pvalue
        assert float(summary["tfl"][f"{col}_p"]) == pytest.approx(p, rel=1e-9), col
        assert summary["baseline"][f"{col}_p"] == ""
        if col == "mAP50":
            x = [val("tfl", s) for s in (0, 1)]
            assert f"{np.mean(x):.4f} ± {np.std(x, ddof=1):.4f}" in md and f"{p:.3g}" in md
    runs = {(r["variant"], int(r["seed"])): r for r in _read_csv(out / "runs.csv")}
    for key, m in metrics.items():
        assert float(runs[key]["recall"]) == m["metrics/recall"]
        assert float(runs[key]["tiny/n_gt"]) == m["size_buckets"]["tiny"]["n_gt"]

    # Same folder, another configuration: refused before any training, naming what differs.
    with pytest.raises(compare.CompareError, match=r"different configuration.*epochs"):
        args = compare.parse_args([*argv[:argv.index("--epochs") + 1], "2", *argv[argv.index("--epochs") + 2:]])
        compare.execute(args, [compare.parse_variant("baseline")], "cmd")
    assert calls == []


@pytest.mark.slow
def test_run_state_resumes_an_interrupted_run(tiny_data, tmp_path):
    """A marker saying 'running' with a checkpoint short of the last epoch -> resume; at the last epoch -> done."""
    args = compare.parse_args(["--data", str(tiny_data), "--epochs", "2", "--imgsz", "64"])
    v = compare.parse_variant("tfl")
    d = tmp_path / "runs" / "tfl" / "seed0"
    cfg = compare.run_config(args, v, 0)
    assert compare.run_state(d, cfg) == ("fresh", "new")
    (d / "weights").mkdir(parents=True)
    with pytest.raises(compare.CompareError, match="not a compare.py run"):  # a folder the runner did not make
        compare.run_state(d, cfg)
    (d / compare.MARKER).write_text(json.dumps({"config": cfg, "status": "running"}))
    assert compare.run_state(d, cfg)[0] == "fresh"  # no checkpoint yet
    from models.yolo import DetectionModel
    from utils.checkpoints import save_checkpoint

    model = DetectionModel("yolov5n.yaml", nc=4)
    save_checkpoint(d / "weights/last.pt", model=model, epoch=0, opt={"epochs": 2}, hyp=cfg["hyp"],
                    best_fitness=0.0, names=None)
    assert compare.run_state(d, cfg) == ("resume", "interrupted after epoch 0")
    save_checkpoint(d / "weights/last.pt", model=model, epoch=1, opt={"epochs": 2}, hyp=cfg["hyp"],
                    best_fitness=0.0, names=None)
    (d / "metrics.json").write_text("{}")
    assert compare.run_state(d, cfg)[0] == "done"
    assert torch.is_tensor(load_checkpoint(d / "weights/last.pt")["model"]["model.0.conv.weight"])
