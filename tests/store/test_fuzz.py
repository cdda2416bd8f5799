"""Fuzzing the store format: every file of a small valid store mutated many ways.

For every mutant, `inspect_store`, `StoreReader` (two epochs of what the loader serves besides
pixels, plus the manifest) and, for a few, the real `ReinforcedLoader` (DALI CPU, one epoch of
images and targets) either serve exactly what the unmutated store serves or raise a dalidr error
naming the store; never another exception, never different data silently, never past a 2 GiB
allocation cap, never past a time limit (`tests/store/fuzz.py`). One mutant in eight replaces an
object by a link (inside or outside the store, to a device), a FIFO or a 3 GiB sparse file: each
kind is sampled (about four of each) and must be refused without quoting what it points to.
`bench/fuzz_store.py` runs thousands of mutants the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dalidr.augment.recipe import recipe
from tests.store.fuzz import (
    FILE_KINDS,
    FuzzRunner,
    Kind,
    Mutant,
    Outcome,
    make_mutants,
    reseal_arrays,
)
from tests.store.helpers import make_config, make_manifest, write_store
from tests.store_builder import build_store

READER_MUTANTS = 200
LOADER_MUTANTS = 6


@pytest.fixture(scope="module")
def mixing_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small complete store of the richest recipe (partners, boxes, RandAugment, erasing)."""
    root = tmp_path_factory.mktemp("fuzz") / "mix.zarr"
    write_store(str(root), make_manifest(20),
                make_config(recipe=recipe("m*+r*"), slots=6, slot_group=3))
    return root


@pytest.fixture(scope="module")
def real_store(tmp_path_factory: pytest.TempPathFactory):
    """A small complete store of real JPEGs and a real (random) teacher, for the loader."""
    return build_store(tmp_path_factory.mktemp("fuzz-real"), images=16, slots=3, k=2)


def _violations(results) -> list[str]:
    return [f"{r.mutant.describe()}: {r.outcome.value} {r.details}" for r in results
            if r.outcome.violation]


def test_reader_and_inspect_survive_every_mutant(mixing_store: Path) -> None:
    mutants = make_mutants(mixing_store, READER_MUTANTS, seed=13,
                           reseal_arrays=reseal_arrays(mixing_store))
    files = {str(p.relative_to(mixing_store)) for p in mixing_store.rglob("*") if p.is_file()}
    assert files <= {m.file for m in mutants}  # every file of the store is mutated
    with FuzzRunner(mixing_store, timeout_s=60) as runner:
        results = [r for r in (runner.run(m) for m in mutants) if r is not None]
    assert _violations(results) == []
    outcomes = {r.outcome for r in results}
    assert Outcome.REFUSED in outcomes and Outcome.SAME in outcomes
    assert {r.mutant.kind for r in results} == set(Kind)
    for kind in FILE_KINDS:  # no violation means refused; say it for each kind anyway
        assert {r.outcome for r in results if r.mutant.kind is kind} == {Outcome.REFUSED}, kind


def test_loader_survives_mutants(real_store) -> None:
    root = Path(real_store.url)
    arrays = reseal_arrays(root)
    chosen = [
        Mutant("records/ops/c/0/0/0", Kind.RESEAL, array="records/ops", value=99),
        Mutant("records/crop/c/1/0/0", Kind.RESEAL, array="records/crop", block=1, offset=2,
               value=0),
        Mutant("topk/classes/c/0/0/0", Kind.RESEAL, array="topk/classes", value="one_past"),
        Mutant("topk/classes/c/1/0/0", Kind.BIT_FLIP, offset=40, length=3),
        Mutant("records/erase/c/1/0/0", Kind.SWAP, other="records/erase/c/0/0/0"),
        Mutant("manifest/image_hw/c/0/0", Kind.BIT_FLIP, offset=30, length=1),
    ][:LOADER_MUTANTS]
    assert {m.array for m in chosen if m.array} <= set(arrays)
    with FuzzRunner(root, data=real_store.root, timeout_s=60) as runner:
        results = [r for r in (runner.run(m, loader=True) for m in chosen) if r is not None]
    assert len(results) == len(chosen)
    assert _violations(results) == []
    assert all("loader" in r.details for r in results)
