"""Scale: start-up, memory and metadata costs at ImageNet's 1.28M samples, projected to 14M.

Tests and the other benchmarks run on thousands of images, where per-file costs vanish. This
builds an ImageNet-shaped tree (`--classes` folders, `--samples` JPEGs: hard links to
`--sources` real JPEGs, since what is measured is the per-file cost of listing, opening and
stat-ing, not the bytes; `tests/scale_builder.py`) once under `--workdir`, and measures, each
in a fresh process so that its peak RSS is its own:

- listing the tree (`list_dataset`), the listing from a file list, and what a second rank of a
  node pays when the first has listed (`dalidr.data.node_cache`: it maps the first's listing);
- the teacher pass's start, creating the manifest (`scan_manifest`: hash and measure every
  file), on `--manifest-sample` files and extrapolated to all (stated in the output);
- the teacher pass's bookkeeping for N x 400 slots x top-10 with a trivially cheap teacher
  (`cheap_teacher`: no decode, no forward): creating the store, then `--teacher-blocks`
  blocks of records drawn, top-k encoded and written, extrapolated to every block;
- the store's file count and bytes for N x 400 x top-10, from the same store (the metadata as
  written; the blocks extrapolated from those written);
- `ReinforcedLoader` (listing the tree; from a file list; taking the store's manifest as the
  listing) and `PlainLoader` (DALI's augmentation; a recipe drawn afresh, whose image sizes are
  read from headers per batch, with the cache beside the data cold and warm): constructor,
  first batch and one epoch's plan (plan + records and targets of the rank's epoch), for rank
  0 of `--world`. The reinforced loader serves a store of the same N with `--loader-slots`
  slots, every block committed (a 400-slot store would be 11 GB of teacher output);
- `dalidr inspect --no-verify` (`inspect_store(verify=False)`) on the 400-slot store, and
  `dalidr verify` (listing check + SHA-256 of every file), on `--verify-sample` files and
  extrapolated (stated);
- a process with a plain DALI pipeline (external source, decode, resize) on one batch: the
  baseline a loader's peak RSS is compared with.

Projections: every step (but the DALI baseline) also runs on a tree of `--fit-samples`, and
each figure is projected along the line through the two runs (so fixed costs, such as building
the DALI graph, are not scaled), except those that are a per-file cost times the count
(manifest, verify, teacher), which scale in proportion.

Hard links share their source's pages, so file reads come from the page cache: hashing and
decoding times are those of a warm cache, lower than a cold 140 GB dataset on disk would give.
Each figure is projected to ImageNet-21k (14M samples) and to 64 ranks (8 nodes of 8), with
what it grows with: samples, ranks, or neither. The table is printed last; numbers go to
`--out` with the machine and the command.

Run from the repository root: `python bench/scale.py` (`--samples 20000` for a quick run).

`--sizes 13700000,27400000` measures issue 28's sizes instead (file-list datasets, a
`DatasetCheck.MANIFEST` loader at worlds 8 and 64, verdicts, a projection to 1.4B samples):
`bench/scale_sizes.py`, results to `bench/results/scale-sizes.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.machine import describe_machine, load_snapshot, summary

IMAGENET = 1_281_167
IMAGENET_21K = 14_197_122
RANKS = 64
_REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=IMAGENET, help="images in the tree")
    parser.add_argument("--classes", type=int, default=1000, help="class folders")
    parser.add_argument("--sources", type=int, default=300, help="real JPEGs linked to")
    parser.add_argument("--world", type=int, default=8, help="ranks; the loaders are rank 0")
    parser.add_argument("--batch", type=int, default=64, help="loader batch size")
    parser.add_argument("--size", type=int, default=224, help="loader output size")
    parser.add_argument("--slots", type=int, default=400, help="slots of the metadata store")
    parser.add_argument("--k", type=int, default=10, help="top-k of the metadata store")
    parser.add_argument("--loader-slots", type=int, default=5,
                        help="slots of the complete store the reinforced loader serves")
    parser.add_argument("--teacher-blocks", type=int, default=2,
                        help="blocks of the 400-slot store written (the rest extrapolated)")
    parser.add_argument("--manifest-sample", type=int, default=20_000,
                        help="files hashed for the manifest (then extrapolated)")
    parser.add_argument("--verify-sample", type=int, default=20_000,
                        help="files hashed by the verify measurement (then extrapolated)")
    parser.add_argument("--fit-samples", type=int, default=20_000,
                        help="a second, small run that the 14M projections are fitted through "
                             "(0: none, figures then projected as constant)")
    parser.add_argument("--workdir", default="/tmp/dalidr-scale",
                        help="where the tree and stores are built (reused when present)")
    parser.add_argument("--out", default=None,
                        help="JSON result (default bench/results/scale.json, with --sizes "
                             "bench/results/scale-sizes.json)")
    sizes = parser.add_argument_group("issue 28's sizes (bench/scale_sizes.py)")
    sizes.add_argument("--sizes", default=None,
                       help="comma-separated sample counts, e.g. 13700000,27400000: measure "
                            "these (file-list datasets) instead of the ImageNet tree "
                            "(--samples, --classes, --slots and --fit-samples then unused)")
    sizes.add_argument("--size-classes", type=int, default=21_841,
                       help="classes of the --sizes datasets (ImageNet-22k's)")
    sizes.add_argument("--size-sources", type=int, default=256,
                       help="real JPEGs the --sizes datasets link to (must divide the "
                            "store's block size)")
    sizes.add_argument("--size-worlds", default="8,64",
                       help="world sizes whose rank 0 is measured at --sizes")
    sizes.add_argument("--start-repeats", type=int, default=3,
                       help="fresh processes whose start (constructor + first batch) is "
                            "timed per world at --sizes; the median is reported (one start "
                            "varies by a second on a 2-core machine)")
    sizes.add_argument("--teacher-slots", type=int, default=10,
                       help="slots of the store the --sizes teacher step writes")
    sizes.add_argument("--build-workers", type=int, default=min(8, os.cpu_count() or 1),
                       help="processes that write the --sizes loader stores")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)  # child process
    return parser.parse_args(argv)


# ------------------------------------------------------------------ what is built once


def _paths(args: argparse.Namespace) -> dict[str, Path]:
    work = Path(args.workdir) / f"n{args.samples}-c{args.classes}-s{args.sources}"
    return {"work": work, "tree": work / "tree", "file_list": work / "files.txt",
            "loader_store": work / f"loader-{args.loader_slots}slots.zarr",
            "meta_store": work / f"meta-{args.slots}x{args.k}.zarr",
            "node_cache": work / "node-cache"}


def build(args: argparse.Namespace) -> dict[str, float]:
    """The tree, its file list and the complete loader store; seconds each took."""
    from dalidr.augment.recipe import recipe
    from dalidr.data.dataset import list_dataset
    from store.config import StoreConfig
    from tests.scale_builder import linked_manifest, linked_store, linked_tree

    paths, took = _paths(args), {}
    start = time.perf_counter()
    tree = linked_tree(paths["work"], args.samples, args.classes, args.sources)
    took["tree_s"] = time.perf_counter() - start
    listing = list_dataset(tree.root, share=False)
    if not paths["file_list"].exists():
        tmp = paths["file_list"].with_suffix(".tmp")
        with open(tmp, "w") as out:
            for path, label in zip(listing.paths, listing.labels.tolist(), strict=True):
                out.write(f"{path} {label}\n")
        tmp.replace(paths["file_list"])
    start = time.perf_counter()
    manifest = linked_manifest(tree, listing)
    config = StoreConfig(recipe=recipe("rrc+ra/re", output_size=args.size),
                         teacher="cheap stand-in (bench/scale.py)", seed=0,
                         slots=args.loader_slots, k=args.k, num_classes=args.classes,
                         slot_group=min(5, args.loader_slots))
    linked_store(str(paths["loader_store"]), manifest, config)
    took["loader_store_s"] = time.perf_counter() - start
    return took


# ------------------------------------------------------------------ steps (child processes)

Step = Callable[[argparse.Namespace], dict[str, Any]]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _loader_config(args: argparse.Namespace) -> Any:
    from dalidr.training.loader_config import LoaderConfig

    return LoaderConfig(batch_size=args.batch, num_threads=2, read_threads=2)


def step_dali_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """A plain DALI pipeline (external source, decode, resize) on one batch of the tree."""
    return dali_baseline(args, _paths(args)["work"] / "sources")


def dali_baseline(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """A plain DALI pipeline (external source, decode, resize) on one batch of `folder`'s
    JPEGs: the process a loader's peak RSS is compared with."""
    import torch  # noqa: F401  (a loader process has torch loaded too)
    from nvidia.dali import fn, pipeline_def, types

    sources = sorted(folder.rglob("*.jpg"))
    files = (sources * args.batch)[: args.batch]

    @pipeline_def
    def pipe() -> Any:
        jpegs = fn.external_source(name="jpegs", dtype=types.DALIDataType.UINT8)
        images = fn.decoders.image(jpegs, output_type=types.DALIImageType.RGB, device="cpu")
        return fn.resize(images, size=[args.size, args.size])

    p = pipe(batch_size=args.batch, num_threads=2, device_id=None)
    p.build()
    p.feed_input("jpegs", [np.fromfile(f, dtype=np.uint8) for f in files])
    _, run_s = _timed(p.run)
    return {"first_batch_s": run_s}


