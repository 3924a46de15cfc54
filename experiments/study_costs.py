"""A study's costs re-timed together: ``python experiments/tiny_study.py costs OUT --runs RUNS_ROOT``.

Each run times itself when it finishes (``train_s_per_epoch``, ``inference_ms_per_image`` in its result file), at
whatever moment that is: other processes sharing the cores make those ratios noise. Here one process times the
final weights of every variant in one sitting, **interleaved**: ``rounds`` rounds, each visiting every variant
once in an order shuffled with a fixed seed, so that a change of load hits every variant alike; each number is the
median over the rounds.

Per variant, with its lowest seed that has ``RUNS_ROOT/<study>/<variant>/seed<N>/weights/last.pt`` (``<study>``:
OUT's folder name, as the runs were planned):

- **inference**: ms per image, batch 1 at the variant's input size (its result's ``definition.imgsz``), the fused
  eval-mode model, no NMS; per round the fastest of ``passes`` forward passes (as each run's own timing);
- **train step**: ms per step, forward + ComputeLoss with the variant's hyperparameters (``definition.hyp`` and
  ``definition.overrides``: TFL's extra loss work counts) + backward + SGD step, in fp32, on a fixed synthetic batch
  of ``BATCH`` random images at the variant's input size with fixed small targets (the same normalised boxes for
  every variant, see :func:`synthetic_targets`); per round the mean of ``train_steps`` steps, each round starting
  from the final weights again. **Not included**: data loading and augmentation (mosaic, copy-paste: ``paste``
  reads as the baseline here), the EMA update and validation.

Writes ``OUT/costs.json`` (atomically), which study_report.report then uses for its cost columns and the Pareto
figure.
"""

from __future__ import annotations

import copy
import os
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.study_report import BASELINE, COSTS_FILE, COSTS_SCHEMA, ratio_cell
from experiments.study_runner import (
    StudyError,
    fastest_pass_ms,
    final_weights,
    git_commit,
    inference_model,
    machine,
    read_result,
    run_folder,
)

if TYPE_CHECKING:
    import torch

BATCH = 16  # the study's training batch (study_cli.BATCH)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")  # what decides PyTorch's CPU kernels
ORDER_SEED = 0  # shuffles each round's order of the variants (the same sequence every time)
INPUT_SEED = 0  # the random images
TARGET_SEED = 0  # the synthetic targets
NATIVE_PX = 160  # the study data's image side (data/synthetic-aerial-1c.yaml): targets are drawn at this size
OBJECTS = (8, 20)  # objects per image, uniform in this range (data/synthetic-aerial-1c.yaml's min/max_objects)
INFER_WARMUP = 2  # untimed passes before each round's timed ones


@dataclass(frozen=True)
class Subject:
    """One variant's final weights to time."""

    name: str
    seed: int
    imgsz: int  # input px (square)
    weights: Path  # its last.pt
    hyp: str  # hyp file (a name in hyp/)
    overrides: tuple[str, ...]  # key=value hyperparameter overrides


def find_subjects(out: Path, runs_root: Path) -> tuple[list[Subject], list[str]]:
    """(one Subject per variant with a result in ``out`` and weights under ``runs_root``: its lowest such seed;
    the names of the variants that have results but no weights). StudyError naming the path when ``out`` has no
    result or no variant has weights."""
    files = sorted(out.glob("*/seed*.json"))
    if not files:
        raise StudyError(f"{out}: no result files (OUT/<variant>/seed<N>.json) to re-time")
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for f in files:
        r = read_result(f)
        by_variant.setdefault(r["variant"], []).append(r)
    subjects, skipped = [], []
    for name, results in sorted(by_variant.items(), key=lambda kv: (kv[0] != BASELINE, kv[0])):  # baseline first
        for r in sorted(results, key=lambda r: int(r["seed"])):
            w = final_weights(run_folder(runs_root, out.name, name, int(r["seed"])))
            if w.is_file():
                d = r["definition"]
                subjects.append(Subject(name, int(r["seed"]), int(d["imgsz"]), w, d["hyp"],
                                        tuple(d.get("overrides") or ())))
                break
        else:
            skipped.append(name)
    if not subjects:
        raise StudyError(f"no weights found: {weights_pattern(runs_root, out)} exists for none of {', '.join(skipped)}")
    return subjects, skipped


