"""Making a dataset exist: ``check_dataset`` parses a data YAML (``utils/config/data_yaml.py``) and, when its
``download`` entry asks for it, fetches, generates or converts the dataset. Only these kinds of ``download`` are
supported, never code execution:
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
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from data.convert import CONVERTERS, convert, is_converted, read_marker
from utils.archives import ArchiveError, extract
from utils.config.data_yaml import data_source, load_data_yaml, source_exists
from utils.downloads import DownloadError, download_file
from utils.errors import DatasetError

GENERATORS = {"synthetic": "data.synthetic", "synthetic-aerial": "data.synthetic_aerial"}  # download: -> module


def download_zip(url: str, dest: Path, timeout: float = 60) -> None:
    """Download a zip from ``url`` and unzip it into the folder ``dest`` (a temp file first; the checks and limits
    of ``utils/archives.py``: no absolute or '..' paths, size, compression ratio). DatasetError naming the URL when
    the archive is refused."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".zip", dir=dest, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                shutil.copyfileobj(r, tmp)
            tmp.close()
            extract(Path(tmp.name), dest)
        except ArchiveError as e:
            raise DatasetError(f"{url}: {str(e).replace(tmp.name, 'the downloaded zip')}") from None
        finally:
            Path(tmp.name).unlink(missing_ok=True)
CONVERT_KEYS = ("urls", "converter", "options", "source", "manual")


def _download_convert(spec: dict, d: dict, root: Path, src: str, missing: list[str]) -> None:
    """The mapping form of ``download`` (module docstring): fetch the archives if needed, then convert (idempotent)."""
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
    d = load_data_yaml(data)
    src, root = data_source(d), d["path"]
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
__all__ = ["check_dataset", "download_zip"]
