"""What an experiment shows: its table, a Fig. 1-style plot and the teacher's view of the data.

- `print_table`: teacher members and ensemble, the store's size, then one row per student and
  mode (top-1, ECE, training seconds, loader images/s), as `dalidr demo` prints it;
- `plot_accuracy_vs_time`: test top-1 against training wall-clock per student and mode, in the
  style of the paper's Fig. 1 (accuracy against cost), as a PNG;
- `teacher_views_png`: stored views of a few images replayed and captioned with the teacher's
  stored top-3, so a user sees what the students learn from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dalidr.data.dataset import DatasetListing

__all__ = ["print_table", "plot_accuracy_vs_time", "teacher_views_png"]

_MODE_STYLE = {
    "erm": ("o", "tab:blue", "ERM (original data)"),
    "kd": ("s", "tab:orange", "online KD"),
    "dr": ("*", "tab:green", "reinforced store (ours)"),
}


def print_table(table: dict[str, Any], config: Any) -> None:
    """The experiment's results on stdout."""
    print()
    print(f"dalidr experiment on {table['data']}: {table['train_images']} training and "
          f"{table['test_images']} test images, {table['size']} px")
    if table.get("teacher"):
        print(f"  teacher ({table['teacher_source']}, views at {table['teacher_size']} px)")
    for member, top1 in table.get("teacher_members_top1", {}).items():
        print(f"  teacher member {member}: top-1 {top1:.2f}%")
    if "teacher_ensemble" in table:
        ensemble = table["teacher_ensemble"]
        print(f"  teacher ensemble: top-1 {ensemble['top1']:.2f}%, ECE {ensemble['ece']:.2f}%")
    if "store_bytes_per_record" in table:
        print(f"  store: {table['store_bytes_per_record']:.1f} bytes per record "
              f"({config.recipe}, {config.slots} slots, top-{config.topk})")
    print()
    print(f"{'student':<14}{'mode':<6}{'top-1 %':>9}{'ECE %':>8}{'train s':>9}"
          f"{'loader img/s':>14}")
    for row in table["students"].values():
        print(f"{row['student']:<14}{row['mode']:<6}{row['top1']:>9.2f}{row['ece']:>8.2f}"
              f"{row['train_s']:>9.1f}{row['images_per_s']:>14.1f}")
    for arch in dict.fromkeys(r["student"] for r in table["students"].values()):
        by_mode = {r["mode"]: r for r in table["students"].values() if r["student"] == arch}
        if "erm" in by_mode and "dr" in by_mode:
            erm, dr = by_mode["erm"], by_mode["dr"]
            print(f"{arch}: dr - erm {dr['top1'] - erm['top1']:+.2f} points top-1, "
                  f"ECE {dr['ece'] - erm['ece']:+.2f}, training time x"
                  f"{dr['train_s'] / erm['train_s']:.3f}")
    print()
    if "teacher_views_png" in table:
        print(f"views with the teacher's top-3: {table['teacher_views_png']}")
    print(f"top-1 against training time (Fig. 1 style): {table['fig1_png']}")
    print("reliability diagrams: "
          f"{', '.join(r['reliability_png'] for r in table['students'].values())}")
    print(f"whole run: {table['wall_s']:.0f} s (cached steps skipped)")


def plot_accuracy_vs_time(rows: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Top-1 against training minutes, one marker per mode, students joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for mode, (marker, color, label) in _MODE_STYLE.items():
        points = [r for r in rows.values() if r["mode"] == mode]
        if points:
            ax.scatter([r["train_s"] / 60 for r in points], [r["top1"] for r in points],
                       marker=marker, s=120 if mode == "dr" else 60, color=color, label=label)
    for arch in sorted({r["student"] for r in rows.values()}):
        points = sorted((r for r in rows.values() if r["student"] == arch),
                        key=lambda r: r["train_s"])
        ax.plot([r["train_s"] / 60 for r in points], [r["top1"] for r in points],
                color="grey", lw=0.6, ls=":")
        ax.annotate(arch, (points[0]["train_s"] / 60, points[0]["top1"]),
                    textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("training wall-clock (minutes)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def teacher_views_png(store: Path, listing: DatasetListing, path: Path, seed: int,
                      count: int = 6, max_slots: int = 8) -> Path:
    """Replayed stored views (the first `max_slots`) of `count` images, captioned with the
    teacher's top-3."""
    from dalidr.augment.replay import Replayer, ReplaySpec
    from dalidr.grid import class_caption, save_grid
    from store import StoreReader

    reader = StoreReader(str(store))
    recipe = reader.config.recipe
    rng = np.random.default_rng(seed)
    samples = np.sort(rng.choice(len(listing), size=min(count, len(listing)), replace=False))
    slots = np.arange(min(max_slots, reader.config.slots))
    records, targets = reader.read_views(np.repeat(samples, len(slots)),
                                         np.tile(slots, len(samples)))
    jpegs = listing.source.read(np.repeat(samples, len(slots)))
    partners = listing.source.read(records["partner"]) if recipe.has_mix else None
    views = Replayer(ReplaySpec(recipe, size=128), batch_size=len(jpegs), num_threads=2)(
        jpegs, records, partners, num_samples=len(listing))
    labels = np.asarray(listing.labels)
    rows, captions = [], []
    for i in range(len(samples)):
        part = slice(i * len(slots), (i + 1) * len(slots))
        rows.append(views[part])
        captions.append([class_caption(listing.classes, cls[:3], prob[:3])
                         for cls, prob in zip(targets.classes[part], targets.probs[part],
                                              strict=True)])
    titles = [listing.classes[int(labels[s])] for s in samples]
    return save_grid(rows, path, titles, captions)
