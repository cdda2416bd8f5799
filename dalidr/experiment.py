"""Experiments end to end: teachers, the teacher pass, students in several modes, evaluation.

`dalidr demo` (the embedded default job, `DemoConfig()`: a 2-core CPU in minutes) and
`bench/reproduce.py` (the paper's claim on the full Fashion-MNIST) are two configurations of
`run_experiment`. The paper's claim (Dataset Reinforcement, Fig. 1, Tables 1 and 4): students
trained on the reinforced data against students trained on the original data and with online
distillation, at the same epochs.
On Fashion-MNIST (Debian's `dataset-fashion-mnist`, converted to an ImageFolder of JPEGs, the
format users bring; scikit-learn's digits where apt is not allowed) the steps are:
1. train a small teacher ensemble (`dalidr train --mode erm`, one run per member), or reuse it;
2. reinforce (`dalidr reinforce`: the ensemble labels every stored view);
3. train each student architecture in each mode (`erm`, `kd`, `dr`), same epochs and batch;
4. evaluate (`dalidr eval`: top-1, ECE, a reliability diagram each) and the teacher ensemble;
then print one table and save a PNG of replayed views with the teacher's top-3.

Every step calls the same command-line entry points a user would, and every step is cached:
a finished step is skipped (its JSON summary exists), a half-finished one resumes (training
from its checkpoint, the teacher pass from the store's committed blocks).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dalidr.errors import DalidrError, DatasetError
from dalidr.teacher import Ensemble, build_teacher

__all__ = ["ExperimentConfig", "DemoConfig", "run_experiment", "run_demo"]


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment; the defaults are the embedded demo (`dalidr demo`)."""

    # Output folder for data, checkpoints, the store, reports and pictures.
    out: Path = Path("runs/demo")
    # Images per class exported from Fashion-MNIST's train and test splits.
    train_per_class: int = 200
    test_per_class: int = 100
    # Images per class the teachers train on; None: the students' training set. More (up to
    # 6000, all of it) is the paper's first guideline (Sec. 2.3): teachers trained on larger
    # data than the reinforced dataset, as its IG-ResNext teachers were; the students' set is
    # a subset of it and the test split is never seen.
    teacher_train_per_class: int | None = 600
    # Image side used by every model (Fashion-MNIST is 28 px).
    size: int = 32
    # Random-resized-crop area range of every training view (teachers, students, the store).
    # ImageNet's (0.08, 1) leaves 8 px of a 28 px garment; for small images the paper's own
    # CIFAR-100 configs use a light random crop instead, which (0.35, 1) approximates.
    crop_scale: tuple[float, float] = (0.35, 1.0)
    # Teacher ensemble members (timm names) and their training epochs; members are trained
    # with the strong recipe (`recipe`, drawn afresh each epoch), as the paper's teachers are.
    teachers: tuple[str, ...] = ("resnet10t", "resnet14t")
    teacher_epochs: int = 4
    # Student architectures, the modes each is trained in, and their epochs (the same for all).
    students: tuple[str, ...] = ("resnet10t",)
    modes: tuple[str, ...] = ("erm", "dr")
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


DemoConfig = ExperimentConfig


def _cli(args: list[str]) -> None:
    from dalidr.cli import main

    code = main([str(a) for a in args])
    if code != 0:
        raise DalidrError(f"`dalidr {' '.join(str(a) for a in args)}` exited with {code}")


def _export_data(config: ExperimentConfig) -> tuple[Path, Path, Path, str]:
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
    teacher_train = data / "train"
    splits = [("train", "train", config.train_per_class), ("test", "test", config.test_per_class)]
    if config.teacher_train_per_class is not None:
        teacher_train = data / "teacher-train"
        splits.append(("train", teacher_train.name, config.teacher_train_per_class))
    for split, folder, per_class in splits:
        images, labels = load(split)
        export_image_folder(images, labels, data / folder, classes, per_class)
    return data / "train", data / "test", teacher_train, source


