"""KL(teacher || student) from student logits and the teacher's sparse top-k, fused.

Dataset Reinforcement trains on the stored teacher probabilities with a plain KL divergence, no
temperature and no hard labels (paper Sec. 2.1, MEAL V2 eq. 2-3). The store keeps only the
top-k (indices, probabilities) of each view; the target over all C classes is defined by a
densification rule (`Densify`):

- SMOOTH: the top-k as stored, and the remaining mass r = 1 - sum(top-k) spread uniformly over
  the C - k other classes (u = r / (C - k) each);
- ZEROS: the top-k renormalised to sum to one, zero elsewhere (u = 0).
A top-k whose mass is already >= 1 (quantisation can push it a hair over) is renormalised under
both rules, so the target is always a distribution.

With t = the densified target and l = log_softmax(z), KL = sum_c t_c log t_c - sum_c t_c l_c, and
the cross term needs no [B, C] target:

    sum_c t_c l_c = sum_j (p_j - u) l_{i_j} + u * (sum_c z_c - C * logsumexp(z)),

so one pass over a row of logits (online max, sum of exponentials, sum of logits) plus k
gathers gives the loss; the entropy term depends on the targets only ([B, k] work). The
gradient is (softmax(z) - t) / B, which the kernel writes in a second pass over the row while
the row is hot in cache, building t of each column tile from the k indices on the fly
(Liger-Kernel's fused cross-entropy pattern). The trade-off: the [B, C] gradient buffer is
allocated in the forward (it is as large as the logits) instead of recomputing the softmax in
the backward.

Layout (STYLE.md): `_kl_topk_kernel` (Triton), `kl_topk_triton` (host wrapper), `_KLTopK`
(autograd.Function), `kl_topk_reference` (pure torch, the CPU path) and `kl_dense_reference`
(the definition, on a dense target from `densify_topk`).
"""

from __future__ import annotations

import enum

import torch
import triton
import triton.language as tl

from dalidr.errors import OptionError

__all__ = [
    "Densify",
    "topk_spread",
    "densify_topk",
    "kl_dense_reference",
    "kl_topk_reference",
    "kl_topk_triton",
    "kl_topk_fused",
]

_MAX_BLOCK_C = 4096


class Densify(enum.Enum):
    """How a stored top-k becomes a distribution over all classes (module docstring)."""

    SMOOTH = "smooth"  # the remaining mass spread uniformly over the other classes
    ZEROS = "zeros"  # the top-k renormalised, zero elsewhere


def _check(indices: torch.Tensor, probs: torch.Tensor, num_classes: int) -> None:
    if indices.ndim != 2 or indices.shape != probs.shape:
        raise OptionError(f"top-k indices {list(indices.shape)} and probabilities "
                          f"{list(probs.shape)} must both be [batch, k]")
    if indices.shape[1] > num_classes:
        raise OptionError(f"top-k of {indices.shape[1]} classes exceeds num_classes "
                          f"{num_classes}")


def topk_spread(probs: torch.Tensor, num_classes: int, densify: Densify
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k probabilities to use [B, k], mass u of each other class [B]) in float32."""
    if not isinstance(densify, Densify):
        raise OptionError.choice("densify", densify, [d.value for d in Densify])
    p = probs.float()
    k = p.shape[1]
    mass = p.sum(dim=1, keepdim=True)
    full = (mass >= 1.0) if densify is Densify.SMOOTH else torch.ones_like(mass, dtype=torch.bool)
    if k == num_classes:
        full = torch.ones_like(full)
    p = torch.where(full, p / mass.clamp_min(1e-12), p)
    others = max(num_classes - k, 1)
    spread = torch.where(full, torch.zeros_like(mass), (1.0 - mass) / others).squeeze(1)
    return p, spread


def densify_topk(indices: torch.Tensor, probs: torch.Tensor, num_classes: int,
                 densify: Densify = Densify.SMOOTH) -> torch.Tensor:
    """The dense target [B, C] (float32) a top-k stands for under `densify`."""
    _check(indices, probs, num_classes)
    p, spread = topk_spread(probs, num_classes, densify)
    dense = spread[:, None].expand(len(p), num_classes).clone()
    return dense.scatter_(1, indices.long(), p)


def _entropy_term(p: torch.Tensor, spread: torch.Tensor, num_classes: int) -> torch.Tensor:
    """sum_c t_c log t_c per row, from the top-k and the spread mass ([B] float32)."""
    top = torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), torch.zeros_like(p)).sum(1)
    others = num_classes - p.shape[1]
    rest = torch.where(spread > 0, others * spread * torch.log(spread.clamp_min(1e-30)),
                       torch.zeros_like(spread))
    return top + rest


def kl_dense_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) averaged over the batch; the definition."""
    t = target.float()
    log_q = torch.log_softmax(logits.float(), dim=1)
    plogp = torch.where(t > 0, t * torch.log(t.clamp_min(1e-30)), torch.zeros_like(t))
    return (plogp - t * log_q).sum(1).mean()


def kl_topk_reference(logits: torch.Tensor, indices: torch.Tensor, probs: torch.Tensor,
                      densify: Densify = Densify.SMOOTH) -> torch.Tensor:
    """KL to the densified top-k without building the [B, C] target; the CPU path."""
    num_classes = logits.shape[1]
    _check(indices, probs, num_classes)
    p, spread = topk_spread(probs, num_classes, densify)
    log_q = torch.log_softmax(logits.float(), dim=1)
    cross = ((p - spread[:, None]) * log_q.gather(1, indices.long())).sum(1)
    cross = cross + spread * log_q.sum(1)
    return (_entropy_term(p, spread, num_classes) - cross).mean()


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


class _KLTopK(torch.autograd.Function):
    """Forward computes the gradient too; backward scales it by the incoming gradient."""

    @staticmethod
    def forward(ctx, logits, indices, probs, densify):
        loss, grad = kl_topk_triton(logits, indices, probs, densify,
                                    with_grad=logits.requires_grad)
        ctx.save_for_backward(grad if grad is not None else logits.new_empty(0))
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if torch.equal(grad_output, torch.ones_like(grad_output)):
            return grad, None, None, None
        return grad * grad_output.to(grad.dtype), None, None, None


def kl_topk_fused(logits: torch.Tensor, indices: torch.Tensor, probs: torch.Tensor,
                  densify: Densify = Densify.SMOOTH) -> torch.Tensor:
    """The Triton path with autograd: a scalar loss whose backward is the fused gradient."""
    return _KLTopK.apply(logits, indices, probs, densify)

