"""The CPU twin of replay's RandAugment and erase: numba kernels fused into one DALI operator.

- `tone`, `geometry`, `colour`: one kernel per op of `dalidr.augment.ops`, the same pixels as
  the DALI operator the op runs on the GPU;
- `randaugment`: a view's stored ops and erase box applied in one call per sample;
- `operator`: that call as a DALI CPU operator whose machine code is cached on disk;
- `cache`: keys the cached code on every source compiled into it.
"""

from dalidr.augment.cpu import cache as _cache  # noqa: F401  (registers the locator first)
