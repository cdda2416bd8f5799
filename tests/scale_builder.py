"""ImageNet-shaped datasets and stores without ImageNet, for the scale test and `bench/scale.py`.

The tree is hard links to a few hundred real JPEGs (`dalidr.data.sample_data.link_tree`), so every
per-file cost (listing, opening, stat) is real while the bytes stay small. Because a link
shares its source's content, the store's manifest is exact without hashing every link: each
source is hashed and measured once and its values are given to every link of it. Stores are
filled with a trivially cheap teacher (the label and the next k - 1 classes, fixed
probabilities), vectorised, so what is measured is the bookkeeping, not a forward pass.

Beyond ImageNet (`bench/scale.py --sizes`: 13.7M and 27.4M samples) a tree of hard links
would be tens of millions of directory entries made one `os.link` at a time. `listed_data`
makes a file list instead whose every line names a readable file while the disk holds a few
hundred thousand links: class folder `n<c>` is a symlink to one of at most `sources` pools,
and pool `p<o>` holds `<j>.JPEG` linking source (o + j) mod `sources`, so sample i (the j-th
of class c, which starts at sample s_c; pool s_c mod `sources`) is a copy of source
i mod `sources`. With `sources` dividing the store's block size, every block has the same
image sizes, so `template_store` encodes one block (drawn records, `cheap_teacher`) and writes
its arrays as every block, from worker processes: building 27.4M samples costs the zarr
writes, not per-sample draws. Per-sample content is then not what a teacher pass would store
(every block holds the first block's records and top-k), which neither the loader's start
nor its reads depend on; `fill_blocks` remains the honest per-block teacher bookkeeping.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dalidr.augment.records import draw_records
from dalidr.data.dataset import DatasetListing, list_dataset
from dalidr.data.path_list import PathList
from dalidr.data.sample_data import link_tree, make_corpus
from dalidr.errors import DatasetError, StoreError
from store.config import StoreConfig
from store.layout import COMMIT
from store.manifest import Manifest
from store.writer import StoreWriter, commit_row, create_store

__all__ = ["LinkedTree", "linked_tree", "linked_manifest", "cheap_teacher", "fill_blocks",
           "linked_store", "ListedData", "listed_data", "listed_manifest", "template_store"]


@dataclass(frozen=True)
class LinkedTree:
    root: Path
    sources: tuple[Path, ...]
    count: int
    classes: int

    @property
    def per_class(self) -> int:
        return -(-self.count // self.classes)


def linked_tree(folder: Path, count: int, classes: int, sources: int = 300) -> LinkedTree:
    """`folder/tree`: `count` links in `classes` folders to `sources` real JPEGs (made once)."""
    files = make_corpus(folder / "sources", sources, seed=11)
    link_tree(folder / "tree", files, count, classes)
    return LinkedTree(folder / "tree", tuple(files), count, classes)


def _source_identity(sources: tuple[Path, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SHA-256 [S, 32], (height, width) [S, 2] and byte size [S] of each source file."""
    hashes = np.zeros((len(sources), 32), np.uint8)
    hw = np.zeros((len(sources), 2), np.int64)
    for i, path in enumerate(sources):
        hashes[i] = np.frombuffer(hashlib.sha256(path.read_bytes()).digest(), np.uint8)
        with Image.open(path) as image:
            hw[i] = image.size[1], image.size[0]
    return hashes, hw, np.array([p.stat().st_size for p in sources], np.int64)


def linked_manifest(tree: LinkedTree, listing: DatasetListing | None = None) -> Manifest:
    """The exact manifest of `tree` (each source hashed and measured once)."""
    listing = listing or list_dataset(tree.root, share=False)
    hashes, hw, _ = _source_identity(tree.sources)
    # n<c>/n<c>_<j>.JPEG links sources[(c * per_class + j) % len(sources)]; label == c.
    j = np.fromiter((int(p[p.rindex("_") + 1:p.rindex(".")]) for p in listing.paths),
                    np.int64, len(listing))
    source = (listing.labels * tree.per_class + j) % len(tree.sources)
    sizes = (listing.sizes if listing.sizes is not None else
             np.array([p.stat().st_size for p in tree.sources])[source])
    return Manifest(listing.paths, listing.labels, sizes, hashes[source], hw[source])


