"""Pictures of replayed views: one row per sample, one column per slot, captioned."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["save_grid"]


def save_grid(
    rows: Sequence[np.ndarray],
    path: str | Path,
    row_titles: Sequence[str] = (),
    captions: Sequence[Sequence[str]] = (),
    gap: int = 4,
) -> Path:
    """Save rows of uint8 [N, H, W, 3] views as one PNG; captions go under each view."""
    side = rows[0].shape[1]
    columns = max(len(r) for r in rows)
    caption_h = 14 if captions else 0
    title_w = 96 if row_titles else 0
    width = title_w + columns * (side + gap) + gap
    height = len(rows) * (side + caption_h + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, views in enumerate(rows):
        top = gap + r * (side + caption_h + gap)
        if row_titles:
            draw.text((6, top + side // 2 - 6), row_titles[r], fill=(0, 0, 0))
        for c, view in enumerate(views):
            left = title_w + gap + c * (side + gap)
            canvas.paste(Image.fromarray(np.ascontiguousarray(view)), (left, top))
            if captions and c < len(captions[r]):
                draw.text((left + 2, top + side + 1), captions[r][c], fill=(40, 40, 40))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
