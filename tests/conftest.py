"""Shared fixtures: a small corpus of real JPEGs, and the `gpu` marker that skips cleanly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalidr.data.sample_data import make_corpus


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class Corpus:
    """Real JPEGs (re-framed bundled photographs), their bytes and their (height, width)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.jpegs = [np.fromfile(p, dtype=np.uint8) for p in paths]
        self.image_hw = np.array([Image.open(p).size[::-1] for p in paths], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(make_corpus(tmp_path_factory.mktemp("corpus"), 24, seed=1))
