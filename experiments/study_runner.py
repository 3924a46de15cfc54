"""A resumable multi-seed study: one small JSON result file per finished (variant, seed) run.

Layout: ``OUT/<variant>/seed<N>.json`` (committed; the results) and ``runs/<study>/<variant>/seed<N>/`` (train.py's
run folder, git-ignored; ``<study>`` is OUT's folder name). A run counts as done when its result file exists and
records the same protocol and variant definition; rerunning the study skips it. A run without a result file (never
started, interrupted, failed) is trained again from the start; the old run folder is kept beside it as
``seed<N>.attempt<k>``. A result file that records another protocol or definition stops the study before any
training (use another OUT).

Order: seeds round-robin over the variants (seed 0 of every variant, then seed 1, ...), cheapest variants first
within a seed, so that a partial study is still paired.

Each result holds: the test split's overall and per size-bucket metrics (tiny/big split at 32² px, and AI-TOD's
sides 8/16/32/64 px as aitod/very_tiny, aitod/tiny, aitod/small, aitod/medium, aitod/large; areas in original-image
px², as val.py reports them), the final val numbers,
seed, variant definition, protocol, git commit, machine, wall time, training seconds per epoch and inference
milliseconds per image (batch 1, fused model, fastest of repeated passes on one thread).
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.errors import UserError

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 1
BUCKET_SCHEMES = ("tiny", "aitod")  # val.py size-bucket schemes recorded per run (tiny/big; AI-TOD's five)


class StudyError(UserError):
    """A result file or argument the user can fix (named in the message)."""


@dataclass(frozen=True)
class Protocol:
    """What every run of a study shares (recorded in each result; a different one is another study)."""

    data: str  # data YAML
    epochs: int
    imgsz: int  # native input size (px); a variant's scale multiplies it
    batch_size: int
    nbs: int  # nominal batch size (gradient accumulation; train.py --nbs)
    weights_sha256: str = ""  # SHA-256 of the starting checkpoint ('' = from scratch); the file travels apart
    cfg: str = "yolov5n.yaml"  # model YAML unless the variant names its own
    workers: int = 0  # dataloader workers (0: everything in the one process, as one core runs it)
    val_every_epoch: bool = True  # validate after every epoch (the learning curve; does not change the weights)


@dataclass(frozen=True)
class StudyVariant:
    """One method of the study: hyperparameter file and overrides, model YAML, input scale."""

    name: str
    hyp: str = "hyp.scratch-low.yaml"  # file in hyp/
    overrides: tuple[str, ...] = ()  # key=value hyperparameter overrides
    cfg: str = ""  # model YAML ('' = the protocol's)
    scale: float = 1.0  # input size = round_up(scale x protocol imgsz, 32) for training, val and test
    cost: float = 1.0  # expected training cost relative to the baseline (orders the runs of a seed)
    doc: str = ""
    start: str = ""  # its own starting checkpoint ('' = the protocol's), e.g. a model whose layers differ

    def imgsz(self, base: int, stride: int = 32) -> int:
        """Input size (px) of this variant: ``scale x base`` rounded up to a multiple of ``stride``."""
        return int(math.ceil(self.scale * base / stride) * stride)

    def definition(self, p: Protocol) -> dict[str, Any]:
        """What the variant's results depend on beyond the protocol (recorded in each result file)."""
        d = {"hyp": self.hyp, "overrides": list(self.overrides), "cfg": self.cfg or p.cfg, "scale": self.scale,
             "imgsz": self.imgsz(p.imgsz), "doc": self.doc}
        if self.start:
            d["start"] = self.start
            d["start_sha256"] = sha256(Path(self.start)) if Path(self.start).is_file() else "missing"
        return d


@dataclass(frozen=True)
class PlannedRun:
    variant: StudyVariant
    seed: int
    result: Path  # OUT/<variant>/seed<N>.json
    run_dir: Path  # runs/<study>/<variant>/seed<N>


@dataclass
class RunOutcome:
    """What training and evaluating one run produced (the body of its result file)."""

    test: dict[str, Any]  # {'overall': {...}, 'buckets': {name: {...}}}
    val: dict[str, Any]
    train_s: float  # training wall time (setup and every epoch's validation included)
    train_s_per_epoch: float  # median epoch (with its validation), or train_s / epochs without a curve
    inference_ms: float
    extra: dict[str, Any] = field(default_factory=dict)


