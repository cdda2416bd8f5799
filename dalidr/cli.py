"""The `dalidr` command line: one subcommand per job.

- `dalidr experiment`: the paper's comparison (erm / kd / dr students, teachers, the teacher
  pass, evaluation) end to end on a user's ImageFolder trees or the built-in Fashion-MNIST
  (`dalidr/experiment.py`); `dalidr demo` is the same with the embedded demo's defaults.
- `dalidr gallery`: every recipe replayed on bundled real JPEGs, one PNG grid each.
- `dalidr views`: replayed views of a user's ImageFolder tree, as a PNG grid.
- `dalidr inspect` / `dalidr subset`: reinforcement stores (`store/cli.py`).
- `dalidr reinforce`, `dalidr train`, `dalidr eval`, `dalidr import-mldr`, `dalidr pack`:
  registered by their own modules.

`python -m dalidr` is the same command line (`dalidr/__main__.py`). Every `--help` shows each
option's default (`_DefaultsFormatter`, applied to every subcommand through `_Parser`).
"""

from __future__ import annotations

import argparse
import copy
import enum
import importlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dalidr.augment.ops import OPS
from dalidr.augment.recipe import PRESETS, Recipe, load_recipe
from dalidr.augment.records import MixMode, draw_records, record_dtype
from dalidr.data.shards import SHARDS_HELP
from dalidr.errors import DalidrError, OptionError
from dalidr.experiment import MODES, DemoConfig, ExperimentConfig, run_demo

__all__ = ["build_parser", "main", "render_views", "sample_across_classes"]

# Modules that add subcommands with `register(subparsers)`, each owning its job's options.
_SUBCOMMAND_MODULES = (
    "store.cli",  # inspect, verify, subset, upgrade, difficulty
    "dalidr.teacher.reinforce",  # reinforce (the teacher pass)
    "dalidr.training.train",  # train
    "dalidr.training.evaluate",  # eval
    "dalidr.mldr.convert",  # import-mldr (the paper's published reinforcements)
    "dalidr.data.pack",  # pack (a folder as webdataset tar shards)
)


def _captions(records: np.ndarray, recipe: Recipe) -> list[str]:
    out = []
    for record in records:
        parts = []
        if recipe.has_ra_re:
            parts += [OPS[int(o)].name for o in record["ops"] if o != 0]
            if record["erase"][2] > 0:
                parts.append("RE")
        if recipe.has_mix and record["mix"] != MixMode.NONE:
            parts.append(MixMode(int(record["mix"])).name.lower())
        if record["flip"]:
            parts.append("flip")
        out.append(" ".join(parts))
    return out


def render_views(
    jpegs: Sequence[np.ndarray],
    image_hw: np.ndarray,
    recipe: Recipe,
    slots: int,
    seed: int,
    out: Path,
    title: str,
    titles: Sequence[str] | None = None,
) -> tuple[Path, float]:
    """Replay `slots` views of every image and save them as a grid; returns (path, images/s)."""
    from dalidr.augment.replay import Replayer, ReplaySpec
    from dalidr.grid import save_grid

    count = len(jpegs)
    records = draw_records(recipe, seed, np.arange(count), np.arange(slots), image_hw)
    replayer = Replayer(ReplaySpec(recipe), batch_size=count)
    rows, captions = [], []
    start = time.perf_counter()
    for slot in range(slots):
        batch = records[:, slot]
        partners = [jpegs[p] for p in batch["partner"]] if recipe.has_mix else None
        rows.append(replayer(list(jpegs), batch, partners, num_samples=count))
        captions.append(_captions(batch, recipe))
    rate = count * slots / (time.perf_counter() - start)
    by_sample = [np.stack([rows[s][i] for s in range(slots)]) for i in range(count)]
    by_caption = [[captions[s][i] for s in range(slots)] for i in range(count)]
    row_titles = [f"{title} #{i}" if titles is None else f"{titles[i]} ({title})"
                  for i in range(count)]
    return save_grid(by_sample, out, row_titles, by_caption), rate


def _gallery(args: argparse.Namespace) -> int:
    from dalidr.data.sample_data import make_corpus

    for option, value in (("--images", args.images), ("--slots", args.slots)):
        OptionError.unless(value >= 1, option, value, ">= 1")
    OptionError.unless(16 <= args.size <= 4096, "--size", args.size, "16..4096")
    out = Path(args.out)
    paths = make_corpus(out / "corpus", args.images, seed=args.seed)
    import io

    from PIL import Image

    from dalidr.data.data_source import FileSource

    source = FileSource(out / "corpus", [p.relative_to(out / "corpus").as_posix() for p in paths])
    jpegs = source.read(range(len(paths)))
    image_hw = np.array([Image.open(io.BytesIO(j.tobytes())).size[::-1] for j in jpegs])
    print(f"dalidr gallery: {len(paths)} real JPEGs under {out / 'corpus'}")
    print(f"{'recipe':<12}{'bytes/record':>14}{'views':>8}{'images/s':>11}  picture")
    for name, preset in PRESETS.items():
        recipe = preset.replace(output_size=args.size)
        png = out / f"views-{name.replace('/', '_').replace('*', 'x')}.png"
        path, rate = render_views(jpegs, image_hw, recipe, args.slots, args.seed, png, name)
        nbytes = record_dtype(recipe).itemsize
        print(f"{name:<12}{nbytes:>14}{len(paths) * args.slots:>8}{rate:>11.1f}  {path}")
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


