"""`dalidr subset`: a smaller store from a larger one (the paper's Small and Mini variants).

ImageNet+-Small keeps 100 of the 400 stored views per image and the top 5 of the 10 teacher
probabilities (paper Sec. 3.4); ml-dr's Mini keeps 50 views. A subset keeps the first `slots`
slots: records are a pure function of (seed, sample, slot), so the subset is exactly the store
the teacher pass would have written with fewer slots, and its epoch plans use the same seed.
The top `topk` of the stored top-k are kept as they are (they are sorted by probability and
their quantised levels do not depend on the entries dropped), so no new distortion is added.
Blocks are copied through the normal writer, one block at a time, and the copy resumes like
any teacher pass: run it again after an interruption or a failed write (a full disk is named,
with the space needed: `store.write_errors`). The skip marks of `reinforce --skip-bad`
(`store.skip_marks`) come along for the kept slots, each block's before its commit, so a view
skipped because its mix partner is unreadable stays unserved in the subset.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dalidr.errors import OptionError, StoreError
from store.layout import CLASSES, CORRUPT_CHUNK_ERRORS, PROB_GAPS, StoreLayout, open_layout
from store.location import redacted
from store.skip_marks import (
    create_skip_marks,
    has_skip_marks,
    read_skip_marks,
    write_skip_marks,
)
from store.writer import StoreWriter, resume_or_create

__all__ = ["subset_store"]



def subset_store(source: str, out: str, slots: int, topk: int) -> StoreWriter:
    """Write `out`: the first `slots` views and top `topk` classes of every committed block."""
    layout = open_layout(source, read_only=True)
    cfg = layout.config
    if not 1 <= slots <= cfg.slots:
        raise OptionError(f"option 'slots' is {slots}; valid: 1..{cfg.slots} (the source's)")
    if not 1 <= topk <= cfg.k:
        raise OptionError(f"option 'topk' is {topk}; valid: 1..{cfg.k} (the source's k)")
    committed = layout.commits() != 0
    if not committed.all():
        raise StoreError(f"{source}: only {int(committed.sum())}/{committed.size} blocks are "
                         "committed; finish the teacher pass before subsetting")
    small = dataclasses.replace(cfg, slots=slots, k=topk,
                                slot_group=min(cfg.slot_group, slots))
    writer = resume_or_create(out, small, lambda: layout.manifest)
    if writer.config != small or writer.layout.fingerprint != layout.fingerprint:
        raise StoreError(f"{out} exists but is not a subset of {source} with slots={slots}, "
                         f"topk={topk}; remove it or choose another output")
    marked = has_skip_marks(source)
    if marked and not has_skip_marks(out):
        create_skip_marks(out)  # a new subset, or one copied before subsets carried the marks
        for block in map(int, writer.committed().nonzero()[0]):
            _copy_skip_marks(layout, writer, block, slots)
    for block in writer.pending():
        if marked:
            _copy_skip_marks(layout, writer, block, slots)
        r = layout.block_range(block)
        arrays: dict[str, np.ndarray] = {}
        for name in layout.data_names:
            try:
                arrays[name] = np.asarray(layout.array(name)[r.start:r.stop, :slots])
            except CORRUPT_CHUNK_ERRORS as exc:
                raise StoreError(f"{source}: array {name!r}, block {block} cannot be read: "
                                 f"{redacted(exc)}; run `dalidr inspect` on it") from exc
        arrays[CLASSES] = arrays[CLASSES][..., :topk]
        arrays[PROB_GAPS] = arrays[PROB_GAPS][..., :topk]
        writer.write_encoded(block, arrays)
    return writer


def _copy_skip_marks(layout: StoreLayout, writer: StoreWriter, block: int, slots: int) -> None:
    """One block's skip marks, first `slots` slots, from the source into the subset."""
    r = layout.block_range(block)
    try:
        marks = read_skip_marks(layout, r, slots)
    except CORRUPT_CHUNK_ERRORS as exc:
        raise StoreError(f"{layout.url}: the skip marks of block {block} cannot be read: "
                         f"{redacted(exc)}; run `dalidr inspect` on it") from exc
    if marks is not None:
        write_skip_marks(writer.layout, block, marks)
