"""Data YAML parsing (YOLOv5 format) and dataset download: ``check_dataset``.

A data YAML holds ``path`` (dataset root), ``train``, ``val``, optional ``test`` (each a folder, a ``.txt`` list of
image paths, a glob, or a list of those, relative to ``path``), ``names`` (list or ``{id: name}``) and/or ``nc``,
an optional ``download`` and an optional ``protocol`` (the benchmark's evaluation protocol val.py uses by
default: a name of ``utils.protocols.PROTOCOLS``). Only these kinds of ``download`` are supported, never code
execution:
- an ``http(s)://...zip`` URL, fetched with urllib and unzipped into the dataset root's parent folder;
- ``synthetic`` or ``synthetic-aerial``: generate an embedded dataset with ``data/synthetic.py`` or
  ``data/synthetic_aerial.py`` into ``path``, with the generator options of the YAML's ``synthetic:`` mapping;
- a mapping ``{urls: [...], converter: NAME, options: {...}, source: DIR, manual: TEXT}``: a public benchmark in its
  original format. The archives at ``urls`` are fetched into ``path/source`` (default ``source``; each file once,
  through a temporary name), then the converter ``NAME`` registered in ``data/convert.py`` (``CONVERTERS``) converts
  them into ``path`` with ``options``. Idempotent: the conversion's marker is checked on every call, so an
  interrupted conversion is redone. Without ``urls`` (datasets behind a registration) the files are put into
  ``path/source`` by hand and ``manual`` says from where. A dataset already converted whose source folder was
  deleted is used as it is.

A relative ``path`` is looked up beside the YAML, then in the current folder, then in the repository root (where
YOLOv5 resolves it); when it exists nowhere it is created in the repository root for YAMLs inside the repository
and beside the YAML otherwise. The repository's ``datasets/`` folder is git-ignored.
"""

from __future__ import annotations

import glob
import importlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import yaml

from utils.downloads import DownloadError, download_file
from utils.protocols import PROTOCOLS

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
GENERATORS = {"synthetic": "data.synthetic", "synthetic-aerial": "data.synthetic_aerial"}  # download: -> module


class DatasetError(ValueError):
    """A data YAML or dataset is invalid or missing; the message names the file/key and the problem."""


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


