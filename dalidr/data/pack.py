"""`dalidr pack FOLDER OUT-PATTERN`: a dataset written as webdataset tar shards.

Samples go in the listing's order (`list_dataset`: classes sorted, files sorted; a file list's
order; or another shard set's), each as `KEY.EXT`, the image's bytes unchanged under its
relative path, then `KEY.cls`, its label as decimal text; KEY is the path up to the first '.'
of its base name (webdataset's key), so `dalidr.data.shards` names every sample by the same
relative path as the folder listing does, and the same images give byte-identical stores from
either (a store made from shards also holds where each sample lies in them, `/sources`). A
shard is closed before the sample that would take it past `--shard-size` bytes (or after
`--samples-per-shard` samples); each gets DALI's `wds2idx` index beside it
(`train-0000.tar` -> `train-0000.idx`), written from the shard's own headers once it is whole.

Deterministic bytes: POSIX pax format (long and non-ASCII names need no special case), every
header with mtime 0, owner 0:0 and mode 0644, so the same data packs to the same shards on any
machine. Each shard is written to a temporary name and renamed when complete. Trade-off: one
pass, one reader thread (packing is I/O bound and done once).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dalidr.augment.image_formats import IMAGE_EXTENSIONS
from dalidr.errors import DatasetError, OptionError

__all__ = ["PackReport", "pack_shards", "register"]

_PATTERN = re.compile(r"%(0?\d*)d")
_RECORD = tarfile.RECORDSIZE
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DEFAULT_SHARD_SIZE = 256 << 20


@dataclass(frozen=True)
class PackReport:
    """What `pack_shards` wrote."""

    shards: tuple[Path, ...]
    samples: int
    # The shard spec to read them back (`--data`): a brace pattern over the shards.
    spec: str


def _check_pattern(pattern: str) -> None:
    """OUT-PATTERN names shards with one printf %d, e.g. 'out/train-%04d.tar'."""
    if len(_PATTERN.findall(pattern)) != 1 or pattern.count("%") != 1 or (
            not pattern.lower().endswith(".tar")):
        raise OptionError(f"OUT-PATTERN {pattern!r} must hold one %d (e.g. %04d) and end in "
                          ".tar, e.g. out/train-%04d.tar")


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def _write_index(path: Path) -> None:
    """DALI's `wds2idx` index of a finished shard, from its own headers."""
    from dalidr.data.data_source import LocalShardFile
    from dalidr.data.shards import format_wds_index, split_key, tar_members

    file = LocalShardFile(str(path))
    try:
        members = tar_members(file)
    finally:
        file.close()
    samples: list[list[tuple[str, int, int]]] = []
    last = None
    for name, offset, size in members:
        key = split_key(name)
        if key is None:
            continue
        if key[0] != last:
            samples.append([])
            last = key[0]
        samples[-1].append((name, offset, size))
    stem = path.name[:path.name.find(".", 1)]
    index = path.with_name(stem + ".idx")
    try:
        text = format_wds_index(samples)
    except DatasetError as exc:  # a name with white space: readers index the headers instead
        warnings.warn(f"{path}: no wds2idx index written: {exc}", stacklevel=3)
        return
    tmp = index.with_name(index.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, index)


