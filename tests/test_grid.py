"""Grid captions read cleanly: whole class names, a space before each percentage, one class a
line, wrapped (never cut) when a line is wider than the view."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from dalidr.data.fashion_mnist import CLASSES
from dalidr.grid import _font, class_caption, save_grid, wrap_text

TILE = 128  # the teacher-views grid's view side (dalidr/experiment_report.py)


def _probe() -> ImageDraw.ImageDraw:
    return ImageDraw.Draw(Image.new("RGB", (1, 1)))


def test_class_caption_has_whole_names_and_spaced_percentages() -> None:
    caption = class_caption(CLASSES, np.array([9, 7, 5]), np.array([0.94, 0.04, 0.02]))
    assert caption == "ankle-boot 94%\nsneaker 4%\nsandal 2%"
    assert class_caption(CLASSES, [], []) == ""


def test_each_class_keeps_its_own_line_at_the_tile_size() -> None:
    font = _font()
    for index, name in enumerate(CLASSES):
        caption = class_caption(CLASSES, [index, 0, 1], [1.0, 0.0, 0.0])
        lines = wrap_text(_probe(), caption, TILE - 4, font)
        assert lines == [f"{name} 100%", f"{CLASSES[0]} 0%", f"{CLASSES[1]} 0%"]


def test_a_long_name_wraps_onto_lines_instead_of_being_cut() -> None:
    font = _font()
    names = ("north-american-river-otter-pup", "a fairly long class name with words")
    caption = class_caption(names, [0, 1], [0.5, 0.25])
    lines = wrap_text(_probe(), caption, 60, font)
    assert len(lines) > 4
    assert all(_probe().textlength(line, font=font) <= 60 for line in lines)
    assert "".join(lines).replace(" ", "") == caption.replace("\n", "").replace(" ", "")
    assert lines[-1].endswith("25%")


def test_the_caption_band_fits_every_line(tmp_path) -> None:
    views = np.zeros((2, TILE, TILE, 3), dtype=np.uint8)
    one = save_grid([views], tmp_path / "one.png", ["coat"], [["coat 70%", "coat 58%"]])
    three = save_grid([views], tmp_path / "three.png", ["coat"],
                      [[class_caption(CLASSES, [4, 6, 2], [0.7, 0.15, 0.08])] * 2])
    one_h, three_h = Image.open(one).size[1], Image.open(three).size[1]
    assert three_h - one_h >= 2 * 10  # two more lines of text under each view


def test_percentages_stand_flush_right_under_their_view(tmp_path) -> None:
    view = np.full((1, TILE, TILE, 3), 255, dtype=np.uint8)
    path = save_grid([view], tmp_path / "g.png", (), [["sneaker 4%"]], gap=6)
    band = np.asarray(Image.open(path).convert("L"))[6 + TILE:, 6:6 + TILE] < 128
    ink = np.flatnonzero(band.any(axis=0))
    name_end = ink[ink < TILE // 2].max()
    score_start = ink[ink > TILE // 2].min()
    assert ink.max() >= TILE - 6  # the percentage ends at the view's right edge
    assert score_start - name_end > 30  # a clear gap between name and percentage
