"""`dalidr import-mldr`: counts preserved, problems named by file, resume, refusal of unsafe or
unrepresentable sources, and the imported store served by the loader."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import shutil
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch

from dalidr.augment.records import COORD_SCALE, MixMode
from dalidr.cli import main as cli_main
from dalidr.data.dataset import list_dataset
from dalidr.data.sample_data import make_corpus
from dalidr.errors import DatasetError, RecipeError
from dalidr.mldr import ImportConfig, import_mldr
from dalidr.training.loader import LoaderConfig, ReinforcedLoader
from store.manifest import scan_manifest
from store.reader import StoreReader
from tests.faults import FAULTS, PAGE, enospc_on, full_disk, pages
from tests.mldr_builder import MldrSpec, mldr_config, save_sample, write_mldr_dataset
from tests.store.helpers import tree_bytes

SPEC = MldrSpec(size=48, slots=6, topk=4, num_classes=10, formats=("torch", "gzip", "joblib"))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("mldr")
    make_corpus(folder / "images", 16, seed=4)
    listing = list_dataset(folder / "images")
    manifest = scan_manifest(listing.root, listing.paths, listing.labels)
    written = write_mldr_dataset(folder / "rdata", listing, manifest.image_hw, SPEC, seed=1)
    return folder, manifest, written


def _config(folder: Path, rdata: Path, out: str, **kw) -> ImportConfig:
    return ImportConfig(rdata, folder / "images", out, workers=1, block_size=4,
                        progress=False, **kw)


def _copy_source(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in (folder / "rdata").iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    return dest


def _all_blocks(url: str):
    reader = StoreReader(url)
    parts = [reader.read_block(b) for b in range(reader.num_blocks)]
    records = np.concatenate([p[0] for p in parts])
    classes = np.concatenate([p[1].classes for p in parts])
    probs = np.concatenate([p[1].probs for p in parts])
    return reader, records, classes, probs


def test_import_preserves_every_view_and_probability(source, tmp_path: Path) -> None:
    folder, manifest, written = source
    url = str(tmp_path / "store.zarr")
    report = import_mldr(_config(folder, folder / "rdata", url))
    n = len(written)
    assert (report.samples, report.slots, report.k) == (n, SPEC.slots, SPEC.topk)
    assert report.views_converted == n * SPEC.slots
    assert report.probabilities_converted == n * SPEC.slots * SPEC.topk
    assert report.blocks_committed == report.num_blocks == 4
    reader, records, classes, probs = _all_blocks(url)
    assert reader.config.recipe.erase_fill == (0, 0, 0) and reader.config.num_classes == 10
    assert records.shape == (n, SPEC.slots) and classes.shape == (n, SPEC.slots, SPEC.topk)
    kinds = set()
    for i, views in enumerate(written):
        for s, view in enumerate(views):
            record, (values, ids) = records[i, s], view["prob"]
            np.testing.assert_array_equal(np.sort(classes[i, s]), np.sort(ids))
            np.testing.assert_allclose(np.sort(probs[i, s]), np.sort(values), atol=0.02)
            params = view["params"]
            own_crop = params[1][0] if params[0] is not None else params[1]
            height, width = manifest.image_hw[i]
            pixels = np.rint(record["crop"] / COORD_SCALE * [height, width, height, width])
            np.testing.assert_array_equal(pixels, own_crop)
            mixup, cutmix = params[-2], params[-1]
            expected = (MixMode.MIXUP if mixup is not None else
                        MixMode.CUTMIX if cutmix is not None else MixMode.NONE)
            assert record["mix"] == expected
            assert record["partner"] == (params[0] if params[0] is not None else i)
            if cutmix is not None:
                box = np.rint(record["box"] / COORD_SCALE * SPEC.size)
                np.testing.assert_array_equal(box, [cutmix[1], cutmix[2], cutmix[3] - cutmix[1],
                                                    cutmix[4] - cutmix[2]])
            ra = params[3][0] if params[0] is not None else params[3]
            if ra is None:
                assert (record["ops"] == 0).all() and (record["mags"] == 0).all()
            else:
                np.testing.assert_array_equal(record["ops"], [op for op, _ in ra])
            kinds.add((int(expected), ra is None))
    assert len(kinds) >= 5, kinds  # mixing modes x skipped RandAugment all occur


def test_bad_files_are_named_and_a_rerun_converts_only_the_rest(source, tmp_path) -> None:
    folder, manifest, written = source
    rdata = _copy_source(folder, tmp_path / "rdata")
    (rdata / "5.pth.tar").write_bytes((rdata / "5.pth.tar").read_bytes()[:200])  # truncated
    save_sample((9, written[9][:-1]), rdata / "9.pth.tar")  # a view short
    save_sample((3, written[10]), rdata / "10.pth.tar")  # another sample's index
    url = str(tmp_path / "store.zarr")
    with pytest.raises(DatasetError) as caught:
        import_mldr(_config(folder, rdata, url))
    message = str(caught.value)
    assert "5.pth.tar" in message and "9.pth.tar" in message and "10.pth.tar" in message
    assert "holds 5 views" in message and "holds index 3" in message
    assert list(StoreReader(url).committed()) == [True, False, False, True]
    for index in (5, 9, 10):  # put the originals back and resume
        (rdata / f"{index}.pth.tar").write_bytes((folder / "rdata" / f"{index}.pth.tar"
                                                  ).read_bytes())
    report = import_mldr(_config(folder, rdata, url))
    assert report.blocks_written == 2 and report.blocks_committed == 4
    clean = str(tmp_path / "clean.zarr")
    import_mldr(_config(folder, folder / "rdata", clean))
    for a, b in zip(_all_blocks(url)[1:], _all_blocks(clean)[1:], strict=True):
        assert a.tobytes() == b.tobytes()


def test_missing_files_are_listed(source, tmp_path: Path) -> None:
    folder, _, _ = source
    rdata = _copy_source(folder, tmp_path / "rdata")
    (rdata / "7.pth.tar").unlink()
    with pytest.raises(DatasetError, match=r"1 of 16 sample files are missing: 7\.pth\.tar"):
        import_mldr(_config(folder, rdata, str(tmp_path / "s.zarr")))


class _Planted:
    """A pickle that would create `marker` when unpickled by a trusting loader."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "eval":
            return eval, (f"open({str(self.marker)!r}, 'w').close()",)
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["torch.save + os.system", "pickle + eval", "config"])
def test_a_planted_pickle_is_refused_and_never_runs(source, tmp_path: Path, how: str) -> None:
    folder, _, _ = source
    rdata = _copy_source(folder, tmp_path / "rdata")
    marker = tmp_path / "pwned"
    name = "config.pth.tar" if how == "config" else "3.pth.tar"
    payload = (3, [_Planted(marker, "eval" if "eval" in how else "system")])
    if how == "pickle + eval":
        (rdata / name).write_bytes(pickle.dumps(payload, protocol=4))
    else:
        buffer = io.BytesIO()
        torch.save(payload, buffer, pickle_protocol=4)
        (rdata / name).write_bytes(buffer.getvalue())
    with pytest.raises(DatasetError) as caught:
        import_mldr(_config(folder, rdata, str(tmp_path / "s.zarr")))
    assert name in str(caught.value) and "refused" in str(caught.value)
    assert ("builtins.eval" if "eval" in how else "system") in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("key, options", [
    ("random_crop", {"size": 48, "padding": 16}),  # CIFAR-100+
    ("random_resize_crop", {"size": 48}),  # a key the paper's code silently ignores
])
def test_configs_dalidr_cannot_replay_are_refused_by_key(source, tmp_path, key, options) -> None:
    folder, _, _ = source
    rdata = _copy_source(folder, tmp_path / "rdata")
    config = mldr_config(SPEC)
    config["reinforce"]["image_augmentation"][key] = options
    torch.save(config, rdata / "config.pth.tar")
    with pytest.raises(RecipeError, match=key):
        import_mldr(_config(folder, rdata, str(tmp_path / "s.zarr")))


