"""Where a store lives: local paths and fsspec URLs, opened as a zarr store plus a file system.

Local paths and `file://` URLs open as zarr's `LocalStore`, which writes every object through a
temporary file and a rename: a writer killed mid-write leaves no torn chunk behind. Every other
scheme (`memory://` always; `http://`, `s3://`, `gs://`, ... when their fsspec package is
installed) opens as zarr's `FsspecStore`; there a killed writer may leave a partial object,
which is harmless because its block is not committed and is rewritten whole on resume. Both are
opened as their guarded variants (`store.guarded`): reads take only regular files inside the
store, within the bound the metadata gives each object, and a server that ignores byte ranges
is named as such.

The fsspec file system beside the zarr store is for what zarr does not expose synchronously:
object sizes (bytes per record) and existence checks (a committed chunk that has gone missing
must be an error, not silently read back as fill values).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import fsspec
from zarr.abc.store import Store
from zarr.storage import LocalStore

from dalidr.errors import StoreError
from store.guarded import GuardedFsspecStore, GuardedLocalStore

__all__ = ["StoreLocation", "locate", "CORRUPT_CHUNK_ERRORS", "redacted"]

# What zarr and its codecs raise on corrupt bytes (checksum mismatch, truncated stream, bad JSON).
CORRUPT_CHUNK_ERRORS = (ValueError, RuntimeError, IndexError, TypeError, OSError, EOFError,
                        KeyError, MemoryError)
_BYTES_LITERAL = re.compile(r"(?<!\w)(?:b'(?:[^'\\]|\\.)*'" + r'|b"(?:[^"\\]|\\.)*")')


def redacted(exc: BaseException) -> str:
    """`str(exc)` with every bytes literal it quotes replaced by its length: zarr's checksum
    errors quote the stored checksum, and no error of dalidr's echoes a store file's bytes."""

    def length(match: re.Match[str]) -> str:
        try:
            return f"<{len(ast.literal_eval(match.group(0)))} bytes>"
        except (ValueError, SyntaxError):
            return "<bytes>"

    return _BYTES_LITERAL.sub(length, str(exc))


@dataclass(frozen=True)
class StoreLocation:
    """A store's URL, its zarr store and the fsspec view of the same objects."""

    # The URL or path as the user gave it (used in error messages).
    url: str
    # The zarr store the group is opened on.
    store: Store
    # The fsspec file system and the store's root path within it.
    fs: fsspec.AbstractFileSystem
    root: str

    def key_path(self, key: str) -> str:
        """The file-system path of a zarr key."""
        return f"{self.root.rstrip('/')}/{key}"

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.key_path(key)))

    def list_folder(self, key: str, recursive: bool) -> list[str]:
        """The paths under the folder `key` ("" for the root), every object below it or one
        level; StoreError if the store cannot list folders although the folder holds a node
        (an HTTP server without directory listings answers an empty or missing folder)."""
        folder = self.key_path(key) if key else self.root
        try:
            found = self.fs.find(folder) if recursive else self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            found = None
        if not found and self.exists(f"{key}/zarr.json" if key else "zarr.json"):
            raise StoreError(
                f"{self.url}: listing the folder {key or '(root)'!r} gives nothing although its "
                "zarr.json exists: the server does not list folders, which dalidr needs to check "
                "a store's objects; serve the store with directory listings (as `python -m "
                "http.server` or nginx's autoindex do), or copy it locally")
        if found is None:
            raise FileNotFoundError(folder)
        return [str(path) for path in found]

    def size(self, key: str = "") -> int:
        """Bytes under `key` (the whole store for "")."""
        path = self.key_path(key) if key else self.root
        if not self.fs.exists(path):
            return 0
        if self.fs.isfile(path):
            return int(self.fs.size(path))
        return int(sum(self.fs.du(path, total=False).values()))

    def remove_partials(self, key: str) -> None:
        """Delete what a writer killed while writing `key` left behind (LocalStore's
        `<key>.<uuid>.partial` temporary files), so a rewritten block leaves no trace."""
        if isinstance(self.store, LocalStore):
            for stale in self.fs.glob(self.key_path(key) + ".*.partial"):
                self.fs.rm(stale)

    def file_count(self) -> int:
        return len(self.fs.find(self.root)) if self.fs.exists(self.root) else 0


def locate(url: str | Path, read_only: bool) -> StoreLocation:
    """Open `url` (a local path or an fsspec URL) for zarr; StoreError if the scheme is unknown."""
    text = str(url)
    scheme = text.split("://", 1)[0] if "://" in text else "file"
    if scheme == "file":
        path = Path(text[len("file://"):] if text.startswith("file://") else text).absolute()
        fs = fsspec.filesystem("file")
        return StoreLocation(text, GuardedLocalStore(path, read_only=read_only, url=text), fs,
                             str(path))
    try:
        fs, root = fsspec.core.url_to_fs(text)
        store = GuardedFsspecStore.from_url(text, read_only=read_only)
    except (ImportError, ValueError) as exc:
        raise StoreError(
            f"store URL {text!r}: scheme {scheme!r} is not available ({exc}); local paths, "
            "file:// and memory:// always work, cloud schemes need their fsspec package"
        ) from exc
    return StoreLocation(text, store, fs, root)
