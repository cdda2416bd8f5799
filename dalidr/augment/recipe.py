"""Reinforcement recipes: which augmentations a stored view may carry, and how they are drawn.

A recipe describes one of the paper's reinforcement variants (Dataset Reinforcement, Table 2 and
Sec. 2.2): RRC, RRC+RA/RE ("ImageNet+"), RRC+Mixing ("+M*") and both ("M*+R*"). It is a frozen
dataclass so it can be hashed, stored as the store's attributes and compared when a store is
reopened. The variant is derived from the fields, never stored beside them, so the two cannot
disagree.

Two levels of API: `recipe("rrc+ra/re")` for the paper's presets, and `Recipe(...)` /
`load_recipe(path)` for anything else.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dalidr.errors import RecipeError

__all__ = ["Recipe", "Variant", "recipe", "load_recipe", "PRESETS"]


class Variant(enum.Enum):
    """The paper's reinforcement variants (Table 2)."""

    RRC = "rrc"
    RRC_RA_RE = "rrc+ra/re"
    RRC_MIX = "rrc+mix"
    MIX_RA_RE = "m*+r*"


@dataclass(frozen=True)
class Recipe:
    """Everything needed to draw and replay a view; persisted with every store."""

    # Output side of the student, in pixels (square). The teacher may view the same
    # resolution-independent record at `teacher_size` instead.
    output_size: int = 224
    # Optional larger teacher-side size (paper Sec. 2.1, following FunMatch); None: output_size.
    teacher_size: int | None = None
    # Random-resized-crop: fraction of the source area and aspect-ratio range (torchvision's).
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    # Probability of a horizontal flip.
    flip_prob: float = 0.5
    # RandAugment: ops per view (0 disables), magnitude bin, its per-op Gaussian noise (timm's
    # mstd), the number of bins (torchvision: 31) and the probability each drawn op is applied
    # (a skipped op is stored as Identity).
    ra_num_ops: int = 0
    ra_magnitude: int = 9
    ra_magnitude_std: float = 0.0
    ra_num_bins: int = 31
    ra_prob: float = 1.0
    # RandomErasing: probability, area fraction and aspect-ratio range (torchvision's).
    erase_prob: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    # Mixing: probability a view is mixed with a partner, the Beta(alpha, alpha) parameters, and
    # the chance a mixed view uses CutMix rather than MixUp (when both alphas are positive).
    mix_prob: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_switch_prob: float = 0.5
    # Grey level (uint8) of pixels that geometric ops uncover (torchvision's default: 0). One
    # value for all channels: DALI's warp and rotate take a scalar fill.
    fill: int = 0
    # Colour erased boxes are filled with: ImageNet's mean, which normalises to zero, as
    # torchvision's RandomErasing(value=0) after Normalize does.
    erase_fill: tuple[int, int, int] = (124, 116, 104)

    def __post_init__(self) -> None:
        self._validate()

    @property
    def has_ra_re(self) -> bool:
        """Whether records carry RandAugment ops and an erase box."""
        return self.ra_num_ops > 0 or self.erase_prob > 0

    @property
    def has_mix(self) -> bool:
        """Whether records carry a mixing partner."""
        return self.mix_prob > 0

    @property
    def variant(self) -> Variant:
        if self.has_mix:
            return Variant.MIX_RA_RE if self.has_ra_re else Variant.RRC_MIX
        return Variant.RRC_RA_RE if self.has_ra_re else Variant.RRC

    @property
    def teacher_side(self) -> int:
        return self.teacher_size or self.output_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise RecipeError(f"unknown recipe field(s) {unknown}; valid fields: {sorted(known)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in data.items()}
        return cls(**values)

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def _validate(self) -> None:
        check = functools.partial(RecipeError.unless, kind="recipe field")

        check(16 <= self.output_size <= 4096, "output_size", self.output_size, "16..4096")
        if self.teacher_size is not None:
            check(16 <= self.teacher_size <= 4096, "teacher_size", self.teacher_size, "16..4096")
        for name in ("crop_scale", "crop_ratio", "erase_scale", "erase_ratio"):
            lo, hi = getattr(self, name)
            check(0 < lo <= hi, name, (lo, hi), "0 < low <= high")
        check(self.crop_scale[1] <= 1, "crop_scale", self.crop_scale, "high <= 1")
        check(self.erase_scale[1] < 1, "erase_scale", self.erase_scale, "high < 1")
        for name in ("flip_prob", "ra_prob", "erase_prob", "mix_prob", "cutmix_switch_prob"):
            value = getattr(self, name)
            check(0 <= value <= 1, name, value, "a probability in [0, 1]")
        check(0 <= self.ra_num_ops <= 8, "ra_num_ops", self.ra_num_ops, "0..8")
        check(2 <= self.ra_num_bins <= 128, "ra_num_bins", self.ra_num_bins, "2..128")
        bins = self.ra_num_bins - 1
        check(0 <= self.ra_magnitude <= bins, "ra_magnitude", self.ra_magnitude, f"0..{bins}")
        check(self.ra_magnitude_std >= 0, "ra_magnitude_std", self.ra_magnitude_std, ">= 0")
        check(self.mixup_alpha >= 0, "mixup_alpha", self.mixup_alpha, ">= 0")
        check(self.cutmix_alpha >= 0, "cutmix_alpha", self.cutmix_alpha, ">= 0")
        if self.mix_prob > 0:
            check(
                self.mixup_alpha > 0 or self.cutmix_alpha > 0,
                "mixup_alpha/cutmix_alpha",
                (self.mixup_alpha, self.cutmix_alpha),
                "at least one positive when mix_prob > 0",
            )
        check(0 <= self.fill <= 255, "fill", self.fill, "0..255")
        check(
            len(self.erase_fill) == 3 and all(0 <= int(c) <= 255 for c in self.erase_fill),
            "erase_fill",
            self.erase_fill,
            "three uint8 values",
        )


_RA_RE = dict(ra_num_ops=2, ra_magnitude=9, erase_prob=0.25)
_MIX = dict(mix_prob=1.0, mixup_alpha=0.2, cutmix_alpha=1.0, cutmix_switch_prob=0.5)

# The paper's variants with the apply probabilities of its Table 2.
PRESETS: dict[str, Recipe] = {
    Variant.RRC.value: Recipe(),
    Variant.RRC_RA_RE.value: Recipe(**_RA_RE),  # type: ignore[arg-type]
    Variant.RRC_MIX.value: Recipe(**_MIX),  # type: ignore[arg-type]
    Variant.MIX_RA_RE.value: Recipe(**_RA_RE, **_MIX),  # type: ignore[arg-type]
}


def recipe(name: str, **overrides: Any) -> Recipe:
    """A preset by name ("rrc", "rrc+ra/re", "rrc+mix", "m*+r*"), with optional overrides."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise RecipeError(f"unknown recipe preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[key].replace(**overrides) if overrides else PRESETS[key]


def load_recipe(spec: str | Path) -> Recipe:
    """A preset name, or a YAML/JSON file holding a preset under `base` plus field overrides."""
    path = Path(spec)
    if not path.suffix and str(spec).strip().lower() in PRESETS:
        return recipe(str(spec))
    if not path.is_file():
        if str(spec).strip().lower() in PRESETS:
            return recipe(str(spec))
        raise RecipeError(
            f"recipe {str(spec)!r} is neither a preset ({sorted(PRESETS)}) nor a readable file"
        )
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise RecipeError(f"recipe file {path} cannot be parsed: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path} must hold a mapping, not {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return Recipe.from_dict(data)
    merged = recipe(str(base)).to_dict()
    merged.update(data)
    return Recipe.from_dict(merged)
