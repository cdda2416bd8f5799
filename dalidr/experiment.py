"""`dalidr experiment`: the paper's comparison end to end on any dataset.

Dataset Reinforcement (Fig. 1, Tables 1 and 4): students trained on the reinforced data
against students trained on the original data (`erm`) and with online distillation (`kd`), at
the same epochs. On a user's ImageFolder trees (or file lists; `--train`, `--test`) or on the
built-in Fashion-MNIST (Debian's `dataset-fashion-mnist` exported as JPEGs; scikit-learn's
digits where apt is not allowed) the steps are:
1. the teacher ensemble: given (`--teacher NAME@CKPT,...`); by default the ensemble the
   project trained once on all 60,000 Fashion-MNIST training images and keeps in the
   repository (`dalidr.teacher.kept`, `bench/teachers.py`), used whenever the data has its
   classes, as users reuse pretrained models; else trained here (`--train-teachers`, or data
   with other classes): one `erm` run per member with the strong recipe drawn afresh each
   epoch (the paper's teachers are trained with strong augmentation; Sec. 2.3: on as much
   data as there is, `teacher_train`). Teachers may view every crop at a larger side than
   the students (`teacher_size`; the kept ensemble records its own);
2. the teacher pass (`reinforce`: the ensemble labels every stored view);
3. each student architecture in each mode (`erm`, `kd`, `dr`), same epochs, batch and optimiser;
4. evaluation of every student (top-1, ECE, a reliability diagram each), of every teacher
   member and of the ensemble (MEAL V2 eq. 1, mean softmax);
then one table, `results.json`, a Fig. 1-style plot and a picture of replayed views captioned
with the teacher's top-3 (`dalidr/experiment_report.py`).

`dalidr demo` is this with its defaults (`DemoConfig()`: a 2-core CPU in minutes) and
`bench/reproduce.py` the full-scale configuration. Steps call the library (`train`,
`reinforce`, `run_eval`) directly and are cached: a finished step is skipped (its JSON summary
exists), a half-finished one resumes (training from its checkpoint, the teacher pass from the
store's committed blocks). Every option and input is checked before the output folder is made.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dalidr.data.dataset import DatasetListing, list_dataset
from dalidr.errors import DatasetError, OptionError

__all__ = ["MODES", "ExperimentConfig", "DemoConfig", "ExperimentData", "TeacherChoice",
           "check_experiment", "choose_teacher", "run_experiment", "run_demo"]

MODES = ("erm", "kd", "dr")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment; the defaults are the embedded demo (`dalidr demo`)."""

    # Output folder for data, checkpoints, the store, reports and pictures.
    out: Path = Path("runs/demo")
    # The user's data: training and test ImageFolder roots (or the roots of the file lists'
    # relative paths), or tar shard specs (kept as text: a URL must not go through Path).
    # None: the built-in Fashion-MNIST export below.
    train: str | Path | None = None
    test: str | Path | None = None
    train_list: Path | None = None
    test_list: Path | None = None
    # Data the teachers train on (same classes), as train; None: the training set.
    teacher_train: str | Path | None = None
    teacher_train_list: Path | None = None
    # Built-in data only: images per class exported from Fashion-MNIST's train and test
    # splits, and for the teachers (None: the students' set). More teacher data (up to 6000,
    # all of it) is the paper's first guideline (Sec. 2.3): teachers trained on larger data
    # than the reinforced dataset; the students' set is a subset of it, the test split unseen.
    train_per_class: int = 50
    test_per_class: int = 1000
    teacher_train_per_class: int | None = 600
    # Image side used by every model and view (Fashion-MNIST is 28 px).
    size: int = 32
    # Random-resized-crop area range of every training view (teachers, students, the store).
    # ImageNet's (0.08, 1) leaves 8 px of a 28 px garment; for small images the paper's own
    # CIFAR-100 configs use a light random crop instead, which (0.35, 1) approximates.
    crop_scale: tuple[float, float] = (0.35, 1.0)
    # A given teacher ensemble `NAME@CKPT,...` (used as is); None: the kept ensemble below
    # (built-in data), else train `teachers` here.
    teacher: str | None = None
    # The kept ensemble (`dalidr/assets/teachers/<name>`), used when no `teacher` is given
    # and it predicts the data's classes (the built-in Fashion-MNIST's); None, or other
    # classes: train `teachers` here (`--train-teachers`).
    kept_teacher: str | None = "fashion-mnist"
    # Side the teachers view every crop at (the teacher pass, kd, their evaluation); None: the
    # kept ensemble's own side, else `size`.
    teacher_size: int | None = None
    # Teacher members to train (timm names), their epochs and their (strong) recipe, drawn
    # afresh each epoch.
    teachers: tuple[str, ...] = ("resnet10t", "resnet14t")
    teacher_epochs: int = 4
    teacher_recipe: str = "rrc+ra/re"
    # Student architectures, the modes each is trained in, and their epochs (the same for all).
    students: tuple[str, ...] = ("resnet10t",)
    modes: tuple[str, ...] = ("erm", "dr")
    student_epochs: int = 60
    # Reinforcement: the store's recipe preset (also online kd's), views per image (at most a
    # third of the epochs, the paper's guideline) and teacher classes kept per view. The
    # demo stores the crops and flips `erm` draws, so `dr` differs from `erm` only by the
    # teacher's targets (and costs what it costs); `bench/reproduce.py` stores RRC+RA/RE by
    # default (`--recipe`).
    recipe: str = "rrc"
    slots: int = 20
    # dr students: a curriculum over the store's view difficulty (`dalidr train --curriculum`).
    curriculum: str | None = None
    topk: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    # Progress bars on the long steps (when stderr is a terminal).
    progress: bool = True
    # Built-in data only: whether `apt-get install dataset-fashion-mnist` may run.
    allow_apt: bool = True


