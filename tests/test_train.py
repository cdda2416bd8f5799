"""`dalidr train` and `dalidr eval` end to end, through the real CLI, on a small real store."""

from __future__ import annotations

import json

import pytest
import torch

from dalidr.cli import main
from dalidr.evaluate import calibration, metrics
from dalidr.train import CHECKPOINT_NAME, load_training_checkpoint
from tests.store_builder import BuiltStore, build_store


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltStore:
    return build_store(tmp_path_factory.mktemp("train"))


def _train(built: BuiltStore, out, *extra: str) -> int:
    return main(["train", "--data", str(built.root), "--model", "resnet10t", "--batch-size", "8",
                 "--lr", "0.05", "--out", str(out), "--log-every", "0", "--threads", "1",
                 *extra])


def test_train_dr_then_eval(built, tmp_path, capsys) -> None:
    out = tmp_path / "dr"
    summary = tmp_path / "dr.json"
    assert _train(built, out, "--mode", "dr", "--store", built.url, "--epochs", "2",
                  "--warmup-epochs", "0.5", "--p", "0.7", "--discriminator",
                  "--summary", str(summary)) == 0
    report = json.loads(summary.read_text())
    assert [e["epoch"] for e in report["epochs"]] == [0, 1]
    for epoch in report["epochs"]:
        assert epoch["steps"] == 3 and epoch["images"] == 24
        assert epoch["images_per_s"] > 0 and 0 <= epoch["data_wait_fraction"] < 1
        assert epoch["loss"] > 0
    state = load_training_checkpoint(out / CHECKPOINT_NAME)
    assert state["loader"] == {"epoch": 2, "step": 0}
    assert state["meta"]["model"] == "resnet10t" and state["meta"]["size"] == 32
    assert "epoch 1: 3 steps" in capsys.readouterr().out

    eval_out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(out / CHECKPOINT_NAME), "--data", str(built.root),
                 "--out", str(eval_out), "--batch-size", "10", "--threads", "1"]) == 0
    result = json.loads((eval_out / "eval.json").read_text())
    assert result["samples"] == 24
    assert 0 <= result["top1"] <= result["top5"] == 1.0  # 3 classes: top-5 covers them all
    assert result["nll"] > 0 and 0 <= result["ece"] <= 1
    assert sum(result["calibration"]["count"]) == 24
    assert (eval_out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ECE(15)" in capsys.readouterr().out


def test_resume_continues_where_the_checkpoint_stopped(built, tmp_path) -> None:
    out = tmp_path / "resume"
    common = ("--mode", "dr", "--store", built.url, "--seed", "1")
    assert _train(built, out, *common, "--epochs", "1") == 0
    first = load_training_checkpoint(out / CHECKPOINT_NAME)
    summary = tmp_path / "resumed.json"
    assert _train(built, out, *common, "--epochs", "2", "--resume",
                  "--summary", str(summary)) == 0
    report = json.loads(summary.read_text())
    assert [e["epoch"] for e in report["epochs"]] == [0, 1]  # epoch 0 kept, epoch 1 trained
    second = load_training_checkpoint(out / CHECKPOINT_NAME)
    assert second["loader"] == {"epoch": 2, "step": 0}
    changed = [not torch.equal(first["model"][k], second["model"][k]) for k in first["model"]]
    assert any(changed)


@pytest.mark.parametrize("mode", ["erm", "kd", "erm-augment"])
def test_erm_and_kd_modes_share_the_script(built, tmp_path, mode) -> None:
    extra = {"erm": [], "kd": ["--teacher", "resnet10t"],
             "erm-augment": ["--augment", "m*+r*"]}[mode]
    mode = mode.split("-")[0]
    summary = tmp_path / f"{mode}.json"
    assert _train(built, tmp_path / mode, "--mode", mode, "--size", "32", "--epochs", "1",
                  "--max-steps", "2", "--optimizer", "adamw", "--lr", "1e-3", "--schedule",
                  "step", "--summary", str(summary), *extra) == 0
    epoch = json.loads(summary.read_text())["epochs"][0]
    assert epoch["steps"] == 2 and epoch["loss"] > 0


def test_bad_options_exit_with_a_message(built, tmp_path, capsys) -> None:
    assert _train(built, tmp_path / "x", "--mode", "dr") == 2
    assert "needs --store" in capsys.readouterr().err
    assert _train(built, tmp_path / "z", "--mode", "dr", "--store", built.url,
                  "--augment", "rrc+ra/re") == 2
    assert "--augment is for modes erm and kd" in capsys.readouterr().err
    assert _train(built, tmp_path / "y", "--mode", "dr", "--store", built.url,
                  "--num-classes", "5") == 2
    assert "predicts 5 classes" in capsys.readouterr().err


def test_metrics_on_known_values() -> None:
    logits = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1],
                                     [0.5, 0.25, 0.25]]))
    labels = torch.tensor([0, 1, 1, 0])
    result = metrics(logits, labels)
    assert result.top1 == 0.75 and result.top5 == 1.0
    want_nll = -torch.log(torch.tensor([0.9, 0.3, 0.7, 0.5])).mean()
    assert abs(result.nll - float(want_nll)) < 1e-5
    # Bins: 0.9 (right), 0.6 (wrong), 0.7 (right), 0.5 (right): |1-.9|+|0-.6|+|1-.7|+|1-.5| / 4
    assert abs(result.ece - (0.1 + 0.6 + 0.3 + 0.5) / 4) < 1e-6
    assert calibration(torch.eye(3), torch.arange(3)).ece == 0.0
