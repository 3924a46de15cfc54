"""Small builders shared by several test files (plain functions: pytest fixtures stay in each file)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from data.synthetic import NAMES, generate


def tiny_dataset(root: Path, n_train: int = 16, n_val: int = 8, imgsz: int = 64, seed: int = 3) -> Path:
    """Generate a small synthetic dataset under ``root/ds`` and return the path of its data YAML."""
    generate(root / "ds", n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed)
    cfg = root / "data.yaml"
    cfg.write_text(yaml.safe_dump({"path": str(root / "ds"), "train": "images/train", "val": "images/val",
                                   "names": dict(enumerate(NAMES))}))
    return cfg


def randomise_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights and BatchNorm statistics (anchors kept), so that a wrong or missing tensor changes the
    outputs; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if t.is_floating_point() and not k.endswith("anchors"):
                t.add_(0.05 * torch.randn(t.shape, generator=g))
                if k.endswith("running_var"):
                    t.abs_().add_(0.5)
    return model.eval()
