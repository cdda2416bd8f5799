"""`dalidr upgrade`: a schema 2 store made by the previous release becomes the schema 3 store the
current release makes fresh, and serves byte-identical batches (docs/design/store-v3.md).

The schema 2 store is real: `tests/fixtures/store_v2/` was written by `dalidr reinforce` of the
release before v3 (`tests/fixtures/README.md`), from the 8 JPEGs beside it, one replaced by
bytes that are not an image so the store holds skip marks. The fresh schema 3 store is made
here by today's `dalidr reinforce` with the same configuration (`store_v2_recipe.py`): same
seed, random teacher, recipe, slots and data.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dalidr.cli import main as cli_main
from dalidr.errors import StoreError, StoreWriteError
from dalidr.teacher.reinforce import reinforce
from dalidr.teacher.skips import skipped_views
from dalidr.training.loader import LastBatch, LoaderConfig, ReinforcedLoader
from store.config import ATTRS_KEY
from store.layout import StoreLayout
from store.reader import StoreReader
from store.upgrade import upgrade_store
from tests.faults import enospc_on
from tests.store.helpers import tree_bytes

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURE))
import store_v2_recipe as v2  # type: ignore[import-not-found]  # noqa: E402

# What an upgrade leaves as it was (byte for byte) and what it writes.
KEPT = ("records/", "topk/", "manifest/")
SEALED = ("records/", "topk/", "skipped/", "derived/", "commit_map/")


def _copy_v2(folder: Path) -> tuple[Path, Path]:
    """A writable copy of the fixture: (data root, store)."""
    shutil.copytree(FIXTURE / "store_v2", folder)
    return folder / "data", folder / "store.zarr"


def _attrs(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())["attributes"][ATTRS_KEY]


def _part(tree: dict[str, bytes], prefixes: tuple[str, ...]) -> dict[str, bytes]:
    return {k: v for k, v in tree.items() if k.startswith(prefixes)}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data root, the fixture upgraded by the CLI, the same store made fresh as v3)."""
    base = tmp_path_factory.mktemp("upgrade")
    data, upgraded = _copy_v2(base / "v2")
    assert _attrs(upgraded)["schema_version"] == 2
    assert cli_main(["upgrade", str(upgraded), "--no-progress"]) == 0
    fresh = base / "fresh.zarr"
    report = reinforce(v2.reinforce_config(data, fresh), rank=0, world=1)
    assert report.committed == report.num_blocks and report.skipped_samples == (v2.BAD,)
    return data, upgraded, fresh


def test_upgraded_store_holds_the_fresh_stores_bytes(stores: tuple[Path, Path, Path]) -> None:
    _, upgraded, fresh = stores
    old = tree_bytes(FIXTURE / "store_v2" / "store.zarr")
    now = tree_bytes(upgraded)
    assert _part(now, KEPT) == _part(old, KEPT)  # untouched, byte for byte
    assert _part(now, SEALED) == _part(tree_bytes(fresh), SEALED)
    assert not (upgraded / "dalidr_skipped").exists() and not (upgraded / "commit").exists()
    got, want = _attrs(upgraded), _attrs(fresh)
    assert got["schema_version"] == want["schema_version"] == 3
    assert got["teacher_members"] is None and want["teacher_members"][0]["weights"].startswith(
        "random:")
    for attrs in (got, want):
        attrs.pop("teacher_members"), attrs.pop("digest")
    assert got == want


