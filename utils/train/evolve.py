"""Hyperparameter search, ``train.py --evolve N``: an Optuna study (TPE sampler, median pruner) over a search space
declared in YAML (default ``hyp/evolve.yaml``) and checked against utils/config/hyp.py's declarations.

A study folder (``runs/evolve/exp``) holds:
  study.db           the Optuna storage (SQLite): every trial's parameters, per-epoch and final fitness, state
  trial_000/, ...    each trial's training run (results.csv, hyp.yaml, opt.yaml, weights/last.pt)
  evolve.csv         all trials: number, state, fitness, validated epochs, parameters (rewritten after each trial)
  hyp_evolve.yaml    the best trial's full hyperparameters, loadable with ``train.py --hyp``
  evolve_history.png, evolve_importance.png   optimisation history and parameter importance (PED-ANOVA)

``N`` is the study's target of finished (complete or pruned) trials: re-running the same command with
``--resume`` (or ``--exist-ok``) continues the study until it holds N finished trials, numbering on. Several
processes given the same study folder share it (SQLite with a 60 s lock timeout; trials report heartbeats, so a
trial of a killed process is marked FAIL after ``GRACE_S`` and retried once). A trial interrupted by Ctrl-C is
marked FAIL and its parameters are tried again first when the study continues. Failed trials do not count.

Every trial trains with the same ``--seed`` (deterministic training), so fitness differences come from the
hyperparameters. Objective (``--evolve-fitness``), all from the trial's last validation:
  all     YOLOv5's fitness 0.1 mAP@.5 + 0.9 mAP@.5:.95 over every object;
  tiny    the same formula on the 'tiny' size bucket: objects of area < ``--tiny-area`` original px² (default: the
          base hyp's tfl_s, fixed for the whole study even when tfl_s is searched);
  tiny50  mAP@.5 of that bucket.
Pruning: after each validated epoch the fitness is reported; a trial whose fitness falls below the median of the
previous trials at the same epoch stops there (after ``PRUNE_STARTUP`` finished trials and a warm-up of a third of
the epochs). ``--noval`` validates only the last epoch, which turns pruning off.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from utils.atomic import atomic_write_text
from utils.config.hyp import SPECS, Hyp, HypError, coerce, load_hyp, read_config_yaml
from utils.errors import UsageError, UserError
from utils.eval.metrics import fitness
from utils.run_dirs import increment_path
from utils.train.builders import ddp_env, on_ctrl_c
from utils.train.loop import quiet_interrupted_trials
from utils.train.options import StudyError, TrainOptions, check_study_db, study_db_error, validate_options

if TYPE_CHECKING:
    import optuna

LOGGER = logging.getLogger(__name__)
STUDY_DB, STUDY_NAME = "study.db", "evolve"
PRUNE_STARTUP = 5  # finished trials before the median pruner may stop one
HEARTBEAT_S, GRACE_S = 60, 300  # a RUNNING trial without heartbeat for GRACE_S seconds was killed: FAIL, retried
SQLITE_TIMEOUT_S = 60  # workers wait this long for the database lock
METRIC_KEYS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")
TrainFn = Callable[..., dict]  # train.train(opt: TrainOptions, on_val=None) -> final metrics


# ----------------------------------------------------------------------------------------------------------------
# Search space
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """How one hyperparameter is sampled: a range [lo, hi] (``log``: log-uniform; ``integer``: whole numbers) or
    a tuple of ``choices`` (true/false or names)."""

    key: str
    lo: float = 0.0
    hi: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None


def load_space(path: str | Path) -> dict[str, Param]:
    """Read and check a search-space YAML against the Hyp declarations. Raises HypError (one line naming the file
    and key): unknown key, list-valued key, bad form, unknown choice, empty range (lo >= hi) or a bound outside the
    key's declared range."""
    path, data = read_config_yaml(path, HypError, "search space file")
    if not isinstance(data, dict) or not data:
        raise HypError(f"{path}: expected a mapping 'key: [lo, hi]' or 'key: [choice, ...]' with at least one key")
    for key in data:
        if key not in SPECS:
            raise HypError(f"{path}: unknown hyperparameter '{key}'; valid keys are {sorted(SPECS)}")
    return {key: _param(key, value, str(path)) for key, value in data.items()}


