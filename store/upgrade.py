"""`dalidr upgrade STORE`: turn a schema 2 store into a schema 3 one, in place, without the teacher.

What changes (docs/design/store-v3.md): the skip marks move from the undigested side array
`dalidr_skipped` into the data array `skipped`; the commit map gains the skip marks in every
digest and a last column for the derived digest, under its new name `commit_map`; the
difficulty arrays `derived/*` are created and filled; the root attributes get `schema_version`
3, `teacher_members: null` (nobody recorded the teacher: the store trains, but `dalidr
reinforce` will not resume it) and their digest under the new salt. Records and top-k shards
and the manifest stay as they are, byte for byte (the manifest keeps its schema 2 chunks of
2^20 samples; chunks are not part of its fingerprint and readers take any chunking).

Order, so that a kill at any point leaves a store some dalidr reads:

1. Check the schema 2 store as a schema 2 read does, bounds before contents: the attributes'
   digest; every array's metadata (the manifest's, with the sample count backed by its objects,
   `store.validate.check_manifest_layout`; each data array, `commit` [num_blocks, 1 + groups]
   uint64 and `dalidr_skipped` [N, slots] uint8: shape, dtype, chunks no larger than the array),
   so a forged sample count or chunk shape is refused before anything of that size is read;
   the manifest's fingerprint; and every committed block's commit row recomputed from its data.
   A damaged store is refused with nothing written: sealing it would make its damage look
   intact. A store whose teacher pass did not finish is refused too, unless
   `allow_incomplete` (`--allow-incomplete`): upgraded, its missing blocks could never be
   written, so it should be finished with the previous release first.
2. Write everything new under names schema 2 does not use (`skipped`, `derived/`,
   `commit_map`, `manifest_digests`: the manifest's block digests, `store.manifest_view`).
   Until step 3 the store is a valid schema 2 store with extra arrays. Arrays an
   earlier run created must have exactly the metadata a fresh create gives.
3. Replace the root `zarr.json` (the attributes) in one write: a file renamed into place
   locally (zarr's LocalStore), one PUT on an object store. From here it is a schema 3 store.
4. Score every committed block's views for curricula (`store.difficulty_pass`, what the teacher
   pass does after each commit), so an upgraded store holds the bytes of the same store made
   fresh. Resumable like the rest: blocks already scored are skipped.
5. Remove the old `dalidr_skipped` and `commit`: last, so that while they remain, a rerun knows
   an upgrade is unfinished.
6. For a complete store, write the commit summary (`store.commit_summary`: every block's commit
   digests and skipped-view count in a few objects, what lets a loader start without reading
   one object per block). Derived from the store, so rewritten identically after a kill.

A schema 3 store made before the manifest's block digests or the commit summary existed gets
them (the digests from its manifest, checked against the fingerprint first; the summary from
its commit map and skip marks, if every block is committed), and nothing else.

Every object of step 2 is a deterministic function of the schema 2 store, so a rerun after a
kill rewrites the same bytes and continues; a rerun on a schema 3 store acts only while the
schema 2 arrays remain (steps 4 and 5) and writes nothing to a clean one. Cost: one read of
every committed block (I/O and hashing, no GPU) plus writing one small shard and one commit row
per block, then the difficulty pass (about one more read).

No other job may use the store during an upgrade (no teacher pass of the previous release, no
second upgrade, no training). What a concurrent one would break is checked, not prevented: the
skip marks are hashed per block when checked and must hash the same when copied, and the schema
2 commit map is read again right before the root write; a change refuses the upgrade ("another
process changed the store during the upgrade; rerun") instead of sealing zeros or stale rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

from dalidr.errors import DalidrError, StoreError
from dalidr.progress import progress_bar, progress_wanted
from store.commit_summary import read_commit_summary
from store.config import ATTRS_KEY, SCHEMA_VERSION, UPGRADABLE_VERSION, StoreConfig
from store.difficulty_pass import fill_difficulty
from store.layout import (
    COMMIT,
    CORRUPT_CHUNK_ERRORS,
    DERIVED,
    SKIPPED,
    StoreLayout,
    _data_arrays,
    _derived_arrays,
    attrs_digest,
    create_commit_map,
    create_data_array,
    open_layout,
    root_group,
)
from store.location import StoreLocation, locate, redacted
from store.manifest_view import DIGESTS, write_manifest_digests
from store.validate import check_manifest_layout, checked_array, checked_manifest
from store.write_errors import writing
from store.writer import StoreWriter, commit_row

__all__ = ["UpgradeReport", "upgrade_store", "register"]

# The schema 2 names that schema 3 replaces.
OLD_SKIPPED = "dalidr_skipped"
OLD_COMMIT = "commit"


@dataclass(frozen=True)
class UpgradeReport:
    """What `upgrade_store` did."""

    url: str
    # The schema the store had when the command started (3: it was current already).
    found_version: int
    committed_blocks: int
    num_blocks: int
    # Views marked skipped, carried into `skipped`.
    skipped_views: int
    # Committed blocks whose difficulty (`derived/*`) this run wrote.
    difficulty_blocks: int = 0
    # The schema 2 arrays this run removed (on a schema 3 store: an interrupted upgrade's).
    removed: tuple[str, ...] = ()
    # Whether this run wrote the manifest's block digests (`store.manifest_view`).
    manifest_digests: bool = False
    # Whether this run wrote the commit summary (`store.commit_summary`).
    commit_summary: bool = False

    @property
    def changed(self) -> bool:
        """Whether this run wrote anything (a clean schema 3 store: no)."""
        return (self.found_version != SCHEMA_VERSION or bool(self.removed)
                or self.difficulty_blocks > 0 or self.manifest_digests or self.commit_summary)


@dataclass(frozen=True)
class _Checked:
    """What checking a schema 2 store found: what to write, and what to check again before."""

    # The schema 2 commit map, [num_blocks, 1 + groups], to compare before the root write.
    old_rows: np.ndarray
    # The schema 3 commit row of each committed block.
    rows: dict[int, np.ndarray]
    # Whether `dalidr_skipped` existed (absent: no view was ever marked, the marks are zeros).
    had_marks: bool
    # A hash of each committed block's skip marks, to compare when they are read again.
    mark_hashes: dict[int, bytes]
    # Views marked skipped.
    marked: int


def upgrade_store(url: str, progress: bool = False,
                  allow_incomplete: bool = False) -> UpgradeReport:
    """Upgrade the schema 2 store at `url` to schema 3 in place (see the module docstring).
    A schema 2 store with blocks not committed is refused unless `allow_incomplete` (upgraded,
    they can never be written). A schema 3 store is only finished where an interrupted upgrade
    left its schema 2 arrays; a clean one is not written to."""
    version, attrs = _root_attrs(url, locate(url, read_only=True), read_only=True)
    if version == SCHEMA_VERSION:
        return _finish(url, progress)
    if version != UPGRADABLE_VERSION:
        open_layout(url)  # names what is wrong (not a store, too old, too new)
        raise StoreError(f"{url}: schema version {version!r} cannot be upgraded")
    location = locate(url, read_only=False)
    version, attrs = _root_attrs(url, location, read_only=False)
    if version != UPGRADABLE_VERSION:
        raise _changed(url, f"its schema version became {version!r}")
    layout, new_attrs = _checked_v2(url, location, attrs)
    old_rows = _old_rows(layout)
    _refuse_incomplete(layout, old_rows, allow_incomplete)
    checked = _check_blocks(layout, old_rows, progress)
    _write_new(layout, checked, progress)
    _write_manifest_digests(layout)
    _recheck_commit(layout, checked.old_rows)
    with writing(location, "the store's root attributes (zarr.json)", 1 << 16):
        layout.group.update_attributes({ATTRS_KEY: new_attrs})
    # Difficulty for curricula, as the teacher pass now writes it: from the store alone. Before
    # the schema 2 arrays go, so that a rerun after a kill here still finds work to do.
    scored = fill_difficulty(url, progress=progress)
    removed = _remove_old(location)
    summary = _write_summary(url)
    return UpgradeReport(url, UPGRADABLE_VERSION, len(checked.rows), layout.num_blocks,
                         checked.marked, scored, removed, manifest_digests=True,
                         commit_summary=summary)


def _root_attrs(url: str, location: StoreLocation, read_only: bool) -> tuple[Any, dict[str, Any]]:
    """(schema_version, the store attributes) of the root group; StoreError if there is none."""
    _, attrs = root_group(url, location, read_only)
    if not isinstance(attrs, dict):
        open_layout(url)  # names what is wrong
        raise StoreError(f"{url} is not a dalidr reinforcement store")
    return attrs.get("schema_version"), dict(attrs)


def _finish(url: str, progress: bool) -> UpgradeReport:
    """A schema 3 store: steps 5 and 4 where an interrupted upgrade left the schema 2 arrays;
    nothing written where it did not (a read-only store stays untouched)."""
    layout = open_layout(url)
    committed = int((layout.commits() != 0).sum())
    digests = not layout.location.exists(f"{DIGESTS}/zarr.json")
    if digests:  # a schema 3 store made before the manifest's block digests
        _write_manifest_digests(open_layout(url, read_only=False))
    if not _old_names(layout.location):
        return UpgradeReport(url, SCHEMA_VERSION, committed, layout.num_blocks, 0,
                             manifest_digests=digests, commit_summary=_write_summary(url))
    scored = fill_difficulty(url, progress=progress)
    removed = _remove_old(locate(url, read_only=False))
    return UpgradeReport(url, SCHEMA_VERSION, committed, layout.num_blocks, 0, scored, removed,
                         manifest_digests=digests, commit_summary=_write_summary(url))


def _write_summary(url: str) -> bool:
    """Step 6: the commit summary of a complete store that has no valid one; whether it was
    written (a read-only store that needs none stays untouched)."""
    layout = open_layout(url)
    if read_commit_summary(layout, quiet=True) is not None or not layout.commits().all():
        return False
    return StoreWriter(url).finish()


def _write_manifest_digests(layout: StoreLayout) -> None:
    """The manifest's block digests, from the manifest read whole and checked against the
    fingerprint (a rerun rewrites the same bytes)."""
    manifest = checked_manifest(layout, digests=False)  # the digests are (re)written here
    with writing(layout.location, f"the manifest's block digests ({DIGESTS!r})",
                 16 * layout.num_blocks + 4096):
        write_manifest_digests(layout.group, manifest, layout.config.block_size)


def _refused(url: str, what: str) -> StoreError:
    what = what.removeprefix(f"{url}: ")
    return StoreError(f"{url}: cannot be upgraded: {what}; nothing was changed (repair or "
                      "re-create the store; `dalidr inspect` with the previous dalidr names "
                      "the damage)")


def _changed(url: str, what: str) -> StoreError:
    return StoreError(f"{url}: another process changed the store during the upgrade ({what}); "
                      f"rerun `dalidr upgrade {url}` once no other job uses the store")


def _checked_v2(url: str, location: StoreLocation, attrs: dict[str, Any]
                ) -> tuple[StoreLayout, dict[str, Any]]:
    """The schema 2 store as a layout of its schema 3 config, and its new attributes; the
    attributes' digest, every array's metadata (before anything of that size is read: the
    checks `store.validate` runs on a schema 3 store) and the manifest checked."""
    digest = attrs.pop("digest", None)
    if digest != attrs_digest(attrs, version=UPGRADABLE_VERSION):
        raise _refused(url, "its attributes do not match their digest (edited or damaged)")
    num_samples, fingerprint = attrs.get("num_samples"), attrs.get("fingerprint")
    settings = {k: v for k, v in attrs.items() if k not in ("num_samples", "fingerprint")}
    settings.update(schema_version=SCHEMA_VERSION, teacher_members=None)
    config = StoreConfig.from_attrs(settings, url)
    if (not isinstance(num_samples, int) or isinstance(num_samples, bool)
            or not 1 <= num_samples <= 1 << 40 or not isinstance(fingerprint, str)):
        raise _refused(url, "its attributes lack a valid num_samples or fingerprint")
    group = zarr.open_group(location.store, mode="r+")
    layout = StoreLayout(location, group, config, num_samples, fingerprint)
    try:
        check_manifest_layout(layout)  # the sample count backed by the manifest's objects
        for name, (dtype, shape, _, _) in _data_arrays(config).items():
            if name != SKIPPED:
                checked_array(layout, name, (num_samples, config.slots) + shape, dtype)
        checked_array(layout, OLD_COMMIT, (layout.num_blocks, 1 + config.num_groups),
                      np.dtype("<u8"))
        if _has_old_marks(layout):
            checked_array(layout, OLD_SKIPPED, (num_samples, config.slots), np.dtype("u1"))
        checked_manifest(layout, digests=False)  # rewritten by step 2
    except DalidrError as exc:
        raise _refused(url, str(exc)) from exc
    store_attrs = {**config.to_attrs(), "num_samples": num_samples, "fingerprint": fingerprint}
    return layout, {**store_attrs, "digest": attrs_digest(store_attrs)}


def _has_old_marks(layout: StoreLayout) -> bool:
    return layout.location.exists(f"{OLD_SKIPPED}/zarr.json")


def _old_rows(layout: StoreLayout) -> np.ndarray:
    """The schema 2 commit map (its metadata checked by `_checked_v2`)."""
    try:
        return np.asarray(layout.array(OLD_COMMIT)[...], dtype=np.uint64)
    except CORRUPT_CHUNK_ERRORS as exc:
        raise _refused(layout.url, f"the commit map is corrupt: {redacted(exc)}") from exc


def _refuse_incomplete(layout: StoreLayout, old_rows: np.ndarray, allow: bool) -> None:
    """An upgraded store records no teacher, so `dalidr reinforce` never resumes it: its
    uncommitted blocks could never be written. Refused before anything is written unless
    `allow`."""
    missing = np.flatnonzero(old_rows[:, 0] == 0)
    if missing.size and not allow:
        raise StoreError(
            f"{layout.url}: cannot be upgraded yet: {missing.size} of {layout.num_blocks} "
            f"blocks (block {int(missing[0])} first) are not committed, and an upgraded store "
            "records no teacher, so `dalidr reinforce` could never finish them. Finish the "
            "store with the previous dalidr release (`dalidr reinforce` with the same "
            "settings) and upgrade it then, or pass --allow-incomplete to upgrade it as it is "
            "(its missing blocks can then never be written); nothing was changed")


def _old_marks(layout: StoreLayout, samples: range, had_marks: bool) -> np.ndarray:
    """One block's schema 2 skip marks (zeros where the store has none)."""
    if not had_marks:
        return np.zeros((len(samples), layout.config.slots), np.uint8)
    try:
        return (np.asarray(layout.array(OLD_SKIPPED)[samples.start:samples.stop]) != 0
                ).astype(np.uint8)
    except CORRUPT_CHUNK_ERRORS as exc:
        raise _refused(layout.url, f"the skip marks of samples {samples.start}.."
                       f"{samples.stop - 1} cannot be read: {redacted(exc)}") from exc


