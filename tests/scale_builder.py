"""ImageNet-shaped datasets and stores without ImageNet, for the scale test and `bench/scale.py`.

The tree is hard links to a few hundred real JPEGs (`dalidr.data.sample_data.link_tree`), so every
per-file cost (listing, opening, stat) is real while the bytes stay small. Because a link
shares its source's content, the store's manifest is exact without hashing every link: each
source is hashed and measured once and its values are given to every link of it. Stores are
filled with a trivially cheap teacher (the label and the next k - 1 classes, fixed
probabilities), vectorised, so what is measured is the bookkeeping, not a forward pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dalidr.augment.records import draw_records
from dalidr.data.dataset import DatasetListing, list_dataset
from dalidr.data.sample_data import link_tree, make_corpus
from dalidr.errors import StoreError
from store.config import StoreConfig
from store.manifest import Manifest
from store.writer import StoreWriter, create_store

__all__ = ["LinkedTree", "linked_tree", "linked_manifest", "cheap_teacher", "fill_blocks",
           "linked_store"]


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


def linked_manifest(tree: LinkedTree, listing: DatasetListing | None = None) -> Manifest:
    """The exact manifest of `tree` (each source hashed and measured once)."""
    listing = listing or list_dataset(tree.root, share=False)
    hashes = np.zeros((len(tree.sources), 32), np.uint8)
    hw = np.zeros((len(tree.sources), 2), np.int64)
    for i, path in enumerate(tree.sources):
        hashes[i] = np.frombuffer(hashlib.sha256(path.read_bytes()).digest(), np.uint8)
        with Image.open(path) as image:
            hw[i] = image.size[1], image.size[0]
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
    return writer
