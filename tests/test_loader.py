"""ReinforcedLoader and PlainLoader on real stores of real JPEGs, in DALI CPU mode.

The loader's images are the replay pipeline's views of the planned records, its targets the
stored top-k densified, p = 0 / p = 1 serve what they promise, two processes get disjoint and
complete shards, a resumed epoch repeats its batches, and mismatches fail before any batch.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dalidr.augment.recipe import recipe
from dalidr.augment.records import draw_records
from dalidr.augment.replay import Output, Replayer, ReplaySpec
from dalidr.errors import DatasetError, OptionError
from dalidr.training.loader import (
    Augment,
    LastBatch,
    LoaderConfig,
    PlainLoader,
    ReinforcedLoader,
    SparseTargets,
    Targets,
)
from dalidr.training.plain_loader import _STREAM_ONLINE
from kernels.kl_loss import Densify, densify_topk
from store.reader import StoreReader
from tests.store_builder import BuiltStore, build_store

BATCH = 5


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltStore:
    return build_store(tmp_path_factory.mktemp("reinforced"))


@pytest.fixture(scope="module")
def built_mix(tmp_path_factory: pytest.TempPathFactory) -> BuiltStore:
    # Small blocks: some hold no erased view, so all-zero shards must be stored and read.
    return build_store(tmp_path_factory.mktemp("mixed"), images=10, preset="m*+r*",
                       block_size=4)


def _loader(built: BuiltStore, **changes: object) -> ReinforcedLoader:
    config = LoaderConfig(**{"batch_size": BATCH, **changes})  # type: ignore[arg-type]
    return ReinforcedLoader(built.url, built.root, config, manifest=built.manifest)


def _jpegs(built: BuiltStore) -> list[np.ndarray]:
    return [np.fromfile(built.root / p, dtype=np.uint8) for p in built.listing.paths]


def _expected_epoch(built: BuiltStore, epoch: int) -> tuple[np.ndarray, np.ndarray, object]:
    data = StoreReader(built.url).epoch(epoch)
    return data.plan.samples, data.records, data.targets


@pytest.mark.parametrize("which", ["rrc+ra/re", "m*+r*"])
def test_images_are_the_replayed_views_of_the_plan(built, built_mix, which) -> None:
    store = built if which == "rrc+ra/re" else built_mix
    samples, records, _ = _expected_epoch(store, 1)
    jpegs = _jpegs(store)
    replayer = Replayer(ReplaySpec(store.config.recipe, output=Output.FLOAT_CHW), BATCH)
    with _loader(store, channels_last=True) as loader:
        loader.set_epoch(1)
        batches = list(loader)
    assert len(batches) == len(samples) // BATCH
    for step, (images, _) in enumerate(batches):
        part = slice(step * BATCH, (step + 1) * BATCH)
        batch_records = records[part]
        partners = ([jpegs[int(p)] for p in batch_records["partner"]]
                    if store.config.recipe.has_mix else None)
        want = replayer([jpegs[int(s)] for s in samples[part]], batch_records, partners,
                        num_samples=len(jpegs))
        assert images.shape == (BATCH, 3, 32, 32)
        assert images.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_allclose(images.numpy(), want, rtol=0, atol=1e-5)
    if store.config.recipe.has_mix:  # the partner path was exercised
        assert (records["mix"] != 0).any()


@pytest.mark.parametrize("densify", list(Densify), ids=lambda d: d.value)
def test_targets_are_the_stored_probabilities_densified(built, densify) -> None:
    samples, _, targets = _expected_epoch(built, 0)
    with _loader(built, densify=densify) as dense_loader:
        dense = [t for _, t in dense_loader]
    with _loader(built, targets=Targets.SPARSE) as sparse_loader:
        sparse = [t for _, t in sparse_loader]
    for step, (d, s) in enumerate(zip(dense, sparse, strict=True)):
        part = slice(step * BATCH, (step + 1) * BATCH)
        classes = torch.from_numpy(targets.classes[part]).long()
        probs = torch.from_numpy(targets.probs[part])
        assert isinstance(s, SparseTargets)
        assert torch.equal(s.indices, classes) and torch.equal(s.probs, probs)
        torch.testing.assert_close(d, densify_topk(classes, probs, 3, densify))
        torch.testing.assert_close(d.sum(1), torch.ones(BATCH))
        # Where the top-k mass is below one, SMOOTH leaves it on the other class; ZEROS does not.
        other = torch.ones(BATCH, 3, dtype=torch.bool).scatter_(1, classes, False)
        rest = d[other]
        mass = probs.sum(1)
        if densify is Densify.ZEROS:
            assert torch.all(rest == 0)
        else:
            torch.testing.assert_close(rest, (1 - mass).clamp_min(0))
            assert (rest > 0.05).any()


def test_p0_serves_original_images_with_one_hot_labels(built) -> None:
    samples, stored, _ = _expected_epoch(built, 0)
    with _loader(built, p=0.0, targets=Targets.SPARSE) as loader:
        assert loader.original_mask(0, samples).all()
        original = loader.original_records(0, samples)
        batches = [(x, t, loader.served_samples.copy()) for x, t in loader]
    replayer = Replayer(ReplaySpec(built.config.recipe, output=Output.FLOAT_CHW), BATCH)
    jpegs = _jpegs(built)
    labels = np.asarray(built.listing.labels)
    for step, (images, targets, served) in enumerate(batches):
        part = slice(step * BATCH, (step + 1) * BATCH)
        np.testing.assert_array_equal(served, samples[part])
        assert torch.equal(targets.indices[:, 0], torch.from_numpy(labels[served]))
        assert torch.equal(targets.probs[:, 0], torch.ones(BATCH))
        assert torch.all(targets.probs[:, 1:] == 0)
        want = replayer([jpegs[int(s)] for s in served], original[part])
        np.testing.assert_allclose(images.numpy(), want, rtol=0, atol=1e-5)
        stored_view = replayer([jpegs[int(s)] for s in served], stored[part])
        assert not np.allclose(images.numpy(), stored_view)
    # Only crop and flip: no RandAugment op, no erasing.
    assert (original["ops"] == 0).all() and (original["erase"][:, 2:] == 0).all()
    assert len(np.unique(original["crop"], axis=0)) > 1


def test_p1_is_pure_reinforced_and_p_between_mixes_both(built) -> None:
    samples, _, targets = _expected_epoch(built, 2)
    with _loader(built, p=1.0, targets=Targets.SPARSE) as pure:
        assert not pure.original_mask(2, samples).any()
    with _loader(built, p=0.5, targets=Targets.SPARSE) as half:
        half.set_epoch(2)
        mask = half.original_mask(2, samples)
        got = [t for _, t in half]
    assert 0 < mask.sum() < len(mask)
    labels = np.asarray(built.listing.labels)
    for step, t in enumerate(got):
        for i in range(BATCH):
            j = step * BATCH + i
            if mask[j]:
                assert int(t.indices[i, 0]) == labels[samples[j]] and float(t.probs[i, 0]) == 1
            else:
                assert np.array_equal(t.probs[i].numpy(), targets.probs[j])


def test_resuming_mid_epoch_reproduces_the_batches(built) -> None:
    with _loader(built, p=0.5) as first:
        first.set_epoch(3)
        full = list(first)
        assert first.state_dict() == {"epoch": 4, "position": 0, "step": 0, "world": 1,
                                      "served": 24}
        first.load_state_dict({"epoch": 3, "step": 1})  # seek back in the same instance
        again = list(first)
    with _loader(built, p=0.5) as second:
        second.load_state_dict({"epoch": 3, "step": 2})
        resumed = list(second)
        assert second.epoch == 4
    for want, got in ((full[1:], again), (full[2:], resumed)):
        assert len(want) == len(got) > 0
        for (x0, t0), (x1, t1) in zip(want, got, strict=True):
            assert torch.equal(x0, x1) and torch.equal(t0, t1)


def test_epochs_continue_and_breaking_off_keeps_the_position(built) -> None:
    with _loader(built) as loader:
        assert len(loader) == 24 // BATCH
        for _ in loader:
            break
        assert loader.state_dict() == {"epoch": 0, "position": BATCH, "step": 1, "world": 1,
                                       "served": 24}
        rest = list(loader)
        assert len(rest) == len(loader) - 1 and loader.epoch == 1
        assert len(list(loader)) == len(loader)
    with _loader(built, last_batch=LastBatch.PARTIAL) as partial:
        sizes = [len(x) for x, _ in partial]
    assert sizes == [5, 5, 5, 5, 4]


_SHARD_SCRIPT = """
import json, sys, torch.distributed as dist
from dalidr.training.loader import LastBatch, LoaderConfig, ReinforcedLoader
rank, url, root, out, init = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
loader = ReinforcedLoader(url, root, LoaderConfig(batch_size=5, last_batch=LastBatch.PARTIAL))
served = {}
for epoch in range(2):
    served[epoch] = [int(s) for _ in loader for s in loader.served_samples]
