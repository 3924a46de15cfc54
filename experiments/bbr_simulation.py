"""Bounding-box regression simulation of the Focal-EIoU paper (Zhang et al. 2022, Algorithm 1).

Every anchor is regressed to every target by plain gradient descent on its box parameters, all anchor-target pairs
at once (one ``(P, 4)`` tensor). Setup 1: 1000 random centres in a 20 x 20 region, 7 scales x 7 aspect ratios of
anchors at each, 7 targets of area 100 at (10, 10) with the same aspect ratios. Setup 2: 100 centres in a 2.5-wide
square around (10, 10), 3 x 3 anchors, 3 targets. "Scale" is the box area (a 1:1 box of scale 100 is 10 x 10).

Choices (the same for every loss, so that the losses compare on equal terms):
- Parameters are (cx, cy, w, h); the loss sees them through ``utils.ops.boxes.xywh2xyxy``.
- The update is ``B <- B - lr * grad`` (the paper prints ``+``: a sign typo), lr 0.1 until 0.8 T, 0.01 until
  0.9 T, 0.001 after. No IoU-dependent scaling such as DIoU's ``(2 - IoU)``, which would change the losses' relative
  speed. Coordinates are expressed in units of the target side (sqrt(100) = 10 px): IoU-type losses are scale-free,
  so their gradient w.r.t. pixel coordinates is ~1/10 of the unit-box one, and lr 0.1 on 10 px boxes would barely
  move them in 200 steps. This equals scaling the pixel gradient by the target area (100). NWD's constant becomes
  12.8 px / 10 = 1.28 target sides. Errors are reported back in pixels.
- Focal-EIoU's per-batch normalisation ``sum(W L) / sum(W)`` is applied over all pairs (times the number of pairs,
  so that a weight of 1 everywhere gives EIoU's step); the other losses sum over pairs, so each pair follows its
  own gradient.
- Error: the l1 distance between the xyxy corners of the regressed anchor and its target, in pixels, summed over
  all pairs (the paper's E(t)); IoU: the plain IoU of every pair after the last step.

CLI: ``python experiments/bbr_simulation.py --setup 1 2 --iters 200 --losses iou giou ciou eiou focal_eiou nwd
--out runs/bbr`` prints a Markdown table per setup and writes ``setup{n}.json``, ``setup{n}_error.png`` and
``setup{n}_iou.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.ops.box_geometry import box_geometry  # noqa: E402
from utils.ops.box_losses import get_box_loss  # noqa: E402
from utils.ops.boxes import xywh2xyxy  # noqa: E402
from utils.plots import new_figure, save_figure  # noqa: E402


@dataclass(frozen=True)
class SimSetup:
    """One of the paper's two simulation setups (lengths in pixels, areas in square pixels)."""

    n_points: int  # anchor centres drawn uniformly in the square below
    square: float  # side of the square of anchor centres, centred on ``centre``
    aspect_ratios: tuple[float, ...]  # w / h of anchors and targets
    anchor_areas: tuple[float, ...]  # the paper's anchor "scales"
    target_area: float = 100.0  # every target has this area and sits at ``centre``
    centre: float = 10.0  # targets' centre (x = y)


SETUPS: dict[int, SimSetup] = {
    1: SimSetup(1000, 20.0, (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0), (50, 67, 75, 100, 133, 150, 200)),
    2: SimSetup(100, 2.5, (1 / 3, 1.0, 3.0), (50, 100, 150)),
}
NWD_C_PX = 12.8  # NWD constant of the AI-TOD paper, pixels


def _sizes(areas: tuple[float, ...], ratios: tuple[float, ...]) -> torch.Tensor:
    """(len(areas) * len(ratios), 2) box (w, h) in pixels with w * h = area and w / h = ratio."""
    a = torch.tensor(areas, dtype=torch.float64)[:, None]
    r = torch.tensor(ratios, dtype=torch.float64)[None, :]
    return torch.stack(((a * r).sqrt(), (a / r).sqrt()), -1).reshape(-1, 2)


