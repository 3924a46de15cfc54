"""Convert public tiny-object benchmarks from their original format to YOLO layout, once.

CLI: ``python -m data.convert {visdrone,aitod,tinyperson,xview} SRC DST [--set KEY=VALUE ...] [--force]``
(values are YAML: ``--set merge_persons=false``, ``--set val_fraction=0.2``). Data YAMLs run the same code through
``download: {urls: [...], converter: NAME, options: {...}}`` (``utils/dataset_yaml.py``).

SRC is a folder holding the original files; archives (.zip, .tar, .tgz) lying directly in it are extracted there
first, once (within the limits of ``utils/archives.py``). DST receives ``images/{split}``, ``labels/{split}``
(labels, ignore areas, flags; see ``data/convert_common.py``) and the marker ``DST/convert.json``, moved in LAST: it
records the converter, its version, the source folder, the options (defaults filled in) and the counts. A later call
with the same parameters does nothing; any difference, or no marker (e.g. an interrupted conversion), converts again
from scratch (the split folders under DST/images and DST/labels are replaced, and those the old marker lists).

Validate, then write: every input (options, annotation files, image headers) is read and checked before anything
is written; the output is built in a temporary folder beside DST and swapped in at the end, under DST's lock
(``data/staging.py``), so a failure leaves the previous output as it was and a second conversion into the same DST
stops with one line. Split names must be plain folder names and source paths relative to SRC without '..'
(``utils/safe_paths.py``): options come from data YAMLs, which are untrusted. Per-dataset rules:
``data/convert_visdrone.py``, ``data/convert_coco.py`` (AI-TOD, TinyPerson), ``data/convert_xview.py``.

Errors in the input (missing annotation file, an annotation naming a missing image, a corrupt archive, malformed
rows or fields, unknown options) raise ``DatasetError`` with one line naming the file; the CLI prints it and exits
with 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from data import convert_coco, convert_visdrone, convert_xview
from data.convert_common import DROP_REASONS, Converter, check_plan, extract_archives, write_plan
from data.staging import locked, staging, swap_in
from utils.cli import one_line
from utils.errors import DatasetError, UserError
from utils.safe_paths import UnsafePathError, plain_name, relative_path

MARKER = "convert.json"
CONVERTERS: dict[str, Converter] = {c.name: c for c in (convert_visdrone.CONVERTER, convert_coco.AITOD,
                                                         convert_coco.TINYPERSON, convert_xview.CONVERTER)}


def get_converter(name: str) -> Converter:
    """The registered converter called ``name``; DatasetError listing the known names otherwise."""
    if name not in CONVERTERS:
        raise DatasetError(f"unknown converter {name!r}; known: {', '.join(CONVERTERS)}")
    return CONVERTERS[name]


def _type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int | float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str | list):  # a path or a list of candidate paths
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return isinstance(value, type(default))


def _check_paths(value: Any, where: str) -> None:
    """Every string in ``value`` (nested mappings and lists) is a path relative to SRC that stays inside it."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_paths(v, f"{where}.{k}")
    elif isinstance(value, list):
        for v in value:
            _check_paths(v, where)
    else:
        relative_path(value, where)


