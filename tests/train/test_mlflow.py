"""train.py --mlflow (issue 18): params (opt + hyp), per-epoch metrics with results.csv's names (sanitised) and
values, artefacts, read back with MlflowClient from a temporary SQLite store; resume continues the same MLflow
run; MLflow failures after the start warn once; --mlflow without mlflow stops with one line before any folder."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import pytest

import train
from tests.helpers import tiny_dataset
from utils.checkpoints import load_checkpoint
from utils.config.hyp import load_hyp
from utils.train.loggers import (
    LoggerError,
    MLflowLogger,
    mlflow_name,
    mlflow_tracking_uri,
    read_results_csv,
    run_artifacts,
)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_names_and_tracking_uri(tmp_path, monkeypatch):
    assert mlflow_name("metrics/mAP_0.5:0.95") == "metrics/mAP_0.5-0.95"
    assert mlflow_name("metrics/tiny/map50_95") == "metrics/tiny/map50_95"  # valid names are kept
    assert mlflow_name("x (lr)é,1") == "x _lr___1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_tracking_uri(tmp_path / "mlruns") == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_tracking_uri(tmp_path / "mlruns") == "http://127.0.0.1:5000"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A temporary SQLite tracking store shared by this file's tests (creating its tables takes seconds); each
    test uses its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory, store) -> dict:
    """One 1-epoch training run with --mlflow into the temporary store (MLFLOW_TRACKING_URI)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = store
    data = tiny_dataset(root, n_train=8, n_val=4, imgsz=64)
    argv = ["--data", str(data), "--imgsz", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0",
            "--noautoanchor", "--seed", "1", "--project", str(root / "myproject"), "--name", "exp", "--mlflow"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        res = train.train(train.get_args_parser().parse_args(argv))
    return {"uri": uri, "save_dir": Path(res["save_dir"]), "root": root}


@pytest.mark.slow
def test_train_logs_params_metrics_and_artifacts(mlflow_run):
    client, save_dir = _client(mlflow_run["uri"]), mlflow_run["save_dir"]
    exp = client.get_experiment_by_name("myproject")  # experiment = --project's folder name
    (run,) = client.search_runs([exp.experiment_id])
    rid = run.info.run_id
    assert run.info.run_name == "exp" == save_dir.name and run.info.status == "FINISHED"
    assert run.data.tags["save_dir"] == str(save_dir)
    assert load_checkpoint(save_dir / "weights" / "best.pt")["opt"]["mlflow_run_id"] == rid  # for --resume

    p = run.data.params
    hyp = load_hyp("hyp.scratch-low.yaml")
    assert (p["opt/epochs"], p["opt/imgsz"], p["opt/mlflow"], p["opt/name"]) == ("1", "64", "True", "exp")
    assert (p["hyp/lr0"], p["hyp/tfl_s"], p["hyp/box_loss"]) == (str(hyp.lr0), str(hyp.tfl_s), hyp.box_loss)
    assert len([k for k in p if k.startswith("hyp/")]) == len(hyp.to_dict())

    keys, rows = read_results_csv(save_dir / "results.csv")
    for k in ("metrics/mAP_0.5:0.95", "metrics/tiny/r", "metrics/big/map50", "x/lr0", "train/box_loss"):
        assert k in keys, k
    assert set(run.data.metrics) == {mlflow_name(k) for k in keys} and "metrics/mAP_0.5-0.95" in run.data.metrics
    for k in keys:  # one value per metric at step 0, exactly results.csv's float (nan where the CSV has nan)
        (m,) = client.get_metric_history(rid, mlflow_name(k))
        want = rows[0][k]
        assert m.step == 0 and (m.value == want or (math.isnan(want) and math.isnan(m.value))), (k, m.value, want)

    top = {a.path for a in client.list_artifacts(rid)}
    assert {"results.csv", "results.png", "hyp.yaml", "opt.yaml", "weights", "PR_curve.png"} <= top
    assert top - {"weights"} == {f.name for f, folder in run_artifacts(save_dir) if folder is None}
    assert [a.path for a in client.list_artifacts(rid, "weights")] == ["weights/best.pt"]
    got = Path(client.download_artifacts(rid, "weights/best.pt", str(mlflow_run["root"])))
    assert got.read_bytes() == (save_dir / "weights" / "best.pt").read_bytes()  # the final, stripped best.pt
    assert load_checkpoint(got)["optimizer"] is None
    store_dir = Path(mlflow_run["uri"][len("sqlite:///"):]).parent
    assert got.read_bytes() == (store_dir / "artifacts" / rid / "artifacts" / "weights" / "best.pt").read_bytes()


@pytest.mark.slow
def test_ctrl_c_then_resume_of_train_py_continues_the_same_mlflow_run(store, tmp_path, monkeypatch, capsys):
    data = tiny_dataset(tmp_path, n_train=8, n_val=4, imgsz=64)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    real_save = train.save_epoch

    def save_then_interrupt(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_epoch", save_then_interrupt)
    assert train.main(["--data", str(data), "--imgsz", "64", "--epochs", "2", "--batch-size", "8", "--workers", "0",
                       "--noautoanchor", "--noplots", "--seed", "1", "--project", str(tmp_path / "resumed"),
                       "--name", "exp", "--mlflow"]) == 130
    last = tmp_path / "resumed" / "exp" / "weights" / "last.pt"
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"resume with: python train.py --resume {last}")
    rid = load_checkpoint(last)["opt"]["mlflow_run_id"]
    monkeypatch.setattr(train, "save_epoch", real_save)
    assert train.main(["--resume", str(last)]) == 0  # no --mlflow: the run's own options say so
    client = _client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert run.info.run_id == rid and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(rid, "metrics/mAP_0.5")] == [0, 1]


