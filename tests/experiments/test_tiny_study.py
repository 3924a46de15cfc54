"""The tiny-object study's tools: compare.py's per-variant model/flags and test-split evaluation, the study's
variant list and TFL mean weight, and tiny_report's statistics on constructed run folders (hand-computed)."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import ttest_rel

from experiments import compare, tiny_report, tiny_study
from tests.helpers import tiny_dataset
from utils.loss.tfl import tfl_weights


def _args(**kw):
    a = compare.get_args_parser().parse_args(["--data", "d.yaml", "--cfg", "yolov5n.yaml"])
    a.extra = []
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_variant_model_and_flags_reach_train_argv(tmp_path):
    p2, ms = compare.parse_variant("p2"), compare.parse_variant("multiscale[minpos=2]")
    argv = compare.train_argv(_args(), p2, 0, tmp_path / "r")
    assert argv[argv.index("--cfg") + 1] == "yolov5n-p2.yaml"  # the variant's model wins over --cfg
    argv = compare.train_argv(_args(), ms, 0, tmp_path / "r")
    assert argv[argv.index("--cfg") + 1] == "yolov5n.yaml" and "--multi-scale" in argv
    assert "assign_min_pos=2" in argv
    c = compare.run_config(_args(), ms, 0)
    assert c["cfg"] == "yolov5n.yaml" and c["extra"] == ["--multi-scale"] and c["hyp"]["assign_min_pos"] == 2
    assert compare.run_config(_args(), p2, 0)["cfg"] == "yolov5n-p2.yaml"
    # 'box' is now the box gain, 'loss' the box loss
    h = compare.resolve_hyp(compare.parse_variant("baseline[box=0.1,loss=eiou]"))
    assert h["box"] == 0.1 and h["box_loss"] == "eiou"


def test_study_variants_hold_the_controls():
    v = tiny_study.variants("methods", 1.8, 2.6)
    assert v[:5] == ["baseline", "baseline[box=0.09,obj=1.8,cls=0.9]", "baseline[box=0.13,obj=2.6,cls=1.3]",
                     "baseline[box=0.09,obj_pw=1.8]", "baseline[box=0.13,obj_pw=2.6]"]
    assert {"tfl[k=0]", "tfl", "tfl[norm=mean]", "min-pos", "nwd-assign", "paste", "p2"} <= set(v)
    assert "tiny" not in v and tiny_study.variants("recipe", 1.8, 2.6)[-1] == "tiny"
    for spec in v:  # every spec resolves to a valid hyp
        compare.resolve_hyp(compare.parse_variant(spec))
    h = compare.resolve_hyp(compare.parse_variant(v[3]))
    assert (h["box"], h["obj_pw"], h["obj"], h["cls"]) == (0.09, 1.8, 1.0, 0.5)


def test_mean_tfl_weight_matches_the_loader(tmp_path):
    data = tiny_dataset(tmp_path, n_train=8, n_val=2, imgsz=64)
    m = tiny_study.mean_tfl_weight(str(data), 64, batches=1)
    from data.prepare import check_dataset
    from utils.config.hyp import load_hyp
    from utils.dataset.dataloaders import create_dataloader

    d = check_dataset(str(data))
    loader, _ = create_dataloader(d["train"], 64, 16, 32, hyp=load_hyp("hyp.tfl.yaml"), augment=True, workers=0,
                                  shuffle=True, seed=0, nc=d["nc"])
    t = next(iter(loader))[1]
    expected = float(tfl_weights(t[:, 4:6] * 64, 1.6, 1024.0).mean())
    assert m == pytest.approx(expected) and 1 < m <= 2


def _run(out, variant, seed, tiny50, big50, wall=10.0, ms=5.0):
    d = out / "runs" / compare.Variant(variant, "", ()).slug / f"seed{seed}"
    (d / "test").mkdir(parents=True)
    (d / compare.MARKER).write_text(json.dumps({"config": {"variant": variant, "seed": seed}, "status": "done",
                                                "wall_s": wall}))
    buckets = {"tiny": {"n_gt": 5, "p": 0.5, "r": 0.4, "map50": tiny50, "map50_95": tiny50 / 2},
               "big": {"n_gt": 5, "p": 0.5, "r": 0.9, "map50": big50, "map50_95": big50 / 2}}
    for f in (d / "metrics.json", d / "test" / "metrics.json"):
        f.write_text(json.dumps({"size_buckets": buckets, "speed_ms": {"inference": ms}}))


def test_tiny_report_paired_statistics_by_hand(tmp_path, capsys):
    base, var = [0.10, 0.20, 0.30], [0.15, 0.22, 0.38]
    for s, (b, v) in enumerate(zip(base, var)):
        _run(tmp_path, "baseline", s, b, 0.9)
        _run(tmp_path, "tfl", s, v, 0.9, wall=20.0, ms=5.0)
    runs = tiny_report.load_runs(tmp_path, "test")
    d, half, p, n = tiny_report.paired(runs["tfl"], runs["baseline"], "tiny/mAP50")
    diff = np.array(var) - np.array(base)  # 0.05, 0.02, 0.08
    assert n == 3 and d == pytest.approx(0.05)
    assert half == pytest.approx(4.302652729911275 * diff.std(ddof=1) / math.sqrt(3))
    assert p == pytest.approx(ttest_rel(var, base).pvalue)
    assert tiny_report.main([str(tmp_path), "--plot", str(tmp_path / "f.png")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| tfl "))
    assert "25.00 (+5.00 ±" in row and row.rstrip(" |").endswith("2.00 | 1.00")  # train time x2, inference x1
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_compare_evaluates_the_test_split(tmp_path):
    """--eval-task test: each run's last.pt is validated on the data YAML's test split and the report uses it."""
    data = tiny_dataset(tmp_path, n_train=8, n_val=4, imgsz=64)
    import yaml

    d = yaml.safe_load(data.read_text())
    d["test"] = "images/val"
    data.write_text(yaml.safe_dump(d))
    out = tmp_path / "cmp"
    rc = compare.main(["--data", str(data), "--variants", "baseline", "--seeds", "1", "--epochs", "1", "--imgsz",
                       "64", "--batch-size", "4", "--workers", "0", "--eval-task", "test", "--out", str(out), "--",
                       "--noplots", "--noautoanchor"])
    assert rc == 0
    run = out / "runs" / "baseline" / "seed0"
    test = json.loads((run / "test" / "metrics.json").read_text())
    csv = (out / "runs.csv").read_text().splitlines()
    col = csv[0].split(",").index("mAP50")
    assert float(csv[1].split(",")[col]) == pytest.approx(test["metrics/mAP_0.5"])
    assert torch.isfinite(torch.tensor(test["metrics/mAP_0.5"]))
