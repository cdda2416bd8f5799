"""The teacher ensemble kept in the repository (`bench/teachers.py`, `dalidr.teacher.kept`).

The kept files are what `make demo` labels its store with: each must be small, recorded with
the command, data, epochs and accuracy that made it, fit its timm architecture, and be
refused by path when altered. With Fashion-MNIST installed, the ensemble is measured again on
real test images and must agree with the accuracy its index records.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalidr.cli import main
from dalidr.data.fashion_mnist import CLASSES
from dalidr.errors import OptionError
from dalidr.teacher import build_teacher
from dalidr.teacher.kept import KEPT_TEACHERS_DIR, kept_classes, kept_names, kept_teacher

NAME = "fashion-mnist"
FOLDER = KEPT_TEACHERS_DIR / NAME


def _index() -> dict:
    return json.loads((FOLDER / "ensemble.json").read_text())


def test_the_kept_ensemble_is_small_recorded_and_fits_its_architectures() -> None:
    assert NAME in kept_names()
    index = _index()
    assert index["classes"] == sorted(CLASSES) and kept_classes(NAME) == tuple(sorted(CLASSES))
    assert len(index["members"]) >= 2
    for member in index["members"]:
        path = FOLDER / member["file"]
        assert path.stat().st_size <= 4 * 2**20
        sidecar = json.loads((FOLDER / member["sidecar"]).read_text())
        assert sidecar["sha256"] == member["sha256"] and sidecar["dtype"] == "float16"
        assert sidecar["command"].startswith("python bench/teachers.py")
        assert sidecar["data"]["train_images"] == 60000
        assert sidecar["epochs"] >= 1 and sidecar["size"] == index["size"]
        assert sidecar["test"]["images"] == 10000 and 0 < sidecar["test"]["top1"] <= 100
    kept = kept_teacher(NAME)
    ensemble = build_teacher(kept.spec, len(kept.classes), size=kept.size)
    assert [v.size for v in ensemble.views] == [kept.size]
    assert "member-0" in ensemble.describe()


def test_an_altered_or_missing_kept_file_is_refused_by_path(tmp_path: Path) -> None:
    copy = tmp_path / NAME
    shutil.copytree(FOLDER, copy)
    member = copy / _index()["members"][0]["file"]
    data = bytearray(member.read_bytes())
    data[-1] ^= 1
    member.write_bytes(bytes(data))
    with pytest.raises(OptionError, match=f"{member}.*does not match the SHA-256"):
        kept_teacher(NAME, root=tmp_path)
    member.unlink()
    with pytest.raises(OptionError, match=f"{member} is missing"):
        kept_teacher(NAME, root=tmp_path)
    with pytest.raises(OptionError, match="no kept teacher 'nope'"):
        kept_teacher("nope", root=tmp_path)


def _garment_folder(root: Path, per_class: int, seed: int) -> Path:
    """An ImageFolder with Fashion-MNIST's class names (noise images: only the names matter)."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (28, 28), dtype=np.uint8)
            Image.fromarray(pixels).convert("RGB").save(root / name / f"{i}.jpg", quality=90)
    return root


def test_an_experiment_on_data_with_its_classes_uses_the_kept_ensemble(tmp_path: Path) -> None:
    from store import StoreReader

    train = _garment_folder(tmp_path / "train", 2, seed=0)
    test = _garment_folder(tmp_path / "test", 1, seed=1)
    out = tmp_path / "run"
    assert main(["experiment", "--train", str(train), "--test", str(test), "--modes", "dr",
                 "--students", "resnet10t", "--epochs", "1", "--slots", "2", "--topk", "2",
                 "--batch-size", "8", "--out", str(out), "--no-progress"]) == 0
    table = json.loads((out / "results.json").read_text())
    assert table["teacher_source"] == f"kept:{NAME}" and table["teacher_size"] == _index()["size"]
    assert not list(out.glob("teacher-[0-9]*"))  # nothing trained
    described = StoreReader(str(out / "store")).config.teacher
    assert "member-0" in described and f"{_index()['size']}px" in described


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs Debian's dataset-fashion-mnist")
def test_the_kept_ensemble_measures_what_its_index_records(tmp_path: Path) -> None:
    from dalidr.data.fashion_mnist import export_image_folder, load_fashion_mnist
    from dalidr.training.evaluate import EvalConfig, run_eval

    images, labels = load_fashion_mnist("test")
    root = export_image_folder(images, labels, tmp_path / "test", CLASSES, 100).root
    kept = kept_teacher(NAME)
    result = run_eval(EvalConfig(data=str(root), out=str(tmp_path / "eval"), teacher=kept.spec,
                                 size=kept.size, progress=False))
    # 1,000 of the 10,000 test images: within a few points of the whole test set's accuracy.
    assert abs(100 * result["top1"] - _index()["ensemble_test"]["top1"]) < 4.0
