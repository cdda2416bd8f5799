"""Equalize (dalidr.augment.equalize) against PIL's `ImageOps.equalize` and torchvision's
`equalize`.

The definition is integer arithmetic, so the operator must be exact: on real photographs at
several sizes, and on the edge cases of the table (one value, two values, tables whose last
entry would be 256 before clamping, a dark image with few levels).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from nvidia.dali import fn, pipeline_def, types
from PIL import Image, ImageOps

from dalidr.augment.equalize import equalize_reference, pil_equalize
from dalidr.data.sample_data import bundled_photos


def _run(images: list[np.ndarray], device_id: int | None) -> list[np.ndarray]:
    @pipeline_def(batch_size=len(images), num_threads=1, device_id=device_id)
    def pipe():
        data = fn.external_source(name="x", dtype=types.UINT8, layout="HWC")
        if device_id is not None:
            data = data.gpu()
        return pil_equalize(data)

    p = pipe()
    p.build()
    p.feed_input("x", images)
    (out,) = p.run()
    if hasattr(out, "as_cpu"):
        out = out.as_cpu()
    return [np.asarray(out[i]) for i in range(len(images))]


def _cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for path in bundled_photos():
        photo = Image.open(path).convert("RGB")
        for side in (17, 64, 224):
            cases.append((f"{path.stem}@{side}", np.asarray(photo.resize((side, side + 3)))))
        cases.append((f"{path.stem} dark", np.asarray(photo.resize((96, 80))) // 9))
    cases.append(("constant", np.full((32, 40, 3), 77, np.uint8)))
    cases.append(("two values", (rng.integers(0, 2, (50, 30, 3)) * 200 + 20).astype(np.uint8)))
    # Small random images: tables whose top entries reach 256 before torchvision's clamp.
    for i in range(12):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)), 3)
        cases.append((f"random {i}", rng.integers(0, 256, shape).astype(np.uint8)))
    return cases


def _expected(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pil = np.asarray(ImageOps.equalize(Image.fromarray(image)))
    tv = F.equalize(torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous())
    return pil, tv.permute(1, 2, 0).numpy()


def test_reference_is_pil_and_torchvision() -> None:
    for name, image in _cases():
        pil, tv = _expected(image)
        assert np.array_equal(equalize_reference(image), pil), name
        assert np.array_equal(pil, tv), name


@pytest.mark.parametrize("device_id", [None, pytest.param(0, marks=pytest.mark.gpu)])
def test_operator_is_exact(device_id: int | None) -> None:
    cases = _cases()
    outputs = _run([image for _, image in cases], device_id)
    for (name, image), out in zip(cases, outputs, strict=True):
        pil, _ = _expected(image)
        diff = np.abs(out.astype(np.int64) - pil.astype(np.int64))
        assert diff.max() == 0, f"{name}: max diff {diff.max()}, mean {diff.mean():.3f}"


_SIMULATED = """
import numpy as np
from numba import cuda
from PIL import Image, ImageOps
from dalidr.augment.equalize import _THREADS, _equalize_gpu
kernel = cuda.jit(_equalize_gpu)
rng = np.random.default_rng(0)
for shape in [(9, 13, 3), (20, 31, 3), (1, 1, 3), (7, 5, 1)]:
    image = (rng.integers(0, 256, shape) // 3).astype(np.uint8)
    out = np.zeros_like(image)
    kernel[3, _THREADS](out, image)
    pil = ImageOps.equalize(Image.fromarray(image[:, :, 0] if shape[2] == 1 else image))
    expected = np.asarray(pil).reshape(shape)
    assert np.array_equal(out, expected), (shape, np.abs(out.astype(int) - expected).max())
print("ok")
"""


def test_cuda_kernel_in_numba_simulator() -> None:
    """The GPU kernel's logic (shared histogram, barriers, table), on numba's CUDA simulator."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run([sys.executable, "-c", _SIMULATED], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
