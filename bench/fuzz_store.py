"""Fuzzing the store format at scale: thousands of mutants of two small valid stores.

Every file of each store is mutated many ways (bit flips, truncation, extension, zeroing,
deletion, swapping two chunks of an array, edited JSON values, out-of-range values or a top-k
class repeated, with every digest recomputed; and, one mutant in eight, an object replaced by
what a store may not hold: a symbolic link inside or outside the store or to a device, a FIFO, a
3 GiB sparse chunk or zarr.json; `tests/store/fuzz.py`). Invariant for every mutant:
`inspect_store`, `StoreReader` (two epochs of records and targets, and the manifest) and, for
`--loader-mutants` of them, the real `ReinforcedLoader` (DALI CPU, one epoch of images and
targets) either serve exactly what the unmutated store serves or raise a dalidr error naming the
store; never another exception type, never different data silently, never an allocation past
`--mem-gib` over the warmed-up worker (RLIMIT_DATA), never past `--timeout` seconds (the parent
kills the worker).

Write failures (`tests/store/fuzz_writes.py`): a real small `dalidr reinforce` (16 JPEGs x 2
slots in 4 blocks, a seeded random timm teacher, DALI CPU) with `OSError(ENOSPC)` injected at
its k-th write, for `--write-failures` values of k spread from the first write of the creation
to the last commit. Invariant: the pass fails with a `StoreWriteError` naming the store and the
object being written (or, during creation, the creation step: reported apart), and the same
command rerun without the fault ends byte-identical to a pass that never failed.

Stores: `mix`, the richest recipe (M*+R*: partners, boxes, RandAugment, erasing) with a
synthetic teacher, 12 samples x 4 slots in 2 blocks; `real`, real JPEGs and a real (randomly
initialised) timm teacher, 16 samples x 3 slots (RRC+RA/RE), the one the loader mutants use.

Writes what it tried and found (mutants by kind and outcome, every violation in full, the
machine) to `--out`. Run from the repository root: `python bench/fuzz_store.py` (`--quick`:
a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe_machine, summary
from dalidr.augment.recipe import recipe
from tests.store.fuzz import FuzzRunner, Outcome, Result, make_mutants, reseal_arrays, summarise
from tests.store.fuzz_writes import WriteFuzz
from tests.store.helpers import make_config, make_manifest, write_store
from tests.store_builder import build_store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=2000,
                        help="reader/inspect mutants, split over the two stores (default 2000)")
    parser.add_argument("--loader-mutants", type=int, default=24,
                        help="mutants also run through the DALI loader (default 24)")
    parser.add_argument("--write-failures", type=int, default=24,
                        help="teacher passes with the k-th write failed, k spread over the "
                             "pass (default 24, about a second each)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=2024, help="mutation seed")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant")
    parser.add_argument("--mem-gib", type=float, default=2.0,
                        help="allocation cap per mutant over the warmed-up worker, GiB")
    parser.add_argument("--out", default="bench/results/fuzz-store.json", help="JSON result")
    parser.add_argument("--quick", action="store_true", help="a few mutants, for a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.mutants, args.loader_mutants, args.write_failures = 40, 2, 4
    return args


def _run(root: Path, mutants: list, workers: int, data: Path | None, loader: bool,
         timeout: float, mem_gib: float) -> list[Result]:
    shares = [mutants[i::workers] for i in range(workers)]

    def one(share: list) -> list[Result]:
        with FuzzRunner(root, data=data, timeout_s=timeout, mem_gib=mem_gib) as runner:
            return [r for r in (runner.run(m, loader=loader) for m in share) if r is not None]

    with ThreadPoolExecutor(workers) as pool:
        return [r for part in pool.map(one, shares) for r in part]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dalidr-fuzz-bench-"))
    mix = work / "mix.zarr"
    write_store(str(mix), make_manifest(12),
                make_config(recipe=recipe("m*+r*"), slots=4, slot_group=2))
    real = build_store(work / "real", images=16, slots=3, k=2)
    real_root = Path(real.url)
    stores = {"mix": (mix, None), "real": (real_root, real.root)}
    results: dict[str, Any] = {"machine": describe_machine(), "args": vars(args), "stores": {}}
    start = time.perf_counter()
    everything: list[Result] = []
    for index, (name, (root, _)) in enumerate(stores.items()):
        count = args.mutants // 2 + (args.mutants % 2 if index == 0 else 0)
        mutants = make_mutants(root, count, seed=args.seed + index,
                               reseal_arrays=reseal_arrays(root))
        t0 = time.perf_counter()
        found = _run(root, mutants, args.workers, None, False, args.timeout, args.mem_gib)
        results["stores"][name] = {"files": sum(1 for p in root.rglob("*") if p.is_file()),
                                   "seconds": time.perf_counter() - t0, **summarise(found)}
        everything += found
    loader_mutants = make_mutants(real_root, args.loader_mutants, seed=args.seed + 7,
                                  reseal_arrays=reseal_arrays(real_root))
    t0 = time.perf_counter()
    found = _run(real_root, loader_mutants, args.workers, real.root, True, args.timeout,
                 args.mem_gib)
    results["stores"]["real+loader"] = {"seconds": time.perf_counter() - t0, **summarise(found)}
    everything += found
    if args.write_failures > 0:
        t0 = time.perf_counter()
        writes = WriteFuzz(work / "writes")
        found = [r for r in map(writes.run, writes.spread(args.write_failures)) if r is not None]
        results["stores"]["reinforce+write"] = {"writes": len(writes.writes),
                                                "seconds": time.perf_counter() - t0,
                                                **summarise(found)}
        everything += found
    results["total"] = summarise(everything)
    results["seconds"] = time.perf_counter() - start
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


def print_table(results: dict[str, Any]) -> None:
    print(summary(results["machine"]))
    print(f"{'store':16s} {'mutants':>8s} {'violations':>10s}  outcomes")
    for name, part in results["stores"].items():
        print(f"{name:16s} {part['mutants']:8d} {len(part['violations']):10d}  "
              f"{part['outcomes']}")
    total = results["total"]
    print(f"{'total':16s} {total['mutants']:8d} {len(total['violations']):10d}  "
          f"{total['outcomes']}")
    print(f"{'mutation kind':16s} {'mutants':>8s} {'violations':>10s}  outcomes")
    for kind, counts in total["by_kind"].items():
        bad = sum(n for name, n in counts.items() if Outcome[name].violation)
        print(f"{kind:16s} {sum(counts.values()):8d} {bad:10d}  {counts}")
    print(f"slowest mutant {total['max_seconds']:.2f} s, worker peak RSS "
          f"{total['max_peak_rss_mb']:.0f} MB; {results['seconds']:.0f} s in all")
    for violation in total["violations"][:20]:
        print(f"VIOLATION {violation['mutant']}: {violation['outcome']} {violation['details']}")


if __name__ == "__main__":
    main()