def plan(variants: list[StudyVariant], seeds: list[int], out: Path, runs_root: Path) -> list[PlannedRun]:
    """Every (variant, seed) run in study order: seed-major, cheapest variant first within a seed (ties keep the
    given order)."""
    names = [v.name for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise StudyError(f"variant(s) listed twice: {dup}")
    ordered = sorted(variants, key=lambda v: v.cost)  # sorted() is stable
    return [PlannedRun(v, s, out / v.name / f"seed{s}.json", run_folder(runs_root, out.name, v.name, s))
            for s in seeds for v in ordered]


def run_folder(runs_root: Path, study: str, variant: str, seed: int) -> Path:
    """train.py's run folder of one run: ``runs_root/<study>/<variant>/seed<N>`` (``<study>``: OUT's folder name)."""
    return runs_root / study / variant / f"seed{seed}"


def final_weights(run_dir: Path) -> Path:
    """The weights a run is evaluated and timed with: its last.pt (not best.pt: the val split chooses nothing)."""
    return run_dir / "weights" / "last.pt"


def read_result(path: Path) -> dict[str, Any]:
    """A result file's content; StudyError naming the file when it is not a study result."""
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StudyError(f"{path}: not a readable result file ({e}); move it away to run it again") from None
    missing = [k for k in ("schema", "variant", "seed", "protocol", "definition", "test") if k not in r] \
        if isinstance(r, dict) else ["(not a JSON object)"]
    if missing:
        raise StudyError(f"{path}: not a study result file (missing {', '.join(missing)})")
    return r


def is_done(run: PlannedRun, protocol: Protocol) -> bool:
    """True when the run's result file exists and matches; False when it does not exist; StudyError when it
    records another protocol or definition (never overwritten)."""
    if not run.result.is_file():
        return False
    r = read_result(run.result)
    want = {"protocol": asdict(protocol), "definition": run.variant.definition(protocol), "seed": run.seed}
    diff = sorted(k for k, v in want.items() if r.get(k) != v)
    if diff:
        raise StudyError(f"{run.result} was run with a different {' and '.join(diff)}; use another --out, or move "
                         "that file away to run it again")
    return True


def ran_precision(run_dir: Path) -> str:
    """The precision a finished train.py run really used ('fp32' | 'bf16' | ...), from its opt.yaml."""
    import yaml

    return str(yaml.safe_load((run_dir / "opt.yaml").read_text(encoding="utf-8")).get("precision", "fp32"))


def seed_precisions(out: Path, seed: int) -> set[str]:
    """Training precision recorded by each result of ``seed`` in ``out``. Results without the field were trained
    before it was recorded, on a CPU without native bf16, where train.py's default is fp32."""
    return {read_result(f).get("precision", "fp32") for f in sorted(out.glob(f"*/seed{seed}.json"))}


def seed_starts(out: Path, seed: int) -> set[str]:
    """SHA-256 of the starting checkpoint recorded by each result of ``seed`` in ``out`` (empty: no result yet)."""
    return {read_result(f)["protocol"].get("weights_sha256", "") for f in sorted(out.glob(f"*/seed{seed}.json"))}


def move_aside(run_dir: Path) -> Path | None:
    """Keep an interrupted attempt's folder as '<name>.attempt<k>' so that the new run starts clean."""
    if not run_dir.exists():
        return None
    k = 1
    while (run_dir.parent / f"{run_dir.name}.attempt{k}").exists():
        k += 1
    dest = run_dir.parent / f"{run_dir.name}.attempt{k}"
    run_dir.rename(dest)
    return dest


def result_record(run: PlannedRun, protocol: Protocol, o: RunOutcome, wall_s: float, commit: str,
                  machine: str) -> dict[str, Any]:
    """The JSON body of a result file."""
    return {"schema": SCHEMA, "study": run.result.parent.parent.name, "variant": run.variant.name, "seed": run.seed,
            "definition": run.variant.definition(protocol), "protocol": asdict(protocol), "git_commit": commit,
            "machine": machine, "wall_s": wall_s, "train_s": o.train_s,
            "train_s_per_epoch": o.train_s_per_epoch, "inference_ms_per_image": o.inference_ms,
            "test": o.test, "val": o.val, **o.extra, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


RunFn = Callable[[PlannedRun, Protocol], RunOutcome]  # (run, protocol) -> outcome; raises on failure


def execute(runs: list[PlannedRun], protocol: Protocol, run_fn: RunFn, commit: str, machine: str,
            log: Callable[[str], None] = print, max_runs: int = 0) -> tuple[int, int, int]:
    """Train and evaluate every run without a result, in order, writing each result file atomically as soon as
    the run is done. Every result file is checked before any training. ``max_runs`` > 0 stops after that many.
    A failing run is logged with its traceback and the study goes on. Returns (done before, done now, failed)."""
    import traceback

    from utils.atomic import atomic_write_json

    done = [is_done(r, protocol) for r in runs]
    todo = [r for r, d in zip(runs, done) if not d]
    log(f"study: {len(runs)} runs planned, {sum(done)} done earlier, {len(todo)} to run")
    now = failed = 0
    for i, r in enumerate(todo):
        if max_runs and now + failed >= max_runs:
            break
        log(f"study: [{i + 1}/{len(todo)}] {r.variant.name} seed {r.seed}")
        old = move_aside(r.run_dir)
        if old:
            log(f"study: an earlier attempt without a result was kept as {old}")
        t0 = time.perf_counter()
        try:
            outcome = run_fn(r, protocol)
        except Exception:  # one failed run must not stop the others; no result file: it is redone next time
            failed += 1
            log(f"study: {r.variant.name} seed {r.seed} FAILED:\n{traceback.format_exc()}")
            continue
        r.result.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(r.result, result_record(r, protocol, outcome, time.perf_counter() - t0, commit, machine))
        now += 1
        log(f"study: wrote {r.result} (tiny AP50 {outcome.test['buckets'].get('tiny', {}).get('map50', math.nan):.4f})")
    return sum(done), now, failed


# ----------------------------------------------------------------------------------------------------------------
# One real run: train.py, then val.py on the test split, then an inference timing
# ----------------------------------------------------------------------------------------------------------------
def train_argv(r: PlannedRun, p: Protocol, weights: str = "", precision: str = "fp32") -> list[str]:
    """train.py arguments of one run (no plots); ``weights``: the starting checkpoint; ``precision``: 'fp32' or
    'bf16' (the forward under bf16 autocast: ``--amp on``, a CPU with native bf16)."""
    from utils.config.hyp import HYP_DIR

    v = r.variant
    argv = ["--data", p.data, "--hyp", str(HYP_DIR / v.hyp), "--cfg", v.cfg or p.cfg, "--epochs", str(p.epochs),
            "--imgsz", str(v.imgsz(p.imgsz)), "--batch-size", str(p.batch_size), "--nbs", str(p.nbs), "--seed",
            str(r.seed), "--workers", str(p.workers), "--project", str(r.run_dir.parent), "--name", r.run_dir.name,
            "--noplots", "--exist-ok"]
    argv += [] if p.val_every_epoch else ["--noval"]
    argv += ["--weights", weights] if weights else []
    argv += ["--amp", "on" if precision == "bf16" else "off"]
    return argv + (["--hyp-set", *v.overrides] if v.overrides else [])


def summarise_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """val.py's metrics dict -> {'overall': P/R/mAP, 'buckets': {name: {n_gt, p, r, map50, map50_95}}}."""
    keys = {"precision": "metrics/precision", "recall": "metrics/recall", "map50": "metrics/mAP_0.5",
            "map50_95": "metrics/mAP_0.5:0.95"}
    buckets = {b: {k: v.get(k) for k in ("n_gt", "p", "r", "map50", "map50_95")}
               for b, v in (m.get("size_buckets") or {}).items()}
    return {"overall": {k: m.get(src) for k, src in keys.items()}, "buckets": buckets}


def inference_model(weights: Path) -> torch.nn.Module:
    """The fused fp32 eval-mode model of a checkpoint, as the inference timings run it."""
    from utils.checkpoints import load_model

    return load_model(weights, device="cpu", fuse=True)


def fastest_pass_ms(model: torch.nn.Module, x: torch.Tensor, n: int, warmup: int) -> float:
    """Fastest of ``n`` forward passes of ``model`` on ``x`` in milliseconds, after ``warmup`` untimed ones, on the
    current torch threads. The minimum, not the median: on a shared machine it is the pass least disturbed by
    other processes."""
    import torch

    times = []
    with torch.inference_mode():
        for i in range(warmup + n):
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def time_inference(weights: Path, imgsz: int, n: int = 60, warmup: int = 5) -> float:
    """Fastest of ``n`` forward passes in milliseconds (batch 1, ``imgsz`` x ``imgsz`` input px, fused, eval mode)
    on the current torch threads; NMS excluded (it depends on the detections, not on the method)."""
    import torch

    return fastest_pass_ms(inference_model(weights), torch.rand(1, 3, imgsz, imgsz), n, warmup)


def curve_point(epoch: int, m: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One epoch of the learning curve: val fitness (0.1 mAP@.5 + 0.9 mAP@.5:.95), mAP@.5, tiny AP50, seconds."""
    map50, map5095 = m.get("metrics/mAP_0.5") or 0.0, m.get("metrics/mAP_0.5:0.95") or 0.0
    tiny = (m.get("size_buckets") or {}).get("tiny", {}).get("map50")
    return {"epoch": epoch, "fitness": 0.1 * map50 + 0.9 * map5095, "map50": map50, "tiny_map50": tiny,
            "s": seconds}


def run_one(r: PlannedRun, p: Protocol, weights: str = "", precision: str = "fp32") -> RunOutcome:
    """Train one run (from ``weights`` when given), evaluate its last.pt on the test split (both bucket schemes)
    and time its inference. Training seconds per epoch: the median epoch (its validation included)."""
    import train
    import val

    curve: list[dict[str, Any]] = []
    t0 = last = time.perf_counter()

    def on_val(epoch: int, m: dict[str, Any]) -> bool:
        nonlocal last
        now = time.perf_counter()
        curve.append(curve_point(epoch, m, now - last))
        last = now
        return False

    final = train.train(train.get_args_parser().parse_args(train_argv(r, p, weights, precision)), on_val=on_val)
    train_s = time.perf_counter() - t0
    weights_out = final_weights(r.run_dir)
    imgsz = r.variant.imgsz(p.imgsz)
    test: dict[str, Any] = {"overall": {}, "buckets": {}}
    for scheme in BUCKET_SCHEMES:
        m = val.run(p.data, weights=str(weights_out), batch_size=2 * p.batch_size, imgsz=imgsz, task="test",
                    workers=p.workers, project=r.run_dir, name=f"test-{scheme}", exist_ok=True, plots=False,
                    size_buckets_spec=scheme, tfl_s=1024.0)
        s = summarise_metrics(m)
        test["overall"] = s["overall"]
        pre = "" if scheme == "tiny" else f"{scheme}/"  # AI-TOD has a 'tiny' bucket of its own (8-16 px sides)
        test["buckets"].update({pre + b: v for b, v in s["buckets"].items()})
        test.setdefault("speed_ms", m.get("speed_ms"))
    val_summary = summarise_metrics({k: v for k, v in final.items() if k != "save_dir"})
    per_epoch = sorted(c["s"] for c in curve[1:]) or [train_s / p.epochs]  # the first epoch also holds the setup
    return RunOutcome(test, val_summary, train_s, per_epoch[len(per_epoch) // 2], time_inference(weights_out, imgsz),
                      {"curve": curve, "precision": ran_precision(r.run_dir)})


def machine() -> str:
    """CPU model, cores, torch threads and versions (for the result files)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "none" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    return (f"{cpu}; torch threads {torch.get_num_threads()}; GPU used: {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def git_commit() -> str:
    from experiments.report import git_commit as commit

    return commit(ROOT)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (identifies the starting checkpoint in the protocol)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    sys.exit("run the study with: python experiments/tiny_study.py run --help")