def _marks_hash(marks: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(marks).tobytes(), digest_size=16).digest()


def _check_blocks(layout: StoreLayout, old_rows: np.ndarray, progress: bool) -> _Checked:
    """Every committed block's schema 2 commit row against its data; the schema 3 rows by
    block, and what `_write_new` checks again (the skip marks' presence and hashes)."""
    cfg, url = layout.config, layout.url
    names = [name for name in layout.data_names if name != SKIPPED]
    had_marks = _has_old_marks(layout)
    rows: dict[int, np.ndarray] = {}
    hashes: dict[int, bytes] = {}
    marked = 0
    blocks = [int(b) for b in np.flatnonzero(old_rows[:, 0])]
    bar = progress_bar(len(blocks), f"checking {url}", progress_wanted(progress), unit="block")
    with bar:
        for block in blocks:
            r = layout.block_range(block)
            arrays = {}
            for name in names:
                key = layout.shard_key(name, block)
                if not layout.location.exists(key):
                    raise _refused(url, f"block {block} is committed but its object {key!r} "
                                   "is missing")
                try:
                    arrays[name] = np.asarray(layout.array(name)[r.start:r.stop])
                except CORRUPT_CHUNK_ERRORS as exc:
                    raise _refused(url, f"array {name!r}, block {block} is corrupt: "
                                   f"{redacted(exc)}") from exc
            old = commit_row(cfg, arrays, block)[:-1]  # schema 2: no derived column
            if not np.array_equal(old, old_rows[block]):
                raise _refused(url, f"block {block} (samples {r.start}..{r.stop - 1}) does not "
                               "match its commit digest (damaged, or a chunk copied from "
                               "elsewhere)")
            marks = _old_marks(layout, r, had_marks)
            marked += int(marks.sum())
            hashes[block] = _marks_hash(marks)
            rows[block] = commit_row(cfg, {**arrays, SKIPPED: marks}, block)
            bar.update(1)
    return _Checked(old_rows, rows, had_marks, hashes, marked)


