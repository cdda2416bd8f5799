"""The one augmentation implementation both passes use: draw parameters, then replay them.

- `recipe`: what a store's views are made of (RRC, RandAugment, erase, MixUp/CutMix).
- `records`: parameters drawn vectorised from (seed, sample, slot) into a fixed-width record.
- `ops`: the RandAugment op table, each op with its magnitude mapping beside it;
  `equalize`: Equalize as PIL defines it, on DALI's numba plugin.
- `replay`: the DALI graph that renders a record; the teacher pass and the loader share it.
- `cpu`: on the CPU, the graph's RandAugment, erase and mixing as numba kernels fused into one
  DALI operator per view, the same pixels as DALI's operators at a fraction of their cost.
- `hashing`, `conventions`, `image_formats`: the counter-based hash, the decoding
  conventions a store records, and how an image file is recognised by its content.
"""
