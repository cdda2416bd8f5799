"""Replay with DALI on the CPU against the torchvision reference, plus its invariants."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dalidr.augment.ops import OP_IDS
from dalidr.augment.recipe import recipe
from dalidr.augment.records import COORD_SCALE, MixMode, draw_records, identity_records
from dalidr.augment.replay import Output, Replayer, ReplaySpec
from dalidr.errors import ImageError, RecordError
from tests.reference import reference_replay

SIDE = 96


def _replay(name: str, corpus, count: int = 8, slot: int = 0, size: int | None = None, **kw):
    r = recipe(name, output_size=SIDE, **kw)
    records = draw_records(r, 7, np.arange(count), [slot], corpus.image_hw)[:, 0]
    partners = [corpus.jpegs[p] for p in records["partner"]] if r.has_mix else None
    replayer = Replayer(ReplaySpec(r, size=size), batch_size=count, num_threads=1)
    return r, records, partners, replayer(corpus.jpegs[:count], records, partners)


def test_rrc_view_matches_torchvision(corpus) -> None:
    r, records, _, out = _replay("rrc", corpus)
    for i, record in enumerate(records):
        expected = reference_replay(corpus.jpegs[i], None, record, r, SIDE)
        diff = np.abs(out[i].astype(int) - expected.astype(int))
        # Crop pixels are identical; DALI's and torchvision's antialiased linear resize differ
        # by rounding and filter-support details.
        assert diff.mean() < 0.5, f"sample {i}: mean diff {diff.mean()}"
        assert (diff > 8).mean() < 0.005


def test_rra_re_views_match_torchvision(corpus) -> None:
    r, records, _, out = _replay("rrc+ra/re", corpus, count=16)
    # Every view, Equalize among them (exact since it follows PIL's table, tests/test_ops.py).
    assert any(OP_IDS["Equalize"] in rec["ops"] for rec in records)
    for i in range(len(records)):
        record = records[i]
        expected = reference_replay(corpus.jpegs[i], None, record, r, SIDE)
        diff = np.abs(out[i].astype(int) - expected.astype(int))
        assert diff.mean() < 6, f"sample {i} ops {record['ops']}: mean diff {diff.mean()}"


def test_flip_is_an_exact_mirror(corpus) -> None:
    r = recipe("rrc", output_size=SIDE)
    records = identity_records(r, 4)
    records["flip"][2:] = 1
    jpegs = [corpus.jpegs[0], corpus.jpegs[1], corpus.jpegs[0], corpus.jpegs[1]]
    out = Replayer(ReplaySpec(r), batch_size=4, num_threads=1)(jpegs, records)
    np.testing.assert_array_equal(out[2], out[0][:, ::-1])
    np.testing.assert_array_equal(out[3], out[1][:, ::-1])


def test_erase_fills_exactly_the_stored_box(corpus) -> None:
    r = recipe("rrc+ra/re", output_size=SIDE)
    records = identity_records(r, 2)
    box = (10, 20, 30, 40)
    records["erase"][1] = [round(v / SIDE * COORD_SCALE) for v in box]
    out = Replayer(ReplaySpec(r), batch_size=2, num_threads=1)(corpus.jpegs[:1] * 2, records)
    y, x, h, w = box
    assert (out[1][y : y + h, x : x + w] == np.array(r.erase_fill, np.uint8)).all()
    inside = np.zeros((SIDE, SIDE), bool)
    inside[y : y + h, x : x + w] = True
    np.testing.assert_array_equal(out[1][~inside], out[0][~inside])


def test_mixed_views_match_reference(corpus) -> None:
    r, records, partners, out = _replay("rrc+mix", corpus, count=12, mix_prob=1.0)
    assert set(np.unique(records["mix"])) == {MixMode.MIXUP, MixMode.CUTMIX}
    for i, record in enumerate(records):
        expected = reference_replay(corpus.jpegs[i], partners[i], record, r, SIDE)
        diff = np.abs(out[i].astype(int) - expected.astype(int))
        assert diff.mean() < 0.6, f"sample {i} mix {record['mix']}: mean diff {diff.mean()}"


def test_cutmix_pastes_the_partner_view(corpus) -> None:
    r = recipe("rrc+mix", output_size=SIDE, mix_prob=1.0)
    records = identity_records(r, 3)
    records["mix"][2] = MixMode.CUTMIX
    records["box"][2] = [round(v / SIDE * COORD_SCALE) for v in (8, 16, 40, 24)]
    records["lam"][2] = round((1 - 40 * 24 / SIDE**2) * COORD_SCALE)
    jpegs = [corpus.jpegs[0], corpus.jpegs[1], corpus.jpegs[0]]
    partners = [corpus.jpegs[0], corpus.jpegs[1], corpus.jpegs[1]]
    out = Replayer(ReplaySpec(r), batch_size=3, num_threads=1)(jpegs, records, partners)
    np.testing.assert_array_equal(out[2][8:48, 16:40], out[1][8:48, 16:40])
    mask = np.ones((SIDE, SIDE), bool)
    mask[8:48, 16:40] = False
    np.testing.assert_array_equal(out[2][mask], out[0][mask])


def test_same_records_give_identical_bytes(corpus) -> None:
    _, records, partners, first = _replay("m*+r*", corpus)
    _, _, _, second = _replay("m*+r*", corpus)
    assert first.tobytes() == second.tobytes()


def test_distinct_slots_give_distinct_views(corpus) -> None:
    _, _, _, slot0 = _replay("rrc+ra/re", corpus, slot=0)
    _, _, _, slot1 = _replay("rrc+ra/re", corpus, slot=1)
    for a, b in zip(slot0, slot1, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_teacher_size_replays_the_same_view(corpus) -> None:
    _, _, _, student = _replay("rrc+ra/re", corpus, size=SIDE)
    _, _, _, teacher = _replay("rrc+ra/re", corpus, size=2 * SIDE)
    assert teacher.shape[1:3] == (2 * SIDE, 2 * SIDE)
    small = np.stack(
        [np.asarray(Image.fromarray(t).resize((SIDE, SIDE), Image.BILINEAR)) for t in teacher]
    )
    assert np.abs(small.astype(int) - student.astype(int)).mean() < 12


def test_float_output_is_normalised_chw(corpus) -> None:
    r = recipe("rrc", output_size=SIDE)
    records = identity_records(r, 2)
    uint8 = Replayer(ReplaySpec(r), batch_size=2, num_threads=1)(corpus.jpegs[:2], records)
    spec = ReplaySpec(r, output=Output.FLOAT_CHW)
    out = Replayer(spec, batch_size=2, num_threads=1)(corpus.jpegs[:2], records)
    assert out.shape == (2, 3, SIDE, SIDE) and out.dtype == np.float32
    expected = (
        uint8.transpose(0, 3, 1, 2) / 255.0 - np.array(spec.mean)[:, None, None]
    ) / np.array(spec.std)[:, None, None]
    np.testing.assert_allclose(out, expected, atol=1e-4)


# ---------------------------------------------------------------------------------- bad input


def _jpeg_of(mode: str) -> np.ndarray:
    buffer = io.BytesIO()
    Image.new(mode, (80, 60), 90 if mode == "L" else (10, 90, 200, 30)[: len(mode)]).save(
        buffer, format="JPEG"
    )
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_replay_as_rgb(mode) -> None:
    r = recipe("rrc+ra/re", output_size=32)
    records = identity_records(r, 1)
    out = Replayer(ReplaySpec(r), batch_size=1, num_threads=1)([_jpeg_of(mode)], records)
    assert out.shape == (1, 32, 32, 3)
    expected = np.asarray(Image.open(io.BytesIO(_jpeg_of(mode).tobytes())).convert("RGB"))
    assert np.abs(out[0].astype(int) - expected[30, 40].astype(int)).mean() < 12


def test_truncated_jpeg_names_the_file(corpus) -> None:
    r = recipe("rrc", output_size=32)
    bad = corpus.jpegs[1][: len(corpus.jpegs[1]) // 2]
    replayer = Replayer(ReplaySpec(r), batch_size=2, num_threads=1)
    with pytest.raises(ImageError, match=r"sample 1 \(cat/7.jpg\): truncated JPEG"):
        replayer([corpus.jpegs[0], bad], identity_records(r, 2), names=["a.jpg", "cat/7.jpg"])


def test_non_image_names_the_file() -> None:
    """PNGs replay (tests/test_image_formats.py); what DALI cannot decode is refused by path."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    r = recipe("rrc", output_size=32)
    with pytest.raises(ImageError, match=r"sample 0 \(x.gif\): GIF images are not decoded"):
        Replayer(ReplaySpec(r), batch_size=1, num_threads=1)(
            [np.frombuffer(buffer.getvalue(), np.uint8)], identity_records(r, 1), names=["x.gif"]
        )


