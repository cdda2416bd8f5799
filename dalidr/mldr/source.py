"""The paper's published reinforcement layout: its config, its per-sample files, its dataset.

apple/ml-dr writes one `{index}.pth.tar` per training image (`reinforce.py`) and the whole run
configuration as `config.pth.tar`; the augmentations are under
`config["reinforce"]["image_augmentation"]`, applied in the fixed order of its
`dr/transforms.py` (not the order of the config). `index` is the image's position in the
torchvision dataset the paper trained on; for ImageNet that is `ImageFolder` order.

`read_source` turns that into an `MldrSource`: the dalidr `Recipe` whose records can replay
every stored view, the slots and the sample files by index. Only configurations whose views
dalidr's records can express are accepted, and every refusal names the config key: a padded
`random_crop` (CIFAR-100+) needs crops reaching outside the image, and `resize` / `center_crop`
/ `random_crop` resample the whole image before cropping, which a crop-then-resize record does
not reproduce exactly. Unknown keys are refused too (the paper's code silently ignores them,
e.g. Food-101's `random_resize_crop`, which changes what the stored views are).
Trade-off: refusing is stricter than the paper's loader, but an import never guesses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dalidr.augment.ops import OPS
from dalidr.augment.recipe import Recipe
from dalidr.data.dataset import CACHE_FOLDER, DatasetListing, list_dataset
from dalidr.data.shards import is_shard_spec
from dalidr.errors import DatasetError, RecipeError
from dalidr.mldr.safe_load import load_file

__all__ = ["TRANSFORM_ORDER", "PARAMLESS", "MIXING", "MLDR_OP_NAMES", "MldrSource",
           "read_source", "check_imagefolder_order", "dataset_listing", "check_op_names",
           "CONFIG_FILE"]

# The transforms the paper's Compose knows, in the order it applies them.
TRANSFORM_ORDER = ("uint8", "resize", "center_crop", "random_crop", "random_resized_crop",
                   "random_horizontal_flip", "rand_augment", "to_tensor", "random_erase",
                   "normalize", "mixup", "cutmix")
# Transforms that store no parameters (left out of a compressed parameter list).
PARAMLESS = frozenset({"uint8", "center_crop", "to_tensor", "normalize"})
MIXING = ("mixup", "cutmix")
# RandAugment's op list in the paper's code: a stored op index points into it.
MLDR_OP_NAMES = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                 "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
                 "AutoContrast", "Equalize")
_UNSUPPORTED = {
    "resize": "it resamples the whole image before any crop; dalidr records crop the source "
              "and resize once",
    "center_crop": "it crops after a resize; dalidr records crop the source and resize once",
    "random_crop": "it crops a resized (and possibly padded) image; dalidr records hold crops "
                   "inside the source image only",
}
_SAMPLE_FILE = re.compile(r"^(\d+)\.(pth\.tar|jb)$")
CONFIG_FILE = "config.pth.tar"


@dataclass(frozen=True)
class MldrSource:
    """One published reinforcement directory, understood."""

    # The directory of `{index}.pth.tar` files.
    root: Path
    # The enabled transforms in application order, with their options.
    transforms: tuple[tuple[str, Mapping[str, Any]], ...]
    # The dalidr recipe whose records replay these views.
    recipe: Recipe
    # Views per sample (`reinforce.num_samples`).
    slots: int
    # Teacher top-k per view as configured (`reinforce.topk`; the files are checked).
    topk: int | None
    # Size of the label space, from the config (None if it does not say).
    num_classes: int | None
    # Normalisation the paper trained with (give it to the loader's LoaderConfig).
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Free-text description of the teacher, from the config.
    teacher: str
    # Sample file per index (the position in the list is the index).
    files: tuple[Path, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.transforms)

    @property
    def has_mix(self) -> bool:
        return any(name in MIXING for name in self.names)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Transforms with stored parameters, in the order a compressed list holds them."""
        return tuple(name for name in self.names if name not in PARAMLESS)

    def option(self, name: str, key: str, default: Any) -> Any:
        for t_name, options in self.transforms:
            if t_name == name:
                return options.get(key, default)
        return default

    @property
    def source_bytes(self) -> int:
        """Bytes of every sample file and the config."""
        return sum(p.stat().st_size for p in self.files) + (self.root / CONFIG_FILE).stat(
            ).st_size


