"""End-to-end training throughput, images/s: our train.py's epoch loop vs the reference YOLOv5 v7.0 train.py's.

Each side trains in its own subprocess (so that neither inherits the other's imports, threads or caches) on the
same data and settings, with data loading, augmentation, the training step (forward, loss, backward, optimiser
with gradient accumulation, EMA) and the progress bar, without validation, plots, AutoAnchor or checkpoints:

- ours: ``train.build_run(opt)`` from the same command line a user types, then train.py's own epoch loop
  (``seed_epoch``, ``train_one_epoch``, ``scheduler.step``) with the train loader wrapped to time each batch's
  wait for data and the step that follows;
- the reference: its ``train.train(hyp, opt, device, callbacks)`` as its ``main`` calls it, timed by its own
  callbacks (batch start / end, epoch start / end), its ``validate.run`` replaced by zeros (the package's own
  ``--noval`` crashes after a non-final epoch) and stopped at the end of the last epoch. Other shims only keep it
  offline: no font download, no Hugging Face hub query, no ``roboflow`` module, and on CUDA ``check_amp`` (which
  would download yolov5n.pt) answers True, so that both use fp16 autocast as they would online.

The data is ``--data`` as our check_dataset resolves it (``data/synthetic-tiny.yaml`` is generated on first use);
the reference reads the same image files through per-file links in a temporary folder, so that each keeps its own
label cache (both name it ``labels/<split>.cache``, in different formats). Both subprocesses start together (set-up
is not timed), then train in turns of ``--turn`` batches, A B B A A B ..., so that the bursts and drifts of a
shared machine hit both alike; a paused side's time is left out. The first ``--warmup`` epochs (worker start,
allocator and cache warm-up) are left out of the rate; the ratio is ours / reference in images/s (> 1: ours
faster). While paused, a side's loader workers may prefetch its next few batches (2 per worker): both get that
head start, except at an epoch's start, where the reference's persistent workers have it and ours, started anew
each epoch, do not.

    python benchmarks/bench_train.py                      # CI size: yolov5n, 128 px, batch 16, 2 workers, CPU,
                                                          # 4 epochs per side, the first left out
    python benchmarks/bench_train.py --device 0 --cfg yolov5s.yaml --imgsz 640 --batch 64 --workers 8 \\
        --data DATA.yaml --epochs 4                       # the GPU setting of issue #16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORACLE = ROOT / ".oracle"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic-tiny.yaml", help="our data YAML (generated if synthetic)")
    p.add_argument("--cfg", default="yolov5n.yaml", help="model YAML name, e.g. yolov5s.yaml (both sides' own copy)")
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4, help="epochs per side, warm-up included")
    p.add_argument("--warmup", type=int, default=1, help="first epochs left out of the rate")
    p.add_argument("--cache", default="ram", choices=["ram", "disk", "none"])
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index such as 0")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads in both (0: torch's default)")
    p.add_argument("--flush-denormal", action="store_true", help="both sides: torch.set_flush_denormal(True) (CPU: "
                   "subnormal floats as 0; an experiment, neither train.py does it)")
    p.add_argument("--turn", type=int, default=16, help="batches per turn: the two sides train in turns of this "
                   "many batches, A B B A ...; 0: whole epochs")
    p.add_argument("--only", choices=["both", "ours", "ref"], default="both")
    p.add_argument("--timeout", type=int, default=7200, help="seconds for the whole benchmark")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (run folders, logs)")
    p.add_argument("--worker", choices=["ours", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)  # the worker's run folder
    p.add_argument("--ref-data", help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------------------------- timing
class Gate:
    """A training subprocess's side of the driver's protocol: it trains only after reading a ``go`` line on stdin,
    and answers each with one ``BENCH <json>`` line on stdout (other output there is logged, not parsed)."""

    def send(self, **msg) -> None:
        sys.stdout.write("\nBENCH " + json.dumps(msg) + "\n")
        sys.stdout.flush()

    def wait(self) -> None:
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("bench_train: the driver went away")


class EpochTimer:
    """Per-epoch wall time, main-process CPU time, and the sums of each batch's wait for data, its step and named
    parts of the step (``part``); on CUDA every mark waits for the device.

    Training runs in turns of ``turn`` batches (0: whole epochs): the epoch's first turn starts at ``go``, and
    after each turn the process reports, waits for the next ``go`` and leaves that pause out of every time.
    """

    def __init__(self, cuda: bool, gate: Gate, turn: int) -> None:
        self.cuda, self.gate, self.turn = cuda, gate, turn
        self.epochs, self.mark, self.in_turn, self.pending = [], 0.0, 0, False

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def epoch_start(self) -> None:
        self.gate.wait()
        self.epochs.append({"s": 0.0, "cpu_s": 0.0, "images": 0, "batches": 0, "wait_s": 0.0, "step_s": 0.0,
                            "parts": {}, "batch_s": []})
        self.cpu0, self.paused = time.process_time(), 0.0
        self.t0 = self.mark = self.now()

    def batch_start(self) -> None:
        t = self.now()
        self.epochs[-1]["wait_s"] += t - self.mark
        self.wait, self.mark = t - self.mark, t
        if self.pending:  # the turn ended with the previous batch: let the other side train
            self.pending = False
            self.gate.send(turn=True)
            self.gate.wait()
            self.mark = self.now()
            self.paused += self.mark - t

    def batch_end(self, images: int) -> None:
        t = self.now()
        e = self.epochs[-1]
        e["step_s"] += t - self.mark
        e["batch_s"].append(round(self.wait + t - self.mark, 6))  # this batch's wait + step
        e["images"] += images
        e["batches"] += 1
        self.mark = t
        self.in_turn += 1
        if self.turn and self.in_turn >= self.turn:
            self.in_turn, self.pending = 0, True

    def epoch_end(self) -> None:
        e = self.epochs[-1]
        e["s"] = self.now() - self.t0 - self.paused
        e["cpu_s"] = time.process_time() - self.cpu0
        self.in_turn, self.pending = 0, False
        self.gate.send(epoch=e)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to the current epoch's part ``name`` of the step."""
        if self.epochs:
            parts = self.epochs[-1]["parts"]
            parts[name] = parts.get(name, 0.0) + seconds

    def part(self, name: str, fn):
        """``fn`` wrapped to add its duration to the part ``name``."""

        def timed(*args, **kw):
            t = self.now()
            out = fn(*args, **kw)
            self.add(name, self.now() - t)
            return out

        return timed


