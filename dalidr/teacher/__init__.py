"""The teacher pass: label many augmented views of every image and write the store.

- `ensemble`: the teacher, an ensemble of timm models whose mean softmax labels every view
  (MEAL V2 eq. 1); its API is re-exported here, so `from dalidr.teacher import build_teacher`
  works as it always has.
- `kept`: the ensemble trained once by `bench/teachers.py` and kept in the repository.
- `views`: the DALI pipeline that decodes each image once and renders its stored views.
- `reinforce`: the pass itself (`dalidr reinforce`), resumable block by block.
- `skips`: the marks that record images the pass left out (corrupt files).

Importing this package loads only the ensemble (torch, timm); the pass's DALI and Zarr
machinery is imported with `dalidr.teacher.reinforce`.
"""

from dalidr.teacher import ensemble as _ensemble
from dalidr.teacher.ensemble import *  # noqa: F403

__all__ = list(_ensemble.__all__)
