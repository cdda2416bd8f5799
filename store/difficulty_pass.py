"""`dalidr difficulty STORE`: a difficulty for every stored view, computed once, kept in the store.

A curriculum (`store.curriculum`) orders each sample's views by one of two scores
(`store.difficulty`): the teacher's confidence in the sample's label, and the augmentation's
strength. Both are functions of what a committed block already holds (its records, its top-k
and the manifest's labels), so they are computed after the teacher pass, from the store alone,
without a GPU or a teacher: this pass reads each committed block (checking its digests, as every
read does), scores its views and writes the block's derived arrays and their digest
(`store.derived.write_derived_block`). The teacher pass scores each block right after its
commit (`dalidr.teacher.reinforce`, `block_difficulty`), `dalidr upgrade` runs this pass on the
store it upgrades, and this command backfills a store written by other tools, or one whose
scoring was cut short, and rescores with `--redo`.

Resumable and idempotent: a block whose derived digest is set is skipped (`redo` rewrites it),
and scores are deterministic, so a block written twice holds the same bytes. Cost: I/O and numpy
only, about the cost of reading the store once.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from dalidr.errors import StoreError
from dalidr.progress import progress_bar, progress_wanted
from store.derived import write_derived_block
from store.difficulty import augmentation_strength, teacher_confidence
from store.layout import open_layout
from store.reader import StoreReader

__all__ = ["block_difficulty", "fill_difficulty", "register"]


def block_difficulty(reader: StoreReader, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(confidence in the label, augmentation strength), each [n, slots] uint8, of one block."""
    records, targets = reader.read_block(block)
    r = reader.layout.block_range(block)
    labels = np.asarray(reader.manifest.labels[r.start:r.stop])
    confidence = teacher_confidence(targets.classes, targets.probs, labels)
    return confidence, augmentation_strength(records, reader.config.recipe)


def fill_difficulty(url: str, *, redo: bool = False, blocks: list[int] | None = None,
                    progress: bool = True) -> int:
    """Write the derived arrays of the committed blocks that lack them (all of `blocks` if
    given, rewriting with `redo`); returns how many blocks were written."""
    reader = StoreReader(url)
    layout = open_layout(url, read_only=False)
    rows = layout.commit_rows()
    wanted = range(layout.num_blocks) if blocks is None else blocks
    outside = [b for b in wanted if not 0 <= b < layout.num_blocks]
    if outside:
        raise StoreError(f"{url}: block {outside[0]} is not in 0..{layout.num_blocks - 1}")
    todo = [b for b in wanted if rows[b, 0] != 0 and (redo or rows[b, -1] == 0)]
    bar = progress_bar(len(todo), "difficulty", progress_wanted(progress), unit="block")
    with bar:
        for block in todo:
            write_derived_block(layout, block, *block_difficulty(reader, block))
            bar.update(1)
    return len(todo)


def _run(args: Any) -> int:
    written = fill_difficulty(args.store, redo=args.redo, progress=not args.no_progress)
    done = StoreReader(args.store).committed()
    print(f"{args.store}: difficulty written for {written} block(s); "
          f"{int(done.sum())}/{len(done)} blocks committed")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `dalidr difficulty` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "difficulty", help="compute each stored view's difficulty (for --curriculum)",
        description="Score every view of every committed block: the teacher's confidence in "
                    "the sample's label and the augmentation's strength (definitions: "
                    "docs/curriculum.md), stored in the store's derived arrays with their own "
                    "digest. No teacher, no GPU: the store's records and top-k are read. "
                    "Blocks already scored are skipped, so a rerun continues.")
    parser.add_argument("store", help="store path or fsspec URL")
    parser.add_argument("--redo", action="store_true", help="rescore blocks already scored")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run)
    return parser