def download_zip(url: str, dest: Path, timeout: float = 60) -> None:
    """Download a zip from ``url`` and unzip it into the folder ``dest`` (atomic: a temp file first)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".zip", dir=dest, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                shutil.copyfileobj(r, tmp)
            tmp.close()
            with zipfile.ZipFile(tmp.name) as z:
                for m in z.namelist():  # refuse absolute paths and '..' (zip slip)
                    if Path(m).is_absolute() or ".." in Path(m).parts:
                        raise DatasetError(f"{url}: unsafe path in zip archive: {m}")
                z.extractall(dest)
        finally:
            Path(tmp.name).unlink(missing_ok=True)


CONVERT_KEYS = ("urls", "converter", "options", "source", "manual")


def _download_convert(spec: dict, d: dict, root: Path, src: str, missing: list[str]) -> None:
    """The mapping form of ``download`` (module docstring): fetch the archives if needed, then convert (idempotent)."""
    from data.convert import CONVERTERS, is_converted, read_marker  # lazy: data.convert imports this module

    unknown = sorted(set(spec) - set(CONVERT_KEYS))
    if unknown:
        raise DatasetError(f"{src}: unknown key(s) {unknown} in 'download'; allowed: {', '.join(CONVERT_KEYS)}")
    name, options = spec.get("converter"), spec.get("options") or {}
    if name not in CONVERTERS:
        raise DatasetError(f"{src}: download.converter must be one of {', '.join(CONVERTERS)}, got {name!r}")
    urls = spec.get("urls") or []
    urls = [urls] if isinstance(urls, str) else urls
    if not isinstance(urls, list) or not all(isinstance(u, str) and u.startswith(("http://", "https://"))
                                             for u in urls):
        raise DatasetError(f"{src}: download.urls must be a list of http(s) URLs, got {spec.get('urls')!r}")
    if not isinstance(options, dict):
        raise DatasetError(f"{src}: download.options must be a mapping of converter options, got {options!r}")
    source = root / str(spec.get("source") or "source")
    manual = f" {spec['manual']}" if spec.get("manual") else ""
    if not missing and not source.exists():
        return  # converted before and the original files removed, or a dataset prepared by hand: used as it is
    if is_converted(name, source, root, options):
        names = read_marker(root)["names"]
    else:
        names = _fetch_and_convert(name, urls, source, root, options, src, manual)
    if names != list(d["names"].values()):
        raise DatasetError(f"{src}: 'names' {list(d['names'].values())} do not match the classes of converter "
                           f"{name} with these options: {names}")


def _fetch_and_convert(name: str, urls: list[str], source: Path, root: Path, options: dict, src: str,
                       manual: str) -> list[str]:
    """Fetch the archives at ``urls`` missing from ``source``, convert ``source`` into ``root``; the class names."""
    from data.convert import convert  # lazy: data.convert imports this module

    for url in urls:
        f = source / Path(url.split("?", 1)[0]).name
        if f.exists() or (source / f".{f.name}.extracted").exists():
            continue
        print(f"Downloading {url} to {source} ...")
        try:
            source.mkdir(parents=True, exist_ok=True)
            download_file(url, f)  # retries, size check, never a partial file under the final name
        except (DownloadError, urllib.error.URLError, OSError, TimeoutError) as e:
            raise DatasetError(f"{src}: dataset download failed: could not fetch {url} ({e}).{manual} Put the "
                               f"original files into {source} and run again") from None
    if not source.is_dir() or not any(source.iterdir()):
        raise DatasetError(f"{src}: dataset not found: put the original {name} files into {source}.{manual}")
    return convert(name, source, root, options)["names"]


def _download(d: dict, root: Path, src: str, missing: list[str]) -> None:
    if isinstance(d["download"], dict):
        return _download_convert(d["download"], d, root, src, missing)
    how = str(d["download"]).strip()
    if how in GENERATORS:
        generate = importlib.import_module(GENERATORS[how]).generate
        opts = d.get("synthetic") or {}
        if not isinstance(opts, dict):
            raise DatasetError(f"{src}: 'synthetic' must be a mapping of generator options, got {opts!r}")
        if missing:
            print(f"Dataset not found, generating the {how} dataset in {root} ...")
        try:
            generate(root, **opts)
        except (TypeError, ValueError) as e:  # an unknown option, or a value out of range
            raise DatasetError(f"{src}: bad 'synthetic' generator options {opts}: {e}") from None
    elif how.startswith(("http://", "https://")) and how.endswith(".zip"):
        print(f"Dataset not found (missing {missing}), downloading {how} to {root.parent} ...")
        try:
            download_zip(how, root.parent)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise DatasetError(
                f"{src}: dataset download failed: could not reach {how} ({e}). Download it yourself and unzip it so "
                f"that these paths exist: {missing} (dataset root {root})") from None
    else:
        raise DatasetError(f"{src}: unsupported 'download' value {how[:80]!r}: only an http(s) URL to a .zip, "
                           "'synthetic' or 'synthetic-aerial' are supported (scripts are never executed)")


def check_dataset(data: str | Path | dict, autodownload: bool = True) -> dict[str, Any]:
    """Parse and check a data YAML; download or generate the dataset when its val images are missing.

    Args:
        data: YAML path (a bare name is also looked up in the repository's ``data/``) or an already loaded dict.
        autodownload: run the ``download`` entry when val images are missing.
    Returns:
        dict with ``path`` (Path, dataset root), ``train``/``val``/``test`` (absolute path strings or lists of them,
        None when absent), ``names`` {id: name}, ``nc`` int, ``yaml_file`` (Path or None) and other keys unchanged.
    Raises:
        DatasetError naming the YAML and the key or missing path.
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
    val = d["val"] if isinstance(d["val"], list) else [d["val"]]
    missing = [v for v in val if not source_exists(v)]
    if autodownload and isinstance(d.get("download"), dict):
        _download(d, root, src, missing)  # idempotent: converts only when the conversion marker differs
    elif autodownload and str(d.get("download", "")).strip() in GENERATORS:
        _download(d, root, src, missing)  # idempotent: regenerates only when the generator parameters changed
    elif missing:
        if not d.get("download") or not autodownload:
            raise DatasetError(f"{src}: dataset not found, missing val image source(s) {missing}"
                               + ("" if d.get("download") else " and no 'download' key to fetch them"))
        _download(d, root, src, missing)
    if missing:
        still = [v for v in val if not source_exists(v)]
        if still:
            raise DatasetError(f"{src}: after download, val image source(s) still missing: {still}")
    return d


__all__ = ["DatasetError", "check_dataset", "download_zip", "source_exists", "ROOT"]
