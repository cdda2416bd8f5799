"""Kernel tests: each kernel against its torch reference, on CUDA or under Triton's interpreter.

Without a GPU the kernel tests run on CPU tensors with `TRITON_INTERPRET=1`, in a subprocess so
that the flag does not make every other Triton kernel of the session interpreted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
kernel_test = pytest.mark.skipif(
    not (INTERPRETED or torch.cuda.is_available()),
    reason="runs on CUDA, or on CPU under TRITON_INTERPRET=1 (see test_kernel_under_interpreter)",
)


def run_under_interpreter(test_file: str, selection: str, expected_passed: int) -> None:
    """Run the `selection` (pytest -k) of `test_file` under TRITON_INTERPRET=1 on the CPU."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            selection,
            str(Path(test_file).resolve()),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert f"{expected_passed} passed" in summary, result.stdout[-3000:]
