"""`dalidr eval`: accuracy and calibration of a trained student.

Reports top-1 and top-5 accuracy, the negative log-likelihood and the expected calibration
error with 15 equal-width confidence bins (paper Sec. 3.3 reports that models trained on
reinforced data are better calibrated), and draws the reliability diagram (accuracy against
confidence per bin) as a PNG with matplotlib.

Images go through `PlainLoader` in evaluation mode (resize the shorter side to size / 0.875,
centre crop, normalise), the same DALI machinery training uses; the model is rebuilt from the
checkpoint's metadata (timm name, class count, image size, normalisation), read with
`torch.load(weights_only=True)`. Trade-off: probabilities of the whole evaluation set are kept
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

from dalidr.errors import OptionError
from dalidr.loader import Augment, LastBatch, LoaderConfig, PlainLoader, Targets

__all__ = ["ECE_BINS", "Calibration", "EvalResult", "calibration", "metrics",
           "save_reliability_diagram", "evaluate", "register"]

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
def evaluate(model: torch.nn.Module, loader: PlainLoader, device: torch.device) -> EvalResult:
    """Run `model` over one pass of `loader` (evaluation mode) and compute the metrics."""
    model.eval()
    all_logits, all_labels = [], []
    autocast = device.type == "cuda"
    for images, targets in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(images)
        all_logits.append(logits.float().cpu())
        all_labels.append(targets.indices[:, 0].cpu())
    return metrics(torch.cat(all_logits), torch.cat(all_labels))


def _run(args: argparse.Namespace) -> int:
    import timm

    from dalidr.train import load_training_checkpoint

    state = load_training_checkpoint(args.checkpoint)
    meta = state["meta"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = args.size or int(meta["size"])
    config = LoaderConfig(batch_size=args.batch_size, targets=Targets.SPARSE,
                          last_batch=LastBatch.PARTIAL, channels_last=True,
                          device_id=None if device.type == "cpu" else (device.index or 0),
                          num_threads=args.threads, mean=tuple(meta["mean"]),
                          std=tuple(meta["std"]))
    loader = PlainLoader(args.data, config, size=size, augment=Augment.EVAL,
                         num_classes=int(meta["num_classes"]), file_list=args.file_list)
    model = timm.create_model(meta["model"], pretrained=False,
                              num_classes=int(meta["num_classes"]))
    model.load_state_dict(state["model"])
    model = model.to(device, memory_format=torch.channels_last)
    try:
        result = evaluate(model, loader, device)
    finally:
        loader.close()
    out = Path(args.out)
    png = save_reliability_diagram(result.calibration, out / "reliability.png",
                                   title=f"{meta['model']} ({meta['mode']})")
    report: dict[str, Any] = {**asdict(result), "checkpoint": str(args.checkpoint),
                              "data": str(args.data), "size": size,
                              "reliability_png": str(png)}
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    if args.summary:
        Path(args.summary).write_text(json.dumps(report, indent=2))
    print(f"{result.samples} images: top-1 {100 * result.top1:.2f}%  top-5 "
          f"{100 * result.top5:.2f}%  NLL {result.nll:.4f}  ECE({ECE_BINS}) "
          f"{100 * result.ece:.2f}%  diagram {png}")
    return 0


def register(subparsers: Any) -> None:
    """Add `dalidr eval`."""
    parser = subparsers.add_parser("eval", help="top-1/5, NLL, ECE and a reliability diagram",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a `dalidr train` checkpoint")
    parser.add_argument("--data", required=True, help="evaluation ImageFolder root")
    parser.add_argument("--file-list", default=None)
    parser.add_argument("--size", type=int, default=None,
                        help="image side (default: the training size)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default="runs/eval", help="folder for eval.json and the PNG")
    parser.add_argument("--summary", default=None, help="also write the JSON report here")
    parser.set_defaults(run=_run)
