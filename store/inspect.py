"""`dalidr inspect`: what a store holds, how complete and compact it is, and whether it is intact.

The integrity check reads every chunk of every committed block, one (block, slot group) chunk
at a time so a failure names its array and chunk, then recomputes each block's digest from the
decoded arrays and compares it with the commit entry, and each slot group's digest as the
reader does on every read. CRC32C on every chunk catches flipped bytes; the digests also catch
a chunk that went missing (zarr would read it as fill values) or was swapped for another
block's valid chunk. The manifest is re-read and re-fingerprinted. Then every value is checked
by `store.validate.decode_views`, the reader's own check (op ids, bins, crops, boxes, partners,
class indices, probability levels), so inspect never calls intact a store the loader refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dalidr.augment.recipe import Recipe
from dalidr.errors import DalidrError
from store.commit_summary import SUMMARY, summary_problems
from store.layout import (
    CLASSES,
    COMMIT,
    CORRUPT_CHUNK_ERRORS,
    PROB_GAPS,
    StoreLayout,
    block_digest,
    group_digest,
    open_layout,
)
from store.location import redacted
from store.manifest_view import DIGESTS, digest_problems
from store.sources import SOURCES, sources_problems
from store.validate import decode_views

__all__ = ["StoreReport", "inspect_store", "verify_store", "format_report"]


@dataclass(frozen=True)
class StoreReport:
    """The facts `dalidr inspect` prints."""

    url: str
    num_samples: int
    slots: int
    k: int
    recipe: Recipe
    teacher: str
    seed: int
    schema_version: int
    block_size: int
    slot_group: int
    num_blocks: int
    committed_blocks: int
    committed_samples: int
    # Bytes of every object in the store, and of each array (data arrays, manifest, commit).
    total_bytes: int
    array_bytes: dict[str, int]
    files: int
    # Problems found by the integrity check (empty: intact); None when it was not run.
    problems: list[str] | None = field(default=None)
    chunks_checked: int = 0

    @property
    def complete(self) -> bool:
        return self.committed_blocks == self.num_blocks

    @property
    def records(self) -> int:
        return self.committed_samples * self.slots

    @property
    def bytes_per_record(self) -> float:
        """Every byte of the store (manifest and metadata included) per stored view."""
        return self.total_bytes / self.records if self.records else float("nan")


def verify_store(layout: StoreLayout) -> tuple[list[str], int]:
    """Read every chunk of every committed block; return (problems, chunks read)."""
    problems: list[str] = []
    checked = 0
    try:
        manifest = layout.manifest
        if manifest.fingerprint != layout.fingerprint:
            problems.append("manifest: its arrays do not match the stored fingerprint")
        problems += digest_problems(layout, manifest)
    except DalidrError as exc:
        problems.append(f"manifest: {exc}")
    try:
        problems += summary_problems(layout)
    except DalidrError as exc:
        problems.append(f"commit summary: {exc}")
    problems += sources_problems(layout)
    cfg = layout.config
    rows = layout.commit_rows()
    commits = rows[:, 0]
    for block in np.flatnonzero(commits):
        r = layout.block_range(int(block))
        arrays: dict[str, np.ndarray] = {}
        for name in layout.data_names:
            key = layout.shard_key(name, int(block))
            if not layout.location.exists(key):
                problems.append(f"array {name!r}, block {block}: object {key!r} is missing")
                continue
            array = layout.array(name)
            parts = []
            for group in range(cfg.num_groups):
                slots = cfg.group_slots(group)
                checked += 1
                try:
                    parts.append(array[r.start:r.stop, slots.start:slots.stop])
                except CORRUPT_CHUNK_ERRORS as exc:
                    problems.append(f"array {name!r}, chunk (block {block}, slot group {group}) "
                                    f"is corrupt: {redacted(exc)}")
                    break
            else:
                arrays[name] = np.concatenate(parts, axis=1)
        if len(arrays) != len(layout.data_names):
            continue
        if block_digest(arrays) != int(commits[block]):
            problems.append(f"block {block} (samples {r.start}..{r.stop - 1}): contents do not "
                            "match its commit digest")
            continue
        bad = [group for group in range(cfg.num_groups) if group_digest(
            {name: values[:, cfg.group_slots(group).start:cfg.group_slots(group).stop]
             for name, values in arrays.items()}, int(block), group) != int(rows[block, 1 + group])]
        if bad:  # what the reader verifies on every read
            problems.append(f"block {block} (samples {r.start}..{r.stop - 1}), slot group "
                            f"{bad[0]}: the data does not match its commit digest")
            continue
        try:  # the values, checked exactly as the reader checks them
            columns = {spec.name: arrays[f"records/{spec.name}"] for spec in layout.columns}
            decode_views(layout, columns, arrays[CLASSES], arrays[PROB_GAPS],
                         np.arange(r.start, r.stop), np.arange(cfg.slots))
        except DalidrError as exc:
            problems.append(f"block {block} (samples {r.start}..{r.stop - 1}): {exc}")
    return problems, checked


def inspect_store(url: str, verify: bool = True) -> StoreReport:
    """Summarise a store, with the integrity check unless `verify` is False."""
    layout = open_layout(url, read_only=True)
    cfg, location = layout.config, layout.location
    committed = np.flatnonzero(layout.commits())
    samples = sum(len(layout.block_range(int(b))) for b in committed)
    names = layout.data_names + [COMMIT, "derived", "manifest", DIGESTS, SUMMARY, SOURCES]
    problems, checked = verify_store(layout) if verify else (None, 0)
    return StoreReport(
        url=url, num_samples=layout.num_samples, slots=cfg.slots, k=cfg.k, recipe=cfg.recipe,
        teacher=cfg.teacher, seed=cfg.seed, schema_version=cfg.schema_version,
        block_size=cfg.block_size, slot_group=cfg.slot_group, num_blocks=layout.num_blocks,
        committed_blocks=len(committed), committed_samples=samples,
        total_bytes=location.size(), array_bytes={name: location.size(name) for name in names},
        files=location.file_count(), problems=problems, chunks_checked=checked,
    )


def format_report(report: StoreReport) -> str:
    """The text `dalidr inspect` prints."""
    lines = [
        f"store          {report.url}",
        f"samples        {report.num_samples}",
        f"slots          {report.slots}",
        f"k              {report.k}",
        f"recipe         {report.recipe.variant.value}  {report.recipe.to_json()}",
        f"teacher        {report.teacher}",
        f"seed           {report.seed}    schema version {report.schema_version}",
        f"blocks         {report.committed_blocks}/{report.num_blocks} committed "
        f"({report.committed_samples}/{report.num_samples} samples, block size "
        f"{report.block_size}, slot group {report.slot_group})"
        + ("  COMPLETE" if report.complete else "  INCOMPLETE"),
        f"size           {report.total_bytes} bytes in {report.files} files, "
        f"{report.bytes_per_record:.2f} bytes per record",
    ]
    for name, size in report.array_bytes.items():
        per = size / report.records if report.records else float("nan")
        lines.append(f"  {name:22s} {size:>12d} bytes  {per:6.2f} per record")
    if report.problems is None:
        lines.append("integrity      not checked")
    elif report.problems:
        lines.append(f"integrity      FAILED: {len(report.problems)} problem(s) in "
                     f"{report.chunks_checked} chunks read")
        lines += [f"  {problem}" for problem in report.problems]
    else:
        lines.append(f"integrity      OK: {report.chunks_checked} chunks read, every committed "
                     "block matches its digest")
    return "\n".join(lines)
