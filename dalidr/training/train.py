"""`dalidr train`: one training script for ERM, online distillation and the reinforced store.

Three modes share the model, optimiser, schedule, precision and logging, and differ only in
where a batch's images and targets come from, so their wall-clock times compare fairly (paper
Sec. 3: training on ImageNet+ costs what training on ImageNet costs):

- `erm`: `PlainLoader` (DALI random resized crop + flip), one-hot labels; with `--augment` a
  recipe drawn afresh each epoch and replayed by `dalidr.augment.replay` (strong augmentation for
  teachers, and the store's own augmentation distribution for a fair `kd` baseline);
- `kd`: the same images, targets from the teacher ensemble run on every batch
  (`dalidr.teacher.classifier.MeanSoftmax` over `dalidr.teacher`, `NAME[@CKPT],...`; the
  online-distillation baseline, as costly as a teacher forward per step);
- `dr`: `ReinforcedLoader` over a store, targets the stored teacher top-k.
All three minimise `dalidr.training.losses.kl_loss` (on one-hot targets, the cross-entropy),
optionally
plus MEAL V2's discriminator term.

A timm student by name, from scratch, from timm's weights (`--pretrained`) or from a local
checkpoint (`--init`: a timm state dict or a `dalidr train` checkpoint, read by the teacher's
loader `dalidr.teacher.load_weights`, strictly, with the class count checked: MEAL V2 Sec. 3
starts its students from "a good initialization"); SGD (Nesterov) or AdamW; cosine or step
decay after a linear warmup, stepped per iteration; bf16 autocast and channels_last on the
GPU; optional `torch.compile`. Options, data, store, student and teacher are all checked
before the output folder is created, so a run refused on its inputs leaves nothing behind.
Checkpoints (`<out>/last.pt`, written atomically at each epoch end and every `--save-every`
steps) hold weights, optimiser, schedule, discriminator and the loader's (epoch, step), saved
with `torch.save` and read back with `torch.load(weights_only=True)`: nothing is unpickled.
Resuming mid-epoch serves exactly the batches that remained (the loaders are deterministic in
(seed, epoch, step); ERM's DALI draws without `--augment` are not, so such a resume re-draws
its augmentations).

Each epoch draws a progress bar (steps, rate, ETA, running loss; `dalidr.progress`: off with
`--no-progress` or when stderr is not a terminal) and logs a line with images/s and the data
wait (time blocked waiting for the loader) and its share of the epoch; `--summary` writes them
as JSON.
"""

from __future__ import annotations

import argparse
import difflib
import enum
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dalidr.augment.recipe import load_recipe
from dalidr.data.shards import SHARDS_HELP
from dalidr.errors import OptionError
from dalidr.training.cpu_threads import ThreadGovernor, ThreadPlan, plan_threads
from dalidr.training.loader import (
    Augment,
    LoaderConfig,
    PlainLoader,
    ReinforcedLoader,
    Targets,
)
from dalidr.training.losses import (
    Densify,
    DiscriminatorConfig,
    DiscriminatorRegulariser,
    kl_loss,
    teacher_log_probs,
)
from store.curriculum import parse_curriculum

