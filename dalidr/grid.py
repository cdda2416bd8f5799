"""Pictures of replayed views: one row per sample, one column per slot, captioned.

Captions must stay legible whatever the view size: views smaller than `min_cell` pixels are
enlarged (nearest neighbour, so pixels stay visible as pixels), captions are wrapped to the
cell's width (a caption's own lines kept, e.g. one teacher class per line from `class_caption`;
a word wider than the cell continues on the next line, never cut off), and the caption band and
the title column are sized from the text measured with the font, not fixed. Trade-off: whole
words over more lines make taller caption bands rather than shortened names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["class_caption", "save_grid", "wrap_text"]

_SCORE = re.compile(r"^(.*\S) (\d+(?:\.\d+)?%)$")  # "ankle-boot 94%": name, percentage


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _width(draw: ImageDraw.ImageDraw, text: str, font: object) -> float:
    return float(draw.textlength(text, font=font))  # type: ignore[arg-type]


def wrap_text(draw: ImageDraw.ImageDraw, text: str, width: int, font: object) -> list[str]:
    """`text` in lines no wider than `width` pixels: each of its own lines (`\\n`) starts a
    new one, words are kept whole unless a word alone is too wide, then it continues on the
    next line (nothing is dropped)."""
    return [line for paragraph in text.split("\n")
            for line in _wrap_words(draw, paragraph, width, font)]


def class_caption(names: Sequence[str], classes: Sequence[int] | np.ndarray,
                  probs: Sequence[float] | np.ndarray) -> str:
    """One line per class, its whole name, a space and its rounded percentage:
    "ankle-boot 94%\\nsneaker 4%" (`save_grid` wraps a line only if it is wider than a view)."""
    return "\n".join(f"{names[int(c)]} {round(100 * float(p))}%"
                     for c, p in zip(classes, probs, strict=True))


def _wrap_words(draw: ImageDraw.ImageDraw, text: str, width: int, font: object) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        while _width(draw, word, font) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and _width(draw, word[:cut], font) > width:
                cut -= 1
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{line} {word}".strip()
        if _width(draw, candidate, font) <= width:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def _draw_caption_line(draw: ImageDraw.ImageDraw, xy: tuple[int, int], width: int, line: str,
                       font: object) -> None:
    """A line that ends in a percentage ("sneaker 4%") gets it flush right, so one class a line
    reads as a small table; the line already fits `width` with a space, so nothing overlaps."""
    score = _SCORE.match(line)
    parts = [(xy[0], line)] if score is None else [
        (xy[0], score[1]), (xy[0] + width - round(_width(draw, score[2], font)), score[2])]
    for x, text in parts:
        draw.text((x, xy[1]), text, fill=(40, 40, 40), font=font)  # type: ignore[arg-type]


def save_grid(
    rows: Sequence[np.ndarray],
    path: str | Path,
    row_titles: Sequence[str] = (),
    captions: Sequence[Sequence[str]] = (),
    gap: int = 6,
    min_cell: int = 112,
) -> Path:
    """Save rows of uint8 [N, H, W, 3] views as one PNG; captions go under each view."""
    side = rows[0].shape[1]
    scale = max(1, -(-min_cell // side))  # ceil: small views are enlarged to >= min_cell
    cell = side * scale
    columns = max(len(r) for r in rows)
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 2
    wrapped = [[wrap_text(probe, text, cell - 4, font) for text in row] for row in captions]
    lines = max((len(w) for row in wrapped for w in row), default=0)
    caption_h = lines * line_h + (4 if lines else 0)
    title_lines = [wrap_text(probe, t, 160, font) for t in row_titles]
    title_w = (int(max((_width(probe, line, font) for t in title_lines for line in t),
                       default=0)) + 2 * gap) if row_titles else 0
    width = title_w + columns * (cell + gap) + gap
    height = len(rows) * (cell + caption_h + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, views in enumerate(rows):
        top = gap + r * (cell + caption_h + gap)
        if row_titles:
            block = title_lines[r]
            y = top + cell // 2 - len(block) * line_h // 2
            for i, line in enumerate(block):
                draw.text((gap, y + i * line_h), line, fill=(0, 0, 0), font=font)
        for c, view in enumerate(views):
            left = title_w + gap + c * (cell + gap)
            image = Image.fromarray(np.ascontiguousarray(view))
            if scale > 1:
                image = image.resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(image, (left, top))
            if captions and c < len(wrapped[r]):
                for i, line in enumerate(wrapped[r][c]):
                    _draw_caption_line(draw, (left + 2, top + cell + 2 + i * line_h),
                                       cell - 4, line, font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
