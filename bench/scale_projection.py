"""Issue 28's verdicts and the projection to DataCompDR-1B, from `bench/scale.py --sizes` runs.

Targets (issue 28, item 5), judged at the first size (13.7M, ImageNet-22k's count) and on the
growth to the second (27.4M): a `DatasetCheck.MANIFEST` loader starts (constructor + first
batch) in <= 10 s; its peak RSS exceeds a plain DALI process's by <= 0.5 GB at world 64 and
<= 1.5 GB at world 8 (GB = 1e9 bytes); its start grows <= 10 % from one size to the next.
Where the run's sizes are not 13.7M and 27.4M, each verdict says at which size it was judged.

The projection to 1.4B samples x 10 slots at world 1,024 uses constants measured here, with
the formula printed beside each number:

- store bytes: the loader store's data bytes per record (records, top-k and skip marks, on
  disk) x N x slots, plus its manifest bytes per sample with the hash column counted as 32
  incompressible bytes (the synthetic hashes repeat and compress; real ones do not), plus the
  commit map's bytes per block;
- store objects: the store's metadata files plus its objects per block x ceil(N / block);
- per-rank memory and the awaited epoch read: the line v = a + b N + c N / world fitted
  (least squares, b and c >= 0; the epoch read with b = 0, since a rank reads only its share)
  through every (size, world) measured, evaluated at (1.4B, 1,024): a is what no size or world
  changes, b what every rank pays per sample of the dataset, c what a rank pays per sample it
  serves;
- start: what the first batch waits for, a + k x blocks + p x N / world: the blocks of the
  first two batches (from the real plan, at each measured shape and at 1.4B; they saturate at
  128), the plan's cost per position p from `bench/plan_scale.py`, a and k fitted;
- plan time: `bench/plan_scale.py`'s plan of rank 0 of 1,024 at 1.4B, measured there
  (`bench/results/plan-scale.json`), when present;
- bookkeeping: the teacher step's seconds per block, their mean over the sizes (no per-block
  step reads the whole store any more), x the number of blocks, per teacher process, scaled
  to 10 slots per record;
- the file list read: its seconds, a + b N, at 1.4B lines.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["census", "verdicts", "project_datacomp", "size_table", "fit_line"]

DATACOMP = 1_400_000_000
DATACOMP_SLOTS = 10
DATACOMP_WORLD = 1024
TARGET_SAMPLES = 13_700_000
GB = 1e9
# Issue 28, item 5.
START_S = 10.0
RSS_OVER_DALI = {64: 0.5 * GB, 8: 1.5 * GB}  # world -> bytes
START_GROWTH = 0.10
# Issue 28, item 1: per-rank resident metadata <= 16 B x N / world + 256 MB.
MANIFEST_BUDGET = (16.0, 256e6)


def census(store: Path, num_samples: int, slots: int) -> dict[str, Any]:
    """Objects and bytes of a store on disk, by top-level group, and per block and record."""
    from store.layout import open_layout

    layout = open_layout(str(store))
    groups: dict[str, dict[str, int]] = {}
    metadata = 0
    for dirpath, _, names in os.walk(store):
        rel = Path(dirpath).relative_to(store).parts
        group = groups.setdefault(rel[0] if rel else "", {"files": 0, "bytes": 0})
        for name in names:
            group["files"] += 1
            group["bytes"] += os.stat(os.path.join(dirpath, name)).st_size
            metadata += name == "zarr.json"
    files = sum(g["files"] for g in groups.values())
    blocks = layout.num_blocks

    def size(*names: str) -> int:
        return sum(groups.get(name, {}).get("bytes", 0) for name in names)

    manifest_hash = sum(os.stat(os.path.join(d, f)).st_size for d, _, fs in
                        os.walk(store / "manifest" / "sha256") for f in fs)
    return {"files": files, "bytes": size(*groups), "metadata_files": metadata,
            "num_blocks": blocks, "block_size": layout.config.block_size,
            "objects_per_block": (files - metadata) / blocks,
            "data_bytes_per_record": size("records", "topk", "skipped") / (num_samples * slots),
            "manifest_bytes_per_sample": size("manifest") / num_samples,
            "manifest_hash_bytes_per_sample": manifest_hash / num_samples,
            "commit_bytes_per_block": size("commit_map") / blocks, "groups": groups}


def _start(figs: dict[str, Any]) -> float:
    return float(figs["constructor_s"] + figs["first_batch_s"])


def _verdict(target: str, measured: float, limit: float, at: int) -> dict[str, Any]:
    return {"target": target, "measured": measured, "limit": limit, "met": measured <= limit,
            "at_samples": at, "note": "" if at == TARGET_SAMPLES else
            f"at {at:,} samples; the target is set at {TARGET_SAMPLES:,}"}


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    sizes, steps = results["sizes"], results["steps"]
    base, worlds = sizes[0], results["worlds"]
    dali = results["dali_baseline"]["peak_rss_bytes"]
    out = [_verdict(f"start <= {START_S:.0f} s, world {w}",
                    _start(steps[str(base)][f"reinforced_w{w}"]), START_S, base)
           for w in worlds]
    out += [_verdict(f"RSS over plain DALI <= {limit / GB:.1f} GB, world {w}",
                     steps[str(base)][f"reinforced_w{w}"]["peak_rss_bytes"] - dali, limit, base)
            for w, limit in RSS_OVER_DALI.items() if w in worlds]
    for low, high in itertools.pairwise(sizes):
        for w in worlds:
            growth = (_start(steps[str(high)][f"reinforced_w{w}"])
                      / _start(steps[str(low)][f"reinforced_w{w}"]) - 1)
            verdict = _verdict(f"start growth {low:,} -> {high:,} <= {START_GROWTH:.0%}, "
                               f"world {w}", growth, START_GROWTH, low)
            if (low, high) == (TARGET_SAMPLES, 2 * TARGET_SAMPLES):
                verdict["note"] = ""
            out.append(verdict)
    return out


def fit_line(points: list[tuple[int, int, float]], by_world: bool = True,
             by_dataset: bool = True) -> tuple[float, float, float]:
    """(a, b, c) of v = a + b N + c N / world, least squares over (N, world, v) points, with
    b, c >= 0 (the subset of terms whose fit is non-negative with the least residual); c = 0
    unless `by_world`, b = 0 unless `by_dataset` (what only a rank's share can cost)."""
    n = np.array([p[0] for p in points], np.float64)
    w = np.array([p[1] for p in points], np.float64)
    v = np.array([p[2] for p in points], np.float64)
    columns = {"a": np.ones_like(n), "b": n, "c": n / w}
    best: tuple[float, dict[str, float]] | None = None
    options = ((("a", "b", "c"), ("a", "c"), ("a", "b"), ("a",)) if by_world
               else (("a", "b"), ("a",)))
    options = tuple(t for t in options if by_dataset or "b" not in t)
    for terms in options:
        matrix = np.stack([columns[t] for t in terms], axis=1)
        if np.linalg.matrix_rank(matrix) < len(terms):
            continue
        coef = np.linalg.lstsq(matrix, v, rcond=None)[0]
        fitted = dict(zip(terms, coef.tolist(), strict=True))
        if fitted.get("b", 0.0) < 0 or fitted.get("c", 0.0) < 0:
            continue
        residual = float(((matrix @ coef - v) ** 2).sum())
        if best is None or residual < best[0] - 1e-12 * max(1.0, float((v ** 2).sum())):
            best = (residual, fitted)
    fitted = best[1] if best else {"a": float(v.mean())}
    return fitted.get("a", 0.0), fitted.get("b", 0.0), fitted.get("c", 0.0)


def _fitted(points: list[tuple[int, int, float]], unit: str, scale: float, per: str,
            by_world: bool = True, by_dataset: bool = True) -> dict[str, Any]:
    """The line through `points` at (1.4B, 1,024), its formula in `unit` (value / `scale`)
    and `per` (per-sample unit: "B", "ns")."""
    a, b, c = fit_line(points, by_world, by_dataset)
    value = a + b * DATACOMP + c * DATACOMP / DATACOMP_WORLD
    per_scale = {"B": 1.0, "ns": 1e-9}[per]
    formula = f"{a / scale:.3g} {unit} + {b / per_scale:.3g} {per} x N"
    if by_world:
        formula += f" + {c / per_scale:.3g} {per} x N / world"
    return {"value": value, "a": a, "b_per_sample": b, "c_per_served_sample": c,
            "formula": formula, "points": len(points)}


def project_datacomp(results: dict[str, Any], plan_scale: dict[str, Any] | None
                     ) -> dict[str, Any]:
    """1.4B samples x 10 slots at world 1,024 (module docstring), formula beside each number."""
    sizes, steps, worlds = results["sizes"], results["steps"], results["worlds"]
    dali = results["dali_baseline"]["peak_rss_bytes"]
    store = results["store"][str(sizes[-1])]
    blocks = -(-DATACOMP // store["block_size"])
    out: dict[str, Any] = {"samples": DATACOMP, "slots": DATACOMP_SLOTS,
                           "world": DATACOMP_WORLD, "blocks": blocks,
                           "from_sizes": sizes}
    manifest_bps = (store["manifest_bytes_per_sample"] - store["manifest_hash_bytes_per_sample"]
                    + 32)
    data = store["data_bytes_per_record"] * DATACOMP * DATACOMP_SLOTS
    manifest = manifest_bps * DATACOMP
    commits = store["commit_bytes_per_block"] * blocks
    out["store_bytes"] = {
        "value": data + manifest + commits, "records_and_targets": data, "manifest": manifest,
        "commit_map": commits,
        "formula": f"{store['data_bytes_per_record']:.2f} B x N x slots + {manifest_bps:.1f} B "
                   f"x N + {store['commit_bytes_per_block']:.0f} B x ceil(N / "
                   f"{store['block_size']})",
        "note": "records and top-k of the cheap teacher (fixed probabilities) compress "
                "better than a real teacher's; bench/store.py measures a realistic one"}
    out["store_objects"] = {
        "value": store["metadata_files"] + store["objects_per_block"] * blocks,
        "formula": f"{store['metadata_files']} metadata files + "
                   f"{store['objects_per_block']:.2f} objects x ceil(N / "
                   f"{store['block_size']})",
        "note": "the difficulty arrays (derived/) add 2 objects per block once written"}
    from store.config import block_size_for

    chosen = block_size_for(DATACOMP)
    out["store_objects_reinforce_default"] = {
        "value": store["metadata_files"] + store["objects_per_block"] * -(-DATACOMP // chosen),
        "block_size": chosen,
        "formula": f"{store['metadata_files']} metadata files + "
                   f"{store['objects_per_block']:.2f} objects x ceil(N / {chosen})",
        "note": "the block size `dalidr reinforce` picks for N without --block-size "
                "(store.config.block_size_for: at most 131,072 blocks); a block's reads then "
                f"decode {chosen // store['block_size']}x the bytes of the measured blocks"}
    loaders = [(n, w, steps[str(n)][f"reinforced_w{w}"]) for n in sizes for w in worlds]
    memory = _fitted([(n, w, f["peak_rss_bytes"] - dali) for n, w, f in loaders],
                     "MB", 1e6, "B")
    budget = MANIFEST_BUDGET[0] * DATACOMP / DATACOMP_WORLD + MANIFEST_BUDGET[1]
    # What grows with the samples, against the budget for resident metadata (the
    # fixed part, a, is the loader's buffers and libraries beyond a plain DALI process).
    memory["per_sample_part"] = memory["value"] - memory["a"]
    memory["issue_budget"] = budget
    memory["issue_budget_formula"] = "16 B x N / world + 256 MB (issue 28, item 1)"
    out["rank_memory_over_dali_bytes"] = memory
    out["start_s"] = _start_projection(results, loaders, plan_scale)
    # A rank's epoch read costs by its share alone (its blocks): no term in N.
    out["epoch_read_s"] = _fitted([(n, w, float(f["epoch_plan_awaited_s"]))
                                   for n, w, f in loaders], "s", 1.0, "ns", by_dataset=False)
    out["epoch_read_s"]["note"] = ("a rank's epoch: plan + its records and targets read "
                                   "(ReinforcedLoader._epoch_data, awaited)")
    if plan_scale is not None:
        real = plan_scale["datacomp_1_4B_world_1024"]
        out["plan_s"] = {"value": real["measured"]["plan_s"],
                         "projected": real["projected"]["plan_s"],
                         "formula": real["projected"]["plan_s_formula"],
                         "note": "bench/results/plan-scale.json: plan_epoch for rank 0 of "
                                 "1,024 at 1.4B, measured (projected beside it)"}
    teacher = [(n, 1, steps[str(n)]["teacher"]) for n in sizes]
    slots = teacher[0][2]["slots"]
    # Nothing a block's bookkeeping does reads the whole store: the mean per block.
    per_block = _fitted([(n, 1, f["per_block_s"] * DATACOMP_SLOTS / slots)
                         for n, _, f in teacher], "s", 1.0, "ns", by_world=False,
                        by_dataset=False)
    out["bookkeeping_s"] = {
        "value": per_block["value"] * blocks, "per_block_s": per_block["value"],
        "formula": f"({per_block['formula']}) per block "
                   f"x ceil(N / {store['block_size']}), one teacher process",
        "note": f"measured at {slots} slots per sample, scaled per record to "
                f"{DATACOMP_SLOTS}"}
    out["file_list_read_s"] = _fitted([(n, 1, steps[str(n)]["list_file_list"]["s"])
                                       for n in sizes], "s", 1.0, "ns", by_world=False)
    return out


def first_batches_blocks(samples: int, world: int, block_size: int, batches: int = 2,
                         batch: int = 64) -> int:
    """Distinct blocks the first `batches` batches of rank 0 of `world` draw from (epoch 0's
    plan, `store.plan`): what a loader reads before its first batch (DALI's first run takes
    `prefetch_depth` = 2 iterations)."""
    from store.plan import PlanSpec, plan_epoch

    plan = plan_epoch(PlanSpec(samples, 5, 5, block_size, 0), 0, 0, world)
    return int(np.unique(plan.samples[:batches * batch] // block_size).size)


def _start_projection(results: dict[str, Any], loaders: list[tuple[int, int, dict[str, Any]]],
                      plan_scale: dict[str, Any] | None) -> dict[str, Any]:
    """The start as what it waits for: a + k x blocks + plan, where blocks are those of the
    first two batches (they saturate at 2 x 64 once a rank holds many blocks, so a line in N
    would overstate a billion) and the plan costs p x N / world (`bench/plan_scale.py`'s
    per-position cost, else 413 ns); a and k fitted through the measured starts."""
    block = results["store"][str(results["sizes"][-1])]["block_size"]
    per_position = 413e-9
    if plan_scale is not None:
        real = plan_scale["datacomp_1_4B_world_1024"]["measured"]["plan_s"]
        per_position = real / (DATACOMP / DATACOMP_WORLD)
    blocks = [first_batches_blocks(n, w, block) for n, w, _ in loaders]
    y = np.array([_start(f) - per_position * n / w for n, w, f in loaders])
    matrix = np.stack([np.ones(len(blocks)), np.array(blocks, np.float64)], axis=1)
    a, k = np.linalg.lstsq(matrix, y, rcond=None)[0].tolist()
    at = first_batches_blocks(DATACOMP, DATACOMP_WORLD, block)
    value = a + k * at + per_position * DATACOMP / DATACOMP_WORLD
    measured = ", ".join(f"{n / 1e6:g}M/w{w}: {b}" for (n, w, _), b in zip(loaders, blocks,
                                                                           strict=True))
    return {"value": value, "a": a, "per_block_s": k, "plan_per_position_s": per_position,
            "blocks_at_projection": at, "blocks_measured": blocks,
            "formula": f"{a:.2f} s + {k * 1e3:.1f} ms x blocks of the first 2 batches ({at} at "
                       f"1.4B, world 1,024; measured {measured}) + {per_position * 1e9:.0f} ns "
                       "x N / world (the plan)"}


def _mb(value: float) -> str:
    return f"{value / 1e6:,.0f}"


def size_table(results: dict[str, Any]) -> str:
    """Per size one row, then the verdicts, then the projection; printed last."""
    worlds, dali = results["worlds"], results["dali_baseline"]["peak_rss_bytes"]
    head = ["N", "list s"]
    for w in worlds:
        head += [f"start s w{w} (ctor + 1st)", f"RSS over DALI MB w{w}", f"epoch s w{w}"]
    head += ["teacher s/block", "store objects"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in results["sizes"]:
        steps = results["steps"][str(n)]
        cells = [f"{n:,}", f"{steps['list_file_list']['s']:.2f}"]
        for w in worlds:
            f = steps[f"reinforced_w{w}"]
            cells += [f"{_start(f):.2f} ({f['constructor_s']:.2f} + {f['first_batch_s']:.2f})",
                      _mb(f["peak_rss_bytes"] - dali), f"{f['epoch_plan_awaited_s']:.2f}"]
        cells += [f"{steps['teacher']['per_block_s']:.3f}",
                  f"{results['store'][str(n)]['files']:,}"]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append("")
    for v in results["verdicts"]:
        shown = (f"{v['measured']:+.1%}" if "growth" in v["target"] else
                 f"{v['measured'] / GB:.2f} GB" if "RSS" in v["target"] else
                 f"{v['measured']:.2f} s")
        rows.append(f"{'MET ' if v['met'] else 'MISSED'} {v['target']}: {shown}"
                    + (f" ({v['note']})" if v["note"] else ""))
    p = results["projection"]
    memory = p["rank_memory_over_dali_bytes"]
    rows += ["", f"Projected to {p['samples']:,} samples x {p['slots']} slots, world "
                 f"{p['world']:,} (from {', '.join(f'{n:,}' for n in p['from_sizes'])}):"]
    lines = [("store bytes", f"{p['store_bytes']['value'] / 1e12:.2f} TB",
              p["store_bytes"]["formula"]),
             ("store objects", f"{p['store_objects']['value']:,.0f}",
              p["store_objects"]["formula"]),
             ("store objects, reinforce's default block size",
              f"{p['store_objects_reinforce_default']['value']:,.0f}",
              p["store_objects_reinforce_default"]["formula"]),
             ("rank memory over DALI", f"{_mb(memory['value'])} MB, of which "
              f"{_mb(memory['per_sample_part'])} MB grows with N (issue budget for "
              f"metadata: {_mb(memory['issue_budget'])} MB)", memory["formula"]),
             ("start", f"{p['start_s']['value']:.1f} s", p["start_s"]["formula"]),
             ("epoch read per rank", f"{p['epoch_read_s']['value']:.1f} s",
              p["epoch_read_s"]["formula"])]
    if "plan_s" in p:
        lines.append(("epoch plan per rank", f"{p['plan_s']['value']:.2f} s (measured)",
                      p["plan_s"]["formula"]))
    lines += [("teacher bookkeeping", f"{p['bookkeeping_s']['value'] / 3600:,.1f} h",
               p["bookkeeping_s"]["formula"]),
              ("file list read", f"{p['file_list_read_s']['value']:.0f} s",
               p["file_list_read_s"]["formula"])]
    rows += [f"- {name}: {value}   [{formula}]" for name, value, formula in lines]
    return "\n".join(rows)
