"""The package's floors, read from the source: every import at module level points down.

augment and data at the ground, then the store, then the teacher pass and the import of the
paper's stores, then training, then the experiment and the CLI (`../shared/LAYOUT.md`). A test
of the source rather than of `sys.modules`, so it needs no DALI or torch and runs in a second.
Imports inside functions are the deliberate way to reach up (the CLI registering subcommands)
and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dalidr", "store", "kernels")

# A module may import only from floors at or below its own.
FLOOR = {
    "dalidr.errors": 0,
    "dalidr.progress": 0,
    "dalidr.ranks": 0,
    "dalidr.augment": 1,
    "dalidr.data": 1,
    "kernels": 1,
    "store": 2,
    "dalidr.teacher": 3,
    "dalidr.mldr": 3,
    "dalidr.training": 4,
    "dalidr.grid": 4,
    "dalidr.experiment": 5,
    "dalidr.experiment_report": 5,
    "dalidr.cli": 6,
    "dalidr.__main__": 6,
    "dalidr": 6,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _floor(module: str) -> int:
    best = max((prefix for prefix in FLOOR
                if module == prefix or module.startswith(prefix + ".")), key=len)
    return FLOOR[best]


def _top_level_imports(path: Path) -> set[str]:
    """Modules of this project imported at module level (not inside functions or
    `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for package in PACKAGES
               for path in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # `from dalidr.data import dataset` names a module; `from store import X` a name in one
        graph[name] = {target if target in modules else target.rsplit(".", 1)[0]
                       for target in _top_level_imports(path)} & set(modules)
        graph[name].discard(name)
    return graph


def test_every_module_level_import_points_down_a_floor():
    upward = [f"{module} (floor {_floor(module)}) imports {target} (floor {_floor(target)})"
              for module, targets in _graph().items() for target in sorted(targets)
              if _floor(target) > _floor(module)]
    assert not upward, "\n".join(upward)


def test_store_depends_only_on_the_core():
    allowed = ("dalidr.errors", "dalidr.progress", "dalidr.augment", "dalidr.data", "store")
    reaching = [f"{module} imports {target}" for module, targets in _graph().items()
                if module.startswith("store") for target in targets
                if not target.startswith(allowed)]
    assert not reaching, "\n".join(reaching)


def test_no_import_circle_at_module_level():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            # a package's __init__ importing its own children is not a circle
            if node and target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                walk(target, path + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    assert not cycles, "\n".join(cycles)


def test_one_module_per_concept_name():
    """No two modules of the same name in the library (e.g. two `ensemble.py`)."""
    seen: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name not in {"__init__.py", "__main__.py", "cli.py"}:
                seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not {name: paths for name, paths in seen.items() if len(paths) > 1}


@pytest.mark.parametrize("floor", ["dalidr.augment", "dalidr.data", "dalidr.training"])
def test_subpackage_documents_its_modules(floor):
    init = ROOT / floor.replace(".", "/") / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text())) or ""
    undocumented = [path.stem for path in init.parent.glob("*.py")
                    if path.stem != "__init__" and f"`{path.stem}`" not in docstring]
    assert not undocumented, f"{init} does not name {undocumented}"
