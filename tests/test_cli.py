"""The command line: the demo job end to end, and clear errors for bad options."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dalidr.cli import main
from dalidr.sample_data import make_corpus


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
    assert main(["views", "--data", str(tmp_path / "data"), "--recipe", "rrc+zz"]) == 2
    assert "no image files" in capsys.readouterr().err