def _param(key: str, value: Any, source: str) -> Param:
    where, default = f"{source}: '{key}'", getattr(Hyp(), key)
    if isinstance(default, tuple):
        raise HypError(f"{where}: a list-valued hyperparameter cannot be searched; set it in the --hyp file")
    if not isinstance(value, list) or not value:
        form = "[lo, hi] or [lo, hi, log]" if not isinstance(default, bool | str) else "[choice, choice, ...]"
        raise HypError(f"{where}: expected {form}, got {value!r}")
    if isinstance(default, bool | str):
        choices = tuple(dict.fromkeys(coerce(key, v, source) for v in value))
        for c in choices:
            _in_declared_range(key, c, where)
        return Param(key, choices=choices)
    flags = value[2:]
    if len(value) < 2 or any(f not in ("log", "int") for f in flags):
        raise HypError(f"{where}: expected [lo, hi], [lo, hi, log] or [lo, hi, int], got {value!r}")
    lo, hi = (coerce(key, v, source) for v in value[:2])
    integer = "int" in flags or SPECS[key].whole
    if not lo < hi:
        raise HypError(f"{where}: empty range [{lo:g}, {hi:g}] (lo must be < hi)")
    if integer and not (lo == int(lo) and hi == int(hi)):
        raise HypError(f"{where}: whole-number range needs whole bounds, got [{lo:g}, {hi:g}]")
    if "log" in flags and lo <= 0:
        raise HypError(f"{where}: a log range needs lo > 0, got [{lo:g}, {hi:g}]")
    for bound in (lo, hi):
        _in_declared_range(key, bound, f"{where}: range [{lo:g}, {hi:g}] is outside the declared bounds")
    return Param(key, lo, hi, log="log" in flags, integer=integer)


def _in_declared_range(key: str, value: Any, where: str) -> None:
    try:
        Hyp(**{key: value})  # the declaration checks it (range, open bound, choices such as the box-loss registry)
    except HypError as e:
        raise HypError(f"{where}: {e}") from None


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
    """One value per key of ``space``, drawn by the study's sampler and recorded in the trial."""
    out = {}
    for key, p in space.items():
        if p.choices is not None:
            out[key] = trial.suggest_categorical(key, list(p.choices))
        elif p.integer:
            out[key] = trial.suggest_int(key, int(p.lo), int(p.hi), log=p.log)
        else:
            out[key] = trial.suggest_float(key, p.lo, p.hi, log=p.log)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------------------------------------
def trial_fitness(results: dict, mode: str) -> float:
    """The objective of one validation's ``results`` (val.run's dict): see the module docstring for ``mode``.
    Raises ValueError when the 'tiny' bucket is missing or has no ground truth (its mAP is undefined)."""
    if mode == "all":
        return float(fitness(np.array([results.get(k, 0.0) for k in METRIC_KEYS])))
    tiny = results.get("size_buckets", {}).get("tiny")
    if tiny is None or not tiny.get("n_gt") or math.isnan(tiny["map50_95"]):
        raise UserError(f"--evolve-fitness {mode}: the validation set has no object in the 'tiny' size bucket "
                         f"(area < {tiny['hi']:g} px²)" if tiny else f"--evolve-fitness {mode}: no 'tiny' bucket")
    return float(tiny["map50"]) if mode == "tiny50" else float(fitness([0, 0, tiny["map50"], tiny["map50_95"]]))