def _experiment(args: argparse.Namespace) -> int:
    config = ExperimentConfig(
        out=Path(args.out),
        train=args.train,  # a folder or a shard spec: text, so that URLs stay whole
        test=args.test,
        train_list=_path(args.train_list),
        test_list=_path(args.test_list),
        teacher_train=args.teacher_train,
        teacher_train_list=_path(args.teacher_train_list),
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        teacher_train_per_class=args.teacher_train_per_class,
        size=args.size,
        crop_scale=(args.crop_scale[0], args.crop_scale[1]),
        teacher=args.teacher,
        kept_teacher=None if args.train_teachers else args.kept_teacher,
        teacher_size=args.teacher_size,
        teachers=_names(args.teachers),
        teacher_epochs=args.teacher_epochs,
        students=_names(args.students),
        modes=_names(args.modes),
        student_epochs=args.student_epochs,
        recipe=args.recipe,
        curriculum=args.curriculum,
        teacher_recipe=args.teacher_recipe,
        slots=args.slots,
        topk=args.topk,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
        allow_apt=not args.no_apt,
    )
    run_demo(config)
    return 0


def sample_across_classes(labels: Sequence[int] | np.ndarray, count: int,
                          seed: int) -> np.ndarray:
    """`count` sample indices spread over the classes: one per class in turn (classes in
    order, each class's samples drawn without replacement from `seed`), then again."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(count, len(labels)):
        for pool in pools:
            if depth < len(pool) and len(chosen) < count:
                chosen.append(int(pool[depth]))
        depth += 1
    return np.array(chosen, dtype=np.int64)


def _views(args: argparse.Namespace) -> int:
    import io

    from PIL import Image

    from dalidr.data.dataset import list_dataset

    for option, value in (("--images", args.images), ("--slots", args.slots)):
        OptionError.unless(value >= 1, option, value, ">= 1")
    recipe = load_recipe(args.recipe)
    listing = list_dataset(args.data)
    chosen = sample_across_classes(listing.labels, args.images, args.seed)
    jpegs = listing.source.read(chosen)
    image_hw = np.array([Image.open(io.BytesIO(j.tobytes())).size[::-1] for j in jpegs])
    labels = np.asarray(listing.labels)
    path, _ = render_views(jpegs, image_hw, recipe, args.slots, args.seed, Path(args.out),
                           recipe.variant.value,
                           titles=[listing.classes[int(labels[i])] for i in chosen])
    print(path)
    return 0


def _add_experiment_options(parser: argparse.ArgumentParser, out: str) -> None:
    defaults = ExperimentConfig()
    data = parser.add_argument_group("data (your own, or the built-in Fashion-MNIST)")
    data.add_argument("--train", default=None, metavar="ROOT",
                      help="training ImageFolder root (or the root of --train-list's paths, "
                           "or webdataset tar shards as `dalidr reinforce --data` takes them); "
                           "with --test. Default: built-in Fashion-MNIST")
    data.add_argument("--test", default=None, metavar="ROOT",
                      help="test ImageFolder root (or tar shards)")
    data.add_argument("--train-list", default=None, metavar="FILE",
                      help="'<path> <label>' lines under --train instead of class folders")
    data.add_argument("--test-list", default=None, metavar="FILE",
                      help="'<path> <label>' lines under --test")
    data.add_argument("--teacher-train", default=None, metavar="ROOT",
                      help="data the teachers train on, same classes (default: --train)")
    data.add_argument("--teacher-train-list", default=None, metavar="FILE")
    data.add_argument("--train-per-class", type=int, default=defaults.train_per_class,
                      help="built-in data: training images per class")
    data.add_argument("--test-per-class", type=int, default=defaults.test_per_class,
                      help="built-in data: test images per class")
    data.add_argument("--teacher-train-per-class", type=int,
                      default=defaults.teacher_train_per_class,
                      help="built-in data: teachers' training images per class")
    data.add_argument("--no-apt", action="store_true",
                      help="built-in data: never apt-get install dataset-fashion-mnist "
                           "(use scikit-learn's digits)")
    teach = parser.add_argument_group("teacher")
    teach.add_argument("--teacher", default=None, metavar="NAME@CKPT,...",
                       help="use this ensemble as is (timm state dicts or `dalidr train` "
                            "checkpoints) instead of the kept or trained one")
    teach.add_argument("--kept-teacher", default=defaults.kept_teacher, metavar="NAME",
                       help="the ensemble kept in the repository, used when the data has its "
                            "classes (fashion-mnist: bench/teachers.py trained it once on "
                            "all 60,000 images)")
    teach.add_argument("--train-teachers", action="store_true",
                       help="train --teachers here instead of using the kept ensemble (data "
                            "with other classes always trains them without --teacher)")
    teach.add_argument("--teacher-size", type=int, default=None,
                       help="side the teachers view every crop at (default: the kept "
                            "ensemble's, else --size)")
    teach.add_argument("--teachers", default=",".join(defaults.teachers), metavar="NAMES",
                       help="timm members to train with the strong recipe")
    teach.add_argument("--teacher-epochs", type=int, default=defaults.teacher_epochs)
    teach.add_argument("--teacher-recipe", default=defaults.teacher_recipe,
                       help="recipe the teachers trained here draw afresh each epoch")
    runs = parser.add_argument_group("students and the store")
    runs.add_argument("--students", default=",".join(defaults.students), metavar="NAMES",
                      help="timm student architectures")
    runs.add_argument("--modes", default=",".join(defaults.modes),
                      help=f"comma-separated subset of {','.join(MODES)}")
    runs.add_argument("--student-epochs", "--epochs", dest="student_epochs", type=int,
                      default=defaults.student_epochs, help="epochs of every student")
    runs.add_argument("--size", type=int, default=defaults.size, help="image side, every model")
    runs.add_argument("--crop-scale", type=float, nargs=2, default=defaults.crop_scale,
                      metavar=("LOW", "HIGH"), help="random-resized-crop area range")
    runs.add_argument("--recipe", default=defaults.recipe,
                      help=f"store and kd recipe: preset ({', '.join(PRESETS)})")
    runs.add_argument("--slots", type=int, default=defaults.slots, help="stored views per image")
    runs.add_argument("--curriculum", default=None, metavar="SPEC",
                      help="dr students: easy views first, linear[:confidence|strength] or "
                           "step:EASY_EPOCHS[:confidence|strength]")
    runs.add_argument("--topk", type=int, default=defaults.topk,
                      help="teacher classes kept per view")
    runs.add_argument("--batch-size", type=int, default=defaults.batch_size)
    runs.add_argument("--lr", type=float, default=defaults.lr, help="AdamW peak learning rate")
    runs.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", default=out, help="output folder (rerun to resume)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (also off when stderr is not a terminal)")
    parser.set_defaults(run=_experiment)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows every option's default (unless its text already names one)."""

    def _format_action(self, action: argparse.Action) -> str:
        shown = _default_text(action)
        if shown and not action.help:
            action = copy.copy(action)
            action.help = shown
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = _default_text(action)
        if not shown or "default" in text.lower():
            return text
        return f"{text} {shown}"