json.dump({"rank": loader.rank, "world": loader.world, "served": served}, open(out, "w"))
dist.destroy_process_group()
"""


def test_two_processes_see_disjoint_complete_shards(built, tmp_path) -> None:
    root = Path(__file__).resolve().parents[1]
    init = f"file://{tmp_path / 'rendezvous'}"
    env = {**os.environ, "PYTHONPATH": str(root), "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen([sys.executable, "-c", _SHARD_SCRIPT, str(rank), built.url,
                               str(built.root), str(tmp_path / f"rank{rank}.json"), init],
                              cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for rank in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    for epoch in ("0", "1"):
        a, b = (r["served"][epoch] for r in results)
        assert len(a) == len(b) == 12
        assert not set(a) & set(b)
        assert sorted(a + b) == list(range(24))
    assert results[0]["served"]["0"] != results[0]["served"]["1"]  # reshuffled per epoch


def _served(loader: ReinforcedLoader | PlainLoader) -> list[int]:
    with loader:
        return [int(s) for _ in loader for s in loader.served_samples]


def test_torchrun_variables_shard_a_loader_made_without_a_process_group(
        built, monkeypatch) -> None:
    """No process group yet: RANK / WORLD_SIZE decide the shard (as `dalidr reinforce` reads
    them); half-set variables are refused; explicit arguments win."""
    config = LoaderConfig(batch_size=4)
    served = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = ReinforcedLoader(built.url, built.root, config, manifest=built.manifest)
        assert (loader.rank, loader.world) == (rank, 2)
        served.append(_served(loader))
    assert len(served[0]) == len(served[1]) == 12
    assert sorted(served[0] + served[1]) == list(range(24))
    with PlainLoader(built.root, config, size=40) as plain:  # RANK=1 of 2 still set
        assert (plain.rank, plain.world, len(plain)) == (1, 2, 3)
    explicit = ReinforcedLoader(built.url, built.root, config, manifest=built.manifest, rank=0,
                                world=1)
    assert len(_served(explicit)) == 24
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(OptionError, match="WORLD_SIZE is not set but RANK is"):
        ReinforcedLoader(built.url, built.root, config, manifest=built.manifest)


def test_drop_cuts_shards_like_distributed_sampler_drop_last(built) -> None:
    """24 samples over 5 ranks. DROP: 4 distinct samples per rank, 4 sit out, no sample twice
    (DistributedSampler(drop_last=True)); PARTIAL: 5 per rank, one sample twice, as before."""
    drop = LoaderConfig(batch_size=2)
    shards = [_served(ReinforcedLoader(built.url, built.root, drop, manifest=built.manifest,
                                       rank=r, world=5)) for r in range(5)]
    every = [s for shard in shards for s in shard]
    assert [len(s) for s in shards] == [4] * 5 and len(set(every)) == 20
    plain = [_served(PlainLoader(built.root, drop, size=40, rank=r, world=5)) for r in range(5)]
    every = [s for shard in plain for s in shard]
    assert [len(s) for s in plain] == [4] * 5 and len(set(every)) == 20
    partial = LoaderConfig(batch_size=2, last_batch=LastBatch.PARTIAL)
    reader = StoreReader(built.url)  # the default policy, PAD
    for rank in range(5):
        loader = ReinforcedLoader(built.url, built.root, partial, manifest=built.manifest,
                                  rank=rank, world=5)
        assert _served(loader) == reader.plan(0, rank, 5).samples.tolist()
    padded = [s for r in range(5) for s in reader.plan(0, r, 5).samples.tolist()]
    assert len(padded) == 25 and set(padded) == set(range(24))


_TORCHRUN_SCRIPT = """
import json, os, sys
from dalidr.training.loader import LoaderConfig, ReinforcedLoader
url, root, out = sys.argv[1:4]
loader = ReinforcedLoader(url, root, LoaderConfig(batch_size=4))  # no init_process_group
served = [int(s) for _ in loader for s in loader.served_samples]
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"rank": loader.rank, "world": loader.world, "served": served}, f)
"""


def test_torchrun_ranks_serve_disjoint_shards_before_init_process_group(built, tmp_path) -> None:
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "shard.py"
    script.write_text(_TORCHRUN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(root), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), built.url, str(built.root), str(tmp_path)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]
    a, b = (r["served"] for r in results)
    assert len(a) == len(b) == 12 and sorted(a + b) == list(range(24))


def test_mismatched_data_or_model_fails_fast(built, tmp_path) -> None:
    with pytest.raises(DatasetError, match="predicts 10 classes"):
        ReinforcedLoader(built.url, built.root, LoaderConfig(), num_classes=10,
                         manifest=built.manifest)
    other = build_store(tmp_path, images=24, seed=5)  # other JPEGs under the same layout
    with pytest.raises(DatasetError, match="was not made from .*sample 0 differs"):
        ReinforcedLoader(built.url, other.root, LoaderConfig())
    with pytest.raises(OptionError, match="'p'"):
        LoaderConfig(p=1.5)


def test_plain_loader_trains_and_evaluates_with_one_hot_labels(built) -> None:
    config = LoaderConfig(batch_size=BATCH, targets=Targets.DENSE, seed=3)
    labels = torch.tensor(built.listing.labels)
    with PlainLoader(built.root, config, size=40, rank=1, world=2) as train:
        assert len(train) == 12 // BATCH
        for images, targets in train:
            assert images.shape == (BATCH, 3, 40, 40)
            served = torch.from_numpy(train.served_samples)
            assert torch.equal(targets, torch.eye(3)[labels[served]])
    eval_config = LoaderConfig(batch_size=BATCH, targets=Targets.SPARSE,
                               last_batch=LastBatch.PARTIAL)
    runs = []
    for _ in range(2):
        with PlainLoader(built.root, eval_config, size=40, augment=Augment.EVAL) as evaluation:
            runs.append(torch.cat([x for x, _ in evaluation]))
    assert runs[0].shape == (24, 3, 40, 40)
    assert torch.equal(runs[0], runs[1])  # evaluation has no randomness
    with pytest.raises(DatasetError, match="predicts 2 classes"):
        PlainLoader(built.root, config, num_classes=2)


@pytest.mark.parametrize("preset", ["rrc+ra/re", "m*+r*"])
def test_plain_loader_with_a_recipe_replays_fresh_draws_each_epoch(built, preset) -> None:
    """Online augmentation (teachers, kd) is the store's augmentation: same records sampler,
    same replay graph, drawn anew per epoch; mixing gives two-hot labels weighted by lambda."""
    chosen = recipe(preset, output_size=64)  # the loader's size wins
    config = LoaderConfig(batch_size=BATCH, targets=Targets.SPARSE, seed=5)
    jpegs = _jpegs(built)
    labels = np.asarray(built.listing.labels)
    with PlainLoader(built.root, config, size=32, recipe=chosen) as loader:
        assert loader.recipe.output_size == 32
        epochs = []
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            data = loader._epoch(epoch)
            replayer = Replayer(ReplaySpec(loader.recipe, output=Output.FLOAT_CHW), BATCH)
            served = []
            for step, (images, targets) in enumerate(loader):
                part = slice(step * BATCH, (step + 1) * BATCH)
                records = data.records[part]
                # Drawn per batch with sizes read from headers: exactly the draw against the
                # manifest's sizes (which hash and open every file).
                eager = draw_records(loader.recipe, config.seed + _STREAM_ONLINE,
                                     data.samples[part], np.array([epoch]),
                                     built.manifest.image_hw)[:, 0]
                assert records.tobytes() == eager.tobytes()
                partners = ([jpegs[int(p)] for p in records["partner"]]
                            if chosen.has_mix else None)
                want = replayer([jpegs[int(i)] for i in data.samples[part]], records, partners,
                                num_samples=len(jpegs))
                np.testing.assert_allclose(images.numpy(), want, rtol=0, atol=1e-5)
                probs = targets.probs.numpy()
                np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
                own = labels[loader.served_samples]
                assert (targets.indices.numpy()[:, 0] == own).all()
                if chosen.has_mix:
                    lam = records["lam"] / 65535.0
                    other = labels[records["partner"].astype(np.int64)]
                    want_own = np.where(other == own, 1.0, lam)
                    np.testing.assert_allclose(probs[:, 0], want_own, atol=1e-6)
                served.append(images)
            epochs.append((data.records[0:len(data.samples)], torch.cat(served)))
    assert not np.array_equal(epochs[0][0], epochs[1][0])  # fresh draws each epoch
    if chosen.has_mix:
        assert (epochs[0][0]["mix"] != 0).any()
    with pytest.raises(OptionError, match="'recipe'"):
        PlainLoader(built.root, config, augment=Augment.EVAL, recipe=chosen)


@pytest.mark.gpu
def test_gpu_loader_serves_cuda_tensors_with_the_same_targets(built) -> None:
    cpu_config = dict(targets=Targets.SPARSE, channels_last=True)
    with _loader(built, **cpu_config) as cpu:
        want = [(x, t) for x, t in cpu]
    with _loader(built, device_id=0, **cpu_config) as gpu:
        got = [(x, t) for x, t in gpu]
    for (x0, t0), (x1, t1) in zip(want, got, strict=True):
        assert x1.is_cuda and x1.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(t0.indices, t1.indices.cpu()) and torch.equal(t0.probs, t1.probs.cpu())
        # nvJPEG and libjpeg-turbo round differently; the views must still agree closely.
        assert (x1.cpu() - x0).abs().mean() < 0.05


def test_skipped_samples_are_never_served(tmp_path) -> None:
    """Views `reinforce --skip-bad` marked skipped stay out; ranks keep equal lengths and
    the other samples are all served."""
    from store.layout import SKIPPED
    from store.writer import StoreWriter

    store = build_store(tmp_path, images=12, block_size=8)
    writer = StoreWriter(store.url)  # block 0 as a pass that skipped these views writes it
    arrays = {n: np.array(writer.layout.array(n)[0:8]) for n in writer.layout.data_names}
    arrays[SKIPPED][3, :] = 1  # an unreadable image: every view
    arrays[SKIPPED][5, 1] = 1  # a view whose mixing partner was unreadable
    writer.write_encoded(0, arrays)
    config = LoaderConfig(batch_size=2, last_batch=LastBatch.PARTIAL)
    lengths, every = [], set()
    for rank in range(2):
        loader = ReinforcedLoader(store.url, store.root, config, manifest=store.manifest,
                                  rank=rank, world=2)
        with loader:
            for epoch in range(2):
                loader.set_epoch(epoch)
                served = [int(s) for _ in loader for s in loader.served_samples]
                assert 3 not in served and 5 not in served, (rank, epoch, served)
                lengths.append(len(served))
                every |= {(epoch, s) for s in served}
    # The 10 samples left are planned over 2 ranks: 5 each, every one served each epoch.
    assert lengths == [5] * 4
    assert every == {(e, s) for e in range(2) for s in range(12) if s not in (3, 5)}


def _serve(loader: ReinforcedLoader, steps: int | None = None) -> list[tuple[int, torch.Tensor]]:
    """(sample, image) of the next `steps` batches (all that are left if None)."""
    served: list[tuple[int, torch.Tensor]] = []
    for step, (images, _) in enumerate(loader):
        served += zip(loader.served_samples.tolist(), images, strict=True)
        if steps is not None and step + 1 == steps:
            break
    return served


@pytest.mark.parametrize(("world", "new_world"), [(4, 3), (2, 5)])
def test_elastic_resume_at_another_world_size(built, world: int, new_world: int) -> None:
    """A job of `world` ranks stops after 2 steps of epoch 1; `new_world` ranks load rank 0's
    state and finish the epoch: every sample served once (with PARTIAL, the padding of the
    last global batch excepted) and as the same image a single rank serves it."""
    config = LoaderConfig(batch_size=2, last_batch=LastBatch.PARTIAL, p=0.5)
    make = functools.partial(ReinforcedLoader, built.url, built.root, config,
                             manifest=built.manifest)
    served: list[tuple[int, torch.Tensor]] = []
    state: dict[str, int] = {}
    for rank in range(world):
        with make(rank=rank, world=world) as loader:
            loader.set_epoch(1)
            served += _serve(loader, steps=2)
            state = loader.state_dict()
    position = 2 * 2 * world
    assert state["position"] == position and state["epoch"] == 1
    counts: list[int] = []
    for rank in range(new_world):
        with make(rank=rank, world=new_world) as loader:
            loader.load_state_dict(state)
            counts.append(len(loader))
            served += _serve(loader)
            assert loader.epoch == 2
    assert len(set(counts)) == 1  # every rank runs the same number of steps
    samples = [s for s, _ in served]
    assert sorted(set(samples)) == list(range(24))
    assert len(samples) - 24 == (position - 24) % new_world  # the end's padding only
    with make() as alone:
        alone.set_epoch(1)
        reference = dict(_serve(alone))
    for sample, image in served:
        assert torch.equal(image, reference[sample]), sample


def test_curriculum_serves_the_same_views_after_a_resume_at_another_world(built,
                                                                          tmp_path) -> None:
    """With a curriculum (on a copy of the store, scored by `dalidr difficulty`): 2 ranks stop
    after 2 steps, 3 ranks finish the epoch, and every image is the one a single rank serves;
    a same-world resume serves the same batches."""
    import shutil

    from store.curriculum import Curriculum, Schedule
    from store.difficulty_pass import fill_difficulty

    url = str(tmp_path / "scored.zarr")
    shutil.copytree(built.url, url)
    fill_difficulty(url, progress=False)
    config = LoaderConfig(batch_size=2, last_batch=LastBatch.PARTIAL,
                          curriculum=Curriculum(Schedule.LINEAR, total_epochs=4))
    make = functools.partial(ReinforcedLoader, url, built.root, config, manifest=built.manifest)
    with make() as alone:
        alone.set_epoch(1)
        whole = _serve(alone)
        alone.load_state_dict({"epoch": 1, "position": 6})  # a same-world resume
        resumed = _serve(alone)
    for (s0, x0), (s1, x1) in zip(whole[6:], resumed, strict=True):
        assert s0 == s1 and torch.equal(x0, x1)
    reference = dict(whole)
    served: list[tuple[int, torch.Tensor]] = []
    state: dict[str, int] = {}
    for rank in range(2):
        with make(rank=rank, world=2) as loader:
            loader.set_epoch(1)
            served += _serve(loader, steps=2)
            state = loader.state_dict()
    for rank in range(3):
        with make(rank=rank, world=3) as loader:
            loader.load_state_dict(state)
            served += _serve(loader)
    assert sorted({s for s, _ in served}) == list(range(24))
    for sample, image in served:
        assert torch.equal(image, reference[sample]), sample
    # and the curriculum does choose other views than the uniform plan
    uniform_config = LoaderConfig(batch_size=2, last_batch=LastBatch.PARTIAL)
    with ReinforcedLoader(built.url, built.root, uniform_config,
                          manifest=built.manifest) as uniform:
        uniform.set_epoch(1)
        plain = dict(_serve(uniform))
    assert any(not torch.equal(plain[s], reference[s]) for s in reference)


@pytest.fixture(scope="module")
def built_rrc(tmp_path_factory: pytest.TempPathFactory) -> BuiltStore:
    return build_store(tmp_path_factory.mktemp("rrc"), images=40, preset="rrc")


def _served_targets(loader: ReinforcedLoader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(samples, classes, probs) of every batch left in the loader's epoch, concatenated."""
    got = [(loader.served_samples.copy(), t.indices.numpy(), t.probs.numpy()) for _, t in loader]
    return tuple(np.concatenate(column) for column in zip(*got, strict=True))  # type: ignore[return-value]


