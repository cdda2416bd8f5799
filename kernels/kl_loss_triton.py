"""The Triton side of `kernels.kl_loss`: the fused sparse-KL kernel and its host wrapper.

The math (one pass for the cross term, a second writing (softmax - t) / B while the row is hot)
is explained in `kernels.kl_loss`, which owns the densification rule, the references and the
autograd wrapper. This module is split off because it imports triton at its top: every
data-loading process imports `kernels.kl_loss` (for `densify_topk`), and on a CPU-only loader
the triton import alone costs ~75 MB of resident memory and ~80 ms, for code that only runs
on a GPU. `kernels.kl_loss` imports this module inside the function that launches the kernel.

Layout (STYLE.md): `_kl_topk_kernel` (Triton) and `kl_topk_triton` (host wrapper).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.kl_loss import Densify, _check, _entropy_term, topk_spread

__all__ = ["kl_topk_triton"]

_MAX_BLOCK_C = 4096


@triton.jit
def _kl_topk_kernel(logits_ptr, logits_stride, index_ptr, prob_ptr, topk_stride, spread_ptr,
                    cross_ptr, grad_ptr, grad_stride, num_classes, k, grad_scale,
                    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, WRITE_GRAD: tl.constexpr):
    """One program per row: the cross term sum_c t_c log q_c, and (softmax - t) * grad_scale."""
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * logits_stride
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < k
    index = tl.load(index_ptr + row * topk_stride + ks, mask=kmask, other=-1)
    p = tl.load(prob_ptr + row * topk_stride + ks, mask=kmask, other=0.0).to(tl.float32)
    u = tl.load(spread_ptr + row).to(tl.float32)

    # Pass 1: running max, sum of exponentials and sum of the logits.
    running_max = tl.zeros((), dtype=tl.float32) - float("inf")
    sum_exp = tl.zeros((), dtype=tl.float32)
    total = tl.zeros((), dtype=tl.float32)
    for start in range(0, num_classes, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        cmask = cols < num_classes
        z = tl.load(row_logits + cols, mask=cmask, other=-float("inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        sum_exp = sum_exp * tl.exp(running_max - new_max) + tl.sum(
            tl.where(cmask, tl.exp(z - new_max), 0.0), axis=0)
        running_max = new_max
        total += tl.sum(tl.where(cmask, z, 0.0), axis=0)
    lse = running_max + tl.log(sum_exp)

    z_top = tl.load(row_logits + index, mask=kmask, other=0.0).to(tl.float32)
    cross = tl.sum(tl.where(kmask, (p - u) * (z_top - lse), 0.0), axis=0)
    cross += u * (total - num_classes * lse)
    tl.store(cross_ptr + row, cross)

    # Pass 2: the gradient, with the target of each tile rebuilt from the k indices.
    if WRITE_GRAD:
        row_grad = grad_ptr + row * grad_stride
        for start in range(0, num_classes, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            cmask = cols < num_classes
            z = tl.load(row_logits + cols, mask=cmask, other=0.0).to(tl.float32)
            hit = cols[:, None] == index[None, :]
            target = u + tl.sum(tl.where(hit, (p - u)[None, :], 0.0), axis=1)
            grad = (tl.exp(z - lse) - target) * grad_scale
            tl.store(row_grad + cols, grad.to(grad_ptr.dtype.element_ty), mask=cmask)


def kl_topk_triton(logits: torch.Tensor, indices: torch.Tensor, probs: torch.Tensor,
                   densify: Densify = Densify.SMOOTH, with_grad: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Host wrapper: (loss averaged over the batch, d loss / d logits or None).

    Runs the Triton kernel wherever Triton can run (CUDA tensors; CPU tensors under
    TRITON_INTERPRET=1)."""
    batch, num_classes = logits.shape
    _check(indices, probs, num_classes)
    p, spread = topk_spread(probs, num_classes, densify)
    logits = logits.contiguous()
    index = indices.to(device=logits.device, dtype=torch.int64).contiguous()
    p, spread = p.contiguous(), spread.contiguous()
    cross = torch.empty(batch, device=logits.device, dtype=torch.float32)
    grad = torch.empty_like(logits) if with_grad else cross  # a dummy pointer without grad
    block_c = min(triton.next_power_of_2(num_classes), _MAX_BLOCK_C)
    block_k = max(triton.next_power_of_2(index.shape[1]), 2)
    if batch:
        _kl_topk_kernel[(batch,)](
            logits, logits.stride(0), index, p, index.stride(0), spread, cross, grad,
            grad.stride(0) if with_grad else 0, num_classes, index.shape[1], 1.0 / batch,
            BLOCK_C=block_c, BLOCK_K=block_k, WRITE_GRAD=with_grad,
            num_warps=8 if block_c >= 2048 else 4,
        )
    loss = (_entropy_term(p, spread, num_classes) - cross).mean()
    return loss, grad if with_grad else None
