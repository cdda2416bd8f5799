"""`dalidr subset`: a smaller store from a larger one (the paper's Small and Mini variants).

ImageNet+-Small keeps 100 of the 400 stored views per image and the top 5 of the 10 teacher
probabilities (paper Sec. 3.4); ml-dr's Mini keeps 50 views. A subset keeps the first `slots`
slots: records are a pure function of (seed, sample, slot), so the subset is exactly the store
the teacher pass would have written with fewer slots, and its epoch plans use the same seed.
The top `topk` of the stored top-k are kept as they are (they are sorted by probability and
their quantised levels do not depend on the entries dropped), so no new distortion is added.
Blocks are copied through the normal writer, one block at a time, and the copy resumes like
any teacher pass: run it again after an interruption.
"""

from __future__ import annotations

import dataclasses

from dalidr.errors import OptionError, StoreError
from store.layout import CLASSES, CORRUPT_CHUNK_ERRORS, PROB_GAPS, open_layout
from store.writer import StoreWriter, create_store

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
    try:
        writer = StoreWriter(out)
    except StoreError:
        writer = create_store(out, layout.manifest, small)
    if writer.config != small or writer.layout.fingerprint != layout.fingerprint:
        raise StoreError(f"{out} exists but is not a subset of {source} with slots={slots}, "
                         f"topk={topk}; remove it or choose another output")
    for block in writer.pending():
        r = layout.block_range(block)
        arrays = {}
        for name in layout.data_names:
            try:
                arrays[name] = layout.array(name)[r.start:r.stop, :slots]
            except CORRUPT_CHUNK_ERRORS as exc:
                raise StoreError(f"{source}: array {name!r}, block {block} cannot be read: "
                                 f"{exc}; run `dalidr inspect` on it") from exc
        arrays[CLASSES] = arrays[CLASSES][..., :topk]
        arrays[PROB_GAPS] = arrays[PROB_GAPS][..., :topk]
        writer.write_encoded(block, arrays)
    return writer