def trial_options(opt: TrainOptions, save_dir: Path, name: str, hyp: Hyp, tiny_area: float) -> TrainOptions:
    """A trial's train.py options: ``opt`` with the trial's full hyp (hyp flags and --hyp-set cleared, they are
    folded into it), its own folder ``save_dir/name``, only the final checkpoint saved and no plots (YOLOv5's
    --evolve does the same), and the study's fixed tiny/big split for validation."""
    flags = {f.name for f in fields(TrainOptions)}
    # flags named after hyp keys (--tfl-k, --box-loss, ...) would win over the trial's values
    cleared = {k: None for k in SPECS if k in flags and not (k == "tfl" and opt.tfl == "auto")}
    return opt.replace(**cleared, hyp=hyp, hyp_set=(), project=str(save_dir), name=name, exist_ok=True, resume=False,
                       evolve=None, nosave=True, noplots=True, tiny_area=tiny_area)


def make_objective(opt: TrainOptions, train_fn: TrainFn, base: Hyp, space: dict[str, Param], save_dir: Path,
                   tiny_area: float) -> Callable[[optuna.Trial], float]:
    """The study's objective: sample, train in ``save_dir/trial_NNN`` reporting each validation's fitness (and
    stopping when the pruner says so), return the final validation's fitness."""
    import optuna

    def objective(trial: optuna.Trial) -> float:
        hyp = base.replace(**suggest(trial, space))
        name = f"trial_{trial.number:03d}"
        trial.set_user_attr("hyp", hyp.to_dict())
        trial.set_user_attr("dir", name)
        pruned_at: list[int] = []

        def on_val(epoch: int, results: dict) -> bool:
            trial.report(trial_fitness(results, opt.evolve_fitness), epoch)
            if trial.should_prune():
                pruned_at.append(epoch)
            return bool(pruned_at)

        try:
            results = train_fn(trial_options(opt, save_dir, name, hyp, tiny_area), on_val=on_val)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # FAIL, but tried again when the study continues
            raise
        if pruned_at:
            raise optuna.TrialPruned(f"fitness below the median at epoch {pruned_at[0]}")
        return trial_fitness(results, opt.evolve_fitness)

    return objective


# ----------------------------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------------------------
def study_dir(opt: TrainOptions) -> Path:
    """The study folder: ``--resume [FOLDER | FOLDER/study.db]`` continues an existing study (bare: project/name);
    ``--exist-ok`` uses project/name whether or not it exists; otherwise a new numbered folder. The default
    project ``runs/train`` becomes ``runs/evolve`` (as YOLOv5)."""
    project = Path(opt.project)
    if project.parts[-2:] == ("runs", "train"):
        project = project.parent / "evolve"
    if not opt.resume:
        return increment_path(project / opt.name, exist_ok=opt.exist_ok)
    folder = project / opt.name if opt.resume is True else Path(opt.resume)
    folder = folder.parent if folder.name == STUDY_DB else folder
    if not (folder / STUDY_DB).is_file():
        raise UsageError(f"--resume {opt.resume if opt.resume is not True else ''}: no {STUDY_DB} in {folder} to "
                         "continue; give the study folder, or drop --resume to start a new study")
    return folder