__all__ = ["Mode", "OptimizerName", "Schedule", "TrainConfig", "train", "check_config",
           "check_model_name", "register", "load_training_checkpoint", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "last.pt"


class Mode(enum.Enum):
    ERM = "erm"  # plain images, one-hot labels
    KD = "kd"  # plain images, online teacher ensemble
    DR = "dr"  # the reinforced store


class OptimizerName(enum.Enum):
    SGD = "sgd"
    ADAMW = "adamw"


class Schedule(enum.Enum):
    COSINE = "cosine"  # cosine from the peak to 0 after warmup
    STEP = "step"  # x gamma every `step_epochs` epochs after warmup


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the CLI builds one)."""

    mode: Mode
    # Dataset root (ImageFolder tree, or a root for `file_list`).
    data: str
    # Output folder: checkpoint and logs.
    out: str
    # timm student architecture.
    model: str = "resnet50"
    file_list: str | None = None
    # The reinforced store (mode dr) and the teacher ensemble `NAME[@CKPT],...` (mode kd).
    store: str | None = None
    teacher: str | None = None
    # Side of every member's view in mode kd; None: each member's own input size.
    teacher_size: int | None = None
    # Members without a checkpoint get random weights seeded from `seed` (smoke runs only);
    # otherwise such a member is refused.
    random_teacher: bool = False
    # erm/kd augmentation: a recipe preset or YAML drawn afresh per epoch; None: crop + flip.
    augment: str | None = None
    # Class count; None: the store's (dr) or the dataset's.
    num_classes: int | None = None
    pretrained: bool = False
    # Start the student from this local checkpoint (a timm state dict, safetensors, or a
    # `dalidr train` checkpoint): MEAL V2's "good initialization of the student" (Sec. 3).
    init: str | None = None
    epochs: int = 1
    batch_size: int = 256
    # Image side for erm/kd (dr uses the store recipe's output size).
    size: int = 224
    optimizer: OptimizerName = OptimizerName.SGD
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5
    schedule: Schedule = Schedule.COSINE
    warmup_epochs: float = 0.0
    step_epochs: int = 30
    gamma: float = 0.1
    # The paper's p (dr): probability of a reinforced sample, else the original with one-hot.
    p: float = 1.0
    # dr: a curriculum over the stored views' difficulty, `linear[:MEASURE]` or
    # `step:EASY_EPOCHS[:MEASURE]` (`store.curriculum`); None: the plan's uniform draw.
    curriculum: str | None = None
    densify: Densify = Densify.SMOOTH
    # dr targets: sparse top-k into the fused loss, or dense [B, C].
    targets: Targets = Targets.SPARSE
    discriminator: DiscriminatorConfig | None = None
    # "cpu", "cuda" or "cuda:N"; None: cuda if available.
    device: str | None = None
    # bf16 autocast (GPU only), channels_last, torch.compile.
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    # DALI worker threads and PyTorch intra-op threads; None:
    # `dalidr.training.cpu_threads.plan_threads`
    # (on a CPU, half the cores for the loader and every core for PyTorch, lowered while
    # other processes use them).
    threads: int | None = None
    torch_threads: int | None = None
    seed: int = 0
    # Stop each epoch after this many steps (None: the whole epoch); for smoke runs.
    max_steps: int | None = None
    # Also checkpoint every this many steps (None: at epoch ends only).
    save_every: int | None = None
    resume: bool = False
    summary: str | None = None
    # Without a progress bar: also a line every this many steps (0: epoch lines only).
    log_every: int = 50
    # A progress bar per epoch (rate, ETA, loss) when stderr is a terminal.
    progress: bool = True


def _device(config: TrainConfig) -> torch.device:
    if config.device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {config.device!r} requested but CUDA is not available")
    return device


def _loader(config: TrainConfig, device: torch.device, num_classes: int | None,
            threads: int) -> ReinforcedLoader | PlainLoader:
    device_id = None if device.type == "cpu" else (device.index or 0)
    common: dict[str, Any] = dict(batch_size=config.batch_size, densify=config.densify,
                                  device_id=device_id, channels_last=config.channels_last,
                                  num_threads=threads, seed=config.seed)
    if config.mode is Mode.DR:
        assert config.store is not None  # check_config
        curriculum = (None if config.curriculum is None
                      else parse_curriculum(config.curriculum, config.epochs))
        loader_config = LoaderConfig(p=config.p, targets=config.targets, curriculum=curriculum,
                                     **common)
        return ReinforcedLoader(config.store, config.data, loader_config,
                                num_classes=num_classes, file_list=config.file_list)
    loader_config = LoaderConfig(targets=Targets.SPARSE, **common)
    recipe = None if config.augment is None else load_recipe(config.augment)
    return PlainLoader(config.data, loader_config, size=config.size, augment=Augment.TRAIN,
                       num_classes=num_classes, file_list=config.file_list, recipe=recipe)


def _lr_factor(config: TrainConfig, steps_per_epoch: int):
    warmup = config.warmup_epochs * steps_per_epoch
    total = max(config.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule is Schedule.COSINE:
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return config.gamma ** int(step // max(config.step_epochs * steps_per_epoch, 1))

    return factor


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer is OptimizerName.SGD:
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `dalidr train` (weights only: nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad or code-carrying files
        raise OptionError(f"checkpoint {path} cannot be read with weights_only=True: "
                          f"{exc}") from exc
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise OptionError(f"checkpoint {path} is not a dalidr training checkpoint")
    return state


def check_config(config: TrainConfig) -> None:
    """Option checks that need no data: OptionError naming the option, before any work."""
    if config.epochs < 1 or config.batch_size < 1 or config.lr <= 0:
        raise OptionError(f"--epochs ({config.epochs}) and --batch-size ({config.batch_size}) "
                          f"must be >= 1 and --lr ({config.lr}) > 0")
    if config.mode is Mode.KD and not config.teacher:
        raise OptionError("mode 'kd' needs --teacher NAME[@CKPT],...")
    if config.mode is Mode.DR and config.augment is not None:
        raise OptionError("--augment is for modes erm and kd; mode 'dr' replays the "
                          "store's own recipe")
    if config.mode is Mode.DR and not config.store:
        raise OptionError("mode 'dr' needs --store")
    if config.init is not None and config.pretrained:
        raise OptionError("--init and --pretrained both set the starting weights; give one")
    if config.init is not None and not Path(config.init).is_file():
        raise OptionError(f"--init checkpoint {config.init} does not exist")
    if not 0.0 <= config.p <= 1.0:
        raise OptionError(f"--p is {config.p}; valid: 0 <= p <= 1")
    if config.curriculum is not None:
        if config.mode is not Mode.DR:
            raise OptionError("--curriculum orders a store's views: it is for mode 'dr'")
        parse_curriculum(config.curriculum, config.epochs)  # OptionError naming what is wrong
    for option, value in (("--threads", config.threads),
                          ("--torch-threads", config.torch_threads)):
        if value is not None:
            OptionError.unless(value >= 1, option, value, ">= 1")


def check_model_name(option: str, name: str) -> None:
    """OptionError naming `option` (with close matches) unless `name` is a timm model."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise OptionError(f"{option} {name!r} is not a timm model (timm.list_models()){hint}")