def _enabled(augmentation: Mapping[str, Any], where: str) -> tuple[tuple[str, dict], ...]:
    out = []
    for name in TRANSFORM_ORDER:
        if name not in augmentation:
            continue
        options = dict(augmentation[name] or {})
        if options.pop("enable", True):
            out.append((name, options))
    unknown = sorted(set(augmentation) - set(TRANSFORM_ORDER))
    if unknown:
        raise RecipeError(f"{where}: image_augmentation key(s) {unknown} are not transforms "
                          f"of the paper's code (known: {list(TRANSFORM_ORDER)}); its loader "
                          "would silently ignore them, so the stored views are not what the "
                          "config says: refused")
    return tuple(out)


def _pair(value: Any, name: str, where: str) -> tuple[float, float]:
    if not isinstance(value, Sequence) or len(value) != 2:
        raise RecipeError(f"{where}: {name} is {value!r}; expected two numbers")
    return float(value[0]), float(value[1])


def _square(size: Any, where: str) -> int:
    sizes = list(size) if isinstance(size, Sequence) else [size]
    if not sizes or len(set(sizes)) != 1 or not all(isinstance(s, int) for s in sizes):
        raise RecipeError(f"{where}: random_resized_crop.size is {size!r}; dalidr replays "
                          "square integer outputs only")
    return int(sizes[0])


def _interpolation(value: Any, expected: str, key: str, where: str) -> None:
    if value is None:
        return
    name = str(getattr(value, "value", value)).lower()
    if name != expected:
        raise RecipeError(f"{where}: {key} is {value!r}; dalidr replays {expected} only")


def _recipe(transforms: tuple[tuple[str, dict], ...], where: str) -> Recipe:
    options = dict(transforms)
    for name, why in _UNSUPPORTED.items():
        if name in options:
            raise RecipeError(f"{where}: image_augmentation.{name} ({options[name]}) cannot be "
                              f"imported: {why}")
    if "random_resized_crop" not in options:
        raise RecipeError(f"{where}: image_augmentation has no random_resized_crop; dalidr "
                          "needs it to know the output size")
    rrc = options["random_resized_crop"]
    _interpolation(rrc.get("interpolation"), "bilinear", "random_resized_crop.interpolation",
                   where)
    if rrc.get("antialias", True) is False:
        raise RecipeError(f"{where}: random_resized_crop.antialias is False; dalidr's resize "
                          "is antialiased")
    fields: dict[str, Any] = dict(
        output_size=_square(rrc.get("size"), where),
        crop_scale=_pair(rrc.get("scale", (0.08, 1.0)), "random_resized_crop.scale", where),
        crop_ratio=_pair(rrc.get("ratio", (3 / 4, 4 / 3)), "random_resized_crop.ratio", where),
        flip_prob=float(options["random_horizontal_flip"].get("p", 0.5))
        if "random_horizontal_flip" in options else 0.0,
    )
    if "rand_augment" in options:
        ra = options["rand_augment"]
        _interpolation(ra.get("interpolation"), "nearest", "rand_augment.interpolation", where)
        fill = ra.get("fill")
        fills = set(fill) if isinstance(fill, Sequence) else {fill or 0}
        if len(fills) != 1:
            raise RecipeError(f"{where}: rand_augment.fill is {fill!r}; dalidr takes one grey")
        fields.update(ra_num_ops=int(ra.get("num_ops", 2)),
                      ra_magnitude=int(ra.get("magnitude", 9)),
                      ra_num_bins=int(ra.get("num_magnitude_bins", 31)),
                      ra_prob=float(ra.get("p", 1.0)), fill=int(round(float(fills.pop()))))
    if "random_erase" in options:
        re_ = options["random_erase"]
        value = re_.get("value", 0)
        values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) \
            else [value] * 3
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
            raise RecipeError(f"{where}: random_erase.value is {value!r}; dalidr erases with "
                              "one fixed colour")
        # The paper erases the [0, 1] tensor before normalising: value 0 is black.
        fields.update(erase_prob=float(re_.get("p", 0.5)),
                      erase_scale=_pair(re_.get("scale", (0.02, 0.33)), "random_erase.scale",
                                        where),
                      erase_ratio=_pair(re_.get("ratio", (0.3, 3.3)), "random_erase.ratio",
                                        where),
                      erase_fill=tuple(int(round(255 * float(v))) for v in values))
    mixup, cutmix = options.get("mixup"), options.get("cutmix")
    if mixup is not None or cutmix is not None:
        p_mixup = float(mixup.get("p", 1.0)) if mixup is not None and float(
            mixup.get("alpha", 1.0)) > 0 else 0.0
        p_cutmix = float(cutmix.get("p", 1.0)) if cutmix is not None and float(
            cutmix.get("alpha", 1.0)) > 0 else 0.0
        mixed = 1 - (1 - p_mixup) * (1 - p_cutmix)
        # Descriptive only: every stored view carries its own mixing in its record.
        fields.update(mix_prob=mixed,
                      mixup_alpha=float(mixup.get("alpha", 1.0))
                      if p_mixup and mixup is not None else 0.0,
                      cutmix_alpha=float(cutmix.get("alpha", 1.0))
                      if p_cutmix and cutmix is not None else 0.0,
                      cutmix_switch_prob=p_cutmix / mixed if mixed else 0.5)
    try:
        return Recipe(**fields)
    except RecipeError as exc:
        raise RecipeError(f"{where}: the config maps to no valid dalidr recipe: {exc}") from exc


