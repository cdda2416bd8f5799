"""SHA-256 of a file, read in pieces: the one digest the project records for files on disk
(kept teachers' checkpoints, the IDX files they trained on, the store manifest's images)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha256"]


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file (hex), read in 4 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
