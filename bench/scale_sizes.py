"""Scale past ImageNet (`python bench/scale.py --sizes 13700000,27400000`): issue 28's sizes.

For each size N (ImageNet-22k's 13.7M samples, then twice that, so growth shows) this builds
once under `--workdir`, resumably, a synthetic dataset as a FILE LIST, not a tree (a tree of
tens of millions of hard links is hours of `os.link`; `tests/scale_builder.listed_data`:
every line names a readable file, class folders are symlinks into a few hundred pools of hard
links to `--size-sources` real JPEGs), and a complete loader store of `--loader-slots` slots
(`template_store`: every block committed, by `--build-workers` processes). It measures, each
in a fresh process so that its peak RSS is its own:

- `list_file_list`: reading the file list (`list_dataset(root, file_list)`), as a listing
  check would at start (a `DatasetCheck.MANIFEST` loader reads none);
- `reinforced_w<W>` for each of `--size-worlds` (issue 28: 8 and 64): `ReinforcedLoader`
  with `check=DatasetCheck.MANIFEST` for rank 0 of W: constructor, first batch, start (both),
  peak RSS, and the epoch plan (`epoch_plan_s`: epoch 1's plan and first piece, asked for
  right after the first batch, `bench.scale.epoch_first_batch`; `epoch_plan_awaited_s`: the
  whole of planning epoch 2 and reading all its records and targets, `whole_epoch`); the start
  figures are medians over `--start-repeats` fresh processes (`reinforced_start_w<W>`: the
  start alone), since one start varies by about a second on a 2-core machine;
- `teacher`: the teacher pass's bookkeeping with a trivially cheap teacher, N x
  `--teacher-slots` slots x top-`--k`: creating the store (its manifest written), then
  `--teacher-blocks` blocks drawn, top-k encoded and written by a plain `StoreWriter`
  (`fill_blocks`): seconds per block, and what grows with N;
- the loader store's objects and bytes, by group (counted on disk, no process);
- `dali_baseline` once: a plain DALI pipeline on one batch, the process whose peak RSS a
  loader's is compared with.

Then issue 28's targets as verdicts, for the first size (13.7M) and the growth to the second:
start <= 10 s; RSS over plain DALI <= 0.5 GB at world 64 and <= 1.5 GB at world 8; start
growth <= 10 %; and a projection to DataCompDR-1B's shape (1.4B samples x 10 slots, world
1,024) from the measured per-sample constants, formula beside each number
(`bench/scale_projection.py`). JSON to `--out` (default `bench/results/scale-sizes.json`),
with the machine and the command. Trade-off of the synthetic store: every block holds the
first block's records and top-k (what the loader reads costs the same; `teacher` measures the
real per-block bookkeeping), and the manifest's content hashes repeat with the sources, so its
on-disk bytes are understated (the projection counts 32 incompressible bytes per hash).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe_machine, summary
from bench.scale import (
    _child,
    _loader_config,
    _loader_figures,
    _timed,
    _tree_bytes,
    dali_baseline,
    epoch_first_batch,
    whole_epoch,
)
from bench.scale_projection import census, project_datacomp, size_table, verdicts


def sizes_of(args: argparse.Namespace) -> list[int]:
    return [int(v) for v in str(args.sizes).split(",") if v.strip()]


def worlds_of(args: argparse.Namespace) -> list[int]:
    return [int(v) for v in str(args.size_worlds).split(",") if v.strip()]


def size_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Where size `args.samples` is built (one folder per size, classes and sources)."""
    work = (Path(args.workdir)
            / f"list-n{args.samples}-c{args.size_classes}-s{args.size_sources}")
    return {"work": work, "loader_store": work / f"loader-{args.loader_slots}slots.zarr",
            "teacher_store": work / f"teacher-{args.teacher_slots}x{args.k}.zarr"}


def _store_config(args: argparse.Namespace, slots: int) -> Any:
    from dalidr.augment.recipe import recipe
    from store.config import StoreConfig

    return StoreConfig(recipe=recipe("rrc+ra/re", output_size=args.size),
                       teacher="cheap stand-in (bench/scale.py --sizes)", seed=0, slots=slots,
                       k=args.k, num_classes=args.size_classes, slot_group=min(5, slots))


def _data(args: argparse.Namespace) -> Any:
    from tests.scale_builder import listed_data

    return listed_data(size_paths(args)["work"], args.samples, args.size_classes,
                       args.size_sources)


