"""dalidr: Dataset Reinforcement made fast.

Everything a training script needs is importable from here::

    import dalidr
    loader = dalidr.ReinforcedLoader(store, images, dalidr.LoaderConfig(batch_size=256))

The names load on first use (PEP 562), so `import dalidr` stays cheap and the package's
floors (augment and data, then store, teacher, training) import each other without a circle.
`__all__` is the promise: nothing else is public at this level.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ReinforcedLoader": "dalidr.training.loader",
    "PlainLoader": "dalidr.training.plain_loader",
    "LoaderConfig": "dalidr.training.loader_config",
    "LastBatch": "dalidr.training.loader_config",
    "Targets": "dalidr.training.loader_config",
    "Augment": "dalidr.training.loader_config",
    "kl_loss": "dalidr.training.losses",
    "Recipe": "dalidr.augment.recipe",
    "recipe": "dalidr.augment.recipe",
    "build_teacher": "dalidr.teacher.ensemble",
    "DalidrError": "dalidr.errors",
    "OptionError": "dalidr.errors",
    "RecipeError": "dalidr.errors",
    "RecordError": "dalidr.errors",
    "ImageError": "dalidr.errors",
    "DatasetError": "dalidr.errors",
    "StoreError": "dalidr.errors",
    "DeviceError": "dalidr.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from dalidr.augment.recipe import Recipe, recipe
    from dalidr.errors import (
        DalidrError,
        DatasetError,
        DeviceError,
        ImageError,
        OptionError,
        RecipeError,
        RecordError,
        StoreError,
    )
    from dalidr.teacher.ensemble import build_teacher
    from dalidr.training.loader import ReinforcedLoader
    from dalidr.training.loader_config import Augment, LastBatch, LoaderConfig, Targets
    from dalidr.training.losses import kl_loss
    from dalidr.training.plain_loader import PlainLoader


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dalidr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
