"""Writers: commit-last visibility, SIGKILL and resume, concurrent processes, bad blocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from dalidr.errors import RecordError, StoreError
from store.reader import StoreReader
from store.writer import StoreWriter, create_store
from tests.store.helpers import (
    make_config,
    make_manifest,
    producer,
    tree_bytes,
    write_store,
)

REPO = Path(__file__).resolve().parents[2]
DATA_ARRAYS = 8  # records: crop, flip, ops, mags, erase; topk: classes, prob_gaps; skipped


def _writer(url: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "tests.store.writer_process", str(url), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The bytes of a store written in one uninterrupted run."""
    url = tmp_path_factory.mktemp("reference") / "store"
    write_store(str(url), make_manifest(), make_config())
    return tree_bytes(url)


def test_killed_writer_leaves_only_committed_blocks_and_resumes_identically(
        tmp_path, reference) -> None:
    url = tmp_path / "store"
    manifest, config = make_manifest(), make_config()
    create_store(str(url), manifest, config)
    # Stall after blocks 0 and 1 and three of block 2's eight shards, then SIGKILL.
    proc = _writer(url, "--stall-after", str(2 * DATA_ARRAYS + 3))
    timer = threading.Timer(120, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "STALLED"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        timer.cancel()
        proc.kill()

    reader = StoreReader(str(url), dataset=manifest)
    assert reader.committed().tolist() == [True, True, False, False, False]
    assert (url / "records/ops/c/2/0/0").exists()  # half of block 2 is on disk ...
    with pytest.raises(StoreError, match="block 2 .*not committed"):
        reader.read_views(np.array([16]), np.array([0]))  # ... but invisible
    records, classes, _ = producer(config, manifest)(range(0, 16))
    got_records, got = reader.read_views(np.repeat(np.arange(16), 12), np.tile(np.arange(12), 16))
    assert got_records.tobytes() == records.reshape(-1).tobytes()
    assert np.array_equal(got.classes, classes.reshape(-1, config.k))

    # What a SIGKILL inside a LocalStore write leaves behind: a temporary file.
    torn = url / "records/mags/c/2/0/0.0123456789abcdef.partial"
    torn.parent.mkdir(parents=True, exist_ok=True)
    torn.write_bytes(b"torn")
    resumed = _writer(url)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0 and out.split() == ["WROTE", "2", "3", "4"]
    assert not torn.exists()
    assert tree_bytes(url) == reference


def test_two_writer_processes_on_disjoint_blocks(tmp_path, reference) -> None:
    url = tmp_path / "store"
    create_store(str(url), make_manifest(), make_config())
    procs = [_writer(url, "--worker", str(w), "--workers", "2") for w in (0, 1)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [["WROTE", "0", "2", "4"], ["WROTE", "1", "3"]]
    assert tree_bytes(url) == reference


def test_restart_skips_committed_blocks(tmp_path) -> None:
    url = str(tmp_path / "store")
    writer = write_store(url, make_manifest(), make_config())
    assert writer.pending() == []
    assert StoreWriter(url).fill(producer(make_config(), make_manifest())) == []


def test_bad_blocks_are_refused_with_the_culprit(tmp_path) -> None:
    manifest, config = make_manifest(), make_config()
    writer = create_store(str(tmp_path / "store"), manifest, config)
    records, classes, probs = producer(config, manifest)(writer.block_range(1))
    bad = classes.copy()
    bad[3, 7, 2] = config.num_classes
    with pytest.raises(StoreError, match="sample 3 of the block, slot 7: a class index"):
        writer.write_block(1, records, bad, probs)
    bad = classes.copy()
    bad[0, 1, 1] = bad[0, 1, 0]
    with pytest.raises(StoreError, match="slot 1: a class appears twice"):
        writer.write_block(1, records, bad, probs)
    bad_probs = probs.copy()
    bad_probs[2, 0, 0] = np.nan
    with pytest.raises(StoreError, match="sample 2 of the block, slot 0: a probability"):
        writer.write_block(1, records, classes, bad_probs)
    with pytest.raises(StoreError, match="records are"):
        writer.write_block(1, records[:, :5], classes, probs)
    bad_records = records.copy()
    bad_records[4, 2]["ops"][0] = 200
    with pytest.raises(RecordError, match="sample 12, slot 2"):
        writer.write_block(1, bad_records, classes, probs)
    with pytest.raises(StoreError, match="block 9 is not in 0..4"):
        writer.write_block(9, records, classes, probs)
    assert not writer.committed().any()


def test_create_refuses_an_existing_store(tmp_path) -> None:
    url = str(tmp_path / "store")
    create_store(url, make_manifest(), make_config())
    with pytest.raises(StoreError, match="already exists"):
        create_store(url, make_manifest(), make_config())
