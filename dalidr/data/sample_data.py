"""Real JPEGs without a download: a corpus cut from photographs that installed packages ship.

Tests, benchmarks and the demo need real JPEG content at ImageNet-like sizes (about 500 x 375),
not noise, and nothing can be downloaded at run time. scikit-learn ships two photographs
(`china.jpg`, `flower.jpg`, 640 x 427) and matplotlib one (`grace_hopper.jpg`, 512 x 600).
`make_corpus` cuts random regions from them, rescales them to ImageNet-like sizes and
re-encodes them at varied JPEG qualities and chroma subsampling, into an ImageFolder tree (one
class per source photograph). Every file is a real camera image, re-framed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from dalidr.errors import DatasetError

__all__ = ["bundled_photos", "make_corpus", "encode_jpeg", "link_tree"]


PHOTOS_ENV = "DALIDR_PHOTOS"  # a folder with copies of the photographs (no sklearn/matplotlib)


def bundled_photos() -> list[Path]:
    """Paths of the photographs that installed packages ship.

    Where `$DALIDR_PHOTOS` names a folder (the GPU bundle carries the three photographs, for a
    machine without scikit-learn and matplotlib), its `china.jpg`, `flower.jpg` and
    `grace_hopper.jpg` are used instead, in that order: the same files, so the same corpus.
    """
    folder = os.environ.get(PHOTOS_ENV)
    if folder:
        found = [Path(folder) / name for name in ("china.jpg", "flower.jpg", "grace_hopper.jpg")]
        missing = [str(p) for p in found if not p.is_file()]
        if missing:
            raise DatasetError(f"${PHOTOS_ENV}={folder}: missing {', '.join(missing)}")
        return found
    paths: list[Path] = []
    try:
        import sklearn

        images = Path(sklearn.__file__).parent / "datasets" / "images"
        paths += [images / "china.jpg", images / "flower.jpg"]
    except ImportError:
        pass
    import matplotlib

    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    found = [p for p in paths if p.is_file()]
    if not found:
        raise DatasetError("no bundled photograph found (matplotlib's sample_data is missing)")
    return found


def encode_jpeg(image: Image.Image, quality: int = 90, subsampling: int = 2) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def make_corpus(
    root: str | os.PathLike[str],
    count: int,
    seed: int = 0,
    long_side: tuple[int, int] = (400, 520),
) -> list[Path]:
    """Write `count` JPEGs under `root/<photo>/<index>.jpg`; return their paths in index order.

    Files that already exist are kept, so a corpus is made once and reused.
    """
    root = Path(root)
    photos = [Image.open(p).convert("RGB") for p in bundled_photos()]
    names = [p.stem for p in bundled_photos()]
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        which = index % len(photos)
        # Draw every number for this file even when it exists, so indices keep their content.
        frac = rng.uniform(0.45, 1.0)
        aspect = rng.choice([4 / 3, 3 / 4, 1.0, 3 / 2])
        px, py = rng.uniform(0, 1, size=2)
        side = int(rng.integers(long_side[0], long_side[1] + 1))
        quality = int(rng.integers(75, 96))
        subsampling = int(rng.choice([0, 1, 2]))
        path = root / names[which] / f"{index:06d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        photo = photos[which]
        width, height = photo.size
        w = min(width, int(frac * width))
        h = min(height, int(w / aspect))
        w = min(w, int(h * aspect))
        x0, y0 = int(px * (width - w)), int(py * (height - h))
        crop = photo.crop((x0, y0, x0 + w, y0 + h))
        scale = side / max(w, h)
        out = crop.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                          Image.Resampling.BICUBIC)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(encode_jpeg(out, quality, subsampling))
        tmp.replace(path)
    return paths


def link_tree(root: str | os.PathLike[str], sources: list[Path], count: int,
              classes: int) -> Path:
    """An ImageNet-shaped ImageFolder tree of `count` hard links to `sources` (cycled) in
    `classes` folders: `n<c:08d>/n<c:08d>_<j>.JPEG` links `sources[(c * ceil(count / classes)
    + j) % len(sources)]`. Per-file costs at scale without the bytes; links that exist are
    kept, so a tree is made once and reused."""
    root = Path(root)
    if not sources or classes < 1:
        raise DatasetError("link_tree needs at least one source file and one class")
    per_class = -(-count // classes)
    made = 0
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(min(per_class, count - made)):
            try:
                os.link(sources[made % len(sources)], folder / f"n{c:08d}_{j}.JPEG")
            except FileExistsError:
                pass
            made += 1
    return root
