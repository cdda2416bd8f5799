"""A write that fails (full disk) is named and resumable: `StoreWriter`, `create_store`, subset.

Each fault runs twice: on a real full file system (a small tmpfs, where the test may mount
one) and as an `OSError(ENOSPC)` injected at zarr's lowest local write (`tests.faults`). The
error must name the store and the object; the CLI must exit non-zero with it; the same command
after the fault is gone must leave a store byte-identical to one written without a fault.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from dalidr.cli import main as cli_main
from dalidr.errors import StoreError, StoreWriteError
from store.subset import subset_store
from store.writer import StoreWriter, create_store
from tests.faults import FAULTS, PAGE, enospc_on, full_disk, pages
from tests.store.helpers import make_config, make_manifest, producer, tree_bytes, write_store

SUBSET = ["--slots", "6", "--topk", "3"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("source") / "store")
    write_store(url, make_manifest(), make_config())
    return url


@pytest.fixture(scope="module")
def clean_subset(source: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "small"
    subset_store(source, str(out), slots=6, topk=3)
    return out


def _no_partials(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.endswith(".partial")]


def test_a_full_disk_in_a_block_is_named_and_a_rerun_is_byte_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = tmp_path / "want"
    write_store(str(want), make_manifest(), make_config())
    url = str(tmp_path / "store")
    failed = enospc_on(monkeypatch, lambda p: "/topk/classes/c/2/" in p)
    with pytest.raises(StoreWriteError) as caught:
        write_store(url, make_manifest(), make_config())
    message = str(caught.value)
    assert failed and url in message
    assert "block 2 (samples 16..23) of array 'topk/classes' (object topk/classes/c/2/0/0)" \
        in message
    assert "No space left on device (ENOSPC)" in message
    assert re.search(r"needs up to [\d.]+ kB \(uncompressed\), [\d.]+ [kMGT]?B of [\d.]+ [kMGT]?B "
                     r"are free", message)
    assert "3 block(s) of the store, this one included, are still to write" in message
    monkeypatch.undo()
    written = StoreWriter(url).fill(producer(make_config(), make_manifest()))
    assert written == [2, 3, 4]
    _no_partials(Path(url))
    assert tree_bytes(url) == tree_bytes(want)


def test_a_failed_commit_leaves_the_block_uncommitted(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = str(tmp_path / "store")
    writer = create_store(url, make_manifest(), make_config())
    enospc_on(monkeypatch, lambda p: p.endswith("/commit_map/c/1/0"))
    with pytest.raises(StoreWriteError, match=r"the commit entry of block 1 .*commit_map/c/1/0"):
        writer.fill(producer(make_config(), make_manifest()))
    monkeypatch.undo()
    assert writer.committed().tolist() == [True, False, False, False, False]


def test_other_write_errors_are_named_too(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import zarr.storage._local as zarr_local

    def denied(path, value, exclusive=False):  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(zarr_local, "_put", denied)
    url = str(tmp_path / "store")
    with pytest.raises(StoreWriteError) as caught:
        create_store(url, make_manifest(), make_config())
    message = str(caught.value)
    assert f"store {url}: writing the store's metadata and manifest failed: Permission " \
           "denied (EACCES)" in message and "free" not in message


def test_the_error_survives_a_process_pool() -> None:
    error = pickle.loads(pickle.dumps(StoreWriteError("store s: writing x failed")))
    assert isinstance(error, StoreError) and str(error) == "store s: writing x failed"


@pytest.fixture
def mounts() -> Iterator[ExitStack]:
    """Tmpfs mounts a test makes, unmounted at teardown."""
    with ExitStack() as stack:
        yield stack


def _subset_fault(fault: str, where: str, out: Path, clean: Path,
                  monkeypatch: pytest.MonkeyPatch, mounts: ExitStack) -> Callable[[], None]:
    """Arrange the fault for a subset written to `out`; returns what removes it."""
    if fault == "inject":
        pattern = "/manifest/" if where == "creation" else "/records/crop/c/3/"
        enospc_on(monkeypatch, lambda p: pattern in p)
        return monkeypatch.undo
    need = pages(clean)
    # Room for the root metadata only, or for all but the last blocks of the store.
    disk = mounts.enter_context(full_disk(out.parent, PAGE * (2 if where == "creation"
                                                              else need - 16)))
    return lambda: disk.grow(PAGE * (need + 64))


@pytest.mark.parametrize("where", ["creation", "block"])
@pytest.mark.parametrize("fault", FAULTS)
def test_subset_on_a_full_disk_exits_named_and_resumes_byte_identical(
        source: str, clean_subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], mounts: ExitStack, fault: str, where: str) -> None:
    out = tmp_path / "mnt" / "small"
    remove_fault = _subset_fault(fault, where, out, clean_subset, monkeypatch, mounts)
    assert cli_main(["subset", source, *SUBSET, str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dalidr subset: error: store ") and f"store {out}: writing " in err
    assert "No space left on device (ENOSPC)" in err and "rerun the same command" in err
    assert "Traceback" not in err and err.count("\n") == 1  # one paragraph
    if where == "creation":
        assert "the store's metadata and manifest" in err
    else:
        assert re.search(r"block \d \(samples \d+\.\.\d+\)( of array '[a-z_/]+' \(object "
                         r"[a-z_/]+/c/\d(/0)+\)|: removing)|the commit entry", err), err
    if fault == "tmpfs":
        assert re.search(r"\d+ B of [\d.]+ kB are free on the file system of ", err), err
    remove_fault()
    assert cli_main(["subset", source, *SUBSET, str(out)]) == 0
    assert "5/5 blocks" in capsys.readouterr().out
    _no_partials(out)
    assert tree_bytes(out) == tree_bytes(clean_subset)


def test_skip_marks_that_cannot_be_written_are_named(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from dalidr.teacher.skips import skipped_views

    url, manifest, config = str(tmp_path / "store"), make_manifest(), make_config()
    writer = create_store(url, manifest, config)
    block = producer(config, manifest)(writer.block_range(1))
    marks = np.zeros((8, 12), dtype=bool)
    marks[2, 5] = True
    enospc_on(monkeypatch, lambda p: "/skipped/c/1/" in p)
    with pytest.raises(StoreWriteError, match=r"writing block 1 \(samples 8\.\.15\) of array "
                                              r"'skipped' \(object skipped/c/1/0\) failed"):
        writer.write_block(1, *block, marks)
    assert not writer.committed()[1]
    monkeypatch.undo()
    writer.write_block(1, *block, marks)
    assert np.flatnonzero(skipped_views(url).any(1)).tolist() == [10]