def pack_shards(data: Any, out_pattern: str, *, file_list: str | Path | None = None,
                shard_size: int | None = None, samples_per_shard: int | None = None,
                index: bool = True) -> PackReport:
    """Write the dataset `data` (a folder, a file list's root with `file_list`, or shards) as
    webdataset shards named by `out_pattern` (one `%d`); see the module docstring."""
    from dalidr.data.dataset import list_dataset
    from dalidr.data.shards import split_key

    if shard_size is not None and samples_per_shard is not None:
        raise OptionError("give --shard-size or --samples-per-shard, not both")
    if samples_per_shard is not None and samples_per_shard < 1:
        raise OptionError(f"option '--samples-per-shard' is {samples_per_shard}; valid: >= 1")
    if shard_size is not None and shard_size < 4096:
        raise OptionError(f"option '--shard-size' is {shard_size}; valid: >= 4096 bytes")
    limit = shard_size if shard_size is not None else (
        None if samples_per_shard is not None else DEFAULT_SHARD_SIZE)
    _check_pattern(out_pattern)
    pattern = out_pattern
    listing = list_dataset(data, file_list)
    keys: dict[str, int] = {}
    for i, rel in enumerate(listing.paths):
        split = split_key(rel)
        if split is None or not rel.lower().endswith(IMAGE_EXTENSIONS):
            raise DatasetError(f"sample {i} ({rel!r}) cannot be a webdataset member: a hidden "
                               f"name, or not an image extension ({', '.join(IMAGE_EXTENSIONS)})")
        if split[0] in keys:
            raise DatasetError(f"samples {keys[split[0]]} ({listing.paths[keys[split[0]]]!r}) "
                               f"and {i} ({rel!r}) share the webdataset key {split[0]!r} (the "
                               "path up to the first '.' of its name): rename one")
        keys[split[0]] = i
    written: list[Path] = []
    tar: tarfile.TarFile | None = None
    tmp: Path | None = None
    count = 0

    def close() -> None:
        nonlocal tar, tmp
        if tar is None or tmp is None:
            return
        tar.close()
        final = Path(pattern % len(written))
        os.replace(tmp, final)
        written.append(final)
        if index:
            _write_index(final)
        tar, tmp = None, None

    try:
        for i in range(len(listing)):
            rel = listing.paths[i]
            image = listing.source.read([i])[0].tobytes()
            label = str(int(listing.labels[i])).encode()
            split = split_key(rel)
            assert split is not None  # checked above
            members = [_member(rel, image), _member(split[0] + ".cls", label)]
            need = sum(len(m.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                       + -(-m.size // 512) * 512 for m, _ in members)
            # The shard's size once closed: its end blocks, padded to tar's 10 kB records.
            closed = -(-((0 if tar is None else tar.offset) + need + 1024) // _RECORD) * _RECORD
            if tar is not None and (
                    (samples_per_shard is not None and count >= samples_per_shard)
                    or (limit is not None and closed > limit)):
                close()
            if tar is None:
                final = Path(pattern % len(written))
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = final.with_name(final.name + ".tmp")
                tar = tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, encoding="utf-8")
                count = 0
            for info, payload in members:
                tar.addfile(info, payload)
            count += 1
        close()
    finally:
        if tar is not None:
            tar.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    last = len(written) - 1
    match = _PATTERN.search(pattern)
    assert match is not None
    width = int(match.group(1) or 0)
    spec = pattern[:match.start()] + "{" + f"{0:0{width}d}..{last:0{width}d}" + "}" + (
        pattern[match.end():])
    return PackReport(tuple(written), len(listing), spec)


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text.upper())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected bytes, e.g. 268435456 or 256M")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _run(args: argparse.Namespace) -> int:
    report = pack_shards(args.data, args.out, file_list=args.file_list,
                         shard_size=args.shard_size, samples_per_shard=args.samples_per_shard,
                         index=not args.no_index)
    print(f"dalidr pack: {report.samples} samples in {len(report.shards)} shard(s); read them "
          f"with --data '{report.spec}'")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pack", help="write a folder (or file list) as webdataset tar shards",
        description="Write a dataset as webdataset tar shards in its listing order: KEY.EXT "
                    "(the image, unchanged, under its relative path) and KEY.cls (its label) "
                    "per sample, with a wds2idx index beside each shard. The same images as a "
                    "folder and as these shards give byte-identical stores (the shards' store also "
                    "holds where each sample lies in them, /sources).")
    parser.add_argument("data", metavar="FOLDER",
                        help="ImageFolder root (or the root of --file-list's paths, or shards)")
    parser.add_argument("out", metavar="OUT-PATTERN",
                        help="shard paths with one %%d, e.g. out/train-%%04d.tar")
    parser.add_argument("--file-list", default=None, help="'<path> <label>' lines under FOLDER")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shard-size", type=_size, default=None, metavar="BYTES",
                      help="close a shard before it would pass this size (256M, 1G, ...; "
                           f"default {DEFAULT_SHARD_SIZE >> 20}M)")
    size.add_argument("--samples-per-shard", type=int, default=None, metavar="N",
                      help="samples per shard instead of a size")
    parser.add_argument("--no-index", action="store_true",
                        help="write no wds2idx index beside the shards")
    parser.set_defaults(run=_run)
    return parser
