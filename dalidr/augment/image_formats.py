"""Which encoded images replay decodes, told by their bytes, and which of them are damaged.

ImageNet's train set is JPEGs and one PNG under a .JPEG name (n02105855_2933.JPEG); other
ImageFolder trees hold the formats torchvision's `ImageFolder` lists. Replay
(`dalidr.augment.replay`) decodes with DALI's `decoders.image_slice`, which tells a format by its
content, not its name, so dalidr does the same: `sniff_format` reads the magic bytes and
`check_image` refuses, naming the path, anything the replay graph does not decode (GIF, text,
truncated files). `IMAGE_EXTENSIONS` is torchvision's `IMG_EXTENSIONS` restricted to the
formats the graph decodes (all of them: JPEG, PNG, PPM/PGM, BMP, TIFF, WebP); dataset listing
matches it case-insensitively, as torchvision does.

Damaged-but-decodable JPEGs (entropy-coded data cut short, then an end-of-image marker) decode
with grey rows and only a libjpeg warning that names no file. `jpeg_damage` decodes the file
once with libjpeg-turbo and collects libjpeg's own complaints, so the teacher pass and
`dalidr inspect --data` can name the path, and refuse the file when data is missing. PIL
silences those messages, and DALI prints them without the file's name. Trade-off: that check
is a full CPU decode (about 1-10 ms a photograph), so it runs once per file in the teacher
pass and in inspection, never on the training hot path.
"""

from __future__ import annotations

import enum
import os
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from dalidr.errors import ImageError

__all__ = [
    "ImageFormat",
    "IMAGE_EXTENSIONS",
    "REPLAY_FORMATS",
    "sniff_format",
    "check_image",
    "jpeg_damage",
    "JpegDamage",
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


@dataclass(frozen=True)
class JpegDamage:
    """What libjpeg said while decoding a JPEG (`jpeg_damage`)."""

    # The file, as the caller named it.
    where: str
    # libjpeg's messages (or the decoder's error), in order.
    messages: tuple[str, ...]
    # True if pixels are missing or wrong (entropy data cut short or invalid, or the decoder
    # gave up): replay would serve grey or garbled rows. False for harmless complaints (bytes
    # after the image data, unknown header revisions): the pixels are whole.
    corrupt: bool

    def __str__(self) -> str:
        kind = "damaged JPEG data" if self.corrupt else "JPEG decoder warning"
        return f"{self.where}: {kind} ({'; '.join(self.messages)})"


# libjpeg messages that mean image data is missing or wrong (jerror.h: JWRN_HIT_MARKER,
# JWRN_HUFF_BAD_CODE, JWRN_JPEG_EOF, JWRN_MUST_RESYNC, JWRN_NOT_SEQUENTIAL, ...).
_CORRUPT = ("premature end", "bad huffman", "huffman", "resync", "corrupt jpeg data: bad",
            "not sequential", "inconsistent progression", "invalid progressive",
            "arithmetic", "no image")
_LIBJPEG = ("corrupt jpeg", "premature end", "warning:", "invalid", "inconsistent",
            "huffman", "bogus", "unsupported", "marker")
_DECODE_LOCK = threading.Lock()


def _libjpeg_messages(raw: bytes) -> tuple[list[str], str | None]:
    """libjpeg-turbo's messages while decoding `raw`, and the decoder's error if it failed.

    torchvision's `decode_jpeg` is libjpeg-turbo with libjpeg's default message handler, which
    writes to the process's stderr and nowhere else; the messages are read back by pointing
    file descriptor 2 at a temporary file for the one decode (under a lock). Anything else
    written there meanwhile (other threads) is passed on to stderr unchanged.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notice for its decoders
        from torchvision.io import ImageReadMode, decode_jpeg

    tensor = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    error = None
    with _DECODE_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchvision's deprecation notice
                try:
                    decode_jpeg(tensor, mode=ImageReadMode.RGB)
                except RuntimeError as exc:
                    error = str(exc).strip().splitlines()[0]
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        text = sink.read().decode("utf-8", errors="replace")
    ours: list[str] = []
    others: list[str] = []
    for line in text.splitlines():
        (ours if line.strip().lower().startswith(_LIBJPEG) else others).append(line)
    if others:
        sys.stderr.write("\n".join(others) + "\n")
    return [m.strip() for m in ours if m.strip()], error


def jpeg_damage(data: np.ndarray | bytes, where: str) -> JpegDamage | None:
    """What is wrong with a JPEG's image data, or None if it decodes without complaint.

    `data` is the file's bytes, `where` names it in the result (a path, or "sample i (path)").
    The file is decoded once with libjpeg-turbo (torchvision's decoder, the one PIL and DALI's
    CPU path also build on) and its warnings are collected: a JPEG truncated and then closed
    with an end-of-image marker decodes "successfully" with grey rows, and libjpeg's
    "Corrupt JPEG data: premature end of data segment" is the only sign. `JpegDamage.corrupt`
    tells missing or invalid data (refuse the file) from harmless complaints (warn). Data that
    is not a JPEG returns None (`check_image` judges other formats). Costs one full CPU decode:
    meant for the teacher pass and `dalidr inspect --data`, not for the training loader.
    """
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if sniff_format(raw) is not ImageFormat.JPEG:
        return None
    messages, error = _libjpeg_messages(raw)
    if error is not None:
        messages.append(error)
    if not messages:
        return None
    corrupt = error is not None or any(
        key in m.lower() for m in messages for key in _CORRUPT if "extraneous" not in m.lower()
    )
    return JpegDamage(where, tuple(messages), corrupt)
