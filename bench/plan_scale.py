"""Epoch plans at scale: time, memory and read locality per rank, measured and projected.

The elastic plan (`store.plan`) evaluates one global order per epoch only at the positions a
rank serves, so its cost should be O(N / world) per rank plus O(blocks) for the block shuffle,
and no figure should depend on anything else. This measures, with the real `plan_epoch`:

- per (N, world): the plan's wall-clock for rank 0 (median of `--repeats`), its peak memory
  (tracemalloc, which sees numpy's allocations), per planned sample, and its read locality
  (blocks rank 0 touches ÷ blocks / world: 1.0 is a rank reading exactly its share);
- N: ImageNet-1k (1.28M), ImageNet-22k (13.7M) and twice that (27.4M), worlds 8 and 64, with
  the store's default 4,096-sample blocks; the growth from 13.7M to 27.4M at a fixed world;
- then DataCompDR-1B's shape (1.4B samples) projected at world 1,024 from the per-sample
  constants measured at 27.4M, formula printed beside each number, and rank 0 of 1,024 planned
  for real at 1.4B to check the projection (1.37M positions; the block shuffle covers all
  341,797 blocks).

Run from the repository root: `python bench/plan_scale.py` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.machine import describe_machine, summary
from store.plan import PlanSpec, canonical_pieces, plan_epoch

SIZES = {"imagenet-1k": 1_281_167, "imagenet-22k": 13_700_000, "2x imagenet-22k": 27_400_000}
DATACOMP = 1_400_000_000
WORLDS = (8, 64)
BLOCK = 4096


def measure(num_samples: int, world: int, repeats: int) -> dict[str, Any]:
    spec = PlanSpec(num_samples, slots=10, slot_group=5, block_size=BLOCK, seed=1)
    times = []
    for epoch in range(repeats):
        started = time.perf_counter()
        plan = plan_epoch(spec, epoch, 0, world)
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    plan = plan_epoch(spec, repeats, 0, world)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    blocks = -(-num_samples // BLOCK)
    touched = len(np.unique(plan.samples // BLOCK))
    return {"num_samples": num_samples, "world": world, "planned": len(plan),
            "plan_s": statistics.median(times), "peak_bytes": peak,
            "peak_bytes_per_planned": peak / len(plan), "blocks": blocks,
            "pieces": canonical_pieces(num_samples, BLOCK), "blocks_touched": touched,
            "locality": touched / (blocks / world)}


def project(at: dict[str, Any], num_samples: int, world: int) -> dict[str, Any]:
    """Time and memory at (num_samples, world) from the per-planned-sample constants of `at`."""
    planned = -(-num_samples // world)
    per_sample_s = at["plan_s"] / at["planned"]
    return {"num_samples": num_samples, "world": world, "planned": planned,
            "plan_s": per_sample_s * planned,
            "plan_s_formula": f"{per_sample_s * 1e9:.0f} ns x N / world",
            "peak_bytes": at["peak_bytes_per_planned"] * planned,
            "peak_bytes_formula": f"{at['peak_bytes_per_planned']:.0f} B x N / world"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed plans per point")
    parser.add_argument("--out", default="bench/results/plan-scale.json", help="JSON result")
    args = parser.parse_args(argv)
    machine = describe_machine()
    print(summary(machine))
    rows = [measure(n, world, args.repeats) for n in SIZES.values() for world in WORLDS]
    for row in rows:
        print(f"N={row['num_samples']:>11,} world={row['world']:>4}: plan {row['plan_s']:.3f} s, "
              f"peak {row['peak_bytes'] / 2**20:.0f} MiB "
              f"({row['peak_bytes_per_planned']:.0f} B per planned sample), "
              f"locality {row['locality']:.2f} ({row['blocks_touched']} blocks of "
              f"{row['blocks']}, P={row['pieces']})")
    growth = {w: next(r["plan_s"] for r in rows if r["num_samples"] == SIZES["2x imagenet-22k"]
                      and r["world"] == w)
              / next(r["plan_s"] for r in rows if r["num_samples"] == SIZES["imagenet-22k"]
                     and r["world"] == w) for w in WORLDS}
    print("plan time 13.7M -> 27.4M: "
          + ", ".join(f"world {w}: x{g:.2f}" for w, g in growth.items()))
    base = next(r for r in rows if r["num_samples"] == SIZES["2x imagenet-22k"] and r["world"] == 8)
    projected = project(base, DATACOMP, 1024)
    real = measure(DATACOMP, 1024, 1)
    print(f"1.4B samples, world 1,024, projected: plan {projected['plan_s']:.2f} s "
          f"({projected['plan_s_formula']}), peak {projected['peak_bytes'] / 2**20:.0f} MiB "
          f"({projected['peak_bytes_formula']}); measured: plan {real['plan_s']:.2f} s, peak "
          f"{real['peak_bytes'] / 2**20:.0f} MiB, locality {real['locality']:.2f}")
    result = {"machine": machine, "command": "python " + " ".join(sys.argv),
              "rows": rows, "growth_13_7M_to_27_4M": growth,
              "datacomp_1_4B_world_1024": {"projected": projected, "measured": real}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
