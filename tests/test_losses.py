"""The loss API: dense and sparse targets agree, one-hot is cross-entropy, and MEAL V2's
discriminator learns, regularises the student only through its input, and checkpoints."""

from __future__ import annotations

import pytest
import torch

from dalidr.errors import OptionError
from dalidr.training.loader import SparseTargets
from dalidr.training.losses import (
    Backend,
    Densify,
    DiscriminatorConfig,
    DiscriminatorRegulariser,
    kl_loss,
    teacher_log_probs,
)
from kernels.kl_loss import densify_topk


def _batch(seed: int = 0) -> tuple[torch.Tensor, SparseTargets]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 10, generator=g) * 3
    indices = torch.stack([torch.randperm(10, generator=g)[:4] for _ in range(8)])
    probs = torch.softmax(torch.randn(8, 4, generator=g), 1) * 0.9
    return logits, SparseTargets(indices, probs)


@pytest.mark.parametrize("densify", list(Densify), ids=lambda d: d.value)
def test_sparse_and_dense_targets_give_the_same_loss_and_gradient(densify) -> None:
    logits, sparse = _batch()
    dense = densify_topk(sparse.indices, sparse.probs, 10, densify)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    want, got = kl_loss(a, dense), kl_loss(b, sparse, densify, Backend.TORCH)
    want.backward()
    got.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(b.grad, a.grad)
    assert float(want.detach()) > 0.1  # a real divergence, not a degenerate zero


def test_one_hot_targets_give_cross_entropy() -> None:
    logits, _ = _batch(1)
    labels = torch.arange(8) % 10
    one_hot = SparseTargets(labels[:, None], torch.ones(8, 1))
    torch.testing.assert_close(kl_loss(logits, one_hot),
                               torch.nn.functional.cross_entropy(logits, labels))


def test_bad_targets_are_named() -> None:
    logits, _ = _batch()
    with pytest.raises(OptionError, match="dense targets"):
        kl_loss(logits, torch.ones(8, 3) / 3)
    with pytest.raises(OptionError, match="targets must be"):
        kl_loss(logits, 3)
    with pytest.raises(OptionError, match="backend"):
        kl_loss(logits, torch.ones(8, 10) / 10, backend="triton")


def test_discriminator_learns_and_regularises_only_through_its_input() -> None:
    torch.manual_seed(0)
    logits, sparse = _batch(2)
    teacher = teacher_log_probs(sparse, 10)
    disc = DiscriminatorRegulariser(10, DiscriminatorConfig(hidden=32, lr=1e-2))
    losses = [disc.update(logits, teacher) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]  # it tells the teacher from this student

    student = logits.clone().requires_grad_(True)
    before = [p.detach().clone() for p in disc.head.parameters()]
    disc.optimizer.zero_grad(set_to_none=True)
    disc.student_loss(student).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.head.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, disc.head.parameters(), strict=True))
    assert all(p.requires_grad for p in disc.head.parameters())

    again = DiscriminatorRegulariser(10, DiscriminatorConfig(hidden=32, lr=1e-2))
    again.load_state(disc.state())
    torch.testing.assert_close(again.head(teacher), disc.head(teacher))


def test_discriminator_options_are_checked() -> None:
    with pytest.raises(OptionError, match="discriminator"):
        DiscriminatorConfig(lr=0.0)
