"""Run logging: one row per epoch in ``results.csv`` (rewritten atomically), TensorBoard scalars, images and text in
the run folder (on by default; skipped with one info line when the ``tensorboard`` package is missing) and, with
``train.py --mlflow``, an MLflow run (:class:`MLflowLogger`: params, the same per-epoch metrics, artefacts).

Metric keys are free-form strings ('train/box_loss', 'metrics/mAP_0.5', 'metrics/tiny/recall', 'x/lr0'); the CSV
has an ``epoch`` column, then every key in the order first logged (a key missing from an epoch is left empty).
Values are written with Python's shortest round-trip float repr, so reading the CSV gives back exactly the
floats logged. TensorBoard event files go straight into ``save_dir`` (as YOLOv5 v7.0 does), scalars at
``step = epoch``. MLflow metric names are the CSV keys through :func:`mlflow_name` ('metrics/mAP_0.5:0.95' ->
'metrics/mAP_0.5-0.95'), at ``step = epoch``, with the same float64 values.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import atomic_write_text
from utils.errors import UserError

LOGGER = logging.getLogger(__name__)
EPOCH = "epoch"


def _tensorboard_writer(save_dir: Path) -> Any | None:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``save_dir``, or None (one info line) without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises ImportError when the tensorboard package is missing
        LOGGER.info("TensorBoard: not installed (pip install tensorboard), logging to results.csv only")
        return None
    LOGGER.info(f"TensorBoard: start with 'tensorboard --logdir {save_dir.parent}', view at http://localhost:6006/")
    return SummaryWriter(str(save_dir))


def _to_float(key: str, v: Any) -> float:
    """A metric value as a Python float (accepts ints, numpy scalars, one-element tensors), else a clear error."""
    try:
        if hasattr(v, "numel") and v.numel() != 1:
            raise TypeError
        return float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError) as e:
        raise TypeError(f"RunLogger: metric {key!r} must be a number, got {type(v).__name__} {v!r:.60}") from e


def read_results_csv(path: str | Path) -> tuple[list[str], list[dict[str, float]]]:
    """(metric keys in column order without 'epoch', rows {'epoch': float, key: float}) of a results CSV. Empty
    cells are left out of their row; cells and header names are stripped (v7.0 pads them)."""
    path = Path(path)
    with open(path, newline="") as f:
        table = [[c.strip() for c in r] for r in csv.reader(f) if r]
    if not table:
        return [], []
    header = table[0]
    if header[0] != EPOCH or len(set(header)) != len(header):
        raise LoggerError(f"{path}: the header must start with 'epoch' and have unique names, got {header[:4]}...")
    rows = []
    for i, r in enumerate(table[1:], start=2):
        if len(r) > len(header):
            raise LoggerError(f"{path}: line {i} has {len(r)} cells for {len(header)} columns")
        try:
            rows.append({k: float(v) for k, v in zip(header, r) if v != ""})
        except ValueError as e:
            raise LoggerError(f"{path}: line {i}: {e}") from e
    return header[1:], rows


class RunLogger:
    """Per-epoch metrics to ``save_dir/results.csv``, TensorBoard (``tensorboard=True`` and the package
    installed) and ``mlflow`` (an :class:`MLflowLogger`, or None). An existing results.csv in ``save_dir`` (a
    resumed run) is read back and extended; logging an epoch again replaces its row. ``names``: class names
    ({i: name} or a list), kept for callers' per-class keys. Use as a context manager or call ``close()``.
    """

    def __init__(self, save_dir: str | Path, names: Mapping[int, str] | Sequence[str] | None = None,
                 tensorboard: bool = True, mlflow: MLflowLogger | None = None):
        self.save_dir = Path(save_dir)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.csv = self.save_dir / "results.csv"
        self.names = dict(enumerate(names)) if isinstance(names, Sequence) and not isinstance(names, str) else names
        self.keys: list[str] = []  # metric columns, first-logged order
        self._rows: dict[int, dict[str, float]] = {}  # epoch -> {key: value}
        if self.csv.is_file():
            self.keys, rows = read_results_csv(self.csv)
            for r in rows:
                if EPOCH in r:
                    self._rows[int(r.pop(EPOCH))] = r
        self.tb = _tensorboard_writer(self.save_dir) if tensorboard else None
        self.mlflow = mlflow

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Write ``metrics`` {key: number} as the row of ``epoch`` (>= 0) in results.csv, as TensorBoard scalars
        and as MLflow metrics at step ``epoch``."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"RunLogger.log_epoch: epoch must be an int >= 0, got {epoch!r}")
        row = {}
        for k, v in metrics.items():
            if not isinstance(k, str) or not k.strip() or k.strip() != k or k == EPOCH:
                raise ValueError(f"RunLogger.log_epoch: bad metric key {k!r} (a non-empty string, no surrounding "
                                 f"spaces, not 'epoch')")
            row[k] = _to_float(k, v)
        self.keys += [k for k in row if k not in self.keys]
        self._rows[int(epoch)] = row
        self._write_csv()
        if self.tb:
            for k, v in row.items():
                self.tb.add_scalar(k, v, int(epoch))
            self.tb.flush()
        if self.mlflow:
            self.mlflow.log_metrics(row, int(epoch))

    def _write_csv(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([EPOCH, *self.keys])
        for ep in sorted(self._rows):
            r = self._rows[ep]
            w.writerow([ep, *(repr(r[k]) if k in r else "" for k in self.keys)])
        atomic_write_text(self.csv, buf.getvalue())

    def log_lr(self, lrs: Sequence[float] | Mapping[str, float], step: int) -> dict[str, float]:
        """TensorBoard scalars 'x/lr0', 'x/lr1', ... (one per parameter group, or the given keys) at ``step`` (e.g.
        the iteration, during warmup). Returns {key: lr}, to merge into the epoch's metrics for results.csv."""
        d = dict(lrs) if isinstance(lrs, Mapping) else {f"x/lr{i}": v for i, v in enumerate(lrs)}
        d = {k: _to_float(k, v) for k, v in d.items()}
        if self.tb:
            for k, v in d.items():
                self.tb.add_scalar(k, v, int(step))
        return d

    def log_images(self, name: str, image: str | Path | np.ndarray, step: int = 0) -> bool:
        """An image (a file, e.g. train_batch0.jpg, or an (H, W, 3) RGB / (H, W) array, uint8 or float in [0, 1])
        to TensorBoard under ``name``. Returns False when TensorBoard is off (the files stay in the run folder)."""
        if isinstance(image, (str, Path)):
            import cv2

            bgr = cv2.imread(str(image))
            if bgr is None:
                raise FileNotFoundError(f"RunLogger.log_images: cannot read image {image}")
            image = bgr[..., ::-1]
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = arr[..., None].repeat(3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"RunLogger.log_images: {name!r} must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
        if not self.tb:
            return False
        self.tb.add_image(name, np.ascontiguousarray(arr), int(step), dataformats="HWC")
        self.tb.flush()
        return True

    def log_text(self, name: str, text: str, step: int = 0) -> bool:
        """Text (e.g. the AutoAnchor report) to TensorBoard, monospaced. False when TensorBoard is off."""
        if not self.tb:
            return False
        self.tb.add_text(name, "    " + text.replace("\n", "\n    "), int(step))  # indented = markdown code block
        return True

    def log_artifacts(self, files: Sequence[tuple[Path, str | None]]) -> None:
        """(file, folder in the run's artefacts or None) pairs, e.g. :func:`run_artifacts`, to MLflow (when on)."""
        if self.mlflow:
            self.mlflow.log_artifacts(files)

    def close(self, status: str = "FINISHED") -> None:
        """Flush and close the TensorBoard writer and end the MLflow run with ``status`` ('FINISHED', 'FAILED' or
        'KILLED'); results.csv is always complete on disk. Calling it again does nothing."""
        if self.tb:
            self.tb.close()
            self.tb = None
        if self.mlflow:
            self.mlflow.end(status)
            self.mlflow = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def last(self, key: str) -> float:
        """The value of ``key`` in the latest epoch logging it, nan if never logged."""
        for ep in sorted(self._rows, reverse=True):
            if key in self._rows[ep]:
                return self._rows[ep][key]
        return math.nan


# ---------------------------------------------------------------------------------------------------- MLflow
MLFLOW_INSTALL = "pip install mlflow-skinny"
_MAX_PARAM_CHARS = 500  # older MLflow servers refuse longer parameter values (recent ones allow 6000)
_BATCH_PARAMS = 100  # MLflow's limit of params per log_batch call


class LoggerError(UserError):
    """A logger the user asked for cannot start (``--mlflow`` without the package, an unusable tracking URI)."""


def check_mlflow() -> None:
    """Raise LoggerError (one line) when the mlflow package cannot be imported: ``--mlflow`` stops before any work
    is done or any folder created."""
    try:
        import mlflow.tracking  # noqa: F401
    except ImportError as e:
        if (e.name or "").split(".")[0] == "mlflow":
            raise LoggerError(f"--mlflow: the mlflow package is not installed ({MLFLOW_INSTALL})") from None
        raise LoggerError(f"--mlflow: the mlflow package cannot be imported ({e}; {MLFLOW_INSTALL})") from None


def mlflow_name(key: str) -> str:
    """A results.csv key as an MLflow metric/param name: ':' -> '-' ('metrics/mAP_0.5:0.95' ->
    'metrics/mAP_0.5-0.95'), any other character outside ASCII letters, digits, '_', '-', '.', ' ' and '/' -> '_'
    (names every MLflow store accepts on every OS; colons are refused on Windows)."""
    return re.sub(r"[^\w\-. /]", "_", key.replace(":", "-"), flags=re.ASCII)


def mlflow_tracking_uri(default_dir: str | Path) -> str:
    """The environment's ``MLFLOW_TRACKING_URI`` when set (any MLflow store: a server, a database), else a local
    SQLite store ``default_dir/mlflow.db`` (MLflow 3 refuses plain-folder stores by default)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return env or f"sqlite:///{Path(default_dir).resolve() / 'mlflow.db'}"


def _local_artifact_root(uri: str) -> str | None:
    """Artefact folder of a new experiment in a local SQLite store: ``artifacts/`` beside the database (MLflow's
    own default is ./mlruns in the working directory); None (MLflow's choice) for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()


def _reason(e: BaseException) -> str:
    """An MLflow error's first line, shortened: MLflow messages carry long migration and help texts."""
    text = next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)
    return text[:300]


class MLflowLogger:
    """One MLflow run: parameters once, then per-epoch metrics (:func:`mlflow_name` of each key, step = epoch,
    float64 values as logged) and artefacts at the end.

    ``run_id``: continue that run (a resumed training run; its parameters are already logged) when the store still
    has it, else a new run ``run_name`` in ``experiment`` (created when missing) with ``params`` and ``tags``.
    Starting raises LoggerError (one line) when mlflow is missing or the store is unusable. Once started, a failing
    MLflow call (e.g. a tracking server gone) logs one warning and turns MLflow logging off: training goes on.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, params: Mapping[str, Any] | None = None,
                 run_id: str | None = None, tags: Mapping[str, str] | None = None):
        check_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = uri
        try:
            if uri.startswith("sqlite:///"):  # SQLite creates the database file, not its folder
                Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=uri)
            self.run_id = self._reopen(run_id) or self._create(experiment, run_name, params or {}, tags or {})
        except Exception as e:  # MlflowException, sqlite3/SQLAlchemy and connection errors: all one line
            raise LoggerError(f"--mlflow: cannot start an MLflow run at {uri} ({_reason(e)})") from None
        LOGGER.info(f"MLflow: run '{run_name}' ({self.run_id}) in experiment '{experiment}' at {uri}")

    def _reopen(self, run_id: str | None) -> str | None:
        if not run_id:
            return None
        try:
            self.client.get_run(run_id)
        except Exception:  # deleted, or another store than the one the run started in
            LOGGER.warning(f"MLflow: run {run_id} not found at {self.uri}, starting a new run")
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _create(self, experiment: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        from mlflow.entities import Param

        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=_local_artifact_root(self.uri))
        run_id = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags)).info.run_id
        ps = [Param(mlflow_name(k), str(v)[:_MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(ps), _BATCH_PARAMS):
            self.client.log_batch(run_id, params=ps[i:i + _BATCH_PARAMS])
        return run_id

    def _call(self, what: str, fn: Callable[[], Any]) -> None:
        """Run one MLflow call (none once logging has stopped); on failure warn once and stop logging to MLflow."""
        if self.client is None:
            return
        try:
            fn()
        except Exception as e:
            LOGGER.warning(f"MLflow: {what} failed ({_reason(e)}); MLflow logging stopped, training goes on")
            self.client = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """``metrics`` {results.csv key: float} at ``step`` (the epoch)."""
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        batch = [Metric(mlflow_name(k), float(v), ms, int(step)) for k, v in metrics.items()]
        self._call(f"logging epoch {step}", lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_artifacts(self, files: Sequence[tuple[Path, str | None]]) -> None:
        """Copy each existing file into the run's artefacts (under its folder, or at the top for None)."""
        for path, folder in files:
            if Path(path).is_file():
                self._call(f"saving {path}", lambda p=path, f=folder: self.client.log_artifact(self.run_id, str(p), f))

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status``: 'FINISHED', 'FAILED' or 'KILLED'."""
        self._call("ending the run", lambda: self.client.set_terminated(self.run_id, status))
        self.client = None


def run_artifacts(save_dir: str | Path) -> list[tuple[Path, str | None]]:
    """What a finished run hands to MLflow: weights/best.pt (into 'weights'), results.csv, hyp.yaml, opt.yaml and
    every plot (*.png, *.jpg) at the top of ``save_dir``; only the files that exist."""
    d = Path(save_dir)
    files = [(d / "weights" / "best.pt", "weights")]
    files += [(d / n, None) for n in ("results.csv", "hyp.yaml", "opt.yaml")]
    files += [(f, None) for f in sorted([*d.glob("*.png"), *d.glob("*.jpg")])]
    return [(f, folder) for f, folder in files if f.is_file()]
