"""How pixels come out of a file: the conventions a store's records and targets were made under.

A store is only meaningful under the conventions it was made with: the teacher labelled views
decoded and augmented one way, and the student must see the same pixels. Both are saved in the
store's attributes (`store.config.StoreConfig`) and a reader refuses a store whose conventions
this code does not implement, rather than replaying it differently in silence.

- `DECODE_CONVENTION`: images decode as PIL, torchvision's ImageFolder and the paper's code
  (apple/ml-dr) decode them. EXIF orientation is ignored (DALI's default would rotate), the
  image size the sampler draws crops for is the size replay decodes, and every format of
  ImageNet's train set (a PNG under a .JPEG name among them) goes through the same graph.
- `OP_SET`: the RandAugment op table (`dalidr.augment.ops`): torchvision's 14 ops with its magnitude
  bins, Equalize as PIL's `ImageOps.equalize` (which torchvision's tensor `equalize` follows).

Bump a value whenever the pixels a stored record replays to would change.
"""

from __future__ import annotations

__all__ = ["DECODE_CONVENTION", "OP_SET"]

# PIL's decoding: EXIF orientation ignored; sizes as PIL reports them.
DECODE_CONVENTION = "pil-no-exif"
# torchvision RandAugment's 14 ops, Equalize as PIL ImageOps.equalize.
OP_SET = "torchvision-ra14-pil-equalize"
