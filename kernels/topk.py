"""Fused ensemble top-k: mean of the members' softmax and its k largest entries, in one pass.

The teacher pass (paper Sec. 2.2; MEAL V2 eq. 1) stores, per view, the top-k of the mean of the
ensemble members' softmax (no temperature). Done with torch that is a softmax per member, a
stack, a mean and a top-k: four kernels and an [M, B, C] float32 intermediate written and read
back. Here one Triton program owns one view: it streams each member's logits row once, keeps
the running sum of probabilities in registers, then extracts the k largest by repeated argmax
(k is small, 5-10, so k reductions over a register-resident row beat a sort).

Trade-offs: a row must fit one program (`MAX_FUSED_CLASSES`, enough for ImageNet-1k and
21k-sized heads); wider heads and CPU tensors go to `ensemble_topk_reference`, which is also
the CPU path of the product. Ties are broken towards the lower class index in
both, so kernel and reference agree on the classes whenever the probabilities agree. No
gradients flow (the teacher is frozen), so there is no autograd.Function.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

__all__ = [
    "MAX_FUSED_CLASSES",
    "ensemble_topk",
    "ensemble_topk_kernel",
    "ensemble_topk_reference",
]

# Widest class axis one program holds in registers (next power of two of the row).
MAX_FUSED_CLASSES = 32768


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


def _as_stacked(logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(logits, torch.Tensor):
        stacked = logits if logits.dim() == 3 else logits.unsqueeze(0)
    else:
        stacked = torch.stack(list(logits))
    if stacked.dim() != 3:
        raise ValueError(f"logits must be [members, views, classes], got {list(stacked.shape)}")
    return stacked


def ensemble_topk_reference(
    logits: torch.Tensor | Sequence[torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure torch: top-k (classes int64, probabilities float32) of mean_m softmax(logits[m]).

    `logits` is [M, B, C] or a sequence of M [B, C] tensors. Classes come by decreasing
    probability, ties towards the lower index (a stable sort)."""
    stacked = _as_stacked(logits)
    _check_k(k, stacked.shape[-1])
    mean = torch.softmax(stacked.float(), dim=-1).sum(0) / stacked.shape[0]
    probs, classes = torch.sort(mean, dim=-1, descending=True, stable=True)
    return classes[:, :k].contiguous(), probs[:, :k].contiguous()


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


def _check_k(k: int, num_classes: int) -> None:
    if not 1 <= k <= num_classes:
        raise ValueError(f"k={k} must be in 1..{num_classes} (the number of classes)")


def _kernel_runs_on(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def ensemble_topk(
    logits: torch.Tensor | Sequence[torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the ensemble's mean softmax: the kernel on GPU, the reference on CPU."""
    stacked = _as_stacked(logits)
    if _kernel_runs_on(stacked) and stacked.shape[-1] <= MAX_FUSED_CLASSES:
        return ensemble_topk_kernel(stacked, k)
    return ensemble_topk_reference(stacked, k)
