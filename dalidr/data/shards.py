"""Webdataset tar shards as a dataset: naming them, indexing them once, checking them.

A shard spec names the shards in order: one `.tar`, a brace pattern
(`/data/in1k/train-{0000..1023}.tar`: ranges, zero-padded when a bound is, and `{a,b}` lists),
several of either joined by `::` (or a Python list), and optionally a last element
`label=json:KEY` (labels from that key of each sample's `.json` member instead of its `.cls`
member). `list_dataset` hands such a spec here; anything else is a folder or a file list.

Samples. Members are grouped by webdataset key (the member name up to the first '.' of its
base name, consecutive members sharing a key form one sample, as DALI's `readers.webdataset`
and `wds2idx` group them; hidden names are passed over as they do). A sample's image is its one
member with an extension the folder listing accepts (recognised by content later, as for
files), named in the store's manifest by its member name: `dalidr pack` makes that the folder's
relative path, so the same images as a folder and as shards give the same manifest and
byte-identical stores. The sample order is the shards' order, then the order inside each.

Indexing reads headers only: `tarfile` iterated over a stream whose single reads are capped
(pax and GNU long-name headers are read, and no forged size sizes an allocation), or DALI's
`wds2idx` index (`v1.2`, with member names) beside the shard when one is there and not older
than it. Only each sample's label member is read (a few bytes). The index is cached
node-locally as the folder listing is (`dalidr.data.node_cache`), valid while every shard's
size and mtime are unchanged.

Speed (ImageNet-1k's shape: 1,024 shards of 1,251 samples, 2.56M members). Parsing a tar
header is `tarfile`'s Python, ~20 us a member, and holds the GIL: many local shards are
indexed in worker processes (`dalidr.data.index_workers`), a few, and remote ones, in threads.
Headers are read through a block stream (`ShardStream`: one `pread` serves every header of
small members, a page per member for large ones). A `wds2idx` index is read with numpy, no
Python object per member (~0.5 ms for 1,251 samples): its bytes split at spaces and newlines,
numbers converted digit column by digit column, names kept as offsets into the text and
checked there (each ends in '.' + its extension, a key before it, no '..'). What follows, from
headers or index, is array work too: members are grouped into samples by comparing
neighbouring keys (as bytes for an index); label members close together are read in one
request (one for a shard of small members) and converted at once; keys are hashed as arrays
for the duplicate check. Anything unusual (a hidden member, a sample without exactly one image
and one label, a suspicious name, a label that is not plain digits, an index with other white
space, control characters, or numbers past 18 digits) is left to the exact member-by-member
reading, which skips it or names it, so both readings accept and refuse the same shards.

webdataset's `wids` JSON shard index (`{"wids_version": 1, "shardlist": [{"url", "nsamples",
"filesize", "md5sum"}, ...]}`) is not read: it describes a dataset (which shards, how many
samples each), not a shard's members, so it holds no byte range and no label and would save
no header read; its counts would only repeat what the headers establish exactly, and its
md5sum means reading whole shards. A shard spec already names the shards.

Refused by name (DatasetError naming shard and member): a 0-byte shard, a shard that is not a
tar archive, a truncated shard (a member running past its end, or no end-of-archive blocks
after the last member), a link or other non-file member, a member name that is absolute or
has a `..` component or is not UTF-8, a sample without an image member or with two, a missing
or non-integer label, a duplicate key (within a shard or across shards), a compressed shard
(no byte-range reads into gzip). Trade-off: a well-formed `wds2idx` index is trusted as DALI
trusts it (its ranges must lie inside the shard); the manifest's hashes check the bytes.
"""

from __future__ import annotations

import json
import operator
import os
import re
import tarfile
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dalidr.augment.image_formats import IMAGE_EXTENSIONS
from dalidr.data.data_source import ShardFile, ShardSource, open_shard_file, url_scheme
from dalidr.data.index_workers import default_workers, index_in_processes, ranks_on_node
from dalidr.data.node_cache import cache_key, node_cache_dir, shared_arrays
from dalidr.data.path_list import PathList
from dalidr.errors import DatasetError

__all__ = ["ShardSpec", "ShardListing", "DataSpec", "is_shard_spec", "parse_shard_spec",
           "expand_braces", "list_shards", "index_shard", "tar_members", "split_key",
           "format_wds_index", "parse_wds_index", "SEPARATOR", "SHARDS_HELP", "MAX_SHARDS",
           "MAX_CLASSES"]

SEPARATOR = "::"
# How every command's --data help names shards.
SHARDS_HELP = ("or webdataset tar shards: a .tar, a brace pattern ('dir/train-{0000..0099}.tar'), "
               "several joined by '::', labels from each KEY.cls (or '::label=json:KEY')")