DemoConfig = ExperimentConfig


@dataclass(frozen=True)
class ExperimentData:
    """Where an experiment's three datasets are, and what they are called."""

    source: str
    train: DatasetListing
    test: DatasetListing
    teacher_train: DatasetListing
    train_list: Path | None = None
    test_list: Path | None = None
    teacher_train_list: Path | None = None


def _log(config: ExperimentConfig, text: str) -> None:
    print(f"[{config.out.name}] {text}", flush=True)


def _listing(option: str, root: str | Path, file_list: Path | None) -> DatasetListing:
    try:
        return list_dataset(root, file_list)
    except DatasetError as exc:
        raise DatasetError(f"{option}: {exc}") from exc


@dataclass(frozen=True)
class TeacherChoice:
    """The ensemble an experiment uses: its spec (None: train it here), side and origin."""

    spec: str | None
    size: int
    source: str  # "given", "kept:<name>" or "trained"
    # Where a kept ensemble's record is, and what it says (for the log).
    about: str = ""


def choose_teacher(config: ExperimentConfig, classes: tuple[str, ...] | None) -> TeacherChoice:
    """The given ensemble; else the kept one when it predicts the data's classes (`classes`
    None: not known yet, assume it does), its files checked against their digests; else one
    trained here."""
    if config.teacher is not None:
        return TeacherChoice(config.teacher, config.teacher_size or config.size, "given")
    if config.kept_teacher is not None:
        from dalidr.teacher.kept import kept_classes, kept_teacher

        if classes is None or tuple(classes) == kept_classes(config.kept_teacher):
            kept = kept_teacher(config.kept_teacher)
            measured = kept.index.get("ensemble_test", {})
            about = (f"{kept.folder / 'ensemble.json'}: {len(kept.index['members'])} members "
                     f"trained once by `{kept.index.get('command', '?')}`, test top-1 "
                     f"{measured.get('top1', float('nan')):.2f}%")
            return TeacherChoice(kept.spec, config.teacher_size or kept.size,
                                 f"kept:{kept.name}", about)
    return TeacherChoice(None, config.teacher_size or config.size, "trained")


def _check_teacher_fits(config: ExperimentConfig, num_classes: int,
                        classes: tuple[str, ...] | None) -> None:
    """A given (or kept) ensemble is built once (and dropped): every checkpoint must fit its
    architecture and the class count before anything is written."""
    choice = choose_teacher(config, classes)
    if choice.spec is not None:
        from dalidr.teacher import build_teacher

        build_teacher(choice.spec, num_classes, size=choice.size)


