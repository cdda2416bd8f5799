"""`pip install "dalidr[gpu]"`: the extra brings Equalize's GPU operator numba-cuda on CUDA 13
(the CUDA of the pinned torch 2.14.1 build, which requires cuda-bindings 13), bench/gpu/pack.sh
bundles that very list, DALI's numba plugin is told CUDA 13 where numba-cuda is numba's CUDA
target, and Equalize's DeviceError names the extra.

The static tests read pyproject.toml, `pack.sh --list` and the installed torch's metadata (no
network); the last one asks the package registry to resolve the project with the extra
(`pip install --dry-run ".[gpu]"`) and skips when it is unreachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
ROOT = Path(__file__).resolve().parents[1]
NETWORK_TROUBLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name",
                   "Name or service not known", "Network is unreachable", "Could not fetch URL",
                   "ConnectTimeout", "ReadTimeout", "ProxyError")


def _gpu_extra() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["optional-dependencies"]["gpu"])


def _wanted() -> dict[str, Requirement]:
    return {Requirement(text).name: Requirement(text) for text in _gpu_extra()}


def test_the_gpu_extra_is_numba_cuda_on_cuda_13() -> None:
    wanted = _wanted()
    # numba-cuda reads the toolkit's version from NVRTC, compiles through NVVM (libdevice with
    # it), and loads both through cuda-pathfinder; cuda-core links the kernel.
    assert {"numba-cuda", "cuda-bindings", "cuda-core", "cuda-pathfinder", "nvidia-cuda-nvrtc",
            "nvidia-nvvm", "nvidia-cuda-runtime"} <= set(wanted)
    assert "cu13" in wanted["numba-cuda"].extras
    bindings = wanted["cuda-bindings"].specifier
    assert bindings.contains("13.5.0") and not bindings.contains("12.9.1")
    for name, version in (("nvidia-cuda-nvrtc", "13.0.88"), ("nvidia-nvvm", "13.0.88"),
                          ("nvidia-cuda-runtime", "13.0.96")):  # torch 2.14.1's CUDA 13.0.3
        assert wanted[name].specifier.contains(version), name
    assert not any(name.endswith("-cu12") for name in wanted)
    assert all(not r.marker for r in wanted.values())  # pack.sh bundles each, unconditionally


def test_the_gpu_extra_agrees_with_the_installed_torch() -> None:
    """What torch (pinned in the main dependencies) requires of the CUDA packages the extra
    names is met by the versions installed with it, and so are the extra's own specifiers."""
    torch_needs = [Requirement(text) for text in metadata.requires("torch") or []]
    shared = [r for r in torch_needs if r.name in _wanted()
              and (r.marker is None or r.marker.evaluate({"extra": ""}))]
    if not shared:
        pytest.skip("the installed torch requires none of the extra's packages (not Linux?)")
    for requirement in shared:
        installed = metadata.version(requirement.name)
        assert requirement.specifier.contains(installed), (requirement, installed)
        assert _wanted()[requirement.name].specifier.contains(installed), (requirement.name,
                                                                            installed)
    for name in ("nvidia-cuda-nvrtc", "nvidia-cuda-runtime"):  # torch's cuda-toolkit brings them
        assert _wanted()[name].specifier.contains(metadata.version(name)), name


@pytest.mark.parametrize("route", ["cuda120", "cuda130"])
def test_pack_sh_bundles_exactly_the_gpu_extra(route: str) -> None:
    done = subprocess.run(["bash", str(ROOT / "bench/gpu/pack.sh"), "--route", route, "--list"],
                          cwd=ROOT, env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bundled = done.stdout.splitlines()
    assert set(_gpu_extra()) <= set(bundled)  # each requirement exactly as the extra states it
    names = [Requirement(line).name for line in bundled]
    for text in _gpu_extra():  # and no second, hand-kept pin of the same package
        assert names.count(Requirement(text).name) == 1, text
    assert "numba" in names and "zarr" in names and any(n.startswith("nvidia-dali") for n in names)


def test_dalis_plugin_accepts_cuda_13_only_with_numba_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from nvidia.dali.plugin import numba as plugin

    from dalidr.augment import equalize

    monkeypatch.setattr(plugin, "minimal_numba_version", dict(plugin.minimal_numba_version))
    monkeypatch.setattr(equalize.cuda, "implementation", "Built-in", raising=False)
    assert 13 not in equalize._accept_cuda_13()  # numba's built-in CUDA target: DALI's own list
    monkeypatch.setattr(equalize.cuda, "implementation", "NVIDIA", raising=False)
    assert 13 in equalize._accept_cuda_13() and 12 in plugin.minimal_numba_version
    try:
        major = equalize.cuda.runtime.get_version()[0]
    except Exception as exc:  # noqa: BLE001 - no CUDA toolkit for numba to see here
        pytest.skip(f"numba sees no CUDA toolkit here: {exc}")
    if major == 13:  # then the plugin's own check passes (torch's CUDA 13 runtime here)
        assert plugin.NumbaFunction._check_minimal_numba_version(throw=False)


def test_the_device_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from dalidr.augment import equalize
    from dalidr.errors import DeviceError

    monkeypatch.setattr(equalize, "gpu_support_problem", lambda: "numba sees CUDA 13.0")
    monkeypatch.setattr(equalize, "_OPERATORS", {})
    with pytest.raises(DeviceError, match=r'pip install "dalidr\[gpu\]"'):
        equalize._operator("gpu", 0)


@pytest.mark.slow
def test_the_gpu_extra_resolves_from_the_registry(tmp_path: Path) -> None:
    """The project with the extra, so against its own torch 2.14.1 (cuda-bindings 13)."""
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                           "--ignore-installed", "--retries", "1", "--timeout", "30",
                           "--report", str(report), f"{ROOT}[gpu]"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=480)
    output = done.stdout + done.stderr
    if done.returncode != 0 and any(sign in output for sign in NETWORK_TROUBLE):
        pytest.skip(f"package registry unreachable: {output.strip().splitlines()[-1]}")
    assert done.returncode == 0, output[-3000:]
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert resolved["torch"] == "2.14.1" and resolved["cuda-bindings"].startswith("13.")
    assert resolved["nvidia-cuda-runtime"].startswith("13.0")
    assert resolved["nvidia-nvvm"].startswith("13.0")
    assert resolved["nvidia-cuda-nvrtc"].startswith("13.0")
    assert {"numba-cuda", "numba", "nvidia-dali-cuda120"} <= set(resolved)
    assert not any(name.endswith("-cu12") and name.startswith("nvidia-cuda") for name in resolved)
