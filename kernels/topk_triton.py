"""The Triton side of `kernels.topk`: the fused ensemble top-k kernel and its host wrapper.

How the kernel works (one program per view, members streamed once, k repeated argmaxes) and
when it is used is explained in `kernels.topk`, which owns the dispatch and the reference. This
module is split off because it imports triton at its top, which costs ~75 MB of resident memory
per process on a CPU-only machine; `kernels.topk` imports it inside `ensemble_topk` only when
the kernel will run.

Layout (STYLE.md): `_ensemble_topk_kernel` (Triton) and `ensemble_topk_kernel` (host wrapper).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from kernels.topk import MAX_FUSED_CLASSES, _as_stacked, _check_k

__all__ = ["ensemble_topk_kernel"]


@triton.jit
def _ensemble_topk_kernel(
    logits_ptr,  # [M, B, C], any float dtype; rows contiguous in C
    classes_ptr,  # [B, K] int64 out
    probs_ptr,  # [B, K] float32 out
    num_members,
    num_classes,
    stride_member,
    stride_row,
    K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_C)
    valid = offs < num_classes
    total = tl.zeros((BLOCK_C,), dtype=tl.float32)
    base = logits_ptr + row * stride_row
    for _ in range(num_members):
        x = tl.load(base + offs, mask=valid, other=-float("inf")).to(tl.float32)
        base += stride_member
        shifted = x - tl.max(x, axis=0)
        e = tl.where(valid, tl.exp(shifted), 0.0)
        total += e / tl.sum(e, axis=0)
    mean = tl.where(valid, total / num_members, -1.0)
    for j in range(K):
        best = tl.max(mean, axis=0)
        index = tl.argmax(mean, axis=0, tie_break_left=True)
        tl.store(classes_ptr + row * K + j, index.to(tl.int64))
        tl.store(probs_ptr + row * K + j, best)
        mean = tl.where(offs == index, -2.0, mean)


def ensemble_topk_kernel(
    logits: torch.Tensor | Sequence[torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused Triton kernel (CUDA tensors, or any tensor under TRITON_INTERPRET=1)."""
    stacked = _as_stacked(logits)
    members, rows, num_classes = stacked.shape
    _check_k(k, num_classes)
    if num_classes > MAX_FUSED_CLASSES:
        raise ValueError(f"{num_classes} classes exceed the fused kernel's {MAX_FUSED_CLASSES}")
    if stacked.stride(-1) != 1:
        stacked = stacked.contiguous()
    classes = torch.empty((rows, k), dtype=torch.int64, device=stacked.device)
    probs = torch.empty((rows, k), dtype=torch.float32, device=stacked.device)
    if rows == 0:
        return classes, probs
    block = triton.next_power_of_2(num_classes)
    warps = 4 if block <= 4096 else 8 if block <= 16384 else 16
    _ensemble_topk_kernel[(rows,)](
        stacked, classes, probs, members, num_classes, stacked.stride(0), stacked.stride(1),
        K=k, BLOCK_C=block, num_warps=warps,
    )
    return classes, probs
