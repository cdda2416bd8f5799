"""What a reinforcement store holds and how it is cut: one frozen config, saved as attributes.

`StoreConfig` is written once, into the root group's attributes, by `create_store`; every writer
and reader rebuilds it from there, so the layout (block size, slot group, quantisation, codecs)
cannot drift between processes. The schema version guards the meaning of the arrays: a reader
refuses any other version rather than guessing (paper Sec. 2.2 stores the same information as
one pickled file per image; here it is one Zarr v3 group, see `store.layout`).

Trade-offs fixed here:

- `block_size` is the unit of writing, committing and sharding. Larger blocks mean fewer files
  (ImageNet at 4096: 313 blocks, about 2 500 files in all) and fewer chunks to decode per epoch
  (zarr spends about a millisecond per chunk, so ImageNet's epoch reads in ~3 s at 4096 against
  ~5.5 s at 2048 on one core); smaller blocks lose less teacher work when a writer dies (a block
  is 4096 x 400 views) and spread better over many writers. Past a few hundred million samples
  the object count decides: `dalidr reinforce` doubles its default block size until the store
  has at most `MAX_BLOCKS` blocks (`block_size_for`: 16,384 at DataCompDR-1B's 1.4B samples,
  85,450 blocks of 14 objects, about 1.2M objects, instead of 9.6M at 2048).
- `slot_group` is how many slots one compressed chunk holds. An epoch reads one slot per sample,
  but whole chunks, so the read amplification is about `slot_group`; more slots per chunk let
  the compressor find the classes a sample repeats across its views. 5 keeps reads under 8x.
- `prob_levels` quantises sqrt(probability) uniformly. Uniform steps in sqrt(p) make every
  entry's share of KL(p || q) equal (about 2 * step^2 / 12), which is the allocation that
  minimises KL for a given number of levels: 127 levels give ~1e-4 nats for k = 10.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from typing import Any

from dalidr.augment.conventions import DECODE_CONVENTION, OP_SET
from dalidr.augment.recipe import Recipe
from dalidr.errors import OptionError, StoreError

__all__ = ["SCHEMA_VERSION", "ATTRS_KEY", "RECREATE_HINT", "upgrade_hint", "Compression",
           "MemberIdentity", "StoreConfig", "MAX_BLOCKS", "block_size_for"]

# The most blocks `block_size_for` cuts a store into.
MAX_BLOCKS = 1 << 17


def block_size_for(num_samples: int, smallest: int = 2048) -> int:
    """`smallest`, doubled until `num_samples` fit in at most `MAX_BLOCKS` blocks (capped at
    StoreConfig's largest block, 2^20): the block size a teacher pass uses unless told."""
    size = smallest
    while -(-num_samples // size) > MAX_BLOCKS and size < 1 << 20:
        size *= 2
    return size

# Bump on any change to array meaning. Version 3 (docs/design/store-v3.md): skip marks are a
# data array sealed by the commit rows, the teacher's members are recorded by identity, the
# difficulty arrays are reserved (with a derived digest per block), manifest chunks follow the
# blocks. Version 2: conventions recorded, attributes digested, manifest fingerprint over every
# column, per slot-group digests in the commit map. Version 1 stores replayed with EXIF
# rotation and OpenCV's Equalize. `dalidr upgrade` turns a version 2 store into a version 3 one.
SCHEMA_VERSION = 3
# The oldest schema `dalidr upgrade` converts (older ones are re-created).
UPGRADABLE_VERSION = 2
# What to tell the owner of a store of another schema or convention.
RECREATE_HINT = ("re-create it with `dalidr reinforce` (the same seed draws the same records) or "
                 "re-import it with `dalidr import-mldr`")
# The root group's attribute that holds the config (other attributes are left to users).
ATTRS_KEY = "dalidr_store"

MAX_CLASSES = 65535  # class indices are stored as uint16


def upgrade_hint(where: str) -> str:
    """What to tell the owner of a store of the schema `dalidr upgrade` converts."""
    return f"run `dalidr upgrade {where}` to convert it in place (no teacher work)"


class Compression(enum.Enum):
    """Compressor of the teacher top-k arrays (records always use zstd, which wins on them)."""

    # zstd level 19: about 23 bytes per record, decodes at ~1 GB/s. The default.
    ZSTD = "zstd"
    # LZMA preset 9e: about 2 bytes per record smaller, decodes ~40x slower (~20 MB/s/core).
    LZMA = "lzma"


@dataclass(frozen=True)
class MemberIdentity:
    """One ensemble member, as the store records it: enough to tell whether another teacher
    would label the same views the same way (`dalidr reinforce` refuses to resume otherwise)."""

    # timm model name (with its pretrained tag, if any).
    name: str
    # `sha256:<hex>` of the tensors it loaded (`dalidr.teacher.ensemble.tensors_sha256`),
    # `pretrained:<timm tag>@sha256:<hex>` (`pretrained:<timm tag>` in stores of the previous
    # release), or `random:<seed>` (`--random-teacher`).
    weights: str
    # Input normalisation, in [0, 1] units, and the side the views are rendered at.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    # How the views are resized for it.
    interpolation: str

    def to_attrs(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights, "mean": list(self.mean),
                "std": list(self.std), "input_size": self.input_size,
                "interpolation": self.interpolation}

    @classmethod
    def from_attrs(cls, value: Any) -> MemberIdentity:
        """The member saved by `to_attrs`; TypeError/ValueError/KeyError if it is not one."""
        if not isinstance(value, dict) or set(value) != {
                "name", "weights", "mean", "std", "input_size", "interpolation"}:
            raise ValueError(f"teacher member {value!r} is not a dict of name, weights, mean, "
                             "std, input_size, interpolation")
        mean, std = (tuple(float(v) for v in value[key]) for key in ("mean", "std"))
        if len(mean) != 3 or len(std) != 3 or not all(
                isinstance(value[key], str) for key in ("name", "weights", "interpolation")):
            raise ValueError(f"teacher member {value!r} is malformed")
        size = value["input_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"teacher member {value['name']!r} has input_size {size!r}")
        return cls(value["name"], value["weights"], mean, std, size,
                   value["interpolation"])


@dataclass(frozen=True)
class StoreConfig:
    """Everything that fixes a store's contents and layout; saved in the store's attributes."""

    # The reinforcement recipe the records were drawn with (record dtype follows from it).
    recipe: Recipe
    # Free-text description of the teacher (ensemble members, checkpoints, resolution).
    teacher: str
    # Seed the records were drawn with (`dalidr.augment.records.draw_records`); also seeds epoch
    # plans.
    seed: int
    # Stored views per sample (the paper: 400 for ImageNet+, 100 Small, 50 Mini).
    slots: int = 400
    # Teacher probabilities kept per view (the paper: 10; Small: 5).
    k: int = 10
    # Size of the teacher's label space; class indices must be below it.
    num_classes: int = 1000
    # Samples per block: the unit a writer commits and the extent of one shard file.
    block_size: int = 4096
    # Slots per compressed chunk: bounds read amplification (see the module docstring).
    slot_group: int = 5
    # Quantisation levels of sqrt(probability), 15..255 (uint8).
    prob_levels: int = 127
    # Compressor of the top-k arrays.
    compression: Compression = Compression.ZSTD
    # How images were decoded when the teacher labelled them (`dalidr.augment.conventions`).
    decode_convention: str = DECODE_CONVENTION
    # Which RandAugment op table replays the records (`dalidr.augment.conventions`).
    op_set: str = OP_SET
    # The teacher's identity, one entry per ensemble member (recorded by `dalidr reinforce`);
    # None: not recorded (an upgraded store, or one written by other tools), which trains
    # normally but cannot be resumed by `dalidr reinforce`.
    teacher_members: tuple[MemberIdentity, ...] | None = None
    # Schema version this config was written with.
    schema_version: int = field(default=SCHEMA_VERSION)

    def __post_init__(self) -> None:
        check = functools.partial(OptionError.unless, kind="store option")

        check(isinstance(self.recipe, Recipe), "recipe", type(self.recipe).__name__, "a Recipe")
        check(0 <= self.seed < 2**63, "seed", self.seed, "0 <= seed < 2**63")
        check(1 <= self.slots <= 65535, "slots", self.slots, "1..65535")
        check(1 <= self.num_classes <= MAX_CLASSES, "num_classes", self.num_classes,
              f"1..{MAX_CLASSES}")
        check(1 <= self.k <= min(self.num_classes, 255), "k", self.k,
              f"1..{min(self.num_classes, 255)}")
        check(1 <= self.block_size <= 1 << 20, "block_size", self.block_size, "1..1048576")
        check(1 <= self.slot_group <= self.slots, "slot_group", self.slot_group,
              f"1..slots ({self.slots})")
        check(15 <= self.prob_levels <= 255, "prob_levels", self.prob_levels, "15..255")
        check(isinstance(self.compression, Compression), "compression", self.compression,
              str([c.value for c in Compression]))
        check(isinstance(self.teacher, str), "teacher", self.teacher, "a string")
        members = self.teacher_members
        check(members is None or (isinstance(members, tuple) and len(members) > 0 and all(
            isinstance(m, MemberIdentity) for m in members)), "teacher_members", members,
            "None or a non-empty tuple of MemberIdentity")

    @property
    def num_groups(self) -> int:
        """Slot groups per sample; the last one is short when slot_group does not divide slots."""
        return -(-self.slots // self.slot_group)

    def group_slots(self, group: int) -> range:
        """The slots of one slot group."""
        start = group * self.slot_group
        return range(start, min(start + self.slot_group, self.slots))

    def to_attrs(self) -> dict[str, Any]:
        """A JSON-able dict; key order is fixed so every creator writes identical metadata."""
        return {
            "schema_version": self.schema_version,
            "recipe": self.recipe.to_dict(),
            "teacher": self.teacher,
            "teacher_members": (None if self.teacher_members is None
                                else [m.to_attrs() for m in self.teacher_members]),
            "seed": self.seed,
            "slots": self.slots,
            "k": self.k,
            "num_classes": self.num_classes,
            "block_size": self.block_size,
            "slot_group": self.slot_group,
            "prob_levels": self.prob_levels,
            "compression": self.compression.value,
            "decode_convention": self.decode_convention,
            "op_set": self.op_set,
        }

    @classmethod
    def from_attrs(cls, attrs: Any, where: str) -> StoreConfig:
        """The config saved by `to_attrs`; StoreError naming `where` if it is not one."""
        if not isinstance(attrs, dict) or "schema_version" not in attrs:
            raise StoreError(f"{where} is not a dalidr reinforcement store (no {ATTRS_KEY!r} "
                             "attributes with a schema_version)")
        version = attrs["schema_version"]
        if version != SCHEMA_VERSION:
            if isinstance(version, int) and not isinstance(version, bool) and (
                    version > SCHEMA_VERSION):
                hint = "written by a newer dalidr; upgrade dalidr to read it"
            elif version == UPGRADABLE_VERSION:
                hint = f"of the previous schema: {upgrade_hint(where)}"
            else:
                hint = (f"of an older schema (made before dalidr recorded its decoding "
                        f"conventions: EXIF-rotated decoding, OpenCV's Equalize); {RECREATE_HINT}")
            raise StoreError(f"{where} has store schema version {version!r}, this dalidr reads "
                             f"version {SCHEMA_VERSION}: the store is {hint}")
        for key, implemented in (("decode_convention", DECODE_CONVENTION), ("op_set", OP_SET)):
            if attrs.get(key) != implemented:
                raise StoreError(f"{where} was made under {key} {attrs.get(key)!r}; this dalidr "
                                 f"replays {implemented!r} only, so the student would not see "
                                 f"what the teacher labelled: {RECREATE_HINT}")
        try:
            data = dict(attrs)
            data["recipe"] = Recipe.from_dict(dict(data["recipe"]))
            data["compression"] = Compression(data["compression"])
            members = data.get("teacher_members", "missing")
            if members == "missing":
                raise KeyError("teacher_members")
            data["teacher_members"] = (None if members is None else tuple(
                MemberIdentity.from_attrs(m) for m in members))
            return cls(**data)
        except (KeyError, TypeError, ValueError, AttributeError, OptionError) as exc:
            raise StoreError(f"{where} has malformed store attributes: {exc}") from exc