class TimedLoader:
    """Wraps a DataLoader: the time inside ``next`` is the wait for data, the time until the next request the step."""

    def __init__(self, loader, timer: EpochTimer) -> None:
        self.loader, self.timer = loader, timer

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __iter__(self):
        for batch in self.loader:
            self.timer.batch_start()
            yield batch
            self.timer.batch_end(len(batch[0]))


# ---------------------------------------------------------------------------------------------------- the two sides
def common_flags(a: argparse.Namespace) -> list[str]:
    cache = [] if a.cache == "none" else ["--cache", a.cache]
    return ["--imgsz", str(a.imgsz), "--batch-size", str(a.batch), "--workers", str(a.workers), "--epochs",
            str(a.epochs), "--device", a.device, "--noplots", "--noautoanchor", "--nosave", "--exist-ok", *cache]


def run_ours(a: argparse.Namespace, project: Path, gate: Gate) -> dict:
    """Our train.py: build the run from a user's command line, then its epoch loop without validation/saving."""
    sys.path.insert(0, str(ROOT))
    import torch

    import train as ours

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(a.flush_denormal)
    opt = ours.TrainOptions.from_args(ours.get_args_parser().parse_args(
        ["--data", a.data, "--cfg", a.cfg, "--project", str(project), "--name", "ours", "--noval", *common_flags(a)]))
    t_setup = time.perf_counter()
    run, state = ours.build_run(opt)
    setup_s = time.perf_counter() - t_setup
    timer = EpochTimer(run.device.type == "cuda", gate, a.turn)
    loader, run.train_loader = run.train_loader, TimedLoader(run.train_loader, timer)
    # where a step goes: the forward (autocast included), the loss, the optimiser step with EMA; the rest is the
    # backward pass plus the loop's own bookkeeping (moving the batch, the progress bar)
    run.loss_fn = timer.part("loss", run.loss_fn)
    ours.optimizer_step = timer.part("optimizer + EMA", ours.optimizer_step)  # looked up by train_one_epoch
    start = [0.0]
    run.model.register_forward_pre_hook(lambda module, args: start.__setitem__(0, timer.now()))
    run.model.register_forward_hook(lambda module, args, out: timer.add("forward", timer.now() - start[0]))
    gate.send(ready=True)
    try:
        for epoch in range(opt.epochs):  # train.train()'s loop, minus validate_epoch / log / save_epoch
            timer.epoch_start()
            ours.seed_epoch(loader, run.dataset, ours.epoch_seed(opt.seed, epoch, run.rank), epoch)
            ours.train_one_epoch(run, state, epoch)
            run.scheduler.step()
            timer.epoch_end()
    finally:
        if run.logger:
            run.logger.close()
        ours.release_run_lock(run.lock)
    return {"setup_s": setup_s, "threads": torch.get_num_threads(), "precision": run.precision.label}


