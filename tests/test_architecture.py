"""ARCHITECTURE.md cannot drift from the code: every module path it names exists, it names every package, and its
"where does it go" table answers the questions a new contributor asks. The size rules of the layout hold too."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "ARCHITECTURE.md"
PACKAGES = ("utils/ops", "utils/config", "utils/dataset", "utils/loss", "utils/eval", "utils/train", "utils/infer",
            "utils/advise", "utils/track")
QUESTIONS = ("a box loss", "a hyperparameter", "a metric", "a size-bucket scheme", "an augmentation",
             "an inference backend", "a dataset converter", "a CLI flag", "a learning-rate schedule", "a test",
             "an association cost", "a tracker setting")


def named_paths(text: str) -> set[str]:
    """Module paths named in backticks: ``utils/x/y.py``, ``train.py`` and dotted ``utils.x.y`` / ``models.yolo``."""
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    paths = {s for s in spans if re.fullmatch(r"[\w/]+\.py", s)}
    paths |= {s.replace(".", "/") + ".py" for s in spans if re.fullmatch(r"(utils|models|data)(\.\w+)+", s)}
    return paths


def missing(paths: set[str]) -> list[str]:
    """Named paths that are neither a file nor (for ``NAME.py`` of a package) a package folder."""
    return sorted(p for p in paths if "*" not in p and not (ROOT / p).is_file()
                  and not (ROOT / p.removesuffix(".py") / "__init__.py").is_file())


def test_every_module_path_named_exists():
    text = DOC.read_text(encoding="utf-8")
    paths = named_paths(text)
    assert len(paths) > 60  # the document names the modules, so an empty match cannot pass
    assert missing(paths) == []
    assert missing({"utils/hyp.py", "utils/config/hyp.py", "utils/train.py"}) == ["utils/hyp.py"]  # the check bites


def test_every_package_and_question_is_there():
    text = DOC.read_text(encoding="utf-8")
    for pkg in PACKAGES:
        assert f"`{pkg}/`" in text, pkg
        assert (ROOT / pkg / "__init__.py").is_file()
    table = text.split("## Where does it go?", 1)[1]
    for q in QUESTIONS:
        assert re.search(rf"^\| {re.escape(q)} \|", table, re.M), q


def test_layout_sizes():
    """At most 12 modules in the utils/ root; a package at most ~10 modules and ~2,500 lines; a module at most
    ~400 lines (the entry points included)."""
    root_modules = [p for p in (ROOT / "utils").glob("*.py") if p.name != "__init__.py"]
    assert len(root_modules) <= 12, sorted(p.name for p in root_modules)
    for pkg in PACKAGES:
        mods = [p for p in (ROOT / pkg).glob("*.py") if p.name != "__init__.py"]
        lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in mods)
        assert len(mods) <= 10 and lines <= 2500, (pkg, len(mods), lines)
        doc = (ROOT / pkg / "__init__.py").read_text(encoding="utf-8")
        assert doc.startswith('"""') and "import" in doc, f"{pkg}/__init__.py says what it holds and may import"
    files = [*(ROOT / "utils").rglob("*.py"), *(ROOT / "models").glob("*.py"), *(ROOT / "data").glob("*.py"),
             *(ROOT / f for f in ("train.py", "val.py", "detect.py", "export.py", "hubconf.py"))]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text(encoding="utf-8").splitlines())) > 410}
    assert long == {}
