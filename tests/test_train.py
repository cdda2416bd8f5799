"""`dalidr train` and `dalidr eval` end to end, through the real CLI, on a small real store."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from dalidr.cli import main
from dalidr.training.evaluate import calibration, metrics
from dalidr.training.train import CHECKPOINT_NAME, load_training_checkpoint
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
    assert state["loader"] == {"epoch": 2, "position": 0, "step": 0, "world": 1, "served": 24}
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
    assert second["loader"] == {"epoch": 2, "position": 0, "step": 0, "world": 1, "served": 24}
    changed = [not torch.equal(first["model"][k], second["model"][k]) for k in first["model"]]
    assert any(changed)


def test_curriculum_needs_the_stores_difficulty_then_trains(tmp_path, capsys) -> None:
    """`--curriculum` on a store without difficulty is refused by name; after `dalidr
    difficulty STORE` it trains (and a second `difficulty` has nothing left to do)."""
    built = build_store(tmp_path / "data")
    common = ("--mode", "dr", "--store", built.url, "--epochs", "2", "--curriculum", "linear")
    assert _train(built, tmp_path / "refused", *common) == 2
    assert "no derived arrays" in capsys.readouterr().err
    assert main(["difficulty", built.url, "--no-progress"]) == 0
    assert "difficulty written for 3 block(s)" in capsys.readouterr().out
    assert main(["difficulty", built.url, "--no-progress"]) == 0
    assert "difficulty written for 0 block(s)" in capsys.readouterr().out
    summary = tmp_path / "curriculum.json"
    assert _train(built, tmp_path / "run", *common, "--summary", str(summary)) == 0
    assert [e["steps"] for e in json.loads(summary.read_text())["epochs"]] == [3, 3]
    assert _train(built, tmp_path / "bad", "--mode", "dr", "--store", built.url,
                  "--curriculum", "sideways") == 2
    assert "curriculum" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["erm", "kd", "erm-augment"])
def test_erm_and_kd_modes_share_the_script(built, tmp_path, mode) -> None:
    extra = {"erm": [], "kd": ["--teacher", "resnet10t", "--random-teacher"],
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


def _params(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {name for name, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k in names}


def test_init_from_a_dalidr_checkpoint_or_a_timm_state_dict(built, tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    source = tmp_path / "source"
    assert _train(built, source, "--mode", "dr", "--store", built.url, "--epochs", "1",
                  "--max-steps", "1") == 0
    trained = load_training_checkpoint(source / CHECKPOINT_NAME)["model"]
    other = timm.create_model("resnet10t", num_classes=3)
    torch.manual_seed(5)
    for p in other.parameters():
        p.data.normal_()
    save_file({k: v.contiguous() for k, v in other.state_dict().items()},
              str(tmp_path / "timm.safetensors"))
    for init, want in ((source / CHECKPOINT_NAME, trained),
                       (tmp_path / "timm.safetensors", other.state_dict())):
        out = tmp_path / f"init-{init.stem}"
        # A vanishing learning rate: the weights after one step are the --init weights.
        assert _train(built, out, "--mode", "dr", "--store", built.url, "--epochs", "1",
                      "--max-steps", "1", "--lr", "1e-12", "--init", str(init)) == 0
        got = load_training_checkpoint(out / CHECKPOINT_NAME)["model"]
        for name, value in _params(want, other).items():
            torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=name)
    # Without --init the same run starts elsewhere.
    assert _train(built, tmp_path / "scratch", "--mode", "dr", "--store", built.url,
                  "--epochs", "1", "--max-steps", "1", "--lr", "1e-12") == 0
    scratch = load_training_checkpoint(tmp_path / "scratch" / CHECKPOINT_NAME)["model"]
    assert not torch.allclose(scratch["fc.weight"], trained["fc.weight"], atol=1e-6)


def test_init_mismatches_are_clear_and_leave_nothing(built, tmp_path, capsys) -> None:
    import timm

    five = tmp_path / "five.pt"
    torch.save(timm.create_model("resnet10t", num_classes=5).state_dict(), five)
    three = tmp_path / "three.pt"
    torch.save(timm.create_model("resnet10t", num_classes=3).state_dict(), three)
    cases = [(["--init", str(five)], "predicts 5 classes but the dataset has 3"),
             (["--init", str(three), "--model", "resnet14t"], "does not fit timm architecture"),
             (["--init", str(tmp_path / "none.pt")], "does not exist"),
             (["--init", str(five), "--pretrained"], "--init and --pretrained"),
             (["--model", "resnet10x"], "not a timm model")]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"never-{i}"
        assert _train(built, out, "--mode", "dr", "--store", built.url, *extra) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not out.exists(), extra


def test_failing_options_leave_no_out_folder(built, tmp_path) -> None:
    for extra in (["--mode", "dr"], ["--mode", "kd"], ["--mode", "dr", "--store", built.url,
                                                         "--batch-size", "1000"]):
        out = tmp_path / "never"
        assert _train(built, out, *extra) == 2
        assert not out.exists(), extra


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only(built, tmp_path, monkeypatch, capsys) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert _train(built, tmp_path / "bar", "--mode", "dr", "--store", built.url,
                  "--epochs", "1") == 0
    drawn = terminal.getvalue()
    assert "epoch 1/1" in drawn and "3/3" in drawn
    assert "step/s" in drawn or "s/step" in drawn  # the rate (and the ETA beside it)
    assert "epoch 0: 3 steps" in capsys.readouterr().out  # the epoch line stays
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert _train(built, tmp_path / "quiet", "--mode", "dr", "--store", built.url,
                  "--epochs", "1", "--no-progress") == 0
    assert quiet.getvalue() == ""


def test_eval_of_an_ensemble(built, tmp_path, capsys) -> None:
    out = tmp_path / "member"
    assert _train(built, out, "--mode", "dr", "--store", built.url, "--epochs", "1") == 0
    checkpoint = out / CHECKPOINT_NAME
    single, pair = tmp_path / "single", tmp_path / "pair"
    common = ["--data", str(built.root), "--batch-size", "10", "--threads", "1"]
    assert main(["eval", "--checkpoint", str(checkpoint), "--out", str(single), *common]) == 0
    # The same member twice: the mean softmax is the member's, at its trained side (32 px).
    teacher = f"resnet10t@{checkpoint},resnet10t@{checkpoint}"
    assert main(["eval", "--teacher", teacher, "--out", str(pair), *common]) == 0
    one = json.loads((single / "eval.json").read_text())
    two = json.loads((pair / "eval.json").read_text())
    assert two["teacher"] == teacher and two["size"] == 32 and two["samples"] == 24
    assert two["top1"] == one["top1"] and abs(two["nll"] - one["nll"]) < 1e-4
    assert (pair / "reliability.png").is_file()
    with pytest.raises(SystemExit):  # argparse: one of --checkpoint and --teacher
        main(["eval", "--teacher", teacher, "--checkpoint", str(checkpoint), *common])
    assert "not allowed with argument" in capsys.readouterr().err
