"""Structure of the repository (issue 12): file sizes in the library, and docs that hold together.

* No file in ``hypergrad/`` is longer than 600 lines.
* Every relative link and image in README.md and ``docs/**/*.md`` resolves to a file (and, with
  ``#anchor``, to a heading of a Markdown file); every file in ``docs/results`` and ``docs/figures``
  is named by some page.
* Every results page (``docs/results/*.md``) shows the command that makes its numbers and stays
  short. A ``.md`` beside a ``.json`` of the same name is the table a command wrote, not a page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MAX_LINES = 600
MAX_WORDS = 1300
COMMAND = re.compile(r"^\s*(?:[A-Z_]+=\S+\s+)*(?:python -m |hypergrad |make |torchrun )", re.M)

_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _prose(text: str) -> str:
    """The page without its fenced code blocks and inline code (links there are examples, not links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", page.read_text()), re.M)}


def _results_pages() -> list[Path]:
    results = DOCS / "results"
    return [p for p in sorted(results.glob("*.md")) if not p.with_suffix(".json").exists()]


def _words(text: str) -> int:
    """Words of prose and tables: tokens with a letter or digit, outside fenced code."""
    return sum(1 for tok in re.findall(r"[^\s|]+", _FENCE.sub("", text)) if re.search(r"\w", tok))


def test_no_library_file_is_longer_than_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "hypergrad").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files in hypergrad/ longer than {MAX_LINES} lines: {long}"


def test_every_relative_link_and_image_in_the_docs_resolves():
    broken = []
    for page in _pages():
        for target in _LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = page if not path_part else (page.parent / path_part).resolve()
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_file_in_results_and_figures_is_named_by_a_page():
    texts = {page: page.read_text() for page in _pages()}
    unnamed = []
    for folder in (DOCS / "results", DOCS / "figures"):
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            if not any(f.name in text for page, text in texts.items() if page != f):
                unnamed.append(str(f.relative_to(ROOT)))
    assert not unnamed, f"files no page names (delete them or reference them): {unnamed}"


@pytest.mark.parametrize("page", _results_pages(), ids=lambda p: p.name)
def test_a_results_page_shows_its_command_and_is_short(page: Path):
    text = page.read_text()
    blocks = [b for b in _FENCE.findall(text) if COMMAND.search(b)]
    assert blocks, f"{page.name}: no fenced block with a `python -m`, `hypergrad` or `make` command"
    assert _words(text) <= MAX_WORDS, f"{page.name}: {_words(text)} words (at most {MAX_WORDS})"


def test_no_command_in_the_docs_writes_a_versioned_copy():
    """Commands write the file the page shows, not ``runs/x_v2`` or ``docs/results/y_v3.json``."""
    versioned = [f"{page.relative_to(ROOT)}: {m.group(0)}" for page in _pages()
                 for block in _FENCE.findall(page.read_text())
                 for m in re.finditer(r"[\w./-]*_v\d+\b[\w./-]*", block)]
    assert not versioned, f"versioned paths in commands: {versioned}"


def test_the_results_pages_are_found():
    """The checks above run on the six pages README lists (a test of the page filter)."""
    names = {p.name for p in _results_pages()}
    assert {"optuna.md", "hyperopt.md", "performance.md", "hopfield.md", "gnn.md", "stability.md"} <= names
