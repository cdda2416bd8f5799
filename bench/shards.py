"""Webdataset shards against a folder, a loopback object store against local disk, and listing
at ImageNet-1k's shape (issue 29, point 8), measured side by side in one run.

1. loader: `ReinforcedLoader` on one store, fed the same images three ways: a folder, local
   shards (`dalidr pack`, same order), and the same shards from moto's S3 server on 127.0.0.1
   with `--latency-ms` added to every request (read through s3fs). Timed in interleaved rounds
   (`--warmup` untimed batches, then `--batches` timed, median over `--repeats` rounds; the
   CPU share other processes took is recorded). Targets: shards / folder >= 0.95, S3 / local
   shards >= 0.9 (same threads), with the S3 reader's requests, bytes per request and the most
   requests in flight. Note: moto runs in this process's machine and takes CPU of its own.
2. peers: DALI's `readers.webdataset` (read + decode + resize) on the local shards, and
   webdataset's plain iteration when it is installed: the reference line.
3. listing: `--listing-shards` shards of `--listing-members` samples (a tiny `.jpg` and a
   `.cls` each; ImageNet-1k: 1,024 x 1,251), indexed from the tar headers on local disk
   (target <= 60 s), from `wds2idx` index files (<= 5 s), and from the node cache (<= 5 s).
   Writing them is untimed (~2.6 GB at full size; `--workdir` keeps them for a rerun). Each
   is timed once, cold (a second listing would hit what the first left in memory), with the
   CPU share other processes took during it (the targets assume the cores are ours).

Run from the repository root: `python bench/shards.py` (`--quick` for a smoke test), or only
the listing (no DALI, no store): `python bench/shards.py --only-listing`. Results go to
bench/results/shards-cpu.json (shards-listing-cpu.json for `--only-listing`) with the machine
and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe_machine, foreign_cpu_share, load_snapshot, summary
from dalidr.data import node_cache
from dalidr.data.byte_ranges import ByteRangeReader, RangeReaderConfig, set_default_reader
from dalidr.data.index_workers import default_workers
from dalidr.data.shards import format_wds_index, list_shards

BUCKET = "bench"
# Listing targets (issue 29), seconds for ImageNet-1k's shape.
LISTING_TARGETS = {"from_headers_s": 60.0, "from_index_files_s": 5.0, "from_cache_s": 5.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="dataset size (default 512)")
    parser.add_argument("--per-shard", type=int, default=64, help="samples per shard")
    parser.add_argument("--size", type=int, default=224, help="output side")
    parser.add_argument("--recipe", default="rrc+ra/re", help="store recipe preset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=5, help="timed batches per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per loader")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="DALI threads (default: all cores)")
    parser.add_argument("--read-threads", type=int, default=4, help="loader read threads")
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="added to every S3 request (default 20)")
    parser.add_argument("--in-flight", type=int, default=RangeReaderConfig.max_in_flight,
                        help="remote requests in flight")
    parser.add_argument("--listing-shards", type=int, default=1024)
    parser.add_argument("--listing-members", type=int, default=1251, help="samples per shard")
    parser.add_argument("--only-listing", action="store_true",
                        help="measure the listing only (no DALI, no store, no S3)")
    parser.add_argument("--workdir", default=None, help="where data is written (default: tmp)")
    parser.add_argument("--out", default=None, help="results JSON (default: bench/results/"
                        "shards-cpu.json, or shards-listing-cpu.json with --only-listing)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = ("bench/results/shards-listing-cpu.json" if args.only_listing
                    else "bench/results/shards-cpu.json")
    if args.quick:
        args.images, args.per_shard, args.size, args.batch = 48, 16, 64, 8
        args.batches, args.warmup, args.repeats = 2, 1, 1
        args.listing_shards, args.listing_members = 8, 50
    return args


# ----------------------------------------------------------------------------- loaders


class _Timed:
    """A loader kept iterating across rounds: `time(n)` takes n batches, returns seconds."""

    def __init__(self, loader: Any) -> None:
        self.loader, self._it, self.images = loader, None, 0
        self._epoch = 0

    def _next(self) -> Any:
        if self._it is None:
            self._epoch += 1
            self.loader.set_epoch(self._epoch)
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:
            self._it = None
            return self._next()

    def time(self, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            images, _ = self._next()
            self.images = len(images)
        return time.perf_counter() - start


def _rounds(loaders: dict[str, _Timed], args: argparse.Namespace,
            reader: ByteRangeReader) -> tuple[dict[str, Any], dict[str, float]]:
    runs: dict[str, list[float]] = {name: [] for name in loaders}
    shares: dict[str, list[float | None]] = {name: [] for name in loaders}
    remote: dict[str, float] = {}
    for round_ in range(args.repeats + 1):  # round 0: start-up, untimed
        order = list(loaders)[round_ % len(loaders):] + list(loaders)[:round_ % len(loaders)]
        for name in order:
            loaders[name].time(args.warmup)
            reader.stats.reset()
            before = load_snapshot()
            seconds = loaders[name].time(args.batches)
            if round_:
                runs[name].append(args.batches * loaders[name].images / seconds)
                shares[name].append(foreign_cpu_share(before, load_snapshot()))
                if name == "s3_shards":
                    stats = reader.stats.snapshot()
                    for key, value in stats.items():
                        remote[key] = max(remote.get(key, 0.0), value) \
                            if key == "max_in_flight" else remote.get(key, 0.0) + value
    if "requests" in remote:
        remote["bytes_per_request"] = remote["bytes"] / max(1.0, remote["requests"])
        remote["ranges_per_request"] = remote["ranges"] / max(1.0, remote["requests"])
    rates = {name: {"images_per_s": statistics.median(runs[name]), "runs": runs[name],
                    "foreign_cpu_share": shares[name]} for name in loaders}
    return rates, remote


# ----------------------------------------------------------------------------- peers


def _dali_webdataset(shards: list[Path], args: argparse.Namespace) -> float:
    """Images/s of DALI's readers.webdataset + decode + resize on the local shards."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=args.batch, num_threads=args.threads, device_id=None)
    def pipe() -> Any:
        jpegs, labels = fn.readers.webdataset(
            paths=[str(p) for p in shards], index_paths=[str(p.with_suffix(".idx"))
                                                         for p in shards],
            ext=["jpg;jpeg;png;webp", "cls"], missing_component_behavior="error",
            random_shuffle=True, name="Reader")
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        return fn.resize(images, size=[args.size, args.size]), labels

    pipeline = pipe()
    pipeline.build()
    for _ in range(args.warmup):
        pipeline.run()
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.batches):
            pipeline.run()
        rates.append(args.batches * args.batch / (time.perf_counter() - start))
    return statistics.median(rates)


