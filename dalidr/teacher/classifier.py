"""The teacher ensemble as one classifier over a batch normalised for another model.

MEAL V2 eq. 1: the teacher's output is the plain mean of its members' softmax. Online
distillation (`dalidr train --mode kd`) runs it on the student's batch, and `dalidr eval
--teacher` / `dalidr experiment` score it on the test set; both hand it a batch rendered once
(at one side, normalised with one mean/std). Each distinct member view (`Ensemble.views`) gets
that batch un-normalised, resized to its side (bilinear, antialiased) and re-normalised with
its own mean/std. Trade-off: one decode serves every member, at the cost of a resize when a
member's side differs from the batch's (render the batch at the largest side to avoid
upsampling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dalidr.teacher.ensemble import Ensemble

__all__ = ["MeanSoftmax", "EnsembleLogits"]


class MeanSoftmax(nn.Module):
    """`forward(images)` -> the members' mean softmax [B, C] (float32, no gradients)."""

    input_mean: torch.Tensor  # buffers, registered in __init__
    input_std: torch.Tensor

    def __init__(self, ensemble: Ensemble, input_mean: Sequence[float],
                 input_std: Sequence[float]) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.register_buffer("input_mean", torch.tensor(list(input_mean)).view(1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor(list(input_std)).view(1, 3, 1, 1))
        for i, view in enumerate(ensemble.views):
            self.register_buffer(f"mean_{i}", torch.tensor(view.mean).view(1, 3, 1, 1))
            self.register_buffer(f"std_{i}", torch.tensor(view.std).view(1, 3, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float() * self.input_std + self.input_mean
        views = []
        for i, view in enumerate(self.ensemble.views):
            x = pixels
            if x.shape[-1] != view.size or x.shape[-2] != view.size:
                x = nn.functional.interpolate(x, size=(view.size, view.size), mode="bilinear",
                                              antialias=True, align_corners=False)
            x = (x - getattr(self, f"mean_{i}")) / getattr(self, f"std_{i}")
            views.append(x.contiguous(memory_format=torch.channels_last))
        return self.ensemble(views).softmax(dim=-1).mean(dim=0)


class EnsembleLogits(MeanSoftmax):
    """The ensemble as logits for the metrics: log of the mean softmax (its softmax is it)."""

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images).clamp_min(1e-12).log()