def open_study(save_dir: Path, opt: TrainOptions, tiny_area: float) -> optuna.Study:
    """Create or load the study in ``save_dir/study.db``; a study run with another objective is refused. Raises
    StudyError (one line naming the file) when study.db is not a usable Optuna database; the file is left as it
    is."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    db = save_dir / STUDY_DB
    check_study_db(db)  # before Optuna writes its tables into another program's database
    unusable = (SQLAlchemyError, optuna.exceptions.StorageInternalError)  # damaged file, foreign tables, a folder
    try:
        with warnings.catch_warnings():  # heartbeats and the retry callback are 'experimental' in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9; older: below
            stale = ({"heartbeat_stale_trial_callback": retry(max_retry=1)} if retry else
                     {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)})
            storage = optuna.storages.RDBStorage(
                f"sqlite:///{db.resolve()}", engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}},
                heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **stale)
    except (*unusable, RuntimeError) as e:  # RuntimeError: Optuna's schema version check
        raise study_db_error(db, e) from None
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP, n_warmup_steps=max(opt.epochs // 3, 1))
    objective = {"fitness": opt.evolve_fitness, "tiny_area": tiny_area if opt.evolve_fitness != "all" else None}
    try:
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", pruner=pruner,
                                    load_if_exists=True)
        if not study.user_attrs:
            for k, v in objective.items():
                study.set_user_attr(k, v)
    except unusable as e:
        raise study_db_error(db, e) from None
    if {k: study.user_attrs.get(k) for k in objective} != objective:
        raise UsageError(f"--evolve-fitness {opt.evolve_fitness}: {db} optimises {study.user_attrs}, not "
                         f"{objective}; use the same objective or a new study")
    # seeded by the study's size, so that a continued study does not replay the first draws (start parallel
    # workers a few seconds apart: two workers opening the same study at the same size draw alike at first)
    study.sampler = optuna.samplers.TPESampler(seed=opt.seed * 1_000_003 + len(study.trials), constant_liar=True)
    return study


def requeue_interrupted(study: optuna.Study) -> None:
    """Enqueue once the parameters of each trial interrupted by Ctrl-C, so that a continued study tries them."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def run_evolve(opt: TrainOptions, train_fn: TrainFn, base: Hyp, check_data: Callable[[str], Any]) -> Path:
    """``train.py --evolve N``: check every input, then run the study until it holds N finished trials; writes
    evolve.csv and hyp_evolve.yaml after each trial and the plots at the end. ``check_data(opt.data)`` checks (and
    prepares) the dataset first (``data.prepare.check_dataset``). Returns the study folder. Ctrl-C raises
    :class:`~utils.train.builders.Interrupted` saying how to continue the study."""
    import optuna
    from optuna.trial import TrialState

    if not opt.evolve >= 1:
        raise UsageError(f"--evolve must be >= 1 trials, got {opt.evolve}")
    if ddp_env()[2] > 1 or opt.local_rank != -1:
        raise UsageError("--evolve runs single-process trials, not DDP: start several evolve processes on the same "
                         "study folder instead (--resume FOLDER)")
    space = load_space(opt.evolve_space)
    if opt.tfl == "auto" and {"tfl", "tfl_k", "tfl_piecewise"} & set(space):
        raise UsageError(f"--tfl auto: {opt.evolve_space} searches tfl/tfl_k/tfl_piecewise, which --tfl auto "
                         "would set; drop one of them")
    validate_options(opt)
    save_dir: Path | None = None  # the study folder, once it exists (what Ctrl-C's message says)
    with on_ctrl_c(lambda: interrupted_message(save_dir)):
        check_data(opt.data)  # a bad data YAML is one line before any folder exists
        tiny_area = float(opt.tiny_area or base.tfl_s)
        save_dir = study_dir(opt)
        save_dir.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours
        study = open_study(save_dir, opt, tiny_area)
        requeue_interrupted(study)
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        LOGGER.info(f"Evolve: study {save_dir / STUDY_DB}, {done}/{opt.evolve} finished trials, {len(space)} "
                    f"hyperparameters from {opt.evolve_space}, objective '{opt.evolve_fitness}'")

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            value = f"fitness {trial.value:.5f}" if trial.value is not None else trial.state.name.lower()
            folder = save_dir / str(trial.user_attrs.get("dir"))
            LOGGER.info(f"Evolve: trial {trial.number} {value}; results in {folder}")
            write_results(study, save_dir)

        if done < opt.evolve:
            try:
                with quiet_interrupted_trials():  # Ctrl-C: interrupted_message's line, not Optuna's traceback
                    study.optimize(make_objective(opt, train_fn, base, space, save_dir, tiny_area),
                                   n_trials=opt.evolve - done,
                                   callbacks=[optuna.study.MaxTrialsCallback(opt.evolve, states=finished),
                                              after_trial],
                                   catch=(FloatingPointError,))  # a diverging trial fails, the study goes on
            except KeyboardInterrupt:
                write_results(study, save_dir)  # evolve.csv shows the interrupted trial as FAIL
                raise
        else:
            LOGGER.info(f"Evolve: the study already holds {done} finished trials; give a larger --evolve to run more")
        best = write_results(study, save_dir)
        if not opt.noplots:
            plot_study(study, save_dir)
    LOGGER.info(f"Evolve: {best or 'no completed trial yet'}; results in {save_dir}")
    return save_dir


