"""Fidelity of every RandAugment op, over its whole magnitude range, on real photographs.

For each of the 14 ops and each magnitude bin of `--bins` (both signs for signed ops), views of
real photographs (`dalidr.data.sample_data`, re-framed camera images at ImageNet-like sizes) are
replayed by dalidr (DALI, CPU) with that op alone, and compared in uint8 levels with:

1. `torchvision`: torchvision's tensor op on dalidr's own unaugmented view (the op isolated:
   the same input on both sides), as tests/test_ops.py;
2. `pil`: the op as the paper's code applies it, torchvision's `_apply_op` on a PIL image of
   dalidr's unaugmented view (PIL's `ImageOps` / affine transforms; the op isolated);
3. `paper`: the paper's whole reapply (PIL decode, bilinear antialiased `resized_crop`, flip,
   the op on the PIL image), against dalidr's whole replay: the op plus the resize's rounding.

Each cell is the mean absolute difference over every view, then the worst bin's mean, and the
share of pixels off by more than 2 levels (over every view). Results go to
bench/results/fidelity-cpu.json; a markdown table is printed last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import _apply_op

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine  # noqa: E402
from dalidr.augment.ops import OPS  # noqa: E402
from dalidr.augment.recipe import recipe  # noqa: E402
from dalidr.augment.records import draw_records  # noqa: E402
from dalidr.augment.replay import Replayer, ReplaySpec  # noqa: E402
from dalidr.data.sample_data import make_corpus  # noqa: E402
from dalidr.mldr.params import magnitude_bins  # noqa: E402
from tests.reference import apply_op, to_pixels  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="real photographs per bin")
    parser.add_argument("--size", type=int, default=224, help="output side in pixels")
    parser.add_argument("--bins", type=int, nargs="+", default=[0, 3, 9, 15, 21, 27, 30])
    parser.add_argument("--corpus", default=str(ROOT / "runs" / "fidelity-corpus"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fidelity-cpu.json"))
    return parser.parse_args()


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int64) - b.astype(np.int64))


def _paper_view(path: Path, record: np.void, size: int) -> Image.Image:
    """The paper's crop, resize and flip of one record, on the PIL image."""
    image = Image.open(path).convert("RGB")
    height, width = image.size[1], image.size[0]
    crop = record["crop"]
    top, left = to_pixels(crop[0:1], height)[0], to_pixels(crop[1:2], width)[0]
    h, w = to_pixels(crop[2:3], height)[0], to_pixels(crop[3:4], width)[0]
    image = F.resized_crop(image, top, left, h, w, [size, size], InterpolationMode.BILINEAR,
                           antialias=True)
    return F.hflip(image) if record["flip"] else image


def _paper_magnitude(tables: dict[int, tuple[np.ndarray, bool]], op_id: int,
                     signed_bin: int) -> float:
    if op_id not in tables:
        return 0.0
    values, signed = tables[op_id]
    magnitude = float(values[abs(signed_bin)])
    return -magnitude if signed and signed_bin < 0 else magnitude


def measure(paths: list[Path], size: int, bins: list[int]) -> dict[str, dict[str, float]]:
    r = recipe("rrc+ra/re", output_size=size)
    jpegs = [np.fromfile(p, dtype=np.uint8) for p in paths]
    image_hw = np.array([Image.open(p).size[::-1] for p in paths])
    n = len(paths)
    base_records = draw_records(r, 1, np.arange(n), [0], image_hw)[:, 0]
    base_records["ops"] = 0
    base_records["mags"] = 0
    base_records["erase"] = 0
    replayer = Replayer(ReplaySpec(r), batch_size=n, num_threads=2)
    tables = magnitude_bins(r)
    base = replayer(jpegs, base_records)
    paper_base = [_paper_view(paths[i], base_records[i], size) for i in range(n)]
    results: dict[str, dict[str, float]] = {}
    for op in OPS:
        signs = (1, -1) if op.signed else (1,)
        sums = {k: [] for k in ("torchvision", "pil", "paper")}
        over2 = {k: [0, 0] for k in sums}
        for bin_ in bins:
            for sign in signs:
                signed_bin = sign * bin_
                records = base_records.copy()
                records["ops"][:, 0] = op.op_id
                records["mags"][:, 0] = signed_bin
                out = replayer(jpegs, records)
                # The paper's magnitude: torchvision's (v1) table, which _apply_op expects
                # (Solarize's threshold in levels, not the v2 table's fraction).
                magnitude = _paper_magnitude(tables, op.op_id, signed_bin)
                per = {k: [] for k in sums}
                for i in range(n):
                    tensor = torch.from_numpy(base[i]).permute(2, 0, 1).contiguous()
                    tv = apply_op(tensor, op.op_id, signed_bin, r).permute(1, 2, 0).numpy()
                    pil_in = Image.fromarray(base[i])
                    pil = np.asarray(_apply_op(pil_in, op.name, magnitude,
                                               InterpolationMode.NEAREST, None))
                    paper = np.asarray(_apply_op(paper_base[i], op.name, magnitude,
                                                 InterpolationMode.NEAREST, None))
                    for key, ref in (("torchvision", tv), ("pil", pil), ("paper", paper)):
                        d = _diff(out[i], ref)
                        per[key].append(d.mean())
                        over2[key][0] += int((d > 2).sum())
                        over2[key][1] += d.size
                for key in sums:
                    sums[key].append(float(np.mean(per[key])))
        row: dict[str, float] = {}
        for key in sums:
            row[f"{key}_mean"] = float(np.mean(sums[key]))
            row[f"{key}_worst_bin_mean"] = float(np.max(sums[key]))
            row[f"{key}_over2"] = over2[key][0] / over2[key][1]
        results[op.name] = row
    return results


def main() -> None:
    args = parse_args()
    paths = make_corpus(args.corpus, args.images, seed=11)
    start = time.perf_counter()
    results = measure(paths, args.size, args.bins)
    seconds = time.perf_counter() - start
    report = {
        "benchmark": "fidelity",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": "cpu",
        "size": args.size,
        "images": args.images,
        "bins": args.bins,
        "seconds": seconds,
        "machine": describe_machine(),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| op | vs torchvision (mean / worst bin / >2) | vs PIL (mean / worst bin / >2) "
          "| vs paper's reapply (mean / worst bin / >2) |")
    print("| --- | --- | --- | --- |")
    for name, row in results.items():
        cells = [f"{row[k + '_mean']:.2f} / {row[k + '_worst_bin_mean']:.2f} / "
                 f"{100 * row[k + '_over2']:.2f}%" for k in ("torchvision", "pil", "paper")]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
