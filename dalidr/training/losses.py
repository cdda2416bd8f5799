"""The training losses: KL to the teacher's probabilities, and MEAL V2's discriminator.

Dataset Reinforcement trains on the stored teacher probabilities with KL(teacher || student):
no temperature and no hard labels (paper Sec. 2.1; MEAL V2 eq. 2-3). `kl_loss` takes dense
`[B, C]` targets, or the sparse top-k a `ReinforcedLoader` yields (`SparseTargets`), which it
sends to the fused Triton kernel of `kernels.kl_loss` on the GPU and to its pure-torch
reference on the CPU (`Backend`). On one-hot targets (ERM) it is the cross-entropy.

`DiscriminatorRegulariser` is MEAL V2's optional regulariser (Sec. 3, eq. 4): a three-layer MLP
on the network outputs tells teacher from student with binary cross-entropy; the student is
trained to fool it, and the discriminator has its own optimiser with a small learning rate so it
does not win too fast. MEAL V2 feeds it the last layer before the softmax; the store keeps
probabilities, so both sides feed log-probabilities (logits up to a per-row constant). The
trade-off: the teacher's side needs the dense [B, C] target, so with the regulariser on, sparse
targets are densified once per step.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dalidr.errors import OptionError
from kernels.kl_loss import (
    Densify,
    densify_topk,
    kl_dense_reference,
    kl_topk_fused,
    kl_topk_reference,
)

__all__ = [
    "Backend",
    "Densify",
    "kl_loss",
    "teacher_log_probs",
    "DiscriminatorConfig",
    "DiscriminatorRegulariser",
]


class Backend(enum.Enum):
    """Which implementation computes the sparse KL."""

    AUTO = "auto"  # the Triton kernel for CUDA tensors, the torch reference otherwise
    TRITON = "triton"  # the kernel (CPU tensors need TRITON_INTERPRET=1)
    TORCH = "torch"  # the reference


def _sparse(targets: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(indices, probs) if `targets` is a sparse pair, None if it is a dense tensor."""
    if isinstance(targets, torch.Tensor):
        return None
    if isinstance(targets, Sequence) and len(targets) == 2:
        indices, probs = targets
        return indices, probs
    raise OptionError(f"targets must be a [B, C] tensor or (indices, probs), not "
                      f"{type(targets).__name__}")


def kl_loss(logits: torch.Tensor, targets: Any, densify: Densify = Densify.SMOOTH,
            backend: Backend = Backend.AUTO) -> torch.Tensor:
    """KL(targets || softmax(logits)) averaged over the batch, computed in float32.

    `targets`: dense [B, C] probabilities, or sparse (indices [B, k], probs [B, k]) densified by
    `densify` (exactly, without building [B, C])."""
    if not isinstance(backend, Backend):
        raise OptionError.choice("backend", backend, [b.value for b in Backend])
    sparse = _sparse(targets)
    if sparse is None:
        if targets.shape != logits.shape:
            raise OptionError(f"dense targets {list(targets.shape)} do not match logits "
                              f"{list(logits.shape)}")
        return kl_dense_reference(logits, targets)
    indices, probs = sparse
    use_kernel = backend is Backend.TRITON or (backend is Backend.AUTO and logits.is_cuda)
    if use_kernel:
        return kl_topk_fused(logits, indices, probs, densify)
    return kl_topk_reference(logits, indices, probs, densify)


def teacher_log_probs(targets: Any, num_classes: int, densify: Densify = Densify.SMOOTH
                      ) -> torch.Tensor:
    """log of the dense teacher distribution [B, C] (zeros clamped to 1e-8)."""
    sparse = _sparse(targets)
    dense = targets if sparse is None else densify_topk(sparse[0], sparse[1], num_classes,
                                                        densify)
    return torch.log(dense.float().clamp_min(1e-8))


@dataclass(frozen=True)
class DiscriminatorConfig:
    """MEAL V2's discriminator regulariser."""

    # Width of the two hidden layers of the three-layer MLP.
    hidden: int = 256
    # Learning rate of the discriminator's own optimiser (AdamW): small, so it learns slowly.
    lr: float = 1e-4
    # Weight of the student's adversarial term in the student's loss.
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.lr <= 0 or self.weight < 0:
            raise OptionError(f"discriminator options hidden={self.hidden}, lr={self.lr}, "
                              f"weight={self.weight}: need hidden >= 1, lr > 0, weight >= 0")


class DiscriminatorRegulariser(nn.Module):
    """A teacher-vs-student classifier on output log-probabilities, with its own optimiser."""

    def __init__(self, num_classes: int, config: DiscriminatorConfig = DiscriminatorConfig()
                 ) -> None:
        super().__init__()
        self.config = config
        self.head = nn.Sequential(
            nn.Linear(num_classes, config.hidden), nn.LeakyReLU(0.2),
            nn.Linear(config.hidden, config.hidden), nn.LeakyReLU(0.2),
            nn.Linear(config.hidden, 1),
        )
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=config.lr,
                                           betas=(0.5, 0.999))

    def _bce(self, log_probs: torch.Tensor, is_teacher: bool) -> torch.Tensor:
        score = self.head(log_probs.float()).squeeze(1)
        label = torch.full_like(score, 1.0 if is_teacher else 0.0)
        return nn.functional.binary_cross_entropy_with_logits(score, label)

    def student_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """The student's adversarial term: BCE of the discriminator calling it a teacher."""
        for param in self.head.parameters():
            param.requires_grad_(False)
        try:
            loss = self._bce(torch.log_softmax(logits.float(), dim=1), is_teacher=True)
        finally:
            for param in self.head.parameters():
                param.requires_grad_(True)
        return self.config.weight * loss

    def update(self, logits: torch.Tensor, teacher: torch.Tensor) -> float:
        """One optimiser step of the discriminator; `teacher` holds log-probabilities [B, C].
        Returns its loss."""
        student = torch.log_softmax(logits.detach().float(), dim=1)
        loss = self._bce(teacher.detach(), is_teacher=True) + self._bce(student,
                                                                         is_teacher=False)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state(self) -> dict[str, Any]:
        """Weights and optimiser state, for a checkpoint."""
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