def check_experiment(config: ExperimentConfig) -> ExperimentData | None:
    """Every option and the user's data, before anything is written: OptionError/DatasetError
    naming the option. Returns the user's data (None: the built-in data, exported later)."""
    from dalidr.training.train import check_model_name

    for option, value in (("--epochs", config.student_epochs), ("--slots", config.slots),
                          ("--topk", config.topk), ("--batch-size", config.batch_size),
                          ("--size", config.size), ("--teacher-size", config.teacher_size or 1)):
        OptionError.unless(value >= 1, option, value, ">= 1")
    OptionError.unless(config.lr > 0, "--lr", config.lr, "> 0")
    low, high = config.crop_scale
    OptionError.unless(0 < low <= high <= 1, "--crop-scale", config.crop_scale,
                       "0 < LOW <= HIGH <= 1")
    unknown = [m for m in config.modes if m not in MODES]
    if unknown or not config.modes:
        raise OptionError.choice("--modes", ",".join(config.modes), f"a list of {MODES}")
    if not config.students:
        raise OptionError("--students is empty; give at least one timm architecture")
    for name in config.students:
        check_model_name("--students", name)
    if config.teacher is not None:
        from dalidr.teacher import parse_teacher

        for spec in parse_teacher(config.teacher):
            check_model_name("--teacher", spec.name)
            if spec.checkpoint is not None and not spec.checkpoint.is_file():
                raise OptionError(f"--teacher checkpoint {spec.checkpoint} does not exist")
    else:
        for name in config.teachers:
            check_model_name("--teachers", name)
        if config.teachers:
            OptionError.unless(config.teacher_epochs >= 1, "--teacher-epochs",
                               config.teacher_epochs, ">= 1")
        elif set(config.modes) - {"erm"}:
            raise OptionError("modes kd and dr need a teacher: --teacher NAME@CKPT,... or "
                              "--teachers NAME,... to train one")
    if (config.train is None) != (config.test is None):
        raise OptionError("--train and --test go together (or neither: built-in Fashion-MNIST)")
    if config.train is None or config.test is None:
        if config.teacher_train is not None:
            raise OptionError("--teacher-train needs --train and --test (your own data)")
        OptionError.unless(config.topk <= 10, "--topk", config.topk,
                           "1..10 (the built-in data's classes)")
        _check_teacher_fits(config, 10, None)
        return None
    train = _listing("--train", config.train, config.train_list)
    test = _listing("--test", config.test, config.test_list)
    teacher_train = train
    if config.teacher_train is not None:
        teacher_train = _listing("--teacher-train", config.teacher_train,
                                 config.teacher_train_list)
    for option, listing in (("--test", test), ("--teacher-train", teacher_train)):
        if listing.classes != train.classes:
            raise DatasetError(f"{option} {listing.root} has classes {list(listing.classes)[:8]} "
                               f"but --train {train.root} has {list(train.classes)[:8]}; "
                               "they must be the same, in the same order")
    OptionError.unless(config.topk <= len(train.classes), "--topk", config.topk,
                       f"1..{len(train.classes)} (the number of classes)")
    _check_teacher_fits(config, len(train.classes), train.classes)
    return ExperimentData(f"{train.root}", train, test, teacher_train, config.train_list,
                          config.test_list,
                          config.teacher_train_list if config.teacher_train else
                          config.train_list)


def _builtin_source(config: ExperimentConfig
                    ) -> tuple[str, Callable[[str], Any], tuple[str, ...]]:
    """(name, split loader, class names by label) of the built-in data."""
    from dalidr.data.fashion_mnist import (
        CLASSES,
        ensure_package,
        load_digits_fallback,
        load_fashion_mnist,
    )

    if ensure_package(config.allow_apt):
        return "Fashion-MNIST", load_fashion_mnist, CLASSES
    return ("scikit-learn digits (Fashion-MNIST not installed)", load_digits_fallback,
            tuple(str(d) for d in range(10)))


def _export_builtin(config: ExperimentConfig) -> ExperimentData:
    """The built-in data's train and test splits (the teachers' own set is exported only if
    teachers are trained here: `_export_teacher_data`)."""
    from dalidr.data.fashion_mnist import export_image_folder

    source, load, classes = _builtin_source(config)
    data = config.out / "data" / ("fashion-mnist" if source == "Fashion-MNIST" else "digits")
    for split, per_class in (("train", config.train_per_class), ("test", config.test_per_class)):
        images, labels = load(split)
        export_image_folder(images, labels, data / split, classes, per_class)
    train = list_dataset(data / "train")
    return ExperimentData(source, train, list_dataset(data / "test"), train)


def _export_teacher_data(config: ExperimentConfig, data: ExperimentData) -> ExperimentData:
    """The built-in data's larger training set for teachers trained here
    (`teacher_train_per_class`; None: the students' set)."""
    from dataclasses import replace

    from dalidr.data.fashion_mnist import export_image_folder

    if config.teacher_train_per_class is None:
        return data
    _, load, classes = _builtin_source(config)
    root = Path(data.train.root).parent / "teacher-train"
    images, labels = load("train")
    export_image_folder(images, labels, root, classes, config.teacher_train_per_class)
    return replace(data, teacher_train=list_dataset(root))