def _student(config: TrainConfig, num_classes: int) -> nn.Module:
    import timm

    from dalidr.teacher import load_weights

    check_model_name("--model", config.model)
    model = timm.create_model(config.model, pretrained=config.pretrained,
                              num_classes=num_classes)
    if config.init is not None:
        load_weights(model, config.model, Path(config.init), num_classes,
                     role="--init checkpoint")
    return model


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training; returns the summary.

    Every option, the data, the store, the student (and `--init`) and the teacher are checked
    before `out` is created, so a run that fails on its inputs leaves nothing behind."""
    check_config(config)
    device = _device(config)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    checkpoint = out / CHECKPOINT_NAME
    plan = plan_threads(device.type == "cpu", config.threads, config.torch_threads)
    loader = _loader(config, device, config.num_classes, plan.loader)
    torch_before = torch.get_num_threads()
    if plan.torch is not None:
        torch.set_num_threads(plan.torch)
    try:
        return _train_with(config, device, loader, out, checkpoint, plan)
    finally:
        torch.set_num_threads(torch_before)
        loader.close()


def _train_with(config: TrainConfig, device: torch.device,
                loader: ReinforcedLoader | PlainLoader, out: Path,
                checkpoint: Path, plan: ThreadPlan) -> dict[str, Any]:
    from dalidr.progress import progress_bar, progress_wanted
    from dalidr.teacher.classifier import MeanSoftmax

    num_classes = loader.num_classes
    model = _student(config, num_classes)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=memory_format)
    optimizer = _optimizer(config, model)
    steps_per_epoch = min(len(loader), config.max_steps or len(loader))
    if steps_per_epoch == 0:
        raise OptionError(f"batch size {config.batch_size} leaves no full batch in an epoch of "
                          f"{loader._epoch_length()} samples on this rank")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config, steps_per_epoch))
    discriminator = None
    if config.discriminator is not None:
        discriminator = DiscriminatorRegulariser(num_classes, config.discriminator).to(device)
    teacher = None
    if config.mode is Mode.KD and config.teacher:
        from dalidr.teacher import build_teacher

        ensemble = build_teacher(config.teacher, num_classes, size=config.teacher_size,
                                 random_seed=config.seed if config.random_teacher else None)
        teacher = MeanSoftmax(ensemble, loader.config.mean, loader.config.std).to(device)
    epochs_done: list[dict[str, Any]] = []
    if config.resume and checkpoint.is_file():
        state = load_training_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if discriminator is not None and "discriminator" in state:
            discriminator.load_state(state["discriminator"])
        loader.load_state_dict(state["loader"])
        epochs_done = json.loads(state["meta"]["epochs_json"])
    step_model = torch.compile(model) if config.compile else model
    autocast = config.bf16 and device.type == "cuda"
    meta = {"model": config.model, "num_classes": num_classes, "mode": config.mode.value,
            "size": (loader.recipe.output_size if isinstance(loader, ReinforcedLoader)
                     else config.size),
            "mean": list(loader.config.mean), "std": list(loader.config.std)}

    def save() -> None:
        _save(checkpoint, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "loader": loader.state_dict(),
            **({"discriminator": discriminator.state()} if discriminator is not None else {}),
            "meta": {**meta, "epochs_json": json.dumps(epochs_done)},
        })

    out.mkdir(parents=True, exist_ok=True)
    show_bar = progress_wanted(config.progress)
    model.train()
    governor = ThreadGovernor(plan.torch) if plan.governed and plan.torch else None
    while loader.epoch < config.epochs:
        if governor is not None:
            governor.start_epoch()
        epoch = loader.epoch
        start_step = loader.step
        images_seen, wait, loss_sum, steps = 0, 0.0, 0.0, 0
        started = time.perf_counter()
        bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}", show_bar,
                           unit="step", initial=start_step)
        batches = iter(loader)
        while loader.step < steps_per_epoch:
            before = time.perf_counter()
            try:
                images, targets = next(batches)
            except StopIteration:
                break
            wait += time.perf_counter() - before
            if governor is not None:
                governor.poll()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = step_model(images)
            if teacher is not None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    targets = teacher(images)
            loss = kl_loss(logits.float(), targets, config.densify)
            if discriminator is not None:
                loss = loss + discriminator.student_loss(logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if discriminator is not None:
                discriminator.update(logits, teacher_log_probs(targets, num_classes,
                                                               config.densify))
            loss_sum += float(loss.detach())
            steps += 1
            images_seen += len(images)
            bar.update(1)
            if show_bar:
                bar.set_postfix_str(f"loss {loss_sum / steps:.4f}", refresh=False)
            elif config.log_every and steps % config.log_every == 0:
                print(f"epoch {epoch} step {loader.step}/{steps_per_epoch} "
                      f"loss {loss_sum / steps:.4f}", flush=True)
            if config.save_every and loader.step % config.save_every == 0:
                save()
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        record = {"epoch": epoch, "start_step": start_step, "steps": steps,
                  "images": images_seen, "seconds": elapsed,
                  "images_per_s": images_seen / elapsed if elapsed else 0.0,
                  "data_wait_s": wait, "data_wait_fraction": wait / elapsed if elapsed else 0,
                  "loss": loss_sum / max(steps, 1), "lr": scheduler.get_last_lr()[0],
                  "torch_threads": torch.get_num_threads(),
                  **({"torch_threads_fewest": governor.fewest,
                      "torch_threads_changes": governor.changes} if governor else {})}
        epochs_done.append(record)
        print(f"epoch {epoch}: {steps} steps, loss {record['loss']:.4f}, "
              f"{record['images_per_s']:.1f} images/s, data wait {wait:.2f} s "
              f"({100 * record['data_wait_fraction']:.1f}%)", flush=True)
        loader.set_epoch(epoch + 1)
        save()
    summary = {"config": _jsonable(config), "device": str(device), "num_classes": num_classes,
               "threads": {"loader": loader.config.num_threads,
                           "torch": torch.get_num_threads()},
               "checkpoint": str(checkpoint), "epochs": epochs_done,
               "final_loss": epochs_done[-1]["loss"] if epochs_done else None}
    if config.summary:
        Path(config.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(config.summary).write_text(json.dumps(summary, indent=2))
    return summary


def _jsonable(config: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(config).items():
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, DiscriminatorConfig):
            value = vars(value)
        out[key] = value
    return out


def _choice(enum_type: type[enum.Enum]):
    def parse(text: str) -> enum.Enum:
        try:
            return enum_type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not one of {[e.value for e in enum_type]}") from None

    return parse


def _run(args: argparse.Namespace) -> int:
    disc = None
    if args.discriminator:
        disc = DiscriminatorConfig(hidden=args.disc_hidden, lr=args.disc_lr,
                                   weight=args.disc_weight)
    config = TrainConfig(
        mode=args.mode, data=args.data, out=args.out, model=args.model, file_list=args.file_list,
        store=args.store, teacher=args.teacher, teacher_size=args.teacher_size,
        random_teacher=args.random_teacher, augment=args.augment, num_classes=args.num_classes,
        pretrained=args.pretrained, epochs=args.epochs, batch_size=args.batch_size,
        size=args.size, optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, step_epochs=args.step_epochs, gamma=args.gamma,
        p=args.p, curriculum=args.curriculum, densify=args.densify, targets=args.targets,
        discriminator=disc,
        device=args.device, bf16=not args.no_bf16, channels_last=not args.no_channels_last,
        compile=args.compile, threads=args.threads, torch_threads=args.torch_threads,
        seed=args.seed, max_steps=args.max_steps,
        save_every=args.save_every, resume=args.resume, summary=args.summary,
        log_every=args.log_every, init=args.init, progress=not args.no_progress)
    train(config)
    return 0


def register(subparsers: Any) -> None:
    """Add `dalidr train`."""
    parser = subparsers.add_parser("train", help="train a timm student (erm, kd or dr)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--mode", type=_choice(Mode), default=Mode.DR,
                        help="erm | kd | dr")
    parser.add_argument("--data", required=True,
                        help=f"dataset root (ImageFolder tree), {SHARDS_HELP}")
    parser.add_argument("--file-list", default=None, help="'<path> <label>' lines under --data")
    parser.add_argument("--store", default=None, help="reinforcement store (mode dr)")
    parser.add_argument("--teacher", default=None, help="NAME[@CKPT],... ensemble (mode kd)")
    parser.add_argument("--teacher-size", type=int, default=None,
                        help="side of every member's view (mode kd; default: each member's own)")
    parser.add_argument("--random-teacher", action="store_true",
                        help="mode kd: random weights, seeded from --seed, for members without "
                             "a checkpoint (smoke runs: the targets mean nothing)")
    parser.add_argument("--augment", default=None, metavar="RECIPE",
                        help="erm/kd: augment with this recipe (preset or YAML), drawn afresh "
                             "each epoch (default: random resized crop + flip)")
    parser.add_argument("--model", default="resnet50", help="timm student architecture")
    parser.add_argument("--pretrained", action="store_true", help="start from timm weights")
    parser.add_argument("--init", default=None, metavar="CKPT",
                        help="start from this local checkpoint: a timm state dict "
                             "(.safetensors or torch file) or a `dalidr train` last.pt; it must "
                             "fit --model and the class count")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--out", default="runs/train", help="checkpoint folder")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=224, help="image side (erm, kd)")
    parser.add_argument("--optimizer", type=_choice(OptimizerName), default=OptimizerName.SGD,
                        help="sgd | adamw")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-5)
    parser.add_argument("--schedule", type=_choice(Schedule), default=Schedule.COSINE,
                        help="cosine | step")
    parser.add_argument("--warmup-epochs", type=float, default=0.0)
    parser.add_argument("--step-epochs", type=int, default=30, help="step schedule period")
    parser.add_argument("--gamma", type=float, default=0.1, help="step schedule factor")
    parser.add_argument("--p", type=float, default=1.0,
                        help="probability of a reinforced sample (dr; else original, one-hot)")
    parser.add_argument("--curriculum", default=None, metavar="SPEC",
                        help="dr: easy views first, by the store's difficulty (`dalidr "
                             "difficulty STORE`): linear[:confidence|strength] or "
                             "step:EASY_EPOCHS[:confidence|strength]")
    parser.add_argument("--densify", type=_choice(Densify), default=Densify.SMOOTH,
                        help="smooth | zeros: how a stored top-k becomes a distribution")
    parser.add_argument("--targets", type=_choice(Targets), default=Targets.SPARSE,
                        help="sparse (fused loss) | dense")
    parser.add_argument("--discriminator", action="store_true",
                        help="MEAL V2 discriminator regulariser")
    parser.add_argument("--disc-lr", type=float, default=1e-4)
    parser.add_argument("--disc-weight", type=float, default=1.0)
    parser.add_argument("--disc-hidden", type=int, default=256)
    parser.add_argument("--device", default=None, help="cpu | cuda[:N] (default: cuda if any)")
    parser.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on the GPU")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student")
    parser.add_argument("--threads", type=int, default=None,
                        help="DALI worker threads (default: half the cores on a CPU, 2 with a "
                             "GPU)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="PyTorch intra-op threads (default on a CPU: every core, fewer "
                             "while other processes use them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="steps per epoch cap")
    parser.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps")
    parser.add_argument("--resume", action="store_true",
                        help=f"resume from <out>/{CHECKPOINT_NAME}")
    parser.add_argument("--summary", default=None, help="write a JSON summary here")
    parser.add_argument("--log-every", type=int, default=50,
                        help="without a progress bar, also a line every N steps (0: never)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (also off when stderr is not a terminal)")
    parser.set_defaults(run=_run)