def _webdataset(spec: str, args: argparse.Namespace) -> float | None:
    """Images/s of webdataset's plain iteration (read + PIL decode), None if not installed."""
    try:
        import webdataset as wds
    except ImportError:
        return None
    dataset = wds.WebDataset(spec, shardshuffle=False).decode("pil").to_tuple("jpg", "cls")
    count, start = 0, time.perf_counter()
    for _ in dataset:
        count += 1
    return count / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- listing


def _tiny_shards(folder: Path, shards: int, members: int, index: bool) -> str:
    """`shards` shards of `members` samples (a 16-byte .jpg and a .cls each), ustar headers;
    with `index`, a wds2idx file beside each. Reused when already there."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "complete"
    spec = str(folder / f"t-{{0000..{shards - 1:04d}}}.tar")
    if done.is_file() and done.read_text() == f"{shards} {members} {index}":
        return spec
    payload = bytes(16)
    for s in range(shards):
        blocks: list[bytes] = []
        samples: list[list[tuple[str, int, int]]] = []
        position = 0
        for i in range(members):
            key = f"{s:04d}{i:05d}"
            sample = []
            for ext, data in (("jpg", payload), ("cls", str(i % 1000).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                header = info.tobuf(format=tarfile.USTAR_FORMAT)
                padded = data + bytes(-len(data) % tarfile.BLOCKSIZE)
                sample.append((info.name, position + len(header), len(data)))
                blocks += [header, padded]
                position += len(header) + len(padded)
            samples.append(sample)
        body = b"".join(blocks) + bytes(2 * tarfile.BLOCKSIZE)
        body += bytes(-len(body) % tarfile.RECORDSIZE)
        path = folder / f"t-{s:04d}.tar"
        path.write_bytes(body)
        if index:
            path.with_suffix(".idx").write_text(format_wds_index(samples))
    done.write_text(f"{shards} {members} {index}")
    return spec


def _timed(call: Callable[[], Any]) -> tuple[float, float | None]:
    """(seconds, share of the CPU other processes took meanwhile) of one call."""
    before = load_snapshot()
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    return seconds, foreign_cpu_share(before, load_snapshot())


def _listing(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    bare = _tiny_shards(workdir / "listing-headers", args.listing_shards,
                        args.listing_members, index=False)
    indexed = _tiny_shards(workdir / "listing-index", args.listing_shards,
                           args.listing_members, index=True)
    headers_s, headers_foreign = _timed(lambda: list_shards(bare, share=False))
    index_s, index_foreign = _timed(lambda: list_shards(indexed, share=False))
    cache = workdir / "node-cache"
    shutil.rmtree(cache, ignore_errors=True)
    saved = os.environ.get(node_cache.ENV)
    os.environ[node_cache.ENV] = str(cache)
    try:
        list_shards(indexed)  # fills the cache
        cache_s, cache_foreign = _timed(lambda: list_shards(indexed))
    finally:
        if saved is None:
            os.environ.pop(node_cache.ENV, None)
        else:
            os.environ[node_cache.ENV] = saved
    return {"shards": args.listing_shards, "samples_per_shard": args.listing_members,
            "members": 2 * args.listing_shards * args.listing_members,
            "index_processes": default_workers(args.listing_shards),
            "from_headers_s": headers_s, "from_index_files_s": index_s, "from_cache_s": cache_s,
            "foreign_cpu_share": {"from_headers": headers_foreign,
                                  "from_index_files": index_foreign,
                                  "from_cache": cache_foreign},
            "targets_s": LISTING_TARGETS,
            "met": {k: v <= LISTING_TARGETS[k] for k, v in (
                ("from_headers_s", headers_s), ("from_index_files_s", index_s),
                ("from_cache_s", cache_s))}}


# ----------------------------------------------------------------------------- main


def _listing_only(args: argparse.Namespace, machine: dict[str, Any]) -> dict[str, Any]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dalidr-bench-listing-"))
    try:
        listing = _listing(workdir, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"listing": listing}


@contextlib.contextmanager
def _s3_shards(shards: list[Path], latency_s: float) -> Iterator[str]:
    from s3fs import S3FileSystem

    from tests.remote_servers import serve_s3

    with serve_s3(latency_s=latency_s, own_process=True):
        fs = S3FileSystem()
        fs.mkdir(BUCKET)
        for path in shards:
            for file in (path, path.with_suffix(".idx")):
                fs.pipe(f"{BUCKET}/{file.name}", file.read_bytes())
        last = len(shards) - 1
        yield f"s3://{BUCKET}/{shards[0].stem.rsplit('-', 1)[0]}-{{0..{last}}}.tar"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    machine = describe_machine()
    print(summary(machine))
    results = _listing_only(args, machine) if args.only_listing else _everything(args)
    payload = {"benchmark": "shards",
               "command": shlex.join(["python", "bench/shards.py", *(argv or sys.argv[1:])]),
               "machine": machine, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    if not args.only_listing:
        _table(results)
    _listing_table(results["listing"])
    print(f"wrote {args.out}")
    return payload


def _everything(args: argparse.Namespace) -> dict[str, Any]:
    from dalidr.data.pack import pack_shards
    from dalidr.training.loader import LoaderConfig, ReinforcedLoader
    from tests.store_builder import build_store

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dalidr-bench-shards-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ[node_cache.ENV] = "off"  # the loaders list afresh (the listing part sets it)
    reader = ByteRangeReader(RangeReaderConfig(max_in_flight=args.in_flight))
    previous = set_default_reader(reader)
    try:
        built = build_store(workdir / "loader", images=args.images, size=args.size,
                            preset=args.recipe)
        report = pack_shards(built.root, str(workdir / "loader" / "shards" / "train-%d.tar"),
                             samples_per_shard=args.per_shard)
        shards = [Path(p) for p in report.shards]
        config = LoaderConfig(batch_size=args.batch, num_threads=args.threads,
                              read_threads=args.read_threads)
        with _s3_shards(shards, args.latency_ms / 1e3) as s3_spec:
            opened = {"folder": ReinforcedLoader(built.url, built.root, config),
                      "local_shards": ReinforcedLoader(built.url, report.spec, config),
                      "s3_shards": ReinforcedLoader(built.url, s3_spec, config)}
            try:
                rates, remote = _rounds({n: _Timed(v) for n, v in opened.items()}, args,
                                        reader)
            finally:
                for loader in opened.values():
                    loader.close()
        peers = {"dali_readers_webdataset": _dali_webdataset(shards, args),
                 "webdataset": _webdataset(report.spec, args)}
        listing = _listing(workdir, args)
    finally:
        set_default_reader(previous)
        reader.close()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    local = rates["local_shards"]["images_per_s"]
    return {
        "loader": rates,
        "ratios": {"local_shards_over_folder": local / rates["folder"]["images_per_s"],
                   "s3_over_local_shards": rates["s3_shards"]["images_per_s"] / local},
        "s3": {"latency_ms": args.latency_ms, "in_flight_limit": args.in_flight, **remote},
        "peers_images_per_s": peers,
        "listing": listing,
        "targets": {"local_shards_over_folder": 0.95, "s3_over_local_shards": 0.9,
                    **LISTING_TARGETS},
        "setup": {"images": args.images, "per_shard": args.per_shard, "size": args.size,
                  "recipe": args.recipe, "batch": args.batch, "batches": args.batches,
                  "repeats": args.repeats, "threads": args.threads,
                  "read_threads": args.read_threads, "quick": args.quick},
    }


def _table(results: dict[str, Any]) -> None:
    print(f"\n{'loader':<14}{'images/s':>10}  runs")
    for name, rate in results["loader"].items():
        print(f"{name:<14}{rate['images_per_s']:>10.1f}  {[round(v, 1) for v in rate['runs']]}")
    for name, value in results["peers_images_per_s"].items():
        shown = "not installed" if value is None else f"{value:.1f}"
        print(f"{name:<14}{shown:>10}  (peer, plain reading)")
    ratios, s3 = results["ratios"], results["s3"]
    print(f"local shards / folder: {ratios['local_shards_over_folder']:.3f} (target >= 0.95)")
    print(f"S3 +{s3['latency_ms']:g} ms / local shards: {ratios['s3_over_local_shards']:.3f} "
          f"(target >= 0.9); {s3.get('requests', 0):.0f} requests, "
          f"{s3.get('bytes_per_request', 0) / 1e3:.1f} kB each, at most "
          f"{s3.get('max_in_flight', 0):.0f} in flight")


def _listing_table(listing: dict[str, Any]) -> None:
    print(f"\nlisting {listing['shards']} shards x {listing['samples_per_shard']} samples "
          f"({listing['index_processes']} index processes)")
    print(f"{'from':<14}{'seconds':>9}{'target':>8}  {'met':<5} other processes' CPU share")
    for key, name in (("from_headers_s", "tar headers"), ("from_index_files_s", "index files"),
                      ("from_cache_s", "node cache")):
        share = listing["foreign_cpu_share"][key[:-2]]
        shown = "n/a" if share is None else f"{share:.0%}"
        print(f"{name:<14}{listing[key]:>9.2f}{listing['targets_s'][key]:>8.0f}  "
              f"{str(listing['met'][key]):<5} {shown}")


if __name__ == "__main__":
    main()