def cheap_teacher(labels: np.ndarray, slots: int, k: int, num_classes: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k [n, slots, k]: the label first, then the next classes; fixed probabilities."""
    classes = (labels[:, None, None] + np.arange(k)[None, None, :]) % num_classes
    classes = np.broadcast_to(classes, (len(labels), slots, k))
    probs = 0.5 ** np.arange(1, k + 1, dtype=np.float64)
    return classes, np.broadcast_to(probs, classes.shape)


def fill_blocks(writer: StoreWriter, manifest: Manifest, blocks: list[int] | None = None) -> None:
    """Write `blocks` (default: every pending one) with drawn records and `cheap_teacher`."""
    cfg = writer.config
    for block in writer.pending() if blocks is None else blocks:
        r = writer.block_range(block)
        samples = np.arange(r.start, r.stop)
        records = draw_records(cfg.recipe, cfg.seed, samples, np.arange(cfg.slots),
                               manifest.image_hw)
        classes, probs = cheap_teacher(manifest.labels[samples], cfg.slots, cfg.k,
                                       cfg.num_classes)
        writer.write_block(block, records, classes, probs)


def linked_store(url: str, manifest: Manifest, config: StoreConfig) -> StoreWriter:
    """A complete store of `manifest` (created and filled unless it already is)."""
    try:
        writer = StoreWriter(url)
    except StoreError:  # missing or half-made: make it afresh
        writer = create_store(url, manifest, config, overwrite=True)
    fill_blocks(writer, manifest)
    writer.finish()
    return writer


# ------------------------------------------------------------------ file-list datasets

_DIGITS = 14  # a pool file is <j:014d>.JPEG, so a path n<c:08d>/<j>.JPEG has 29 bytes
_PATH_BYTES = 9 + 1 + _DIGITS + 5  # (ImageNet's n01440764/n01440764_10026.JPEG: 30)


@dataclass(frozen=True)
class ListedData:
    """A file-list dataset made by `listed_data`: `file_list` names files under `root`."""

    root: Path
    file_list: Path
    sources: tuple[Path, ...]
    count: int
    classes: int

    @property
    def class_starts(self) -> np.ndarray:
        """The first sample of each class, then `count`: class sizes differ by at most 1."""
        return np.arange(self.classes + 1, dtype=np.int64) * self.count // self.classes

    def label_of(self, samples: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.class_starts, samples, side="right").astype(np.int64) - 1

    def source_of(self, samples: np.ndarray) -> np.ndarray:
        """Index in `sources` of each sample's content."""
        return np.asarray(samples, np.int64) % len(self.sources)


def _pool_name(j: int) -> str:
    return f"{j:0{_DIGITS}d}.JPEG"


def _digit_rows(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal digits of `values` as ASCII, [n, width] uint8."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // powers) % 10 + ord("0")).astype(np.uint8)


def _path_rows(data: ListedData, chunk: int = 1 << 20
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(paths as [n, _PATH_BYTES] uint8, labels [n]) of every sample, `chunk` at a time."""
    starts = data.class_starts
    suffix = np.frombuffer(b".JPEG", np.uint8)
    for lo in range(0, data.count, chunk):
        samples = np.arange(lo, min(lo + chunk, data.count), dtype=np.int64)
        labels = data.label_of(samples)
        rows = np.empty((len(samples), _PATH_BYTES), np.uint8)
        rows[:, 0], rows[:, 9] = ord("n"), ord("/")
        rows[:, 1:9] = _digit_rows(labels, 8)
        rows[:, 10:10 + _DIGITS] = _digit_rows(samples - starts[labels], _DIGITS)
        rows[:, 10 + _DIGITS:] = suffix
        yield rows, labels


def _write_file_list(data: ListedData) -> None:
    """`<path> <label>` lines, vectorised: within a chunk, labels of one digit count at once."""
    tmp = data.file_list.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        for rows, labels in _path_rows(data):
            digits = 1 + np.floor(np.log10(np.maximum(labels, 1))).astype(np.int64)
            for d in np.unique(digits).tolist():
                pick = digits == d
                lines = np.empty((int(pick.sum()), _PATH_BYTES + d + 2), np.uint8)
                lines[:, :_PATH_BYTES] = rows[pick]
                lines[:, _PATH_BYTES] = ord(" ")
                lines[:, _PATH_BYTES + 1:-1] = _digit_rows(labels[pick], d)
                lines[:, -1] = ord("\n")
                out.write(lines.tobytes())
    tmp.replace(data.file_list)


def listed_data(folder: Path, count: int, classes: int, sources: int = 256) -> ListedData:
    """`folder/data` and its file list `folder/files.txt` (module docstring); what exists
    is kept, so a dataset is made once, and resumed if cut short."""
    if not 1 <= classes <= count:
        raise DatasetError(f"listed_data: {classes} classes for {count} samples; need 1..count")
    files = tuple(make_corpus(folder / "sources", sources, seed=11))
    data = ListedData(folder / "data", folder / "files.txt", files, count, classes)
    starts = data.class_starts
    longest = int(np.diff(starts).max())
    offsets = (starts[:-1] % sources).tolist()
    for offset in sorted(set(offsets)):
        pool = folder / "pools" / f"p{offset:04d}"
        if (pool / _pool_name(longest - 1)).exists():  # made in order: the last ends a pool
            continue
        pool.mkdir(parents=True, exist_ok=True)
        for j in range(longest):
            try:
                os.link(files[(offset + j) % sources], pool / _pool_name(j))
            except FileExistsError:
                pass
    data.root.mkdir(parents=True, exist_ok=True)
    for c, offset in enumerate(offsets):
        link = data.root / f"n{c:08d}"
        if not os.path.lexists(link):
            os.symlink(f"../pools/p{offset:04d}", link)
    if not data.file_list.exists():
        _write_file_list(data)
    return data


def listed_manifest(data: ListedData) -> Manifest:
    """The exact manifest of `data`, vectorised (each source hashed and measured once)."""
    hashes, hw, sizes = _source_identity(data.sources)
    paths = np.empty((data.count, _PATH_BYTES), np.uint8)
    labels = np.empty(data.count, np.int64)
    done = 0
    for rows, part in _path_rows(data):
        paths[done:done + len(rows)], labels[done:done + len(rows)] = rows, part
        done += len(rows)
    offsets = np.arange(data.count + 1, dtype=np.int64) * _PATH_BYTES
    source = data.source_of(np.arange(data.count))
    return Manifest(PathList(paths.reshape(-1), offsets), labels, sizes[source], hashes[source],
                    hw[source])


class _BulkWriter(StoreWriter):
    """A writer whose write errors do not count the blocks left: that count reads the whole
    commit map (one object per block) for every array of every block written, so filling B
    blocks reads B² objects (the teacher step of `bench/scale.py --sizes` measures a plain
    `StoreWriter`, that cost included)."""

    def _remaining(self, arrays: dict[str, np.ndarray]) -> str:
        return ""


def _write_template(url: str, arrays: dict[str, np.ndarray], blocks: list[int]) -> None:
    """Write `blocks` as `arrays` (block 0's): a full block by copying block 0's shard files
    (the codecs are deterministic, so they are the bytes `write_encoded` would write; the
    reader's digests would fail loudly on any other) and then committing it; a short last
    block through `write_encoded`."""
    writer = _BulkWriter(url)
    layout, full = writer.layout, writer.config.block_size
    for block in blocks:
        n = len(writer.block_range(block))
        if n != full or block == 0:
            writer.write_encoded(block, arrays if n == full else
                                 {name: values[:n] for name, values in arrays.items()})
            continue
        for name in layout.data_names:
            target = Path(layout.location.key_path(layout.shard_key(name, block)))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".template.partial")
            shutil.copyfile(layout.location.key_path(layout.shard_key(name, 0)), tmp)
            tmp.replace(target)
        layout.array(COMMIT)[block] = commit_row(writer.config, arrays, block)


def template_store(url: str, data: ListedData, config: StoreConfig,
                   workers: int = 1) -> StoreWriter:
    """A complete store of `data` whose every block holds the first block's arrays (module
    docstring): created, or resumed (only uncommitted blocks are written), by `workers`
    processes."""
    if config.block_size % len(data.sources):
        raise DatasetError(f"template_store: {len(data.sources)} sources must divide the block "
                           f"size {config.block_size}, so every block has the same image sizes")
    try:
        writer = StoreWriter(url)
    except StoreError:  # missing or half-made: make it afresh
        writer = create_store(url, listed_manifest(data), config, overwrite=True)
    if writer.config != config:
        raise StoreError(f"{url} holds a store of another config; remove it to rebuild")
    pending = writer.pending()
    if not pending:
        writer.finish()  # a store built before the commit summary existed gets it
        return writer
    samples = np.arange(len(writer.block_range(0)))
    _, hw, _ = _source_identity(data.sources)
    records = draw_records(config.recipe, config.seed, samples, np.arange(config.slots),
                           hw[data.source_of(samples)])
    classes, probs = cheap_teacher(data.label_of(samples), config.slots, config.k,
                                   config.num_classes)
    arrays = writer.encode_block(0, records, classes, probs)
    if not writer.committed()[0]:  # the shard files the others copy
        _write_template(url, arrays, [0])
        pending = [block for block in pending if block != 0]
    workers = max(1, min(workers, len(pending)))
    if workers == 1:
        _write_template(url, arrays, pending)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_write_template, [url] * workers, [arrays] * workers,
                          [pending[w::workers] for w in range(workers)]))
    writer = StoreWriter(url)
    writer.finish()
    return writer