MAX_SHARDS = 1 << 20  # shards one spec may expand to
MAX_CLASSES = 1 << 20  # labels must be below this (a forged label must not size a class table)
_CLS_BYTES = 32  # a `.cls` member longer than this is not an integer label
_JSON_BYTES = 1 << 20
_COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst")
_LABEL = re.compile(r"^label=(cls|json:(.+))$")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_INDEX_VERSION = "v1.2"
_WORKERS = 8
# Local shards per worker process (fewer local shards than twice this: indexed in threads).
_SHARDS_PER_PROCESS = 16
# Label members less than this far apart are read together (one read, not one per member),
# within windows of at most this many bytes.
_LABEL_GAP = 1 << 14
_LABEL_WINDOW = 1 << 22
# What a `.cls` label may hold: ASCII digits and white space (anything else is named).
_ONLY_DIGITS_AND_SPACE = np.zeros(256, bool)
_ONLY_DIGITS_AND_SPACE[[*range(48, 58), 9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
# A '..' component of a member name.
_PARENT = re.compile(r"(?:^|/)\.\.(?:/|$)", re.MULTILINE)
# White space a wds2idx index read in bulk may not hold (other than ' ' and '\n').
_ODD_SPACE = re.compile(r"[^\S \n]")
# Numbers of an index, and a `.cls` label's digits, read in bulk: at most this many digits.
_MAX_DIGITS = 18
_POWERS = 10 ** np.arange(_MAX_DIGITS + 1, dtype=np.int64)
_MAX_EXT = 16  # longest extension of an index read in bulk
_PRIME = np.uint64(0x100000001B3)
_MIX = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class ShardSpec:
    """Webdataset shards, in order, and where their labels come from."""

    # Shard paths or URLs, or brace patterns of them, as given.
    patterns: tuple[str, ...]
    # None: each sample's label is its `.cls` member; else this key of its `.json` member.
    label_key: str | None = None

    @property
    def text(self) -> str:
        """The spec as one string (`list_dataset` takes it back)."""
        label = () if self.label_key is None else (f"label=json:{self.label_key}",)
        return SEPARATOR.join(self.patterns + label)

    def urls(self) -> tuple[str, ...]:
        """Every shard, braces expanded, local paths made absolute."""
        out: list[str] = []
        for pattern in self.patterns:
            out += expand_braces(pattern, MAX_SHARDS - len(out))
        urls = tuple(u if url_scheme(u) not in ("", "file") else os.path.abspath(
            u[len("file://"):] if url_scheme(u) == "file" else u) for u in out)
        for url in urls:
            lower = url.lower()
            if lower.endswith(_COMPRESSED):
                raise DatasetError(f"shard {url} is compressed: members of a compressed tar "
                                   "cannot be read by byte range; decompress it (gunzip) first")
            if not lower.endswith(".tar"):
                raise DatasetError(f"shard {url} is not a .tar file (a shard spec names "
                                   "webdataset .tar shards)")
        if len(set(urls)) != len(urls):
            twice = next(u for u in urls if urls.count(u) > 1)
            raise DatasetError(f"shard spec {self.text}: shard {twice} is named twice")
        return urls


# What may name a dataset: a folder or file-list root, or shards.
DataSpec = str | Path | ShardSpec | Sequence[str | Path]


def is_shard_spec(data: object) -> bool:
    """Whether `data` names tar shards (not a folder): a ShardSpec, a list, or a string with
    `::`, a URL scheme, or ending in `.tar` (or a compressed tar, refused later) or `}`."""
    if isinstance(data, ShardSpec | list | tuple):
        return True
    if not isinstance(data, str | os.PathLike):
        return False
    text = os.fspath(data)
    if not isinstance(text, str):
        return False
    if SEPARATOR in text or url_scheme(text):
        return True
    if os.path.isdir(text):
        return False
    return text.lower().endswith((".tar", "}") + _COMPRESSED)


def parse_shard_spec(data: DataSpec) -> ShardSpec:
    """`data` as a ShardSpec (see the module docstring for the string form)."""
    if isinstance(data, ShardSpec):
        return data
    if isinstance(data, list | tuple):
        parts = [os.fspath(p) for p in data]
    else:
        parts = os.fspath(data).split(SEPARATOR)  # type: ignore[arg-type]
    label_key = None
    patterns = []
    for part in (p.strip() for p in parts):
        match = _LABEL.match(part)
        if match:
            label_key = match.group(2)
        elif part:
            patterns.append(part)
    if not patterns:
        raise DatasetError(f"shard spec {data!r} names no shard")
    return ShardSpec(tuple(patterns), label_key)


def expand_braces(pattern: str, limit: int = MAX_SHARDS) -> list[str]:
    """Bash-style brace expansion: `{0000..0003}` (zero-padded when a bound is), `{a,b}`,
    nested and repeated; DatasetError past `limit` names."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, end = 0, -1
    for j in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[j], 0)
        if depth == 0:
            end = j
            break
    if end < 0:
        return [pattern]  # an unmatched brace is literal
    head, body, tail = pattern[:start], pattern[start + 1:end], pattern[end + 1:]
    tails = expand_braces(tail, limit)
    match = _RANGE.match(body)
    options: list[str]
    if match:
        a, b = int(match.group(1)), int(match.group(2))
        count = abs(b - a) + 1
        if count * len(tails) > limit:
            raise DatasetError(f"shard pattern {pattern!r} expands to {count * len(tails)} "
                               f"names, more than {limit}")
        padded = any(len(g.lstrip("-")) > 1 and g.lstrip("-").startswith("0")
                     for g in match.groups())
        width = max(len(match.group(1)), len(match.group(2))) if padded else 0
        step = 1 if b >= a else -1
        options = [str(v).zfill(width) for v in range(a, b + step, step)]
    else:
        items, depth, begin = [], 0, 0
        for j, c in enumerate(body):
            depth += {"{": 1, "}": -1}.get(c, 0)
            if c == "," and depth == 0:
                items.append(body[begin:j])
                begin = j + 1
        items.append(body[begin:])
        if len(items) == 1:
            return [head + "{" + o + "}" + t for o in expand_braces(body, limit) for t in tails]
        options = [o for item in items for o in expand_braces(item, limit)]
    out = [head + o + t for o in options for t in tails]
    if len(out) > limit:
        raise DatasetError(f"shard pattern {pattern!r} expands to more than {limit} names")
    return out


def split_key(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name, as webdataset and `wds2idx` split it (at the first
    '.' of the base name); None for a hidden name or one without an extension."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash:
        return None
    return name[:dot], name[dot + 1:]


# ------------------------------------------------------------------ one shard


@dataclass(frozen=True, eq=False)
class _Indexed:
    """One shard's samples: image member names, their byte ranges, labels, key hashes."""

    names: PathList
    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    keys: np.ndarray  # uint64 hash of each sample's key (duplicate check across shards)


def _check_name(url: str, name: str) -> None:
    if name.startswith("/") or ".." in name.split("/"):
        raise DatasetError(f"shard {url}: member name {name!r} is "
                           + ("absolute" if name.startswith("/") else "outside the archive "
                              "('..')") + "; refusing the shard")
    if "\0" in name:
        raise DatasetError(f"shard {url}: member name {name!r} holds a NUL byte")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DatasetError(f"shard {url}: member name {name!r} is not UTF-8") from exc


def tar_members(file: ShardFile) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of every regular member, from the tar headers alone."""
    url, size = file.url, file.nbytes
    members: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(fileobj=file.stream(), mode="r:") as tar:
            for m in tar:
                if m.isdir():
                    continue
                if not m.isfile() or m.issparse():
                    kind = "a link" if m.islnk() or m.issym() else f"of tar type {m.type!r}"
                    raise DatasetError(f"shard {url}: member {m.name!r} is {kind}, not a file; "
                                       "dalidr reads regular members only")
                end = m.offset_data + m.size
                if end > size:
                    raise DatasetError(
                        f"shard {url} is truncated: member {m.name!r} needs bytes "
                        f"{m.offset_data}..{end - 1} but the shard has {size} bytes")
                members.append((m.name, m.offset_data, m.size))
            tail = tar.offset
    except (tarfile.TarError, ValueError, OverflowError, UnicodeError) as exc:
        raise DatasetError(f"shard {url} is not a readable tar archive: {exc}") from exc
    _check_end(file, tail, members)
    return members


def _check_end(file: ShardFile, tail: int, members: list[tuple[str, int, int]]) -> None:
    """The archive must end with tar's end-of-archive blocks (1,024 zero bytes) where the
    headers stop: otherwise it was cut short, or a damaged header ended the listing early."""
    left = file.nbytes - tail
    after = f"after member {members[-1][0]!r}" if members else "at its start"
    if left <= 0:
        raise DatasetError(f"shard {file.url} is truncated: it ends {after} (offset {tail}) "
                           "without tar's end-of-archive blocks")
    data = file.read_ranges([tail], [min(left, 1024)], ["end of archive"])[0]
    if data.any():
        raise DatasetError(f"shard {file.url}: the bytes at offset {tail} ({after}) are "
                           "neither a tar header nor the end of the archive: damaged, or cut "
                           "and rejoined")
    if left < 1024:
        raise DatasetError(f"shard {file.url} is truncated: {left} of tar's 1,024 "
                           f"end-of-archive bytes remain {after}")


def format_wds_index(samples: Sequence[Sequence[tuple[str, int, int]]]) -> str:
    """DALI's `wds2idx` index (v1.2): per sample, `ext offset size name` of each member."""
    lines = [f"{_INDEX_VERSION} {len(samples)}"]
    for members in samples:
        parts = []
        for name, offset, size in members:
            split = split_key(name)
            if split is None or any(c.isspace() for c in name):
                raise DatasetError(f"member {name!r} cannot be written to a wds2idx index "
                                   "(hidden, no extension, or white space)")
            parts.append(f"{split[1]} {offset} {size} {name}")
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, eq=False)
class _Members:
    """A shard's members in order: names, their keys and extensions (None where a name is
    hidden or has no extension), and data byte ranges."""

    names: list[str]
    keys: list[str | None]
    exts: list[str | None]
    offsets: np.ndarray  # int64
    sizes: np.ndarray  # int64

    @classmethod
    def of(cls, members: Sequence[tuple[str, int, int]]) -> _Members:
        names = [m[0] for m in members]
        splits = [split_key(n) or (None, None) for n in names]
        return cls(names, [s[0] for s in splits], [s[1] for s in splits],
                   np.fromiter((m[1] for m in members), np.int64, len(members)),
                   np.fromiter((m[2] for m in members), np.int64, len(members)))


def parse_wds_index(text: str, shard_size: int) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of every member listed by a `wds2idx` v1.2 index; ValueError
    saying what is wrong (v1.1 lists no names, so it cannot name samples)."""
    members = _wds_index_members(text, shard_size)
    return list(zip(members.names, members.offsets.tolist(), members.sizes.tolist(),
                    strict=True))


def _wds_index_members(text: str, shard_size: int) -> _Members:
    """`parse_wds_index` as `_Members`: read in bulk (`_index_table`) when the index is usual,
    else line by line (which names what is wrong)."""
    table = _index_table(text, shard_size)
    if table is None:
        return _Members.of(_parse_wds_index_slowly(text, shard_size))
    return _Members.of(list(zip(table.names(), table.offsets.tolist(), table.sizes.tolist(),
                                strict=True)))


@dataclass(frozen=True, eq=False)
class _IndexTable:
    """A `wds2idx` index read as arrays: its UTF-8 bytes and, per member, where its name
    (`data[starts:ends]`) and key (`data[starts:key_ends]`, then '.' and the extension) lie in
    them, and the member's data byte range. No Python object per member."""

    data: np.ndarray  # uint8, the index text
    starts: np.ndarray  # int64 [M]
    key_ends: np.ndarray  # int64 [M]
    ends: np.ndarray  # int64 [M]
    offsets: np.ndarray  # int64 [M]
    sizes: np.ndarray  # int64 [M]

    def name(self, j: int) -> str:
        return self.data[self.starts[j]:self.ends[j]].tobytes().decode("utf-8")

    def names(self, at: np.ndarray | slice = slice(None)) -> PathList:
        return _gather(self.data, self.starts[at], self.ends[at])

    def keys(self, at: np.ndarray | slice = slice(None)) -> PathList:
        return _gather(self.data, self.starts[at], self.key_ends[at])


def _gather(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> PathList:
    """`data[starts[j]:ends[j]]` for every j, as one PathList (one fancy index, no loop)."""
    lengths = ends - starts
    offsets = np.zeros(len(starts) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return PathList(data[np.arange(offsets[-1]) + np.repeat(starts - offsets[:-1], lengths)],
                    offsets)


def _index_table(text: str, shard_size: int) -> _IndexTable | None:
    """A `wds2idx` v1.2 index read with numpy, every check of `_parse_wds_index_slowly` made
    on all members at once, and stricter ones (no white space but ' ' and '\\n', numbers of at
    most 18 digits, no '..' component, names that `split_key` splits as listed); None for
    anything else, which the exact reading accepts or names."""
    if not text.isascii() and _ODD_SPACE.search(text):
        return None
    raw = text.encode("utf-8")
    base = raw.find(b"\n") + 1
    head = raw[:base].split()
    if (not base or len(head) != 2 or head[0] != _INDEX_VERSION.encode()
            or not head[1].isdigit() or len(head[1]) > _MAX_DIGITS):
        return None
    data = np.frombuffer(raw, np.uint8)
    if np.count_nonzero(data < 32) != np.count_nonzero(data == 10):
        return None  # a control character (other white space, NUL): the exact reading
    # Tokens: runs of bytes above ' ', after the first line.
    word = data > 32
    word[:base] = False
    edges = np.flatnonzero(word[1:] != word[:-1]) + 1
    if word[-1]:
        edges = np.append(edges, len(data))
    starts, ends = edges[0::2], edges[1::2]
    if not len(starts) or len(starts) % 4:
        return None
    # Each 'ext offset size name' group on one line; as many lines as samples announced.
    newlines = np.flatnonzero(data == 10)
    line = np.searchsorted(newlines, starts[0::4])
    if ((line != np.searchsorted(newlines, starts[3::4])).any()
            or int(np.count_nonzero(line[1:] != line[:-1])) + 1 != int(head[1])):
        return None
    # Offsets and sizes: digits only, right-aligned in a [digit, number] matrix.
    first = np.concatenate([starts[1::4], starts[2::4]])
    last = np.concatenate([ends[1::4], ends[2::4]])
    width = int((last - first).max())
    if width > _MAX_DIGITS:
        return None
    digits = data[last + np.arange(-width, 0)[:, None]] - np.uint8(48)  # wraps below '0'
    digits[np.arange(width, 0, -1)[:, None] > last - first] = 0
    if (digits > 9).any():
        return None
    values = (digits * _POWERS[width - 1::-1, None]).sum(0)
    m = len(starts) // 4
    offsets, sizes = values[:m], values[m:]
    if ((offsets < 512) | (offsets % 512 != 0) | (offsets + sizes > shard_size)).any():
        return None
    # Names: each ends in '.' + its listed extension (which holds no '/'), after a key whose
    # base name is not empty and holds no '.'; not absolute; no '..' component.
    ext_starts, ext_ends = starts[0::4], ends[0::4]
    name_starts, name_ends = starts[3::4], ends[3::4]
    ext_lengths = ext_ends - ext_starts
    key_ends = name_ends - ext_lengths - 1
    if (key_ends <= name_starts).any():
        return None
    if ((data[key_ends] != 46) | (data[key_ends - 1] == 47) | (data[name_starts] == 47)).any():
        return None
    within = np.arange(int(ext_lengths.sum())) - np.repeat(np.cumsum(ext_lengths) - ext_lengths,
                                                           ext_lengths)
    if (data[np.repeat(ext_starts, ext_lengths) + within]
            != data[np.repeat(key_ends + 1, ext_lengths) + within]).any():
        return None
    slashes, dots = np.flatnonzero(data == 47), np.flatnonzero(data == 46)
    if (np.searchsorted(slashes, ext_starts) != np.searchsorted(slashes, ext_ends)).any():
        return None
    last_slash = np.searchsorted(slashes, key_ends)
    base_starts = np.maximum(name_starts, np.where(last_slash > 0, slashes[last_slash - 1] + 1,
                                                   0) if len(slashes) else 0)
    if (np.searchsorted(dots, key_ends) != np.searchsorted(dots, base_starts)).any():
        return None
    pairs = dots[:-1][np.diff(dots) == 1]  # '..' at each pair, pair + 1
    if ((data[pairs - 1] == 47) | (data[pairs - 1] <= 32)).any():
        return None
    return _IndexTable(data, name_starts, key_ends, name_ends, offsets, sizes)


def _table_samples(table: _IndexTable, label_ext: str, limit: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`_samples_in_bulk` for an index read as arrays: extensions classified once per distinct
    one, neighbouring keys compared as bytes; (image member, label member, first member) of
    each sample, or None if anything is unusual."""
    n = len(table.starts)
    ext_lengths = table.ends - table.key_ends - 1
    width = int(ext_lengths.max())
    if width > _MAX_EXT:
        return None
    columns = np.arange(width)[:, None]
    padded = table.data[np.minimum(table.key_ends + 1 + columns, len(table.data) - 1)]
    padded[columns >= ext_lengths] = 0
    kinds, kind = np.unique(np.ascontiguousarray(padded.T).view(f"S{width}").ravel(),
                            return_inverse=True)
    exts = [k.decode("utf-8") for k in kinds.tolist()]
    image = np.array([f".{e}".lower().endswith(IMAGE_EXTENSIONS) for e in exts])[kind]
    label = np.array([e == label_ext for e in exts])[kind]
    key_lengths = table.key_ends - table.starts
    new = np.ones(n, bool)
    check = np.flatnonzero(key_lengths[1:] == key_lengths[:-1])
    if len(check):
        lengths = key_lengths[check]
        pair_starts = np.cumsum(lengths) - lengths
        within = np.arange(int(lengths.sum())) - np.repeat(pair_starts, lengths)
        differs = (table.data[np.repeat(table.starts[check], lengths) + within]
                   != table.data[np.repeat(table.starts[check + 1], lengths) + within])
        new[check + 1] = np.logical_or.reduceat(differs, pair_starts)
    return _grouped(new, image, label, table.sizes, limit)


def _grouped(new: np.ndarray, image: np.ndarray, label: np.ndarray, sizes: np.ndarray,
             limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(image member, label member, first member) of each sample of members that start a new
    sample where `new` is set; None unless every sample has exactly one image and one label
    member and no label is over `limit` bytes."""
    sample = np.cumsum(new) - 1
    count = int(sample[-1]) + 1
    if ((np.bincount(sample, image, count) != 1).any()
            or (np.bincount(sample, label, count) != 1).any()):
        return None
    image_at, label_at = np.flatnonzero(image), np.flatnonzero(label)
    if (sizes[label_at] > limit).any():
        return None
    return image_at, label_at, np.flatnonzero(new)


def _parse_wds_index_slowly(text: str, shard_size: int) -> list[tuple[str, int, int]]:
    """`parse_wds_index` line by line, member by member: says what is wrong and where."""
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != _INDEX_VERSION or not head[1].isdigit():
        raise ValueError(f"first line {lines[0][:40] if lines else ''!r}: expected "
                         f"'{_INDEX_VERSION} <samples>'")
    body = [line for line in lines[1:] if line.strip()]
    if len(body) != int(head[1]):
        raise ValueError(f"it announces {head[1]} samples and lists {len(body)}")
    members = []
    for number, line in enumerate(body, start=2):
        tokens = line.split()
        if not tokens or len(tokens) % 4:
            raise ValueError(f"line {number}: expected 'ext offset size name' groups")
        for j in range(0, len(tokens), 4):
            ext, offset, size, name = tokens[j:j + 4]
            if not (offset.isdigit() and size.isdigit()):
                raise ValueError(f"line {number}: offset {offset!r}, size {size!r}")
            start, length = int(offset), int(size)
            if start < 512 or start % 512 or start + length > shard_size:
                raise ValueError(f"line {number}: member {name!r} at bytes {start}.."
                                 f"{start + length - 1} is not a data range of the "
                                 f"{shard_size}-byte shard")
            if split_key(name) is None or split_key(name)[1] != ext:  # type: ignore[index]
                raise ValueError(f"line {number}: member {name!r} does not end in .{ext}")
            members.append((name, start, length))
    return members


def _label(url: str, name: str, data: np.ndarray | bytes, label_key: str | None) -> int:
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    if label_key is None:
        text = raw.decode("ascii", "replace").strip()
        value = int(text) if text.isdigit() and text.isascii() else None
        shown = text[:20]
    else:
        try:
            parsed: Any = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise DatasetError(f"shard {url} member {name!r} is not JSON: {reason}") from exc
        found = parsed.get(label_key) if isinstance(parsed, dict) else None
        value = found if isinstance(found, int) and not isinstance(found, bool) else None
        shown = repr(found)[:20] if isinstance(parsed, dict) and label_key in parsed else (
            f"no key {label_key!r}")
    if value is None or not 0 <= value < MAX_CLASSES:
        raise DatasetError(f"shard {url} member {name!r}: label {shown!r} is not an integer "
                           f"in 0..{MAX_CLASSES - 1}")
    return value


def _read_labels(file: ShardFile, name_of: Callable[[int], str], offsets: np.ndarray,
                 sizes: np.ndarray, label_key: str | None) -> np.ndarray:
    """The label of each label member (the j-th named `name_of(j)`, for messages): neighbours
    (less than `_LABEL_GAP` apart, within one `_LABEL_WINDOW`) read together, `.cls` texts
    checked and converted in bulk."""
    if not len(offsets):
        return np.zeros(0, np.int64)
    ends = offsets + sizes
    if len(offsets) > 1 and (offsets[1:] >= ends[:-1]).all():
        cut = np.flatnonzero((offsets[1:] - ends[:-1] > _LABEL_GAP)
                             | (offsets[1:] // _LABEL_WINDOW != offsets[:-1] // _LABEL_WINDOW))
        first = np.concatenate([[0], cut + 1]).astype(np.int64)
    else:
        first = np.arange(len(offsets), dtype=np.int64)
    last = np.append(first[1:], len(offsets)) - 1
    lengths = ends[last] - offsets[first]
    windows = file.read_ranges(
        offsets[first].tolist(), lengths.tolist(),
        [name_of(a) if a == b else f"label members {name_of(a)!r}..{name_of(b)!r}"
         for a, b in zip(first.tolist(), last.tolist(), strict=True)])
    buffer = windows[0] if len(windows) == 1 else np.concatenate(windows)
    # Where each label member starts in `buffer` (its windows, one after another).
    at = offsets - np.repeat(offsets[first] - (np.cumsum(lengths) - lengths), last - first + 1)
    if label_key is None:
        values = _cls_values(buffer, at, sizes)
        if values is not None:
            return values
    return np.fromiter((_label(file.url, name_of(j), buffer[a:a + s], label_key)
                        for j, (a, s) in enumerate(zip(at.tolist(), sizes.tolist(),
                                                       strict=True))),
                       np.int64, len(offsets))


def _cls_values(buffer: np.ndarray, at: np.ndarray, sizes: np.ndarray) -> np.ndarray | None:
    """`.cls` labels (`sizes[j]` bytes at `buffer[at[j]:]`) converted at once: each one run of
    at most 18 digits amid white space, below MAX_CLASSES; None otherwise."""
    width = int(sizes.max()) if len(sizes) else 0
    if not width or width > _CLS_BYTES:
        return None
    columns = np.arange(width)[:, None]
    inside = columns < sizes
    text = buffer[np.minimum(at + columns, len(buffer) - 1)]
    if not (_ONLY_DIGITS_AND_SPACE[text] | ~inside).all():
        return None
    digit = ((text - np.uint8(48)) <= 9) & inside
    starts = digit.copy()
    starts[1:] &= ~digit[:-1]
    if (np.count_nonzero(starts, axis=0) != 1).any() or (
            np.count_nonzero(digit, axis=0) > _MAX_DIGITS).any():
        return None
    end = width - np.argmax(digit[::-1], axis=0)  # one past each label's last digit
    power = np.clip(end - 1 - columns, 0, _MAX_DIGITS)
    values = np.where(digit, (text - np.uint8(48)) * _POWERS[power], 0).sum(0)
    if ((values < 0) | (values >= MAX_CLASSES)).any():
        return None
    return values


def _key_hashes(keys: Sequence[str] | PathList) -> np.ndarray:
    """A 64-bit hash of each key, the same in every process (duplicate keys across shards
    are found among equal hashes): a polynomial over the key's UTF-8 bytes, computed for
    every byte at once, then mixed."""
    paths = keys if isinstance(keys, PathList) else PathList.from_strings(list(keys))
    lengths = np.diff(paths.offsets)
    if paths.data.size == 0:
        return (lengths.astype(np.uint64) * _MIX).astype(np.uint64)
    position = np.arange(paths.data.size, dtype=np.int64) - np.repeat(paths.offsets[:-1],
                                                                      lengths)
    powers = np.cumprod(np.full(int(lengths.max()), _PRIME, np.uint64))
    terms = (paths.data.astype(np.uint64) + np.uint64(1)) * powers[position]
    starts = np.minimum(paths.offsets[:-1], paths.data.size - 1)
    h = np.where(lengths > 0, np.add.reduceat(terms, starts), 0).astype(np.uint64)
    h ^= lengths.astype(np.uint64) * _MIX
    h ^= h >> np.uint64(31)
    h *= _MIX
    h ^= h >> np.uint64(29)
    return h


# (image member, label member) indices per sample, and the samples' keys.
_Samples = tuple[np.ndarray, np.ndarray, list[str]]


def _samples_in_bulk(url: str, members: _Members, label_ext: str, limit: int
                     ) -> _Samples | None:
    """Members grouped into samples with array operations; None if anything is unusual (a
    suspicious or hidden name, a sample without exactly one image and one label member, a
    label too large), left to `_samples_one_by_one`, which skips or names it."""
    names, n = members.names, len(members.names)
    joined = "\n".join(names)
    if (n == 0 or None in members.keys or "\0" in joined or joined.startswith("/")
            or "\n/" in joined or (".." in joined and _PARENT.search(joined))):
        return None
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return None
    keys: list[str] = members.keys  # type: ignore[assignment]
    exts = set(members.exts)
    is_image = {e: f".{e}".lower().endswith(IMAGE_EXTENSIONS) for e in exts}
    is_label = {e: e == label_ext for e in exts}
    image = np.fromiter(map(is_image.__getitem__, members.exts), bool, n)
    label = np.fromiter(map(is_label.__getitem__, members.exts), bool, n)
    new = np.ones(n, bool)
    new[1:] = np.fromiter(map(operator.ne, keys[1:], keys[:-1]), bool, n - 1)
    grouped = _grouped(new, image, label, members.sizes, limit)
    if grouped is None:
        return None
    image_at, label_at, firsts = grouped
    return image_at, label_at, [keys[i] for i in firsts.tolist()]


def _samples_one_by_one(url: str, members: _Members, label_key: str | None) -> _Samples:
    """Members grouped into samples one at a time: hidden names and names without an
    extension skipped, every malformed sample refused by name."""
    label_ext = "cls" if label_key is None else "json"
    images: list[int] = []
    labels: list[int] = []
    keys: list[str] = []
    current: str | None = None
    image: int | None = None
    label: int | None = None

    def finish() -> None:
        if current is None:
            return
        if image is None:
            raise DatasetError(f"shard {url}: sample {current!r} has no image member (one of "
                               f"{', '.join(IMAGE_EXTENSIONS)})")
        if label is None:
            where = ("its .cls member" if label_key is None else
                     f"key {label_key!r} of its .json member")
            raise DatasetError(f"shard {url}: sample {current!r} "
                               f"({members.names[image]!r}) has no .{label_ext} member; "
                               f"labels come from {where}")
        images.append(image)
        labels.append(label)
        keys.append(current)

    for j, (name, key, ext) in enumerate(zip(members.names, members.keys, members.exts,
                                             strict=True)):
        _check_name(url, name)
        if key is None or ext is None:
            continue  # hidden, or no extension: no sample's member (as wds2idx)
        if key != current:
            finish()
            current, image, label = key, None, None
        if name.lower().endswith(IMAGE_EXTENSIONS):
            if image is not None:
                raise DatasetError(f"shard {url}: sample {key!r} has two image members, "
                                   f"{members.names[image]!r} and {name!r} (one image per "
                                   "sample)")
            image = j
        elif ext == label_ext:
            if label is not None:
                raise DatasetError(f"shard {url}: sample {key!r} has member {name!r} twice")
            limit = _CLS_BYTES if label_key is None else _JSON_BYTES
            if members.sizes[j] > limit:
                raise DatasetError(f"shard {url} member {name!r}: a label member of "
                                   f"{members.sizes[j]} bytes (at most {limit})")
            label = j
    finish()
    return np.array(images, np.int64), np.array(labels, np.int64), keys


def index_shard(file: ShardFile, label_key: str | None = None) -> _Indexed:
    """One shard's samples, from its `wds2idx` index when usable, else its tar headers."""
    url = file.url
    if file.nbytes == 0:
        raise DatasetError(f"shard {url} is empty (0 bytes)")
    label_ext = "cls" if label_key is None else "json"
    limit = _CLS_BYTES if label_key is None else _JSON_BYTES
    members = None
    text = file.index_text()
    if text is not None:
        table = _index_table(text, file.nbytes)
        found = None if table is None else _table_samples(table, label_ext, limit)
        if table is not None and found is not None:  # the usual index: arrays throughout
            image_at, label_at, first = found
            labels = _read_labels(file, lambda j: table.name(int(label_at[j])),
                                  table.offsets[label_at], table.sizes[label_at], label_key)
            return _Indexed(table.names(image_at), table.offsets[image_at],
                            table.sizes[image_at], labels, _key_hashes(table.keys(first)))
        try:
            members = _Members.of(_parse_wds_index_slowly(text, file.nbytes))
        except ValueError as exc:
            warnings.warn(f"shard {url}: its wds2idx index is not usable ({exc}); reading the "
                          "tar headers instead", stacklevel=3)
    if members is None:
        members = _Members.of(tar_members(file))
    grouped = (_samples_in_bulk(url, members, label_ext, limit)
               or _samples_one_by_one(url, members, label_key))
    image_at, label_at, keys = grouped
    if not len(image_at):
        raise DatasetError(f"shard {url} holds no samples (no image member)")
    labels = _read_labels(file, lambda j: members.names[int(label_at[j])],
                          members.offsets[label_at], members.sizes[label_at], label_key)
    return _Indexed(PathList.from_strings([members.names[j] for j in image_at.tolist()]),
                    members.offsets[image_at], members.sizes[image_at], labels,
                    _key_hashes(keys))


# ------------------------------------------------------------------ every shard


@dataclass(frozen=True, eq=False)
class ShardListing:
    """Every sample of a shard spec: image member names, labels, and byte ranges."""

    spec: ShardSpec
    urls: tuple[str, ...]
    names: PathList
    labels: np.ndarray  # int64 [N]
    shard: np.ndarray  # int32 [N], index into urls
    offsets: np.ndarray  # int64 [N], data offset of the image member
    sizes: np.ndarray  # int64 [N], its byte size

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(str(c) for c in range(int(self.labels.max()) + 1))

    def source(self) -> ShardSource:
        return ShardSource(self.spec.text, self.urls, self.names, self.shard, self.offsets,
                           self.sizes)


def _index_one(url: str, label_key: str | None) -> tuple[_Indexed, list[int | str]]:
    file = open_shard_file(url)
    try:
        return index_shard(file, label_key), file.stamp()
    finally:
        file.close()


def _index_all(spec: ShardSpec, urls: tuple[str, ...], alone: bool = False
               ) -> tuple[ShardListing, list[list[int | str]]]:
    """Every shard indexed: many local shards in worker processes (header parsing holds the
    GIL), the others in threads (remote ones wait on the network). Unless this process indexes
    `alone` (it holds the node cache's lock), every rank of the node may be indexing too, so
    its workers get the node's cores divided by the ranks on it."""
    local = [j for j, url in enumerate(urls) if url_scheme(url) in ("", "file")]
    workers = default_workers(len(local), _SHARDS_PER_PROCESS, 1 if alone else ranks_on_node())
    done: list[tuple[_Indexed, list[int | str]] | None] = [None] * len(urls)
    if workers > 1:
        found = index_in_processes([urls[j] for j in local], spec.label_key, workers)
        for j, item in zip(local, found, strict=True):
            done[j] = item
    rest = [j for j, item in enumerate(done) if item is None]
    with ThreadPoolExecutor(max(1, min(_WORKERS, len(rest)))) as pool:
        for j, item in zip(rest, pool.map(lambda j: _index_one(urls[j], spec.label_key),
                                           rest), strict=True):
            done[j] = item
    parts = [d for d, _ in done]  # type: ignore[misc]
    counts = [len(p.names) for p in parts]
    listing = ShardListing(
        spec, urls, PathList.concatenate([p.names for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.repeat(np.arange(len(urls), dtype=np.int32), counts),
        np.concatenate([p.offsets for p in parts]), np.concatenate([p.sizes for p in parts]))
    _check_unique(listing, np.concatenate([p.keys for p in parts]))
    return listing, [s for _, s in done]  # type: ignore[misc]


def _check_unique(listing: ShardListing, keys: np.ndarray) -> None:
    """Refuse a key that names two samples: candidates are the samples whose key hashes are
    equal (rare), compared by key."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    same = np.flatnonzero(ranked[1:] == ranked[:-1])
    if not len(same):
        return
    first: dict[str, int] = {}
    for b in np.sort(order[np.union1d(same, same + 1)]).tolist():
        split = split_key(listing.names[b])
        if split is None:
            continue
        a = first.setdefault(split[0], b)
        if a != b:
            raise DatasetError(
                f"shards {listing.spec.text}: key {split[0]!r} names two samples, member "
                f"{listing.names[a]!r} of {listing.urls[int(listing.shard[a])]} and member "
                f"{listing.names[b]!r} of {listing.urls[int(listing.shard[b])]}; webdataset "
                "keys must be unique")


def _stamps(urls: Sequence[str]) -> list[list[int | str]] | None:
    out: list[list[int | str]] = []
    remote = [url for url in urls if url_scheme(url)]
    if remote:  # looked up together: 1,024 shards at 20 ms each would take 20 s one by one
        from dalidr.data.remote_shards import remote_stamps
        found = dict(zip(remote, remote_stamps(remote), strict=True))
    for url in urls:
        if url_scheme(url):
            out.append(found[url])
            continue
        try:
            st = os.stat(url)
        except OSError:
            return None
        out.append([int(st.st_size), int(st.st_mtime_ns)])
    return out


def list_shards(data: DataSpec, *, share: bool = True) -> ShardListing:
    """Every sample of the shards `data` names, indexed once per node while they are
    unchanged (see the module docstring)."""
    spec = parse_shard_spec(data)
    urls = spec.urls()
    directory = node_cache_dir() if share else None
    if directory is None:
        return _index_all(spec, urls)[0]
    key = cache_key("shards-1", spec.label_key or "", *urls)

    def produce() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        listing, stamps = _index_all(spec, urls, alone=True)
        header = {"urls": list(urls), "label_key": spec.label_key, "stamps": stamps}
        return header, {"path_bytes": listing.names.data, "path_offsets": listing.names.offsets,
                        "labels": listing.labels, "shard": listing.shard,
                        "offsets": listing.offsets, "sizes": listing.sizes}

    def is_valid(header: dict[str, Any]) -> bool:
        return (header.get("urls") == list(urls) and header.get("label_key") == spec.label_key
                and header.get("stamps") == _stamps(urls))

    try:
        _, arrays = shared_arrays(directory, key, is_valid, produce)
        return ShardListing(spec, urls, PathList(arrays["path_bytes"], arrays["path_offsets"]),
                            np.asarray(arrays["labels"]), np.asarray(arrays["shard"]),
                            np.asarray(arrays["offsets"]), np.asarray(arrays["sizes"]))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        warnings.warn(f"shards {spec.text}: node cache {directory} unusable ({exc}); indexing "
                      "in this process", stacklevel=2)
        return _index_all(spec, urls)[0]
