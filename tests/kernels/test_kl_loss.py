"""The fused sparse KL kernel and its gradient against the dense reference, over awkward shapes.

On a CUDA machine the kernel tests run on the GPU; on CPU `test_kernel_under_interpreter` runs
them again in a subprocess with TRITON_INTERPRET=1 (never set in this process: it would turn
every Triton kernel of the session into an interpreted one).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.kl_loss import (
    Densify,
    densify_topk,
    kl_dense_reference,
    kl_topk_fused,
    kl_topk_reference,
)
from kernels.kl_loss_triton import kl_topk_triton
from tests.kernels import DEVICE, INTERPRETED, kernel_test, run_under_interpreter

# (batch, classes, k): k = C, k = 1, C not a power of two, C above one tile (4096), batch 1.
SHAPES = [(1, 2, 1), (5, 3, 3), (7, 37, 5), (4, 1000, 10), (3, 129, 17), (2, 5000, 7)]
TOLERANCE = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (1e-5, 1e-6)}


def _case(
    batch: int, classes: int, k: int, dtype: torch.dtype, seed: int, mass: float = 0.8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, classes, generator=g) * 4).to(dtype)
    indices = torch.stack([torch.randperm(classes, generator=g)[:k] for _ in range(batch)])
    probs = torch.rand(batch, k, generator=g)
    probs = probs / probs.sum(1, keepdim=True) * mass
    return logits.to(DEVICE), indices.to(DEVICE), probs.to(DEVICE)


@pytest.mark.parametrize("densify", list(Densify), ids=lambda d: d.value)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sparse_reference_matches_dense_definition(shape, densify) -> None:
    logits, indices, probs = _case(*shape, torch.float32, seed=sum(shape))
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    dense = densify_topk(indices, probs, shape[1], densify)
    want = kl_dense_reference(a, dense)
    got = kl_topk_reference(b, indices, probs, densify)
    want.backward()
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)
    # The gradient is (softmax - target) / B: a nonzero test, not a vacuous one.
    torch.testing.assert_close(a.grad, (logits.softmax(1) - dense) / shape[0], rtol=1e-4, atol=1e-7)


def test_densify_rules() -> None:
    indices = torch.tensor([[2, 0], [1, 3]])
    probs = torch.tensor([[0.5, 0.3], [0.6, 0.6]])  # the second row's mass is over 1
    smooth = densify_topk(indices, probs, 4, Densify.SMOOTH)
    torch.testing.assert_close(smooth[0], torch.tensor([0.3, 0.1, 0.5, 0.1]))
    torch.testing.assert_close(smooth[1], torch.tensor([0.0, 0.5, 0.0, 0.5]))
    zeros = densify_topk(indices, probs, 4, Densify.ZEROS)
    torch.testing.assert_close(zeros[0], torch.tensor([0.375, 0.0, 0.625, 0.0]))
    torch.testing.assert_close(smooth.sum(1), torch.ones(2))


@kernel_test
@pytest.mark.parametrize("densify", list(Densify), ids=lambda d: d.value)
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(shape, dtype, densify) -> None:
    logits, indices, probs = _case(*shape, dtype, seed=3 * sum(shape))
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    want = kl_dense_reference(a, densify_topk(indices, probs, shape[1], densify))
    got = kl_topk_fused(b, indices, probs, densify)
    (want * 0.5).backward()  # a non-unit incoming gradient exercises the backward's scaling
    (got * 0.5).backward()
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    assert b.grad is not None and b.grad.dtype == dtype
    grad_tol = 1e-6 if dtype is torch.float32 else 4e-3 / shape[0]
    torch.testing.assert_close(b.grad.float(), a.grad.float(), rtol=1e-2, atol=grad_tol)


@kernel_test
def test_kernel_loss_only_and_one_hot() -> None:
    """Without gradients no buffer is written; one-hot rows (1 then zeros) give cross-entropy."""
    logits, _, _ = _case(6, 11, 3, torch.float32, seed=5)
    labels = torch.arange(6, device=DEVICE) % 11
    indices = torch.stack([labels, (labels + 1) % 11, (labels + 2) % 11], dim=1)
    probs = torch.zeros(6, 3, device=DEVICE)
    probs[:, 0] = 1.0
    loss, grad = kl_topk_triton(logits, indices, probs, Densify.SMOOTH, with_grad=False)
    assert grad is None
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))


@pytest.mark.skipif(INTERPRETED, reason="the subprocess itself")
def test_kernel_under_interpreter() -> None:
    """Runs the kernel tests above on CPU tensors with TRITON_INTERPRET=1, in a subprocess."""
    run_under_interpreter(
        __file__,
        "test_kernel_matches or test_kernel_loss_only",
        len(SHAPES) * len(TOLERANCE) * len(Densify) + 1,
    )


def test_loader_imports_leave_triton_out() -> None:
    """Every data-loading process imports `kernels.kl_loss` (for `densify_topk`) and the teacher
    pass `kernels.topk`; neither may import triton (~75 MB resident per process on a CPU-only
    machine) until a kernel runs. A fresh interpreter, since this one has triton already; its
    last line checks that importing the kernel modules does bring triton in (the probe works)."""
    code = (
        "import sys\n"
        "import kernels.kl_loss, kernels.topk, dalidr.training.loader\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton'))\n"
        "import kernels.kl_loss_triton, kernels.topk_triton\n"
        "print('triton' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["[]", "True"], result.stdout[-3000:]
