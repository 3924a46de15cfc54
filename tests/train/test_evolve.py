"""train.py --evolve (utils/train/evolve.py): the search space checked against utils/config/hyp.py, the objective, the
trial's options, and an Optuna study run, interrupted, continued and pruned on a tiny dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

import train
from tests.helpers import tiny_dataset
from utils.config.hyp import HypError, load_hyp
from utils.train.evolve import (
    STUDY_DB,
    STUDY_NAME,
    Param,
    load_space,
    open_study,
    suggest,
    trial_fitness,
    trial_options,
)
from utils.train.options import DEFAULT_SPACE, TrainOptions


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("synthetic"), n_train=8, n_val=4, imgsz=64)


def evolve_main(capsys, data: Path, project: Path, *argv: str) -> tuple[int, list[str]]:
    """train.main with --evolve settings for a few-second trial -> (exit status, stderr lines)."""
    rc = train.main(["--data", str(data), "--epochs", "1", "--imgsz", "64", "--batch-size", "8", "--workers", "0",
                     "--noautoanchor", "--project", str(project), "--name", "study", *argv])
    return rc, capsys.readouterr().err.splitlines()


def load(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{folder / STUDY_DB}")


# ---------------------------------------------------------------------------------------------- search space
def test_shipped_space_has_yolov5_ranges_and_ours():
    space = load_space(DEFAULT_SPACE)
    assert space["lr0"] == Param("lr0", 1e-5, 1e-1, log=True)
    assert space["momentum"] == Param("momentum", 0.6, 0.98)
    assert space["mixup"] == Param("mixup", 0.0, 1.0)
    assert space["box_loss"].choices == ("ciou", "eiou", "focal_eiou", "nwd")
    assert space["tfl_piecewise"].choices == (True, False)
    assert {"tfl_k", "tfl_s", "tfl"} <= set(space) and "iou_t" not in space and "anchors" not in space
    params = suggest(optuna.trial.FixedTrial({"lr0": 0.003, "box_loss": "nwd", "tfl_piecewise": True}),
                     {k: space[k] for k in ("lr0", "box_loss", "tfl_piecewise")})
    assert params == {"lr0": 0.003, "box_loss": "nwd", "tfl_piecewise": True}


def test_whole_number_keys_sample_integers(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("assign_topk: [1, 9]\nanchors: [2, 5, int]\nlr0: [1e-4, 1e-2, log]\n")  # 1e-4: a YAML string
    space = load_space(path)
    assert space["assign_topk"].integer and space["anchors"].integer and not space["lr0"].integer
    assert space["lr0"] == Param("lr0", 1e-4, 1e-2, log=True)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert isinstance(suggest(trial, space)["assign_topk"], int)
    path.write_text("assign_topk: [1.5, 4]\n")
    with pytest.raises(HypError, match="'assign_topk': whole-number range needs whole bounds"):
        load_space(path)


SPACE_ERRORS = {  # case: (space YAML, text the one stderr line must contain besides the file name)
    "unknown key": ("lr0: [0.001, 0.1]\nlr_zero: [0.001, 0.1]\n", "unknown hyperparameter 'lr_zero'"),
    "empty range": ("lr0: [0.1, 0.01]\n", "'lr0': empty range [0.1, 0.01]"),
    "equal bounds": ("momentum: [0.9, 0.9]\n", "'momentum': empty range"),
    "above declared": ("momentum: [0.6, 1.5]\n", "'momentum': range [0.6, 1.5] is outside the declared bounds"),
    "open lower bound": ("tfl_s: [0, 1024]\n", "'tfl_s': range [0, 1024] is outside the declared bounds"),
    "unknown box loss": ("box_loss: [ciou, boxy]\n", "unknown box loss"),
    "log from zero": ("weight_decay: [0.0, 0.001, log]\n", "log range needs lo > 0"),
    "not a range": ("lr0: 0.01\n", "expected [lo, hi]"),
    "list-valued key": ("tfl_terms: [box, obj]\n", "cannot be searched"),
}


@pytest.mark.parametrize("case", SPACE_ERRORS)
def test_bad_space_is_one_line_naming_file_and_key(tiny_data, tmp_path, capsys, case):
    text, expected = SPACE_ERRORS[case]
    space = tmp_path / "my_space.yaml"
    space.write_text(text)
    rc, err = evolve_main(capsys, tiny_data, tmp_path / "runs", "--evolve", "2", "--evolve-space", str(space))
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("train.py: error: ") and "my_space.yaml" in err[0] and expected in err[0], err[0]
    assert not (tmp_path / "runs").exists()  # nothing created before the inputs are known good


def test_evolve_flag_defaults_to_300_trials():
    parse = train.get_args_parser().parse_args
    assert parse(["--evolve"]).evolve == 300 and parse(["--evolve", "7"]).evolve == 7 and parse([]).evolve is None
    assert parse([]).evolve_fitness == "all" and Path(parse([]).evolve_space) == DEFAULT_SPACE


# -------------------------------------------------------------------------------------------------- objective
def test_fitness_modes_by_hand():
    results = {"metrics/precision": 0.9, "metrics/recall": 0.8, "metrics/mAP_0.5": 0.5, "metrics/mAP_0.5:0.95": 0.3,
               "size_buckets": {"tiny": {"n_gt": 3, "hi": 1024.0, "map50": 0.2, "map50_95": 0.1},
                                "big": {"n_gt": 5, "hi": float("inf"), "map50": 0.9, "map50_95": 0.7}}}
    assert trial_fitness(results, "all") == pytest.approx(0.1 * 0.5 + 0.9 * 0.3)
    assert trial_fitness(results, "tiny") == pytest.approx(0.1 * 0.2 + 0.9 * 0.1)
    assert trial_fitness(results, "tiny50") == pytest.approx(0.2)
    results["size_buckets"]["tiny"] = {"n_gt": 0, "hi": 1024.0, "map50": float("nan"), "map50_95": float("nan")}
    with pytest.raises(ValueError, match="no object in the 'tiny' size bucket"):
        trial_fitness(results, "tiny")


def test_trial_options_fold_hyp_flags_into_the_trials_hyp(tmp_path):
    opt = TrainOptions.from_args(train.get_args_parser().parse_args(
        ["--tfl-k", "3", "--box-loss", "nwd", "--hyp-set", "lr0=0.02", "--evolve", "5", "--resume"]))
    base = load_hyp(opt.hyp, train.hyp_overrides(opt))
    hyp = base.replace(tfl_k=7.5, lr0=0.004)  # the trial's sampled values must win over --tfl-k and --hyp-set
    t = trial_options(opt, tmp_path, "trial_004", hyp, tiny_area=256.0)
    assert train.hyp_overrides(t) == {} and load_hyp(t.hyp, train.hyp_overrides(t)) == hyp
    assert hyp.box_loss == "nwd" and hyp.tfl_k == 7.5 and hyp.lr0 == 0.004
    assert (t.project, t.name, t.exist_ok, t.resume, t.evolve) == (str(tmp_path), "trial_004", True, False, None)
    assert t.nosave and t.noplots and t.tiny_area == 256.0 and opt.tfl_k == 3.0  # opt itself unchanged


def test_a_study_keeps_its_objective(tmp_path):
    opt = TrainOptions.from_args(train.get_args_parser().parse_args(["--epochs", "3", "--evolve-fitness", "tiny"]))
    open_study(tmp_path, opt, tiny_area=256.0)
    open_study(tmp_path, opt, tiny_area=256.0)  # the same objective continues
    with pytest.raises(ValueError, match="--evolve-fitness all"):
        open_study(tmp_path, opt.replace(evolve_fitness="all"), tiny_area=256.0)


# ------------------------------------------------------------------------------------------- the study, end to end
def test_study_runs_is_interrupted_continues_and_prunes(tiny_data, tmp_path, capsys, monkeypatch):
    project = tmp_path / "runs" / "train"  # the default project name: the study goes to runs/evolve (YOLOv5)
    folder = tmp_path / "runs" / "evolve" / "study"

    # 1) two trials of one epoch with the shipped search space
    rc, err = evolve_main(capsys, tiny_data, project, "--evolve", "2")
    assert rc == 0, err
    study = load(folder)
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "COMPLETE"), (1, "COMPLETE")]
    for t in study.trials:  # each trial: its own folder; the epoch's validation fitness reported to the pruner
        assert t.intermediate_values == {0: t.value} and set(t.params) == set(load_space(DEFAULT_SPACE))
        assert (folder / f"trial_{t.number:03d}" / "results.csv").is_file()
        assert (folder / f"trial_{t.number:03d}" / "weights" / "last.pt").is_file()
    rows = (folder / "evolve.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("number,state,fitness,epochs_validated,anchor_t,box,box_loss")
    assert [r.split(",")[:2] for r in rows[1:]] == [["0", "COMPLETE"], ["1", "COMPLETE"]]
    best = load_hyp(folder / "hyp_evolve.yaml")  # a full hyp file, loadable with --hyp
    assert best.to_dict() == study.best_trial.user_attrs["hyp"]
    for k, v in study.best_trial.params.items():
        assert getattr(best, k) == pytest.approx(v) if isinstance(v, float) else getattr(best, k) == v
    assert (folder / "evolve_history.png").stat().st_size > 0 and (folder / "evolve_importance.png").is_file()

    # 2) the next trial is interrupted (Ctrl-C) during its first epoch: marked FAIL, the command says how to go on
    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_one_epoch", interrupt)
    rc, err = evolve_main(capsys, tiny_data, project, "--evolve", "4", "--resume")
    assert rc == 130 and "--resume" in err[-1] and str(folder) in err[-1], err
    assert [t.state.name for t in load(folder).trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert not (folder / "trial_002" / "run.lock").exists()
    assert (folder / "evolve.csv").read_text().splitlines()[-1].startswith("2,FAIL,")
    monkeypatch.undo()

    # 3) continued with --resume FOLDER: numbering goes on, the interrupted parameters are tried first; a pruner
    #    that prunes everything stops the 2-epoch trial after epoch 0; 3 finished trials reach --evolve 3
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda **kw: optuna.pruners.ThresholdPruner(lower=2.0))
    rc, err = evolve_main(capsys, tiny_data, project, "--evolve", "3", "--resume", str(folder), "--epochs", "2",
                          "--noplots")
    assert rc == 0, err
    trials = load(folder).trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "FAIL"),
                                                         (3, "PRUNED")]
    assert trials[3].params == trials[2].params and trials[3].user_attrs["retry_of"] == 2
    assert list(trials[3].intermediate_values) == [0]  # reported once, then pruned
    assert len((folder / "trial_003" / "results.csv").read_text().splitlines()) == 2  # header + epoch 0 only
    assert [r.split(",")[1] for r in (folder / "evolve.csv").read_text().splitlines()[1:]] == [
        "COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
    assert yaml.safe_load((folder / "trial_003" / "hyp.yaml").read_text())["lr0"] == pytest.approx(
        trials[2].params["lr0"])


# ------------------------------------------------------------------------------------------- hostile inputs
@pytest.mark.parametrize("damage", ["bytes", "foreign_schema"])
def test_a_damaged_study_db_is_one_line_naming_it(tiny_data, tmp_path, capsys, damage):
    """study.db that is not a database, or holds a schema Optuna refuses: one line naming the file, exit 1, the
    file untouched and nothing else written."""
    import sqlite3

    folder = tmp_path / "runs" / "study"
    folder.mkdir(parents=True)
    db = folder / STUDY_DB
    if damage == "bytes":
        db.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    else:
        with sqlite3.connect(db) as c:  # another program's database
            c.execute("create table alembic_version (version_num varchar(32))")
            c.execute("insert into alembic_version values ('from-elsewhere')")
        c.close()
    before = db.read_bytes()
    rc, err = evolve_main(capsys, tiny_data, tmp_path / "runs", "--evolve", "2", "--resume", str(folder))
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith(f"train.py: error: {db}: not a usable Optuna study database (")
    assert err[0].endswith("); move it away to start a new study in this folder, or choose another --name")
    assert db.read_bytes() == before and [p.name for p in folder.iterdir()] == [STUDY_DB]


def test_ctrl_c_during_evolve_prints_only_the_resume_hint(tiny_data, tmp_path, capsys, monkeypatch):
    """Ctrl-C while a trial trains: exit 130 and the resume hint alone; Optuna's 'Trial 0 failed' warning with the
    KeyboardInterrupt's traceback (~50 lines on stderr) is not logged. (A real SIGINT to a train.py process gives
    the same KeyboardInterrupt in the training loop.)"""
    import logging

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append  # what Optuna's own stderr handler would print
    optuna_root = logging.getLogger("optuna")
    optuna_root.addHandler(keep)
    monkeypatch.setattr(train, "train_one_epoch", interrupt)
    project, folder = tmp_path / "runs", tmp_path / "runs" / "study"
    try:
        rc, err = evolve_main(capsys, tiny_data, project, "--evolve", "2")
    finally:
        optuna_root.removeHandler(keep)
    assert rc == 130 and [x for x in err if x.startswith("train.py")] == [
        f"train.py: evolve interrupted; {folder / STUDY_DB} keeps every finished trial (the interrupted one is "
        f"marked FAIL and tried again first); continue with the same command plus --resume {folder}"]
    assert not [r.getMessage() for r in records if r.exc_info], [r.getMessage() for r in records]
    assert [t.state.name for t in load(folder).trials] == ["FAIL"]
