"""GPU against CPU: replay of every op and recipe, the teacher pass, the out-of-memory message.

Every test here is marked `gpu` and skips cleanly without CUDA; `bench/gpu/check.sh` runs them
(with the other `gpu` tests and the Triton kernel tests) on the GPU machine. The CPU side of each
comparison is the product's own CPU path, whose fidelity to torchvision tests/test_ops.py and
tests/test_replay.py establish; here the question is only whether the GPU path computes the same.

Tolerances. nvJPEG and libjpeg-turbo decode the same file a few levels apart (IDCT and chroma
upsampling), so a GPU view differs from the CPU view before any op runs: `DECODE_MEAN` bounds the
mean absolute difference of unaugmented views (grey levels). An op may amplify that difference
where it thresholds or remaps levels (Solarize, Posterize, Equalize, AutoContrast): each is
allowed `AMPLIFY` times the measured decode difference of its own inputs, plus one level of
rounding. The teacher pass runs bf16 on the GPU and float32 on the CPU: top-1 must agree on views
whose top-2 probabilities are clearly apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dalidr.augment.ops import OPS
from dalidr.augment.recipe import PRESETS, recipe
from dalidr.augment.records import draw_records, identity_records
from dalidr.augment.replay import Replayer, ReplaySpec
from dalidr.data.sample_data import make_corpus
from dalidr.errors import OptionError
from dalidr.teacher import build_teacher
from dalidr.teacher.reinforce import CompileMode, Labeller, ReinforceConfig, reinforce
from store import StoreReader
from tests.store.helpers import tree_bytes

pytestmark = pytest.mark.gpu

SIDE = 96
BINS = (0, 9, 21, 30)
DECODE_MEAN = 3.0  # grey levels, mean |GPU - CPU| of unaugmented views
AMPLIFY = {"Solarize": 3.0, "Posterize": 3.0, "Equalize": 4.0, "AutoContrast": 2.0}
SEPARATED = 0.02  # top-1 minus top-2 probability above which top-1 must agree
TOP1_AGREEMENT = 0.95


_REPLAYERS: dict[tuple[str, bool], Replayer] = {}
MAX_BATCH = 8


def _both(spec: ReplaySpec, jpegs, records, partners=None) -> tuple[np.ndarray, np.ndarray]:
    """The same batch replayed on the CPU and on GPU 0 (uint8 HWC, as int64).

    A replay pipeline with RandAugment takes seconds to build, so one per (recipe, device) is
    built and fed batches of up to MAX_BATCH views."""
    out = []
    for gpu in (False, True):
        key = (spec.recipe.variant.value, gpu)
        if key not in _REPLAYERS:
            _REPLAYERS[key] = Replayer(spec, batch_size=MAX_BATCH, num_threads=2,
                                       device_id=0 if gpu else None)
        out.append(_REPLAYERS[key](jpegs, records, partners).astype(np.int64))
    return out[0], out[1]


def test_gpu_decode_is_close_to_cpu(corpus) -> None:
    r = recipe("rrc+ra/re", output_size=SIDE)
    cpu, gpu = _both(ReplaySpec(r), corpus.jpegs[:8], identity_records(r, 8))
    diff = np.abs(cpu - gpu).mean(axis=(1, 2, 3))
    assert diff.max() < DECODE_MEAN, f"per-view mean |GPU - CPU| {diff.round(2)}"


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_gpu_op_matches_cpu(op, corpus) -> None:
    r = recipe("rrc+ra/re", output_size=SIDE)
    signs = (1, -1) if op.signed else (1,)
    cases = [(b, s) for b in BINS for s in signs]
    jpegs = [corpus.jpegs[i % len(corpus)] for i in range(len(cases))]
    records = identity_records(r, len(cases))
    for i, (bin_, sign) in enumerate(cases):
        records[i]["ops"][0] = op.op_id
        records[i]["mags"][0] = sign * bin_
    spec = ReplaySpec(r)
    base_cpu, base_gpu = _both(spec, jpegs, identity_records(r, len(cases)))
    cpu, gpu = _both(spec, jpegs, records)
    for i, (bin_, sign) in enumerate(cases):
        decode = np.abs(base_cpu[i] - base_gpu[i]).mean()
        allowed = AMPLIFY.get(op.name, 1.0) * max(decode, 1.0) + 1.0
        diff = np.abs(cpu[i] - gpu[i]).mean()
        assert diff <= allowed, (f"{op.name} bin {sign * bin_}: mean |GPU - CPU| {diff:.2f} > "
                                 f"{allowed:.2f} (decode alone {decode:.2f})")


@pytest.mark.parametrize("name", list(PRESETS))
def test_gpu_recipe_matches_cpu(name, corpus) -> None:
    r = recipe(name, output_size=SIDE)
    records = draw_records(r, 11, np.arange(8), [0], corpus.image_hw)[:, 0]
    partners = [corpus.jpegs[p] for p in records["partner"]] if r.has_mix else None
    cpu, gpu = _both(ReplaySpec(r), corpus.jpegs[:8], records, partners)
    base_cpu, base_gpu = _both(ReplaySpec(r), corpus.jpegs[:8], identity_records(r, 8),
                               corpus.jpegs[:8] if r.has_mix else None)
    decode = max(np.abs(base_cpu - base_gpu).mean(), 1.0)
    allowed = (max(AMPLIFY.values()) if r.has_ra_re else 1.0) * decode + 1.0
    diff = np.abs(cpu - gpu).mean(axis=(1, 2, 3))
    assert diff.max() <= allowed, f"{name}: per-view mean |GPU - CPU| {diff.round(2)} > {allowed}"


# ----------------------------------------------------------------------------- teacher pass


@pytest.fixture(scope="module")
def teacher_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import timm
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("gpu-teacher")
    make_corpus(folder / "images", 24, seed=4)
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    path = folder / "resnet10t.safetensors"
    save_file(model.state_dict(), str(path))
    return folder / "images", f"resnet10t@{path}"


def _config(data: Path, teacher: str, out: Path, device: str) -> ReinforceConfig:
    return ReinforceConfig(
        data=data, teacher=teacher, recipe=recipe("rrc+ra/re", output_size=64, teacher_size=96),
        slots=4, k=3, out=str(out), seed=5, batch_size=16, block_size=8, device=device,
        num_threads=2, compile=CompileMode.OFF, progress=False)


def test_gpu_teacher_pass_is_deterministic_and_agrees_with_cpu(teacher_data, tmp_path) -> None:
    data, teacher = teacher_data
    runs = []
    for name in ("a", "b"):
        config = _config(data, teacher, tmp_path / f"gpu-{name}", "cuda")
        report = reinforce(config, 0, 1)
        assert report.views == 24 * 4
        runs.append(tree_bytes(config.out))
    assert runs[0] == runs[1], "two GPU teacher passes wrote different bytes"
    cpu_config = _config(data, teacher, tmp_path / "cpu", "cpu")
    reinforce(cpu_config, 0, 1)
    samples, slots = np.repeat(np.arange(24), 4), np.tile(np.arange(4), 24)
    _, gpu_targets = StoreReader(str(tmp_path / "gpu-a")).read_views(samples, slots)
    _, cpu_targets = StoreReader(cpu_config.out).read_views(samples, slots)
    probs = cpu_targets.probs.astype(np.float64)
    separated = probs[:, 0] - probs[:, 1] > SEPARATED
    assert separated.sum() >= 24, "too few clearly separated views for a meaningful comparison"
    agree = gpu_targets.classes[separated, 0] == cpu_targets.classes[separated, 0]
    assert agree.mean() >= TOP1_AGREEMENT, f"top-1 agreement {agree.mean():.3f}"
    np.testing.assert_allclose(gpu_targets.probs, cpu_targets.probs, atol=0.1)


def test_gpu_out_of_memory_names_the_batch_size() -> None:
    ensemble = build_teacher("resnet10t", 3, random_seed=0)
    batch = 64
    labeller = Labeller(ensemble, torch.device("cuda"), 3, batch, CompileMode.OFF)
    views = [torch.zeros(batch, 3, 2048, 2048, device="cuda")]  # 3.2 GB
    torch.cuda.set_per_process_memory_fraction(
        min(1.0, 6e9 / torch.cuda.get_device_properties(0).total_memory))
    try:
        with pytest.raises(OptionError, match=f"--batch {batch}; lower it, e.g. --batch "
                                              f"{batch // 2}"):
            labeller.label(views)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        del views
        torch.cuda.empty_cache()

