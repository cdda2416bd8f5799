"""Fuzzing the store format: every file of a small valid store mutated many ways.

For every mutant, `inspect_store`, `StoreReader` (two epochs of what the loader serves besides
pixels, plus the manifest) and, for a few, the real `ReinforcedLoader` (DALI CPU, one epoch of
images and targets) either serve exactly what the unmutated store serves or raise a dalidr error
naming the store; never another exception, never different data silently, never past a 2 GiB
allocation cap, never past a time limit (`tests/store/fuzz.py`). One mutant in eight replaces an
object by a link (inside or outside the store, to a device), a FIFO or a 3 GiB sparse file: each
kind is sampled (about four of each) and must be refused without quoting what it points to.
Write failures: a real `dalidr reinforce` with ENOSPC injected at its k-th write, for a few k
from the store's creation to the last commit, must fail with a StoreWriteError naming the store
and what was being written, and the same command must then end byte-identical
(`tests/store/fuzz_writes.py`). `bench/fuzz_store.py` runs thousands of mutants the same way.
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
from tests.store.fuzz_writes import WriteFuzz
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
    assert {r.mutant.kind for r in results} == set(Kind) - {Kind.WRITE_FAILURE}
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


def test_a_failed_write_is_named_and_the_rerun_is_byte_identical(tmp_path: Path) -> None:
    """A sample of the write-failure class: the first write of the creation, a manifest
    chunk, a data shard and a commit entry of a middle block, and the pass's last write."""
    fuzz = WriteFuzz(tmp_path)
    last = len(fuzz.writes)
    chosen = [1, fuzz.first("manifest/sha256/c/"), fuzz.first("topk/classes/c/1/"),
              fuzz.first("commit_map/c/2/"), last]
    results = [fuzz.run(k) for k in chosen]
    assert all(r is not None for r in results)
    done = [r for r in results if r is not None]
    assert _violations(done) == []
    assert [r.mutant.offset for r in done] == chosen
    assert [r.mutant.file for r in done][2:4] == ["topk/classes/c/1/0/0", "commit_map/c/2/0"]
    assert {r.outcome for r in done[2:]} == {Outcome.WRITE_NAMED}  # block writes name the key
    assert all(r.details["failed"].startswith(f"StoreWriteError: store {tmp_path}/write-")
               for r in done)
    assert fuzz.run(last + 1) is None  # past the last write: nothing injected, nothing judged
