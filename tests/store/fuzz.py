"""A fuzz harness for the store format: mutate every file of a small valid store, many ways.

Invariant for every mutant: `dalidr inspect`, `StoreReader` (what the loader serves besides the
pixels) and, for a subset, the real `ReinforcedLoader` (DALI CPU) either serve exactly what the
unmutated store serves, or raise a dalidr error naming the store; never another exception type,
never different data served silently, never more than 2 GiB of extra memory, never a hang; and
inspect never calls a store intact that the reader or loader refuses.

Mutations are generic (the store's files are walked, so objects a new schema adds are covered
without changes here): bit flips, truncation, extension, zeroing, deletion, swapping two chunks
of one array, edited JSON values (numbers made huge, negative or zero, strings changed, keys
dropped), and "resealed" values: one element of a data array set out of range and the block
rewritten through `StoreWriter.write_encoded`, so its digests are valid and only the value
checks can catch it; `DUPLICATE_CLASS` reseals a top-k position with the class of its
neighbour, a value in range in a row that is not (one reseal in eight). File mutants
(`FILE_KINDS`, issue 23) replace an object that every reader
reads (a commit row: `dalidr inspect` only, when the commit summary holds it) by what a store
may not hold: a symbolic link to an identical object inside the store, to
an identical copy or a secret-looking file outside it, or to `/dev/zero` / `/dev/urandom`, a
FIFO, or a sparse file of 3 GiB (a chunk, or a `zarr.json`). Each must be refused, never served
(`NOT_REFUSED`), and no message may quote the secret file (`ECHOED`).

Process model. Mutants run in a worker subprocess (`python -m tests.store.fuzz worker ...`),
one JSON line in and one out each; the parent enforces each mutant's time limit and restarts a
worker that hangs or dies. After computing the unmutated store's outputs the worker caps its
data segment (RLIMIT_DATA: heap and anonymous mappings, which is where numpy, zarr and the
codecs allocate) at its current size plus `mem_gib`, so a mutant that tries to allocate more
gets a MemoryError, reported as a violation (RLIMIT_AS cannot be used: torch and DALI reserve
over 5 GB of address space on import). The worker also reports its peak RSS, and a mutant that
raises it by more than `GROWTH_MB` is a memory violation even if the MemoryError it ended in was
caught and reported as damage (a link to `/dev/zero` read until the cap).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import random
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Kind", "Mutant", "make_mutants", "FuzzRunner", "Outcome", "Result", "summarise",
           "reseal_arrays"]


class Kind(enum.Enum):
    BIT_FLIP = "bit_flip"
    TRUNCATE = "truncate"
    EXTEND = "extend"
    ZERO_RANGE = "zero_range"
    ZERO_FILE = "zero_file"
    DELETE = "delete"
    SWAP = "swap"
    JSON_EDIT = "json_edit"
    RESEAL = "reseal"
    # A top-k class repeated ([c, c, ...]), the block resealed: a valid value, an invalid row.
    DUPLICATE_CLASS = "duplicate_class"
    # Objects that are not regular files inside the store, or far past their bound:
    LINK_INSIDE = "link_inside"
    LINK_OUTSIDE = "link_outside"  # value: "copy" (identical) or "secret"
    LINK_DEVICE = "link_device"  # value: "/dev/zero" or "/dev/urandom"
    FIFO = "fifo"
    OVERSIZED = "oversized"  # a chunk made a sparse file of OVERSIZE bytes
    OVERSIZED_JSON = "oversized_json"  # a zarr.json made one
    # Not a mutation of a stored file: a teacher pass whose `offset`-th write fails with ENOSPC,
    # `file` the object that failed (`tests/store/fuzz_writes.py`; never from `make_mutants`).
    WRITE_FAILURE = "write_failure"


RESEAL_KINDS = (Kind.RESEAL, Kind.DUPLICATE_CLASS)
_CLASSES = "topk/classes"
FILE_KINDS = (Kind.LINK_INSIDE, Kind.LINK_OUTSIDE, Kind.LINK_DEVICE, Kind.FIFO, Kind.OVERSIZED,
              Kind.OVERSIZED_JSON)
OVERSIZE = 3 << 30
SECRET = b"SECRET" * 200  # the content of LINK_OUTSIDE "secret" targets
SECRET_PIECES = ("SECR", "ECRE", "CRET", "RETS", "ETSE", "TSEC")
GROWTH_MB = 512


@dataclass(frozen=True)
class Mutant:
    """One mutation of one file of the store (paths relative to the store root)."""

    file: str
    kind: Kind
    offset: int = 0
    length: int = 0
    other: str = ""
    # JSON_EDIT: the key path and the new value ("__drop__": remove the key).
    path: tuple[Any, ...] = ()
    value: Any = None
    # RESEAL: array name, block, flat element index within the block, new value.
    array: str = ""
    block: int = 0

    def describe(self) -> str:
        extra = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("file", "kind") and getattr(self, f.name) not in ((), "", 0,
                                                                                      None)}
        return f"{self.kind.value} {self.file} {extra}"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["kind"] = self.kind.value
        data["path"] = list(self.path)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mutant:
        data = dict(data)
        data["kind"] = Kind(data["kind"])
        data["path"] = tuple(data["path"])
        return cls(**data)

    def apply(self, root: Path) -> None:
        if self.kind is Kind.WRITE_FAILURE:
            raise ValueError("a write failure is not applied to a store: "
                             "tests/store/fuzz_writes.py runs it")
        target = root / self.file
        if self.kind in FILE_KINDS:
            _replace_file(root, target, self)
            return
        if self.kind in RESEAL_KINDS:
            _reseal(root, self)
            return
        if self.kind is Kind.DELETE:
            target.unlink()
            return
        if self.kind is Kind.SWAP:
            other = root / self.other
            a, b = target.read_bytes(), other.read_bytes()
            target.write_bytes(b)
            other.write_bytes(a)
            return
        data = bytearray(target.read_bytes())
        if self.kind is Kind.BIT_FLIP:
            data[self.offset % len(data)] ^= 1 << (self.length % 8)
        elif self.kind is Kind.TRUNCATE:
            data = data[: self.offset % max(len(data), 1)]
        elif self.kind is Kind.EXTEND:
            data += random.Random(self.offset).randbytes(max(self.length, 1))
        elif self.kind is Kind.ZERO_RANGE:
            start = self.offset % len(data)
            data[start:start + self.length] = bytes(len(data[start:start + self.length]))
        elif self.kind is Kind.ZERO_FILE:
            data = bytearray(len(data))
        elif self.kind is Kind.JSON_EDIT:
            doc = json.loads(data)
            _edit(doc, self.path, self.value)
            data = bytearray(json.dumps(doc).encode())
        target.write_bytes(bytes(data))


def _replace_file(root: Path, target: Path, mutant: Mutant) -> None:
    """Apply a FILE_KINDS mutant; files "outside the store" go to a folder beside `root`."""
    if mutant.kind in (Kind.OVERSIZED, Kind.OVERSIZED_JSON):
        os.truncate(target, OVERSIZE)  # sparse: no disk used
        return
    if mutant.kind is Kind.LINK_INSIDE:
        moved = target.with_name(target.name + ".linked")
        target.rename(moved)
        target.symlink_to(moved.name)
        return
    if mutant.kind is Kind.LINK_OUTSIDE:
        outside = root.parent / "outside"
        shutil.rmtree(outside, ignore_errors=True)
        outside.mkdir()
        if mutant.value == "secret":
            (outside / "secret").write_bytes(SECRET)
            target.unlink()
        else:
            target.rename(outside / "secret")
        target.symlink_to(outside / "secret")
        return
    target.unlink()
    if mutant.kind is Kind.LINK_DEVICE:
        target.symlink_to(mutant.value)
    else:
        os.mkfifo(target)


def _read_files(root: Path, files: list[str]) -> tuple[list[str], list[str]]:
    """(chunk objects, metadata objects) of `files` that every reader reads: chunks of arrays,
    the root's and every array's zarr.json (not the zarr.json of sub-groups)."""
    chunks = [name for name in files if "/c/" in name]
    metadata = [name for name in files if name == "zarr.json" or (
        name.endswith("/zarr.json") and '"array"' in (root / name).read_text())]
    return chunks, metadata


def _edit(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value == "__drop__":
        if isinstance(node, dict):
            del node[path[-1]]
        else:
            node.pop(path[-1])
    else:
        node[path[-1]] = value


def _leaves(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    out: list[tuple[tuple[Any, ...], Any]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((prefix + (key,), value))
            out += _leaves(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.append((prefix + (i,), value))
            out += _leaves(value, prefix + (i,))
    return out


_STRINGS = ["", "x", "int64", "uint8", "float64", "big", "little", "bytes", "zstd", "lz4",
            "regular", "group", "array", "sharding_indexed", "../../etc/passwd", "rrc"]


def _new_values(value: Any, rng: random.Random) -> list[Any]:
    if isinstance(value, bool):
        return [not value, 0, "__drop__"]
    if isinstance(value, int):
        return [0, -1, value + 1, value * 2, 2**30, 2**40, 2**63, -(2**40), 1.5, "7",
                None, "__drop__"]
    if isinstance(value, float):
        return [0.0, -1.0, value * 2, 1e300, float(2**40), "__drop__"]
    if isinstance(value, str):
        return [rng.choice(_STRINGS), value + "x", value.upper(), 0, None, "__drop__"]
    if isinstance(value, list):
        return [[], value + value[:1], value[1:], "__drop__"]
    if isinstance(value, dict):
        return [{}, [], "__drop__"]
    return ["__drop__"]


def _chunk_files(files: list[str]) -> dict[str, list[str]]:
    """Chunk objects by array (the folder before `/c/`)."""
    by_array: dict[str, list[str]] = {}
    for name in files:
        if "/c/" in name or name.startswith("c/"):
            by_array.setdefault(name.split("/c/")[0] if "/c/" in name else "", []).append(name)
    return by_array


def make_mutants(root: Path, count: int, seed: int = 0,
                 reseal_arrays: list[str] | None = None) -> list[Mutant]:
    """`count` mutants of the store at `root`, spread over every file and every kind."""
    rng = random.Random(seed)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    chunks = _chunk_files(files)
    mutants: list[Mutant] = []
    order: list[str] = []  # rounds of every file in a shuffled order: all files get mutants
    while len(order) < count:
        order += rng.sample(files, len(files))
    order.reverse()
    reseal = reseal_arrays or []
    read_chunks, read_metadata = _read_files(root, files)
    for i in range(count):
        if i % 8 == 3:  # a file mutant, the kinds in turn
            kind = FILE_KINDS[(i // 8) % len(FILE_KINDS)]
            pool = read_metadata if kind is Kind.OVERSIZED_JSON else \
                read_chunks if kind is Kind.OVERSIZED else read_chunks + read_metadata
            value = {Kind.LINK_OUTSIDE: rng.choice(["copy", "secret"]),
                     Kind.LINK_DEVICE: rng.choice(["/dev/zero", "/dev/urandom"])}.get(kind)
            mutants.append(Mutant(rng.choice(pool), kind, value=value))
            continue
        if reseal and i % 8 == 7:
            duplicate = i % 64 == 63 and _CLASSES in reseal  # a few, whatever the draws
            array = _CLASSES if duplicate else rng.choice(reseal)
            mutants.append(Mutant(file=array, kind=Kind.DUPLICATE_CLASS if duplicate else
                                  Kind.RESEAL, array=array, block=rng.randrange(1 << 16),
                                  offset=rng.randrange(1 << 30), value="duplicate" if duplicate
                                  else rng.choice(["max", "min", 99, 0, "big", "one_past"])))
            continue
        name = order.pop()
        size = (root / name).stat().st_size
        if name.endswith("zarr.json"):
            doc = json.loads((root / name).read_text())
            leaves = _leaves(doc)
            if leaves and rng.random() < 0.8:
                path, value = rng.choice(leaves)
                mutants.append(Mutant(name, Kind.JSON_EDIT, path=path,
                                      value=rng.choice(_new_values(value, rng))))
                continue
        kinds = [Kind.BIT_FLIP] * 4 + [Kind.TRUNCATE, Kind.EXTEND, Kind.ZERO_RANGE,
                                        Kind.ZERO_FILE, Kind.DELETE]
        siblings = [c for c in chunks.get(name.split("/c/")[0], []) if c != name] \
            if "/c/" in name else []
        if siblings:
            kinds.append(Kind.SWAP)
        kind = rng.choice(kinds)
        # Bias offsets to the ends, where headers and shard indices live.
        where = rng.choice([rng.randrange(max(size, 1)), rng.randrange(min(size, 32) or 1),
                            max(size - 1 - rng.randrange(min(size, 64) or 1), 0)])
        mutants.append(Mutant(name, kind, offset=where, length=rng.randrange(1, 64),
                              other=rng.choice(siblings) if kind is Kind.SWAP else ""))
    return mutants


def _reseal(root: Path, mutant: Mutant) -> None:
    """Set one element of a data array out of range and rewrite its block, digests valid."""
    from store.writer import StoreWriter

    writer = StoreWriter(str(root))
    layout = writer.layout
    block = mutant.block % layout.num_blocks
    r = layout.block_range(block)
    arrays = {name: np.array(layout.array(name)[r.start:r.stop]) for name in layout.data_names}
    values = arrays[mutant.array]
    flat = values.reshape(-1)
    index = mutant.offset % flat.size
    info = np.iinfo(values.dtype)
    special = {"max": info.max, "min": info.min, "big": min(info.max, 2**40),
               "one_past": min(info.max, layout.config.num_classes)}
    new = special.get(mutant.value, mutant.value)
    if mutant.value == "duplicate":  # the value of the next position of the same row (top-k)
        k = values.shape[-1]
        new = flat[index - index % k + (index + 1) % k]
    flat[index] = np.array(new).astype(values.dtype)
    writer.write_encoded(block, arrays)


# ------------------------------------------------------------------------------ outcomes


class Outcome(enum.Enum):
    SAME = "same"  # served exactly what the original store serves
    REFUSED = "refused"  # a dalidr error naming the store (or inspect reported problems)
    UNTOUCHED = "served valid data (resealed in range)"
    # Violations:
    OTHER_ERROR = "VIOLATION: not a dalidr error"
    UNNAMED = "VIOLATION: dalidr error not naming the store"
    DIFFERENT = "VIOLATION: different data served silently"
    INVALID = "VIOLATION: invalid value served"
    INSPECT_OK_LOADER_REFUSES = "VIOLATION: inspect OK but the reader/loader refuses"
    NOT_REFUSED = "VIOLATION: a link, special or oversized file was served"
    ECHOED = "VIOLATION: an error quotes the bytes of a file outside the store"
    MEMORY = "VIOLATION: allocation past the memory cap"
    HANG = "VIOLATION: time limit exceeded"
    CRASH = "VIOLATION: the worker process died"
    # Write failures (`tests/store/fuzz_writes.py`): a StoreWriteError naming the store and the
    # object (or, during creation, the creation step), and the rerun byte-identical.
    WRITE_NAMED = "write failure named with its object; the rerun is byte-identical"
    WRITE_STEP = "write failure named with the creation step; the rerun is byte-identical"
    NOT_REPORTED = "VIOLATION: a failed write went unreported"
    WRONG_ERROR = "VIOLATION: a failed write reported as another dalidr error"
    UNNAMED_OBJECT = "VIOLATION: write error not naming what was being written"
    NOT_RESUMED = "VIOLATION: the rerun after a failed write failed or is not byte-identical"

    @property
    def violation(self) -> bool:
        return self.value.startswith("VIOLATION")


@dataclass
class Result:
    mutant: Mutant
    outcome: Outcome
    # Per checker ("inspect", "reader", "loader"): its own outcome and message.
    details: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


# ------------------------------------------------------------------------------ the worker


def _error_outcome(exc: BaseException, url: str) -> tuple[Outcome, str]:
    from dalidr.errors import DalidrError

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError):
        return Outcome.MEMORY, text
    if not isinstance(exc, DalidrError):
        return Outcome.OTHER_ERROR, text + "\n" + "".join(traceback.format_exception(exc)[-6:])
    if url not in str(exc):
        return Outcome.UNNAMED, text
    return Outcome.REFUSED, text


def _reader_outputs(url: str, dataset: Any) -> dict[str, np.ndarray]:
    """What the loader takes from the store besides pixels, for two epochs."""
    from dalidr.errors import StoreError
    from dalidr.teacher.skips import skipped_views
    from store.reader import StoreReader

    reader = StoreReader(url)
    reader.check_dataset(dataset)
    done = reader.committed()
    if not done.all():
        raise StoreError(f"store {url} is incomplete")
    manifest = reader.layout.manifest
    out = {"image_hw": manifest.image_hw, "labels": manifest.labels,
           "paths": np.array(list(manifest.paths)), "skipped": skipped_views(url),
           "manifest_skipped": manifest.skipped}
    for epoch in (0, 1):
        data = reader.epoch(epoch)
        out[f"samples{epoch}"] = data.plan.samples
        out[f"slots{epoch}"] = data.plan.slots
        out[f"records{epoch}"] = data.records.view(np.uint8).reshape(len(data.records), -1)
        out[f"classes{epoch}"] = data.targets.classes
        out[f"probs{epoch}"] = data.targets.probs
    return out


def _off_the_read_path(root: Path, file: str) -> bool:
    """Whether readers and loaders never open `file`: the commit map's rows, in a store whose
    commit summary holds them (`store.commit_summary`; `dalidr inspect` still reads both)."""
    return file.startswith("commit_map/c/") and (root / "commit_summary" / "zarr.json").exists()


def _invalid_served(out: dict[str, np.ndarray], config: Any) -> str | None:
    """An oracle independent of store.validate: values a replay cannot take."""
    from dalidr.augment.ops import NUM_OPS

    for epoch in (0, 1):
        classes, probs = out[f"classes{epoch}"], out[f"probs{epoch}"]
        if (classes < 0).any() or (classes >= config.num_classes).any():
            return "class index out of range"
        ordered = np.sort(classes, axis=-1)
        if (ordered[..., 1:] == ordered[..., :-1]).any():
            return "a class twice in one top-k"
        if not ((probs > 0) & (probs <= 1)).all():
            return "probability out of (0, 1]"
        records = out[f"records{epoch}"].view(_record_dtype(config)).reshape(-1)
        for prefix in ("", "p_") if config.recipe.has_mix else ("",):
            crop = records[prefix + "crop"].astype(np.int64)
            if ((crop[:, 2] == 0) | (crop[:, 3] == 0)).any():
                return "zero crop"
            if (crop[:, 0] + crop[:, 2] > 65536).any() or (crop[:, 1] + crop[:, 3] > 65536).any():
                return "crop past the image"
            if (records[prefix + "flip"] > 1).any():
                return "flip"
            if config.recipe.has_ra_re:
                if (records[prefix + "ops"] >= NUM_OPS).any():
                    return "op id"
                mags = np.abs(records[prefix + "mags"].astype(int))
                if (mags >= config.recipe.ra_num_bins).any():
                    return "magnitude bin"
    return None


def _record_dtype(config: Any) -> np.dtype:
    from dalidr.augment.records import record_dtype

    return record_dtype(config.recipe)


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])
        for k in a)


class _Worker:
    """Runs mutants against copies of a pristine store (see the module docstring)."""

    def __init__(self, pristine: Path, data: Path | None, mem_gib: float) -> None:
        from store.reader import StoreReader

        self.pristine, self.data = pristine, data
        self.scratch = Path(tempfile.mkdtemp(prefix="dalidr-fuzz-"))
        layout = StoreReader(str(pristine)).layout
        self.config = layout.config
        self.dataset = layout.manifest
        self.original = _reader_outputs(str(pristine), self.dataset)
        self.original_batches = self._loader_batches(str(pristine)) if data else None
        _cap_data_segment(mem_gib)

    def _loader_batches(self, url: str) -> list[Any]:
        from dalidr.training.loader import LoaderConfig, ReinforcedLoader, Targets

        config = LoaderConfig(batch_size=8, num_threads=1, read_threads=1, read_ahead=1,
                              prefetch_depth=1, targets=Targets.SPARSE, p=1.0)
        batches = []
        loader = ReinforcedLoader(url, self.data, config, manifest=self.dataset)
        try:
            for images, targets in loader:
                batches.append((images.clone(), targets.indices.clone(), targets.probs.clone()))
        finally:
            loader.close()
        return batches

    def run(self, mutant: Mutant, with_loader: bool) -> dict[str, Any]:
        import torch

        from store.inspect import inspect_store

        root = self.scratch / "store"
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(self.pristine, root)
        url = str(root)
        details: dict[str, str] = {}
        outcomes: dict[str, Outcome] = {}
        start = time.perf_counter()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        try:
            mutant.apply(root)
        except Exception as exc:  # a reseal of an array the store lacks: not a mutant
            return {"outcome": "skip", "details": {"apply": repr(exc)}}
        try:
            report = inspect_store(url)
            ok = not report.problems and report.complete
            outcomes["inspect"] = Outcome.SAME if ok else Outcome.REFUSED
            details["inspect"] = "OK" if ok else f"problems: {report.problems[:2]}, complete: " \
                                                 f"{report.complete}"
        except BaseException as exc:  # noqa: BLE001 - classified, never swallowed silently
            outcomes["inspect"], details["inspect"] = _error_outcome(exc, url)
        try:
            served = _reader_outputs(url, self.dataset)
            if _equal(served, self.original):
                outcomes["reader"], details["reader"] = Outcome.SAME, "same"
            elif mutant.kind in RESEAL_KINDS:
                bad = _invalid_served(served, self.config)
                outcomes["reader"] = Outcome.INVALID if bad else Outcome.UNTOUCHED
                details["reader"] = bad or "valid values"
            else:
                diff = [k for k in served if k not in self.original
                        or not np.array_equal(served[k], self.original[k])]
                outcomes["reader"], details["reader"] = Outcome.DIFFERENT, f"differs: {diff}"
        except BaseException as exc:  # noqa: BLE001
            outcomes["reader"], details["reader"] = _error_outcome(exc, url)
        if with_loader and self.original_batches is not None:
            try:
                batches = self._loader_batches(url)
                same = len(batches) == len(self.original_batches) and all(
                    all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
                    for a, b in zip(batches, self.original_batches, strict=True))
                if same:
                    outcomes["loader"], details["loader"] = Outcome.SAME, "same"
                elif mutant.kind is Kind.RESEAL:  # a duplicate class must never be served
                    outcomes["loader"], details["loader"] = Outcome.UNTOUCHED, "differs"
                else:
                    outcomes["loader"], details["loader"] = Outcome.DIFFERENT, "batches differ"
            except BaseException as exc:  # noqa: BLE001
                outcomes["loader"], details["loader"] = _error_outcome(exc, url)
        if mutant.kind in FILE_KINDS:  # such a file is never read, so never served
            for checker in [k for k, o in outcomes.items() if o is Outcome.SAME and not (
                    k != "inspect" and _off_the_read_path(root, mutant.file))]:
                outcomes[checker] = Outcome.NOT_REFUSED
        if any(piece in text for text in details.values() for piece in SECRET_PIECES):
            outcomes["echo"] = Outcome.ECHOED
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if peak - rss_before > GROWTH_MB:
            outcomes["memory"] = Outcome.MEMORY
            details["memory"] = f"peak RSS grew by {peak - rss_before:.0f} MB"
        served_by = [o for k, o in outcomes.items() if k != "inspect"]
        if outcomes["inspect"] is Outcome.SAME and Outcome.REFUSED in served_by:
            outcomes["consistency"] = Outcome.INSPECT_OK_LOADER_REFUSES
        violations = [o for o in outcomes.values() if o.violation]
        if violations:
            outcome = violations[0]
        elif Outcome.REFUSED in outcomes.values():
            outcome = Outcome.REFUSED
        elif Outcome.UNTOUCHED in outcomes.values():
            outcome = Outcome.UNTOUCHED
        else:
            outcome = Outcome.SAME
        return {"outcome": outcome.name, "details": details,
                "seconds": time.perf_counter() - start, "peak_rss_mb": peak}


def _data_segment_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _cap_data_segment(gib: float) -> None:
    limit = _data_segment_bytes() + int(gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _worker_main(argv: list[str]) -> None:
    pristine, data, mem_gib = Path(argv[0]), argv[1], float(argv[2])
    worker = _Worker(pristine, Path(data) if data != "-" else None, mem_gib)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        mutant = Mutant.from_json(request["mutant"])
        try:
            reply = worker.run(mutant, bool(request["loader"]))
        except MemoryError as exc:
            reply = {"outcome": Outcome.MEMORY.name, "details": {"worker": repr(exc)}}
        print(json.dumps(reply), flush=True)


# ------------------------------------------------------------------------------ the parent


class FuzzRunner:
    """Feeds mutants to a worker subprocess, with a time limit per mutant."""

    def __init__(self, pristine: Path, data: Path | None = None, mem_gib: float = 2.0,
                 timeout_s: float = 60.0, start_timeout_s: float = 300.0) -> None:
        self.pristine, self.data, self.mem_gib = pristine, data, mem_gib
        self.timeout_s, self.start_timeout_s = timeout_s, start_timeout_s
        self._proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.store.fuzz", "worker", str(self.pristine),
             str(self.data) if self.data else "-", str(self.mem_gib)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, cwd=root, env=env)
        line = self._readline(proc, self.start_timeout_s)
        if line is None or not json.loads(line).get("ready"):
            proc.kill()
            raise RuntimeError("the fuzz worker did not start")
        return proc

    @staticmethod
    def _readline(proc: subprocess.Popen[str], timeout: float) -> str | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = proc.stdout.readline()
        return line or None

    def run(self, mutant: Mutant, loader: bool = False) -> Result | None:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()
        assert self._proc.stdin is not None
        start = time.perf_counter()
        self._proc.stdin.write(json.dumps({"mutant": mutant.to_json(), "loader": loader}) + "\n")
        self._proc.stdin.flush()
        line = self._readline(self._proc, self.timeout_s * (3 if loader else 1))
        if line is None:
            dead = self._proc.poll() is not None
            self._proc.kill()
            self._proc.wait()
            self._proc = None
            return Result(mutant, Outcome.CRASH if dead else Outcome.HANG,
                          seconds=time.perf_counter() - start)
        reply = json.loads(line)
        if reply["outcome"] == "skip":
            return None
        return Result(mutant, Outcome[reply["outcome"]], reply.get("details", {}),
                      reply.get("seconds", 0.0), reply.get("peak_rss_mb", 0.0))

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None

    def __enter__(self) -> FuzzRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def summarise(results: list[Result]) -> dict[str, Any]:
    """Counts by outcome, by mutation kind, and every violation in full."""
    by_kind: dict[str, Counter[str]] = {}
    for r in results:
        by_kind.setdefault(r.mutant.kind.value, Counter())[r.outcome.name] += 1
    return {
        "mutants": len(results),
        "outcomes": dict(Counter(r.outcome.name for r in results)),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "violations": [{"mutant": r.mutant.describe(), "outcome": r.outcome.value,
                        "details": r.details} for r in results if r.outcome.violation],
        "max_seconds": max((r.seconds for r in results), default=0.0),
        "max_peak_rss_mb": max((r.peak_rss_mb for r in results), default=0.0),
    }


def reseal_arrays(root: Path) -> list[str]:
    """The data arrays of the store at `root` (every array with a `sample` dimension whose
    chunks are per block), the targets of RESEAL mutants."""
    from store.layout import open_layout

    return list(open_layout(str(root)).data_names)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    _worker_main(sys.argv[2:])