def test_cli_imports_in_parallel_and_the_loader_serves_it(source, tmp_path, capsys) -> None:
    folder, _, _ = source
    url = str(tmp_path / "store.zarr")
    code = cli_main(["import-mldr", str(folder / "rdata"), "--images", str(folder / "images"),
                     "--out", url, "--workers", "2", "--block-size", "4", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "imported 16 samples x 6 views x top-4" in printed and "4/4 blocks" in printed
    loader = ReinforcedLoader(url, folder / "images", LoaderConfig(batch_size=8, num_threads=1))
    with loader:
        images, targets = next(iter(loader))
    assert images.shape == (8, 3, SPEC.size, SPEC.size) and targets.shape == (8, 10)
    assert torch.allclose(targets.sum(1), torch.ones(8), atol=1e-3)


@pytest.mark.parametrize("mixing", [True, False], ids=["mixing", "no-mixing"])
def test_uncompressed_files_import_as_the_compressed_ones(tmp_path: Path, mixing: bool) -> None:
    """`reinforce.compress: false` (RandAugment ops stored by name, every transform's (own,
    partner) pair in a dictionary) imports to the same records as the compressed lists."""
    make_corpus(tmp_path / "images", 8, seed=4)
    listing = list_dataset(tmp_path / "images")
    manifest = scan_manifest(listing.root, listing.paths, listing.labels)
    stores = []
    for compress in (True, False):
        spec = MldrSpec(size=48, slots=6, topk=4, num_classes=10, mixing=mixing,
                        compress=compress, formats=("torch", "gzip"))
        rdata = tmp_path / f"rdata-{compress}"
        written = write_mldr_dataset(rdata, listing, manifest.image_hw, spec, seed=2)
        if not compress:
            params = written[0][0]["params"]
            assert isinstance(params, dict) and params["to_tensor"] == ((), ())
            assert any(isinstance(view["params"]["rand_augment"][0], list)
                       and isinstance(view["params"]["rand_augment"][0][0][0], str)
                       for views in written for view in views)
        url = str(tmp_path / f"store-{compress}.zarr")
        report = import_mldr(ImportConfig(rdata, tmp_path / "images", url, workers=1,
                                          block_size=4, progress=False))
        assert report.views_converted == 8 * 6
        stores.append(_all_blocks(url))
    (_, records, classes, probs), (_, records2, classes2, probs2) = stores
    np.testing.assert_array_equal(records2, records)
    np.testing.assert_array_equal(classes2, classes)
    np.testing.assert_array_equal(probs2, probs)
    assert (records["ops"] != 0).any()
    if mixing:
        assert (records["mix"] != int(MixMode.NONE)).any()


def test_an_unknown_op_name_is_named(source, tmp_path: Path) -> None:
    folder, _, _ = source
    rdata = _copy_source(folder, tmp_path / "rdata")
    spec = dataclasses.replace(SPEC, compress=False, mixing=False)
    torch.save(mldr_config(spec), rdata / "config.pth.tar")
    views = [{"params": {"uint8": ((), ()), "random_horizontal_flip": (False, True),
                         "rand_augment": ([("Colour", 0.3), ("Equalize", 0.0)], None),
                         "to_tensor": ((), ()), "random_erase": (None, None),
                         "normalize": ((), ()), "random_resized_crop": ((0, 0, 8, 8),
                                                                        (0, 0, 8, 8))},
              "prob": ([0.5, 0.2, 0.1, 0.1], [1, 2, 3, 4])}] * SPEC.slots
    save_sample((0, views), rdata / "0.pth.tar")
    with pytest.raises(DatasetError, match=r"0\.pth\.tar.*'Colour' is not one of \['Identity'"):
        import_mldr(_config(folder, rdata, str(tmp_path / "s.zarr")))


def _cli(folder: Path, rdata: Path, out: Path) -> list[str]:
    return ["import-mldr", str(rdata), "--images", str(folder / "images"), "--out", str(out),
            "--workers", "1", "--block-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def clean_import(source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder, _, _ = source
    want = tmp_path_factory.mktemp("clean") / "store.zarr"
    import_mldr(_config(folder, folder / "rdata", str(want)))
    return want


@pytest.mark.parametrize("fault", FAULTS)
def test_a_full_disk_stops_the_import_named_and_a_rerun_is_byte_identical(
        source, clean_import: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], fault: str) -> None:
    """Not reported as a problem of the sample files: the store, the object and the space
    (the error crosses a process pool as it is: test_the_error_survives_a_process_pool)."""
    folder, _, _ = source
    want = clean_import
    out = tmp_path / "mnt" / "store.zarr"
    with ExitStack() as mounts:
        if fault == "tmpfs":
            need = pages(want)
            disk = mounts.enter_context(full_disk(out.parent, PAGE * (need * 2 // 3)))
        else:
            enospc_on(monkeypatch, lambda p: "/topk/classes/c/2/" in p)
        args = _cli(folder, folder / "rdata", out)
        assert cli_main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"dalidr import-mldr: error: store {out}: writing ")
        assert "No space left on device (ENOSPC)" in err and "rerun the same command" in err
        assert "problem" not in err and "Traceback" not in err and err.count("\n") == 1
        if fault == "tmpfs":
            assert "are free on the file system of" in err
            disk.grow(PAGE * (need + 64))
        else:
            assert ("block 2 (samples 8..11) of array 'topk/classes' (object "
                    "topk/classes/c/2/0/0) failed") in err
            monkeypatch.undo()
        assert cli_main(args) == 0
        assert "4/4 blocks committed" in capsys.readouterr().out
        assert tree_bytes(out) == tree_bytes(want)


def test_empty_and_hidden_class_folders_are_named_not_torchvision_tracebacks(
        source, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dalidr.mldr.source import dataset_listing

    folder, _, _ = source
    images = tmp_path / "images"
    shutil.copytree(folder / "images", images, copy_function=os.link)
    reference = dataset_listing(images, None)
    (images / "aaa_empty").mkdir()
    args = ["import-mldr", str(folder / "rdata"), "--images", str(images), "--out",
            str(tmp_path / "s.zarr"), "--workers", "1", "--no-progress"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dalidr import-mldr: error: dataset root {images}: class folder(s) "
                          "'aaa_empty' hold no image files") and "Traceback" not in err
    (images / "aaa_empty").rmdir()
    # A hidden class: torchvision's ImageFolder would make it class 0 (the paper's indices).
    hidden = images / ".thumbnails"
    hidden.mkdir()
    os.link(images / reference.paths[0], hidden / "0.jpg")
    with pytest.raises(DatasetError, match=r"hidden folder\(s\) '\.thumbnails' would be class "
                                           "folders"):
        import_mldr(_config(tmp_path, folder / "rdata", str(tmp_path / "s.zarr")))
    shutil.rmtree(hidden)
    # dalidr's own cache folder is neither dalidr's class nor the paper's.
    (images / ".dalidr").mkdir()
    (images / ".dalidr" / "image-hw-0.npy").write_bytes(b"")
    listing = dataset_listing(images, None)
    assert listing.classes == reference.classes and listing.paths == reference.paths
    assert not (tmp_path / "s.zarr").exists()