class _Stop(Exception):
    """Raised from the reference's last on_train_epoch_end: ends its train() before the final validation."""


def run_ref(a: argparse.Namespace, project: Path, gate: Gate) -> dict:
    """The reference's train.train() as its main() calls it, timed through its callbacks."""
    sys.path.insert(0, str(ORACLE))  # not our ROOT: the reference's bare `models`/`utils` imports must not find ours
    sys.modules["yolov5.utils.roboflow"] = types.SimpleNamespace(RoboflowConnector=None)  # needs `roboflow`
    import numpy as np
    import torch
    import yaml
    import yolov5.train as ref
    from yolov5.utils import general
    from yolov5.utils.callbacks import Callbacks
    from yolov5.utils.torch_utils import select_device

    general.check_font = lambda *args, **kw: None  # downloads Arial.ttf for plots; offline it raises
    ref.attempt_download_from_hub = lambda *args, **kw: None  # asks the Hugging Face hub about --weights ''
    # No validation (its --noval crashes on the package's map50s after a non-final epoch): metrics of zeros
    nc = yaml.safe_load(Path(a.ref_data).read_text())["nc"]
    ref.validate = types.SimpleNamespace(run=lambda *args, **kw: ((0.0,) * 7, np.zeros(nc), np.zeros(nc), None))
    sys.argv = ["train.py", "--weights", "", "--cfg", str(ORACLE / "yolov5/models" / a.cfg), "--data", a.ref_data,
                "--hyp", str(ORACLE / "yolov5/data/hyps/hyp.scratch-low.yaml"), "--project", str(project),
                "--name", "ref", *common_flags(a)]
    opt = ref.parse_opt(True)
    opt.save_dir = str(general.increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok))
    device = select_device(opt.device, batch_size=opt.batch_size)
    if device.type == "cuda":
        ref.check_amp = lambda model: True  # its check downloads yolov5n.pt; online it passes and AMP is on
    if a.threads:
        torch.set_num_threads(a.threads)  # after its imports, which set OMP_NUM_THREADS from the CPU count
    torch.set_flush_denormal(a.flush_denormal)
    timer = EpochTimer(device.type == "cuda", gate, a.turn)
    t_setup, setup = time.perf_counter(), {}

    def train_start() -> None:
        setup["s"] = time.perf_counter() - t_setup
        gate.send(ready=True)

    def epoch_end(epoch: int) -> None:
        timer.epoch_end()
        if epoch + 1 == opt.epochs:
            raise _Stop

    cb = Callbacks()
    cb.register_action("on_train_start", callback=train_start)
    cb.register_action("on_train_epoch_start", callback=timer.epoch_start)
    cb.register_action("on_train_batch_start", callback=timer.batch_start)
    cb.register_action("on_train_batch_end", callback=lambda model, ni, imgs, *rest: timer.batch_end(len(imgs)))
    cb.register_action("on_train_epoch_end", callback=epoch_end)
    try:
        ref.train(opt.hyp, opt, device, cb)
    except _Stop:
        pass
    return {"setup_s": setup.get("s", 0.0), "threads": torch.get_num_threads(),
            "precision": "fp16" if device.type == "cuda" else "fp32"}