def step_list_tree(args: argparse.Namespace) -> dict[str, Any]:
    from dalidr.data.dataset import list_dataset

    listing, took = _timed(lambda: list_dataset(_paths(args)["tree"], share=False))
    return {"s": took, "samples": len(listing), "listing_bytes": int(
        listing.paths.nbytes + listing.labels.nbytes + listing.sizes.nbytes)}


def step_list_file_list(args: argparse.Namespace) -> dict[str, Any]:
    from dalidr.data.dataset import list_dataset

    p = _paths(args)
    listing, took = _timed(lambda: list_dataset(p["tree"], p["file_list"], share=False))
    return {"s": took, "samples": len(listing)}


def step_list_shared(args: argparse.Namespace) -> dict[str, Any]:
    """A rank under torchrun: the node cache in effect (the parent runs this twice)."""
    from dalidr.data.dataset import list_dataset

    os.environ["DALIDR_NODE_CACHE"] = str(_paths(args)["node_cache"])
    listing, took = _timed(lambda: list_dataset(_paths(args)["tree"]))
    return {"s": took, "samples": len(listing)}


def step_manifest(args: argparse.Namespace) -> dict[str, Any]:
    from dalidr.data.dataset import list_dataset
    from store.manifest import scan_manifest

    listing = list_dataset(_paths(args)["tree"], share=False)
    n = min(args.manifest_sample, len(listing))
    pick = np.linspace(0, len(listing) - 1, n).astype(np.int64)
    paths = [listing.paths[int(i)] for i in pick]
    _, took = _timed(lambda: scan_manifest(listing.root, paths, listing.labels[pick]))
    return {"sample_files": n, "sample_s": took,
            "s": took / n * len(listing), "extrapolated": n < len(listing)}


