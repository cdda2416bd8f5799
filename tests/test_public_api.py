"""`import dalidr` is the one import users need; `dalidr.__all__` is the whole promise."""

from __future__ import annotations

import subprocess
import sys

import dalidr

DOCUMENTED = {
    "__version__",
    "ReinforcedLoader", "PlainLoader", "LoaderConfig", "LastBatch", "Targets", "Augment",
    "kl_loss", "Recipe", "recipe", "build_teacher",
    "DalidrError", "OptionError", "RecipeError", "RecordError", "ImageError", "DatasetError",
    "StoreError", "DeviceError",
}


def test_all_is_exactly_the_documented_names():
    assert set(dalidr.__all__) == DOCUMENTED
    assert len(dalidr.__all__) == len(set(dalidr.__all__))


def test_every_public_name_imports_and_is_the_defining_object():
    from dalidr.augment.recipe import Recipe
    from dalidr.errors import DalidrError, StoreError
    from dalidr.teacher.ensemble import build_teacher
    from dalidr.training.loader import ReinforcedLoader
    from dalidr.training.loader_config import LoaderConfig
    from dalidr.training.losses import kl_loss

    for name in dalidr.__all__:
        assert getattr(dalidr, name) is not None, name
    assert dalidr.ReinforcedLoader is ReinforcedLoader
    assert dalidr.LoaderConfig is LoaderConfig
    assert dalidr.kl_loss is kl_loss
    assert dalidr.Recipe is Recipe
    assert dalidr.build_teacher is build_teacher
    assert issubclass(dalidr.StoreError, DalidrError) and dalidr.StoreError is StoreError
    errors = [getattr(dalidr, name) for name in dalidr.__all__ if name.endswith("Error")]
    assert all(issubclass(error, dalidr.DalidrError) for error in errors)


def test_star_import_gives_the_documented_names():
    namespace: dict[str, object] = {}
    exec("from dalidr import *", namespace)
    assert DOCUMENTED <= set(namespace)


def test_an_undocumented_name_is_an_attribute_error():
    try:
        dalidr.replay_pipeline  # noqa: B018 - lives in dalidr.augment.replay, not promised here
    except AttributeError as error:
        assert "replay_pipeline" in str(error)
    else:
        raise AssertionError("dalidr.replay_pipeline should not be public")


def test_import_dalidr_is_cheap():
    """The names load on first use: `import dalidr` pulls in neither DALI, torch nor zarr."""
    code = ("import sys, dalidr; heavy = [m for m in ('nvidia.dali', 'torch', 'zarr') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