# ---------------------------------------------------------------------------------------------------- driver
def reference_data(data: dict, folder: Path) -> Path:
    """A data YAML for the reference over the same images, linked file by file into ``folder`` so that its label
    cache (and ours) each stay in their own ``labels`` folder. Splits must be folders of images (YOLO layout)."""
    import yaml

    names = data["names"]
    out = {"path": str(folder), "nc": data["nc"], "names": list(names.values()) if isinstance(names, dict) else names}
    for split in ("train", "val"):
        src = Path(data[split][0] if isinstance(data[split], list | tuple) else data[split])
        img, lab = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
        if not src.is_dir() or img not in f"{src}{os.sep}":
            raise SystemExit(f"bench_train: {split} split {src} is not an images/ folder (YOLO layout)")
        labels = Path(lab.join(f"{src}{os.sep}".rsplit(img, 1)))
        for kind, d in (("images", src), ("labels", labels)):
            dst = folder / kind / split
            dst.mkdir(parents=True, exist_ok=True)
            for f in d.iterdir() if d.is_dir() else ():
                if f.is_file() and f.suffix != ".cache":
                    (dst / f.name).symlink_to(f.resolve())
        out[split] = f"images/{split}"
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(out, sort_keys=False))
    return path


def summarise(epochs: list[dict], info: dict, warmup: int) -> dict:
    """Totals over the epochs after the first ``warmup`` ones."""
    timed = epochs[warmup:]
    total = {k: sum(e[k] for e in timed) for k in ("s", "cpu_s", "images", "batches", "wait_s", "step_s")}
    parts: dict[str, float] = {}
    for e in timed:
        for k, v in e["parts"].items():
            parts[k] = parts.get(k, 0.0) + v
    if parts:
        parts["backward + rest"] = total["step_s"] - sum(parts.values())
    batch_s = statistics.median(b for e in timed for b in e["batch_s"])
    return {**total, **info, "ips": total["images"] / total["s"], "parts": parts, "batch_s": batch_s,
            "epoch_s": [round(e["s"], 1) for e in epochs]}


