"""Epoch plans: which sample each rank trains on, in which order, with which stored view.

The paper trains epoch e on one stored view per sample, drawn at random (Sec. 2.2). dalidr makes
the draw a pure function of (seed, epoch, position), evaluated only where a rank needs it, so a
plan costs O(N / world) time and memory per rank and no global array exists:

- Views. Slots are cut into groups of `slot_group` (the store's chunking). Each cycle of `slots`
  epochs visits the groups in a random order, spending as many epochs in a group as it has
  slots; within a group every sample walks its own random permutation of the group's slots. So
  every slot of a sample is used exactly once per cycle (no repeats before all are used), each
  epoch's view is uniform over the slots, and all samples of an epoch use one slot group, so an
  epoch decodes one chunk per block and array: read amplification is the group size, not the
  number of slots. The slot depends on (epoch, sample) only, never on the world size.
- One global order per epoch, the same at every world size. Blocks are shuffled and laid end to
  end (the sequence S); S is cut into `P` canonical pieces, P the largest power of two not above
  the number of blocks (a function of the store alone). Each piece is shuffled by a keyed
  Feistel network with cycle walking (a bijection of [0, len) evaluated at any position), and
  the global order G interleaves the pieces: position j is element j // P of piece
  bitreverse(j mod P).
- Ranks serve a prefix. From the epoch's start position p, rank r of `world` serves positions
  p + r, p + r + world, ...: its slice of every global batch. The samples served so far are
  therefore always a prefix of G, so a state saved at world W (epoch and global position) is
  resumed at any world W' with nothing served twice or skipped (`load_state_dict`). Read
  locality survives: when world divides P, rank r's positions fall in the pieces whose labels
  share their low bits, and the bit reversal makes those one contiguous run of S: 1/world of
  the store's blocks, as a contiguous slice of shuffled blocks gave before. Other world sizes
  read 1/gcd(world, P). A batch of one rank mixes P / world pieces; with world 1 it mixes all.
- Skipped samples (`reinforce --skip-bad`) are taken out before anything else: positions run
  over the N' served samples, mapped back to sample indices by one search in the sorted list of
  skipped ones, so every rank runs the same number of steps and no sample is dropped for them.
- Uneven ends. When world does not divide what is left, `UnevenShards` decides: PAD wraps around
  to the start of G so every rank gets ceil(left / world), as PyTorch's DistributedSampler pads;
  DROP leaves out the last (left mod world) positions.

Random numbers come from a counter-based hash (splitmix64's finaliser) of the seed, a stream id
and the indices, so a plan depends on nothing else: not on numpy's generator versions, not on
which rank computes it, not on earlier epochs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from dalidr.augment.hashing import keyed as _keys
from dalidr.errors import OptionError

__all__ = ["UnevenShards", "PlanSpec", "EpochPlan", "plan_epoch", "check_plan", "rank_length",
           "canonical_pieces", "epoch_order"]

_STREAM_GROUPS, _STREAM_SLOTS, _STREAM_BLOCKS, _STREAM_PIECE = 101, 102, 103, 105
_FEISTEL_ROUNDS = 4
# Positions a plan evaluates at once (bounds its temporary memory to ~100 MB).
_POSITIONS_AT_ONCE = 1 << 20


class UnevenShards(enum.Enum):
    """What to do when the world size does not divide the samples left in an epoch."""

    PAD = "pad"  # every rank gets ceil(left / world); a few samples appear twice per epoch
    DROP = "drop"  # every rank gets floor(left / world); a few samples sit out the epoch


@dataclass(frozen=True)
class PlanSpec:
    """What an epoch plan depends on besides (epoch, rank, world, start)."""

    # Samples in the dataset.
    num_samples: int
    # Stored views per sample and views per chunk (the store's slots and slot_group).
    slots: int
    slot_group: int
    # Samples per block (the store's block_size): the unit of read locality.
    block_size: int
    # Seed of the plan (the store's seed).
    seed: int
    # Policy for a world size that does not divide the samples left.
    uneven: UnevenShards = UnevenShards.PAD

    def __post_init__(self) -> None:
        for name, low in (("num_samples", 1), ("slots", 1), ("slot_group", 1), ("block_size", 1),
                          ("seed", 0)):
            if getattr(self, name) < low:
                value = getattr(self, name)
                raise OptionError(f"plan option {name!r} is {value}; must be >= {low}")
        if self.slot_group > self.slots:
            raise OptionError(f"plan option 'slot_group' is {self.slot_group}; must be <= slots "
                              f"({self.slots})")
        if not isinstance(self.uneven, UnevenShards):
            raise OptionError.choice("uneven", self.uneven, [u.value for u in UnevenShards])


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """One rank's epoch from a global position on: samples in training order and their views."""

    epoch: int
    rank: int
    world: int
    # Sample indices in the order the rank trains on them (int64).
    samples: np.ndarray
    # The stored view (slot) of each of those samples (int32); all lie in one slot group.
    slots: np.ndarray
    # The slot group this epoch reads.
    group: int
    # The global position the plan starts at (0: the epoch's beginning).
    start: int = 0
    # Samples the epoch serves in all (the dataset less its skipped samples).
    served: int = 0

    def __len__(self) -> int:
        return len(self.samples)


