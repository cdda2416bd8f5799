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
    "StoreError",
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


class StoreError(DalidrError):
    """A reinforcement store is missing, corrupt, incomplete or of another schema."""


class DeviceError(DalidrError):
    """The GPU software stack cannot run one of dalidr's operators (names what is missing)."""