class Worker:
    """One side's training subprocess, driven turn by turn (see Gate); its other output goes to ``log``."""

    def __init__(self, side: str, a: argparse.Namespace, ref_data: Path | None, tmp: Path) -> None:
        argv = [sys.executable, __file__, "--worker", side, "--out", str(tmp / f"runs-{side}"), "--data", a.data,
                "--cfg", a.cfg, "--imgsz", str(a.imgsz), "--batch", str(a.batch), "--workers", str(a.workers),
                "--epochs", str(a.epochs), "--cache", a.cache, "--device", a.device, "--threads", str(a.threads),
                "--turn", str(a.turn)]
        argv += (["--ref-data", str(ref_data)] if ref_data else []) + (["--flush-denormal"] if a.flush_denormal else [])
        self.side, self.log_path, self.epochs, self.total, self.info = side, tmp / f"{side}.log", [], a.epochs, None
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)

    def receive(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("BENCH "):
                return json.loads(line[6:])
            self.log.write(line)
        self.log.flush()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"bench_train: {self.side} training stopped (exit {self.proc.wait()}); end of "
                         f"{self.log_path}:\n{tail}")

    def turn(self) -> dict | None:
        """Let it train one turn; returns the epoch's record when the turn ended an epoch, else None."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        msg = self.receive()
        if "epoch" not in msg:
            return None
        self.epochs.append(msg["epoch"])
        if len(self.epochs) == self.total:
            self.info = self.receive()["done"]
        return self.epochs[-1]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()


def report(side: str, m: dict) -> None:
    ms = 1e3 / max(m["batches"], 1)  # seconds in total -> ms per batch
    print(f"  {side:4s} {m['ips']:7.1f} img/s: {m['images']} images in {m['s']:.1f} s; per batch: loader wait "
          f"{m['wait_s'] * ms:.0f} ms ({m['wait_s'] / m['s']:.0%}), step {m['step_s'] * ms:.0f} ms "
          f"({m['step_s'] / m['s']:.0%})" + "".join(f", {k} {v * ms:.0f} ms" for k, v in m["parts"].items()))
    print(f"       median batch {m['batch_s'] * 1e3:.0f} ms; main process CPU {m['cpu_s'] / m['s']:.0%} of wall time "
          f"(its threads; loader workers apart); epochs {m['epoch_s']} s; setup {m['setup_s']:.0f} s; "
          f"{m['precision']}, {m['threads']} threads")


def main(argv: list[str] | None = None) -> int:
    a = get_args_parser().parse_args(argv)
    if a.worker:  # one side's training, in this subprocess, driven by the parent
        gate = Gate()
        info = (run_ours if a.worker == "ours" else run_ref)(a, Path(a.out), gate)
        gate.send(done=info)
        return 0
    if a.warmup >= a.epochs:
        raise SystemExit(f"--epochs {a.epochs} must exceed --warmup {a.warmup}: nothing would be timed")
    sys.path.insert(0, str(ROOT))
    from data.prepare import check_dataset

    data = check_dataset(a.data)  # generates the synthetic data on first use
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    ref_data = reference_data(data, tmp / "ref-data") if a.only != "ours" else None
    print(f"bench_train: {a.cfg} {a.imgsz} px, batch {a.batch}, {a.workers} workers, --cache {a.cache}, "
          f"device {a.device}, {a.epochs} epochs ({a.warmup} warm-up left out), {a.data}"
          f"{', flush denormals' if a.flush_denormal else ''}; folder {tmp}")
    sides = ["ours", "ref"] if a.only == "both" else [a.only]
    workers = {}
    watchdog = threading.Timer(a.timeout, lambda: [w.proc.kill() for w in workers.values()])
    watchdog.start()
    try:
        workers.update({side: Worker(side, a, ref_data, tmp) for side in sides})
        for w in workers.values():
            w.receive()  # ready: set-up done (run concurrently, not timed)
        n = 0  # turns alternate A B B A A B ...: the machine's drifts hit both sides alike
        while busy := [w for w in workers.values() if w.info is None]:
            w = busy[(0, 1, 1, 0)[n % 4] % len(busy)]
            n += 1
            if e := w.turn():
                print(f"  epoch {len(w.epochs) - 1} {w.side:4s} {e['images'] / e['s']:7.1f} img/s ({e['s']:.1f} s "
                      f"of training)", flush=True)
        res = {side: summarise(w.epochs, w.info, a.warmup) for side, w in workers.items()}
        print(f"epochs {a.warmup}-{a.epochs - 1}:")
        for side in sides:
            report(side, res[side])
        if len(res) == 2:
            pairs = [o["images"] / o["s"] / (r["images"] / r["s"])
                     for o, r in zip(workers["ours"].epochs[a.warmup:], workers["ref"].epochs[a.warmup:])]
            print(f"ours / ref images/s: {res['ours']['ips'] / res['ref']['ips']:.3f} (target >= 1.0; per epoch "
                  f"{[round(x, 3) for x in pairs]}); from the median batch times (robust to bursts of load from "
                  f"other processes): {res['ref']['batch_s'] / res['ours']['batch_s']:.3f}")
    finally:
        watchdog.cancel()
        for w in workers.values():
            w.close()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