@pytest.mark.parametrize("batch", [2, 7])
def test_batches_are_the_whole_epoch_read_in_pieces(built_rrc, batch: int) -> None:
    """The loader reads an epoch in pieces of whole batches, the first one batch
    (`store.pieces`); what it serves is the whole-epoch read, in order: across an epoch
    boundary, after a resume inside a piece, and after one at a global position mid-batch."""
    config = LoaderConfig(batch_size=batch, last_batch=LastBatch.PARTIAL,
                          targets=Targets.SPARSE)
    reader = StoreReader(built_rrc.url)

    def check(got: tuple[np.ndarray, ...], want: object, skip: int = 0) -> None:
        samples, classes, probs = got
        np.testing.assert_array_equal(samples, want.plan.samples[skip:])  # type: ignore[attr-defined]
        np.testing.assert_array_equal(classes, want.targets.classes[skip:])  # type: ignore[attr-defined]
        np.testing.assert_array_equal(probs, want.targets.probs[skip:])  # type: ignore[attr-defined]

    loader = ReinforcedLoader(built_rrc.url, built_rrc.root, config, manifest=built_rrc.manifest)
    with loader:
        for epoch in (0, 1, 2):  # no set_epoch: the loader carries on into the next epoch
            assert loader.epoch == epoch
            check(_served_targets(loader), reader.epoch(epoch))
        loader.load_state_dict({"epoch": 1, "position": 3 * batch})  # inside [2, 4) batches
        check(_served_targets(loader), reader.epoch(1), skip=3 * batch)
        loader.load_state_dict({"epoch": 1, "position": 5})  # mid-batch: planned from 5
        check(_served_targets(loader), reader.epoch(1, start=5))
        assert loader.epoch == 2
        check(_served_targets(loader), reader.epoch(2))
