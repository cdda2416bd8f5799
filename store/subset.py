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
(`store.skip_marks`, a data array) come along for the kept slots like the records, so a view
skipped because its mix partner is unreadable stays unserved in the subset. The difficulty
arrays (`store.derived`) are not copied: they are computed again for the subset.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dalidr.errors import OptionError, StoreError
from store.layout import CLASSES, CORRUPT_CHUNK_ERRORS, PROB_GAPS, block_digest, open_layout
from store.location import redacted
from store.sources import copy_sources
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
    digests = layout.commits()
    for block in writer.pending():
        r = layout.block_range(block)
        arrays: dict[str, np.ndarray] = {}
        for name in layout.data_names:
            try:
                arrays[name] = np.asarray(layout.array(name)[r.start:r.stop])
            except CORRUPT_CHUNK_ERRORS as exc:
                raise StoreError(f"{source}: array {name!r}, block {block} cannot be read: "
                                 f"{redacted(exc)}; run `dalidr inspect` on it") from exc
        if block_digest(arrays) != int(digests[block]):  # never seal a damaged block anew
            raise StoreError(f"{source}: block {block} (samples {r.start}..{r.stop - 1}) does "
                             "not match its commit digest; run `dalidr inspect` on it")
        arrays = {name: values[:, :slots] for name, values in arrays.items()}
        arrays[CLASSES] = arrays[CLASSES][..., :topk]
        arrays[PROB_GAPS] = arrays[PROB_GAPS][..., :topk]
        writer.write_encoded(block, arrays)
    writer.finish()
    copy_sources(layout, writer.layout)  # a store made from shards: the same samples lie there
    return writer

