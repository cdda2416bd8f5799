"""Formats, EXIF orientation and damaged data, on real photographs (the bundled ones).

The decoding convention (`dalidr.augment.conventions.DECODE_CONVENTION`) is PIL's, which
torchvision's
ImageFolder and the paper's code use: every format replay accepts must decode to exactly
`Image.open(path).convert("RGB")`, at `Image.open(path).size` whatever the EXIF orientation tag
says, and what replay does not decode is refused by path.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from dalidr.augment.image_formats import (
    IMAGE_EXTENSIONS,
    ImageFormat,
    check_image,
    has_image_extension,
    jpeg_damage,
    sniff_format,
)
from dalidr.augment.recipe import recipe
from dalidr.augment.records import draw_records
from dalidr.augment.replay import DECODE_ARGS, PEEK_ARGS, Replayer, ReplaySpec, check_jpeg
from dalidr.data.sample_data import bundled_photos
from dalidr.errors import ImageError

ORIENTATIONS = (3, 6, 8)


def _photo(index: int = 0, size: tuple[int, int] = (150, 100)) -> Image.Image:
    return Image.open(bundled_photos()[index % len(bundled_photos())]).convert("RGB").resize(size)


def _encode(image: Image.Image, fmt: str, **options: object) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# name -> (expected format, encoder from a photograph)
VARIANTS = {
    "jpeg 4:2:0": (ImageFormat.JPEG, lambda im: _encode(im, "JPEG", quality=90, subsampling=2)),
    "jpeg 4:4:4": (ImageFormat.JPEG, lambda im: _encode(im, "JPEG", quality=95, subsampling=0)),
    "jpeg progressive": (ImageFormat.JPEG, lambda im: _encode(im, "JPEG", progressive=True)),
    "jpeg grey": (ImageFormat.JPEG, lambda im: _encode(im.convert("L"), "JPEG")),
    "jpeg cmyk": (ImageFormat.JPEG, lambda im: _encode(im.convert("CMYK"), "JPEG")),
    "jpeg exif 6": (ImageFormat.JPEG, lambda im: _encode(im, "JPEG", exif=_exif(6))),
    "png": (ImageFormat.PNG, lambda im: _encode(im, "PNG")),
    "png grey": (ImageFormat.PNG, lambda im: _encode(im.convert("L"), "PNG")),
    "png rgba": (ImageFormat.PNG, lambda im: _encode(im.convert("RGBA"), "PNG")),
    "bmp": (ImageFormat.BMP, lambda im: _encode(im, "BMP")),
    "tiff": (ImageFormat.TIFF, lambda im: _encode(im, "TIFF")),
    "webp lossless": (ImageFormat.WEBP, lambda im: _encode(im, "WEBP", lossless=True)),
    "ppm": (ImageFormat.PNM, lambda im: _encode(im, "PPM")),
    "pgm": (ImageFormat.PNM, lambda im: _encode(im.convert("L"), "PPM")),
    "jpeg 2000": (ImageFormat.JPEG2000, lambda im: _encode(im, "JPEG2000")),
}


def _decode(encoded: list[np.ndarray], device_id: int | None = None) -> list[np.ndarray]:
    """Whole images and their peeked shapes, decoded the way every dalidr pipeline decodes."""

    @pipeline_def(batch_size=len(encoded), num_threads=1, device_id=device_id)
    def pipe():
        data = fn.external_source(name="x", dtype=types.UINT8)
        device = "cpu" if device_id is None else "mixed"
        return (fn.decoders.image(data, device=device, **DECODE_ARGS),
                fn.peek_image_shape(data, **PEEK_ARGS))

    p = pipe()
    p.build()
    p.feed_input("x", encoded)
    images, shapes = p.run()
    if hasattr(images, "as_cpu"):
        images = images.as_cpu()
    out = [np.asarray(images[i]) for i in range(len(encoded))]
    for i, image in enumerate(out):
        assert tuple(np.asarray(shapes[i])[:2]) == image.shape[:2]
    return out


def _pil(data: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB"))


def test_extensions_are_torchvisions_image_folder_list() -> None:
    assert set(IMAGE_EXTENSIONS) == set(IMG_EXTENSIONS)
    assert has_image_extension("n01/a.Jpg") and has_image_extension("x.JPEG")
    assert not has_image_extension("x.gif") and not has_image_extension("notes.txt")


@pytest.mark.parametrize("device_id", [None, pytest.param(0, marks=pytest.mark.gpu)])
def test_every_format_decodes_as_pil_converts_it_to_rgb(device_id: int | None) -> None:
    encoded = {name: (fmt, make(_photo(i))) for i, (name, (fmt, make)) in
               enumerate(VARIANTS.items())}
    for name, (fmt, data) in encoded.items():
        assert sniff_format(data) is fmt, name
        assert check_image(data, name) is fmt
    decoded = _decode([data for _, data in encoded.values()], device_id)
    for (name, (fmt, data)), image in zip(encoded.items(), decoded, strict=True):
        expected = _pil(data)
        assert image.shape == expected.shape, name
        diff = np.abs(image.astype(int) - expected.astype(int))
        if device_id is None or fmt not in (ImageFormat.JPEG, ImageFormat.JPEG2000):
            # libjpeg-turbo / OpenJPEG on both sides, lossless codecs: the same pixels.
            assert diff.max() == 0, f"{name}: max {diff.max()}, mean {diff.mean():.3f}"
        else:
            # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a few levels
            # (nvJPEG2000 from OpenJPEG likewise).
            assert diff.mean() < 3.0, f"{name}: mean {diff.mean():.3f}"


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_exif_orientation_is_ignored_by_replay(orientation: int) -> None:
    """Tagged and untagged files hold the same scan: replay must not tell them apart."""
    photos = [_photo(i, (160 + 8 * i, 100)) for i in range(3)]  # landscape: a turn shows
    plain = [_encode(p, "JPEG", quality=92) for p in photos]
    tagged = [_encode(p, "JPEG", quality=92, exif=_exif(orientation)) for p in photos]
    for data, photo in zip(tagged, photos, strict=True):
        with Image.open(io.BytesIO(data.tobytes())) as opened:
            assert opened.getexif()[0x0112] == orientation
            assert opened.size == photo.size  # what the manifest records
    image_hw = np.array([p.size[::-1] for p in photos])
    r = recipe("rrc+ra/re", output_size=48)
    records = draw_records(r, 11, np.arange(3), np.arange(4), image_hw).reshape(-1)
    replayer = Replayer(ReplaySpec(r), batch_size=12, num_threads=1)
    views = np.repeat(np.arange(3), 4)
    want = replayer([plain[i] for i in views], records)
    got = replayer([tagged[i] for i in views], records)
    np.testing.assert_array_equal(got, want)
    for image, data in zip(_decode(tagged), tagged, strict=True):
        np.testing.assert_array_equal(image, _pil(data))


def test_png_under_a_jpeg_name_replays_through_the_same_graph() -> None:
    """ImageNet's n02105855_2933.JPEG is a PNG: same pixels, same views as any other file."""
    photo = _photo(1, (140, 110))
    png, bmp = _encode(photo, "PNG"), _encode(photo, "BMP")
    check_jpeg(png, "n02105855/n02105855_2933.JPEG")  # the loaders' check lets it through
    r = recipe("rrc+ra/re", output_size=40)
    records = draw_records(r, 3, [0], np.arange(6), np.array([[110, 140]]))[0]
    replayer = Replayer(ReplaySpec(r), batch_size=6, num_threads=1)
    np.testing.assert_array_equal(replayer([png] * 6, records), replayer([bmp] * 6, records))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"GIF89a" + b"\x00" * 40, "GIF images are not decoded"),
        (b"this is a text file, not an image\n", "not an image replay decodes"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "truncated PNG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "truncated JPEG"),
    ],
)
def test_what_replay_cannot_decode_is_refused_by_path(content: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=rf"cls/bad\.JPEG: {message}"):
        check_image(content, "cls/bad.JPEG")
    r = recipe("rrc", output_size=32)
    replayer = Replayer(ReplaySpec(r), batch_size=1, num_threads=1)
    from dalidr.augment.records import identity_records

    with pytest.raises(ImageError, match=rf"sample 0 \(cls/bad\.JPEG\): {message}"):
        replayer([np.frombuffer(content, np.uint8)], identity_records(r, 1),
                 names=["cls/bad.JPEG"])


