"""A tree of real photographs as ImageNet holds them, through the teacher pass and the loader.

The tree mixes what ImageNet's train set has: JPEGs with EXIF orientation tags 3, 6 and 8, a
PNG under a .jpg name, CMYK, greyscale and progressive JPEGs. Its twin tree holds, for each
file, a lossless PNG of PIL's `Image.open(path).convert("RGB")`, the pixels torchvision's
ImageFolder and the paper's code see. Under dalidr's decoding convention the two trees are
the same dataset to the teacher pass and to the loader: the same sizes in the manifest, the
same records, the same teacher top-k, the same served views, bit for bit (DALI's CPU
decoders are libjpeg-turbo and libpng, as PIL's).

Damaged JPEG data (cut short, then closed with an end-of-image marker) is refused by path, or
skipped with a warning naming it under --skip-bad; a JPEG with stray bytes after its data is
served with a warning naming it.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from dalidr.augment.recipe import recipe
from dalidr.augment.replay import Output, Replayer, ReplaySpec
from dalidr.data.dataset import list_dataset
from dalidr.data.sample_data import make_corpus
from dalidr.errors import ImageError
from dalidr.teacher.reinforce import CompileMode, ReinforceConfig, reinforce
from dalidr.training.loader import LastBatch, LoaderConfig, ReinforcedLoader
from store import StoreReader

IMAGES, SLOTS, K, BLOCK = 12, 2, 2, 4


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# How file i of the tree is rewritten (the rest stay baseline JPEGs).
REWRITES = {
    0: lambda im: _save(im, "JPEG", quality=90, exif=_exif(3)),
    1: lambda im: _save(im, "JPEG", quality=90, exif=_exif(6)),
    2: lambda im: _save(im, "JPEG", quality=90, exif=_exif(8)),
    3: lambda im: _save(im, "PNG"),  # under its .jpg name, as n02105855_2933.JPEG
    4: lambda im: _save(im.convert("CMYK"), "JPEG", quality=90),
    5: lambda im: _save(im.convert("L"), "JPEG", quality=90),
    6: lambda im: _save(im, "JPEG", quality=90, progressive=True),
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("trees")
    tree, twin = folder / "imagenet-like", folder / "as-pil-sees-it"
    paths = make_corpus(tree, IMAGES, seed=4)
    for i, path in enumerate(paths):
        if i in REWRITES:
            path.write_bytes(REWRITES[i](Image.open(path).convert("RGB")))
        target = twin / path.relative_to(tree)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_save(Image.open(path).convert("RGB"), "PNG"))
    return tree, twin


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    path = tmp_path_factory.mktemp("teacher") / "test_resnet.safetensors"
    save_file(model.state_dict(), str(path))
    return f"test_resnet@{path}"


def _config(data: Path, teacher: str, out: Path, **changes: object) -> ReinforceConfig:
    config = ReinforceConfig(
        data=data, teacher=teacher, recipe=recipe("rrc+ra/re", output_size=32, teacher_size=40),
        slots=SLOTS, k=K, out=str(out), seed=5, batch_size=6, block_size=BLOCK, slot_group=2,
        device="cpu", num_threads=2, compile=CompileMode.OFF, progress=False)
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def stores(trees: tuple[Path, Path], teacher: str,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("stores")
    urls = []
    for name, data in zip(("tree", "twin"), trees, strict=True):
        config = _config(data, teacher, folder / name)
        report = reinforce(config, rank=0, world=1)
        assert report.committed == IMAGES // BLOCK and not report.skipped_samples
        urls.append(config.out)
    return urls[0], urls[1]


def test_manifest_sizes_are_pils(trees: tuple[Path, Path], stores: tuple[str, str]) -> None:
    tree, _ = trees
    reader = StoreReader(stores[0])
    paths = sorted(tree.rglob("*.jpg"))
    sizes = np.array([Image.open(p).size[::-1] for p in paths])
    # A turned image would make every rotated sample's crops wrong: they are drawn for these.
    np.testing.assert_array_equal(reader.layout.image_hw, sizes)
    assert any(h > w for h, w in sizes[:3]) or any(h < w for h, w in sizes[:3])


def test_teacher_pass_sees_what_pil_sees(stores: tuple[str, str]) -> None:
    tree, twin = (StoreReader(url) for url in stores)
    samples = np.repeat(np.arange(IMAGES), SLOTS)
    slots = np.tile(np.arange(SLOTS), IMAGES)
    records, targets = tree.read_views(samples, slots)
    twin_records, twin_targets = twin.read_views(samples, slots)
    np.testing.assert_array_equal(records, twin_records)
    np.testing.assert_array_equal(targets.classes, twin_targets.classes)
    np.testing.assert_array_equal(targets.probs, twin_targets.probs)


def test_loader_serves_what_pil_sees(trees: tuple[Path, Path], stores: tuple[str, str]) -> None:
    tree, twin = trees
    reader = StoreReader(stores[0])
    data = reader.epoch(0)
    twin_files = sorted(twin.rglob("*.jpg"))
    pngs = [np.fromfile(p, dtype=np.uint8) for p in twin_files]
    replayer = Replayer(ReplaySpec(reader.config.recipe, output=Output.FLOAT_CHW), IMAGES)
    want = replayer([pngs[int(s)] for s in data.plan.samples], data.records)
    config = LoaderConfig(batch_size=IMAGES, last_batch=LastBatch.PARTIAL)
    with ReinforcedLoader(stores[0], tree, config) as loader:
        loader.set_epoch(0)
        (images, _), = list(loader)
        served = np.array(loader.served_samples)
    np.testing.assert_array_equal(served, data.plan.samples)
    np.testing.assert_allclose(images.numpy(), want, rtol=0, atol=1e-6)


def test_damaged_jpeg_data_is_refused_or_skipped_by_path(
        trees: tuple[Path, Path], teacher: str, tmp_path: Path) -> None:
    root = tmp_path / "images"
    files = make_corpus(root, 8, seed=6)
    damaged, padded = files[2], files[5]
    raw = damaged.read_bytes()
    damaged.write_bytes(raw[: len(raw) * 2 // 3] + b"\xff\xd9")  # still decodes, grey rows
    raw = padded.read_bytes()
    padded.write_bytes(raw[:-2] + b"\x55" * 64 + b"\xff\xd9")  # whole image, stray bytes
    config = _config(root, teacher, tmp_path / "store")
    name = str(damaged.relative_to(root))
    with pytest.raises(ImageError, match=rf"{name}.*damaged JPEG data .*premature end"):
        reinforce(config, rank=0, world=1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = reinforce(dataclasses.replace(config, skip_bad=True), rank=0, world=1)
    assert report.skipped_samples == (list_dataset(root).paths.index(name),)
    said = [str(w.message) for w in caught]
    assert any(name in m and "damaged JPEG data" in m for m in said), said
    stray = str(padded.relative_to(root))
    assert any(stray in m and "extraneous bytes" in m for m in said), said
