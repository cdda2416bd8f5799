"""Curricula against the strong store's trade-off: top-1 of `dr` students per schedule, over seeds.

The paper finds that strong reinforcements (RandAugment, erase, mixing) hurt small students, and
that curricula over the reinforcements ease it. This runs the demo's protocol (Fashion-MNIST, 50
training images per class, 60 epochs, 20 slots, the kept teacher ensemble, 32 px students) with:

- the RRC store (the demo's; the reference a small student does best with),
- the RRC+RA/RE store (the paper's recipe) with each `--schedules` entry: `none` (the paper's
  uniform draw) and the curricula (`dalidr train --curriculum`),

for each student and seed, and scores every run on *training-split* images no student sees
(per class the images `--val-start` .. + `--val-per-class` of Fashion-MNIST's training split),
never on the test split, so a choice made from this table does not touch the test set.

Reported per (student, schedule): top-1 mean and spread over seeds; for each curriculum, the share
of the RRC+RA/RE store's gap to the RRC store that it recovers (target: at least half for
resnet10t), and what it costs resnet26t against the uniform draw (target: at most 0.3 points).
Writes `--json` (with the machine and the command) and `--plot` (top-1 per schedule).

The stores of one seed are made once per recipe and shared by its schedules (a schedule changes
which stored view is served, not what is stored). Wall-clock is not a result here, so the run
may share the machine. Run from the repository root:
`python bench/curriculum.py` (about 70 minutes of 2 CPU cores for 3 seeds x 2 students).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.machine import describe_machine, summary

STRONG, REFERENCE = "rrc+ra/re", "rrc"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--students", default="resnet10t,resnet26t")
    parser.add_argument("--schedules", default="none,linear,step:20",
                        help="RRC+RA/RE schedules (`dalidr train --curriculum`), none first")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--train-per-class", type=int, default=50)
    parser.add_argument("--val-start", type=int, default=3000,
                        help="first per-class index of the held-out training images")
    parser.add_argument("--val-per-class", type=int, default=500)
    parser.add_argument("--out", default="runs/curriculum", help="work folder (resumable)")
    parser.add_argument("--json", default="bench/results/curriculum-cpu.json")
    parser.add_argument("--plot", default="bench/results/curriculum-cpu.png")
    return parser.parse_args(argv)


def export_data(out: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The students' training images and the held-out training-split images, as JPEG folders."""
    from dalidr.data.fashion_mnist import (
        CLASSES,
        ensure_package,
        export_image_folder,
        load_fashion_mnist,
    )

    ensure_package()  # Debian's dataset-fashion-mnist, installed with apt-get if missing
    images, labels = load_fashion_mnist("train")
    train = export_image_folder(images, labels, out / "data" / "train", CLASSES,
                                args.train_per_class)
    held = np.concatenate([np.flatnonzero(labels == c)[args.val_start:
                                                       args.val_start + args.val_per_class]
                           for c in range(len(CLASSES))])
    held.sort()
    if len(held) != args.val_per_class * len(CLASSES):
        raise SystemExit(f"the training split has too few images past index {args.val_start}")
    val = export_image_folder(images[held], labels[held], out / "data" / "val", CLASSES)
    return train.root, val.root


def run_one(args: argparse.Namespace, out: Path, train: Path, val: Path, recipe: str,
            schedule: str, seed: int) -> dict[str, dict[str, Any]]:
    from dalidr.experiment import ExperimentConfig, run_experiment

    config = ExperimentConfig(
        out=out, train=str(train), test=str(val), students=tuple(args.students.split(",")),
        modes=("dr",), student_epochs=args.epochs, recipe=recipe, slots=args.slots,
        curriculum=None if schedule == "none" else schedule, seed=seed, progress=False)
    table = run_experiment(config)
    return table["students"]


def _share_store(source: Path, target: Path) -> None:
    """Give a schedule's run the store its seed's uniform run made (same recipe and seed)."""
    if (target / "store.done.json").exists() or not (source / "store.done.json").exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "store", target / "store", dirs_exist_ok=True)
    shutil.copy2(source / "store.done.json", target / "store.done.json")


