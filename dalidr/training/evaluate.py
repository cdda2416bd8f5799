"""`dalidr eval`: accuracy and calibration of a trained student or of a teacher ensemble.

Reports top-1 and top-5 accuracy, the negative log-likelihood and the expected calibration
error with 15 equal-width confidence bins (paper Sec. 3.3 reports that models trained on
reinforced data are better calibrated), and draws the reliability diagram (accuracy against
confidence per bin) as a PNG with matplotlib.

Images go through `PlainLoader` in evaluation mode (resize the shorter side to size / 0.875,
centre crop, normalise), the same DALI machinery training uses; the model is rebuilt from the
checkpoint's metadata (timm name, class count, image size, normalisation), read with
`torch.load(weights_only=True)`. An ensemble (`--teacher NAME@CKPT,...`, built by
`dalidr.teacher` exactly as the teacher pass builds it) is scored as the log of its members'
mean softmax (MEAL V2 eq. 1; `dalidr.teacher.classifier.EnsembleLogits`), at the side its
`dalidr train`
checkpoints were trained at unless `--size` says otherwise. A progress bar counts batches
(`dalidr.progress`). Trade-off: probabilities of the whole evaluation set are kept
in memory ([N, C] float32: 5 GB for ImageNet's 1.28 M training images, 200 MB for its 50 000
validation images) so metrics are exact rather than streamed approximations.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dalidr.data.shards import SHARDS_HELP
from dalidr.errors import OptionError
from dalidr.training.loader import Augment, LastBatch, LoaderConfig, PlainLoader, Targets

__all__ = ["ECE_BINS", "Calibration", "EvalResult", "EvalConfig", "calibration", "metrics",
           "save_reliability_diagram", "evaluate", "run_eval", "register"]

ECE_BINS = 15


@dataclass(frozen=True)
class Calibration:
    """Per confidence bin: mean confidence, accuracy and sample count; and the ECE."""

    ece: float
    confidence: list[float]
    accuracy: list[float]
    count: list[int]


@dataclass(frozen=True)
class EvalResult:
    samples: int
    top1: float
    top5: float
    nll: float
    ece: float
    calibration: Calibration


def calibration(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> Calibration:
    """ECE: sum over equal-width bins of |accuracy - confidence| weighted by the bin's share."""
    confidence, predicted = probs.float().max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0.0, 1.0, bins + 1)
    which = torch.clamp(torch.bucketize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = torch.bincount(which, minlength=bins).float()
    conf_sum = torch.bincount(which, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(which, weights=correct, minlength=bins)
    safe = count.clamp_min(1.0)
    ece = float((torch.abs(acc_sum - conf_sum)).sum() / max(len(labels), 1))
    return Calibration(ece, (conf_sum / safe).tolist(), (acc_sum / safe).tolist(),
                       [int(c) for c in count.tolist()])


def metrics(logits: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """Top-1, top-5, NLL and calibration of logits [N, C] against integer labels [N]."""
    logits, labels = logits.float(), labels.long()
    if len(logits) == 0:
        raise OptionError("nothing to evaluate: no samples")
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    nll = float(torch.nn.functional.cross_entropy(logits, labels))
    calib = calibration(logits.softmax(dim=1), labels)
    return EvalResult(len(labels), float(hits[:, 0].float().mean()),
                      float(hits.any(dim=1).float().mean()), nll, calib.ece, calib)


def save_reliability_diagram(calib: Calibration, path: str | Path, title: str = "") -> Path:
    """Accuracy per confidence bin against the diagonal, with the gap shaded; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = len(calib.count)
    centres = (np.arange(bins) + 0.5) / bins
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    used = np.array(calib.count) > 0
    ax.bar(centres[used], np.array(calib.accuracy)[used], width=1.0 / bins, edgecolor="black",
           color="#4c72b0", label="accuracy")
    ax.bar(centres[used], (np.array(calib.confidence) - np.array(calib.accuracy))[used],
           bottom=np.array(calib.accuracy)[used], width=1.0 / bins, color="#dd8452", alpha=0.5,
           edgecolor="#dd8452", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
           title=f"{title} ECE {100 * calib.ece:.2f}%".strip())
    ax.legend(loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: PlainLoader, device: torch.device,
             progress: bool = False, desc: str = "eval") -> EvalResult:
    """Run `model` over one pass of `loader` (evaluation mode) and compute the metrics."""
    from dalidr.progress import progress_bar

    model.eval()
    all_logits, all_labels = [], []
    autocast = device.type == "cuda"
    with progress_bar(len(loader), desc, progress, unit="batch") as bar:
        for images, targets in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(images)
            all_logits.append(logits.float().cpu())
            all_labels.append(targets.indices[:, 0].cpu())
            bar.update(1)
    return metrics(torch.cat(all_logits), torch.cat(all_labels))


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: of a `dalidr train` checkpoint, or of a teacher ensemble."""

    # Evaluation data: ImageFolder root (or the root of `file_list`'s paths).
    data: str
    # Folder for eval.json and reliability.png.
    out: str
    # A `dalidr train` checkpoint, or (exactly one of the two) an ensemble `NAME[@CKPT],...`.
    checkpoint: str | None = None
    teacher: str | None = None
    file_list: str | None = None
    # Image side; None: the checkpoint's training side (for an ensemble: the side its dalidr
    # checkpoints were trained at, else each member's timm input size).
    size: int | None = None
    batch_size: int = 100
    threads: int = 2
    # "cpu", "cuda" or "cuda:N"; None: cuda if available.
    device: str | None = None
    # A progress bar when stderr is a terminal.
    progress: bool = True
    # Also write the JSON report here.
    summary: str | None = None


def _device(name: str | None) -> torch.device:
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {name!r} requested but CUDA is not available")
    return device


def _loader(config: EvalConfig, device: torch.device, size: int, num_classes: int | None,
            mean: tuple[float, ...], std: tuple[float, ...]) -> PlainLoader:
    loader_config = LoaderConfig(batch_size=config.batch_size, targets=Targets.SPARSE,
                                 last_batch=LastBatch.PARTIAL, channels_last=True,
                                 device_id=None if device.type == "cpu" else (device.index or 0),
                                 num_threads=config.threads, mean=tuple(mean),  # type: ignore[arg-type]
                                 std=tuple(std))  # type: ignore[arg-type]
    return PlainLoader(config.data, loader_config, size=size, augment=Augment.EVAL,
                       num_classes=num_classes, file_list=config.file_list)


def _trained_size(checkpoint: Path | None) -> int | None:
    """The side a `dalidr train` checkpoint was trained at (its metadata), else None."""
    if checkpoint is None or checkpoint.suffix == ".safetensors" or not checkpoint.is_file():
        return None
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not ours, or unreadable: the teacher loader reports it precisely
        return None
    meta = state.get("meta") if isinstance(state, dict) else None
    return int(meta["size"]) if isinstance(meta, dict) and "size" in meta else None


def _checkpoint_model(config: EvalConfig, device: torch.device
                      ) -> tuple[torch.nn.Module, PlainLoader, dict[str, Any]]:
    import timm

    from dalidr.training.train import load_training_checkpoint

    assert config.checkpoint is not None
    state = load_training_checkpoint(config.checkpoint)
    meta = state["meta"]
    size = config.size or int(meta["size"])
    loader = _loader(config, device, size, int(meta["num_classes"]), meta["mean"], meta["std"])
    model = timm.create_model(meta["model"], pretrained=False,
                              num_classes=int(meta["num_classes"]))
    model.load_state_dict(state["model"])
    about = {"checkpoint": str(config.checkpoint), "size": size,
             "title": f"{meta['model']} ({meta['mode']})"}
    return model, loader, about


def _ensemble_model(config: EvalConfig, device: torch.device
                    ) -> tuple[torch.nn.Module, PlainLoader, dict[str, Any]]:
    from dalidr.data.dataset import list_dataset
    from dalidr.teacher import build_teacher, parse_teacher
    from dalidr.teacher.classifier import EnsembleLogits

    assert config.teacher is not None
    specs = parse_teacher(config.teacher)
    size = config.size
    if size is None:
        trained = {_trained_size(s.checkpoint) for s in specs}
        size = trained.pop() if len(trained) == 1 and None not in trained else None
    num_classes = len(list_dataset(config.data, config.file_list).classes)
    ensemble = build_teacher(config.teacher, num_classes, size=size)
    # Render once at the largest member side; each member's view is resized from it.
    side = max(view.size for view in ensemble.views)
    first = ensemble.views[0]
    loader = _loader(config, device, side, num_classes, first.mean, first.std)
    model = EnsembleLogits(ensemble, first.mean, first.std)
    about = {"teacher": config.teacher, "teacher_description": ensemble.describe(),
             "size": side, "title": f"ensemble of {len(specs)}"}
    return model, loader, about


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Evaluate a checkpoint or an ensemble; write eval.json and the reliability diagram."""
    from dalidr.progress import progress_wanted

    if (config.checkpoint is None) == (config.teacher is None):
        raise OptionError("give exactly one of --checkpoint (a `dalidr train` checkpoint) and "
                          "--teacher NAME[@CKPT],... (an ensemble)")
    if config.batch_size < 1:
        raise OptionError(f"--batch-size is {config.batch_size}; valid: >= 1")
    device = _device(config.device)
    build = _checkpoint_model if config.checkpoint is not None else _ensemble_model
    model, loader, about = build(config, device)
    try:
        model = model.to(device).to(memory_format=torch.channels_last)
        result = evaluate(model, loader, device, progress_wanted(config.progress))
    finally:
        loader.close()
    out = Path(config.out)
    png = save_reliability_diagram(result.calibration, out / "reliability.png",
                                   title=about.pop("title"))
    report: dict[str, Any] = {**asdict(result), **about, "data": str(config.data),
                              "reliability_png": str(png)}
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    if config.summary:
        Path(config.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(config.summary).write_text(json.dumps(report, indent=2))
    return report


def _run(args: argparse.Namespace) -> int:
    config = EvalConfig(data=args.data, out=args.out, checkpoint=args.checkpoint,
                        teacher=args.teacher, file_list=args.file_list, size=args.size,
                        batch_size=args.batch_size, threads=args.threads, device=args.device,
                        progress=not args.no_progress, summary=args.summary)
    report = run_eval(config)
    print(f"{report['samples']} images: top-1 {100 * report['top1']:.2f}%  top-5 "
          f"{100 * report['top5']:.2f}%  NLL {report['nll']:.4f}  ECE({ECE_BINS}) "
          f"{100 * report['ece']:.2f}%  diagram {report['reliability_png']}")
    return 0


def register(subparsers: Any) -> None:
    """Add `dalidr eval`."""
    parser = subparsers.add_parser("eval", help="top-1/5, NLL, ECE and a reliability diagram",
                                   description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a `dalidr train` checkpoint")
    which.add_argument("--teacher", metavar="NAME@CKPT,...",
                       help="an ensemble (mean softmax of its members), as for `dalidr reinforce`")
    parser.add_argument("--data", required=True,
                        help=f"evaluation ImageFolder root, {SHARDS_HELP}")
    parser.add_argument("--file-list", default=None, help="'<path> <label>' lines under --data")
    parser.add_argument("--size", type=int, default=None,
                        help="image side (default: the training size; for --teacher the "
                             "members' dalidr training size, else their timm input size)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="DALI threads")
    parser.add_argument("--device", default=None, help="cpu | cuda[:N] (default: cuda if any)")
    parser.add_argument("--out", default="runs/eval", help="folder for eval.json and the PNG")
    parser.add_argument("--summary", default=None, help="also write the JSON report here")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (also off when stderr is not a terminal)")
    parser.set_defaults(run=_run)