def test_upgraded_store_serves_the_fresh_stores_batches(
        stores: tuple[Path, Path, Path]) -> None:
    data, upgraded, fresh = stores
    marks = skipped_views(str(fresh))
    assert marks[v2.BAD].all() and marks.sum() > v2.SETTINGS["slots"]  # partners' views too
    np.testing.assert_array_equal(skipped_views(str(upgraded)), marks)
    old, new = StoreReader(str(upgraded)), StoreReader(str(fresh))
    for block in range(new.num_blocks):
        (a, ta), (b, tb) = old.read_block(block), new.read_block(block)
        assert a.tobytes() == b.tobytes() and ta.classes.tobytes() == tb.classes.tobytes()
        assert ta.probs.tobytes() == tb.probs.tobytes()
    for epoch in range(2):
        got, want = old.epoch(epoch), new.epoch(epoch)
        assert got.records.tobytes() == want.records.tobytes()
        assert got.targets.probs.tobytes() == want.targets.probs.tobytes()

    def batches(url: Path) -> list[tuple[list[int], list[bytes]]]:
        config = LoaderConfig(batch_size=3, last_batch=LastBatch.PARTIAL)
        out = []
        with ReinforcedLoader(str(url), data, config) as loader:
            for images, targets in loader:
                tensors = [images, *(targets if isinstance(targets, (tuple, list))
                                     else [targets])]
                out.append((loader.served_samples.tolist(),
                            [t.cpu().numpy().tobytes() for t in tensors
                             if isinstance(t, torch.Tensor)]))
        return out

    served = batches(fresh)
    assert served == batches(upgraded)
    samples = {s for batch, _ in served for s in batch}
    assert samples == set(np.flatnonzero(~marks.any(axis=1)).tolist())  # unmarked, all served


def test_rerun_on_a_current_store_says_so(stores: tuple[Path, Path, Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, upgraded, fresh = stores
    for store in (upgraded, fresh):
        before = tree_bytes(store)
        assert cli_main(["upgrade", str(store), "--no-progress"]) == 0
        assert "schema version 3, current; nothing to do" in capsys.readouterr().out
        assert tree_bytes(store) == before


def test_readers_refuse_a_v2_store_with_the_upgrade_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, store = _copy_v2(tmp_path / "v2")
    with pytest.raises(StoreError, match=rf"{store} has store schema version 2.*run `dalidr "
                                         rf"upgrade {store}`"):
        StoreReader(str(store))
    with pytest.raises(StoreError, match="dalidr upgrade"):
        skipped_views(str(store))
    assert cli_main(["inspect", str(store)]) == 2
    assert f"`dalidr upgrade {store}`" in capsys.readouterr().err


@pytest.mark.parametrize("failing", ["zarr.json", "commit_map/c/1/0", "skipped/c/0/0"])
def test_an_interrupted_upgrade_reruns_to_the_same_store(
        stores: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        failing: str) -> None:
    """A write that fails mid-way (here: the root attributes, after every commit row; a commit
    row; a skip-mark shard) leaves a schema 2 store that a rerun upgrades to the same bytes."""
    _, store = _copy_v2(tmp_path / "v2")
    target = str(store / failing)
    root_write = _the_root_write(store)
    enospc_on(monkeypatch, lambda p: root_write(p) if failing == "zarr.json" else p == target)
    with pytest.raises(StoreWriteError, match=f"store {store}: writing"):
        upgrade_store(str(store))
    monkeypatch.undo()
    assert _attrs(store)["schema_version"] == 2  # still the old store, its old arrays there
    assert (store / "dalidr_skipped").is_dir() and (store / "commit").is_dir()
    upgrade_store(str(store))
    assert tree_bytes(store) == tree_bytes(stores[1])


def _the_root_write(store: Path) -> Callable[[str], bool]:
    """Whether a write is the upgrade's own write of the root attributes (step 3), for failing it.

    Creating an array has zarr also write its parents' zarr.json where absent: an exclusive
    write, a no-op here, but one the fault hook sees, made concurrently with the array's own
    metadata. Failed, that array's write would land after the error, in the middle of a test's
    snapshot. The upgrade writes the manifest's digests last before the root, and their data
    chunk exists only once their array is complete."""
    root = str(store / "zarr.json")
    digests = store / "manifest_digests/c/0/0"
    return lambda path: path == root and digests.exists()


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda s: _flip_byte(s / "records/crop/c/1/0/0"), r"array 'records/crop', block 1 is "
                                                       "corrupt"),
    (lambda s: shutil.copy(s / "topk/classes/c/0/0/0", s / "topk/classes/c/1/0/0"),
     r"block 1 \(samples 4\.\.7\) does not match its commit digest"),
    (lambda s: (s / "records/flip/c/0/0").unlink(), r"block 0 is committed but its object "
                                                    r"'records/flip/c/0/0' is missing"),
    (lambda s: _edit_attrs(s, seed=4), "attributes do not match their digest"),
    (lambda s: _flip_byte(s / "manifest/sha256/c/0/0"), "manifest"),
])
def test_a_damaged_v2_store_is_not_upgraded(tmp_path: Path, damage, message: str) -> None:
    _, store = _copy_v2(tmp_path / "v2")
    damage(store)
    before = tree_bytes(store)
    with pytest.raises(StoreError, match=rf"{store}: cannot be upgraded: .*{message}.*nothing "
                                         "was changed"):
        upgrade_store(str(store))
    assert tree_bytes(store) == before


