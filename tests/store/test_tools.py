"""`dalidr inspect` and `dalidr subset` (called through store.cli), and manifest scanning."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from store.cli import main
from store.inspect import inspect_store
from store.manifest import scan_manifest
from store.reader import StoreReader
from store.writer import StoreWriter, create_store
from tests.store.helpers import make_config, make_manifest, producer, write_store


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("tools") / "store")
    write_store(url, make_manifest(), make_config())
    return url


def test_inspect_prints_the_summary(store_url: str, capsys) -> None:
    assert main(["inspect", store_url]) == 0
    out = capsys.readouterr().out
    for expected in ("samples        37", "slots          12", "k              5",
                     "recipe         rrc+ra/re", "teacher        synthetic test teacher",
                     "5/5 committed", "COMPLETE", "bytes per record",
                     "integrity      OK: 120 chunks read"):
        assert expected in out
    report = inspect_store(store_url, verify=False)
    assert report.problems is None and report.complete
    assert 0 < report.bytes_per_record < 1000 and report.records == 37 * 12


def test_inspect_reports_incomplete_and_corrupt_stores(tmp_path, capsys) -> None:
    url = str(tmp_path / "partial")
    writer = create_store(url, make_manifest(), make_config())
    produce = producer(make_config(), make_manifest())
    writer.write_block(3, *produce(writer.block_range(3)))
    assert main(["inspect", url]) == 0
    assert "1/5 committed (8/37 samples" in capsys.readouterr().out
    shard = Path(url) / "topk/prob_gaps/c/3/0/0"
    shard.write_bytes(b"\0" * 8 + shard.read_bytes()[8:])
    assert main(["inspect", url]) == 1
    out = capsys.readouterr().out
    assert "integrity      FAILED" in out and "topk/prob_gaps" in out


def test_subset_keeps_first_slots_and_top_classes(store_url: str, tmp_path, capsys) -> None:
    out = str(tmp_path / "small")
    assert main(["subset", store_url, "--slots", "6", "--topk", "3", out]) == 0
    assert "5/5 blocks, 6 slots, top-3" in capsys.readouterr().out
    small, full = StoreReader(out, dataset=make_manifest()), StoreReader(store_url)
    assert (small.config.slots, small.config.k, small.config.slot_group) == (6, 3, 4)
    for block in range(5):
        records, targets = small.read_block(block)
        full_records, full_targets = full.read_block(block)
        assert records.tobytes() == full_records[:, :6].tobytes()
        assert np.array_equal(targets.classes, full_targets.classes[:, :6, :3])
        assert np.array_equal(targets.probs, full_targets.probs[:, :6, :3])
    assert StoreWriter(out).pending() == []
    assert main(["subset", store_url, "--slots", "6", "--topk", "3", out]) == 0  # resumes: no-op
    assert main(["subset", store_url, "--slots", "5", "--topk", "3", out]) == 2  # not its subset
    assert "not a subset" in capsys.readouterr().err


def test_scan_manifest_fingerprints_real_files(corpus, tmp_path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for path in corpus.paths[:6]:
        shutil.copy(path, root / path.name)
    names = sorted(p.name for p in root.iterdir())
    manifest = scan_manifest(root, names, list(range(6)))
    assert manifest.sizes.tolist() == [(root / n).stat().st_size for n in names]
    assert np.array_equal(manifest.image_hw,
                          [corpus.image_hw[[p.name for p in corpus.paths].index(n)] for n in names])
    same = scan_manifest(root, names, list(range(6)), workers=1)
    assert same.fingerprint == manifest.fingerprint
    data = bytearray((root / names[2]).read_bytes())
    data[-3] ^= 1
    (root / names[2]).write_bytes(bytes(data))
    changed = scan_manifest(root, names, list(range(6)))
    assert changed.fingerprint != manifest.fingerprint
    assert manifest.first_difference(changed).startswith("sample 2 ")
    assert "content hash" in manifest.first_difference(changed)
