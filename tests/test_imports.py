"""Import hygiene of the project's modules (models/, utils/, data/, experiments/ and the four entry scripts).

Cycle test: the graph has an edge A -> B when importing A executes an import of B, i.e. an import statement in A's
module body (also inside a top-level ``if``/``try``/``with`` block or a class body), plus B's parent packages,
which Python imports first. Imports inside functions are NOT edges there: they run when the function is called,
after every module has finished importing, so they cannot meet a half-initialised module. A second test counts
function-level imports too and allows only the lazy imports listed in ``LAZY_BACK_EDGES`` to close a cycle, so a
new one (like the former metrics <-> metric_plots pair) is a decision, not an accident. Imports under
``if TYPE_CHECKING:`` never run and are never edges.

Side-effect test: ``import train, val, detect, export`` in a fresh interpreter leaves matplotlib's backend and the
root logger's handlers and level as they were (no ``matplotlib.use``, no ``logging.basicConfig`` on import).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "utils", "data", "experiments")
ENTRY_SCRIPTS = ("train.py", "val.py", "detect.py", "export.py")
# function-level imports allowed to point back up the graph: (importer, imported) -> why the import is lazy
LAZY_BACK_EDGES = {("utils.dataset_yaml", "data.convert"): "data.convert imports utils.dataset_yaml at the top"}


def project_files(root: Path) -> list[Path]:
    """Every .py under the project's packages, and the entry scripts."""
    files = [p for d in PACKAGES for p in sorted((root / d).rglob("*.py"))]
    return files + [root / f for f in ENTRY_SCRIPTS if (root / f).is_file()]


def module_name(path: Path, root: Path) -> str:
    """``utils/plots.py`` -> ``utils.plots``; ``utils/__init__.py`` -> ``utils``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_time_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when a module with this body is imported (see the module docstring)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from import_time_imports(node.body)
            yield from import_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from import_time_imports(block)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from import_time_imports(node.body)


def all_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, also inside functions, except under ``if TYPE_CHECKING:``."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
               for stmt in node.body for n in ast.walk(stmt)}
    return (n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in skipped)


def _with_parents(name: str, known: set[str]) -> set[str]:
    """``name`` and its parent packages (imported first by Python), those that are project modules."""
    parts = name.split(".")
    return {m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in known}


def import_graph(root: Path, files: list[Path], import_time_only: bool = True) -> dict[str, set[str]]:
    """{module: project modules it imports} over ``files`` (module names from ``root``); only the imports that run
    when the module is imported, or with ``import_time_only=False`` also those inside functions."""
    names = {f: module_name(f, root) for f in files}
    known = set(names.values())
    graph: dict[str, set[str]] = {}
    for f, mod in names.items():
        package = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        tree = ast.parse(f.read_text(), str(f))
        for node in import_time_imports(tree.body) if import_time_only else all_imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    deps |= _with_parents(alias.name, known)
                continue
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            deps |= _with_parents(base, known)
            for alias in node.names:  # ``from pkg import submodule``
                deps |= _with_parents(f"{base}.{alias.name}", known)
        graph[mod] = deps - {mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the directed graph, or None when it is acyclic (iterative depth-first)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_project_modules_import_without_cycles():
    graph = import_graph(ROOT, project_files(ROOT))
    assert len(graph) > 40 and {"train", "val", "detect", "export", "utils.plots"} <= set(graph)
    # the walk sees real edges, so an empty graph cannot pass
    assert {"utils.metrics", "utils.plots"} <= graph["val"] and "utils.metrics" in graph["utils.plots"]
    assert "utils.plots" not in graph["utils.metrics"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_function_level_imports_close_no_cycle_but_the_documented_ones():
    graph = import_graph(ROOT, project_files(ROOT), import_time_only=False)
    for a, b in LAZY_BACK_EDGES:
        assert b in graph[a], f"stale entry in LAZY_BACK_EDGES: {a} no longer imports {b}"
        graph[a].discard(b)
    assert "utils.inference" in graph["val"] and "utils.checkpoints" in graph["utils.inference"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle through a function-level import: " + " -> ".join(cycle)


def test_import_graph_and_cycle_finder_on_constructed_modules(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom pkg import b\n")
    (pkg / "b.py").write_text("try:\n    import pkg.a\nexcept ImportError:\n    pass\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg import a\n\n\n"
                              "def f():\n    from pkg import b\n    return b\n")
    (pkg / "d.py").write_text("from .c import f\nfrom . import a\n")
    graph = import_graph(tmp_path, sorted(pkg.glob("*.py")))
    assert graph == {"pkg": set(), "pkg.a": {"pkg", "pkg.b"}, "pkg.b": {"pkg", "pkg.a"}, "pkg.c": set(),
                     "pkg.d": {"pkg", "pkg.a", "pkg.c"}}
    assert find_cycle(graph) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    full = import_graph(tmp_path, sorted(pkg.glob("*.py")), import_time_only=False)
    assert full["pkg.c"] == {"pkg", "pkg.b"}  # the function-level import, not the TYPE_CHECKING one
    graph["pkg.b"] = {"pkg"}  # break the pair: acyclic
    assert find_cycle(graph) is None
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == ["x", "y", "z", "x"]


_PROBE = """
import json, logging, sys
import matplotlib

root = logging.getLogger()


def state():
    return {"backend": matplotlib.get_backend(), "handlers": [repr(h) for h in root.handlers],
            "level": root.level, "disabled": logging.root.manager.disable}


before = state()
exec(sys.argv[1])
print(json.dumps({"before": before, "after": state()}))
"""


def probe(code: str) -> dict:
    """Run ``code`` in a fresh interpreter at the repository root, with a non-default matplotlib backend (svg,
    so that a switch to Agg shows); -> matplotlib/logging state before and after it."""
    env = {**os.environ, "MPLBACKEND": "svg", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _PROBE, code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_importing_entry_points_changes_neither_matplotlib_backend_nor_logging():
    reference = probe("")  # matplotlib alone
    assert reference["before"] == reference["after"] and reference["after"]["backend"] == "svg"
    got = probe("import train, val, detect, export")
    assert got["after"]["backend"] == reference["after"]["backend"]
    assert got["after"] == got["before"]
    # the probe sees the side effects it guards against
    assert probe("import matplotlib; matplotlib.use('Agg')")["after"]["backend"].lower() == "agg"
    changed = probe("import logging; logging.basicConfig(level=logging.INFO)")
    assert changed["after"]["handlers"] != changed["before"]["handlers"] and changed["after"]["level"] == 20
