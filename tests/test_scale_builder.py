"""The file-list datasets and template stores `bench/scale.py --sizes` measures (built small).

What the benchmark's numbers rest on: every line of the file list names a readable file whose
bytes are what the manifest says; the store is complete, every block (copied shard files, and a
short last block written through the writer) passes the reader's digests and holds the first
block's records; and a `DatasetCheck.MANIFEST` loader starts on it and yields a batch.
"""

from __future__ import annotations

import numpy as np

from dalidr.augment.recipe import recipe
from dalidr.augment.records import draw_records
from dalidr.data.dataset import list_dataset
from dalidr.training.loader import DatasetCheck, ReinforcedLoader
from dalidr.training.loader_config import LoaderConfig
from store.config import StoreConfig
from store.reader import StoreReader
from tests.scale_builder import listed_data, listed_manifest, template_store

SOURCES = 16
BLOCK = 256


def test_a_listed_dataset_and_its_template_store_serve_what_they_claim(tmp_path) -> None:
    data = listed_data(tmp_path, 1_500, classes=7, sources=SOURCES)
    manifest = listed_manifest(data)
    listing = list_dataset(data.root, data.file_list, share=False)
    assert listing.paths.first_difference(manifest.paths) is None
    assert len(listing) == len(manifest) == 1_500
    np.testing.assert_array_equal(listing.labels, manifest.labels)
    assert np.bincount(manifest.labels).tolist() == [214, 214, 214, 215, 214, 214, 215]
    # Every file is there, with the bytes (hash) and size the manifest gives it.
    assert manifest.check_content(data.root, np.arange(len(manifest))) == []
    sizes = [(data.root / p).stat().st_size for p in manifest.paths]
    np.testing.assert_array_equal(sizes, manifest.sizes)

    config = StoreConfig(recipe=recipe("rrc+ra/re", output_size=32), teacher="cheap (test)",
                         seed=3, slots=4, k=3, num_classes=7, slot_group=2, block_size=BLOCK)
    url = str(tmp_path / "store.zarr")
    template_store(url, data, config, workers=2)
    reader = StoreReader(url)
    assert reader.committed().all() and reader.num_samples == 1_500  # 6 blocks, the last short
    read = reader.epoch(0)  # every block read, its digests checked
    template = draw_records(config.recipe, config.seed, np.arange(BLOCK),
                            np.arange(config.slots), manifest.image_hw[:BLOCK])
    expected = template[read.plan.samples % BLOCK, read.plan.slots]
    for field in expected.dtype.names or ():
        np.testing.assert_array_equal(read.records[field], expected[field], err_msg=field)

    loader = ReinforcedLoader(url, data.root, LoaderConfig(batch_size=8, num_threads=1,
                                                           read_threads=1),
                              rank=0, world=2, file_list=data.file_list,
                              check=DatasetCheck.MANIFEST)
    try:
        images, _ = next(iter(loader))
        assert tuple(images.shape) == (8, 3, 32, 32)
    finally:
        loader.close()