def make_pairs(setup: SimSetup, n_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (anchor, target) pair: two ``(n_points * n_anchors * n_targets, 4)`` float64 xywh tensors, pixels."""
    gen = torch.Generator().manual_seed(seed)
    centres = setup.centre + (torch.rand(n_points, 2, generator=gen, dtype=torch.float64) - 0.5) * setup.square
    anchor_wh = _sizes(setup.anchor_areas, setup.aspect_ratios)  # (A, 2)
    target_wh = _sizes((setup.target_area,), setup.aspect_ratios)  # (T, 2)
    n_a, n_t = len(anchor_wh), len(target_wh)
    anchors = torch.cat((centres[:, None, :].expand(-1, n_a, -1), anchor_wh[None].expand(n_points, -1, -1)), -1)
    targets = torch.cat((torch.full((n_t, 2), setup.centre, dtype=torch.float64), target_wh), -1)
    anchors = anchors[:, :, None, :].expand(-1, -1, n_t, -1).reshape(-1, 4)  # (N * A * T, 4)
    targets = targets[None, None].expand(n_points, n_a, -1, -1).reshape(-1, 4)
    return anchors.contiguous(), targets.contiguous()


def learning_rate(t: int, iters: int) -> float:
    """The paper's schedule for step ``t`` in [0, iters): 0.1 up to 0.8 T, 0.01 up to 0.9 T, 0.001 after."""
    if t < 0.8 * iters:
        return 0.1
    return 0.01 if t < 0.9 * iters else 0.001


def regress(loss_name: str, anchors: torch.Tensor, targets: torch.Tensor, iters: int, unit: float,
            chunk: int = 2**20) -> tuple[list[float], torch.Tensor]:
    """Gradient descent of ``(P, 4)`` xywh pixel anchors towards their targets under one loss.

    The pairs are processed ``chunk`` at a time (bounds the memory); the update uses the
    gradients of all chunks, so the result does not depend on ``chunk``. Computes in float32.
    Returns the summed l1 corner error (pixels) after each step (``iters`` values) and the final IoU ``(P,)``.
    """
    fn = get_box_loss(loss_name, c=NWD_C_PX / unit)
    box = (anchors / unit).float()  # (P, 4) xywh in target-side units
    tgt_xyxy = xywh2xyxy(targets / unit).float()
    grad = torch.empty_like(box)
    errors = []
    for t in range(iters):
        weight_sum = 0.0
        for b, g, tg in zip(box.split(chunk), grad.split(chunk), tgt_xyxy.split(chunk)):
            b = b.detach().requires_grad_(True)
            out = fn(xywh2xyxy(b), tg)
            g.copy_(torch.autograd.grad(out.loss.sum(), b)[0])
            weight_sum += 0.0 if out.weight is None else float(out.weight.sum())
        if weight_sum > 0:  # Focal-EIoU: sum(W L) / sum(W) over all pairs, times P (W is detached: a constant)
            grad *= len(box) / weight_sum
        box -= learning_rate(t, iters) * grad
        errors.append(float((xywh2xyxy(box) - tgt_xyxy).abs().sum(dtype=torch.float64)) * unit)
    iou = box_geometry(xywh2xyxy(box), tgt_xyxy).iou
    return errors, iou


def simulate(setup: int, losses: list[str], iters: int = 200, seed: int = 0, n_points: int | None = None) -> dict:
    """Run setup 1 or 2 for every loss in ``losses``.

    Returns ``{"setup", "iters", "seed", "n_points", "n_pairs", "results": {loss: {"error_curve": [iters floats,
    pixels], "final_error", "initial_error", "iou_mean", "iou_median", "iou_gt_0.5", "seconds", "iou": Tensor[P]}}}``.
    """
    if setup not in SETUPS:
        raise ValueError(f"unknown simulation setup {setup}; valid: {', '.join(map(str, SETUPS))}")
    cfg = SETUPS[setup]
    n_points = cfg.n_points if n_points is None else n_points
    anchors, targets = make_pairs(cfg, n_points, seed)
    unit = math.sqrt(cfg.target_area)
    initial = float((xywh2xyxy(anchors) - xywh2xyxy(targets)).abs().sum())
    results = {}
    for name in losses:
        t0 = time.perf_counter()
        errors, iou = regress(name, anchors, targets, iters, unit)
        results[name] = {"error_curve": errors, "final_error": errors[-1], "initial_error": initial,
                         "iou_mean": float(iou.mean()), "iou_median": float(iou.median()),
                         "iou_gt_0.5": float((iou > 0.5).double().mean()),
                         "seconds": time.perf_counter() - t0, "iou": iou}
    return {"setup": setup, "iters": iters, "seed": seed, "n_points": n_points, "n_pairs": len(anchors),
            "results": results}


def markdown_table(sim: dict) -> str:
    """The summary of ``simulate``'s output as a Markdown table (errors relative to the initial one, and final)."""
    iters = sim["iters"]
    early, mid = max(1, iters // 10), max(1, iters // 2)
    lines = [f"Setup {sim['setup']} ({sim['n_pairs']} anchor-target pairs, {iters} iterations, seed {sim['seed']})",
             "",
             f"| loss | error / initial @{early} | @{mid} | final | final summed l1 error (px) | mean IoU | "
             "median IoU | IoU > 0.5 |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in sim["results"].items():
        rel = [r["error_curve"][k - 1] / r["initial_error"] for k in (early, mid, iters)]
        lines.append(f"| {name} | {rel[0]:.4f} | {rel[1]:.4f} | {rel[2]:.4f} | {r['final_error']:.4g} | "
                     f"{r['iou_mean']:.4f} | {r['iou_median']:.4f} | {r['iou_gt_0.5']:.3f} |")
    return "\n".join(lines)


def save_outputs(sim: dict, out: Path) -> None:
    """Write ``setup{n}.json`` (numbers and curves), ``setup{n}_error.png`` and ``setup{n}_iou.png`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"setup{sim['setup']}"
    numbers = {k: v for k, v in sim.items() if k != "results"}
    numbers["results"] = {n: {k: v for k, v in r.items() if k != "iou"} for n, r in sim["results"].items()}
    stem.with_suffix(".json").write_text(json.dumps(numbers, indent=1))

    fig, ax = new_figure((6, 4))
    for name, r in sim["results"].items():
        ax.plot(range(1, sim["iters"] + 1), r["error_curve"], label=name)
    ax.set(yscale="log", xlabel="iteration", ylabel="summed l1 error (px)",
           title=f"BBR simulation, setup {sim['setup']}")
    ax.legend()
    save_figure(fig, f"{stem}_error.png")

    fig, ax = new_figure((6, 4))
    names = list(sim["results"])
    ax.boxplot([sim["results"][n]["iou"].numpy() for n in names], flierprops={"markersize": 2, "alpha": 0.3})
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set(ylabel="final IoU", title=f"Final IoU per anchor-target pair, setup {sim['setup']}")
    save_figure(fig, f"{stem}_iou.png")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setup", type=int, nargs="+", default=[1, 2], choices=sorted(SETUPS), help="setups to run")
    p.add_argument("--iters", type=int, default=200, help="gradient steps T")
    p.add_argument("--losses", nargs="+", default=["iou", "giou", "ciou", "eiou", "focal_eiou", "nwd"])
    p.add_argument("--points", type=int, default=None, help="number of anchor centres (default: the setup's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=Path("runs/bbr"))
    return p


def main(args: argparse.Namespace) -> dict[int, dict]:
    torch.set_num_threads(args.threads)
    sims = {}
    for setup in args.setup:
        t0 = time.perf_counter()
        sims[setup] = simulate(setup, args.losses, args.iters, args.seed, args.points)
        save_outputs(sims[setup], args.out)
        print(markdown_table(sims[setup]), f"\n\n({time.perf_counter() - t0:.1f} s; plots in {args.out})\n")
    return sims


if __name__ == "__main__":
    main(get_args_parser().parse_args())