def _done(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _train(config: ExperimentConfig, step: str, name: str, model: str, mode: str, epochs: int,
           listing: DatasetListing, file_list: Path | None, **extra: Any) -> dict[str, Any]:
    from dalidr.training.train import CHECKPOINT_NAME, Mode, OptimizerName, TrainConfig, train

    folder = config.out / name
    summary = folder / "summary.json"
    if (done := _done(summary)) is not None:
        _log(config, f"{step} {name}: cached ({summary})")
        return done
    _log(config, f"{step} {name}: training {model} ({mode}, {epochs} epochs)")
    resume = (folder / CHECKPOINT_NAME).is_file()
    start = time.perf_counter()
    train(TrainConfig(
        mode=Mode(mode), data=str(listing.root), out=str(folder), model=model,
        file_list=None if file_list is None else str(file_list), epochs=epochs,
        batch_size=config.batch_size, optimizer=OptimizerName.ADAMW,
        lr=config.lr, weight_decay=0.05, warmup_epochs=1, summary=str(summary),
        save_every=50, resume=resume, progress=config.progress,
        **{"seed": config.seed, "size": config.size, **extra}))
    result = json.loads(summary.read_text())
    result["wall_s"] = None if resume else time.perf_counter() - start
    summary.write_text(json.dumps(result, indent=2))
    return result


def _evaluate(config: ExperimentConfig, data: ExperimentData, out: Path, *,
              checkpoint: Path | None = None, teacher: str | None = None,
              size: int | None = None) -> dict[str, Any]:
    from dalidr.training.evaluate import EvalConfig, run_eval

    if (done := _done(out / "eval.json")) is not None:
        return done
    return run_eval(EvalConfig(
        data=str(data.test.root), out=str(out),
        checkpoint=None if checkpoint is None else str(checkpoint), teacher=teacher,
        file_list=None if data.test_list is None else str(data.test_list),
        size=size or config.size, progress=config.progress))


def _recipe_file(config: ExperimentConfig, base: str) -> Path:
    """`base` at the experiment's size and crop scale, as a YAML file (kept with the run)."""
    name = base.replace("/", "-").replace("*", "x")
    path = config.out / f"recipe-{name}.yaml"
    low, high = config.crop_scale
    path.write_text(f"base: {base}\noutput_size: {config.size}\ncrop_scale: [{low}, {high}]\n")
    return path


def _reinforce(config: ExperimentConfig, step: str, data: ExperimentData,
               teacher: TeacherChoice, recipe: Path) -> Path:
    from dalidr.augment.recipe import load_recipe
    from dalidr.progress import progress_wanted
    from dalidr.teacher.reinforce import ReinforceConfig, reinforce
    from store import inspect_store

    store = config.out / "store"
    marker = config.out / "store.done.json"
    if _done(marker) is None:
        _log(config, f"{step} reinforce: teacher {teacher.spec} at {teacher.size} px, "
                     f"{config.slots} slots, top-{config.topk}")
        t0 = time.perf_counter()
        assert teacher.spec is not None  # the caller reinforces only with a teacher
        reinforce(ReinforceConfig(
            data=data.train.root, teacher=teacher.spec,
            recipe=load_recipe(recipe).replace(teacher_size=teacher.size), slots=config.slots,
            k=config.topk, out=str(store), file_list=data.train_list, seed=config.seed,
            batch_size=256, block_size=256,
            progress=progress_wanted(config.progress)))
        marker.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    report = inspect_store(str(store), verify=True)
    if report.problems or not report.complete:
        raise DatasetError(f"the store {store} failed its integrity check: "
                           f"{(report.problems or ['incomplete'])[:3]}")
    if config.curriculum is not None:  # a store made before the teacher pass scored blocks
        from store.difficulty_pass import fill_difficulty

        fill_difficulty(str(store), progress=progress_wanted(config.progress))
    return store


def _teacher(config: ExperimentConfig, choice: TeacherChoice, steps: Callable[[], str],
             data: ExperimentData, strong: Path) -> TeacherChoice:
    """The chosen ensemble, with members trained here when it has none (each its own seed)."""
    if choice.spec is not None:
        _log(config, f"teacher ({choice.source}): {choice.spec} at {choice.size} px")
        if choice.about:
            _log(config, f"  {choice.about}")
        return choice
    members = []
    for i, arch in enumerate(config.teachers):
        # Each member its own seed: a member trained like an `erm` student would be its copy.
        _train(config, steps(), f"teacher-{i}", arch, "erm", config.teacher_epochs,
               data.teacher_train, data.teacher_train_list, augment=str(strong),
               seed=config.seed + 1 + i, size=choice.size)
        members.append(f"{arch}@{config.out / f'teacher-{i}' / 'last.pt'}")
    return TeacherChoice(",".join(members) or None, choice.size, choice.source)


def _student_row(arch: str, mode: str, summary: dict[str, Any],
                 result: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    epochs = summary["epochs"]
    return {
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


def run_experiment(config: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) every step; returns the results table as a dict."""
    from dalidr.experiment_report import plot_accuracy_vs_time, teacher_views_png
    from dalidr.teacher import parse_teacher

    start = time.perf_counter()
    data = check_experiment(config)
    config.out.mkdir(parents=True, exist_ok=True)
    builtin = data is None
    if data is None:
        data = _export_builtin(config)
    choice = choose_teacher(config, data.train.classes)
    if builtin and choice.spec is None:
        data = _export_teacher_data(config, data)
    _log(config, f"data: {data.source}; train {data.train.root} ({len(data.train)} images), "
                 f"test {data.test.root} ({len(data.test)} images)")
    if data.teacher_train.root != data.train.root:
        _log(config, f"teachers train on {data.teacher_train.root} "
                     f"({len(data.teacher_train)} images)")

    strong = _recipe_file(config, config.teacher_recipe)  # teachers trained here
    stored = _recipe_file(config, config.recipe)  # the store and online kd
    plain = _recipe_file(config, "rrc")  # erm students: the same crops and flips, no more
    total = ((0 if choice.spec else len(config.teachers)) + ("dr" in config.modes)
             + len(config.students) * len(config.modes))
    counter = itertools.count(1)

    def steps() -> str:
        return f"step {next(counter)}/{total}"

    chosen = _teacher(config, choice, steps, data, strong)
    teacher = chosen.spec
    store = None
    if "dr" in config.modes and teacher is not None:
        store = _reinforce(config, steps(), data, chosen, stored)
    extra: dict[str, dict[str, Any]] = {
        "erm": {"augment": str(plain)},
        "kd": {"teacher": teacher, "teacher_size": chosen.size, "augment": str(stored)},
        "dr": {"store": str(store), "curriculum": config.curriculum},
    }
    rows: dict[str, dict[str, Any]] = {}
    for arch in config.students:
        for mode in config.modes:
            name = f"student-{arch}-{mode}"
            summary = _train(config, steps(), name, arch, mode, config.student_epochs,
                             data.train, data.train_list, **extra[mode])
            result = _evaluate(config, data, config.out / name / "eval",
                               checkpoint=config.out / name / "last.pt")
            rows[name] = _student_row(arch, mode, summary, result)
    table: dict[str, Any] = {
        "data": data.source,
        "train_root": str(data.train.root),
        "test_root": str(data.test.root),
        "classes": list(data.train.classes),
        "train_images": len(data.train),
        "teacher_train_images": len(data.teacher_train),
        "test_images": len(data.test),
        "size": config.size,
        "teacher": teacher,
        "teacher_source": chosen.source,
        "teacher_size": chosen.size,
    }
    if teacher is not None:
        members = [f"{s.name}@{s.checkpoint}" if s.checkpoint else s.name
                   for s in parse_teacher(teacher)]
        evals = [_evaluate(config, data, config.out / "teacher-eval" / f"member-{i}",
                           teacher=m, size=chosen.size) for i, m in enumerate(members)]
        table["teacher_members_top1"] = {
            m: 100 * e["top1"] for m, e in zip(members, evals, strict=True)}
        ensemble = evals[0] if len(members) == 1 else _evaluate(
            config, data, config.out / "teacher-eval" / "ensemble", teacher=teacher,
            size=chosen.size)
        table["teacher_ensemble"] = {"top1": 100 * ensemble["top1"],
                                     "ece": 100 * ensemble["ece"],
                                     "reliability_png": ensemble["reliability_png"]}
    table["students"] = rows
    if store is not None:
        from store import inspect_store

        table["store_bytes_per_record"] = inspect_store(str(store), verify=False).bytes_per_record
        table["teacher_views_png"] = str(teacher_views_png(
            store, data.train, config.out / "teacher-views.png", config.seed))
    table["fig1_png"] = str(plot_accuracy_vs_time(
        rows, config.out / "fig1.png",
        f"{data.source}: {len(data.train)} train / {len(data.test)} test, {config.size} px, "
        f"{config.student_epochs} epochs"))
    table["wall_s"] = time.perf_counter() - start
    (config.out / "results.json").write_text(json.dumps(table, indent=2))
    return table


def run_demo(config: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) an experiment and print its table (`dalidr demo`, `dalidr experiment`)."""
    from dalidr.experiment_report import print_table

    table = run_experiment(config)
    print_table(table, config)
    return table

