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

Layout (STYLE.md): `_kl_topk_kernel` (Triton) and `kl_topk_triton` (host wrapper) live in
`kernels.kl_loss_triton`, the only module that imports triton; here are `_KLTopK`
(autograd.Function, which imports that module when its forward first runs), `kl_topk_reference`
(pure torch, the CPU path) and `kl_dense_reference` (the definition, on a dense target from
`densify_topk`). The split keeps triton out of every process that imports this module without
running the kernel: each data-loading process imports it for `densify_topk`, and on a CPU-only
loader `import triton` alone costs ~75 MB of resident memory and ~80 ms.
"""

from __future__ import annotations

import enum

import torch

from dalidr.errors import OptionError

__all__ = [
    "Densify",
    "topk_spread",
    "densify_topk",
    "kl_dense_reference",
    "kl_topk_reference",
    "kl_topk_fused",
]


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


class _KLTopK(torch.autograd.Function):
    """Forward computes the gradient too; backward scales it by the incoming gradient."""

    @staticmethod
    def forward(ctx, logits, indices, probs, densify):
        from kernels.kl_loss_triton import kl_topk_triton  # imports triton (module docstring)

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

