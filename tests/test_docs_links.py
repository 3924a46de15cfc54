"""The user docs hold together: README.md stays short, and every relative link in README.md and docs/*.md
points at a file that exists (and, with ``#anchor``, at a heading that exists in it), so moving or renaming a
page or a heading cannot silently break the map. Every page under docs/ is reachable from README.md."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest


def _repo_root() -> Path:
    """The folder holding README.md and pyproject.toml, found upwards, so the test may move within tests/."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "README.md").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    raise RuntimeError("repository root not found above " + __file__)


ROOT = _repo_root()
README_MAX_LINES = 250
# [text](target) and ![alt](target); the target stops at whitespace or ')' (an optional "title" is ignored)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def doc_files() -> list[Path]:
    """README.md and every markdown page under docs/ (recursively)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code spans, where bracket pairs are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (word characters, spaces and
    hyphens kept), each space a hyphen. ``Parity with YOLOv5 v7.0`` -> ``parity-with-yolov5-v70``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps only its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    """Link targets of a markdown file that point inside the repository (no scheme, not mailto)."""
    targets = LINK.findall(_prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """One line per broken relative link of ``path``: a missing file, or a missing heading for ``#anchor``;
    paths in the messages are relative to ``root``."""
    problems = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.relative_to(root)}: link '{target}'"
        shown = dest.relative_to(root) if dest.is_relative_to(root) else dest
        if not dest.exists():
            problems.append(f"{where}: no file {shown}")
        elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            problems.append(f"{where}: no heading with anchor '#{anchor}' in {shown}")
    return problems


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    assert link_problems(path) == []


def test_every_docs_page_is_reachable_from_readme():
    reachable, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in reachable:
            continue
        reachable.add(page)
        for target in relative_links(page):
            dest = (page.parent / unquote(target.partition("#")[0])).resolve() if target.partition("#")[0] else page
            if dest.suffix == ".md" and dest.is_file():
                todo.append(dest)
    orphans = [str(p.relative_to(ROOT)) for p in doc_files() if p.resolve() not in reachable]
    assert orphans == [], f"docs pages no link from README.md leads to: {orphans}"


def test_checker_catches_broken_links(tmp_path: Path):
    """The checker itself can fail: a missing file and a missing heading are both reported, good links are not,
    and bracket pairs inside code are not taken for links."""
    page = tmp_path / "page.md"
    repeated = "## Speed, ours / reference\n"
    (tmp_path / "other.md").write_text("# Parity with YOLOv5 v7.0\n" + repeated + repeated)
    page.write_text(
        "[ok](other.md#parity-with-yolov5-v70) [ok2](other.md#speed-ours--reference-1) [web](https://example.com)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) `[not](a-link.md)`\n"
        "```\n[also not](inside-code.md)\n```\n"
    )
    problems = link_problems(page, root=tmp_path)
    assert len(problems) == 2, problems
    assert "missing.md" in problems[0] and "#nope" in problems[1]
