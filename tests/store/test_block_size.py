"""The block size a teacher pass picks from N (`store.config.block_size_for`): unchanged for
datasets up to 268M samples, doubled past that so a store keeps about a million objects."""

from __future__ import annotations

import pytest

from store.config import MAX_BLOCKS, block_size_for


@pytest.mark.parametrize(("samples", "expected"), [
    (1, 2048), (1_281_167, 2048), (13_700_000, 2048), (2048 * MAX_BLOCKS, 2048),
    (2048 * MAX_BLOCKS + 1, 4096), (1_400_000_000, 16_384), (1 << 40, 1 << 20),
])
def test_block_size_for(samples: int, expected: int) -> None:
    size = block_size_for(samples)
    assert size == expected
    assert -(-samples // size) <= MAX_BLOCKS or size == 1 << 20  # the cap: StoreConfig's largest
    assert size == 2048 or -(-samples // (size // 2)) > MAX_BLOCKS  # the smallest that fits
