"""The fused CPU kernel's machine code is cached on disk, and recompiled when any source of it
changes (numba alone would key it on one file and load a stale kernel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dalidr
from dalidr.augment.cpu import cache, tone

_BUILD = (
    "import numpy as np\n"
    "from nvidia.dali import fn, pipeline_def, types\n"
    "from dalidr.augment.cpu.operator import fused_replay_operator\n"
    "from dalidr.augment.cpu.randaugment import magnitude_table, settings_vector\n"
    "image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)\n"
    "@pipeline_def(batch_size=1, num_threads=1, device_id=None)\n"
    "def pipe():\n"
    "    return fused_replay_operator()(\n"
    "        types.Constant(image), types.Constant(np.array([1, 13], np.uint8)),\n"
    "        types.Constant(np.array([-5, 0], np.int8)),\n"
    "        types.Constant(np.array([0, 0, 9000, 9000], np.uint16)),\n"
    "        types.Constant(magnitude_table(32, 31)),\n"
    "        types.Constant(settings_vector(0, (1, 2, 3))))\n"
    "p = pipe(); p.build(); (out,) = p.run()\n"
    "print('checksum', int(np.asarray(out.as_tensor()).astype(np.int64).sum()))\n"
)


def _run(package_root: Path, cache_dir: Path) -> tuple[str, str]:
    env = dict(os.environ, NUMBA_DEBUG_CACHE="1", NUMBA_CACHE_DIR=str(cache_dir),
               PYTHONPATH=str(package_root))
    done = subprocess.run([sys.executable, "-c", _BUILD], env=env, capture_output=True,
                          text=True, timeout=600, cwd=package_root)
    assert done.returncode == 0, done.stderr[-3000:]
    checksum = [line for line in done.stdout.splitlines() if line.startswith("checksum")]
    return done.stdout, checksum[0]


def _saved(log: str, name: str) -> bool:
    return any("data saved" in line and name in line for line in log.splitlines())


def test_every_kernel_uses_the_package_locator() -> None:
    locator = tone.posterize._cache._impl.locator
    assert isinstance(locator, cache._KernelSourcesStamp)
    names = {path.name for path in cache.KERNEL_SOURCES}
    assert {"tone.py", "geometry.py", "colour.py", "randaugment.py", "operator.py",
            "equalize.py"} <= names


def test_loaded_from_disk_and_recompiled_after_an_edit(tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(Path(dalidr.__file__).parent, root / "dalidr",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cache_dir = tmp_path / "numba-cache"
    cold, checksum = _run(root, cache_dir)
    assert _saved(cold, "replay_sample") and _saved(cold, "_run")
    warm, again = _run(root, cache_dir)
    assert again == checksum
    assert "data saved" not in warm, "a second process compiled again instead of loading"
    assert "data loaded" in warm
    # An edit to one op's file alone must invalidate the fused kernel that contains its code.
    geometry = root / "dalidr" / "augment" / "cpu" / "geometry.py"
    geometry.write_text(geometry.read_text() + "\n# edited\n")
    edited, same = _run(root, cache_dir)
    assert same == checksum
    assert _saved(edited, "replay_sample"), "the fused kernel was loaded stale after an edit"


