"""A faithful model of an ensemble teacher's top-k outputs, for benchmarks and tests.

No pretrained weights or ImageNet are available where dalidr is tested, and compactness depends
on the statistics of the teacher's outputs, so this models them rather than drawing uniform
noise (which would be incompressible and unrealistic). Per image, logits over `num_classes`:

- the label at 13; 0 to 2 co-occurring classes at 12 - Exp(1.5) (a few classes dominate);
- 40 related classes drawn near the label's index (ImageNet's WordNet order places similar
  classes at nearby indices: dog breeds, birds, ...) at N(5.5, 1.5);
- every class N(0, 1.5) as background.

Each view scales the image's logits by a strength ~ U(0.6, 1.2) (small or heavily augmented
crops make the teacher less sure) and adds N(0, 1) noise per class; softmax and top-k follow.
Over 400 views this gives a mean top-1 probability of about 0.66, a top-10 mass of about 0.92,
the label as top-1 in about 86% of views, and about 60 distinct classes in an image's top-10s:
a few classes dominate and repeat across slots, with a varying tail, as real ensembles do.

Outputs are a pure function of (seed, sample), so any process regenerates the same block.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["synthetic_teacher"]

_RELATED = 40


def _one_sample(seed: int, sample: int, slots: int, k: int, num_classes: int,
                label: int | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, sample])
    y = int(rng.integers(num_classes)) if label is None else int(label) % num_classes
    base = rng.normal(0.0, 1.5, num_classes)
    related = np.clip(y + np.rint(rng.normal(0, 20, _RELATED)).astype(np.int64), 0,
                      num_classes - 1)
    base[related] += rng.normal(5.5, 1.5, _RELATED)
    extra = int(rng.integers(0, 3))
    base[related[:extra]] = 12.0 - rng.exponential(1.5, extra)
    base[y] = 13.0
    strength = rng.uniform(0.6, 1.2, (slots, 1))
    logits = base[None, :] * strength + rng.normal(0.0, 1.0, (slots, num_classes))
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top_logits = np.take_along_axis(logits, top, 1)
    order = np.argsort(-top_logits, axis=1, kind="stable")
    top, top_logits = np.take_along_axis(top, order, 1), np.take_along_axis(top_logits, order, 1)
    peak = logits.max(axis=1, keepdims=True)
    log_z = peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))
    return top, np.exp(top_logits - log_z)


def synthetic_teacher(seed: int, samples: Sequence[int] | np.ndarray, slots: int, k: int,
                      num_classes: int = 1000, labels: Sequence[int] | np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Top-k classes [n, slots, k] (int64) and probabilities [n, slots, k] (float64)."""
    samples = np.asarray(samples, dtype=np.int64)
    classes = np.empty((len(samples), slots, k), dtype=np.int64)
    probs = np.empty((len(samples), slots, k), dtype=np.float64)
    for i, sample in enumerate(samples):
        label = None if labels is None else int(np.asarray(labels)[sample])
        classes[i], probs[i] = _one_sample(seed, int(sample), slots, k, num_classes, label)
    return classes, probs
