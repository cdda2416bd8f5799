"""The GPU check, rehearsed on the CPU so that it cannot rot before a GPU run.

`bench/gpu/check.sh --device cpu --quick` runs every step of the GPU check (sanity, the gpu
tests and kernel tests, the replay, teacher, training-overhead and agreement benchmarks) at the
smallest sizes; here it must finish with every step ok and every result written, to the results
folder and to $OUT, each carrying the machine's description. Beside it: the operator-backend
check that a GPU run relies on, and the bundle's imports on Python 3.12 (where a bundle has been
built with bench/gpu/pack.sh and a Python 3.12 exists; skipped otherwise).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("sanity", "pytest", "replay", "teacher", "train_overhead", "agreement")
RESULTS = ("sanity.json", "replay.json", "teacher.json", "train_overhead.json",
           "agreement.json")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("gpu-check")
    results, out = folder / "results", folder / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable,
           "BUNDLE_TARGET": str(folder / "no-bundle"), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(["bash", str(ROOT / "bench/gpu/check.sh"), "--device", "cpu", "--quick",
                          "--results", str(results)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    log = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, log
    return results, out, log


@pytest.mark.slow
def test_rehearsal_runs_every_step_and_writes_every_result(rehearsal) -> None:
    results, out, log = rehearsal
    summary = json.loads((results / "summary.json").read_text())
    assert list(summary["steps"]) == list(STEPS), log
    for name, step in summary["steps"].items():
        assert step["status"] == "ok", (name, step, log)
        assert 0 < step["seconds"] <= step["budget_s"]
    assert summary["failed_steps"] == []
    assert summary["machine"]["cpu_usable"] >= 1 and summary["machine"]["libraries"]["torch"]
    tally = summary["steps"]["pytest"]["pytest"]
    assert tally["failures"] == [] and tally["counts"].get("passed", 0) > 0
    assert tally["counts"].get("skipped", 0) >= 20  # the gpu tests, skipped without CUDA
    for name in RESULTS:
        report = json.loads((results / name).read_text())
        machine = report["machine"]
        assert machine["cpu_model"] and machine["python"] and "gpu" in machine, name
        assert (out / name).read_bytes() == (results / name).read_bytes(), name
    assert json.loads((out / "summary.json").read_text())["steps"] == summary["steps"]
    assert "=== agreement: ok" in (out / "check.log").read_text()
    assert len(list(out.iterdir())) <= 8  # what one device call brings back
    headline = summary["steps"]
    assert headline["replay"]["headline"]["replay_images_per_s"] > 0
    assert headline["teacher"]["headline"]["full_pass_views_per_s"] > 0
    assert headline["train_overhead"]["headline"]["reinforced_over_plain"] > 0
    assert headline["agreement"]["headline"]["top1_agreement"] >= 0.9
    sanity = json.loads((results / "sanity.json").read_text())
    assert sanity["gpu_ops_missing_backend"] == [] and sanity["decode"]["shape"][2] == 3
    # The graphs really are on the GPU: decoding mixed, resizing and RandAugment ops on GPU.
    assert {"decoders__ImageSlice (mixed)", "Resize (gpu)", "WarpAffine (gpu)",
            "Erase (gpu)"} <= set(sanity["gpu_ops"])
    # Equalize is PIL's table through DALI's numba plugin: on the GPU graph, or (where the plugin
    # cannot run: no driver here, and numba's built-in CUDA target on CUDA 13) a named requirement.
    assert ("NumbaFunction (gpu)" in sanity["gpu_ops"]) != bool(sanity["gpu_requirement"])


def test_an_operator_without_its_backend_is_named() -> None:
    """The rehearsal's sanity step reports `missing_backends` of the real graphs (asserted
    empty above); here, that it does name an operator the installed DALI lacks."""
    from bench.gpu.dali_ops import missing_backends

    assert missing_backends([("NoSuchOperator", "gpu"), ("Resize", "gpu"),
                             ("decoders__Image", "mixed"), ("Resize", "cpu")]) == [
        ("NoSuchOperator", "gpu")]


def test_photos_folder_makes_the_same_corpus(tmp_path: Path, monkeypatch) -> None:
    """The bundle carries the photographs for a machine without scikit-learn/matplotlib."""
    import shutil

    from dalidr.data.sample_data import PHOTOS_ENV, bundled_photos, make_corpus
    from dalidr.errors import DatasetError

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in bundled_photos():
        shutil.copy(path, photos)
    want = [p.read_bytes() for p in make_corpus(tmp_path / "a", 4, seed=9)]
    monkeypatch.setenv(PHOTOS_ENV, str(photos))
    assert [p.parent for p in bundled_photos()] == [photos] * 3
    assert [p.read_bytes() for p in make_corpus(tmp_path / "b", 4, seed=9)] == want
    (photos / "flower.jpg").unlink()
    with pytest.raises(DatasetError, match="flower.jpg"):
        bundled_photos()


@pytest.mark.slow
@pytest.mark.parametrize("route", ["cuda130", "cuda120"])
def test_bundle_imports_on_python_312(route: str) -> None:
    bundle = ROOT / ".gpu-bundle" / route
    if not list(bundle.glob("part-*")):
        pytest.skip(f"no {route} bundle built here (bench/gpu/pack.sh --route {route})")
    run = subprocess.run(["bash", str(ROOT / "bench/gpu/verify_bundle.sh"), str(bundle)],
                         capture_output=True, text=True, timeout=600)
    if run.returncode == 77:
        pytest.skip(run.stderr.strip() or "no Python 3.12 here")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"unpacked route {route}" in run.stdout
    assert "python 3.12" in run.stdout and "DALI 2.4" in run.stdout, run.stdout
