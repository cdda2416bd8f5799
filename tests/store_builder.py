"""Small real reinforcement stores for the training-side tests, without the teacher pass.

Real JPEGs (`make_corpus`, an ImageFolder tree of 3 classes), records from `draw_records`, and
top-k from a real (randomly initialised, seeded) tiny timm model run on the replayed views
(`Replayer`), written block by block with `StoreWriter.write_block`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch

from dalidr.augment.recipe import recipe
from dalidr.augment.records import draw_records
from dalidr.augment.replay import Output, Replayer, ReplaySpec
from dalidr.data.dataset import DatasetListing, list_dataset
from dalidr.data.sample_data import make_corpus
from store.config import StoreConfig
from store.manifest import Manifest, scan_manifest
from store.writer import create_store

__all__ = ["BuiltStore", "build_store"]


@dataclass(frozen=True)
class BuiltStore:
    url: str
    root: Path
    listing: DatasetListing
    manifest: Manifest
    config: StoreConfig


def build_store(folder: Path, images: int = 24, size: int = 32, slots: int = 3, k: int = 2,
                num_classes: int = 3, block_size: int = 8, preset: str = "rrc+ra/re",
                seed: int = 0) -> BuiltStore:
    """A complete store under `folder/store.zarr` for a corpus under `folder/data`."""
    root = folder / "data"
    make_corpus(root, images, seed=seed + 1)
    listing = list_dataset(root)
    manifest = scan_manifest(root, listing.paths, listing.labels)
    config = StoreConfig(recipe=recipe(preset, output_size=size), teacher="test: resnet10t",
                         seed=seed, slots=slots, k=k, num_classes=num_classes,
                         block_size=block_size, slot_group=min(slots, 3))
    url = str(folder / "store.zarr")
    writer = create_store(url, manifest, config)
    torch.manual_seed(seed)
    teacher = timm.create_model("resnet10t", pretrained=False, num_classes=num_classes).eval()
    jpegs = [np.fromfile(root / p, dtype=np.uint8) for p in listing.paths]
    replayer = Replayer(ReplaySpec(config.recipe, output=Output.FLOAT_CHW),
                        batch_size=block_size * slots)
    for block in range(writer.num_blocks):
        samples = np.arange(writer.block_range(block).start, writer.block_range(block).stop)
        records = draw_records(config.recipe, seed, samples, np.arange(slots), manifest.image_hw)
        flat = records.reshape(-1)
        views = [jpegs[int(s)] for s in np.repeat(samples, slots)]
        partners = [jpegs[int(p)] for p in flat["partner"]] if config.recipe.has_mix else None
        pixels = replayer(views, flat, partners, num_samples=len(jpegs))
        with torch.no_grad():
            probs = teacher(torch.from_numpy(pixels)).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        shape = (len(samples), slots, k)
        writer.write_block(block, records, top.indices.numpy().reshape(shape),
                           top.values.numpy().reshape(shape))
    return BuiltStore(url, root, listing, manifest, config)
