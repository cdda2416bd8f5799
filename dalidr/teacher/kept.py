"""Teachers trained once by the project and kept in the repository, reused like pretrained models.

The paper's teachers are trained once, on more data and at a higher resolution than the
students, and reused by everyone (Dataset Reinforcement Sec. 2.3); the project does the same
for its built-in data. `bench/teachers.py` trains an ensemble on all 60,000 Fashion-MNIST
training images and keeps it under `dalidr/assets/teachers/<name>/`:
- `ensemble.json`: the members (timm name, file, SHA-256), the side every member views at,
  the class order of its outputs, and the ensemble's measured test accuracy;
- per member, a float16 `.safetensors` file and a sidecar `.json` recording the command, the
  data, the epochs and the measured test accuracy.

`kept_teacher(name)` reads the index (JSON; nothing is unpickled), checks every file against
its recorded digest and returns the ensemble as a `--teacher` spec with its view side. A
missing or altered file is refused by path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dalidr.data.file_hash import file_sha256
from dalidr.errors import OptionError

__all__ = ["KEPT_TEACHERS_DIR", "INDEX_NAME", "KeptTeacher", "kept_classes", "kept_teacher",
           "kept_names"]

KEPT_TEACHERS_DIR = Path(__file__).resolve().parents[1] / "assets" / "teachers"
INDEX_NAME = "ensemble.json"


@dataclass(frozen=True)
class KeptTeacher:
    """A kept ensemble, checked: its `--teacher` spec, view side, classes and index."""

    name: str
    folder: Path
    spec: str
    size: int
    classes: tuple[str, ...]
    index: dict[str, Any]


def kept_names(root: Path = KEPT_TEACHERS_DIR) -> list[str]:
    """Names of the kept ensembles (folders holding an index)."""
    return sorted(p.parent.name for p in root.glob(f"*/{INDEX_NAME}"))


def kept_classes(name: str, root: Path = KEPT_TEACHERS_DIR) -> tuple[str, ...] | None:
    """The classes the kept ensemble `name` predicts (None: there is no such ensemble), read
    without checking its files: enough to decide whether it fits a dataset."""
    try:
        return tuple(str(c) for c in json.loads((root / name / INDEX_NAME).read_text())["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kept_teacher(name: str, root: Path = KEPT_TEACHERS_DIR) -> KeptTeacher:
    """The kept ensemble `name`, every member checked against its recorded SHA-256."""
    folder = root / name
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        raise OptionError(f"no kept teacher {name!r} ({index_path} is missing); kept: "
                          f"{kept_names(root) or 'none'}; train one with bench/teachers.py")
    try:
        index = json.loads(index_path.read_text())
        members = index["members"]
        size = int(index["size"])
        classes = tuple(str(c) for c in index["classes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise OptionError(f"kept teacher index {index_path} is not readable: {exc}") from exc
    parts = []
    for member in members:
        path = folder / member["file"]
        if not path.is_file():
            raise OptionError(f"kept teacher {name!r}: {path} is missing")
        if file_sha256(path) != member["sha256"]:
            raise OptionError(f"kept teacher {name!r}: {path} does not match the SHA-256 in "
                              f"{index_path}; restore it from the repository "
                              "(git checkout) or retrain with bench/teachers.py")
        parts.append(f"{member['arch']}@{path}")
    return KeptTeacher(name, folder, ",".join(parts), size, classes, index)