# ------------------------------------------------------------------------------ damaged data


def _damaged(data: np.ndarray, keep: float) -> np.ndarray:
    """Cut the file short, then close it with an end-of-image marker: it still decodes."""
    raw = data.tobytes()
    return np.frombuffer(raw[: int(len(raw) * keep)] + b"\xff\xd9", dtype=np.uint8)


JPEGS = [name for name, (fmt, _) in VARIANTS.items() if fmt is ImageFormat.JPEG]


@pytest.mark.parametrize("name", JPEGS)
def test_damaged_jpeg_data_is_reported_and_intact_data_is_not(name: str) -> None:
    make = VARIANTS[name][1]
    for index in range(len(bundled_photos())):
        intact = make(Image.open(bundled_photos()[index]).convert("RGB"))
        assert jpeg_damage(intact, "a.JPEG") is None, f"{name}: false positive"
        for keep in (0.4, 0.9, 0.995):
            bad = _damaged(intact, keep)
            check_image(bad, "b.JPEG")  # the cheap check cannot see it ...
            damage = jpeg_damage(bad, "cls/b.JPEG")  # ... the decoding one does
            assert damage is not None and damage.corrupt, f"{name} cut at {keep}"
            assert str(damage).startswith("cls/b.JPEG: damaged JPEG data (")
            assert "premature end of data segment" in str(damage)


def test_bytes_after_the_image_data_are_a_warning_not_corruption() -> None:
    intact = _encode(_photo(0), "JPEG", progressive=True).tobytes()
    padded = intact[:-2] + b"\x55" * 64 + b"\xff\xd9"
    damage = jpeg_damage(padded, "p.JPEG")
    assert damage is not None and not damage.corrupt
    assert "extraneous bytes" in str(damage)
    np.testing.assert_array_equal(_pil(np.frombuffer(padded, np.uint8)),
                                  _pil(np.frombuffer(intact, np.uint8)))
    assert jpeg_damage(_encode(_photo(0), "PNG"), "x.png") is None  # not a JPEG
