"""The main job end to end at a tiny scale: teachers, reinforce, erm/kd/dr students, eval."""

from __future__ import annotations

import json

from dalidr.experiment import ExperimentConfig, run_experiment


def test_experiment_runs_every_step_and_caches(tmp_path) -> None:
    config = ExperimentConfig(
        out=tmp_path / "run",
        train_per_class=3,
        test_per_class=2,
        teacher_train_per_class=4,  # teachers on a larger set than the students'
        size=32,
        teachers=("resnet10t",),
        teacher_epochs=1,
        students=("resnet10t",),
        modes=("erm", "kd", "dr"),
        student_epochs=1,
        slots=2,
        topk=3,
        batch_size=16,
        allow_apt=False,
    )
    table = run_experiment(config)
    assert set(table["students"]) == {f"student-resnet10t-{m}" for m in ("erm", "kd", "dr")}
    for row in table["students"].values():
        assert 0 <= row["top1"] <= 100 and row["train_s"] > 0
    assert table["test_images"] == 20 and table["store_bytes_per_record"] > 0
    assert table["train_images"] == 30 and table["teacher_train_images"] == 40
    assert (tmp_path / "run" / "teacher-views.png").is_file()
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["students"] == table["students"]
    # A rerun finds every step done and changes nothing.
    again = run_experiment(config)
    assert again["students"] == table["students"]
