"""docs/cli.md is the argparse help of today's parser, and renders the same on any terminal."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from dalidr.cli import build_parser
from dalidr.cli_reference import DOC_PATH, REGENERATE, WIDTH, render_markdown, subcommands

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def page() -> str:
    return render_markdown()


def test_docs_cli_md_is_up_to_date(page: str) -> None:
    assert DOC_PATH == ROOT / "docs" / "cli.md"
    committed = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.is_file() else ""
    if committed != page:
        diff = "\n".join(list(difflib.unified_diff(
            committed.splitlines(), page.splitlines(), "docs/cli.md (committed)",
            "docs/cli.md (from the parser)", lineterm=""))[:60])
        pytest.fail(f"docs/cli.md is out of date with the CLI; regenerate it with "
                    f"`{REGENERATE}` and commit it.\n{diff}")


def test_every_subcommand_has_a_section_in_order(page: str) -> None:
    names = [name for name, _, _ in subcommands(build_parser())]
    assert len(names) >= 10 and "experiment" in names and "import-mldr" in names
    positions = [page.index(f"\n## `dalidr {name}`\n") for name in names]
    assert positions == sorted(positions)
    for name, _, sub in subcommands(build_parser()):
        section = page[page.index(f"\n## `dalidr {name}`\n"):]
        assert f"usage: dalidr {name} [-h]" in section
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in section, (name, flag)


def test_rendering_ignores_the_terminal_width(monkeypatch: pytest.MonkeyPatch,
                                              page: str) -> None:
    for columns in ("40", "300"):
        monkeypatch.setenv("COLUMNS", columns)
        assert render_markdown() == page
    lines = [line for block in page.split("```text\n")[1:]
             for line in block.split("```")[0].splitlines()]
    assert max(len(line) for line in lines) >= 80  # laid out at WIDTH, not at COLUMNS=40
    # wider only where argparse cannot break: one token, e.g. the {subcommand,...} list
    assert all(len(line) <= WIDTH or len(line.split()) == 1 for line in lines)


def test_no_machine_specific_text(page: str) -> None:
    for local in {str(ROOT), str(Path.home()), "/tmp/", "\x1b["}:
        assert local not in page, local
