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

Refused by name (DatasetError naming shard and member): a 0-byte shard, a shard that is not a
tar archive, a truncated shard (a member running past its end, or no end-of-archive blocks
after the last member), a link or other non-file member, a member name that is absolute or
has a `..` component or is not UTF-8, a sample without an image member or with two, a missing
or non-integer label, a duplicate key (within a shard or across shards), a compressed shard
(no byte-range reads into gzip). Trade-off: a well-formed `wds2idx` index is trusted as DALI
trusts it (its ranges must lie inside the shard); the manifest's hashes check the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dalidr.augment.image_formats import IMAGE_EXTENSIONS
from dalidr.data.data_source import ShardFile, ShardSource, open_shard_file, url_scheme
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


def parse_wds_index(text: str, shard_size: int) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of every member listed by a `wds2idx` v1.2 index; ValueError
    saying what is wrong (v1.1 lists no names, so it cannot name samples)."""
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


def _label(url: str, name: str, data: np.ndarray, label_key: str | None) -> int:
    raw = data.tobytes()
    if label_key is None:
        text = raw.decode("ascii", "replace").strip()
        value = int(text) if text.isdigit() and text.isascii() else None
        shown = text[:20]
    else:
        try:
            parsed: Any = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DatasetError(f"shard {url} member {name!r} is not JSON: {exc}") from exc
        found = parsed.get(label_key) if isinstance(parsed, dict) else None
        value = found if isinstance(found, int) and not isinstance(found, bool) else None
        shown = repr(found)[:20] if isinstance(parsed, dict) and label_key in parsed else (
            f"no key {label_key!r}")
    if value is None or not 0 <= value < MAX_CLASSES:
        raise DatasetError(f"shard {url} member {name!r}: label {shown!r} is not an integer "
                           f"in 0..{MAX_CLASSES - 1}")
    return value


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def index_shard(file: ShardFile, label_key: str | None = None) -> _Indexed:
    """One shard's samples, from its `wds2idx` index when usable, else its tar headers."""
    url = file.url
    if file.nbytes == 0:
        raise DatasetError(f"shard {url} is empty (0 bytes)")
    members = None
    text = file.index_text()
    if text is not None:
        try:
            members = parse_wds_index(text, file.nbytes)
        except ValueError as exc:
            warnings.warn(f"shard {url}: its wds2idx index is not usable ({exc}); reading the "
                          "tar headers instead", stacklevel=3)
    if members is None:
        members = tar_members(file)
    label_ext = "cls" if label_key is None else "json"
    names: list[str] = []
    ranges: list[tuple[int, int]] = []
    labels_at: list[tuple[int, int, str]] = []
    keys: list[int] = []
    current: str | None = None
    image: tuple[str, int, int] | None = None
    label: tuple[int, int, str] | None = None

    def finish() -> None:
        if current is None:
            return
        if image is None:
            raise DatasetError(f"shard {url}: sample {current!r} has no image member (one of "
                               f"{', '.join(IMAGE_EXTENSIONS)})")
        if label is None:
            where = ("its .cls member" if label_key is None else
                     f"key {label_key!r} of its .json member")
            raise DatasetError(f"shard {url}: sample {current!r} ({image[0]!r}) has no "
                               f".{label_ext} member; labels come from {where}")
        names.append(image[0])
        ranges.append(image[1:])
        labels_at.append(label)
        keys.append(_key_hash(current))

    for name, offset, size in members:
        _check_name(url, name)
        split = split_key(name)
        if split is None:
            continue  # hidden, or no extension: no sample's member (as wds2idx)
        key, ext = split
        if key != current:
            finish()
            current, image, label = key, None, None
        if name.lower().endswith(IMAGE_EXTENSIONS):
            if image is not None:
                raise DatasetError(f"shard {url}: sample {key!r} has two image members, "
                                   f"{image[0]!r} and {name!r} (one image per sample)")
            image = (name, offset, size)
        elif ext == label_ext:
            if label is not None:
                raise DatasetError(f"shard {url}: sample {key!r} has member {name!r} twice")
            limit = _CLS_BYTES if label_key is None else _JSON_BYTES
            if size > limit:
                raise DatasetError(f"shard {url} member {name!r}: a label member of {size} "
                                   f"bytes (at most {limit})")
            label = (offset, size, name)
    finish()
    if not names:
        raise DatasetError(f"shard {url} holds no samples (no image member)")
    data = file.read_ranges([a for a, _, _ in labels_at], [b for _, b, _ in labels_at],
                            [c for _, _, c in labels_at])
    labels = [_label(url, c, d, label_key) for (_, _, c), d in zip(labels_at, data, strict=True)]
    offsets, sizes = np.array(ranges, dtype=np.int64).reshape(-1, 2).T
    return _Indexed(PathList.from_strings(names), offsets.copy(), sizes.copy(),
                    np.asarray(labels, np.int64), np.asarray(keys, np.uint64))


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


def _index_all(spec: ShardSpec, urls: tuple[str, ...]
               ) -> tuple[ShardListing, list[list[int | str]]]:
    with ThreadPoolExecutor(max(1, min(_WORKERS, len(urls)))) as pool:
        done = list(pool.map(lambda u: _index_one(u, spec.label_key), urls))
    parts = [d for d, _ in done]
    counts = [len(p.names) for p in parts]
    listing = ShardListing(
        spec, urls, PathList.concatenate([p.names for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.repeat(np.arange(len(urls), dtype=np.int32), counts),
        np.concatenate([p.offsets for p in parts]), np.concatenate([p.sizes for p in parts]))
    _check_unique(listing, np.concatenate([p.keys for p in parts]))
    return listing, [s for _, s in done]


def _check_unique(listing: ShardListing, keys: np.ndarray) -> None:
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    for j in same.tolist():
        a, b = int(order[j]), int(order[j + 1])
        key_a, key_b = split_key(listing.names[a]), split_key(listing.names[b])
        if key_a is not None and key_b is not None and key_a[0] == key_b[0]:
            raise DatasetError(
                f"shards {listing.spec.text}: key {key_a[0]!r} names two samples, member "
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
        listing, stamps = _index_all(spec, urls)
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
