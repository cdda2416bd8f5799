"""Checking a data root against a store's manifest, file by file (`dalidr verify`,
`dalidr inspect --data`); tar shards member by member, each read by its byte range.

A loader's start only compares the listing with the manifest and hashes a sample of files
(`store.manifest`); this reads every file the store serves, once each, in parallel: its SHA-256
against the manifest, its format against what replay decodes, and for JPEGs libjpeg's
complaints (`dalidr.augment.image_formats.jpeg_damage`: data cut short then closed with an
end-of-image
marker decodes "successfully" with grey rows). Every problem is named by sample and path.
Samples the teacher pass skipped (`--skip-bad`) are not read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dalidr.augment.image_formats import check_image, jpeg_damage
from dalidr.data.data_source import DataSource, FileSource
from dalidr.data.dataset import DatasetListing
from dalidr.errors import DatasetError, ImageError
from store.manifest import Manifest

__all__ = ["DataReport", "verify_data"]


@dataclass(frozen=True)
class DataReport:
    """What `verify_data` found."""

    files: int
    skipped: int
    # One line per problem: the listing, then files in sample order.
    problems: list[str] = field(default_factory=list)
    # Files that decode with a harmless decoder complaint (served; listed for the user).
    warnings: list[str] = field(default_factory=list)


def _one(manifest: Manifest, source: DataSource, i: int, images: bool
         ) -> tuple[str | None, str | None]:
    where = f"sample {i} ({source.describe(i)})"
    try:
        data = source.read([i])[0].tobytes()
    except DatasetError as exc:
        return f"{where}: cannot be read: {exc}", None
    if hashlib.sha256(data).digest() != manifest.hashes[i].tobytes():
        return f"{where}: content differs from the store's manifest", None
    if not images:
        return None, None
    try:
        check_image(np.frombuffer(data, np.uint8), where)
    except ImageError as exc:
        return str(exc), None
    damage = jpeg_damage(data, where)
    if damage is None:
        return None, None
    return (str(damage), None) if damage.corrupt else (None, str(damage))


def verify_data(manifest: Manifest, data: str | Path | DataSource,
                listing: DatasetListing | None = None, workers: int = 8,
                progress: bool = False, images: bool = True) -> DataReport:
    """Check every served sample of `data` (a folder root, or a source whose sample i is the
    manifest's sample i) against `manifest` (and `listing`, if given)."""
    source = data if isinstance(data, DataSource) else FileSource(data, manifest.paths)
    problems: list[str] = []
    if listing is not None:
        difference = manifest.check_listing(listing)
        if difference is not None:
            problems.append(f"listing of {source.name}: {difference}")
    served = manifest.served
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results: Iterable[tuple[str | None, str | None]] = pool.map(
            lambda i: _one(manifest, source, int(i), images), served)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(served), desc="verifying", unit="file")
        found = list(results)
    problems += [p for p, _ in found if p]
    return DataReport(len(served), len(manifest) - len(served), problems,
                      [w for _, w in found if w])