def _shuffled(seed: int, stream: int, count: int, *context: int) -> np.ndarray:
    """A random permutation of range(count) keyed by (seed, stream, context)."""
    # 64-bit keys are distinct (ties have probability ~count^2 / 2^64), so any sort agrees.
    return np.argsort(_keys(seed, stream, *context, np.arange(count, dtype=np.uint64)))


def _epoch_group(spec: PlanSpec, epoch: int) -> tuple[int, int, int]:
    """(slot group, its size, position within it) that `epoch` uses."""
    cycle, step = divmod(epoch, spec.slots)
    num_groups = -(-spec.slots // spec.slot_group)
    sizes = np.minimum(spec.slot_group, spec.slots - spec.slot_group * np.arange(num_groups))
    order = _shuffled(spec.seed, _STREAM_GROUPS, num_groups, cycle)
    ends = np.cumsum(sizes[order])
    j = int(np.searchsorted(ends, step, side="right"))
    group = int(order[j])
    return group, int(sizes[group]), step - int(ends[j] - sizes[group])


def _sample_slots(spec: PlanSpec, epoch: int, samples: np.ndarray) -> tuple[np.ndarray, int]:
    """The slot each sample uses in `epoch`, and the epoch's slot group."""
    group, size, position = _epoch_group(spec, epoch)
    cycle = epoch // spec.slots
    keys = _keys(spec.seed, _STREAM_SLOTS, cycle, group, samples[:, None],
                 np.arange(size, dtype=np.uint64)[None, :])
    # Each sample's permutation of the group's slots is the argsort of its keys.
    offset = np.argsort(keys, axis=1)[:, position]
    return (group * spec.slot_group + offset).astype(np.int32), group


def canonical_pieces(served: int, block_size: int) -> int:
    """P, the number of pieces an epoch's order interleaves: the largest power of two not above
    the number of blocks, so each piece spans at least a block. Independent of the world."""
    blocks = -(-served // block_size)
    return 1 << (max(blocks, 1).bit_length() - 1)


def _bit_reverse(values: np.ndarray, bits: int) -> np.ndarray:
    out = np.zeros_like(values)
    for b in range(bits):
        out |= ((values >> b) & 1) << (bits - 1 - b)
    return out


def _feistel(seed: int, epoch: int, piece: np.ndarray, x: np.ndarray, domain: np.ndarray,
             half: int) -> np.ndarray:
    """A keyed bijection of [0, domain[i]) applied to x[i], one permutation per (epoch, piece):
    a balanced Feistel network on 2 * `half` bits (fixed per epoch, from its longest piece, so
    a piece's permutation never depends on which other pieces are evaluated with it), with cycle
    walking (re-applied until the value falls inside the domain)."""
    mask = np.uint64((1 << half) - 1)

    def rounds(v: np.ndarray, pieces: np.ndarray) -> np.ndarray:
        left, right = v >> np.uint64(half), v & mask
        for i in range(_FEISTEL_ROUNDS):
            left, right = right, left ^ (_keys(seed, _STREAM_PIECE, epoch, pieces, i, right) & mask)
        return (left << np.uint64(half)) | right

    value = rounds(x.astype(np.uint64), piece)
    outside = np.flatnonzero(value >= domain)
    while outside.size:  # each walk stays on x's cycle, which returns inside the domain
        value[outside] = rounds(value[outside], piece[outside])
        outside = outside[value[outside] >= domain[outside]]
    return value.astype(np.int64)


@dataclass(frozen=True, eq=False)
class _EpochOrder:
    """What evaluating one epoch's global order needs, built once per plan: O(blocks) arrays."""

    spec: PlanSpec
    epoch: int
    pieces: int  # P, a power of two
    lengths: np.ndarray  # [P] piece lengths, in S order
    piece_starts: np.ndarray  # [P] where each piece begins in S
    half: int  # the Feistel network's half width in bits
    blocks: np.ndarray  # the served samples' blocks in shuffled order
    block_starts: np.ndarray  # [blocks + 1] where each of them begins in S

    @classmethod
    def build(cls, spec: PlanSpec, epoch: int, served: int) -> _EpochOrder:
        b = spec.block_size
        pieces = canonical_pieces(served, b)
        per_piece, longer = divmod(served, pieces)
        # The piece labelled s (positions j with j mod P == s) is S-piece bitreverse(s), and
        # the first `longer` labels hold one element more.
        labels = np.arange(pieces, dtype=np.int64)
        lengths = np.full(pieces, per_piece, np.int64)
        lengths[_bit_reverse(labels, pieces.bit_length() - 1)] += labels < longer
        longest = per_piece + (longer > 0)
        half = max(1, (longest - 1).bit_length() + 1) // 2
        blocks = _shuffled(spec.seed, _STREAM_BLOCKS, -(-served // b), epoch)
        block_starts = np.concatenate([[0], np.cumsum(np.minimum(b, served - blocks * b))])
        return cls(spec, epoch, pieces, lengths, np.concatenate([[0], np.cumsum(lengths)[:-1]]),
                   half, blocks, block_starts)

    def at(self, positions: np.ndarray) -> np.ndarray:
        """The served-sample index (0..served-1) at each global position."""
        turn, label = np.divmod(positions.astype(np.int64), self.pieces)
        piece = _bit_reverse(label, self.pieces.bit_length() - 1)
        within = _feistel(self.spec.seed, self.epoch, piece, turn, self.lengths[piece],
                          self.half)
        in_s = self.piece_starts[piece] + within
        which = np.searchsorted(self.block_starts, in_s, side="right") - 1
        return self.blocks[which] * self.spec.block_size + (in_s - self.block_starts[which])


def epoch_order(spec: PlanSpec, epoch: int, positions: np.ndarray, served: int) -> np.ndarray:
    """G(positions): the served-sample index (0..served-1) at each global position of `epoch`'s
    order (see the module docstring); positions must lie in [0, served)."""
    return _EpochOrder.build(spec, epoch, served).at(positions)


def rank_length(served: int, start: int, world: int, uneven: UnevenShards) -> int:
    """How many samples each rank serves from global position `start` to the epoch's end."""
    left = served - start
    return -(-left // world) if uneven is UnevenShards.PAD else left // world


def check_plan(spec: PlanSpec, epoch: int, rank: int, world: int, *, start: int = 0,
               skipped: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """OptionError naming what is wrong with a plan's arguments, before any work; else
    (skipped as int64, samples the epoch serves, samples this rank serves)."""
    if epoch < 0:
        raise OptionError(f"epoch is {epoch}; must be >= 0")
    if world < 1 or not 0 <= rank < world:
        raise OptionError(f"rank {rank} of world size {world}: need world >= 1, 0 <= rank < world")
    skipped = np.zeros(0, np.int64) if skipped is None else np.asarray(skipped, np.int64)
    if skipped.size and (skipped.ndim != 1 or skipped[0] < 0 or skipped[-1] >= spec.num_samples
                         or (np.diff(skipped) <= 0).any()):
        raise OptionError(f"skipped samples must be sorted, distinct indices in 0.."
                          f"{spec.num_samples - 1}; got {skipped[:8].tolist()}...")
    served = spec.num_samples - len(skipped)
    if served < 1:
        raise OptionError(f"every one of the {spec.num_samples} samples is skipped; nothing "
                          "to plan")
    if not 0 <= start <= served:
        raise OptionError(f"plan start position is {start}; must be in 0..{served} (the "
                          f"samples epoch {epoch} serves)")
    per_rank = rank_length(served, start, world, spec.uneven)
    if per_rank == 0 and start == 0:
        raise OptionError(f"world size {world} leaves no sample per rank of the {served} "
                          f"samples with uneven={spec.uneven.value!r}")
    return skipped, served, per_rank


def plan_epoch(spec: PlanSpec, epoch: int, rank: int = 0, world: int = 1, *, start: int = 0,
               skipped: np.ndarray | None = None) -> EpochPlan:
    """The plan of `rank` (of `world`) for `epoch` from global position `start` on, leaving
    out the sorted sample indices `skipped`; see the module docstring."""
    skipped, served, per_rank = check_plan(spec, epoch, rank, world, start=start,
                                           skipped=skipped)
    samples = np.empty(per_rank, np.int64)
    slots = np.empty(per_rank, np.int32)
    group = _epoch_group(spec, epoch)[0]
    order_of = _EpochOrder.build(spec, epoch, served)
    compacted = skipped - np.arange(len(skipped))
    # In pieces, so the hashing's temporaries (~100 B per position) stay bounded: what a rank
    # keeps is 12 B per planned sample.
    for lo in range(0, per_rank, _POSITIONS_AT_ONCE):
        steps = np.arange(lo, min(lo + _POSITIONS_AT_ONCE, per_rank), dtype=np.int64)
        order = order_of.at((start + rank + world * steps) % served)
        # The u-th served sample: u plus the skipped samples at or before it.
        part = order + np.searchsorted(compacted, order, side="right")
        samples[steps] = part
        slots[steps] = _sample_slots(spec, epoch, part)[0]
    return EpochPlan(epoch, rank, world, samples, slots, group, start, served)