def _metadata_json(array: zarr.Array) -> Any:
    """An array's metadata as its zarr.json holds it."""
    buffers = array.metadata.to_buffer_dict(default_buffer_prototype())
    return json.loads(buffers["zarr.json"].to_bytes())


def _ensure_arrays(layout: StoreLayout, resealed: set[int]) -> None:
    """Create the schema 3 arrays that are missing. One already there (a rerun's) must have
    exactly the metadata a fresh create gives (StoreError naming it otherwise, before anything
    is created); its commit rows of blocks not resealed now are cleared."""
    cfg, n, group, url = layout.config, layout.num_samples, layout.group, layout.url
    location = layout.location
    wanted = {SKIPPED: _data_arrays(cfg)[SKIPPED], **_derived_arrays()}
    scratch = zarr.open_group(MemoryStore(), mode="w")
    for name, description in wanted.items():
        create_data_array(scratch, name, cfg, n, description)
    create_commit_map(scratch, cfg, n)
    missing = []
    for name in (SKIPPED, *DERIVED, COMMIT):
        if not location.exists(f"{name}/zarr.json"):
            missing.append(name)
            continue
        try:
            node, fresh = group[name], scratch[name]
            same = (isinstance(node, zarr.Array) and isinstance(fresh, zarr.Array)
                    and _metadata_json(node) == _metadata_json(fresh))
        except (KeyError, *CORRUPT_CHUNK_ERRORS) as exc:
            raise _refused(url, f"its array {name!r} (an earlier upgrade's?) has metadata "
                           f"that cannot be read: {redacted(exc)}; remove it and rerun") from exc
        if not same:
            raise _refused(url, f"it already has an array {name!r} whose metadata (shape, "
                           "chunks, shards or codecs) is not what schema 3 makes; remove it "
                           "and rerun")
    for name in missing:
        with writing(location, f"the metadata of array {name!r}", 4096):
            if name == COMMIT:
                create_commit_map(group, cfg, n)
            else:
                create_data_array(group, name, cfg, n, wanted[name])
    if COMMIT in missing:
        return
    for block in range(layout.num_blocks):  # rows an earlier run wrote, now not resealed
        key = layout.shard_key(COMMIT, block)
        if block not in resealed and location.exists(key):
            with writing(location, f"clearing the commit entry of block {block} ({key})"):
                location.fs.rm(location.key_path(key))


