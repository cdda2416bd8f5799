"""docs/cli.md, rendered from the real `dalidr` argparse parser so the reference cannot drift.

`python -m dalidr.cli_reference --write` regenerates docs/cli.md (without `--write` it prints
the page); tests/test_cli_reference.py fails when the committed page differs from a fresh
rendering. Each subcommand gets a section, in registration order: its description as prose,
then its usage and options exactly as `dalidr <command> --help` prints them, in a fenced block.
Trade-off: argparse's own text rather than a hand-styled table, so the page is plain but
faithful, and nothing but the parser needs updating. The text is laid out at a fixed `WIDTH`
with colour off, so it does not depend on the terminal (or `COLUMNS`) it was rendered in.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

__all__ = ["DOC_PATH", "WIDTH", "main", "render_markdown", "subcommands"]

WIDTH = 100  # columns of every help block (the project's line length)
DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
REGENERATE = "python -m dalidr.cli_reference --write"


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                yield from _parsers(child)


def _fixed_layout(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every parser in the tree formats at WIDTH columns, without colour (Python 3.14+)."""
    for each in _parsers(parser):
        formatter = cast("type[argparse.HelpFormatter]", each.formatter_class)
        each.formatter_class = functools.partial(formatter, width=WIDTH)
        if hasattr(each, "color"):
            each.color = False
    return parser


def subcommands(
    parser: argparse.ArgumentParser,
) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the order they were added."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]


def _help_block(parser: argparse.ArgumentParser) -> str:
    """`--help` without the description (the page shows that as prose), fenced."""
    bare = copy.copy(parser)
    bare.description = None
    return f"```text\n{bare.format_help().rstrip()}\n```"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def render_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole page: an index of the subcommands, then one section per subcommand."""
    if parser is None:
        from dalidr.cli import build_parser

        parser = build_parser()
    parser = _fixed_layout(parser)
    prog = parser.prog
    commands = subcommands(parser)
    lines = [
        "# Command line reference",
        "",
        f"<!-- Generated from the argparse parser by `{REGENERATE}`; do not edit by hand. -->",
        "",
        f"{_one_line(parser.description or '')} `python -m dalidr` is the same command line; "
        f"`{prog} <command> --help` prints each section's block. Every option shows its default.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for name, short, _ in commands:
        anchor = f"{prog}-{name}".lower()
        lines.append(f"| [`{name}`](#{anchor}) | {_one_line(short).replace('|', '&#124;')} |")
    lines += ["", f"## `{prog}`", "", _help_block(parser)]
    for name, short, sub in commands:
        lines += ["", f"## `{prog} {name}`", "", _one_line(sub.description or short), "",
                  _help_block(sub)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m dalidr.cli_reference",
                                  description="Render the CLI reference (docs/cli.md).")
    cli.add_argument("--write", action="store_true",
                     help=f"write {DOC_PATH.parent.name}/{DOC_PATH.name} instead of printing it")
    args = cli.parse_args(argv)
    text = render_markdown()
    if args.write:
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        DOC_PATH.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
