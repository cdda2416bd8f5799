"""A loader's start reads a constant number of dataset files, whatever the dataset's size.

Issue 14: building a loader and getting its first batch must not open every image (no hashing,
no image-size scan at start). The files opened under the data root are counted with an audit
hook (`sys.addaudithook`, in a child process so the hook does not outlive the test) while each
loader is constructed and yields its first batch, on a 2,000- and a 20,000-file tree of hard
links: the count is the sampled hashes plus the first batches' files, the same for both.
A count, not a timing, so it is stable on any machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dalidr.augment.recipe import recipe
from dalidr.data.dataset import list_dataset
from store.config import StoreConfig
from store.manifest import SAMPLED_HASHES
from tests.scale_builder import linked_manifest, linked_store, linked_tree

BATCH = 8
READ_AHEAD = 2
PREFETCH = 1

_CHILD = """
import json, os, sys
root, store = sys.argv[1], sys.argv[2]
counting, opened = [False], []

def hook(event, args):
    if counting[0] and event == "open" and isinstance(args[0], str) and args[0].startswith(root):
        opened.append(args[0])

sys.addaudithook(hook)
from dalidr.training.loader import DatasetCheck, LoaderConfig, PlainLoader, ReinforcedLoader
from dalidr.augment.recipe import recipe

config = LoaderConfig(batch_size=%(batch)d, read_threads=1, read_ahead=%(read_ahead)d,
                      prefetch_depth=%(prefetch)d, num_threads=1)
makers = {
    "reinforced": lambda: ReinforcedLoader(store, root, config, rank=0, world=8),
    "reinforced_manifest": lambda: ReinforcedLoader(store, root, config, rank=0, world=8,
                                                    check=DatasetCheck.MANIFEST),
    "plain": lambda: PlainLoader(root, config, size=32, rank=0, world=8),
    "plain_recipe": lambda: PlainLoader(root, config, size=32, rank=0, world=8,
                                        recipe=recipe("rrc+ra/re")),
}
counts = {}
for name, make in makers.items():
    opened.clear()
    counting[0] = True
    loader = make()
    next(iter(loader))
    counting[0] = False
    loader.close()
    counts[name] = len(opened)
print(json.dumps(counts))
"""


def _start_opens(folder: Path, count: int) -> dict[str, int]:
    tree = linked_tree(folder, count, classes=100, sources=24)
    manifest = linked_manifest(tree, list_dataset(tree.root, share=False))
    config = StoreConfig(recipe=recipe("rrc+ra/re", output_size=32), teacher="cheap (test)",
                         seed=0, slots=2, k=2, num_classes=100, slot_group=2)
    url = str(folder / "store.zarr")
    linked_store(url, manifest, config)
    script = _CHILD % {"batch": BATCH, "read_ahead": READ_AHEAD, "prefetch": PREFETCH}
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "DALIDR_NODE_CACHE": "off"}
    out = subprocess.run([sys.executable, "-c", script, str(tree.root), url], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_loader_start_opens_a_constant_number_of_files(tmp_path) -> None:
    small = _start_opens(tmp_path / "small", 2_000)
    large = _start_opens(tmp_path / "large", 20_000)
    # The first batches in flight (read ahead and in the pipeline), each file of which may
    # be opened twice with a fresh recipe (its header for the crop, then its bytes).
    batches = (READ_AHEAD + PREFETCH + 2) * BATCH * 2
    for name, opened in large.items():
        # How many of the batches ahead are being read when counting stops is a race; that
        # is all that may differ between the two trees.
        assert opened <= SAMPLED_HASHES + batches, (name, opened)
        assert abs(opened - small[name]) <= batches, (name, small[name], opened)
    assert large["reinforced"] >= SAMPLED_HASHES  # the sampled hashes are read
