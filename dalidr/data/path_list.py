"""A compact, immutable list of relative paths: one UTF-8 byte array and int64 offsets.

At ImageNet's scale a tuple of 1.28M Python strings costs about 100 MB per process, and a
list of `pathlib.Path` objects three times that, in every rank. `PathList` holds the same
paths in two numpy arrays (about 40 MB for ImageNet), is what the dataset listing, the store's
manifest and the loaders share, and is stored as it is (`manifest/path_bytes`,
`manifest/path_offsets`). It behaves as a `Sequence[str]`; comparing two lists is vectorised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

__all__ = ["PathList", "RootedPaths"]


class PathList(Sequence[str]):
    """Relative paths as `data[offsets[i]:offsets[i + 1]].decode()`; see the module docstring."""

    __slots__ = ("data", "offsets")

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        # data: uint8 [total bytes]; offsets: int64 [N + 1], offsets[0] == 0, non-decreasing.
        self.data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
        if (self.offsets.size == 0 or self.offsets[0] != 0
                or self.offsets[-1] != self.data.size or (np.diff(self.offsets) < 0).any()):
            raise ValueError("path offsets do not index the path bytes")

    @classmethod
    def from_strings(cls, paths: Iterable[str]) -> PathList:
        if isinstance(paths, PathList):
            return paths
        strings = paths if isinstance(paths, (list, tuple)) else list(paths)
        joined = "".join(strings).encode("utf-8")
        offsets = np.zeros(len(strings) + 1, dtype=np.int64)
        if strings:
            # ASCII (the common case): byte lengths are string lengths, no per-path encode.
            ascii_only = len(joined) == sum(map(len, strings))
            lengths = map(len, strings) if ascii_only else (
                len(p.encode("utf-8")) for p in strings)
            np.cumsum(np.fromiter(lengths, np.int64, len(strings)), out=offsets[1:])
        return cls(np.frombuffer(joined, dtype=np.uint8), offsets)

    @classmethod
    def concatenate(cls, parts: Sequence[PathList]) -> PathList:
        """One list of every path of `parts`, in order."""
        if not parts:
            return cls.from_strings([])
        data = np.concatenate([p.data for p in parts])
        starts = np.cumsum([0] + [p.data.size for p in parts[:-1]])
        offsets = np.concatenate([np.zeros(1, np.int64)] + [
            p.offsets[1:] + start for p, start in zip(parts, starts, strict=True)])
        return cls(data, offsets)

    def __len__(self) -> int:
        return self.offsets.size - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> PathList: ...

    def __getitem__(self, index: int | slice) -> str | PathList:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return PathList.from_strings(self[i] for i in range(start, stop, step))
            stop = max(stop, start)
            lo, hi = int(self.offsets[start]), int(self.offsets[stop])
            return PathList(self.data[lo:hi], self.offsets[start:stop + 1] - lo)
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"path index {index} is outside 0..{len(self) - 1}")
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        raw, offsets = self.data.tobytes(), self.offsets.tolist()
        for a, b in zip(offsets[:-1], offsets[1:], strict=True):
            yield raw[a:b].decode("utf-8")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PathList):
            return self.first_difference(other) is None and len(self) == len(other)
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other,
                                                                              strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(p) for p in self[:3])
        return f"PathList([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"

    def first_difference(self, other: PathList) -> int | None:
        """The first index where the two lists differ (vectorised), or None if equal up to
        the shorter length."""
        n = min(len(self), len(other))
        a_off, b_off = self.offsets[:n + 1], other.offsets[:n + 1]
        lengths_differ = np.flatnonzero(np.diff(a_off) != np.diff(b_off))
        first = int(lengths_differ[0]) if lengths_differ.size else n
        # Up to `first` every entry has the same length, so the bytes line up.
        end = int(a_off[first])
        differ = np.flatnonzero(self.data[:end] != other.data[:end])
        if differ.size:
            first = min(first, int(np.searchsorted(a_off, differ[0], side="right")) - 1)
        return None if first >= n else first

    def digest(self) -> bytes:
        """SHA-256 of the list (count, offsets and bytes)."""
        h = hashlib.sha256(np.int64(len(self)).tobytes())
        h.update(self.offsets.astype("<i8").tobytes())
        h.update(self.data.tobytes())
        return h.digest()

    def unsafe_index(self) -> int | None:
        """The first path that is not a safe relative path (empty, absolute, with a '..' or
        NUL component, or split inside a UTF-8 character), or None; vectorised."""
        if len(self) == 0:
            return None
        data, starts, ends = self.data, self.offsets[:-1], self.offsets[1:]
        bad = ends == starts
        inside = starts < data.size
        first = np.zeros(len(self), np.uint8)
        first[inside] = data[starts[inside]]
        bad |= (first == ord("/")) | ((first & 0xC0) == 0x80)
        # '..' as a whole component: preceded by a start or '/', followed by an end or '/'.
        dots = np.flatnonzero((data[:-1] == ord(".")) & (data[1:] == ord("."))) if data.size else (
            np.zeros(0, np.int64))
        if dots.size:
            owner = np.searchsorted(self.offsets, dots, side="right") - 1
            before_ok = (dots == starts[owner]) | (data[np.maximum(dots - 1, 0)] == ord("/"))
            after = dots + 2
            after_ok = (after == ends[owner]) | (
                data[np.minimum(after, data.size - 1)] == ord("/"))
            bad[owner[before_ok & after_ok]] = True
        nul = np.flatnonzero(data == 0)
        if nul.size:
            bad[np.searchsorted(self.offsets, nul, side="right") - 1] = True
        try:
            data.tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            bad[int(np.searchsorted(self.offsets, exc.start, side="right")) - 1] = True
        found = np.flatnonzero(bad)
        return int(found[0]) if found.size else None

    def index_of(self) -> dict[str, int]:
        """path -> index (builds a dict: use for small lookups only)."""
        return {p: i for i, p in enumerate(self)}

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes)


class RootedPaths(Sequence[Path]):
    """`root / paths[i]` on demand: the files of a dataset without a Path object per file."""

    __slots__ = ("root", "paths")

    def __init__(self, root: str | Path, paths: PathList) -> None:
        self.root, self.paths = Path(root), PathList.from_strings(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.root / p for p in self.paths[index]]
        return self.root / self.paths[int(index)]
