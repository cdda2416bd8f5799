"""The reinforcement store: a chunked Zarr v3 store of parameter records and teacher top-k.

Entry points: `create_store` + `StoreWriter` (teacher pass), `StoreReader` + `EpochPrefetcher`
(training: epochs read in pieces, first batches first, `PieceSizes`), `inspect_store` /
`subset_store` (tools, also `dalidr inspect` / `dalidr subset`).
The layout and its trade-offs are described in `store.layout`.
"""

from __future__ import annotations

from store.config import SCHEMA_VERSION, Compression, StoreConfig
from store.encoding import topk_kl
from store.inspect import StoreReport, format_report, inspect_store
from store.manifest import Manifest, scan_manifest
from store.pieces import PieceSizes
from store.plan import EpochPlan, PlanSpec, UnevenShards, plan_epoch
from store.prefetch import EpochPrefetcher
from store.reader import EpochData, StoreReader, TopKTargets
from store.subset import subset_store
from store.synthetic import synthetic_teacher
from store.writer import BlockProducer, StoreWriter, create_store

__all__ = [
    "SCHEMA_VERSION",
    "Compression",
    "StoreConfig",
    "Manifest",
    "scan_manifest",
    "create_store",
    "StoreWriter",
    "BlockProducer",
    "StoreReader",
    "EpochPrefetcher",
    "PieceSizes",
    "EpochData",
    "TopKTargets",
    "EpochPlan",
    "PlanSpec",
    "UnevenShards",
    "plan_epoch",
    "topk_kl",
    "inspect_store",
    "format_report",
    "StoreReport",
    "subset_store",
    "synthetic_teacher",
]
