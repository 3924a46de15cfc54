"""Data YAMLs (YOLOv5 format): parsing and checking, ``load_data_yaml``. Making the dataset exist (download,
generation, conversion) is ``data/prepare.py``'s ``check_dataset``, which calls this first.

A data YAML holds ``path`` (dataset root), ``train``, ``val``, optional ``test`` (each a folder, a ``.txt`` list of
image paths, a glob, or a list of those, relative to ``path``), ``names`` (list or ``{id: name}``) and/or ``nc``,
an optional ``download`` (see ``data/prepare.py``) and an optional ``protocol`` (the benchmark's evaluation
protocol val.py uses by default: a name of ``utils.config.protocols.PROTOCOLS``).

A relative ``path`` is looked up beside the YAML, then in the current folder, then in the repository root (where
YOLOv5 resolves it); when it exists nowhere it is created in the repository root for YAMLs inside the repository
and beside the YAML otherwise. The repository's ``datasets/`` folder is git-ignored.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import yaml

from utils.config.protocols import PROTOCOLS
from utils.errors import DatasetError

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")


def _load_yaml(data: str | Path | dict) -> tuple[dict, Path | None]:
    if isinstance(data, dict):
        return dict(data), None
    f = Path(data)
    if not f.is_file() and (ROOT / "data" / f.name).is_file():
        f = ROOT / "data" / f.name
    if not f.is_file():
        raise DatasetError(f"data YAML not found: {data}")
    try:
        d = yaml.safe_load(f.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{f}: not a UTF-8 text file ({e})") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as e:  # e.g. a date 2001-13-45
        raise DatasetError(f"{f}: not valid YAML ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{f}: expected a mapping with train/val/names keys, got {type(d).__name__}")
    return d, f.resolve()
MAX_CLASSES = 100_000  # the largest detection vocabularies in use have a few thousand classes


def _names(d: dict, src: str) -> dict[int, str]:
    names, nc = d.get("names"), d.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise DatasetError(f"{src}: 'nc' must be a positive integer, got {nc!r}")
    if nc is not None and nc > MAX_CLASSES:  # a typo like 1000000 would otherwise build millions of names
        raise DatasetError(f"{src}: 'nc' = {nc} is more than {MAX_CLASSES} classes; is it a typo?")
    if names is None:
        if nc is None:
            raise DatasetError(f"{src}: needs 'names' (list or {{id: name}}) or 'nc'")
        return {i: f"class{i}" for i in range(nc)}
    if isinstance(names, list | tuple):
        names = dict(enumerate(names))
    if not isinstance(names, dict):
        raise DatasetError(f"{src}: 'names' must be a list or a mapping {{id: name}}, got {type(names).__name__}")
    try:
        out = {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        raise DatasetError(f"{src}: 'names' keys must be integer class ids, e.g. '2: car'") from None
    if not out:
        raise DatasetError(f"{src}: 'names' is empty: list at least one class name")
    if sorted(out) != list(range(len(out))):
        raise DatasetError(f"{src}: 'names' ids must be 0..{len(out) - 1} without gaps, got {sorted(out)}")
    if nc is not None and nc != len(out):
        raise DatasetError(f"{src}: nc={nc} does not match the {len(out)} entries of 'names'")
    return dict(sorted(out.items()))


def _dataset_root(d: dict, yaml_file: Path | None) -> Path:
    p = Path(str(d.get("path") or ""))
    if p.is_absolute():
        return p
    bases = ([yaml_file.parent] if yaml_file else []) + [Path.cwd(), ROOT]
    for base in bases:
        if (base / p).exists() and str(p) not in ("", "."):
            return (base / p).resolve()
    inside_repo = yaml_file is None or ROOT in yaml_file.parents
    return ((ROOT if inside_repo else yaml_file.parent) / p).resolve()


def _resolve_source(root: Path, x: str) -> str:
    p = Path(str(x))
    if not p.is_absolute():
        q = root / p
        if not q.exists() and str(x).startswith("../"):  # YOLOv5 habit: '../' meant relative to the repository
            q = root / str(x)[3:]
        p = q
    return str(p.resolve()) if "*" not in str(p) else str(p)


def source_exists(src: str | list[str]) -> bool:
    """True when every image source (folder, .txt list, file or glob with matches) exists."""
    items = src if isinstance(src, list) else [src]
    return all(glob.glob(s, recursive=True) if "*" in s else Path(s).exists() for s in items)


def load_data_yaml(data: str | Path | dict) -> dict[str, Any]:
    """Parse and check a data YAML (nothing is downloaded or created).

    Args:
        data: YAML path (a bare name is also looked up in the repository's ``data/``) or an already loaded dict.
    Returns:
        dict with ``path`` (Path, dataset root), ``train``/``val``/``test`` (absolute path strings or lists of them,
        None when absent), ``names`` {id: name}, ``nc`` int, ``yaml_file`` (Path or None) and other keys unchanged.
    Raises:
        DatasetError naming the YAML and the key.
    """
    d, yaml_file = _load_yaml(data)
    src = str(yaml_file) if yaml_file else "<data dict>"
    for k in ("train", "val"):
        if not d.get(k):
            raise DatasetError(f"{src}: '{k}' is missing (a folder, .txt list or glob of images)")
    d["names"] = _names(d, src)
    d["nc"] = len(d["names"])
    if d.get("protocol") is not None and d["protocol"] not in PROTOCOLS:
        raise DatasetError(f"{src}: 'protocol' must be one of {', '.join(PROTOCOLS)} (val.py's evaluation "
                           f"protocols), got {d['protocol']!r}")
    root = _dataset_root(d, yaml_file)
    d["path"], d["yaml_file"] = root, yaml_file
    for k in SPLITS:
        v = d.get(k)
        if not v:
            d[k] = None
        elif isinstance(v, list | tuple):
            d[k] = [_resolve_source(root, x) for x in v]
        elif isinstance(v, str):
            d[k] = _resolve_source(root, v)
        else:
            raise DatasetError(f"{src}: '{k}' must be a path string or a list of them, got {v!r}")
    return d


def data_source(d: dict[str, Any]) -> str:
    """How errors name a data YAML parsed by :func:`load_data_yaml`: its file, or ``<data dict>``."""
    return str(d["yaml_file"]) if d.get("yaml_file") else "<data dict>"


__all__ = ["ROOT", "SPLITS", "data_source", "load_data_yaml", "source_exists"]
