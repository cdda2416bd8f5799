"""Which encoded images replay decodes, told by their bytes, and which of them are damaged.

ImageNet's train set is JPEGs and one PNG under a .JPEG name (n02105855_2933.JPEG); other
ImageFolder trees hold the formats torchvision's `ImageFolder` lists. Replay
(`dalidr.replay`) decodes with DALI's `decoders.image_slice`, which tells a format by its
content, not its name, so dalidr does the same: `sniff_format` reads the magic bytes and
`check_image` refuses, naming the path, anything the replay graph does not decode (GIF, text,
truncated files). `IMAGE_EXTENSIONS` is torchvision's `IMG_EXTENSIONS` restricted to the
formats the graph decodes (all of them: JPEG, PNG, PPM/PGM, BMP, TIFF, WebP); dataset listing
matches it case-insensitively, as torchvision does.

Damaged-but-decodable JPEGs (entropy-coded data cut short, then an end-of-image marker) decode
with grey rows and only a libjpeg warning that names no file. `jpeg_damage` re-decodes the file
with PIL and reports libjpeg's own complaint, so the teacher pass and `dalidr inspect --data`
can name the path. Trade-off: that check is a full CPU decode, so it runs once per file in
the teacher pass and in inspection, never on the training hot path.
"""

from __future__ import annotations

import enum
import io
import warnings

import numpy as np

from dalidr.errors import ImageError

__all__ = [
    "ImageFormat",
    "IMAGE_EXTENSIONS",
    "REPLAY_FORMATS",
    "sniff_format",
    "check_image",
    "jpeg_damage",
    "has_image_extension",
]


class ImageFormat(enum.Enum):
    """An encoded image format, as told by its first bytes."""

    JPEG = "jpeg"
    PNG = "png"
    BMP = "bmp"
    TIFF = "tiff"
    WEBP = "webp"
    PNM = "pnm"  # binary PPM (P6) and PGM (P5)
    JPEG2000 = "jpeg2000"
    GIF = "gif"


# Formats DALI's decoders.image_slice decodes on the CPU and the mixed (GPU) backend: JPEG and
# JPEG 2000 with nvJPEG/nvJPEG2000 on the GPU, the others through nvImageCodec's CPU codecs
# (libpng, libtiff, OpenCV, libwebp) on either backend. GIF has no decoder in DALI.
REPLAY_FORMATS = frozenset(
    {
        ImageFormat.JPEG,
        ImageFormat.PNG,
        ImageFormat.BMP,
        ImageFormat.TIFF,
        ImageFormat.WEBP,
        ImageFormat.PNM,
        ImageFormat.JPEG2000,
    }
)

# torchvision.datasets.folder.IMG_EXTENSIONS, restricted to REPLAY_FORMATS (none is left out).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)

_JP2_BOX = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_CODESTREAM = b"\xff\x4f\xff\x51"


def has_image_extension(name: str) -> bool:
    """True if `name` ends with one of `IMAGE_EXTENSIONS`, in any case (as ImageFolder)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _head(data: np.ndarray | bytes | memoryview, count: int) -> bytes:
    if isinstance(data, np.ndarray):
        return data[:count].tobytes()
    return bytes(data[:count])


def sniff_format(data: np.ndarray | bytes | memoryview) -> ImageFormat | None:
    """The format `data` (an encoded file's bytes) is in, from its magic bytes; None if unknown."""
    head = _head(data, 16)
    if head[:3] == b"\xff\xd8\xff":
        return ImageFormat.JPEG
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return ImageFormat.PNG
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageFormat.TIFF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ImageFormat.WEBP
    if head[:2] == b"BM" and len(head) >= 14:
        return ImageFormat.BMP
    if head[:2] in (b"P5", b"P6") and len(head) > 2 and head[2:3].isspace():
        return ImageFormat.PNM
    if head[:12] == _JP2_BOX or head[:4] == _J2K_CODESTREAM:
        return ImageFormat.JPEG2000
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return ImageFormat.GIF
    return None


_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"


def check_image(data: np.ndarray | bytes, where: str) -> ImageFormat:
    """Return the format of `data`; raise ImageError naming `where` unless replay decodes it.

    Refused: unknown or undecodable formats (GIF, text, empty files) and files cut short
    (a JPEG without its end-of-image marker, a PNG without its IEND chunk). This reads only
    the first and last bytes; `jpeg_damage` is the deeper (decoding) check.
    """
    raw = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    if len(raw) == 0:
        raise ImageError(f"{where}: empty file (0 bytes)")
    kind = sniff_format(raw)
    if kind is None:
        raise ImageError(
            f"{where}: not an image replay decodes (first bytes {_head(raw, 8)!r}); "
            f"accepted formats: {', '.join(sorted(f.value for f in REPLAY_FORMATS))}"
        )
    if kind not in REPLAY_FORMATS:
        raise ImageError(
            f"{where}: {kind.value.upper()} images are not decoded by DALI; convert it to one "
            f"of {', '.join(sorted(f.value for f in REPLAY_FORMATS))}"
        )
    tail = raw[-64:].tobytes().rstrip(b"\x00")
    if kind is ImageFormat.JPEG and (len(raw) < 4 or not tail.endswith(_EOI)):
        raise ImageError(f"{where}: truncated JPEG (no end-of-image marker)")
    if kind is ImageFormat.PNG and not tail.endswith(_PNG_END):
        raise ImageError(f"{where}: truncated PNG (no IEND chunk)")
    return kind


def jpeg_damage(data: np.ndarray | bytes, where: str) -> str | None:
    """libjpeg's complaint about a JPEG's entropy-coded data, or None if it decodes cleanly.

    `data` is the file's bytes, `where` names it in the message (a path, or "sample i (path)").
    Decodes with PIL (libjpeg-turbo, the decoder torchvision's ImageFolder uses) with truncated
    images refused, and turns what libjpeg reports while decoding (premature end of data,
    corrupt data, bad Huffman codes) into one message naming `where`. Non-JPEG data returns
    None (other formats are judged by `check_image` and their decoder). Costs one full CPU
    decode: for the teacher pass and inspection, not for the training loader.
    """
    from PIL import Image, ImageFile

    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if sniff_format(raw) is not ImageFormat.JPEG:
        return None
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Image.open(io.BytesIO(raw)) as image:
                image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        return f"{where}: damaged JPEG data ({exc})"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    for warning in caught:
        text = str(warning.message)
        if "Corrupt" in text or "Premature" in text or "corrupt" in text:
            return f"{where}: damaged JPEG data ({text})"
    return None