def _write_new(layout: StoreLayout, checked: _Checked, progress: bool) -> None:
    """Each committed block's `skipped` shard, then its schema 3 commit row; the skip marks
    read again must be the ones checked (StoreError naming the store otherwise)."""
    _ensure_arrays(layout, set(checked.rows))
    location, url = layout.location, layout.url
    bar = progress_bar(len(checked.rows), f"upgrading {url}", progress_wanted(progress),
                       unit="block")
    with bar:
        for block, row in checked.rows.items():
            r = layout.block_range(block)
            where = f"block {block} (samples {r.start}..{r.stop - 1})"
            for name in (SKIPPED, COMMIT):
                location.remove_partials(layout.shard_key(name, block))
            if _has_old_marks(layout) != checked.had_marks:
                raise _changed(url, f"the schema 2 array {OLD_SKIPPED!r} was "
                               f"{'removed' if checked.had_marks else 'created'}")
            marks = _old_marks(layout, r, checked.had_marks)
            if _marks_hash(marks) != checked.mark_hashes[block]:
                raise _changed(url, f"the skip marks of {where} changed")
            key = layout.shard_key(SKIPPED, block)
            with writing(location, f"the skip marks of {where} (object {key})",
                         marks.nbytes + 4096):
                layout.array(SKIPPED)[r.start:r.stop] = marks
            key = layout.shard_key(COMMIT, block)
            with writing(location, f"the commit entry of {where} (object {key})", row.nbytes):
                layout.array(COMMIT)[block] = row
            bar.update(1)


