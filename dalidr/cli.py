"""The `dalidr` command line: one subcommand per job.

- `dalidr demo`: the embedded default job, end to end on Fashion-MNIST (`dalidr/experiment.py`).
- `dalidr gallery`: every recipe replayed on bundled real JPEGs, one PNG grid each.
- `dalidr views`: replayed views of a user's ImageFolder tree, as a PNG grid.
- `dalidr inspect` / `dalidr subset`: reinforcement stores (`store/cli.py`).
- `dalidr reinforce`, `dalidr train`, `dalidr eval`: registered by their own modules.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dalidr.errors import DalidrError
from dalidr.experiment import DemoConfig, run_demo
from dalidr.ops import OPS
from dalidr.recipe import PRESETS, Recipe, load_recipe
from dalidr.records import MixMode, draw_records, record_dtype

__all__ = ["main", "render_views"]

# Modules that add subcommands with `register(subparsers)`, each owning its job's options.
_SUBCOMMAND_MODULES = (
    "store.cli",  # inspect, subset
    "dalidr.reinforce",  # reinforce (the teacher pass)
    "dalidr.train",  # train
    "dalidr.evaluate",  # eval
    "dalidr.mldr.convert",  # import-mldr (the paper's published reinforcements)
)


def _captions(records: np.ndarray, recipe: Recipe) -> list[str]:
    out = []
    for record in records:
        parts = []
        if recipe.has_ra_re:
            parts += [OPS[int(o)].name[:6] for o in record["ops"] if o != 0]
            if record["erase"][2] > 0:
                parts.append("RE")
        if recipe.has_mix and record["mix"] != MixMode.NONE:
            parts.append(MixMode(int(record["mix"])).name.lower())
        if record["flip"]:
            parts.append("flip")
        out.append(" ".join(parts)[:28])
    return out


def render_views(
    jpegs: Sequence[np.ndarray],
    image_hw: np.ndarray,
    recipe: Recipe,
    slots: int,
    seed: int,
    out: Path,
    title: str,
) -> tuple[Path, float]:
    """Replay `slots` views of every image and save them as a grid; returns (path, images/s)."""
    from dalidr.grid import save_grid
    from dalidr.replay import Replayer, ReplaySpec

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
    titles = [f"{title} #{i}" for i in range(count)]
    return save_grid(by_sample, out, titles, by_caption), rate


def _gallery(args: argparse.Namespace) -> int:
    from dalidr.sample_data import make_corpus

    out = Path(args.out)
    paths = make_corpus(out / "corpus", args.images, seed=args.seed)
    jpegs = [np.fromfile(p, dtype=np.uint8) for p in paths]
    from PIL import Image

    image_hw = np.array([Image.open(p).size[::-1] for p in paths])
    print(f"dalidr gallery: {len(paths)} real JPEGs under {out / 'corpus'}")
    print(f"{'recipe':<12}{'bytes/record':>14}{'views':>8}{'images/s':>11}  picture")
    for name, preset in PRESETS.items():
        recipe = preset.replace(output_size=args.size)
        png = out / f"views-{name.replace('/', '_').replace('*', 'x')}.png"
        path, rate = render_views(jpegs, image_hw, recipe, args.slots, args.seed, png, name)
        nbytes = record_dtype(recipe).itemsize
        print(f"{name:<12}{nbytes:>14}{len(paths) * args.slots:>8}{rate:>11.1f}  {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    config = DemoConfig(
        out=Path(args.out),
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        teacher_train_per_class=args.teacher_train_per_class,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs,
        slots=args.slots,
        seed=args.seed,
        allow_apt=not args.no_apt,
    )
    run_demo(config)
    return 0


def _views(args: argparse.Namespace) -> int:
    from PIL import Image

    from dalidr.dataset import list_dataset

    listing = list_dataset(args.data)
    chosen = list(range(min(args.images, len(listing))))
    files = [listing.root / listing.paths[i] for i in chosen]
    jpegs = [np.fromfile(p, dtype=np.uint8) for p in files]
    image_hw = np.array([Image.open(p).size[::-1] for p in files])
    recipe = load_recipe(args.recipe)
    path, _ = render_views(
        jpegs, image_hw, recipe, args.slots, args.seed, Path(args.out), recipe.variant.value
    )
    print(path)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dalidr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="the whole system end to end on Fashion-MNIST (CPU, minutes)"
    )
    defaults = DemoConfig()
    demo.add_argument("--out", default=str(defaults.out), help="output folder")
    demo.add_argument("--train-per-class", type=int, default=defaults.train_per_class)
    demo.add_argument("--test-per-class", type=int, default=defaults.test_per_class)
    demo.add_argument("--teacher-train-per-class", type=int,
                      default=defaults.teacher_train_per_class,
                      help="teachers' training images per class (default: the students')")
    demo.add_argument("--teacher-epochs", type=int, default=defaults.teacher_epochs)
    demo.add_argument("--student-epochs", type=int, default=defaults.student_epochs)
    demo.add_argument("--slots", type=int, default=defaults.slots)
    demo.add_argument("--seed", type=int, default=defaults.seed)
    demo.add_argument(
        "--no-apt",
        action="store_true",
        help="never apt-get install dataset-fashion-mnist (use sklearn digits)",
    )
    demo.set_defaults(run=_demo)

    gallery = sub.add_parser("gallery", help="every recipe replayed on bundled real JPEGs, PNGs")
    gallery.add_argument("--out", default="runs/gallery", help="output folder")
    gallery.add_argument("--images", type=int, default=6, help="images per grid (default: 6)")
    gallery.add_argument("--slots", type=int, default=6, help="views per image (default: 6)")
    gallery.add_argument("--size", type=int, default=160, help="output side in pixels")
    gallery.add_argument("--seed", type=int, default=0)
    gallery.set_defaults(run=_gallery)

    views = sub.add_parser("views", help="replayed views of an ImageFolder tree, as a PNG")
    views.add_argument("--data", required=True, help="ImageFolder root of JPEGs")
    views.add_argument(
        "--recipe", default="rrc+ra/re", help=f"preset ({', '.join(PRESETS)}) or YAML/JSON file"
    )
    views.add_argument("--images", type=int, default=8)
    views.add_argument("--slots", type=int, default=8)
    views.add_argument("--seed", type=int, default=0)
    views.add_argument("--out", default="runs/views.png")
    views.set_defaults(run=_views)

    for module_name in _SUBCOMMAND_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DalidrError as exc:
        print(f"dalidr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