def _tree_bytes(folder: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            files += 1
            size += os.stat(os.path.join(dirpath, name)).st_size
    return files, size


def step_teacher(args: argparse.Namespace) -> dict[str, Any]:
    """Create the N x slots x k store and write a few blocks with the cheap teacher."""
    from dalidr.augment.recipe import recipe
    from dalidr.data.dataset import list_dataset
    from dalidr.data.sample_data import make_corpus
    from store.config import StoreConfig
    from store.writer import create_store
    from tests.scale_builder import LinkedTree, fill_blocks, linked_manifest

    p = _paths(args)
    sources = tuple(make_corpus(p["work"] / "sources", args.sources, seed=11))
    tree = LinkedTree(p["tree"], sources, args.samples, args.classes)
    listing = list_dataset(tree.root, share=False)
    manifest = linked_manifest(tree, listing)
    config = StoreConfig(recipe=recipe("rrc+ra/re", output_size=args.size),
                         teacher="cheap stand-in (bench/scale.py)", seed=0, slots=args.slots,
                         k=args.k, num_classes=args.classes)
    writer, create_s = _timed(lambda: create_store(str(p["meta_store"]), manifest, config,
                                                   overwrite=True))
    files0, bytes0 = _tree_bytes(p["meta_store"])
    blocks = list(range(min(args.teacher_blocks, writer.num_blocks)))
    _, blocks_s = _timed(lambda: fill_blocks(writer, manifest, blocks))
    files1, bytes1 = _tree_bytes(p["meta_store"])
    per_block_s = blocks_s / len(blocks)
    n_blocks = writer.num_blocks
    per_block_files = (files1 - files0) / len(blocks)
    per_block_bytes = (bytes1 - bytes0) / len(blocks)
    return {"create_s": create_s, "blocks_written": len(blocks), "per_block_s": per_block_s,
            "num_blocks": n_blocks, "s": create_s + per_block_s * n_blocks,
            "records_per_s": args.slots * writer.config.block_size / per_block_s,
            "metadata_files": files0, "metadata_bytes": bytes0,
            "store_files": files0 + per_block_files * n_blocks,
            "store_bytes": bytes0 + per_block_bytes * n_blocks,
            "bytes_per_record": (bytes0 + per_block_bytes * n_blocks)
            / (args.samples * args.slots)}


def step_inspect(args: argparse.Namespace) -> dict[str, Any]:
    from store.inspect import format_report, inspect_store

    report, took = _timed(lambda: inspect_store(str(_paths(args)["meta_store"]), verify=False))
    format_report(report)
    return {"s": took}


def step_verify(args: argparse.Namespace) -> dict[str, Any]:
    """`dalidr verify`'s work: the listing check, then every served file hashed (a sample)."""
    from dalidr.data.dataset import list_dataset
    from store.reader import StoreReader

    p = _paths(args)
    reader, open_s = _timed(lambda: StoreReader(str(p["loader_store"])))
    manifest = reader.manifest
    difference, listing_s = _timed(lambda: manifest.check_listing(
        list_dataset(p["tree"], share=False)))
    served = manifest.served
    n = min(args.verify_sample, len(served))
    pick = served[np.linspace(0, len(served) - 1, n).astype(np.int64)]
    problems, hash_s = _timed(lambda: manifest.check_content(p["tree"], pick))
    if difference is not None or problems:
        raise RuntimeError(f"verify found problems: {difference} {problems[:3]}")
    return {"open_s": open_s, "listing_s": listing_s, "sample_files": n, "sample_hash_s": hash_s,
            "s": open_s + listing_s + hash_s / n * len(served), "extrapolated": n < len(served)}


def epoch_first_batch(loader: Any, epoch: int) -> None:
    """Wait for `epoch`'s first batch of metadata (plan, and a reinforced loader's records and
    top-k: the epoch's first piece, `store.pieces`), asked for from its beginning."""
    loader._epoch_data(epoch, 0).part(0, loader.config.batch_size)


def whole_epoch(loader: Any, epoch: int) -> None:
    """Wait for all of `epoch`'s metadata, batch by batch (a reinforced loader: every piece,
    so every block of its share read once)."""
    source, size, n = loader._epoch_data(epoch, 0), loader.config.batch_size, \
        loader._epoch_length(0)
    for lo in range(0, n, size):
        source.part(lo, min(lo + size, n))


def _loader_figures(make: Callable[[], Any], plan: Callable[[Any], Any],
                    awaited: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Constructor, first batch and `plan` (`epoch_first_batch` of epoch 1: a reinforced
    loader reads ahead only the epoch it serves, so this is epoch 1's plan and first piece);
    `awaited`, if given, right after (`whole_epoch` of epoch 2: its plan and all its
    records and targets)."""
    loader, construct_s = _timed(make)
    _, first_s = _timed(lambda: next(iter(loader)))
    _, plan_s = _timed(lambda: plan(loader))
    figures = {"constructor_s": construct_s, "first_batch_s": first_s,
               "s": construct_s + first_s, "epoch_plan_s": plan_s}
    if awaited is not None:
        figures["epoch_plan_awaited_s"] = _timed(lambda: awaited(loader))[1]
    figures["batches_per_epoch"] = len(loader)
    loader.close()
    return figures


def _reinforced(args: argparse.Namespace, world: int | None = None,
                **options: Any) -> dict[str, Any]:
    from dalidr.training.loader import ReinforcedLoader

    p = _paths(args)
    return _loader_figures(
        lambda: ReinforcedLoader(str(p["loader_store"]), p["tree"], _loader_config(args),
                                 rank=0, world=world or args.world, **options),
        lambda loader: epoch_first_batch(loader, 1))


def step_reinforced_tree(args: argparse.Namespace) -> dict[str, Any]:
    return _reinforced(args)


def step_reinforced_tree_64(args: argparse.Namespace) -> dict[str, Any]:
    return _reinforced(args, world=RANKS)


def step_reinforced_file_list(args: argparse.Namespace) -> dict[str, Any]:
    return _reinforced(args, file_list=_paths(args)["file_list"])


def step_reinforced_manifest(args: argparse.Namespace) -> dict[str, Any]:
    from dalidr.training.loader import DatasetCheck

    return _reinforced(args, check=DatasetCheck.MANIFEST)


def step_plain(args: argparse.Namespace) -> dict[str, Any]:
    from dalidr.training.plain_loader import PlainLoader

    return _loader_figures(lambda: PlainLoader(_paths(args)["tree"], _loader_config(args),
                                               size=args.size, rank=0, world=args.world),
                           lambda loader: epoch_first_batch(loader, 1))


def _plain_recipe(args: argparse.Namespace, cold: bool) -> dict[str, Any]:
    from dalidr.augment.recipe import recipe
    from dalidr.training.plain_loader import PlainLoader

    cache = _paths(args)["tree"] / ".dalidr"
    if cold:
        shutil.rmtree(cache, ignore_errors=True)
    return _loader_figures(
        lambda: PlainLoader(_paths(args)["tree"], _loader_config(args), size=args.size,
                            rank=0, world=args.world, recipe=recipe("rrc+ra/re")),
        lambda loader: epoch_first_batch(loader, 1))


def step_plain_recipe_cold(args: argparse.Namespace) -> dict[str, Any]:
    return _plain_recipe(args, cold=True)


def step_plain_recipe_warm(args: argparse.Namespace) -> dict[str, Any]:
    return _plain_recipe(args, cold=False)


STEPS: dict[str, Step] = {
    "dali_baseline": step_dali_baseline,
    "list_tree": step_list_tree,
    "list_file_list": step_list_file_list,
    "list_shared_first": step_list_shared,
    "list_shared_mapped": step_list_shared,
    "manifest": step_manifest,
    "teacher": step_teacher,
    "inspect": step_inspect,
    "verify": step_verify,
    "reinforced_tree": step_reinforced_tree,
    "reinforced_tree_w64": step_reinforced_tree_64,
    "reinforced_file_list": step_reinforced_file_list,
    "reinforced_manifest": step_reinforced_manifest,
    "plain": step_plain,
    "plain_recipe_cold": step_plain_recipe_cold,
    "plain_recipe_warm": step_plain_recipe_warm,
}

# Figures that grow with the samples by construction (a per-file or per-block cost times
# the count); the others are classified from the two runs (`project`).
BY_CONSTRUCTION = {"manifest", "teacher", "verify"}
# Steps not repeated at --fit-samples: independent of the data.
NOT_FITTED = {"dali_baseline"}


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM). Not `ru_maxrss`: Linux keeps that across
    exec, so a child started by a big parent would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(args: argparse.Namespace) -> None:
    if args.sizes:
        from bench.scale_sizes import run_size_step

        out = run_size_step(args)
    else:
        out = STEPS[args.step](args)
    out["peak_rss_bytes"] = peak_rss_bytes()
    print("RESULT " + json.dumps(out))


def _foreign_share(start: Any, end: Any, children: resource.struct_rusage) -> float | None:
    """Other processes' share of all CPUs while a step ran: the machine's busy time less the
    step's own (an exited child's CPU time is in RUSAGE_CHILDREN, not in /proc)."""
    if start is None or end is None or end.wall <= start.wall:
        return None
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick = os.sysconf("SC_CLK_TCK")
    own = ((now.ru_utime + now.ru_stime) - (children.ru_utime + children.ru_stime)) * tick
    capacity = (end.wall - start.wall) * tick * (os.cpu_count() or 1)
    return min(max((end.machine_busy - start.machine_busy - own) / capacity, 0.0), 1.0)


def _child(argv: list[str], step: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(_REPO), "DALIDR_NODE_CACHE": "off"}
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--step", step]
    before, children = load_snapshot(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=_REPO)
    foreign = _foreign_share(before, load_snapshot(), children)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"step {step} failed:\n{done.stderr[-4000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    out["foreign_cpu_share"] = foreign  # other processes' share of the CPUs meanwhile
    return out


# ------------------------------------------------------------------ projections and table


def _figure(figs: dict[str, Any]) -> float:
    return float(figs.get("s", figs.get("first_batch_s", 0.0)))


def project(name: str, big: dict[str, Any], small: dict[str, Any] | None, samples: int,
            fit_samples: int) -> dict[str, Any]:
    """The figure (seconds) and peak RSS at ImageNet-21k's 14M samples: a line through the
    runs at `fit_samples` and `samples` (fixed costs such as building the DALI graph do not
    scale), or proportional for figures that are a per-file cost times the count. What it
    grows with: "samples" where the line's growth is over a quarter of the figure at N,
    else "neither". No figure grows with ranks: a rank's costs are its node's listing (made
    once per node, `dalidr.data.node_cache`) and its own epoch share (N / world, which shrinks);
    the `reinforced_tree_w64` row measures rank 0 of 64 directly."""
    out: dict[str, Any] = {}
    for key, value in (("s", _figure(big)), ("peak_rss_bytes", float(big["peak_rss_bytes"]))):
        if name in BY_CONSTRUCTION and key == "s":
            slope = value / samples
        elif small is None:
            slope = 0.0
        else:
            base = _figure(small) if key == "s" else float(small["peak_rss_bytes"])
            slope = max(0.0, (value - base) / (samples - fit_samples))
        out[f"{key}_at_14m"] = value + slope * (IMAGENET_21K - samples)
        if key == "s":
            grows = name in BY_CONSTRUCTION or slope * samples > 0.25 * value
            out["grows_with"] = "samples" if grows else "neither"
    return out


def _table(results: dict[str, Any], args: argparse.Namespace) -> str:
    base = results["steps"]["dali_baseline"]["peak_rss_bytes"]
    rows = [f"| step | s at {args.samples:,} | peak RSS MB (over DALI) | grows with | "
            "s at 14M | RSS MB at 14M |", "|---|---|---|---|---|---|"]
    for name, figs in results["steps"].items():
        proj = results["projections"][name]
        note = " (extrap.)" if figs.get("extrapolated") or name == "teacher" else ""
        rows.append(f"| {name} | {_figure(figs):.2f}{note} | "
                    f"{figs['peak_rss_bytes'] / 2**20:.0f} "
                    f"({(figs['peak_rss_bytes'] - base) / 2**20:+.0f}) | {proj['grows_with']} | "
                    f"{proj['s_at_14m']:.1f} | {proj['peak_rss_bytes_at_14m'] / 2**20:.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.step:
        run_child(args)
        return {}
    if args.sizes:
        from bench.scale_sizes import main_sizes

        return main_sizes(argv, args)
    machine = describe_machine()
    print(summary(machine))
    if args.fit_samples >= args.samples:
        args.fit_samples = 0
    small_argv = [*argv, "--samples", str(args.fit_samples), "--teacher-blocks", "1"]
    fit: dict[str, Any] = {}
    if args.fit_samples:  # the small run first: it fits the projections' lines
        print(f"built {args.fit_samples}: {build(parse_args(small_argv))}")
        shutil.rmtree(_paths(parse_args(small_argv))["node_cache"], ignore_errors=True)
        for name in STEPS:
            if name not in NOT_FITTED:
                fit[name] = _child(small_argv, name)
                print(f"{args.fit_samples} {name}: {json.dumps(fit[name])}", flush=True)
    built = build(args)
    print(f"built {args.samples}: {built}")
    shutil.rmtree(_paths(args)["node_cache"], ignore_errors=True)
    steps: dict[str, Any] = {}
    for name in STEPS:
        steps[name] = _child(argv, name)
        print(f"{args.samples} {name}: {json.dumps(steps[name])}", flush=True)
    results: dict[str, Any] = {
        "command": "python bench/scale.py " + " ".join(argv),
        "machine": machine, "samples": args.samples, "classes": args.classes,
        "world": args.world, "rank": 0, "batch": args.batch, "size": args.size,
        "fit_samples": args.fit_samples, "build_s": built, "steps": steps, "fit_steps": fit,
        "projections": {name: project(name, figs, fit.get(name), args.samples,
                                      args.fit_samples) for name, figs in steps.items()},
        "projected_samples": IMAGENET_21K, "projected_ranks": RANKS,
        "notes": [
            "hard links share their sources' pages: file reads are page-cache warm",
            f"manifest and verify hash {args.manifest_sample} / {args.verify_sample} files "
            "and are extrapolated linearly to every file",
            f"teacher: create_store + {args.teacher_blocks} blocks with a cheap teacher "
            "(no decode, no forward), extrapolated to every block; store files and bytes "
            "likewise",
            f"reinforced loaders serve a complete {args.loader_slots}-slot store",
        ],
    }
    table = _table(results, args)
    results["table"] = table
    out = Path(args.out or "bench/results/scale.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    return results


if __name__ == "__main__":
    main()