def _recheck_commit(layout: StoreLayout, old_rows: np.ndarray) -> None:
    """Right before the root write: the schema 2 commit map is still the one checked (a
    writer committed no block meanwhile, another upgrade did not finish and remove it)."""
    if not layout.location.exists(f"{OLD_COMMIT}/zarr.json"):
        raise _changed(layout.url, f"the schema 2 array {OLD_COMMIT!r} was removed")
    if not np.array_equal(_old_rows(layout), old_rows):
        raise _changed(layout.url, f"the schema 2 commit map {OLD_COMMIT!r} changed")


def _old_names(location: StoreLocation) -> tuple[str, ...]:
    """The schema 2 arrays still in the store."""
    return tuple(name for name in (OLD_SKIPPED, OLD_COMMIT)
                 if location.fs.exists(location.key_path(name)))


def _remove_old(location: StoreLocation) -> tuple[str, ...]:
    """Delete the schema 2 arrays a schema 3 store no longer uses (idempotent); their names."""
    removed = _old_names(location)
    for name in removed:
        with writing(location, f"removing the schema 2 array {name!r}"):
            location.fs.rm(location.key_path(name), recursive=True)
    return removed


# --- command line -------------------------------------------------------------------------

def _run(args: Any) -> int:
    report = upgrade_store(args.store, progress=not args.no_progress,
                          allow_incomplete=args.allow_incomplete)
    if args.data is not None:
        from store.sources import add_sources

        if add_sources(args.store, args.data):
            print(f"{args.store}: recorded where each sample lies in {args.data} (/sources)")
        elif not report.changed:
            print(f"{args.store}: schema version {SCHEMA_VERSION}, current, with these shards' "
                  "table; nothing to do")
            return 0
    if not report.changed:
        print(f"{args.store}: schema version {SCHEMA_VERSION}, current; nothing to do")
        return 0
    if report.found_version == SCHEMA_VERSION and not report.removed:
        wrote = [what for what, done in (
            ("the manifest's block digests (loaders read its manifest per block)",
             report.manifest_digests),
            ("the commit summary (loaders start without reading every block's commit row and "
             "skip marks)", report.commit_summary)) if done]
        print(f"{args.store}: wrote {' and '.join(wrote)}")
        return 0
    if report.found_version == SCHEMA_VERSION:
        print(f"{args.store}: finished an interrupted upgrade: difficulty written for "
              f"{report.difficulty_blocks} block(s), the schema 2 array(s) "
              f"{', '.join(report.removed) or '(none left)'} removed")
        return 0
    print(f"{args.store}: upgraded from schema version {report.found_version} to "
          f"{SCHEMA_VERSION}: {report.committed_blocks}/{report.num_blocks} committed blocks "
          f"resealed, {report.skipped_views} skipped view(s) carried, difficulty written for "
          f"{report.difficulty_blocks} block(s); the teacher is not recorded "
          "(teacher_members: null), so `dalidr reinforce` will not resume this store")
    if report.committed_blocks < report.num_blocks:
        print(f"warning: {report.num_blocks - report.committed_blocks} block(s) are not "
              "committed and can never be written now (--allow-incomplete); train from the "
              "committed ones, or re-create the store with `dalidr reinforce` (the same seed "
              "draws the same records)")
    return 0


def register(subparsers: Any) -> None:
    """Add `dalidr upgrade` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "upgrade", help="convert a store of the previous schema (2) to the current one (3), "
                        "or add what a current store made by an earlier release lacks",
        description="Convert a schema 2 reinforcement store in place to schema 3: check it "
                    "first (attributes, every array's metadata, manifest, every committed "
                    "block), seal its skip marks into the block digests, replace its "
                    "attributes, then score every view's difficulty. No teacher work; records "
                    "and top-k are not rewritten. No other job may use the store meanwhile. "
                    "Rerun after an interruption to continue. A schema 3 store made by an "
                    "earlier release gets the manifest's block digests and the commit summary "
                    "(and, with --data, the shard table); a current store is left as it is.")
    parser.add_argument("store", help="store path or fsspec URL")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="upgrade a store whose teacher pass did not finish; its "
                             "uncommitted blocks can then never be written (by default it is "
                             "refused: finish it with the previous release first)")
    parser.add_argument("--data", metavar="SHARDS",
                        help="the webdataset shards the store was made from (a shard spec): "
                             "also record where each sample lies in them (`/sources`), so "
                             "loaders with check=MANIFEST read members by byte range without "
                             "indexing the shards; stores made by this release have it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_run)