def _edit_attrs(store: Path, **changes: object) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"][ATTRS_KEY].update(changes)
    (store / "zarr.json").write_text(json.dumps(meta))


def test_reinforce_refuses_to_resume_with_another_or_an_unknown_teacher(
        stores: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The teacher is part of the store's identity: a resumed pass with other weights is
    refused naming both; an upgraded store (teacher_members null) is not resumed at all."""
    import dataclasses

    import timm
    from safetensors.torch import save_file

    data, upgraded, fresh = stores
    torch.manual_seed(7)
    checkpoint = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(checkpoint))
    other = dataclasses.replace(v2.reinforce_config(data, fresh),
                                teacher=f"test_resnet@{checkpoint}", random_teacher=False)
    with pytest.raises(StoreError, match=r"was labelled by the teacher test_resnet \(weights "
                                         r"random:\d+.*this run's teacher is test_resnet "
                                         r"\(weights sha256:[0-9a-f]{64}"):
        reinforce(other, rank=0, world=1)
    with pytest.raises(StoreError, match="does not record its teacher.*cannot resume it"):
        reinforce(v2.reinforce_config(data, upgraded), rank=0, world=1)
    assert reinforce(v2.reinforce_config(data, fresh), rank=0, world=1).blocks_written == ()


def _reseal_v2(store: Path, **changes: object) -> None:
    """A forger's edit of the schema 2 attributes: the digest recomputed under the v2 salt."""
    from store.layout import attrs_digest

    meta = json.loads((store / "zarr.json").read_text())
    attrs = meta["attributes"][ATTRS_KEY]
    attrs.update(changes)
    attrs.pop("digest")
    attrs["digest"] = attrs_digest(attrs, version=2)
    (store / "zarr.json").write_text(json.dumps(meta))


def _chunks(store: Path, array: str, shape: list[int]) -> None:
    """Forge an array's (outer) chunk shape in its zarr.json."""
    path = store / array / "zarr.json"
    meta = json.loads(path.read_text())
    meta["chunk_grid"]["configuration"]["chunk_shape"] = shape
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(("forge", "message"), [
    (lambda s: _reseal_v2(s, num_samples=1 << 40), r"array 'manifest/path_offsets' has shape "
                                                   r"\[9\], the schema needs \[1099511627777\]"),
    (lambda s: _reseal_v2(s, num_samples=12), r"array 'manifest/path_offsets' has shape "
                                              r"\[9\], the schema needs \[13\]"),
    (lambda s: _chunks(s, "dalidr_skipped", [1 << 40, 4]), r"array 'dalidr_skipped' has chunks"),
    (lambda s: _chunks(s, "commit", [1 << 30, 3]), r"array 'commit' has chunks"),
    (lambda s: _chunks(s, "records/crop", [1 << 30, 4, 4]), r"array 'records/crop' has chunks"),
    (lambda s: _chunks(s, "manifest/label", [1 << 40]), r"array 'manifest/label' has chunks"),
])
def test_forged_bounds_are_refused_before_anything_is_read(tmp_path: Path, forge,
                                                           message: str) -> None:
    """A sample count or chunk shape that would make the upgrade allocate terabytes (the
    attributes' digest recomputed, so only the bounds checks can tell) is refused by name."""
    _, store = _copy_v2(tmp_path / "v2")
    forge(store)
    before = tree_bytes(store)
    with pytest.raises(StoreError, match=rf"{store}: cannot be upgraded: {message}.*nothing "
                                         "was changed"):
        upgrade_store(str(store))
    assert tree_bytes(store) == before


def test_an_incomplete_store_is_refused_unless_allowed(
        stores: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Upgraded, a store's uncommitted blocks can never be written (no teacher recorded), so
    the upgrade refuses it before writing anything, unless --allow-incomplete."""
    _, store = _copy_v2(tmp_path / "v2")
    # An earlier run cut short at the root write left a commit_map row for every block.
    with pytest.MonkeyPatch.context() as patch:
        enospc_on(patch, _the_root_write(store))
        with pytest.raises(StoreWriteError):
            upgrade_store(str(store))
    assert (store / "commit_map/c/1/0").is_file()
    (store / "commit/c/1/0").unlink()  # block 1 no longer committed
    before = tree_bytes(store)
    with pytest.raises(StoreError, match=rf"{store}: cannot be upgraded yet: 1 of 2 blocks "
                                         r"\(block 1 first\) are not committed.*previous dalidr "
                                         "release.*--allow-incomplete.*nothing was changed"):
        upgrade_store(str(store))
    assert tree_bytes(store) == before
    assert cli_main(["upgrade", str(store), "--no-progress", "--allow-incomplete"]) == 0
    assert "1 block(s) are not committed" in capsys.readouterr().out
    reader = StoreReader(str(store))
    assert reader.committed().tolist() == [True, False]
    assert not (store / "commit_map/c/1/0").exists()  # the earlier run's row, cleared
    full = tree_bytes(stores[1])
    for prefix in ("records/", "topk/", "commit_map/c/0/", "skipped/c/0/", "derived/"):
        got = {k: v for k, v in tree_bytes(store).items()
               if k.startswith(prefix) and "/c/1/" not in k}
        assert got == {k: v for k, v in full.items()
                       if k.startswith(prefix) and "/c/1/" not in k}


def test_a_kill_after_the_root_write_is_finished_by_a_rerun(
        stores: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Killed while scoring the difficulty (after the root write): a schema 3 store with the
    schema 2 arrays left, which a rerun scores and cleans to the same bytes."""
    _, store = _copy_v2(tmp_path / "v2")
    target = str(store / "derived/strength/c/1/0")
    enospc_on(monkeypatch, lambda p: p == target)
    with pytest.raises(StoreWriteError, match=f"store {store}: writing"):
        upgrade_store(str(store))
    monkeypatch.undo()
    assert _attrs(store)["schema_version"] == 3
    assert (store / "dalidr_skipped").is_dir() and (store / "commit").is_dir()
    assert cli_main(["upgrade", str(store), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "finished an interrupted upgrade: difficulty written for 1 block(s)" in out
    assert tree_bytes(store) == tree_bytes(stores[1])


def test_a_concurrent_change_is_refused_not_sealed(stores: tuple[Path, Path, Path],
                                                  tmp_path: Path) -> None:
    """Two upgrades (or an upgrade and a schema 2 writer) at once: the one that finds the skip
    marks gone or changed, or the commit map changed, refuses instead of sealing them."""
    import zarr

    from store import upgrade

    def checked(store: Path) -> tuple[StoreLayout, Any]:
        layout, _ = upgrade._checked_v2(str(store), upgrade.locate(str(store), False),
                                        _attrs(store))
        return layout, upgrade._check_blocks(layout, upgrade._old_rows(layout), False)

    # A second upgrade, checked before the first one finished and removed the old arrays.
    _, store = _copy_v2(tmp_path / "gone")
    layout, found = checked(store)
    upgrade_store(str(store))
    with pytest.raises(StoreError, match=rf"{store}: another process changed the store during "
                                         r"the upgrade \(the schema 2 array 'dalidr_skipped' "
                                         r"was removed\); rerun"):
        upgrade._write_new(layout, found, False)
    assert tree_bytes(store) == tree_bytes(stores[1])  # the finished upgrade stands
    # A mark changed between the check and the copy.
    _, store = _copy_v2(tmp_path / "marks")
    layout, found = checked(store)
    marks = zarr.open_array(str(store / "dalidr_skipped"), mode="r+")
    marks[1, 0] = 1 - int(np.asarray(marks[1, 0]))
    with pytest.raises(StoreError, match=r"another process changed the store.*skip marks of "
                                         r"block 0 \(samples 0\.\.3\) changed"):
        upgrade._write_new(layout, found, False)
    # A block committed (by a writer of the previous release) after the check.
    _, store = _copy_v2(tmp_path / "commit")
    saved = (store / "commit/c/1/0").read_bytes()
    (store / "commit/c/1/0").unlink()
    layout, _ = upgrade._checked_v2(str(store), upgrade.locate(str(store), False),
                                    _attrs(store))
    found = upgrade._check_blocks(layout, upgrade._old_rows(layout), False)
    (store / "commit/c/1/0").write_bytes(saved)
    upgrade._write_new(layout, found, False)
    with pytest.raises(StoreError, match=r"another process changed the store.*commit map "
                                         r"'commit' changed"):
        upgrade._recheck_commit(layout, found.old_rows)
    assert _attrs(store)["schema_version"] == 2


def test_arrays_of_an_earlier_run_must_be_the_schemas(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, store = _copy_v2(tmp_path / "v2")
    enospc_on(monkeypatch, _the_root_write(store))
    with pytest.raises(StoreWriteError):
        upgrade_store(str(store))
    monkeypatch.undo()
    meta = json.loads((store / "skipped/zarr.json").read_text())
    codecs = meta["codecs"][0]["configuration"]["codecs"]
    blosc = next(c for c in codecs if c["name"] == "blosc")
    blosc["configuration"]["clevel"] = 1
    (store / "skipped/zarr.json").write_text(json.dumps(meta))
    before = tree_bytes(store)
    with pytest.raises(StoreError, match=rf"{store}: cannot be upgraded: it already has an "
                                         r"array 'skipped' whose metadata .* is not what schema "
                                         "3 makes"):
        upgrade_store(str(store))
    assert tree_bytes(store) == before


def test_a_redo_killed_midway_leaves_not_written(stores: tuple[Path, Path, Path],
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`dalidr difficulty --redo` zeroes a block's derived digest before rewriting its shards:
    a kill between leaves "not written", never "damaged"; damage names the --redo command."""
    import zarr

    from store.derived import read_derived
    from store.difficulty_pass import fill_difficulty
    from store.layout import open_layout

    store = tmp_path / "redo.zarr"
    shutil.copytree(stores[1], store)
    target = str(store / "derived/strength/c/1/0")
    enospc_on(monkeypatch, lambda p: p == target)
    with pytest.raises(StoreWriteError):
        fill_difficulty(str(store), redo=True, progress=False)
    monkeypatch.undo()
    layout = open_layout(str(store))
    rows = layout.commit_rows()
    assert rows[0, -1] != 0 and rows[1, -1] == 0
    with pytest.raises(StoreError, match=r"block 1 .*no derived arrays .* written yet"):
        read_derived(layout, np.array([5]), np.array([0]))
    assert fill_difficulty(str(store), progress=False) == 1
    assert tree_bytes(store) == tree_bytes(stores[1])
    strength = zarr.open_array(str(store / "derived/strength"), mode="r+")
    strength[0, 0] = int(np.asarray(strength[0, 0])) ^ 1
    with pytest.raises(StoreError, match=rf"do not match their digest.*`dalidr difficulty "
                                         rf"{store} --redo`"):
        read_derived(open_layout(str(store)), np.array([0]), np.array([0]))