def test_record_out_of_range_names_the_sample(corpus) -> None:
    r = recipe("rrc", output_size=32)
    records = identity_records(r, 2)
    records["crop"][1] = (40000, 0, 40000, COORD_SCALE)
    with pytest.raises(RecordError, match=r"record 1 \(b.jpg\): crop extends past the image"):
        Replayer(ReplaySpec(r), batch_size=2, num_threads=1)(
            corpus.jpegs[:2], records, names=["a.jpg", "b.jpg"]
        )


def test_unknown_op_id_names_the_sample(corpus) -> None:
    r = recipe("rrc+ra/re", output_size=32)
    records = identity_records(r, 2)
    records["ops"][0, 1] = 14
    with pytest.raises(RecordError, match=r"record 0 \(a.jpg\): ops has an unknown op id"):
        Replayer(ReplaySpec(r), batch_size=2, num_threads=1)(
            corpus.jpegs[:2], records, names=["a.jpg", "b.jpg"]
        )


def test_partner_out_of_range_names_the_sample(corpus) -> None:
    r = recipe("rrc+mix", output_size=32)
    records = identity_records(r, 2)
    records["partner"][1] = 99
    with pytest.raises(RecordError, match=r"record 1 \(b.jpg\): partner is not in 0..1"):
        Replayer(ReplaySpec(r), batch_size=2, num_threads=1)(
            corpus.jpegs[:2], records, names=["a.jpg", "b.jpg"], num_samples=2
        )