def _done(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _train(
    config: ExperimentConfig,
    name: str,
    model: str,
    mode: str,
    epochs: int,
    train: Path,
    extra: list[str],
) -> dict[str, Any]:
    folder = config.out / name
    summary = folder / "summary.json"
    if (done := _done(summary)) is not None:
        print(f"[{config.out.name}] {name}: cached ({summary})")
        return done
    print(f"[{config.out.name}] {name}: training {model} ({mode}, {epochs} epochs)", flush=True)
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


def _evaluate(config: ExperimentConfig, name: str, test: Path) -> dict[str, Any]:
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


def _recipe_file(config: ExperimentConfig, base: str) -> Path:
    """`base` at the experiment's size and crop scale, as a YAML file the CLI reads."""
    name = base.replace("/", "-").replace("*", "x")
    path = config.out / f"recipe-{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    low, high = config.crop_scale
    path.write_text(
        f"base: {base}\noutput_size: {config.size}\ncrop_scale: [{low}, {high}]\n"
    )
    return path


def _teacher_views_png(config: ExperimentConfig, store: Path, train: Path, count: int = 6) -> Path:
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


class _MeanSoftmax(torch.nn.Module):
    """The ensemble as one classifier: log of the members' mean softmax (MEAL V2 eq. 1)."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.ensemble([images] * len(self.ensemble.views))
        return logits.softmax(dim=-1).mean(dim=0).clamp_min(1e-12).log()


def _evaluate_ensemble(config: ExperimentConfig, teacher: str, test: Path) -> dict[str, Any]:
    path = config.out / "teacher-ensemble.json"
    if (done := _done(path)) is not None:
        return done
    from dalidr.dataset import list_dataset
    from dalidr.evaluate import evaluate
    from dalidr.loader import Augment, LastBatch, LoaderConfig, PlainLoader, Targets

    num_classes = len(list_dataset(test).classes)
    ensemble = build_teacher(teacher, num_classes, size=config.size)
    if len(ensemble.views) != 1:
        raise DalidrError("the ensemble's members must share one view size and normalisation")
    view = ensemble.views[0]
    loader_config = LoaderConfig(
        batch_size=100,
        targets=Targets.SPARSE,
        last_batch=LastBatch.PARTIAL,
        mean=view.mean,
        std=view.std,
    )
    loader = PlainLoader(
        test, loader_config, size=config.size, augment=Augment.EVAL, num_classes=num_classes
    )
    try:
        result = evaluate(_MeanSoftmax(ensemble), loader, torch.device("cpu"))
    finally:
        loader.close()
    report = {"top1": result.top1, "ece": result.ece, "nll": result.nll}
    path.write_text(json.dumps(report, indent=2))
    return report


def _reinforce(config: ExperimentConfig, teacher: str, train: Path) -> Path:
    store = config.out / "store"
    marker = config.out / "store.done.json"
    if _done(marker) is None:
        print(
            f"[{config.out.name}] reinforce: {len(config.teachers)} teachers, {config.slots} slots",
            flush=True,
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
                _recipe_file(config, config.recipe),
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
            f"the store {store} failed its integrity check: "
            f"{(report.problems or ['incomplete'])[:3]}"
        )
    return store


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) every step; returns the results table as a dict."""
    start = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    train, test, teacher_train, source = _export_data(config)
    print(f"[{config.out.name}] data: {source}, {train} and {test}", flush=True)
    if teacher_train != train:
        print(f"[{config.out.name}] teachers train on {teacher_train}", flush=True)

    strong = _recipe_file(config, config.recipe)  # teachers, the store and online kd
    plain = _recipe_file(config, "rrc")  # erm students: the same crops and flips, no more
    members = []
    for i, arch in enumerate(config.teachers):
        # Each member its own seed: a member trained like an `erm` student would be its copy.
        extra_args = ["--seed", config.seed + 1 + i, "--augment", strong]
        _train(config, f"teacher-{i}", arch, "erm", config.teacher_epochs, teacher_train,
               extra_args)
        members.append(f"{arch}@{config.out / f'teacher-{i}' / 'last.pt'}")
    teacher = ",".join(members)
    store = _reinforce(config, teacher, train) if "dr" in config.modes else None
    extra = {
        "erm": ["--augment", plain],
        "kd": ["--teacher", teacher, "--teacher-size", config.size, "--augment", strong],
        "dr": ["--store", store],
    }

    rows: dict[str, dict[str, Any]] = {}
    for arch in config.students:
        for mode in config.modes:
            name = f"student-{arch}-{mode}"
            summary = _train(config, name, arch, mode, config.student_epochs, train, extra[mode])
            result = _evaluate(config, name, test)
            epochs = summary["epochs"]
            rows[name] = {
                "student": arch,
                "mode": mode,
                "top1": 100 * result["top1"],
                "ece": 100 * result["ece"],
                "nll": result["nll"],
                "train_s": sum(e["seconds"] for e in epochs),
                "images_per_s": float(np.median([e["images_per_s"] for e in epochs])),
                "data_wait_fraction": float(np.median([e["data_wait_fraction"] for e in epochs])),
                "reliability_png": result["reliability_png"],
            }
    members_eval = {
        m: 100 * _evaluate(config, f"teacher-{i}", test)["top1"] for i, m in enumerate(members)
    }
    ensemble = _evaluate_ensemble(config, teacher, test)
    table: dict[str, Any] = {
        "data": source,
        "train_images": sum(1 for _ in train.rglob("*.jpg")),
        "teacher_train_images": sum(1 for _ in teacher_train.rglob("*.jpg")),
        "test_images": sum(1 for _ in test.rglob("*.jpg")),
        "size": config.size,
        "teacher_members_top1": members_eval,
        "teacher_ensemble": {"top1": 100 * ensemble["top1"], "ece": 100 * ensemble["ece"]},
        "students": rows,
        "wall_s": time.perf_counter() - start,
    }
    if store is not None:
        from store import inspect_store

        table["store_bytes_per_record"] = inspect_store(str(store), verify=False).bytes_per_record
        table["teacher_views_png"] = str(_teacher_views_png(config, store, train))
    (config.out / "results.json").write_text(json.dumps(table, indent=2))
    return table


def run_demo(config: ExperimentConfig) -> dict[str, Any]:
    """The embedded default job: run (or resume) it and print its table."""
    table = run_experiment(config)
    print()
    print(
        f"dalidr demo on {table['data']}: {table['train_images']} training and "
        f"{table['test_images']} test images, {config.size} px"
    )
    for member, top1 in table["teacher_members_top1"].items():
        print(f"  teacher member {member.split('@')[0]}: top-1 {top1:.2f}%")
    ensemble = table["teacher_ensemble"]
    print(f"  teacher ensemble: top-1 {ensemble['top1']:.2f}%, ECE {ensemble['ece']:.2f}%")
    if "store_bytes_per_record" in table:
        print(
            f"  store: {table['store_bytes_per_record']:.1f} bytes per record "
            f"({config.recipe}, {config.slots} slots, top-{config.topk})"
        )
    print()
    print(f"{'student':<12}{'mode':<6}{'top-1 %':>9}{'ECE %':>8}{'train s':>9}{'loader img/s':>14}")
    for row in table["students"].values():
        print(
            f"{row['student']:<12}{row['mode']:<6}{row['top1']:>9.2f}{row['ece']:>8.2f}"
            f"{row['train_s']:>9.1f}{row['images_per_s']:>14.1f}"
        )
    print()
    if "teacher_views_png" in table:
        print(f"views with the teacher's top-3: {table['teacher_views_png']}")
    print(
        f"reliability diagrams: "
        f"{', '.join(r['reliability_png'] for r in table['students'].values())}"
    )
    print(f"whole run: {table['wall_s']:.0f} s (cached steps skipped)")
    return table
