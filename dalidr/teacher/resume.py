"""Resuming a teacher pass: the store's teacher and options must be this run's.

A store can take GPU-days to make, so a resumed (or joining) pass must label its remaining
blocks with the same teacher: each member's identity (`store.config.MemberIdentity`: weights
digest, input size, normalisation, interpolation) is compared, and a refusal names the member
and what differs. A pretrained member recorded by the previous release as `pretrained:<tag>`,
without the digest of its weights, resumes under the same tag (`same_weights`). The teacher's
description (which names checkpoint files) may differ: files are renamed and converted.
"""

from __future__ import annotations

from dataclasses import replace

from dalidr.errors import StoreError
from dalidr.teacher.ensemble import same_weights
from store.config import MemberIdentity, StoreConfig

__all__ = ["check_resume"]


def check_resume(url: str, stored: StoreConfig, wanted: StoreConfig) -> None:
    """Refuse to resume (or join) a store made with another teacher or other options."""
    _check_teacher(url, stored.teacher_members, wanted.teacher_members)
    # The teacher is its members' identity (just checked, old-form pretrained members
    # included); its description names checkpoint files, which may be renamed or converted
    # (safetensors <-> torch) between runs.
    same = replace(stored, teacher=wanted.teacher)
    if wanted.teacher_members is not None:
        same = replace(same, teacher_members=wanted.teacher_members)
    if same != wanted:
        raise StoreError(f"{url} holds a store made with other options ({stored}); "
                         f"this run asks for {wanted}: rerun the original command or use "
                         "another --out")


def _members(members: tuple[MemberIdentity, ...]) -> str:
    return "; ".join(f"{m.name} (weights {m.weights}, {m.input_size}px, mean {list(m.mean)}, "
                     f"std {list(m.std)}, {m.interpolation})" for m in members)


def _same_member(stored: MemberIdentity, wanted: MemberIdentity) -> bool:
    return (same_weights(stored.weights, wanted.weights)
            and replace(wanted, weights=stored.weights) == stored)


def _differences(stored: tuple[MemberIdentity, ...], wanted: tuple[MemberIdentity, ...]) -> str:
    """Which members differ, and in what: '; member 1 (resnet50) differs in weights'."""
    if len(stored) != len(wanted):
        return f"; the store's teacher has {len(stored)} members, this run's {len(wanted)}"
    parts = []
    for i, (old, new) in enumerate(zip(stored, wanted, strict=True)):
        if not _same_member(old, new):
            fields = [f for f in ("name", "mean", "std", "input_size", "interpolation")
                      if getattr(old, f) != getattr(new, f)]
            if not same_weights(old.weights, new.weights):
                fields.insert(1 if old.name != new.name else 0, "weights")
            parts.append(f"member {i} ({new.name}) differs in {', '.join(fields)}")
    return "; " + "; ".join(parts)


def _check_teacher(url: str, stored: tuple[MemberIdentity, ...] | None,
                   wanted: tuple[MemberIdentity, ...] | None) -> None:
    """Refuse to resume a store whose teacher is not provably this run's. A pretrained
    member recorded by the previous release as `pretrained:<tag>`, without the digest of its
    weights, resumes under the same tag (`same_weights`): that store cannot show which file
    timm loaded then, and refusing it would strand every store of that release."""
    if wanted is None or stored == wanted:
        return
    if stored is not None and len(stored) == len(wanted) and all(
            _same_member(old, new) for old, new in zip(stored, wanted, strict=True)):
        return
    if stored is None:
        raise StoreError(f"{url} does not record its teacher (teacher_members is null: an "
                         "upgraded store, or one not made by `dalidr reinforce`), so `dalidr "
                         "reinforce` cannot resume it: nothing shows that this run's teacher "
                         f"({_members(wanted)}) labelled its committed blocks; training from it "
                         "works as it is")
    raise StoreError(f"{url} was labelled by the teacher {_members(stored)}; this run's teacher "
                     f"is {_members(wanted)}{_differences(stored, wanted)}: resume with the "
                     "original teacher (checkpoints, "
                     "--pretrained or --random-teacher and --seed), or use another --out")
