"""The command line: subcommands, `python -m dalidr`, defaults in --help, clear errors."""

from __future__ import annotations

import argparse
import enum
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dalidr.cli import build_parser, main, sample_across_classes
from dalidr.data.sample_data import make_corpus
from dalidr.grid import wrap_text


def test_gallery_writes_a_grid_per_recipe(tmp_path, capsys) -> None:
    args = ["gallery", "--out", str(tmp_path), "--images", "2", "--slots", "3", "--size", "64"]
    assert main(args) == 0
    pngs = sorted(tmp_path.glob("views-*.png"))
    assert len(pngs) == 4
    picture = np.asarray(Image.open(pngs[0]))
    assert picture.shape[0] >= 2 * 64 and picture.std() > 20  # real content, not a blank canvas
    assert "rrc+ra/re" in capsys.readouterr().out


def test_views_of_an_image_folder(tmp_path) -> None:
    make_corpus(tmp_path / "data", 4)
    out = tmp_path / "v.png"
    assert (
        main(
            [
                "views",
                "--data",
                str(tmp_path / "data"),
                "--images",
                "2",
                "--slots",
                "2",
                "--recipe",
                "m*+r*",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.is_file()


def test_bad_options_are_reported_not_raised(tmp_path, capsys) -> None:
    assert main(["views", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "v.png")]) == 2
    assert "dataset root" in capsys.readouterr().err
    (tmp_path / "data" / "a").mkdir(parents=True)
    assert main(["views", "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "no image files" in err
    assert main(["views", "--data", str(tmp_path / "data"), "--recipe", "rrc+zz"]) == 2
    assert "rrc+zz" in capsys.readouterr().err  # options are checked before the data


def test_python_m_dalidr_is_the_console_script() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "dalidr", "--help"], capture_output=True,
                          text=True, env=env, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "experiment" in done.stdout and "reinforce" in done.stdout
    done = subprocess.run([sys.executable, "-m", "dalidr", "train", "--help"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr
    help_text = " ".join(done.stdout.split())
    assert "--epochs EPOCHS (default: 1)" in help_text and "--lr LR (default: 0.1)" in help_text


def test_every_help_shows_every_default() -> None:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = 0
    for name, sub in subcommands.choices.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            default = action.default
            if (not action.option_strings or default is None or isinstance(default, bool)
                    or default is argparse.SUPPRESS):
                continue
            shown = default.value if isinstance(default, enum.Enum) else default
            if isinstance(shown, tuple | list):
                shown = " ".join(str(v) for v in shown)
            assert f"default: {shown}" in text or "default" in (action.help or "").lower(), (
                name, action.dest)
            checked += 1
    assert checked > 60


def test_views_sample_across_classes() -> None:
    labels = np.repeat(np.arange(3), [5, 2, 6])
    chosen = sample_across_classes(labels, 7, seed=0)
    assert list(labels[chosen]) == [0, 1, 2, 0, 1, 2, 0]  # classes in turn, a small one runs out
    assert len(set(chosen.tolist())) == 7
    assert np.array_equal(chosen, sample_across_classes(labels, 7, seed=0))  # deterministic
    assert not np.array_equal(chosen, sample_across_classes(labels, 7, seed=1))
    assert len(sample_across_classes(labels, 50, seed=0)) == 13


def test_views_of_small_images_are_enlarged_with_readable_captions(tmp_path) -> None:
    make_corpus(tmp_path / "data", 9, long_side=(32, 40))
    out = tmp_path / "v.png"
    assert main(["views", "--data", str(tmp_path / "data"), "--images", "3", "--slots", "2",
                 "--recipe", "rrc+ra/re", "--out", str(out)]) == 0
    width, height = Image.open(out).size
    assert width >= 2 * 112 and height >= 3 * (112 + 10)  # cells of 112 px, caption bands
    from PIL import ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    long = "Rotate ShearX AutoContrast Equalize RE mixup flip"
    lines = wrap_text(draw, long, 100, None)
    assert len(lines) > 1 and all(draw.textlength(line) <= 100 for line in lines)
    assert " ".join(lines) == long


def test_view_captions_name_whole_operations() -> None:
    from dalidr.augment.ops import OPS
    from dalidr.augment.recipe import PRESETS
    from dalidr.augment.records import draw_records
    from dalidr.cli import _captions

    recipe = PRESETS["rrc+ra/re"]
    records = draw_records(recipe, 0, np.arange(40), np.arange(1), np.full((40, 2), 64))[:, 0]
    words = {word for caption in _captions(records, recipe) for word in caption.split()}
    ops = {op.name for op in OPS}
    assert words <= ops | {"RE", "flip"} and len(words & ops) >= 5
    assert any(len(word) > 6 for word in words)  # e.g. TranslateX, AutoContrast: not cut at 6


def test_a_failing_command_leaves_no_folder(tmp_path, capsys) -> None:
    make_corpus(tmp_path / "data", 3)
    out = tmp_path / "gallery"
    assert main(["gallery", "--out", str(out), "--images", "0"]) == 2
    assert "--images" in capsys.readouterr().err and not out.exists()
    out = tmp_path / "train"
    assert main(["train", "--data", str(tmp_path / "data"), "--mode", "erm", "--batch-size", "2",
                 "--model", "nope_net", "--out", str(out)]) == 2
    assert "not a timm model" in capsys.readouterr().err and not out.exists()
