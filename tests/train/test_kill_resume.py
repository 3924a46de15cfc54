"""Kill and resume (issue 9): SIGKILL ``train.py`` at random moments after its first ``last.pt``; the checkpoint
always loads (atomic saves) and ``--resume`` finishes the run at the final epoch with one results row per epoch.
A finished run's last.pt is stripped (epoch -1) unless the kill landed between the final save and the stripping."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import tiny_dataset
from utils.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4
ATTEMPTS = 2


def _cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _epochs_logged(run: Path) -> list[int]:
    with open(run / "results.csv", newline="") as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path):
    data = tiny_dataset(tmp_path, seed=2)
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    outcomes = []
    for attempt in range(ATTEMPTS):
        run = tmp_path / "runs" / f"a{attempt}"
        last = run / "weights" / "last.pt"
        args = ["--data", str(data), "--imgsz", "64", "--epochs", str(EPOCHS), "--batch-size", "8", "--workers", "0",
                "--noplots", "--noautoanchor", "--seed", "1", "--project", str(run.parent), "--name", run.name]
        p = subprocess.Popen(_cmd(*args), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            t_end = time.time() + 180
            while not last.exists() and p.poll() is None and time.time() < t_end:
                time.sleep(0.02)
            assert last.exists(), f"no last.pt written (seed {seed}): {p.communicate(timeout=5)[0].decode()[-2000:]}"
            # an epoch takes ~0.5-1 s: the first kill lands early (a real resume), the second anywhere up to past
            # the end (then last.pt holds the final epoch and --resume must refuse by name)
            delay = rng.uniform(0.0, 0.8 if attempt == 0 else 3.0)
            time.sleep(delay)
            killed = p.poll() is None
            if killed:
                p.send_signal(signal.SIGKILL)
            out = p.communicate(timeout=60)[0].decode()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert not killed or p.returncode == -signal.SIGKILL, out[-2000:]
        leftovers = [f.name for f in last.parent.iterdir() if f.name not in ("last.pt", "best.pt")]
        ckpt = load_checkpoint(last)  # never a torn file, whatever the moment of the kill
        assert -1 <= ckpt["epoch"] < EPOCHS and ckpt["opt"]["epochs"] == EPOCHS  # -1: finished and stripped
        outcomes.append((round(delay, 2), ckpt["epoch"], killed, leftovers))
        if ckpt["epoch"] in (-1, EPOCHS - 1):  # killed after the final save (or finished): nothing left to resume
            r = subprocess.run(_cmd("--resume", str(last)), cwd=ROOT, env=_env(), capture_output=True, text=True,
                               timeout=180)
            assert r.returncode != 0 and "nothing to resume" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
        else:
            r = subprocess.run(_cmd("--resume", str(last)), cwd=ROOT, env=_env(), capture_output=True, text=True,
                               timeout=180)
            assert r.returncode == 0, f"seed {seed} {outcomes}: {(r.stdout + r.stderr)[-3000:]}"
            assert f"at epoch {ckpt['epoch'] + 1}" in r.stdout + r.stderr
        final = load_checkpoint(last)
        assert final["epoch"] in (-1, EPOCHS - 1), (seed, outcomes)
        assert _epochs_logged(run) == list(range(EPOCHS)), (seed, outcomes)  # a re-run epoch replaces its row
        assert (run / "weights" / "best.pt").is_file()
    print(f"kill/resume seed {seed}: (delay s, epoch in last.pt, killed, leftover files) {outcomes}")
