"""One exception hierarchy for dalidr.

Every error names the thing at fault: the sample index and file, the option and its valid
values, the array and chunk. Callers catch `DalidrError` for anything this package raises on
bad input; programming errors stay ordinary Python exceptions.
"""

from __future__ import annotations

__all__ = [
    "DalidrError",
    "OptionError",
    "RecipeError",
    "RecordError",
    "ImageError",
    "DatasetError",
    "RemoteReadError",
    "UnreachableError",
    "RangeIgnoredError",
    "ShardChangedError",
    "StoreError",
    "StoreWriteError",
    "DeviceError",
]


class DalidrError(Exception):
    """Base class of every error dalidr raises on bad input."""


class OptionError(DalidrError, ValueError):
    """An option is out of range or not one of its valid values."""

    @classmethod
    def choice(cls, option: str, value: object, valid: object) -> OptionError:
        return cls(f"option {option!r} is {value!r}; valid values: {valid}")

    @classmethod
    def unless(cls, ok: bool, option: str, value: object, valid: str, kind: str = "option") -> None:
        """Unless `ok`, raise `cls` naming the option, its value and the valid values."""
        if not ok:
            raise cls(f"{kind} {option!r} is {value!r}; valid: {valid}")


class RecipeError(OptionError):
    """A recipe file or preset is malformed or names an unknown field."""


class RecordError(DalidrError, ValueError):
    """A parameter record is out of range (crop, op id, magnitude, partner, ...)."""


class ImageError(DalidrError):
    """An encoded image cannot be read or decoded (truncated, not a JPEG, ...)."""


class DatasetError(DalidrError):
    """A dataset root or file list is malformed, empty or does not match a store."""


class RemoteReadError(DatasetError):
    """Byte ranges of a remote shard could not be read, retries spent (`dalidr.data.byte_ranges`):
    names the shard URL, the member and its offset, and the last error."""


class UnreachableError(RemoteReadError):
    """No attempt to reach a remote shard got an answer (refused, reset, timed out)."""


class RangeIgnoredError(RemoteReadError):
    """A server answered a byte-range request with the whole object: it ignores Range."""


class ShardChangedError(DatasetError):
    """A shard ended early while being read: it shrank or was replaced since it was indexed."""


class StoreError(DalidrError):
    """A reinforcement store is missing, corrupt, incomplete or of another schema."""


class StoreWriteError(StoreError):
    """Writing a store (or its cache) failed: disk full, no permission, I/O error. Names the
    store, the object and, where known, the bytes needed and free; nothing wrong with the
    input, so a rerun after fixing the cause resumes (`store.write_errors`)."""


class DeviceError(DalidrError):
    """The GPU software stack cannot run one of dalidr's operators (names what is missing)."""