def _default_text(action: argparse.Action) -> str:
    default = action.default
    if (not action.option_strings or default is None or default is argparse.SUPPRESS
            or isinstance(default, bool)):
        return ""
    if isinstance(default, enum.Enum):
        default = default.value
    elif isinstance(default, tuple | list):
        default = " ".join(str(v) for v in default)
    return f"(default: {default})".replace("%", "%%")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help (and every subcommand's) shows the defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The whole `dalidr` parser, every subcommand registered (docs/cli.md is rendered from it
    by `dalidr/cli_reference.py`)."""
    parser = _Parser(prog="dalidr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    experiment = sub.add_parser(
        "experiment", help="erm / kd / dr students on your data: teachers, teacher pass, eval",
        description="The paper's comparison end to end on your ImageFolder trees (--train, "
                    "--test) or the built-in Fashion-MNIST: teachers (trained or --teacher), "
                    "the teacher pass, students in each mode, evaluation, a table, JSON and "
                    "plots. Every step is cached: rerun to resume.")
    _add_experiment_options(experiment, "runs/experiment")
    demo = sub.add_parser(
        "demo", help="the embedded default job: `dalidr experiment` on Fashion-MNIST (minutes)",
        description="`dalidr experiment` with the demo's defaults (the README's main job).")
    _add_experiment_options(demo, str(DemoConfig().out))

    gallery = sub.add_parser("gallery", help="every recipe replayed on bundled real JPEGs, PNGs")
    gallery.add_argument("--out", default="runs/gallery", help="output folder")
    gallery.add_argument("--images", type=int, default=6, help="images per grid")
    gallery.add_argument("--slots", type=int, default=6, help="views per image")
    gallery.add_argument("--size", type=int, default=160, help="output side in pixels")
    gallery.add_argument("--seed", type=int, default=0)
    gallery.set_defaults(run=_gallery)

    views = sub.add_parser("views", help="replayed views of an ImageFolder tree, as a PNG")
    views.add_argument("--data", required=True, help=f"ImageFolder root of JPEGs, {SHARDS_HELP}")
    views.add_argument(
        "--recipe", default="rrc+ra/re", help=f"preset ({', '.join(PRESETS)}) or YAML/JSON file"
    )
    views.add_argument("--images", type=int, default=8,
                       help="images, sampled across the classes in turn")
    views.add_argument("--slots", type=int, default=8, help="views per image")
    views.add_argument("--seed", type=int, default=0, help="seed of the sample and the views")
    views.add_argument("--out", default="runs/views.png", help="PNG path")
    views.set_defaults(run=_views)

    for module_name in _SUBCOMMAND_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DalidrError as exc:
        print(f"dalidr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
