"""One rank's epoch read in pieces, first batches first, each block of the store once.

A training loop needs its epoch's first batch long before its last, but reading a rank's whole
epoch of records and top-k first (7 µs a view: 12.7 s before batch 0 at 13.7M samples, world 8)
made it wait for all of it. `EpochPieces` cuts the rank's plan (`store.plan`, still computed
whole: 0.4 µs a view) into pieces of consecutive steps, small first, and reads a piece as soon
as the one before it is read, so batch 0 waits only for the blocks its own views need.

Why not pieces that each read their own views and nothing more. The plan's order within a rank
has no locality in time: every batch interleaves the P / world canonical pieces of the rank
(`store.plan`), and each of those is a Feistel-shuffled run of one or two blocks. So batch 0
alone touches 64 of the rank's 419 blocks (13.7M samples, world 8, batch 64), 16 batches touch
406, and every block has views spread over the whole epoch. Reading only a piece's views would
decode nearly every chunk of the rank once per piece. Instead, the first piece that needs a
block decodes that block's chunk once and keeps every view of the block the rank's epoch uses
(the per-block cache below): the store is read exactly as a whole-epoch read reads it (the
same chunks, once each: `bench/store.py`'s read amplification is unchanged), in the order the
training loop first needs them. The cost is memory: the cache grows to one epoch of decoded
views (~100 B a view for RRC+RA/RE, top-10), not a few pieces. What bounds it to one epoch is
the tail: the last 1/`TAIL` of the steps form one piece which, once asked for, is copied out and
the cache released, so the next epoch is read while the tail is served (a reader two epochs deep
would hold two caches; one that waited for the boundary would stall the training loop while the
next epoch's first batches read most of its blocks).

The cache is laid out block after block in the order blocks are first needed (within a block,
by step), so it fills front to back: untouched pages of it are not resident, and a piece's new
blocks are one contiguous range of it, read with `StoreReader.read_views` 32 blocks at a time
(which groups them into runs of consecutive blocks, as a whole-epoch read does). Blocks taken in
first-need order seldom form such runs where a rank owns most blocks (world 1): its epoch then
takes one zarr call per block and array instead of per run, ~30 % longer at 1.28M samples,
in the background; a rank of a larger world owns scattered blocks either way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from dalidr.augment.records import record_dtype
from dalidr.errors import OptionError
from store.plan import EpochPlan
from store.reader import EpochData, StoreReader, TopKTargets

__all__ = ["PieceSizes", "EpochPieces", "piece_bounds", "TAIL"]

# The epoch's last 1/TAIL steps are its tail piece (see the module docstring).
TAIL = 8
# Blocks decoded by one `read_views` call: bounds its temporaries (~4 MB per block of 4096
# samples), as a whole-epoch read bounds its runs.
_BLOCKS_AT_ONCE = 32


@dataclass(frozen=True)
class PieceSizes:
    """How an epoch is cut into pieces, in plan steps (views of one rank)."""

    # Steps of the first piece, the one batch 0 waits for; every piece boundary is a multiple
    # of it from the piece's entry step, so a loader passes its batch size (no batch spans two
    # pieces).
    first: int = 256
    # Pieces grow from `first` (first, first, 2 first, 4 first, ...) up to this many steps
    # (rounded down to a multiple of `first`). They bound how much the loader copies at once.
    largest: int = 1 << 16

    def __post_init__(self) -> None:
        if self.first < 1 or self.largest < self.first:
            raise OptionError(f"piece sizes first={self.first}, largest={self.largest}: need "
                              "1 <= first <= largest")


def piece_bounds(entry: int, stop: int, sizes: PieceSizes) -> np.ndarray:
    """Boundaries [entry, ..., stop] of the pieces of steps entry..stop-1: growing from
    `sizes.first` to `sizes.largest`, then the tail (the last ceil((stop - entry) / TAIL)
    steps, its start rounded down to a multiple of `first` from `entry`)."""
    first = sizes.first
    largest = sizes.largest // first * first
    tail = entry + (stop - entry - -(-(stop - entry) // TAIL)) // first * first
    bounds, size = [entry], first
    while bounds[-1] < tail:
        bounds.append(min(bounds[-1] + size, tail))
        if len(bounds) > 2:
            size = min(2 * size, largest)
    if bounds[-1] < stop:
        bounds.append(stop)
    return np.asarray(bounds, dtype=np.int64)


class EpochPieces:
    """One rank's epoch from plan step `entry` on (a resumed loader enters mid-epoch), read in
    pieces: `read_next` reads the next piece's new blocks (a background thread calls it),
    `piece(k)` copies piece k out once read. Steps before `entry` are never read."""

    def __init__(self, reader: StoreReader, plan: EpochPlan, entry: int,
                 sizes: PieceSizes) -> None:
        if not 0 <= entry <= len(plan):
            raise OptionError(f"piece entry step {entry}; the plan has {len(plan)} steps")
        self.reader, self.plan, self.entry = reader, plan, entry
        # Piece k holds steps bounds[k]..bounds[k+1]-1.
        self.bounds = piece_bounds(entry, len(plan), sizes)
        cfg = reader.config
        n = len(plan) - entry
        blocks = plan.samples[entry:] // cfg.block_size
        # Each block's first step from the entry, and the blocks in the order of it: the order
        # they are read in (blocks a later piece needs first are read by that piece).
        first_step = np.full(reader.num_blocks, n, dtype=np.int64)
        np.minimum.at(first_step, blocks, np.arange(n, dtype=np.int64))
        by_need = np.argsort(first_step, kind="stable")[:np.count_nonzero(first_step < n)]
        rank = np.zeros(reader.num_blocks, dtype=np.int64)
        rank[by_need] = np.arange(len(by_need))
        # Blocks piece k is the first to need: ranks _piece_blocks[k].._piece_blocks[k+1]-1.
        self._piece_blocks = np.searchsorted(first_step[by_need], self.bounds - entry)
        # The cache holds block after block in that order, each block's views in step order
        # (a stable sort; 16-bit keys sort by radix): _order[i] is the step (from the entry)
        # at cache position i, _where its inverse; block of rank r at _block_starts[r]...
        key = rank[blocks].astype(np.uint16 if len(by_need) <= 1 << 16 else np.int64)
        del blocks, first_step, rank
        index = np.int32 if n < 2**31 else np.int64
        self._order = np.argsort(key, kind="stable").astype(index)
        self._where = np.empty(n, dtype=index)
        self._where[self._order] = np.arange(n, dtype=index)
        self._block_starts = np.concatenate([[0], np.cumsum(np.bincount(
            key, minlength=len(by_need)))]).astype(np.int64)
        del key
        # The cache: np.empty leaves pages untouched (not resident) until a piece fills them.
        self._records: np.ndarray | None = np.empty(n, dtype=record_dtype(cfg.recipe))
        self._classes: np.ndarray | None = np.empty((n, cfg.k), dtype=np.int32)
        self._probs: np.ndarray | None = np.empty((n, cfg.k), dtype=np.float32)
        self._read = 0  # pieces whose blocks are in the cache
        self._tail: EpochData | None = None  # the last piece, once copied out
        self._lock = threading.Lock()
        if not len(self):  # entered at the plan's end: nothing to read or hold
            self._records = self._classes = self._probs = None

    @property
    def key(self) -> tuple[int, int]:
        """(epoch, global start position) of the plan."""
        return self.plan.epoch, self.plan.start

    def __len__(self) -> int:
        """Pieces."""
        return len(self.bounds) - 1

    @property
    def pieces_read(self) -> int:
        """Pieces whose views are ready to copy out."""
        return self._read

    @property
    def released(self) -> bool:
        """Whether the cache is released (the tail was copied out; only it can be served)."""
        return self._records is None

    @property
    def held_views(self) -> int:
        """Decoded views this epoch holds besides the pieces copied out before the tail: those
        in the cache, or the tail's once the cache is released."""
        if self._tail is not None:
            return len(self._tail)
        return 0 if self.released else int(self._block_starts[self._piece_blocks[self._read]])

    def piece_of(self, step: int) -> int:
        """The piece holding plan step `step` (>= entry)."""
        if not self.entry <= step < len(self.plan):
            raise OptionError(f"step {step} of epoch {self.plan.epoch} is outside "
                              f"{self.entry}..{len(self.plan) - 1}")
        return int(np.searchsorted(self.bounds, step, side="right")) - 1

    def serves(self, step: int) -> bool:
        """Whether `step` can still be served (before the release: any from the entry on;
        after it, the tail's)."""
        if not self.entry <= step < len(self.plan):
            return False
        return not self.released or self.piece_of(step) == len(self) - 1

    def read_next(self) -> None:
        """Read the next piece: decode the blocks it is the first to need (each keeps all the
        epoch's views of its block in the cache), `_BLOCKS_AT_ONCE` at a time."""
        k = self._read
        if k >= len(self):
            return
        first, stop = int(self._piece_blocks[k]), int(self._piece_blocks[k + 1])
        for r in range(first, stop, _BLOCKS_AT_ONCE):
            lo = int(self._block_starts[r])
            hi = int(self._block_starts[min(r + _BLOCKS_AT_ONCE, stop)])
            assert self._records is not None and self._classes is not None
            assert self._probs is not None
            steps = self._order[lo:hi].astype(np.int64) + self.entry
            records, targets = self.reader.read_views(self.plan.samples[steps],
                                                      self.plan.slots[steps])
            self._records[lo:hi], self._classes[lo:hi] = records, targets.classes
            self._probs[lo:hi] = targets.probs
        self._read = k + 1

    def piece(self, k: int) -> EpochData:
        """Piece k, copied out of the cache (the caller owns its arrays); it must have been
        read. Copying out the last piece (the tail) releases the cache; asking for the tail
        again returns the same copy."""
        with self._lock:
            if k == len(self) - 1 and self._tail is not None:
                return self._tail
            if not k < self._read or self._records is None:
                raise OptionError(f"piece {k} of epoch {self.plan.epoch} is not read"
                                  if self._records is not None else
                                  f"piece {k} of epoch {self.plan.epoch} was released")
            steps = range(int(self.bounds[k]), int(self.bounds[k + 1]))
            at = self._where[steps.start - self.entry:steps.stop - self.entry]
            assert self._classes is not None and self._probs is not None
            data = EpochData(self.plan, self._records[at],
                             TopKTargets(self._classes[at], self._probs[at]), steps)
            if k == len(self) - 1:
                self._tail = data
                self._records = self._classes = self._probs = None
            return data
