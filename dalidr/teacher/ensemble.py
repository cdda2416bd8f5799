"""The teacher: an ensemble of timm models whose mean softmax labels every stored view.

Paper Sec. 2.1 picks an ensemble of strong ImageNet models as the teacher; MEAL V2 eq. 1
defines its output as the plain mean of the members' softmax (no temperature), which is what
`kernels.topk` reduces to the stored top-k. A member is written `NAME[@CHECKPOINT]`, members
are separated by commas: `resnet50@r50.safetensors,convnext_tiny@cnx.pth`.

Each member views the data at its own input size and normalisation, read from its timm
pretrained config (`timm.data.resolve_data_config`), except that a checkpoint recording the
normalisation it was trained with (a `dalidr train` checkpoint's metadata, a safetensors
header's "mean"/"std", as `bench/teachers.py` writes) is fed inputs normalised that way (a
model trained on ImageNet statistics whose timm config says 0.5/0.5 would otherwise see
shifted inputs and lose most of its accuracy): records are resolution-independent, so
every member sees the same crop, rendered at its own size, as the paper does for teachers
trained at higher resolution. Members that share (size, mean, std) share one rendered view.

A member without a checkpoint takes timm's pretrained weights (`pretrained`), or random weights
only when asked (`random_seed`, `dalidr reinforce --random-teacher`: tests, benchmarks), drawn
from a generator seeded with (seed, member index), so every rank and every resume of a pass
labels with the same weights; a member with neither is refused by name.

Identity. Every member is recorded in the store by `identity()` (`store.config.MemberIdentity`):
its name, view and weights as `sha256:<hex>` of the tensors it loaded from its checkpoint
(`tensors_sha256`: names, dtypes, shapes and bytes in sorted-name order, so the same weights
saved as safetensors or as a torch file give the same digest), `pretrained:<timm
name.tag>@sha256:<hex>` (`pretrained_weights`: the tag asked for and the digest of the state
dict timm actually loaded, so a revised weight file under the same tag is told apart) or
`random:<the member's torch seed>`, so `dalidr reinforce` can refuse to resume a store with
another teacher (`same_weights`: a store of the previous release recorded `pretrained:<tag>`
without a digest, which still resumes under that tag). Random weights carry no digest on
purpose: torch draws them with CPU-specific vector code (`ATEN_CPU_CAPABILITY` default vs
AVX2 gives weights a few ulps apart), so a digest would refuse a rank or a resume on another
CPU for labels that mean nothing either way; the seed identifies them.

Checkpoints are data, never code: `.safetensors` files are read with safetensors, anything
else with `torch.load(weights_only=True)`. A checkpoint must fit its architecture exactly
(strict loading); a classifier of the wrong width is reported as a class-count mismatch.
Trade-off: every bad-input check happens here, before a single image is decoded, at the price
of building every model up front (cheap next to the pass itself).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dalidr.data.file_hash import file_sha256
from dalidr.errors import OptionError

if TYPE_CHECKING:
    from store.config import MemberIdentity

__all__ = [
    "MemberSpec",
    "TeacherView",
    "TeacherMember",
    "Ensemble",
    "parse_teacher",
    "load_checkpoint",
    "load_weights",
    "build_teacher",
    "member_seed",
    "pretrained_weights",
    "same_weights",
    "tensors_sha256",
    "VIEW_INTERPOLATION",
]

# How `dalidr.augment.replay` resizes every view (the teacher's and the student's).
VIEW_INTERPOLATION = "linear-antialias"


@dataclass(frozen=True)
class MemberSpec:
    """One ensemble member as given on the command line."""

    # timm model name (`timm.list_models()`), with an optional pretrained tag (`name.tag`).
    name: str
    # Local checkpoint (safetensors or a torch state dict); None: timm's pretrained weights, or
    # seeded random ones when asked (`build_teacher`).
    checkpoint: Path | None = None


@dataclass(frozen=True)
class TeacherView:
    """How a member wants its input: side in pixels, and mean/std in [0, 1] units."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class TeacherMember:
    """A built member: its spec, model (eval mode), view and checkpoint digest."""

    spec: MemberSpec
    model: nn.Module
    view: TeacherView
    # SHA-256 of the checkpoint file (None without one), recorded in the store's description.
    checkpoint_sha256: str | None
    # Where the weights come from: `sha256:<hex>` of the checkpoint's tensors
    # (`tensors_sha256`), `pretrained:<timm tag>@sha256:<hex>` (`pretrained_weights`) or
    # `random:<member_seed(seed, index)>`.
    weights: str = ""

    def identity(self) -> MemberIdentity:
        """What the store records of this member (`store.config.MemberIdentity`)."""
        from store.config import MemberIdentity

        view = self.view
        return MemberIdentity(self.spec.name, self.weights, view.mean, view.std, view.size,
                              VIEW_INTERPOLATION)