def resolve_options(conv: Converter, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` over ``conv``'s defaults; an unknown key, a value of the wrong type, a split name that is not a
    plain folder name or a source path that is absolute or leaves SRC with '..' raises DatasetError."""
    opts = copy.deepcopy(conv.defaults)
    if not isinstance(options, dict | None):
        raise DatasetError(f"{conv.name}: options must be a mapping, got {options!r}")
    for k, v in (options or {}).items():
        if k not in opts:
            raise DatasetError(f"{conv.name}: unknown option {k!r}; options are {', '.join(map(str, opts))}")
        if not _type_ok(v, opts[k]):
            raise DatasetError(f"{conv.name}: option {k!r} must be like {opts[k]!r}, got {v!r}")
        opts[k] = v
    try:  # split names become folders under DST (removed when converting again): plain names only
        for split in conv.splits(opts):
            plain_name(split, f"{conv.name}: split name")
        for k in conv.path_options:
            _check_paths(opts[k], f"{conv.name}: option {k}")
    except UnsafePathError as e:
        raise DatasetError(str(e)) from None
    return opts


def _params(conv: Converter, src: Path, opts: dict[str, Any]) -> dict[str, Any]:
    # A JSON round trip so that the comparison with a marker read back from disk is exact (tuples -> lists, ...).
    return json.loads(json.dumps({"converter": conv.name, "version": conv.version, "source": str(src),
                                  "options": opts}))


def read_marker(dst: str | Path) -> dict[str, Any] | None:
    """The marker of a finished conversion in ``dst``, or None (absent or unreadable).

    Raises DatasetError naming the marker when it is JSON but not one this module writes: its split names (which
    decide what a new conversion removes) must be plain folder names and its class names a list of strings.
    """
    f = Path(dst) / MARKER
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict):
        return None
    counts, names = m.get("counts"), m.get("names")
    per_split = counts.get("per_split") if isinstance(counts, dict) else None
    if not isinstance(per_split, dict) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{f}: not a marker written by data.convert (no counts.per_split mapping or names list); "
                           "delete it to convert again")
    try:
        for split in per_split:
            plain_name(split, "split name")
    except UnsafePathError as e:
        raise DatasetError(f"{f}: {e}; this marker was not written by data.convert, delete it") from None
    return m


def is_converted(name: str, src: str | Path, dst: str | Path, options: dict[str, Any] | None = None) -> bool:
    """True when ``dst`` holds a finished conversion of ``src`` by ``name`` with these options and version."""
    conv = get_converter(name)
    m = read_marker(dst)
    params = _params(conv, Path(src).resolve(), resolve_options(conv, options))
    return m is not None and {k: m.get(k) for k in params} == params


def _check_text(src: Path, dst: Path) -> None:
    for what, p in (("source", src), ("output", dst)):
        try:
            str(p).encode("utf-8")
        except UnicodeEncodeError:  # the marker records the source path as UTF-8 text
            shown = str(p).encode("utf-8", "backslashreplace").decode()
            raise DatasetError(f"{what} folder {shown}: its path has bytes that are not UTF-8; rename it") from None


def _check_folders(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise DatasetError(f"source folder not found: {src}")
    for sub in (dst / "images", dst / "labels"):
        if src == dst or src == sub or sub in src.parents:
            raise DatasetError(f"source {src} lies inside the output {sub}, which a conversion replaces; "
                               "choose another DST")
        if sub.is_symlink() or (sub.exists() and not sub.is_dir()):  # split folders are replaced inside it
            raise DatasetError(f"{sub}: is a link or not a folder; a conversion replaces folders inside it, so it "
                               "must be a plain folder of DST")


def convert(name: str, src: str | Path, dst: str | Path, options: dict[str, Any] | None = None,
            force: bool = False) -> dict[str, Any]:
    """Convert the dataset in ``src`` with converter ``name`` into ``dst`` unless already done (see module doc).

    Every input is read and checked first; the output is written into a temporary folder beside ``dst`` and
    swapped in at the end under ``dst``'s lock (``data/staging.py``), so on any failure the previous output of
    ``dst`` is left as it was. Returns the marker: ``converter``, ``version``, ``source``, ``options``, ``names``,
    ``counts``, ``seconds``. Raises DatasetError (one line naming the file) for bad input, RunLockError when
    another process writes ``dst``.
    """
    conv = get_converter(name)
    opts = resolve_options(conv, options)
    src, dst = Path(src).resolve(), Path(dst).resolve()
    _check_text(src, dst)
    params = _params(conv, src, opts)
    old = read_marker(dst)
    if not force and old is not None and {k: old.get(k) for k in params} == params:
        print(f"{name}: {dst} is already converted from {src} (marker {MARKER}); nothing to do")
        return old
    _check_folders(src, dst)
    t0 = time.time()
    extract_archives(src)
    plan = conv.read(src, opts)  # reads and checks every input; nothing is written to DST before this returned
    check_plan(plan)
    with locked(dst, "conversion"), staging(dst) as tmp:
        old = read_marker(dst)  # again, under the lock: the splits it lists are replaced too
        counts = write_plan(plan, tmp, conv.flag_columns, desc=name)
        marker = {**params, "names": conv.names(opts), "counts": counts.as_dict(),
                  "seconds": round(time.time() - t0, 1)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")  # ASCII: \u escapes
        splits = dict.fromkeys(conv.splits(opts) + (list(old["counts"]["per_split"]) if old else []))
        parts = [f"{kind}/{s}" for s in splits for kind in ("images", "labels")] + [f"labels/{s}.cache" for s in splits]
        swap_in(tmp, dst, parts, MARKER)
    print(summary(marker, dst))
    return marker


def summary(marker: dict[str, Any], dst: Path) -> str:
    """Printed report of a conversion: images per split, labels, ignore areas, drops by reason."""
    c = marker["counts"]
    splits = ", ".join(f"{k} {v}" for k, v in c["per_split"].items())
    lines = [f"{marker['converter']}: {marker['source']} -> {dst} in {marker.get('seconds', 0)} s",
             f"  images: {c['images']} ({splits}); {c['empty_images']} without labels, "
             f"{c['no_annotation_entry']} without an annotation entry",
             f"  labels: {c['labels']} in {len(marker['names'])} classes; ignore areas: {c['ignore_areas']} "
             f"in {c['images_with_ignore']} images"]
    dropped = [f"{n} {DROP_REASONS.get(k, k)}" for k, n in c["dropped"].items() if n]
    lines.append("  dropped: " + ("; ".join(dropped) if dropped else "nothing"))
    if c["unknown_class_ids"]:
        ids = ", ".join(f"{k}: {v}" for k, v in c["unknown_class_ids"].items())
        lines.append(f"  unknown class ids (id: boxes): {ids}")
    if c["missing_images"]:
        lines.append(f"  images named by the annotations but absent: {', '.join(c['missing_images'][:10])}")
    return "\n".join(lines)


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DatasetError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as e:  # e.g. 2001-13-45
            raise DatasetError(f"--set {key}: value is not valid YAML ({one_line(e)})") from None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.convert", description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=list(CONVERTERS))
    ap.add_argument("src", type=Path, help="folder with the original dataset files (archives in it are extracted)")
    ap.add_argument("dst", type=Path, help="output dataset root (images/, labels/, convert.json)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="converter option (YAML value)")
    ap.add_argument("--force", action="store_true", help="convert again even when the marker says it is done")
    a = ap.parse_args(argv)
    try:
        convert(a.dataset, a.src, a.dst, _parse_set(a.set), force=a.force)
    except (UserError, OSError) as e:
        print(f"error: {one_line(e)}".encode("utf-8", "backslashreplace").decode(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
