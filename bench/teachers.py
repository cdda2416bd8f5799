"""Train the kept teacher ensemble once: all 60,000 Fashion-MNIST training images, kept as fp16.

The paper's teachers are much stronger than its students because they are trained once, on
more data, at a higher resolution and with strong augmentation, and then reused (Dataset
Reinforcement Sec. 2.3; MEAL V2 Sec. 3). This is that step for the project's built-in data:
- data: every image of Fashion-MNIST's training split (Debian's `dataset-fashion-mnist`,
  exported as JPEGs by `dalidr.data.fashion_mnist`); the 10,000 test images are only measured on,
  never used to choose anything (the settings below were fixed before the run);
- members: small timm models (a kept file must stay under 4 MiB in float16), each trained with
  `dalidr train --mode erm --augment rrc+ra/re` at `--size` (views larger than the students'
  32 px: the replay renders one record at any size, so the teacher pass labels each stored
  crop at this side), its own seed;
- each member is saved as float16 safetensors beside a sidecar JSON (command, data, epochs,
  size, recipe, wall-clock, machine, library versions and the test accuracy measured on the
  kept file itself), and `ensemble.json` indexes them with their SHA-256s and the ensemble's
  accuracy (`dalidr.teacher.kept` reads it).

Runs once (an hour or more on a 2-core CPU); every member's training resumes from its
checkpoint if interrupted, and a finished member is not retrained.

    python bench/teachers.py                       # the kept fashion-mnist ensemble
    python bench/teachers.py --per-class 600 --epochs 1 --out /tmp/t   # a quick rehearsal
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe_machine, git_state, library_versions  # noqa: E402
from dalidr.teacher.kept import INDEX_NAME, KEPT_TEACHERS_DIR  # noqa: E402

MAX_FILE_BYTES = 4 * 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--name", default="fashion-mnist", help="the kept ensemble's name")
    parser.add_argument("--out", default=None,
                        help=f"folder for the kept files (default {KEPT_TEACHERS_DIR}/NAME)")
    parser.add_argument("--work", default="runs/teachers", help="data and training checkpoints")
    parser.add_argument("--members", default="test_resnet,test_resnet",
                        help="timm architectures, one member each")
    parser.add_argument("--size", type=int, default=64, help="side every member views at")
    parser.add_argument("--crop-scale", type=float, nargs=2, default=(0.35, 1.0),
                        metavar=("LOW", "HIGH"))
    parser.add_argument("--recipe", default="rrc+ra/re", help="strong augmentation preset")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=6000, help="6000: all 60,000 images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args()


def _export(work: Path, per_class: int) -> tuple[Any, Any, dict[str, Any]]:
    from dalidr.data.dataset import list_dataset
    from dalidr.data.fashion_mnist import (
        CLASSES,
        FASHION_MNIST_DIR,
        IDX_FILES,
        ensure_package,
        export_image_folder,
        load_fashion_mnist,
    )
    from dalidr.data.file_hash import file_sha256
    from dalidr.errors import DatasetError

    if not ensure_package():
        raise DatasetError("Fashion-MNIST is needed: apt-get install dataset-fashion-mnist")
    roots = {}
    for split, count in (("train", per_class), ("test", None)):
        images, labels = load_fashion_mnist(split)
        roots[split] = export_image_folder(images, labels, work / "data" / split, CLASSES,
                                           count).root
    data = {
        "source": "Fashion-MNIST (Debian dataset-fashion-mnist), exported as RGB JPEG q95",
        "train_split_images_per_class": per_class,
        "idx_sha256": {name: file_sha256(FASHION_MNIST_DIR / name)
                       for pair in IDX_FILES.values() for name in pair},
    }
    return list_dataset(roots["train"]), list_dataset(roots["test"]), data


def _recipe_file(work: Path, args: argparse.Namespace) -> Path:
    path = work / f"recipe-{args.size}px.yaml"
    low, high = args.crop_scale
    path.write_text(f"base: {args.recipe}\noutput_size: {args.size}\n"
                    f"crop_scale: [{low}, {high}]\n")
    return path


def _train_member(i: int, arch: str, args: argparse.Namespace, work: Path, train_root: Path,
                  recipe: Path) -> dict[str, Any]:
    from dalidr.training.train import CHECKPOINT_NAME, Mode, OptimizerName, TrainConfig, train

    folder = work / f"member-{i}-{arch}"
    summary = folder / "summary.json"
    if not summary.is_file():
        print(f"member {i}: training {arch} at {args.size} px for {args.epochs} epochs",
              flush=True)
        train(TrainConfig(
            mode=Mode.ERM, data=str(train_root), out=str(folder), model=arch,
            augment=str(recipe), epochs=args.epochs, batch_size=args.batch_size,
            size=args.size, optimizer=OptimizerName.ADAMW, lr=args.lr, weight_decay=0.05,
            warmup_epochs=1, seed=args.seed + i, save_every=100,
            resume=(folder / CHECKPOINT_NAME).is_file(), summary=str(summary),
            progress=not args.no_progress))
    return json.loads(summary.read_text())


def _keep(checkpoint: Path, path: Path) -> int:
    """The trained weights as float16 safetensors, the header recording the normalisation and
    side they were trained with (the teacher loader feeds them inputs normalised that way);
    returns the parameter count."""
    import torch
    from safetensors.torch import save_file

    from dalidr.training.train import load_training_checkpoint

    trained = load_training_checkpoint(checkpoint)
    state, meta = trained["model"], trained["meta"]
    kept = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(kept, str(path), metadata={
        "format": "pt", "dtype": "float16", "arch": str(meta["model"]),
        "size": str(meta["size"]), "mean": json.dumps(list(meta["mean"])),
        "std": json.dumps(list(meta["std"]))})
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SystemExit(f"{path} is {size / 2**20:.2f} MiB, over the 4 MiB a kept teacher may "
                         "take; choose a smaller architecture")
    return sum(v.numel() for k, v in state.items() if torch.is_floating_point(v))


def _test(spec: str, size: int, test_root: Path, out: Path, progress: bool) -> dict[str, Any]:
    from dalidr.training.evaluate import EvalConfig, run_eval

    result = run_eval(EvalConfig(data=str(test_root), out=str(out), teacher=spec, size=size,
                                 progress=progress))
    return {"top1": 100 * result["top1"], "ece": 100 * result["ece"], "nll": result["nll"],
            "images": result["samples"]}


def main() -> None:
    from dalidr.data.fashion_mnist import CLASSES
    from dalidr.data.file_hash import file_sha256

    args = parse_args()
    work = Path(args.work)
    out = Path(args.out) if args.out else KEPT_TEACHERS_DIR / args.name
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(sys.argv)
    train_set, test_set, data = _export(work, args.per_class)
    data["train_images"] = len(train_set)
    data["test_images_measured_on"] = len(test_set)
    recipe = _recipe_file(work, args)
    members = []
    for i, arch in enumerate(args.members.split(",")):
        summary = _train_member(i, arch, args, work, train_set.root, recipe)
        file = f"member-{i}-{arch}.safetensors"
        params = _keep(work / f"member-{i}-{arch}" / "last.pt", out / file)
        test = _test(f"{arch}@{out / file}", args.size, test_set.root,
                     work / f"eval-member-{i}", not args.no_progress)
        epochs = summary["epochs"]
        sidecar = {
            "arch": arch, "file": file, "sha256": file_sha256(out / file),
            "bytes": (out / file).stat().st_size, "dtype": "float16", "parameters": params,
            "command": command, "data": data, "classes": list(train_set.classes),
            "epochs": len(epochs), "size": args.size, "recipe": args.recipe,
            "crop_scale": list(args.crop_scale), "batch_size": args.batch_size, "lr": args.lr,
            "optimizer": "adamw", "weight_decay": 0.05, "seed": args.seed + i,
            "train_seconds": sum(e["seconds"] for e in epochs),
            "train_images_per_s": sum(e["images"] for e in epochs)
            / max(sum(e["seconds"] for e in epochs), 1e-9),
            "epoch_images_per_s": [round(e["images_per_s"], 1) for e in epochs],
            "final_loss": summary["final_loss"],
            "test": test, "dalidr_commit": git_state()["commit"], "versions": library_versions(),
        }
        (out / file).with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
        print(f"member {i} {arch}: test top-1 {test['top1']:.2f}%  ECE {test['ece']:.2f}%  "
              f"({sidecar['bytes'] / 2**20:.2f} MiB)", flush=True)
        members.append({"arch": arch, "file": file, "sidecar": Path(file).stem + ".json",
                        "sha256": sidecar["sha256"], "test_top1": test["top1"]})
    spec = ",".join(f"{m['arch']}@{out / m['file']}" for m in members)
    ensemble = _test(spec, args.size, test_set.root, work / "eval-ensemble",
                     not args.no_progress)
    assert list(train_set.classes) == sorted(CLASSES)
    index = {"name": args.name, "size": args.size, "classes": list(train_set.classes),
             "members": members, "ensemble_test": ensemble, "command": command,
             "data": data, "machine": describe_machine(), "written": time.strftime("%Y-%m-%d")}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    print(f"ensemble of {len(members)}: test top-1 {ensemble['top1']:.2f}%  "
          f"ECE {ensemble['ece']:.2f}%  -> {out / INDEX_NAME}", flush=True)


if __name__ == "__main__":
    main()
