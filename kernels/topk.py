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

Layout (STYLE.md): `_ensemble_topk_kernel` (Triton) and `ensemble_topk_kernel` (host wrapper)
live in `kernels.topk_triton`, the only module that imports triton; here are `ensemble_topk`
(the dispatch, which imports the kernel module only when the kernel will run) and
`ensemble_topk_reference` (pure torch, the CPU path). The split keeps triton, ~75 MB of
resident memory on a CPU-only machine, out of processes that never launch the kernel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

__all__ = [
    "MAX_FUSED_CLASSES",
    "ensemble_topk",
    "ensemble_topk_reference",
]

# Widest class axis one program holds in registers (next power of two of the row).
MAX_FUSED_CLASSES = 32768


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
        from kernels.topk_triton import ensemble_topk_kernel  # imports triton (docstring)

        return ensemble_topk_kernel(stacked, k)
    return ensemble_topk_reference(stacked, k)
