"""The fused ensemble top-k kernel against its torch reference, over awkward shapes.

On a CUDA machine the kernel tests run on the GPU. On CPU they run under the Triton interpreter,
which must be switched on before any kernel is defined, so `test_kernel_under_interpreter` runs
this file again in a subprocess with TRITON_INTERPRET=1 (never set in this process: it would
turn every Triton kernel of the session, torch.compile's included, into interpreted ones).
"""

from __future__ import annotations

import pytest
import torch

from kernels.topk import (
    MAX_FUSED_CLASSES,
    ensemble_topk,
    ensemble_topk_reference,
)
from kernels.topk_triton import ensemble_topk_kernel
from tests.kernels import DEVICE, INTERPRETED, kernel_test, run_under_interpreter

# (members, views, classes, k): one member, one view, k = C, C not a power of two, C = 1, ...
SHAPES = [
    (1, 1, 1, 1),
    (1, 5, 3, 3),
    (2, 7, 10, 5),
    (3, 33, 1000, 10),
    (4, 2, 37, 1),
    (2, 3, 129, 17),
    (5, 1, 2049, 10),
]
TOLERANCE = {torch.float32: 2e-6, torch.bfloat16: 2e-6, torch.float16: 2e-6}


def _logits(members: int, views: int, classes: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(members, views, 1, generator=g) * 8
    x = torch.randn(members, views, classes, generator=g) * scale
    return x.to(dtype).to(DEVICE)


@kernel_test
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=lambda d: str(d).split(".")[-1]
)
def test_kernel_matches_reference(shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    members, views, classes, k = shape
    logits = _logits(members, views, classes, dtype, seed=sum(shape))
    got_classes, got_probs = ensemble_topk_kernel(logits, k)
    want_classes, want_probs = ensemble_topk_reference(logits, k)
    assert got_classes.shape == got_probs.shape == (views, k)
    assert got_classes.dtype == torch.int64 and got_probs.dtype == torch.float32
    torch.testing.assert_close(got_probs.cpu(), want_probs.cpu(), rtol=1e-5, atol=TOLERANCE[dtype])
    # Classes agree wherever the reference's probabilities are not (nearly) tied.
    full = torch.softmax(logits.float(), -1).mean(0).cpu()
    gathered = full.gather(1, got_classes.cpu())
    torch.testing.assert_close(gathered, want_probs.cpu(), rtol=1e-5, atol=TOLERANCE[dtype])
    separated = torch.ones_like(want_probs, dtype=torch.bool)
    if k > 1:
        gaps = (want_probs[:, :-1] - want_probs[:, 1:]).cpu() > 1e-5
        separated[:, 1:] &= gaps.to(separated.device)
        separated[:, :-1] &= gaps.to(separated.device)
    assert torch.equal(got_classes.cpu()[separated.cpu()], want_classes.cpu()[separated.cpu()])
    assert (got_classes.cpu().sort(-1).values.diff(dim=-1) > 0).all(), "a class repeated"


@kernel_test
def test_kernel_breaks_ties_towards_the_lower_class() -> None:
    logits = torch.zeros(2, 3, 6, device=DEVICE)
    logits[:, :, 4] = 1.0
    classes, probs = ensemble_topk_kernel(logits, 4)
    assert classes.cpu().tolist() == [[4, 0, 1, 2]] * 3
    want_classes, want_probs = ensemble_topk_reference(logits, 4)
    assert torch.equal(classes.cpu(), want_classes.cpu())
    torch.testing.assert_close(probs.cpu(), want_probs.cpu())


@kernel_test
def test_kernel_reads_strided_member_stacks() -> None:
    base = _logits(3, 8, 50, torch.float32, seed=3)
    members = [base[m, ::2] for m in range(3)]  # non-contiguous rows
    got = ensemble_topk_kernel(members, 5)
    want = ensemble_topk_reference(members, 5)
    torch.testing.assert_close(got[1], want[1])
    assert torch.equal(got[0], want[0])


def test_reference_is_the_mean_of_softmax() -> None:
    logits = torch.randn(3, 4, 9, dtype=torch.float64)
    classes, probs = ensemble_topk_reference(logits, 9)
    mean = (logits.softmax(-1).sum(0) / 3).float()
    torch.testing.assert_close(probs, mean.gather(1, classes))
    assert torch.equal(classes, torch.sort(mean, dim=-1, descending=True, stable=True).indices)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_bad_k_and_shapes_are_rejected() -> None:
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="k=6 must be in 1..5"):
        ensemble_topk_reference(logits, 6)
    with pytest.raises(ValueError, match="k=0"):
        ensemble_topk(logits, 0)
    with pytest.raises(ValueError, match="members, views, classes"):
        ensemble_topk_reference(torch.randn(2, 3, 4, 5), 1)


def test_cpu_dispatch_uses_the_reference_and_wide_heads_too() -> None:
    if INTERPRETED:
        pytest.skip("under the interpreter CPU tensors go to the kernel")
    logits = torch.randn(2, 4, MAX_FUSED_CLASSES + 1)
    got = ensemble_topk(logits, 3)
    want = ensemble_topk_reference(logits, 3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.skipif(INTERPRETED, reason="this is the interpreter run")
def test_kernel_under_interpreter() -> None:
    """Runs the kernel tests above on CPU tensors with TRITON_INTERPRET=1, in a subprocess."""
    run_under_interpreter(
        __file__,
        "test_kernel_matches or test_kernel_breaks or test_kernel_reads",
        len(SHAPES) * 3 + 2,
    )
