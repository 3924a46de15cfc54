"""Import hygiene of the project's modules (models/, utils/, data/, experiments/, the entry scripts and hubconf.py).

Cycle test: the graph has an edge A -> B for EVERY import statement of A that names B (at the top, inside
functions, under ``if TYPE_CHECKING:``), plus B's parent packages, which Python imports first. No cycle is allowed
and there is no exception list: a lazy import that closes a circle is still a circle in the design.

Layer test: the packages of ``utils/`` import one way (``LAYERS``), and nothing under ``utils/`` imports ``data/``,
``experiments/`` or an entry point.

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
ENTRY_SCRIPTS = ("train.py", "val.py", "detect.py", "export.py", "hubconf.py")
# utils/ packages, bottom to top: each may import the utils root modules named in FOUNDATION, and packages of
# LOWER layers only (the root modules checkpoints and plots sit below utils.train's layer)
MIDDLE = {"utils.checkpoints", "utils.plots"}  # above config/dataset/loss/eval, below train/infer
FOUNDATION = {"utils.errors", "utils.atomic", "utils.cli", "utils.torch_utils", "utils.downloads", "utils.run_dirs",
              "utils.safe_paths", "utils.archives", "utils.compiler"}
LAYERS = (("utils.ops",), ("utils.config",), ("utils.dataset",), ("utils.loss", "utils.eval"),
          ("utils.train", "utils.infer"), ("utils.advise", "utils.track"))


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
    """Every import statement of a module: at the top, inside functions and under ``if TYPE_CHECKING:``."""
    return (n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom))


def _with_parents(name: str, known: set[str]) -> set[str]:
    """``name`` and its parent packages (imported first by Python), those that are project modules."""
    parts = name.split(".")
    return {m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in known}


def import_graph(root: Path, files: list[Path], import_time_only: bool = True) -> dict[str, set[str]]:
    """{module: project modules it imports} over ``files`` (module names from ``root``); only the imports that run
    when the module is imported, or with ``import_time_only=False`` every import statement."""
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


def test_project_modules_import_without_cycles_counting_every_import():
    graph = import_graph(ROOT, project_files(ROOT), import_time_only=False)
    assert len(graph) > 60 and {"train", "val", "detect", "export", "hubconf", "utils.plots"} <= set(graph)
    # the walk sees real edges, so an empty graph cannot pass
    assert {"utils.eval.metrics", "utils.plots"} <= graph["val"] and "utils.eval.metrics" in graph["utils.plots"]
    assert "utils.infer.detector" in graph["val"] and "utils.checkpoints" in graph["utils.infer.detector"]
    assert "utils.ops.box_losses" in graph["utils.config.hyp"]  # a function-level import is an edge
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges that break the layering of ``utils/`` (module docstring): ``'importer -> imported'``."""
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

    def package(m: str) -> str | None:
        return next((p for p in rank if m == p or m.startswith(p + ".")), None)

    bad = []
    for a, deps in graph.items():
        if not a.startswith("utils"):
            continue
        for b in deps:
            pa, pb = package(a), package(b)
            if not b.startswith(("utils", "models")):
                bad.append(f"{a} -> {b}")  # data/, experiments/ or an entry point
            elif a in FOUNDATION and b.startswith(("utils.", "models")) and b not in FOUNDATION:
                bad.append(f"{a} -> {b}")  # the foundation imports only the foundation
            elif pa and pb and pa != pb and rank[pb] >= rank[pa]:
                bad.append(f"{a} -> {b}")  # same layer or up
            elif pa and not pb and b.startswith("utils.") and b not in FOUNDATION and (
                    b not in MIDDLE or rank[pa] < rank["utils.train"]):
                bad.append(f"{a} -> {b}")  # a lower package reaching up to checkpoints/plots
    return sorted(bad)


def test_utils_packages_import_one_way():
    graph = import_graph(ROOT, project_files(ROOT), import_time_only=False)
    assert layer_violations(graph) == []
    assert "utils.infer.backends" in graph["utils.infer.detector"]  # edges inside a package are fine
    # the rule can fail: an eval module importing train, a loss module importing a root module above it
    assert layer_violations({"utils.eval.x": {"utils.train.y"}, "utils.loss.z": {"utils.plots"},
                             "utils.ops.w": {"data.convert"}, "utils.train.v": {"utils.eval.u", "utils.plots"},
                             "utils.atomic": {"utils.config.hyp"}, "utils.train.t": {"utils.advise.a"},
                             "utils.advise.b": {"utils.train.c", "utils.checkpoints"},
                             "utils.infer.q": {"utils.track.r"},
                             "utils.track.t": {"utils.infer.s", "utils.plots"}}) == [
        "utils.atomic -> utils.config.hyp", "utils.eval.x -> utils.train.y", "utils.infer.q -> utils.track.r",
        "utils.loss.z -> utils.plots", "utils.ops.w -> data.convert", "utils.train.t -> utils.advise.a"]


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
    assert full["pkg.c"] == {"pkg", "pkg.a", "pkg.b"}  # the function-level and the TYPE_CHECKING imports
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