def weights_pattern(runs_root: Path, out: Path, variant: str = "<variant>") -> Path:
    """Where a variant's weights are looked for (for messages): ``runs_root/<study>/<variant>/seed<N>/weights/last.pt``
    with ``<study>`` OUT's folder name."""
    return final_weights(runs_root / out.name / variant / "seed<N>")


def synthetic_targets(batch: int = BATCH, seed: int = TARGET_SEED) -> torch.Tensor:
    """(n, 6) ``[image, class 0, x, y, w, h]`` normalised: ``OBJECTS`` objects per image whose sides sqrt(w h) are
    drawn as data/synthetic_aerial.py draws the study data's (px at ``NATIVE_PX``: log-normal, median 9 px, a 10 %
    share 32-64 px), aspect ratio 1-2 either way, inside the image. The same boxes at every input size: the images
    are upsampled with the input, as the study's loader does."""
    import numpy as np
    import torch

    from data.synthetic_aerial import AerialParams, sample_sides

    p = AerialParams(imgsz=NATIVE_PX, min_objects=OBJECTS[0], max_objects=OBJECTS[1])
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(batch):
        k = int(rng.integers(p.min_objects, p.max_objects + 1))
        side = sample_sides(rng, k, p) / p.imgsz
        stretch = np.sqrt(rng.uniform(1.0, 2.0, k)) ** rng.choice((-1, 1), k)  # w / h = stretch ** 2
        wh = np.minimum(np.column_stack((side * stretch, side / stretch)), 1.0)
        xy = wh / 2 + rng.random((k, 2)) * (1 - wh)
        rows.append(np.column_stack((np.full(k, i), np.zeros(k), xy, wh)))
    return torch.from_numpy(np.concatenate(rows)).float()