@pytest.mark.gpu
def test_gpu_replay_matches_cpu(corpus) -> None:
    r = recipe("m*+r*", output_size=SIDE)
    records = draw_records(r, 3, np.arange(8), [0], corpus.image_hw)[:, 0]
    partners = [corpus.jpegs[p] for p in records["partner"]]
    cpu = Replayer(ReplaySpec(r), batch_size=8)(corpus.jpegs[:8], records, partners)
    gpu = Replayer(ReplaySpec(r), batch_size=8, device_id=0)(corpus.jpegs[:8], records, partners)
    diff = np.abs(cpu.astype(int) - gpu.astype(int))
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a few levels.
    assert diff.mean() < 3.0


def test_views_cut_from_decoded_images_match_roi_decoding(corpus) -> None:
    """The teacher pass decodes an image once for all its slots; the pixels must not change."""
    from nvidia.dali import fn, pipeline_def, types

    from dalidr.augment.replay import DECODE_ARGS, replay_graph

    r = recipe("rrc+ra/re", output_size=SIDE)
    spec = ReplaySpec(r)
    records = draw_records(r, 5, [0, 1], np.arange(3), corpus.image_hw).reshape(-1)
    jpegs = [corpus.jpegs[i // 3] for i in range(6)]

    @pipeline_def(
        enable_conditionals=True,
        batch_size=6,
        num_threads=1,
        device_id=None,
        prefetch_queue_depth=1,
    )
    def decode_once():
        unique = fn.external_source(name="unique", dtype=types.UINT8)
        views = fn.external_source(name="jpegs", dtype=types.UINT8)
        decoded = fn.permute_batch(
            fn.decoders.image(unique, **DECODE_ARGS), indices=[0, 0, 0, 1, 1, 1]
        )
        inputs = {f: fn.external_source(name=f) for f in spec.fields}
        return replay_graph(views, None, inputs, spec, "cpu", decoded=decoded)

    pipe = decode_once()
    pipe.build()
    pipe.feed_input("unique", [corpus.jpegs[0], corpus.jpegs[1]] + [corpus.jpegs[0]] * 4)
    pipe.feed_input("jpegs", jpegs)
    for field in spec.fields:
        pipe.feed_input(field, np.ascontiguousarray(records[field]))
    (once,) = pipe.run()
    per_view = Replayer(spec, batch_size=6, num_threads=1)(jpegs, records)
    np.testing.assert_array_equal(np.asarray(once.as_array()), per_view)