def write_results(study: optuna.Study, save_dir: Path) -> str:
    """evolve.csv (every trial) and hyp_evolve.yaml (the best complete trial's full hyp); returns a summary."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "fitness", "epochs_validated", *keys])
    for t in trials:
        w.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6g}", len(t.intermediate_values),
                    *(t.params.get(k, "") for k in keys)])
    atomic_write_text(save_dir / "evolve.csv", buf.getvalue())
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "hyp" in t.user_attrs]
    if not complete:
        return ""
    best = max(complete, key=lambda t: t.value)
    hyp = load_hyp(best.user_attrs["hyp"])  # checks it before writing
    summary = f"best trial {best.number} of {len(trials)}, fitness {best.value:.5f} ({study.user_attrs.get('fitness')})"
    header = (f"# train.py --evolve: {summary}\n# folder {save_dir / str(best.user_attrs.get('dir'))}; "
              f"use with: python train.py --hyp {save_dir / 'hyp_evolve.yaml'}\n")
    atomic_write_text(save_dir / "hyp_evolve.yaml", header + yaml.safe_dump(hyp.to_dict(), sort_keys=False))
    return summary


def plot_study(study: optuna.Study, save_dir: Path) -> list[Path]:
    """evolve_history.png (fitness per trial, best so far) and, with >= 2 complete trials, evolve_importance.png
    (PED-ANOVA importance). Optuna draws with pyplot: its style changes are confined to an rc_context and each
    figure is closed after saving."""
    import matplotlib
    import optuna
    from matplotlib import pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    from utils.plots import save_figure

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n_params = len({k for t in complete for k in t.params})
    jobs = [("evolve_history.png", ovm.plot_optimization_history, 4.0)]
    if len(complete) >= 2:  # importance compares trials
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()  # no scikit-learn (fANOVA needs it)
        jobs.append(("evolve_importance.png", partial(ovm.plot_param_importances, evaluator=evaluator),
                     max(4.0, 0.25 * n_params)))  # one readable bar per parameter
    out = []
    for name, plot, height in jobs:
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                fig = plot(study).figure
            except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. no trial with a value
                LOGGER.warning(f"Evolve: {name} not drawn ({e})")
                continue
            fig.set_size_inches(8.0, height)
            fig.tight_layout()  # long parameter names stay inside the figure
            out.append(save_figure(fig, save_dir / name))
            plt.close(fig)
    return out


def interrupted_message(save_dir: Path | None) -> str:
    """One line after Ctrl-C during --evolve: where the study (``save_dir``) is and how to continue it."""
    if not save_dir or not (Path(save_dir) / STUDY_DB).is_file():
        return "train.py: evolve interrupted before the study was created; nothing to continue"
    return (f"train.py: evolve interrupted; {Path(save_dir) / STUDY_DB} keeps every finished trial (the interrupted "
            f"one is marked FAIL and tried again first); continue with the same command plus --resume {save_dir}")


__all__ = ["Param", "StudyError", "interrupted_message", "load_space", "plot_study",
           "run_evolve", "study_dir", "suggest", "trial_fitness", "trial_options", "write_results"]