def _sample_files(root: Path, count: int | None) -> tuple[Path, ...]:
    found: dict[int, list[str]] = {}
    for entry in os.scandir(root):
        match = _SAMPLE_FILE.match(entry.name)
        if match:
            found.setdefault(int(match.group(1)), []).append(entry.name)
    if not found:
        raise DatasetError(f"{root}: no sample files ({{index}}.pth.tar) found")
    n = count if count is not None else max(found) + 1
    problems = [f"{root / names[0]}: index {i} is outside the dataset's 0..{n - 1}"
                for i, names in sorted(found.items()) if i >= n]
    problems += [f"{root}: {', '.join(names)} hold the same index {i}"
                 for i, names in sorted(found.items()) if len(names) > 1]
    missing = [i for i in range(n) if i not in found]
    if missing:
        shown = ", ".join(f"{i}.pth.tar" for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        problems.append(f"{root}: {len(missing)} of {n} sample files are missing: {shown}{more}")
    if problems:
        raise DatasetError("the reinforcement directory does not match the dataset:\n  "
                           + "\n  ".join(problems[:20]))
    return tuple(root / found[i][0] for i in range(n))


def read_source(root: str | Path, num_samples: int | None = None) -> MldrSource:
    """Read `root/config.pth.tar` (safely) and index the sample files.

    `num_samples` is the dataset's size; every index 0..num_samples-1 must have one file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"reinforcement directory {root} does not exist")
    where = str(root / CONFIG_FILE)
    if not (root / CONFIG_FILE).is_file():
        raise DatasetError(f"{where} is missing: the paper's reinforcements ship it beside the "
                           "sample files")
    config = load_file(root / CONFIG_FILE)
    reinforce = config.get("reinforce") if isinstance(config, Mapping) else None
    if not isinstance(reinforce, Mapping) or not isinstance(
            reinforce.get("image_augmentation"), Mapping):
        raise DatasetError(f"{where}: no reinforce.image_augmentation section; not a config "
                           "written by the paper's reinforce.py")
    slots = reinforce.get("num_samples")
    if not isinstance(slots, int) or slots < 1:
        raise DatasetError(f"{where}: reinforce.num_samples is {slots!r}; expected views per "
                           "sample")
    transforms = _enabled(reinforce["image_augmentation"], where)
    recipe = _recipe(transforms, where)
    options = dict(transforms)
    normalize = options.get("normalize", {})
    mean = tuple(float(v) for v in normalize.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in normalize.get("std", (0.229, 0.224, 0.225)))
    teacher = config.get("teacher")
    name = teacher.get("name") if isinstance(teacher, Mapping) else None
    num_classes = config.get("num_classes")
    topk = reinforce.get("topk")
    return MldrSource(
        root=root, transforms=transforms, recipe=recipe, slots=slots,
        topk=topk if isinstance(topk, int) else None,
        num_classes=num_classes if isinstance(num_classes, int) else None,
        mean=mean, std=std,  # type: ignore[arg-type]
        teacher=f"ml-dr import from {root.resolve()}" + (f" (teacher {name})" if name else ""),
        files=_sample_files(root, num_samples),
    )


def check_imagefolder_order(listing: DatasetListing) -> None:
    """DatasetError unless dalidr's listing is torchvision ImageFolder's sample order.

    The paper's indices are positions in torchvision's dataset; dalidr's store and loader use
    `list_dataset`'s order. For a plain tree of JPEGs they agree; a tree with other image types
    or nested folders may not, and then the import stops (pass a `--file-list` in the paper's
    order instead). Hidden and empty class folders are refused by `list_dataset` already;
    dalidr's own cache folder is left out of torchvision's classes (it is not the paper's), and
    whatever torchvision cannot list is a DatasetError naming the root, not its traceback."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes = [c for c in find_classes(str(listing.root))[0] if c != CACHE_FOLDER]
        class_to_idx = {name: i for i, name in enumerate(classes)}
        samples = make_dataset(str(listing.root), class_to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, ValueError) as exc:
        raise DatasetError(f"{listing.root}: torchvision's ImageFolder cannot list it ({exc}), "
                           "so the paper's indices are unknown; fix the tree or pass "
                           "--file-list with the paper's order") from exc
    if tuple(classes) != listing.classes:
        raise DatasetError(f"{listing.root}: torchvision's ImageFolder finds classes "
                           f"{classes[:10]}, dalidr's listing {list(listing.classes[:10])}; "
                           "pass --file-list with the paper's order")
    theirs = [Path(p).relative_to(listing.root).as_posix() for p, _ in samples]
    if theirs == list(listing.paths):
        return
    for i, (a, b) in enumerate(zip(theirs, listing.paths, strict=False)):
        if a != b:
            raise DatasetError(f"{listing.root}: sample {i} is {a!r} in torchvision's "
                               f"ImageFolder order (the paper's indices) but {b!r} in dalidr's "
                               "listing; pass --file-list with the paper's order")
    raise DatasetError(f"{listing.root}: torchvision's ImageFolder lists {len(theirs)} images, "
                       f"dalidr's listing {len(listing)} (only JPEGs are served); pass "
                       "--file-list with the paper's order")


def dataset_listing(images: str | Path, file_list: str | Path | None) -> DatasetListing:
    """The dataset the reinforcements index, in the paper's order (see check_imagefolder_order).
    A folder tree or a file list only: the paper's stores index ImageFolder order, which tar
    shards do not carry."""
    if is_shard_spec(images):
        raise DatasetError(f"--images {images}: import-mldr reads an ImageFolder tree (or a "
                           "--file-list's root), not tar shards: the paper's reinforcements "
                           "index torchvision's ImageFolder order")
    listing = list_dataset(images, file_list)
    if file_list is None:
        check_imagefolder_order(listing)
    return listing


def check_op_names() -> None:
    """The paper's RandAugment op list must be dalidr's OPS, in order (op indices are shared)."""
    ours = tuple(op.name for op in OPS)
    if ours != MLDR_OP_NAMES:
        raise RecipeError(f"dalidr's RandAugment ops {ours} differ from the paper's "
                          f"{MLDR_OP_NAMES}; stored op indices cannot be mapped")
