"""Recipes: presets, files, and clear errors."""

from __future__ import annotations

import json

import pytest

from dalidr.augment.recipe import Recipe, Variant, load_recipe, recipe
from dalidr.errors import RecipeError


def test_presets_are_the_papers_variants() -> None:
    assert recipe("rrc").variant is Variant.RRC
    assert recipe("RRC+RA/RE").variant is Variant.RRC_RA_RE
    assert recipe("rrc+mix").variant is Variant.RRC_MIX
    assert recipe("m*+r*").variant is Variant.MIX_RA_RE
    assert recipe("rrc+ra/re").erase_prob == 0.25 and recipe("rrc+ra/re").ra_num_ops == 2


def test_json_round_trip() -> None:
    r = recipe("m*+r*", teacher_size=288)
    assert Recipe.from_dict(json.loads(r.to_json())) == r
    assert r.teacher_side == 288


def test_yaml_file_with_base_and_overrides(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("base: rrc+ra/re\noutput_size: 160\nerase_prob: 0.5\n")
    r = load_recipe(path)
    assert (r.output_size, r.erase_prob, r.ra_num_ops) == (160, 0.5, 2)
    json_path = tmp_path / "r.json"
    json_path.write_text(json.dumps({"crop_scale": [0.35, 1.0]}))
    assert load_recipe(json_path).crop_scale == (0.35, 1.0)
    assert load_recipe("rrc") == recipe("rrc")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"erase_prob": 1.5}, "'erase_prob' is 1.5"),
        ({"ra_magnitude": 31}, "'ra_magnitude' is 31; valid: 0..30"),
        ({"crop_scale": (0.5, 0.1)}, "'crop_scale'"),
        ({"mix_prob": 0.5}, "at least one positive"),
    ],
)
def test_out_of_range_fields_are_named(change, message) -> None:
    with pytest.raises(RecipeError, match=message):
        Recipe(**change)


def test_unknown_names_are_refused(tmp_path) -> None:
    with pytest.raises(RecipeError, match=r"unknown recipe preset 'rrc\+xx'"):
        recipe("rrc+xx")
    with pytest.raises(RecipeError, match=r"unknown recipe field\(s\) \['cropscale'\]"):
        Recipe.from_dict({"cropscale": (0.1, 1)})
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_size: [unclosed\n")
    with pytest.raises(RecipeError, match="cannot be parsed"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="neither a preset"):
        load_recipe(tmp_path / "missing.yaml")
