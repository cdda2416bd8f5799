"""The teacher pass end to end: real JPEGs, real DALI replay, real timm teachers, real stores.

- the stored top-k equals an independent composition (per-view ROI replay at each member's own
  size, each member's forward, mean softmax, top-k);
- a 2-process `torchrun` (gloo, CPU) run writes a store byte-identical to a 1-process run;
- `kill -9` at several points, then the same command again: byte-identical to an uninterrupted
  run;
- bad input is refused before any store is made; unreadable images fail with their path, or are
  recorded as skipped with --skip-bad.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from dalidr.augment.recipe import recipe
from dalidr.cli import main as cli_main
from dalidr.data.sample_data import make_corpus
from dalidr.errors import ImageError, OptionError, StoreError
from dalidr.teacher.reinforce import CompileMode, ReinforceConfig, reinforce
from dalidr.teacher.skips import skipped_views
from kernels.topk import ensemble_topk_reference
from store import StoreReader
from tests.faults import FAULTS, PAGE, enospc_on, full_disk, pages
from tests.store.helpers import tree_bytes

ROOT = Path(__file__).resolve().parents[1]
SLOTS, K, BLOCK, BATCH = 3, 2, 4, 5  # 24 images: 6 blocks; batches span samples and slots


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reinforce") / "images"
    make_corpus(root, 24, seed=2)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for name, classes in (("test_resnet", 3), ("test_convnext", 3), ("resnet10t", 3),
                          ("test_resnet", 5)):
        torch.manual_seed(classes + len(name))
        model = timm.create_model(name, pretrained=False, num_classes=classes)
        path = folder / f"{name}-{classes}.safetensors"
        save_file(model.state_dict(), str(path))
        out[f"{name}-{classes}"] = path
    return out


def _teacher(checkpoints: dict[str, Path]) -> str:
    # Two members with one normalisation: one rendered view (each view's DALI graph with
    # RandAugment takes seconds to build; distinct views are covered by the test below).
    return (f"test_resnet@{checkpoints['test_resnet-3']},"
            f"test_convnext@{checkpoints['test_convnext-3']}")


def _config(data: Path, checkpoints: dict[str, Path], out: Path, **changes: object
            ) -> ReinforceConfig:
    config = ReinforceConfig(
        data=data, teacher=_teacher(checkpoints),
        recipe=recipe("m*+r*", output_size=32, teacher_size=40), slots=SLOTS, k=K,
        out=str(out), seed=7, batch_size=BATCH, block_size=BLOCK, slot_group=2, device="cpu",
        num_threads=2, compile=CompileMode.OFF, progress=False)
    return dataclasses.replace(config, **changes)


def _cli_args(config: ReinforceConfig) -> list[str]:
    recipe_file = Path(config.out).parent / "recipe.json"
    recipe_file.write_text(config.recipe.to_json())
    return ["reinforce", "--data", str(config.data), "--teacher", config.teacher,
            "--recipe", str(recipe_file), "--slots", str(config.slots), "--topk", str(config.k),
            "--out", config.out,
            "--seed", str(config.seed), "--batch", str(config.batch_size),
            "--block-size", str(config.block_size), "--slot-group", str(config.slot_group),
            "--device", "cpu", "--threads", "2", "--compile", "off", "--no-progress"]


def _reference(data: Path, checkpoints: dict[str, Path], folder: Path,
               preset: str) -> tuple[ReinforceConfig, Path]:
    """One uninterrupted 1-process run; the other runs must reproduce its bytes."""
    out = folder / "store"
    config = _config(data, checkpoints, out, recipe=recipe(preset, output_size=32,
                                                           teacher_size=40))
    report = reinforce(config, rank=0, world=1)
    assert report.blocks_written == tuple(range(6)) and report.committed == 6
    assert report.views == 24 * SLOTS
    return config, out


@pytest.fixture(scope="module")
def reference(data: Path, checkpoints: dict[str, Path],
              tmp_path_factory: pytest.TempPathFactory) -> tuple[ReinforceConfig, Path]:
    """MixUp/CutMix and RandAugment/RandomErasing: the recipe with the most replay inputs."""
    return _reference(data, checkpoints, tmp_path_factory.mktemp("reference"), "m*+r*")


@pytest.fixture(scope="module")
def light_reference(data: Path, checkpoints: dict[str, Path],
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[ReinforceConfig, Path]:
    """Mixing without RandAugment, whose DALI graph builds in well under a second (with it,
    several seconds per process start)."""
    return _reference(data, checkpoints, tmp_path_factory.mktemp("light"), "rrc+mix")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}


def test_stored_top_k_is_the_ensemble_mean_of_each_replayed_view(
        data: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """Members at their own timm sizes (160 and 176 px), views from a file list. The recipe
    has no RandAugment to keep graph building short: test_replay checks that views cut from
    once-decoded images equal per-view ROI decoding for every op."""
    from dalidr.augment.records import draw_records
    from dalidr.augment.replay import Output, Replayer, ReplaySpec
    from dalidr.teacher import build_teacher

    files = sorted(data.rglob("*.jpg"))[::3]
    classes = sorted({p.parent.name for p in files})
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p.relative_to(data)} {classes.index(p.parent.name)}\n"
                               for p in files))
    teacher = f"test_resnet@{checkpoints['test_resnet-3']},resnet10t@{checkpoints['resnet10t-3']}"
    r = recipe("rrc", output_size=32)
    config = _config(data, checkpoints, tmp_path / "store", teacher=teacher, recipe=r,
                     file_list=listing, block_size=3, batch_size=7)
    reinforce(config, rank=0, world=1)

    n = len(files)
    image_hw = np.array([Image.open(p).size[::-1] for p in files])
    records = draw_records(r, config.seed, np.arange(n), np.arange(SLOTS), image_hw).reshape(-1)
    jpegs = [np.fromfile(files[i // SLOTS], dtype=np.uint8) for i in range(n * SLOTS)]
    ensemble = build_teacher(teacher, 3)
    assert [m.view.size for m in ensemble.members] == [160, 176]
    logits = []
    for member in ensemble.members:
        v = member.view
        spec = ReplaySpec(r, size=v.size, output=Output.FLOAT_CHW, mean=v.mean, std=v.std)
        views = Replayer(spec, batch_size=n * SLOTS, num_threads=2)(jpegs, records)
        with torch.inference_mode():
            logits.append(member.model(torch.from_numpy(views)))
    want_classes, want_probs = ensemble_topk_reference(logits, K)

    reader = StoreReader(config.out)
    assert reader.committed().all() and reader.config.num_classes == 3
    _, targets = reader.read_views(np.repeat(np.arange(n), SLOTS), np.tile(np.arange(SLOTS), n))
    np.testing.assert_allclose(targets.probs, want_probs.numpy(), atol=0.01)
    separated = np.abs(np.diff(want_probs.numpy(), axis=1))[:, 0] > 0.02
    assert separated.sum() > n  # the comparison below is not vacuous
    np.testing.assert_array_equal(targets.classes[separated], want_classes.numpy()[separated])


def test_two_processes_write_the_same_store_as_one(
        reference: tuple[ReinforceConfig, Path], tmp_path: Path) -> None:
    config, want = reference
    out = tmp_path / "store"
    args = _cli_args(dataclasses.replace(config, out=str(out)))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc_per_node", "2", "-m", "dalidr.cli", *args],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rank 0/2: wrote 3 blocks" in result.stdout
    assert "rank 1/2: wrote 3 blocks" in result.stdout
    assert tree_bytes(out) == tree_bytes(want)


def _commits(out: Path) -> int:
    folder = out / "commit_map" / "c"
    return len([p for p in folder.iterdir() if p.name.isdigit()]) if folder.is_dir() else 0


def _run_until(args: list[str], condition: Callable[[], bool]) -> int:
    """Start the command; SIGKILL it as soon as `condition` holds; its return code."""
    process = subprocess.Popen([sys.executable, "-m", "dalidr.cli", *args], cwd=ROOT,
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if condition():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == -signal.SIGKILL, f"not killed at its point: {output[-2000:]}"
    return process.returncode


def test_kill_and_resume_is_byte_identical(light_reference: tuple[ReinforceConfig, Path],
                                           tmp_path: Path) -> None:
    config, want = light_reference
    out = tmp_path / "store"
    args = _cli_args(dataclasses.replace(config, out=str(out)))

    def shard_of_block(block: int) -> Callable[[], bool]:
        return lambda: (out / "topk" / "classes" / "c" / str(block)).exists()

    # While rank 0 creates the store; after the first commit; in the middle of block 4.
    _run_until(args, lambda: (out / "zarr.json").exists())
    _run_until(args, lambda: _commits(out) >= 1)
    done = _commits(out)
    _run_until(args, shard_of_block(4))
    assert done < _commits(out) < 6
    result = subprocess.run([sys.executable, "-m", "dalidr.cli", *args], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "6/6 blocks committed" in result.stdout
    assert tree_bytes(out) == tree_bytes(want)


def test_rerun_with_other_options_is_refused(
        light_reference: tuple[ReinforceConfig, Path]) -> None:
    config, want = light_reference
    before = tree_bytes(want)
    with pytest.raises(StoreError, match="other options"):
        reinforce(dataclasses.replace(config, seed=8), rank=0, world=1)
    report = reinforce(config, rank=0, world=1)  # the same command: nothing left to do
    assert report.blocks_written == () and report.committed == 6
    assert tree_bytes(want) == before


def test_the_same_weights_under_another_file_name_resume(
        light_reference: tuple[ReinforceConfig, Path], tmp_path: Path) -> None:
    """The teacher is its weights (teacher_members): checkpoints renamed and converted to torch
    files between runs still resume the store (other weights are refused: test_teacher)."""
    import torch
    from safetensors.torch import load_file

    config, want = light_reference
    before = tree_bytes(want)
    renamed = []
    for i, member in enumerate(config.teacher.split(",")):
        name, path = member.split("@")
        copy = tmp_path / f"member-{i}.pt"  # a torch file of the same tensors
        torch.save(load_file(path), copy)
        renamed.append(f"{name}@{copy}")
    report = reinforce(dataclasses.replace(config, teacher=",".join(renamed)), rank=0, world=1)
    assert report.blocks_written == () and tree_bytes(want) == before


@pytest.mark.parametrize("change, message", [
    ({"teacher": "resnet5O"}, "'resnet5O' is not a timm model"),
    ({"k": 4}, "--topk 4 must be in 1..3"),
    ({"teacher": "five"}, "predicts 5 classes but the dataset has 3"),
    ({"teacher": "mismatch"}, "does not fit timm architecture 'test_efficientnet'"),
    ({"teacher": "test_resnet"}, "teacher member 'test_resnet' has no checkpoint"),
], ids=["unknown-name", "k-above-classes", "teacher-classes", "checkpoint-architecture",
        "no-weights-chosen"])
def test_bad_input_is_refused_before_any_work(
        data: Path, checkpoints: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], change: dict[str, object], message: str) -> None:
    teachers = {"five": f"test_resnet@{checkpoints['test_resnet-5']}",
                "mismatch": f"test_efficientnet@{checkpoints['test_resnet-3']}"}
    if "teacher" in change:
        change = {"teacher": teachers.get(str(change["teacher"]), change["teacher"])}
    config = _config(data, checkpoints, tmp_path / "store", **change)
    with pytest.raises(OptionError, match=message):
        reinforce(config, rank=0, world=1)
    assert not (tmp_path / "store").exists()
    assert cli_main(_cli_args(config)) == 2
    assert message.split("'")[0] in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_unreadable_images_fail_with_their_path_or_are_skipped(
        data: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "images"
    shutil.copytree(data, root)
    files = sorted(root.rglob("*.jpg"))
    garbage, fake = files[5], files[13]
    garbage.write_bytes(b"this is not an image")
    # Passes the JPEG marker check, so it fails only when DALI decodes it.
    fake.write_bytes(b"\xff\xd8" + b"not entropy-coded data" * 40 + b"\xff\xd9")
    config = _config(root, checkpoints, tmp_path / "store",
                     recipe=recipe("rrc+mix", output_size=32, teacher_size=40))
    with pytest.raises(ImageError, match=str(garbage.relative_to(root))):
        reinforce(config, rank=0, world=1)

    config = dataclasses.replace(config, skip_bad=True)
    report = reinforce(config, rank=0, world=1)
    assert report.committed == 6
    assert report.skipped_samples == (5, 13)
    marks = skipped_views(config.out)
    reader = StoreReader(config.out)
    assert marks[[5, 13]].all()
    # Views mixed with a bad partner are skipped too; no other view is.
    records, targets = reader.read_views(np.repeat(np.arange(24), SLOTS),
                                         np.tile(np.arange(SLOTS), 24))
    records = records.reshape(24, SLOTS)
    by_partner = (records["mix"] != 0) & np.isin(records["partner"], [5, 13])
    expected = by_partner.copy()
    expected[[5, 13]] = True
    np.testing.assert_array_equal(marks, expected)
    probs = targets.probs.reshape(24, SLOTS, K)
    # Skipped views hold the lowest quantisation level; real ones carry mass.
    assert (probs[marks] < 1e-3).all() and (probs[~marks][:, 0] > 1e-3).all()


@pytest.mark.parametrize("fault", FAULTS)
def test_a_full_disk_is_named_and_the_same_command_resumes_byte_identical(
        light_reference: tuple[ReinforceConfig, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: str) -> None:
    """On a real full tmpfs (where the test may mount one), or with ENOSPC injected into
    block 3's shard of the top-k probabilities."""
    config, want = light_reference
    out = tmp_path / "mnt" / "store"
    with ExitStack() as mounts:
        if fault == "tmpfs":
            need = pages(want)  # room for the creation and most blocks, not the last two
            disk = mounts.enter_context(full_disk(out.parent, PAGE * (need - 20)))
        else:
            out.parent.mkdir()
            enospc_on(monkeypatch, lambda p: "/topk/prob_gaps/c/3/" in p)
        args = _cli_args(dataclasses.replace(config, out=str(out)))  # recipe.json beside it
        assert cli_main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"dalidr reinforce: error: store {out}: writing ") and (
            err.count("\n") == 1 and "Traceback" not in err)
        assert "No space left on device (ENOSPC)" in err and "rerun the same command" in err
        if fault == "tmpfs":
            assert "are free on the file system of" in err
            disk.grow(PAGE * (need + 64))
        else:
            assert ("block 3 (samples 12..15) of array 'topk/prob_gaps' (object "
                    "topk/prob_gaps/c/3/0/0) failed") in err
            monkeypatch.undo()
        assert 0 < _commits(out) < 6
        assert cli_main(args) == 0
        assert "6/6 blocks committed" in capsys.readouterr().out
        assert not list(out.rglob("*.partial"))
        assert tree_bytes(out) == tree_bytes(want)
