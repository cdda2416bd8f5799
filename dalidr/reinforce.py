"""Kept for users' imports: the teacher pass lives in `dalidr.teacher.reinforce`."""

from dalidr.teacher.reinforce import *  # noqa: F403
from dalidr.teacher.reinforce import __all__  # noqa: F401
