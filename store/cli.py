"""The store's command-line tools, `dalidr inspect`, `verify`, `subset` and `upgrade`, as argparse
parsers.

`dalidr.cli` calls `register(subparsers)` to add both subcommands; each sets `run`, a function of
the parsed arguments returning the exit status (0: fine, 1: the integrity check found problems).
`python -m store.cli ...` runs them without the rest of dalidr's CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from dalidr.errors import DalidrError
from store.inspect import format_report, inspect_store
from store.subset import subset_store

__all__ = ["register", "add_inspect_parser", "add_verify_parser", "add_subset_parser", "main"]


def _inspect(args: argparse.Namespace) -> int:
    report = inspect_store(args.store, verify=not args.no_verify)
    print(format_report(report))
    status = 1 if report.problems else 0
    if args.data is not None:
        status = max(status, _check_data(args))
    return status


def _check_data(args: argparse.Namespace) -> int:
    """`verify`, and `inspect --data`: every served file of the data root against the store."""
    from dalidr.data.dataset import list_dataset, source_for
    from store.reader import StoreReader
    from store.verify import verify_data

    manifest = StoreReader(args.store).manifest
    listing = None if args.manifest_paths else list_dataset(args.data, args.file_list)
    source = (source_for(args.data, manifest.paths) if listing is None
              else listing.source.for_paths(manifest.paths))
    report = verify_data(manifest, source, listing, workers=args.workers,
                         progress=sys.stderr.isatty() and not args.no_progress)
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.problems:
        print(line)
    print(f"{args.store}: {report.files} files of {args.data} checked"
          + (f" ({report.skipped} skipped by the teacher pass, not read)" if report.skipped
             else "")
          + (f"; {len(report.problems)} problem(s)" if report.problems
             else "; every file matches the store"))
    return 1 if report.problems else 0


def _subset(args: argparse.Namespace) -> int:
    writer = subset_store(args.store, args.out, slots=args.slots, topk=args.topk)
    done = int(writer.committed().sum())
    print(f"{args.out}: {done}/{writer.num_blocks} blocks, {writer.config.slots} slots, "
          f"top-{writer.config.k}")
    return 0


def add_inspect_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "inspect", help="summarise a reinforcement store and check every chunk",
        description="Print a store's samples, slots, k, recipe and teacher, its completeness, "
                    "bytes per record, and an integrity check that reads every chunk.")
    parser.add_argument("store", help="store path or fsspec URL (file://, memory://, s3://, ...)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the integrity check (reads every chunk)")
    _add_data_options(parser, required=False)
    parser.set_defaults(run=_inspect)
    return parser


def _add_data_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--data", required=required, default=None,
                        help="the dataset root the store was made from: hash every file, "
                             "check its format, report damaged JPEG data by path (or the "
                             "webdataset tar shards it was made from, member by member)")
    parser.add_argument("--file-list", default=None, help="'<path> <label>' lines, if the store "
                        "was made from a file list")
    parser.add_argument("--manifest-paths", action="store_true",
                        help="check the manifest's paths without listing the tree")
    parser.add_argument("--workers", type=int, default=8, help="files checked at once")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_verify_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify", help="hash every file of a data root against a store's manifest",
        description="Full content check of a data root against a store: the listing (paths, "
                    "labels, sizes), the SHA-256 and format of every file the store serves, "
                    "and damaged JPEG data, in parallel, naming every problem. Loaders only "
                    "check a sample at start.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("store", help="store path or URL")
    _add_data_options(parser, required=True)
    parser.set_defaults(run=_check_data)
    return parser


def add_subset_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "subset", help="keep the first S slots and top K classes (ImageNet+-Small: 100, 5)",
        description="Write a smaller store: the first S views of every sample and the top K "
                    "teacher classes (the paper's Small variant: --slots 100 --topk 5; ml-dr's "
                    "Mini: --slots 50). Re-running resumes an interrupted copy.")
    parser.add_argument("store", help="source store path or URL")
    parser.add_argument("--slots", type=int, required=True, help="views kept per sample")
    parser.add_argument("--topk", type=int, required=True, help="teacher classes kept per view")
    parser.add_argument("out", help="output store path or URL")
    parser.set_defaults(run=_subset)
    return parser


def register(subparsers: Any) -> None:
    """Add `inspect`, `verify`, `subset`, `upgrade` and `difficulty` to an argparse
    subparsers object."""
    from store import difficulty_pass, upgrade

    add_inspect_parser(subparsers)
    add_verify_parser(subparsers)
    add_subset_parser(subparsers)
    upgrade.register(subparsers)
    difficulty_pass.register(subparsers)


def main(argv: Sequence[str] | None = None) -> int:
    description = __doc__.splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m store.cli", description=description)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except DalidrError as exc:
        print(f"{args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