class _Bench:
    """One variant loaded for timing: the fused inference model and its input, and the training model with its
    loss, optimiser and batch (the final weights kept to restart each round from them)."""

    def __init__(self, s: Subject, targets: torch.Tensor) -> None:
        import torch

        from utils.checkpoints import load_model
        from utils.config.hyp import load_hyp
        from utils.loss.compute_loss import ComputeLoss
        from utils.torch_utils import smart_optimizer

        g = torch.Generator().manual_seed(INPUT_SEED)
        self.infer_model = inference_model(s.weights)
        self.x = torch.rand(1, 3, s.imgsz, s.imgsz, generator=g)
        hyp = load_hyp(s.hyp, list(s.overrides))
        self.model = load_model(s.weights).train()
        self.loss_fn = ComputeLoss(self.model, hyp, imgsz=s.imgsz)  # gains scaled as train.py scales them
        # train.py's optimiser (SGD, three parameter groups); its learning rate does not change the step's cost
        self.optimizer = smart_optimizer(self.model, "SGD", hyp.lr0, hyp.momentum, hyp.weight_decay)
        self.images = torch.rand(BATCH, 3, s.imgsz, s.imgsz, generator=g)
        self.targets = targets
        self.final = copy.deepcopy(self.model.state_dict())
        self.step()  # untimed: the first step allocates the optimiser's momentum buffers

    def step(self) -> None:
        """One training step as train.py runs it in fp32 (no EMA update)."""
        loss, _ = self.loss_fn(self.model(self.images), self.targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()

    def train_step_ms(self, steps: int) -> float:
        """Mean ms of ``steps`` steps, starting from the final weights (so that no round trains on drifted ones)."""
        self.model.load_state_dict(self.final)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return 1e3 * (time.perf_counter() - t0) / steps

    def inference_ms(self, passes: int) -> float:
        return fastest_pass_ms(self.infer_model, self.x, passes, INFER_WARMUP)


def measure(subjects: list[Subject], rounds: int, passes: int, train_steps: int,
            log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Interleaved timings of every subject: ``rounds`` rounds in a shuffled order each (fixed seed); per round the
    fastest of ``passes`` inference passes and the mean of ``train_steps`` train steps. Returns costs.json's
    ``variants`` (ms; the medians over rounds and each round's value)."""
    targets = synthetic_targets()
    benches = {s.name: _Bench(s, targets) for s in subjects}
    infer: dict[str, list[float]] = {n: [] for n in benches}
    train: dict[str, list[float]] = {n: [] for n in benches}
    order, rng = list(benches), random.Random(ORDER_SEED)
    for k in range(rounds):
        rng.shuffle(order)
        for n in order:
            infer[n].append(benches[n].inference_ms(passes))
            train[n].append(benches[n].train_step_ms(train_steps))
        log(f"costs: round {k + 1}/{rounds} ({', '.join(order)})")
    return {s.name: {"seed": s.seed, "imgsz": s.imgsz, "inference_ms": statistics.median(infer[s.name]),
                     "train_step_ms": statistics.median(train[s.name]), "inference_ms_rounds": infer[s.name],
                     "train_step_ms_rounds": train[s.name]} for s in subjects}


def cpu_flags(names: tuple[str, ...] = CPU_FLAGS) -> list[str]:
    """Which of ``names`` the CPU has (/proc/cpuinfo's flags, else lscpu's); [] when neither can be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        try:
            text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
    line = next((ln for ln in text.splitlines() if ln.lower().startswith("flags")), ":")
    have = set(line.split(":", 1)[1].split())
    return [f for f in names if f in have]


def run_costs(out: Path, runs_root: Path, rounds: int = 7, passes: int = 20, train_steps: int = 5, threads: int = 1,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every variant of the study ``out`` on ``threads`` torch threads (restored afterwards) and write
    ``out/costs.json``; returns its content. Logs a warning when the 1-min load average before starting exceeds
    the number of cores minus 0.5."""
    import torch

    from utils.atomic import atomic_write_json

    subjects, skipped = find_subjects(out, runs_root)
    for name in skipped:
        log(f"costs: {name} skipped: no {weights_pattern(runs_root, out, name)} for any finished seed")
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    if load[0] > cores - 0.5:
        log(f"costs: warning: 1-min load average {load[0]:.2f} on {cores} cores: timings will be noisy")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        record = {"schema": COSTS_SCHEMA, "machine": machine(), "cpu_flags": cpu_flags(), "threads": threads,
                  "rounds": rounds, "passes": passes, "train_steps": train_steps, "batch": BATCH,
                  "git_commit": git_commit(), "load_before": list(load),
                  "variants": measure(subjects, rounds, passes, train_steps, log)}
    finally:
        torch.set_num_threads(before)
    atomic_write_json(out / COSTS_FILE, record)
    return record


def costs_table(record: Mapping[str, Any]) -> str:
    """A short text table of costs.json's content: per variant its seed, input px, inference ms and train step ms
    with their ratios to the baseline."""
    v = record["variants"]
    base = v.get(BASELINE, {})
    lines = [f"Costs re-timed together: {record['rounds']} interleaved rounds, {record['threads']} thread(s), "
             f"median over rounds; {record['machine']}",
             f"train step: forward + loss + backward + SGD step on a fixed synthetic batch of {record['batch']}; data "
             "loading and augmentation (mosaic, copy-paste) are not included",
             "| variant | seed | input px | inference ms (ratio) | train step ms (ratio) |", "|---|---|---|---|---|"]
    for n, c in v.items():
        lines.append(f"| {n} | {c['seed']} | {c['imgsz']} | "
                     f"{ratio_cell(c['inference_ms'], base.get('inference_ms', float('nan')))} | "
                     f"{ratio_cell(c['train_step_ms'], base.get('train_step_ms', float('nan')))} |")
    return "\n".join(lines) + "\n"
