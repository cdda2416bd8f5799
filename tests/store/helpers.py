"""Small stores for the store tests: a manifest, a config and a deterministic teacher pass."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import zarr

from dalidr.augment.recipe import recipe
from dalidr.augment.records import draw_records
from dalidr.data.path_list import PathList
from store.config import ATTRS_KEY, StoreConfig
from store.layout import attrs_digest
from store.manifest import Manifest
from store.synthetic import synthetic_teacher
from store.writer import BlockProducer, StoreWriter, create_store

NUM_SAMPLES = 37  # five blocks of 8, the last one short


def make_manifest(num_samples: int = NUM_SAMPLES, seed: int = 0) -> Manifest:
    rng = np.random.default_rng(seed)
    return Manifest(
        paths=tuple(f"class{i % 5}/img{i:04d}.jpg" for i in range(num_samples)),
        labels=rng.integers(0, 100, num_samples),
        sizes=rng.integers(10_000, 200_000, num_samples),
        hashes=rng.integers(0, 256, (num_samples, 32)),
        image_hw=rng.integers(64, 700, (num_samples, 2)),
    )


def make_config(**changes: object) -> StoreConfig:
    config = StoreConfig(recipe=recipe("rrc+ra/re"), teacher="synthetic test teacher", seed=11,
                         slots=12, k=5, num_classes=100, block_size=8, slot_group=4)
    return dataclasses.replace(config, **changes) if changes else config


def producer(config: StoreConfig, manifest: Manifest) -> BlockProducer:
    """The teacher pass: records from (seed, sample, slot), targets from the synthetic model."""

    def produce(samples: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index = np.arange(samples.start, samples.stop)
        records = draw_records(config.recipe, config.seed, index, np.arange(config.slots),
                               manifest.image_hw)
        classes, probs = synthetic_teacher(config.seed, index, config.slots, config.k,
                                           config.num_classes, manifest.labels)
        return records, classes, probs

    return produce


def write_store(url: str, manifest: Manifest, config: StoreConfig) -> StoreWriter:
    writer = create_store(url, manifest, config)
    writer.fill(producer(config, manifest))
    return writer


def edit_attrs(store_dir: str | Path, change, redigest: bool = True) -> None:  # type: ignore[no-untyped-def]
    """Change a store's root attributes in place (`change(attrs)`), recomputing their digest
    (a forger's edit) unless `redigest` is False (damage)."""
    group = zarr.open_group(str(store_dir), mode="r+")
    attrs = dict(group.attrs[ATTRS_KEY])
    change(attrs)
    if redigest:
        attrs.pop("digest")
        attrs["digest"] = attrs_digest(attrs)
    group.attrs[ATTRS_KEY] = attrs


def forge_path(store_dir: str | Path, index: int, path: str) -> None:
    """Rewrite one manifest path of the store made from `make_manifest()`, with the fingerprint
    and the attributes' digest recomputed: a forged store that every checksum accepts."""
    manifest = make_manifest()
    paths = list(manifest.paths)
    paths[index] = path
    forged = Manifest(PathList.from_strings(paths), manifest.labels, manifest.sizes,
                      manifest.hashes, manifest.image_hw)
    group = zarr.open_group(str(store_dir), mode="r+")
    del group["manifest/path_bytes"]
    group["manifest"].create_array("path_bytes", data=forged.paths.data)
    group["manifest/path_offsets"][...] = forged.paths.offsets
    edit_attrs(store_dir, lambda attrs: attrs.update(fingerprint=forged.fingerprint))


def tree_bytes(root: str | Path) -> dict[str, bytes]:
    """Every file under `root`, by relative path."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            out[str(path.relative_to(root))] = path.read_bytes()
    return out