def _built_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(data root, file list) of size `args.samples`, as `build_size` left them: what a loader
    step needs, without `_data`'s pass over the source JPEGs (made or checked with PIL), whose
    memory would count in the step's peak RSS but not in the plain DALI process's."""
    work = size_paths(args)["work"]
    root, file_list = work / "data", work / "files.txt"
    if not (root.is_dir() and file_list.is_file()):
        raise FileNotFoundError(f"{work}: build the size first (`build_size`)")
    return root, file_list


def build_size(args: argparse.Namespace) -> dict[str, float]:
    """The file-list dataset and the complete loader store of size `args.samples`, made or
    resumed; seconds each took (near 0 when already built)."""
    from tests.scale_builder import template_store

    data, data_s = _timed(lambda: _data(args))
    _, store_s = _timed(lambda: template_store(
        str(size_paths(args)["loader_store"]), data, _store_config(args, args.loader_slots),
        workers=args.build_workers))
    return {"data_s": data_s, "loader_store_s": store_s, "workers": args.build_workers}


# ------------------------------------------------------------------ steps (child processes)


def step_dali_baseline(args: argparse.Namespace) -> dict[str, Any]:
    return dali_baseline(args, size_paths(args)["work"] / "sources")


def step_list_file_list(args: argparse.Namespace) -> dict[str, Any]:
    from dalidr.data.dataset import list_dataset

    root, file_list = _built_paths(args)
    listing, took = _timed(lambda: list_dataset(root, file_list, share=False))
    return {"s": took, "samples": len(listing), "listing_bytes": int(
        listing.paths.data.nbytes + listing.paths.offsets.nbytes + listing.labels.nbytes)}


def _reinforced_manifest(args: argparse.Namespace, world: int,
                         whole: bool = True) -> dict[str, Any]:
    from dalidr.training.loader import DatasetCheck, ReinforcedLoader

    root, file_list = _built_paths(args)
    return _loader_figures(
        lambda: ReinforcedLoader(str(size_paths(args)["loader_store"]), root,
                                 _loader_config(args), rank=0, world=world,
                                 file_list=file_list, check=DatasetCheck.MANIFEST),
        lambda loader: epoch_first_batch(loader, 1),
        awaited=(lambda loader: whole_epoch(loader, 2)) if whole else None)


def step_reinforced(args: argparse.Namespace) -> dict[str, Any]:
    """`--step reinforced_w<W>`: rank 0 of world W; `reinforced_start_w<W>`: its start only
    (constructor, first batch, epoch 1's first piece), for the repeats."""
    world = int(args.step.rsplit("_w", 1)[1])
    return _reinforced_manifest(args, world, whole=not args.step.startswith("reinforced_start"))


_START_KEYS = ("constructor_s", "first_batch_s", "s")


def _with_repeats(size_argv: list[str], name: str, first: dict[str, Any],
                  repeats: int) -> dict[str, Any]:
    """`first` (a `reinforced_w<W>` step) with its start figures replaced by their medians
    over it and `repeats - 1` more fresh processes (each run's figures kept in `<key>_runs`)."""
    runs = [first] + [_child(size_argv, name.replace("reinforced_w", "reinforced_start_w"))
                      for _ in range(max(repeats, 1) - 1)]
    out = dict(first)
    for key in _START_KEYS:
        values = [float(run[key]) for run in runs]
        out[f"{key}_runs"] = values
        out[key] = float(np.median(values))
    return out


def step_teacher(args: argparse.Namespace) -> dict[str, Any]:
    """Create the N x teacher-slots store, write a few blocks with the cheap teacher."""
    from store.writer import create_store
    from tests.scale_builder import fill_blocks, listed_manifest

    url = size_paths(args)["teacher_store"]
    manifest, manifest_s = _timed(lambda: listed_manifest(_data(args)))
    writer, create_s = _timed(lambda: create_store(
        str(url), manifest, _store_config(args, args.teacher_slots), overwrite=True))
    files0, bytes0 = _tree_bytes(url)
    blocks = list(range(min(max(args.teacher_blocks, 2), writer.num_blocks)))
    # The first block pays what a process pays once (the writer's first read of the manifest,
    # codecs): timed apart, so that the per-block figure is what every further block costs.
    _, first_block_s = _timed(lambda: fill_blocks(writer, manifest, blocks[:1]))
    _, rest_s = _timed(lambda: fill_blocks(writer, manifest, blocks[1:]))
    blocks_s = rest_s * len(blocks) / max(len(blocks) - 1, 1)
    files1, bytes1 = _tree_bytes(url)
    shutil.rmtree(url, ignore_errors=True)  # made afresh by every run
    per_block_s = blocks_s / len(blocks)
    records = args.teacher_slots * writer.config.block_size
    return {"slots": args.teacher_slots, "block_size": writer.config.block_size,
            "manifest_s": manifest_s, "create_s": create_s, "blocks_written": len(blocks),
            "first_block_s": first_block_s,
            "per_block_s": per_block_s, "per_record_s": per_block_s / records,
            "num_blocks": writer.num_blocks,
            "s": create_s + first_block_s + per_block_s * (writer.num_blocks - 1),
            "metadata_files": files0, "metadata_bytes": bytes0,
            "per_block_files": (files1 - files0) / len(blocks),
            "per_block_bytes": (bytes1 - bytes0) / len(blocks)}


def size_steps(args: argparse.Namespace) -> dict[str, Any]:
    """Step name -> function, for one size (the DALI baseline is run once, separately)."""
    steps: dict[str, Any] = {"list_file_list": step_list_file_list}
    for world in worlds_of(args):
        steps[f"reinforced_w{world}"] = step_reinforced
    steps["teacher"] = step_teacher
    return steps


def run_size_step(args: argparse.Namespace) -> dict[str, Any]:
    if args.step == "dali_baseline":
        return step_dali_baseline(args)
    if args.step.startswith(("reinforced_w", "reinforced_start_w")):
        return step_reinforced(args)
    return size_steps(args)[args.step](args)


# ------------------------------------------------------------------ the run


def main_sizes(argv: list[str], args: argparse.Namespace) -> dict[str, Any]:
    machine = describe_machine()
    print(summary(machine))
    sizes = sizes_of(args)
    out = Path(args.out or "bench/results/scale-sizes.json")
    results: dict[str, Any] = {
        "command": "python bench/scale.py " + " ".join(argv), "machine": machine,
        "sizes": sizes, "classes": args.size_classes, "sources": args.size_sources,
        "worlds": worlds_of(args), "rank": 0, "batch": args.batch, "size": args.size,
        "loader_slots": args.loader_slots, "teacher_slots": args.teacher_slots, "k": args.k,
        "check": "DatasetCheck.MANIFEST", "build_s": {}, "steps": {}, "store": {}}
    for n in sizes:
        size_argv = [*argv, "--samples", str(n)]
        size_args = _parse(size_argv)
        built = build_size(size_args)
        results["build_s"][str(n)] = built
        print(f"built {n:,}: {json.dumps(built)}", flush=True)
        if "dali_baseline" not in results:
            results["dali_baseline"] = _child(size_argv, "dali_baseline")
            print(f"dali_baseline: {json.dumps(results['dali_baseline'])}", flush=True)
        steps: dict[str, Any] = {}
        for name in size_steps(size_args):
            steps[name] = _child(size_argv, name)
            if name.startswith("reinforced_w"):
                steps[name] = _with_repeats(size_argv, name, steps[name], args.start_repeats)
            print(f"{n:,} {name}: {json.dumps(steps[name])}", flush=True)
        results["steps"][str(n)] = steps
        results["store"][str(n)] = census(size_paths(size_args)["loader_store"], n,
                                          args.loader_slots)
        print(f"{n:,} loader store: {json.dumps(results['store'][str(n)])}", flush=True)
    results["verdicts"] = verdicts(results)
    plan_scale = Path(__file__).resolve().parent / "results" / "plan-scale.json"
    results["projection"] = project_datacomp(
        results, json.loads(plan_scale.read_text()) if plan_scale.is_file() else None)
    results["notes"] = [
        "data: a file list whose lines name hard links to "
        f"{args.size_sources} real JPEGs (class folders are symlinks into shared pools): "
        "file reads are page-cache warm",
        "loader store: every block holds the first block's records and top-k "
        "(tests/scale_builder.template_store); the teacher step writes real draws",
        f"teacher: create_store + {args.teacher_blocks} blocks with a cheap teacher (no "
        f"decode, no forward), N x {args.teacher_slots} slots, extrapolated to every block",
        "GB = 1e9 bytes in the verdicts",
    ]
    results["table"] = size_table(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    print(f"wrote {out}")
    return results


def _parse(argv: list[str]) -> argparse.Namespace:
    from bench.scale import parse_args

    return parse_args(argv)