def parse_teacher(text: str) -> tuple[MemberSpec, ...]:
    """`NAME[@CKPT][,NAME[@CKPT]...]` -> member specs; OptionError on an empty member."""
    members = []
    for part in text.split(","):
        part = part.strip()
        name, _, checkpoint = part.partition("@")
        if not name.strip():
            raise OptionError(f"teacher {text!r} has an empty member; expected "
                              "NAME[@CHECKPOINT][,NAME[@CHECKPOINT]...]")
        if "@" in part and not checkpoint.strip():
            raise OptionError(f"teacher member {part!r} has '@' but no checkpoint path")
        members.append(MemberSpec(name.strip(), Path(checkpoint.strip()) if checkpoint else None))
    return tuple(members)


def _check_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    base = name.split(".", 1)[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise OptionError(f"teacher member {name!r} is not a timm model (timm.list_models()){hint}")


def load_checkpoint(path: Path, role: str = "teacher checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch file, without unpickling anything.

    Torch files may wrap the weights as {"state_dict": ...}, {"model": ...} (a `dalidr train`
    checkpoint) or {"state_dict_ema": ...}; a DataParallel "module." prefix is removed.
    `role` names the file in errors ("teacher checkpoint", "--init checkpoint")."""
    return _read_checkpoint(path, role)[0]


def _normalisation(meta: dict[str, Any], path: Path, role: str
                   ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) the weights were trained with, when the file records them."""
    if "mean" not in meta or "std" not in meta:
        return None
    try:
        mean, std = (tuple(float(v) for v in (json.loads(meta[k]) if isinstance(meta[k], str)
                                               else meta[k])) for k in ("mean", "std"))
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{role} {path} records an unreadable mean/std: {exc}") from exc
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise OptionError(f"{role} {path} records mean {mean} and std {std}; expected three "
                          "values each, std > 0")
    return mean, std


def _read_checkpoint(path: Path, role: str
                     ) -> tuple[dict[str, torch.Tensor],
                                tuple[tuple[float, ...], tuple[float, ...]] | None]:
    """The state dict and, when the file records it (a `dalidr train` checkpoint's metadata,
    a safetensors header's "mean"/"std"), the input normalisation the weights were trained
    with: a teacher must see its inputs normalised as in training, whatever its timm config
    says."""
    if not path.is_file():
        raise OptionError(f"{role} {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                meta: dict[str, Any] = dict(handle.metadata() or {})
                state = {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise OptionError(f"{role} {path} is not a safetensors file: "
                              f"{exc}") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad or pickled-code files
            raise OptionError(f"{role} {path} cannot be read as weights "
                              f"(torch.load, weights_only=True): {exc}") from exc
        meta = state.get("meta", {}) if isinstance(state, dict) else {}
        meta = meta if isinstance(meta, dict) else {}
        for key in ("state_dict_ema", "state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OptionError(f"{role} {path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, _normalisation(meta, path, role)


def _classifier_width(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """Rows of the checkpoint's classifier weight, located through the timm config."""
    names = getattr(model, "pretrained_cfg", {}).get("classifier")
    for name in [names] if isinstance(names, str) else list(names or ()):
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.dim() >= 1:
            return int(weight.shape[0])
    return None


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state dict: per tensor in sorted-name order its name, dtype, shape
    and bytes (contiguous, CPU), so the digest does not depend on the file format."""
    digest = hashlib.sha256(b"dalidr-tensors-v1\n")
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\n{tensor.dtype}\n{list(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


# Between a pretrained member's timm tag and the digest of the weights timm loaded.
_DIGEST = "@sha256:"


def pretrained_weights(name: str, model: nn.Module) -> str:
    """The identity of the timm pretrained weights `model` holds (timm model `name`):
    `pretrained:<architecture>[.<tag>]@sha256:<tensors_sha256 of its state dict>`. The tag
    says what was asked for, the digest what timm loaded: a weight file revised under the same
    tag, or a changed timm checkpoint filter, gives another identity."""
    tag = getattr(model, "pretrained_cfg", {}).get("tag") or ""
    asked = f"{name.split('.', 1)[0]}{'.' + tag if tag else ''}"
    return f"pretrained:{asked}{_DIGEST}{tensors_sha256(model.state_dict())}"


def same_weights(stored: str, wanted: str) -> bool:
    """Whether the weights a store records (`stored`) are this run's (`wanted`): equal, or
    `stored` is the previous release's `pretrained:<tag>`, recorded before the digest was
    added, and `wanted` is `pretrained:<tag>@sha256:<hex>` of the same tag. Such a store
    cannot show which file timm loaded then; refusing it would strand every store of that
    release, and the tag is exactly what that release promised to check."""
    if stored == wanted:
        return True
    tagged, _, digest = wanted.partition(_DIGEST)
    return (stored.startswith("pretrained:") and _DIGEST not in stored and bool(digest)
            and stored == tagged)


def load_weights(model: nn.Module, name: str, checkpoint: Path, num_classes: int,
                 role: str = "teacher checkpoint"
                 ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Load `checkpoint` into the timm model `name` strictly; OptionError naming the file when
    its classifier is not `num_classes` wide or its tensors do not fit the architecture.
    Returns the (mean, std) the checkpoint records it was trained with (None: not recorded)."""
    return _load_weights(model, name, checkpoint, num_classes, role)[0]


def _load_weights(model: nn.Module, name: str, checkpoint: Path, num_classes: int, role: str
                  ) -> tuple[tuple[tuple[float, ...], tuple[float, ...]] | None, str]:
    """`load_weights`, and the `tensors_sha256` of the checkpoint's tensors."""
    state, normalisation = _read_checkpoint(checkpoint, role)
    width = _classifier_width(model, state)
    if width is not None and width != num_classes:
        raise OptionError(f"{role} {checkpoint} ({name}) predicts {width} classes but the "
                          f"dataset has {num_classes}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[1:6])
        raise OptionError(f"{role} {checkpoint} does not fit timm architecture {name!r}: "
                          f"{detail}") from exc
    return normalisation, tensors_sha256(state)


def _view_of(model: nn.Module, size: int | None,
             normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
             ) -> TeacherView:
    """Side and normalisation of a member's input: the timm config's, except what the
    checkpoint records it was trained with."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    side = int(size or max(config["input_size"][1:]))
    mean, std = normalisation or (config["mean"], config["std"])
    # Three channels, as timm's config and the checkpoints give them (the length is not typed).
    return TeacherView(side, tuple(map(float, mean)), tuple(map(float, std)))  # type: ignore[arg-type]


def member_seed(seed: int, index: int) -> int:
    """The torch seed of member `index`'s random weights in a pass of seed `seed`."""
    digest = hashlib.sha256(f"dalidr random teacher {seed} {index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _no_weights(spec: MemberSpec) -> OptionError:
    return OptionError(
        f"teacher member {spec.name!r} has no checkpoint and no weights were chosen for it; "
        f"give a checkpoint ({spec.name}@CHECKPOINT), timm's pretrained weights "
        "(--pretrained), or random weights seeded from --seed (--random-teacher: labels that "
        "mean nothing, for tests and benchmarks)")


def _build_member(spec: MemberSpec, num_classes: int, pretrained: bool, size: int | None,
                  random_seed: int | None = None, index: int = 0) -> TeacherMember:
    import timm

    _check_name(spec.name)
    if spec.checkpoint is None:  # build_teacher checked that weights were chosen
        kwargs: dict[str, Any] = {} if pretrained else {"num_classes": num_classes}
        seeded = contextlib.nullcontext() if pretrained else torch.random.fork_rng(devices=[])
        with seeded:  # the caller's global generator is left as it was
            if not pretrained:
                torch.manual_seed(member_seed(random_seed or 0, index))
            model = timm.create_model(spec.name, pretrained=pretrained, **kwargs)
        width = int(getattr(model, "num_classes", num_classes))
        if width != num_classes:
            raise OptionError(f"teacher member {spec.name!r} predicts {width} classes but the "
                              f"dataset has {num_classes}")
        sha, normalisation = None, None
        if pretrained:
            weights = pretrained_weights(spec.name, model)
        else:
            weights = f"random:{member_seed(random_seed or 0, index)}"  # the torch seed used
    else:
        model = timm.create_model(spec.name, pretrained=False, num_classes=num_classes)
        normalisation, tensors = _load_weights(model, spec.name, spec.checkpoint, num_classes,
                                               "teacher checkpoint")
        sha, weights = file_sha256(spec.checkpoint), f"sha256:{tensors}"
    model.eval().requires_grad_(False)
    return TeacherMember(spec, model, _view_of(model, size, normalisation), sha, weights)


class Ensemble(nn.Module):
    """Members and the distinct views they need; `forward` returns stacked logits [M, B, C]."""

    def __init__(self, members: Sequence[TeacherMember], num_classes: int) -> None:
        super().__init__()
        self.members = tuple(members)
        self.models = nn.ModuleList(m.model for m in members)
        self.num_classes = num_classes
        views: list[TeacherView] = []
        for member in members:
            if member.view not in views:
                views.append(member.view)
        # The distinct views, in first-use order, and which one each member reads.
        self.views: tuple[TeacherView, ...] = tuple(views)
        self.view_of_member: tuple[int, ...] = tuple(views.index(m.view) for m in members)

    def forward(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits of every member (float32) from its view's normalised batch [B, 3, H, W]."""
        return torch.stack([model(views[v]).float()
                            for model, v in zip(self.models, self.view_of_member, strict=True)])

    def identity(self) -> tuple[MemberIdentity, ...]:
        """Every member's identity, as the store records it."""
        return tuple(member.identity() for member in self.members)

    def describe(self) -> str:
        """A stable one-line description stored with the store (names, checkpoints, views)."""
        parts = []
        for member in self.members:
            text = member.spec.name
            if member.spec.checkpoint is not None and member.checkpoint_sha256 is not None:
                text += f"@{member.spec.checkpoint.name}#sha256:{member.checkpoint_sha256[:16]}"
            view = member.view
            text += (f" [{view.size}px mean={list(view.mean)} std={list(view.std)}]")
            parts.append(text)
        return f"mean softmax of {len(parts)}: " + ", ".join(parts)


def build_teacher(text: str, num_classes: int, pretrained: bool = False,
                  size: int | None = None, random_seed: int | None = None) -> Ensemble:
    """Parse, check and build the ensemble on the CPU (eval mode, no gradients).

    A member without a checkpoint takes timm's pretrained weights (`pretrained`) or, given
    `random_seed` (the store's seed), random weights drawn from `member_seed(random_seed,
    index)`: the same on every rank and every resume. `size` overrides every member's input
    side (the recipe's `teacher_size`); None uses each member's timm config. Raises OptionError
    for an unknown name, a member with no weights chosen, an unreadable checkpoint, a checkpoint
    that does not fit, or a member whose class count is not `num_classes`."""
    if pretrained and random_seed is not None:
        raise OptionError("--pretrained and --random-teacher both choose the weights of members "
                          "without a checkpoint; give one")
    if random_seed is not None and (isinstance(random_seed, bool) or random_seed < 0):
        raise OptionError(f"random teacher seed {random_seed!r}; valid: an integer >= 0")
    specs = parse_teacher(text)
    for spec in specs:
        _check_name(spec.name)
        if spec.checkpoint is None and not pretrained and random_seed is None:
            raise _no_weights(spec)
    return Ensemble([_build_member(s, num_classes, pretrained, size, random_seed, i)
                     for i, s in enumerate(specs)], num_classes)
