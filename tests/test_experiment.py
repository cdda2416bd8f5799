"""`dalidr experiment` end to end at a tiny scale, on a user's own ImageFolder and built-in data.

The user's data here is an ImageFolder of small real JPEGs (three photographs' crops, 32-40 px,
made by `make_corpus`), not Fashion-MNIST: teachers trained by the experiment or given as
`NAME@CKPT`, the teacher pass, erm/kd/dr students, evaluation, the table, JSON and plots.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dalidr.cli import main
from dalidr.data.sample_data import make_corpus
from dalidr.experiment import ExperimentConfig, run_experiment

TINY = ["--students", "resnet10t", "--epochs", "1", "--slots", "2", "--topk", "2",
        "--batch-size", "8", "--size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def user_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own")
    make_corpus(root / "train", 24, seed=0, long_side=(32, 40))
    make_corpus(root / "test", 9, seed=1, long_side=(32, 40))
    return root


@pytest.fixture(scope="module")
def trained_run(user_data: Path) -> tuple[Path, dict]:
    out = user_data / "run"
    code = main(["experiment", "--train", str(user_data / "train"), "--test",
                 str(user_data / "test"), "--teachers", "resnet10t", "--teacher-epochs", "1",
                 "--modes", "erm,kd,dr", "--out", str(out), *TINY])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_experiment_on_a_users_image_folder(trained_run, user_data, capsys) -> None:
    out, table = trained_run
    assert table["classes"] == ["china", "flower", "grace_hopper"]
    assert table["train_images"] == 24 and table["test_images"] == 9
    assert table["teacher_train_images"] == 24 and table["teacher_source"] == "trained"
    assert set(table["students"]) == {f"student-resnet10t-{m}" for m in ("erm", "kd", "dr")}
    for row in table["students"].values():
        assert 0 <= row["top1"] <= 100 and row["train_s"] > 0
        assert Path(row["reliability_png"]).is_file()
    assert table["store_bytes_per_record"] > 0
    # Each member its own seed (else it would be a copy of the erm student).
    seeds = {name: json.loads((out / name / "summary.json").read_text())["config"]["seed"]
             for name in ("teacher-0", "student-resnet10t-erm")}
    assert seeds == {"teacher-0": 1, "student-resnet10t-erm": 0}
    assert list(table["teacher_members_top1"]) == [f"resnet10t@{out / 'teacher-0' / 'last.pt'}"]
    assert 0 <= table["teacher_ensemble"]["top1"] <= 100
    for png in (table["fig1_png"], table["teacher_views_png"],
                table["teacher_ensemble"]["reliability_png"]):
        assert Image.open(png).size[0] > 100
    # A rerun finds every step done and changes nothing.
    capsys.readouterr()
    again = run_experiment(ExperimentConfig(
        out=out, train=user_data / "train", test=user_data / "test", teachers=("resnet10t",),
        teacher_epochs=1, students=("resnet10t",), modes=("erm", "kd", "dr"),
        student_epochs=1, slots=2, topk=2, batch_size=8, progress=False))
    assert again["students"] == table["students"]
    assert capsys.readouterr().out.count(": cached") == 4  # the teacher and three students


def test_experiment_with_a_given_teacher(trained_run, user_data, tmp_path) -> None:
    out, _ = trained_run
    teacher = f"resnet10t@{out / 'teacher-0' / 'last.pt'}"
    run = tmp_path / "given"
    assert main(["experiment", "--train", str(user_data / "train"), "--test",
                 str(user_data / "test"), "--teacher", teacher, "--modes", "dr",
                 "--out", str(run), *TINY]) == 0
    table = json.loads((run / "results.json").read_text())
    assert table["teacher"] == teacher and table["teacher_source"] == "given"
    assert not list(run.glob("teacher-[0-9]*"))  # nothing trained for the teacher
    assert set(table["students"]) == {"student-resnet10t-dr"}
    from store import StoreReader

    assert "last.pt" in StoreReader(str(run / "store")).config.teacher


@pytest.mark.parametrize("extra, message", [
    (["--modes", "erm,xx"], "--modes"),
    (["--students", "resnet_nope"], "not a timm model"),
    (["--teacher", "resnet10t@/no/such.pt"], "does not exist"),
    (["--teachers", "", "--modes", "dr"], "need a teacher"),
    (["--epochs", "0"], "--epochs"),
])
def test_bad_options_leave_nothing_behind(user_data, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "never"
    assert main(["experiment", "--train", str(user_data / "train"), "--test",
                 str(user_data / "test"), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_given_teacher_that_does_not_fit_is_refused_up_front(user_data, tmp_path,
                                                               capsys) -> None:
    import timm
    import torch

    five = tmp_path / "five.pt"
    torch.save(timm.create_model("resnet10t", num_classes=5).state_dict(), five)
    out = tmp_path / "never"
    assert main(["experiment", "--train", str(user_data / "train"), "--test",
                 str(user_data / "test"), "--teacher", f"resnet10t@{five}", "--topk", "2",
                 "--out", str(out)]) == 2
    assert "predicts 5 classes but the dataset has 3" in capsys.readouterr().err
    assert not out.exists()


def test_mismatched_classes_are_refused(user_data, tmp_path, capsys) -> None:
    test = tmp_path / "test"
    make_corpus(test, 2, seed=2, long_side=(32, 40))  # two of the three classes
    out = tmp_path / "never"
    assert main(["experiment", "--train", str(user_data / "train"), "--test", str(test),
                 "--out", str(out)]) == 2
    assert "must be the same" in capsys.readouterr().err
    assert not out.exists()


def test_builtin_data_with_larger_teacher_set(tmp_path) -> None:
    config = ExperimentConfig(
        out=tmp_path / "run", train_per_class=3, test_per_class=2,
        teacher_train_per_class=4,  # teachers on a larger set than the students'
        kept_teacher=None, teachers=(), students=("resnet10t",), modes=("erm",),
        student_epochs=1, batch_size=16, allow_apt=False, progress=False)
    table = run_experiment(config)
    assert table["train_images"] == 30 and table["teacher_train_images"] == 40
    assert table["test_images"] == 20 and table["teacher"] is None
    assert len(table["classes"]) == 10 and (tmp_path / "run" / "fig1.png").is_file()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["students"] == table["students"]