def summarise(top1: dict[str, dict[str, list[float]]], schedules: list[str],
              students: list[str]) -> dict[str, Any]:
    """Means, spreads, the gap recovered (first student) and the cost (the others)."""
    stats: dict[str, dict[str, dict[str, Any]]] = {
        student: {name: {"mean": statistics.fmean(values),
                              "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                              "runs": values}
                      for name, values in by.items()}
        for student, by in top1.items()}
    verdicts: dict[str, Any] = {}
    for student in students:
        means = {name: stats[student][name]["mean"] for name in stats[student]}
        gap = means["rrc"] - means[f"{STRONG} none"]
        for schedule in schedules[1:]:
            gain = means[f"{STRONG} {schedule}"] - means[f"{STRONG} none"]
            verdicts.setdefault(student, {})[schedule] = {
                "gain_over_uniform": gain,
                "gap_to_rrc": gap,
                "gap_recovered": gain / gap if gap > 0 else None,
            }
    return {"stats": stats, "verdicts": verdicts}


def plot(result: dict[str, Any], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = result["stats"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for offset, (student, by) in enumerate(stats.items()):
        x = np.arange(len(names)) + 0.12 * (offset - 0.5)
        means = [by[name]["mean"] for name in names]
        spread = [by[name]["stdev"] for name in names]
        ax.errorbar(x, means, yerr=spread, fmt="o-", capsize=4, label=student)
        for xi, runs in zip(x, (by[name]["runs"] for name in names), strict=True):
            ax.scatter([xi] * len(runs), runs, s=8, alpha=0.4, color="grey")
    ax.set_xticks(np.arange(len(names)), [n.replace(f"{STRONG} ", "RA/RE ") for n in names])
    ax.set_ylabel("top-1 % on held-out training images")
    ax.set_title("dr students: the strong store with curricula, against the RRC store")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    machine = describe_machine()
    print(summary(machine))
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    students = args.students.split(",")
    schedules = args.schedules.split(",")
    if schedules[0] != "none":
        raise SystemExit("--schedules must start with none (the uniform draw every curriculum "
                         "is compared with)")
    train, val = export_data(out, args)
    runs = [(REFERENCE, "none")] + [(STRONG, s) for s in schedules]
    names = ["rrc"] + [f"{STRONG} {s}" for s in schedules]
    top1: dict[str, dict[str, list[float]]] = {s: {n: [] for n in names} for s in students}
    started = time.perf_counter()
    for seed in seeds:
        for (recipe, schedule), name in zip(runs, names, strict=True):
            folder = out / f"seed{seed}" / name.replace("/", "-").replace(" ", "-").replace(
                ":", "")
            if recipe == STRONG and schedule != "none":
                _share_store(out / f"seed{seed}" / f"{STRONG.replace('/', '-')}-none", folder)
            rows = run_one(args, folder, train, val, recipe, schedule, seed)
            for student in students:
                value = rows[f"student-{student}-dr"]["top1"]
                top1[student][name].append(value)
                print(f"seed {seed} {student:>10} {name:<22} top-1 {value:.2f}", flush=True)
    result = summarise(top1, schedules, students)
    for student, by in result["stats"].items():
        for name in names:
            s = by[name]
            print(f"{student:>10} {name:<22} {s['mean']:.2f} ± {s['stdev']:.2f}")
    for student, verdict in result["verdicts"].items():
        for schedule, v in verdict.items():
            recovered = v["gap_recovered"]
            print(f"{student:>10} {schedule:<12} gain over uniform {v['gain_over_uniform']:+.2f}"
                  f", gap to RRC {v['gap_to_rrc']:.2f}"
                  + (f", recovered {100 * recovered:.0f} %" if recovered is not None else ""))
    Path(args.json).write_text(json.dumps({
        "benchmark": "curriculum", "command": "python " + " ".join(sys.argv),
        "config": vars(args), "results": result, "machine": machine,
        "wall_s": time.perf_counter() - started}, indent=2) + "\n")
    plot(result, names, Path(args.plot))
    print(f"wrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
