"""Image sizes for fresh crops, read from file headers when first needed and kept beside the data.

Drawing a torchvision `RandomResizedCrop` needs the source image's height and width, so a
loader that draws crops afresh (`PlainLoader(recipe=...)`) needs the size of every image it
serves. Reading them all at construction (opening every file of the dataset at every start)
is what made loader starts grow with the dataset; `ImageSizes` instead reads a sample's size
from its JPEG header (the first few KB: the SOF marker) the first time a batch needs it, and
records it in a cache file beside the data, `<root>/.dalidr/image-hw-<key>.npy` (uint16
[N, 2], 0 = not read yet), shared by every process on the machine through a writable memory
map. So a start reads no image, the first epoch reads each served image's header once, and
later runs read none. The key is a hash of the listing (paths and, for a tree, byte sizes), so
a changed dataset gets a fresh file. Where the data is read-only (and for tar shards, never
written beside) the file goes to the node cache directory (`dalidr.data.node_cache`), else
sizes are kept in memory only. Reads go through the listing's `source` (a file, or a shard
member's byte range).

Trade-off: sizes are those of the file's header, as PIL reports them (no EXIF rotation), which
is what the store's manifest records for the teacher pass; a file that is not a parseable JPEG
falls back to PIL. A header is trusted as read; `dalidr verify` checks file contents.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dalidr.data.data_source import DataSource, FileSource
from dalidr.data.dataset import CACHE_FOLDER, DatasetListing
from dalidr.data.node_cache import node_cache_dir
from dalidr.errors import DatasetError, ImageError

__all__ = ["ImageSizes", "jpeg_size", "read_image_size", "sample_image_size"]

_HEAD = 4096  # bytes read first; most JPEGs have their frame header within them
# Start-of-frame markers (baseline, progressive, lossless, arithmetic): not C4, C8, CC.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, or None if `data` does not reach it or is
    not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        if marker in _SOF:
            if i + 9 > n:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return (height, width) if height and width else None
        if marker in (0xDA, 0xD9):  # scan data or end before any frame header
            return None
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of one image file, from its header."""
    path = Path(path)
    return sample_image_size(FileSource(path.parent, [path.name]), 0)


def sample_image_size(source: DataSource, index: int) -> tuple[int, int]:
    """(height, width) of one sample, from its header (the first few KB; all of it for a JPEG
    whose frame header comes later), else as PIL reads it; ImageError naming the sample's file
    (or shard and member)."""
    try:
        data = source.read_head(index, _HEAD)
        found = jpeg_size(data)
        if found is None and len(data) == _HEAD and data[:2] == b"\xff\xd8":
            data = source.read([index])[0].tobytes()
            found = jpeg_size(data)
        if found is not None:
            return found
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError):
            if len(data) < _HEAD or data[:2] == b"\xff\xd8":
                raise
            with Image.open(io.BytesIO(source.read([index])[0].tobytes())) as image:
                width, height = image.size
    except DatasetError as exc:
        raise ImageError(str(exc)) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"dataset file {source.describe(index)} is not a readable image: "
                         f"{exc}") from exc
    return height, width


def _allocated_zeros(path: Path, shape: tuple[int, int]) -> None:
    """A `.npy` file of uint16 zeros whose disk blocks exist now. A memory map of a sparse
    file dies of SIGBUS at its first write once the disk is full; writing the zeros (and
    `posix_fallocate` where there is one) fails here instead, with an OSError (ENOSPC), and
    the sizes are kept elsewhere."""
    with open(path, "wb") as out:
        np.save(out, np.zeros(shape, dtype=np.uint16))
        out.flush()
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(out.fileno(), 0, out.tell())


class ImageSizes:
    """(height, width) of every sample of `listing`, read when first asked for."""

    def __init__(self, listing: DatasetListing, cache: bool = True) -> None:
        self.listing = listing
        n = len(listing)
        self.path: Path | None = None
        self._stored: np.ndarray = np.zeros((n, 2), dtype=np.uint16)
        # Beside a folder's images, else (shards: never beside them) in the node cache.
        beside = (Path(listing.root) / CACHE_FOLDER if isinstance(listing.source, FileSource)
                  else None)
        if cache:
            for folder in (beside, node_cache_dir()):
                if folder is not None and (opened := self._open(folder)) is not None:
                    self.path, self._stored = opened
                    break
        # Sizes for `draw_records`, which takes the whole dataset's: 1 where not read yet
        # (a draw only uses the rows of its samples and partners, which are read first).
        self._full = np.maximum(self._stored, 1).astype(np.int64)
        self._known = np.asarray((self._stored > 0).all(axis=1))

    def _key(self) -> str:
        h = hashlib.sha256(self.listing.paths.digest())
        if self.listing.sizes is not None:
            h.update(self.listing.sizes.astype("<i8").tobytes())
        return h.hexdigest()[:32]

    def _open(self, folder: Path) -> tuple[Path, np.ndarray] | None:
        """The shared cache file in `folder` (created if missing), or None if not writable."""
        shape = (len(self.listing), 2)
        path = folder / f"image-hw-{self._key()}.npy"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                tmp = folder / f"{path.name}.{os.getpid()}.tmp"
                try:
                    _allocated_zeros(tmp, shape)
                    os.link(tmp, path)  # never replaces a file another process filled
                except FileExistsError:
                    pass
                finally:
                    tmp.unlink(missing_ok=True)
            stored = np.lib.format.open_memmap(path, mode="r+")
            if stored.dtype != np.uint16 or stored.shape != shape:
                path.unlink()
                return self._open(folder)
            return path, stored
        except (OSError, ValueError):
            return None

    def __len__(self) -> int:
        return len(self._known)

    def full(self, needed: np.ndarray) -> np.ndarray:
        """Every sample's (height, width), int64 [N, 2], with at least `needed` ones read
        (others may be placeholders of 1): what `draw_records` takes."""
        needed = np.unique(np.asarray(needed, dtype=np.int64))
        missing = needed[~self._known[needed]]
        if missing.size:
            stored = np.asarray(self._stored[missing])  # another process may have read them
            fresh = missing[~(stored > 0).all(axis=1)]
            for i in fresh.tolist():
                self._stored[i] = sample_image_size(self.listing.source, i)
            self._full[missing] = self._stored[missing]
            self._known[missing] = True
        return self._full

    def placeholder(self) -> np.ndarray:
        """Sizes for draws that use none of them (a mix's partner and lambda): no reads."""
        return self._full
