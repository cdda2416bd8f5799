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

from dalidr.teacher.ensemble import (
    Ensemble,
    MemberSpec,
    TeacherMember,
    TeacherView,
    build_teacher,
    file_sha256,
    load_checkpoint,
    load_weights,
    parse_teacher,
)

__all__ = [
    "MemberSpec",
    "TeacherView",
    "TeacherMember",
    "Ensemble",
    "parse_teacher",
    "load_checkpoint",
    "load_weights",
    "build_teacher",
    "file_sha256",
]
