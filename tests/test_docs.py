"""The documentation's promises, checked from the text alone (no dalidr import, a second to run).

The README is the front door: short enough to read in minutes, the two set-up commands near
its top, a link to every page under docs/, and every bench result it cites present. Every
relative link in the README and under docs/ must lead to a file that exists, so a moved module
or a renamed page breaks a test rather than a reader's click. Web links and in-page anchors are
not followed (anchors are stripped from paths).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

README_MAX_LINES = 250
COMMANDS_WITHIN = 40

# [text](target) and ![alt](target); the target stops at whitespace or ')', so an optional
# "title" after it is ignored.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_BENCH_RESULT = re.compile(r"bench/results/[\w./-]*\w")


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _prose(path: Path) -> str:
    """The file's text without fenced code blocks (code may show link-like syntax)."""
    return _FENCE.sub("", path.read_text(encoding="utf-8"))


def _relative_links(path: Path) -> list[str]:
    links = []
    for target in _LINK.findall(_prose(path)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # http(s), mailto, ...; an anchor in the same page
        links.append(target)
    return links


def _resolve(source: Path, target: str) -> Path:
    return (source.parent / target.split("#", 1)[0]).resolve()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; the limit is {README_MAX_LINES}: move detail to docs/")


def test_readme_opens_with_the_two_commands():
    top = "\n".join(README.read_text(encoding="utf-8").splitlines()[:COMMANDS_WITHIN])
    for command in ("make demo", "make test"):
        assert command in top, (
            f"`{command}` is not within README.md's first {COMMANDS_WITHIN} lines")


def test_every_docs_page_is_linked_from_the_readme():
    linked = {_resolve(README, target) for target in _relative_links(README)}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no pages"
    missing = [page.relative_to(ROOT).as_posix() for page in pages if page.resolve() not in linked]
    assert not missing, f"README.md does not link these pages: {missing}"


@pytest.mark.parametrize("source", [README, *_pages()],
                         ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(source: Path):
    broken = [target for target in _relative_links(source)
              if not _resolve(source, target).exists()]
    assert not broken, f"{source.relative_to(ROOT)}: links to missing files: {broken}"


def test_every_bench_result_the_readme_cites_exists():
    cited = sorted(set(_BENCH_RESULT.findall(README.read_text(encoding="utf-8"))))
    assert cited, "README.md cites no bench/results file"
    missing = [path for path in cited if not (ROOT / path).exists()]
    assert not missing, f"README.md cites bench results that do not exist: {missing}"


def test_the_link_pattern_reads_what_it_should():
    text = ("[a](docs/x.md#part) ![img](docs/y.png) [web](https://e.org/z) [here](#top) "
            '[t](docs/w.md "title")')
    assert _LINK.findall(text) == ["docs/x.md#part", "docs/y.png", "https://e.org/z", "#top",
                                   "docs/w.md"]
