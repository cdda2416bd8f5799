"""`dalidr demo`: the whole system on real data, end to end, on a 2-core CPU in minutes.

The paper's claim (Dataset Reinforcement, Fig. 1, Tables 1 and 4) in miniature: a student
trained on the reinforced data against one trained on the original data, at the same epochs.
On Fashion-MNIST (Debian's `dataset-fashion-mnist`, converted to an ImageFolder of JPEGs, the
format users bring; scikit-learn's digits where apt is not allowed) the steps are:
1. train a small teacher ensemble (`dalidr train --mode erm`, one run per member), or reuse it;
2. reinforce (`dalidr reinforce`: the ensemble labels every stored view);
3. train one student with `erm` and one with `dr`, same architecture, epochs and batch;
4. evaluate (`dalidr eval`: top-1, ECE, a reliability diagram each);
then print one table and save a PNG of replayed views with the teacher's top-3.

Every step calls the same command-line entry points a user would, and every step is cached:
a finished step is skipped (its JSON summary exists), a half-finished one resumes (training
from its checkpoint, the teacher pass from the store's committed blocks).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dalidr.errors import DalidrError, DatasetError

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """The embedded default job; every field has a command-line option."""

    # Output folder for data, checkpoints, the store, reports and pictures.
    out: Path = Path("runs/demo")
    # Images per class exported from Fashion-MNIST's train and test splits.
    train_per_class: int = 200
    test_per_class: int = 100
    # Image side used by every model (Fashion-MNIST is 28 px).
    size: int = 32
    # Teacher ensemble members (timm names) and their training epochs.
    teachers: tuple[str, ...] = ("resnet10t", "resnet14t")
    teacher_epochs: int = 12
    # Student architecture and epochs (the same for erm and dr).
    student: str = "resnet10t"
    student_epochs: int = 10
    # Reinforcement: recipe preset, views per image and teacher classes kept per view.
    recipe: str = "rrc+ra/re"
    slots: int = 4
    topk: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    # Whether `apt-get install dataset-fashion-mnist` may run when the data is missing.
    allow_apt: bool = True


def _cli(args: list[str]) -> None:
    from dalidr.cli import main

    code = main([str(a) for a in args])
    if code != 0:
        raise DalidrError(f"`dalidr {' '.join(str(a) for a in args)}` exited with {code}")


def _export_data(config: DemoConfig) -> tuple[Path, Path, str]:
    from dalidr.fashion_mnist import (
        CLASSES,
        ensure_package,
        export_image_folder,
        load_digits_fallback,
        load_fashion_mnist,
    )

    if ensure_package(config.allow_apt):
        source, load, classes = "Fashion-MNIST", load_fashion_mnist, CLASSES
    else:
        source, load = "scikit-learn digits (Fashion-MNIST not installed)", load_digits_fallback
        classes = tuple(str(d) for d in range(10))
    data = config.out / "data" / ("fashion-mnist" if source == "Fashion-MNIST" else "digits")
    for split, per_class in (("train", config.train_per_class), ("test", config.test_per_class)):
        images, labels = load(split)
        export_image_folder(images, labels, data / split, classes, per_class)
    return data / "train", data / "test", source


def _done(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _train(
    config: DemoConfig, name: str, model: str, mode: str, epochs: int, train: Path, extra: list[str]
) -> dict[str, Any]:
    folder = config.out / name
    summary = folder / "summary.json"
    if (done := _done(summary)) is not None:
        print(f"[demo] {name}: cached ({summary})")
        return done
    print(f"[demo] {name}: training {model} ({mode}, {epochs} epochs)", flush=True)
    resume = ["--resume"] if (folder / "last.pt").is_file() else []
    start = time.perf_counter()
    _cli(
        [
            "train",
            "--mode",
            mode,
            "--data",
            train,
            "--model",
            model,
            "--out",
            folder,
            "--epochs",
            epochs,
            "--batch-size",
            config.batch_size,
            "--size",
            config.size,
            "--optimizer",
            "adamw",
            "--lr",
            config.lr,
            "--weight-decay",
            0.05,
            "--warmup-epochs",
            1,
            "--seed",
            config.seed,
            "--summary",
            summary,
            "--save-every",
            50,
            *resume,
            *extra,
        ]
    )
    result = json.loads(summary.read_text())
    result["wall_s"] = time.perf_counter() - start if not resume else None
    summary.write_text(json.dumps(result, indent=2))
    return result


def _evaluate(config: DemoConfig, name: str, test: Path) -> dict[str, Any]:
    out = config.out / name / "eval"
    if (done := _done(out / "eval.json")) is not None:
        return done
    _cli(
        [
            "eval",
            "--checkpoint",
            config.out / name / "last.pt",
            "--data",
            test,
            "--out",
            out,
            "--size",
            config.size,
        ]
    )
    return json.loads((out / "eval.json").read_text())


def _recipe_file(config: DemoConfig) -> Path:
    path = config.out / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"base: {config.recipe}\noutput_size: {config.size}\n")
    return path


def _teacher_views_png(config: DemoConfig, store: Path, train: Path, count: int = 6) -> Path:
    """Replayed stored views of a few images, captioned with the teacher's top-3."""
    from dalidr.dataset import list_dataset
    from dalidr.grid import save_grid
    from dalidr.replay import Replayer, ReplaySpec
    from store import StoreReader

    reader = StoreReader(str(store))
    recipe = reader.config.recipe
    listing = list_dataset(train)
    rng = np.random.default_rng(config.seed)
    samples = np.sort(rng.choice(len(listing), size=min(count, len(listing)), replace=False))
    slots = np.arange(reader.config.slots)
    records, targets = reader.read_views(
        np.repeat(samples, len(slots)), np.tile(slots, len(samples))
    )
    jpegs = [
        np.fromfile(train / listing.paths[s], dtype=np.uint8)
        for s in np.repeat(samples, len(slots))
    ]
    partners = (
        [np.fromfile(train / listing.paths[p], dtype=np.uint8) for p in records["partner"]]
        if recipe.has_mix
        else None
    )
    views = Replayer(ReplaySpec(recipe, size=128), batch_size=len(jpegs), num_threads=2)(
        jpegs, records, partners, num_samples=len(listing)
    )
    rows, captions = [], []
    for i in range(len(samples)):
        part = slice(i * len(slots), (i + 1) * len(slots))
        rows.append(views[part])
        captions.append(
            [
                " ".join(
                    f"{listing.classes[c][:4]}{round(100 * p)}"
                    for c, p in zip(cls[:3], prob[:3], strict=True)
                )
                for cls, prob in zip(targets.classes[part], targets.probs[part], strict=True)
            ]
        )
    titles = [listing.classes[listing.labels[s]] for s in samples]
    return save_grid(rows, config.out / "teacher-views.png", titles, captions)


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run (or resume) every step; returns the table as a dict and prints it."""
    start = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    train, test, source = _export_data(config)
    print(f"[demo] data: {source}, {train} and {test}", flush=True)

    members = []
    for i, arch in enumerate(config.teachers):
        _train(config, f"teacher-{i}", arch, "erm", config.teacher_epochs, train, [])
        members.append(f"{arch}@{config.out / f'teacher-{i}' / 'last.pt'}")
    teacher = ",".join(members)

    store = config.out / "store"
    marker = config.out / "store.done.json"
    if _done(marker) is None:
        print(
            f"[demo] reinforce: {len(config.teachers)} teachers, {config.slots} slots", flush=True
        )
        t0 = time.perf_counter()
        _cli(
            [
                "reinforce",
                "--data",
                train,
                "--teacher",
                teacher,
                "--recipe",
                _recipe_file(config),
                "--slots",
                config.slots,
                "--topk",
                config.topk,
                "--out",
                store,
                "--seed",
                config.seed,
                "--teacher-size",
                config.size,
                "--batch",
                256,
                "--block-size",
                256,
            ]
        )
        marker.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    from store import inspect_store

    report = inspect_store(str(store), verify=True)
    if report.problems or not report.complete:
        raise DatasetError(
            f"the demo store {store} failed its integrity check: "
            f"{(report.problems or ['incomplete'])[:3]}"
        )

    students = {
        "erm": _train(
            config, "student-erm", config.student, "erm", config.student_epochs, train, []
        ),
        "dr": _train(
            config,
            "student-dr",
            config.student,
            "dr",
            config.student_epochs,
            train,
            ["--store", store],
        ),
    }
    rows = {}
    for mode, summary in students.items():
        result = _evaluate(config, f"student-{mode}", test)
        epochs = summary["epochs"]
        rows[mode] = {
            "top1": 100 * result["top1"],
            "ece": 100 * result["ece"],
            "train_s": sum(e["seconds"] for e in epochs),
            "images_per_s": float(np.median([e["images_per_s"] for e in epochs])),
            "reliability_png": result["reliability_png"],
        }
    teacher_eval = [_evaluate(config, f"teacher-{i}", test) for i in range(len(config.teachers))]
    png = _teacher_views_png(config, store, train)
    table = {
        "data": source,
        "train_images": sum(1 for _ in train.rglob("*.jpg")),
        "test_images": sum(1 for _ in test.rglob("*.jpg")),
        "teachers": {m: 100 * t["top1"] for m, t in zip(members, teacher_eval, strict=True)},
        "store_bytes_per_record": report.bytes_per_record,
        "students": rows,
        "teacher_views_png": str(png),
        "wall_s": time.perf_counter() - start,
    }
    (config.out / "demo.json").write_text(json.dumps(table, indent=2))
    _print_table(table, config)
    return table


def _print_table(table: dict[str, Any], config: DemoConfig) -> None:
    print()
    print(
        f"dalidr demo on {table['data']}: {table['train_images']} training and "
        f"{table['test_images']} test images, {config.size} px, {config.student} student"
    )
    for member, top1 in table["teachers"].items():
        print(f"  teacher member {os.path.basename(member.split('@')[0])}: top-1 {top1:.2f}%")
    print(
        f"  store: {table['store_bytes_per_record']:.1f} bytes per record "
        f"({config.recipe}, {config.slots} slots, top-{config.topk})"
    )
    print()
    print(f"{'mode':<6}{'top-1 %':>9}{'ECE %':>8}{'train s':>9}{'loader img/s':>14}")
    for mode, row in table["students"].items():
        print(
            f"{mode:<6}{row['top1']:>9.2f}{row['ece']:>8.2f}{row['train_s']:>9.1f}"
            f"{row['images_per_s']:>14.1f}"
        )
    print()
    print(f"views with the teacher's top-3: {table['teacher_views_png']}")
    print(
        f"reliability diagrams: "
        f"{', '.join(r['reliability_png'] for r in table['students'].values())}"
    )
    print(f"whole demo: {table['wall_s']:.0f} s (cached steps skipped)")
