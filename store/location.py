"""Where a store lives: local paths and fsspec URLs, opened as a zarr store plus a file system.

Local paths and `file://` URLs open as zarr's `LocalStore`, which writes every object through a
temporary file and a rename: a writer killed mid-write leaves no torn chunk behind. Every other
scheme (`memory://` always; `s3://`, `gs://`, ... when their fsspec package is installed) opens
as zarr's `FsspecStore`; there a killed writer may leave a partial object, which is harmless
because its block is not committed and is rewritten whole on resume.

The fsspec file system beside the zarr store is for what zarr does not expose synchronously:
object sizes (bytes per record) and existence checks (a committed chunk that has gone missing
must be an error, not silently read back as fill values).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fsspec
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from dalidr.errors import StoreError

__all__ = ["StoreLocation", "locate", "CORRUPT_CHUNK_ERRORS"]

# What zarr and its codecs raise on corrupt bytes (checksum mismatch, truncated stream, bad JSON).
CORRUPT_CHUNK_ERRORS = (ValueError, RuntimeError, IndexError, TypeError, OSError, EOFError,
                        KeyError, MemoryError)


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
        return StoreLocation(text, LocalStore(path, read_only=read_only), fs, str(path))
    try:
        fs, root = fsspec.core.url_to_fs(text)
        store = FsspecStore.from_url(text, read_only=read_only)
    except (ImportError, ValueError) as exc:
        raise StoreError(
            f"store URL {text!r}: scheme {scheme!r} is not available ({exc}); local paths, "
            "file:// and memory:// always work, cloud schemes need their fsspec package"
        ) from exc
    return StoreLocation(text, store, fs, root)