def test_resume_continues_the_same_run_and_unknown_ids_start_a_new_one(store, caplog):
    uri = store
    first = MLflowLogger(uri, "proj", "exp", params={"opt/epochs": 3, "hyp/lr0": 0.01})
    first.log_metrics({"metrics/mAP_0.5:0.95": 0.25}, 0)
    first.end("KILLED")
    again = MLflowLogger(uri, "proj", "exp", params={"opt/epochs": 5}, run_id=first.run_id)  # --resume
    assert again.run_id == first.run_id
    assert _client(uri).get_run(first.run_id).info.status == "RUNNING"
    again.log_metrics({"metrics/mAP_0.5:0.95": 0.5}, 1)
    again.end()
    client = _client(uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"opt/epochs": "3", "hyp/lr0": "0.01"}
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "metrics/mAP_0.5-0.95")] == [
        (0, 0.25), (1, 0.5)]
    with caplog.at_level(logging.WARNING, logger="utils.train.loggers"):
        other = MLflowLogger(uri, "proj", "exp", run_id="0123456789abcdef0123456789abcdef")
    assert other.run_id != first.run_id and "not found" in caplog.text
    assert len(client.search_runs([run.info.experiment_id])) == 2


def test_failures_after_the_start_warn_once_and_stop_mlflow_logging(store, tmp_path, caplog):
    lg = MLflowLogger(store, "failing", "exp")
    calls = []

    def down(*a, **kw):
        calls.append(a)
        raise ConnectionError("tracking server unreachable")

    lg.client.log_batch = down
    with caplog.at_level(logging.WARNING, logger="utils.train.loggers"):
        lg.log_metrics({"a": 1.0}, 0)
        lg.log_metrics({"a": 2.0}, 1)  # no second attempt, no second warning
        lg.log_artifacts([(Path(__file__), None)])
        lg.end()
    assert len(calls) == 1 and caplog.text.count("MLflow logging stopped") == 1
    assert "tracking server unreachable" in caplog.text


def test_unusable_tracking_uri_is_one_line(tmp_path):
    with pytest.raises(LoggerError) as e:
        MLflowLogger("nosuchscheme://somewhere", "proj", "exp")
    msg = str(e.value)
    assert msg.startswith("--mlflow: cannot start an MLflow run at nosuchscheme://somewhere (") and "\n" not in msg


def test_mlflow_flag_without_mlflow_stops_before_creating_anything(tmp_path, monkeypatch, capsys):
    data = tiny_dataset(tmp_path, n_train=4, n_val=2, imgsz=64)
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")] + ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)  # any import of mlflow raises ImportError
    project = tmp_path / "runs"
    rc = train.main(["--data", str(data), "--project", str(project), "--imgsz", "64", "--epochs", "1",
                     "--workers", "0", "--mlflow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == ["train.py: error: --mlflow: the mlflow package is not installed "
                               "(pip install mlflow-skinny)"], err
    assert not project.exists()


def test_unusable_tracking_store_leaves_nothing_under_project(tmp_path, monkeypatch, capsys):
    """The store is used before the first write: an unusable one is one line, and --project stays empty (no
    hyp.yaml, opt.yaml, anchor reports or weights/ as before)."""
    data = tiny_dataset(tmp_path, n_train=4, n_val=2, imgsz=64)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    project = tmp_path / "runs"
    rc = train.main(["--data", str(data), "--project", str(project), "--imgsz", "64", "--epochs", "1",
                     "--workers", "0", "--mlflow"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train.py")]  # not tqdm's scan bars
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("train.py: error: --mlflow: cannot start an MLflow run at nosuchscheme://nowhere (")
    assert not project.exists()
