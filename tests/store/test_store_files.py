"""A store's objects are regular files inside it, within their bounds; remote stores say what is
wrong (issue 23, items 1 and 4).

Cases that hang or eat memory on a store that trusts its files (a FIFO, a link to `/dev/zero`)
run in a subprocess with a time limit and a memory cap, so a regression fails instead of
hanging the suite. Stores are also served over HTTP from loopback servers started here: one
that honours `Range` and Python's `http.server`, which ignores it.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dalidr.errors import StoreError
from store.inspect import inspect_store
from store.object_bounds import METADATA_BOUND, array_chunk_bound
from store.reader import StoreReader
from store.writer import create_store
from tests.store.helpers import make_config, make_manifest, producer, write_store

SECRET = b"SECRET" * 200  # secret-looking bytes outside the store
SECRET_PIECES = ("SECR", "ECRE", "CRET", "RETS", "ETSE", "TSEC", "\\x")
CHUNK = "topk/classes/c/1/0/0"  # a shard of block 1 (samples 8..15)


@pytest.fixture()
def store_dir(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """A fresh copy of a complete store (37 samples, blocks of 8), free to damage."""
    cache = tmp_path_factory.getbasetemp() / "pristine-store-files"
    if not cache.exists():
        write_store(str(cache), make_manifest(), make_config())
    shutil.copytree(cache, tmp_path / "store")
    return tmp_path / "store"


def _messages(url: str) -> list[str]:
    """What `inspect_store` reports (its error, or its problems) and the error of reading the
    manifest and every block as the loader's reader does."""
    try:
        problems = inspect_store(url).problems
    except StoreError as exc:
        problems = [str(exc)]
    assert problems, f"inspect calls {url} intact"
    with pytest.raises(StoreError) as raised:
        reader = StoreReader(url)
        _ = reader.manifest
        for block in range(reader.num_blocks):
            reader.read_block(block)
    return [*problems, str(raised.value)]


def _assert_refused(url: str, key: str, what: str) -> None:
    for message in _messages(url):
        assert url in message, message
        assert f"object {key!r} {what}" in message, message
        assert not any(piece in message for piece in SECRET_PIECES), message


# ------------------------------------------------------------------------ links and special files


def test_a_chunk_linked_to_a_file_outside_is_refused_unread(store_dir: Path,
                                                            tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    (store_dir / CHUNK).unlink()
    (store_dir / CHUNK).symlink_to(secret)
    _assert_refused(str(store_dir), CHUNK, f"is a symbolic link to '{secret}' (outside the store)")


def test_a_chunk_linked_to_an_identical_copy_outside_is_refused(store_dir: Path,
                                                                tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.move(store_dir / CHUNK, copy)
    (store_dir / CHUNK).symlink_to(copy)
    _assert_refused(str(store_dir), CHUNK, "is a symbolic link")


def test_a_link_inside_the_store_is_refused_too(store_dir: Path) -> None:
    """Every link is refused, also one to an identical object in the store (store.guarded)."""
    shutil.move(store_dir / CHUNK, store_dir / "topk/classes/moved")
    (store_dir / CHUNK).symlink_to("../../../moved")
    _assert_refused(str(store_dir), CHUNK, "is a symbolic link to '../../../moved' (inside the "
                                           "store)")


def test_a_folder_linked_outside_is_refused(store_dir: Path, tmp_path: Path) -> None:
    shutil.move(store_dir / "topk/classes/c", tmp_path / "outside")
    (store_dir / "topk/classes/c").symlink_to(tmp_path / "outside")
    _assert_refused(str(store_dir), "topk/classes/c/0/0/0", "is reached through a symbolic link")


def test_the_store_root_itself_may_be_a_link(store_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.zarr"
    link.symlink_to(store_dir)
    assert inspect_store(str(link)).problems == []
    ours, theirs = StoreReader(str(link)).epoch(0), StoreReader(str(store_dir)).epoch(0)
    assert np.array_equal(ours.records, theirs.records)
    assert np.array_equal(ours.targets.classes, theirs.targets.classes)


def test_a_socket_is_refused(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (store_dir / CHUNK).unlink()
    monkeypatch.chdir((store_dir / CHUNK).parent)  # a socket path is limited to 108 bytes
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(CHUNK.rsplit("/", 1)[1])
        _assert_refused(str(store_dir), CHUNK, "is a socket")


_SPECIAL_FILES = """
import json, os, resource, shutil, sys
from dalidr.errors import StoreError
from store.inspect import inspect_store
from store.reader import StoreReader
from tests.store.fuzz import _cap_data_segment
_cap_data_segment(1.0)  # 1 GiB more than now: a runaway read fails fast
pristine, work = sys.argv[1], sys.argv[2]
cases = [("zero", "topk/classes/c/1/0/0", "/dev/zero"), ("urandom", "records/crop/c/2/0/0",
         "/dev/urandom"), ("zero-row", "commit_map/c/1/0", "/dev/zero"),
         ("zero-summary", "commit_summary/c/0/0", "/dev/zero"),
         ("zero-meta", "records/crop/zarr.json", "/dev/zero"),
         ("fifo", "topk/classes/c/1/0/0", None), ("fifo-meta", "zarr.json", None)]
for name, key, target in cases:
    root = os.path.join(work, name)
    shutil.copytree(pristine, root)
    if key.startswith("commit_map/"):  # read by loaders only without the commit summary
        shutil.rmtree(os.path.join(root, "commit_summary"))
    os.unlink(os.path.join(root, key))
    if target:
        os.symlink(target, os.path.join(root, key))
    else:
        os.mkfifo(os.path.join(root, key))
    out = {"case": name, "key": key}
    def inspected():
        problems = inspect_store(root).problems  # damage it reports, or raises at once
        if problems:
            raise StoreError(problems[0])
    for what, run in (("inspect", inspected),
                      ("reader", lambda: [StoreReader(root).read_block(b) for b in range(5)])):
        try:
            run()
            out[what] = "served"
        except BaseException as exc:
            out[what] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out), flush=True)
"""


def test_devices_and_fifos_are_refused_without_reading(store_dir: Path, tmp_path: Path) -> None:
    """A chunk or metadata object linked to /dev/zero or /dev/urandom, or made a FIFO: refused
    by name at once (before: unbounded memory, a bare MemoryError, a hang)."""
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run([sys.executable, "-c", _SPECIAL_FILES, str(store_dir),
                               str(tmp_path / "work")], capture_output=True, text=True,
                              timeout=300, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a special file hung the reader; cases done: {exc.stdout!r}")
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 7, done.stderr[-3000:]
    for result in results:
        what = "a FIFO" if result["case"].startswith("fifo") else "a symbolic link to '/dev/"
        for checker in ("inspect", "reader"):
            assert result[checker].startswith("StoreError: "), result
            assert f"object {result['key']!r} is {what}" in result[checker], result


# ------------------------------------------------------------------------ sizes


@pytest.mark.parametrize(("key", "size", "what"), [
    (CHUNK, 3 << 30, "shard"),  # sparse: no disk used
    ("manifest/label/c/0", 64 << 20, "unsharded chunk"),
    ("commit_map/c/1/0", 41, "commit row (exactly 40 bytes)"),
    ("commit_summary/c/0/0", 1 << 20, "commit summary"),
    ("records/crop/zarr.json", 8 << 20, "array metadata"),
    ("zarr.json", METADATA_BOUND + 1, "root metadata"),
])
def test_an_object_past_its_bound_is_refused_before_reading(store_dir: Path, key: str, size: int,
                                                            what: str) -> None:
    if key.startswith("commit_map/"):  # read by loaders only without the commit summary
        shutil.rmtree(store_dir / "commit_summary")
    os.truncate(store_dir / key, size)
    for message in _messages(str(store_dir)):
        assert re.search(rf"object {re.escape(repr(key))} holds {size} bytes, more than the \d+ "
                         "(its array's metadata allows|a metadata object may hold)", message), (
            what, message)


def test_bounds_follow_the_metadata(store_dir: Path) -> None:
    meta = json.loads((store_dir / "commit_map/zarr.json").read_text())
    assert array_chunk_bound(meta) == 8 * meta["chunk_grid"]["configuration"]["chunk_shape"][1]
    for name in ("records/crop", "topk/classes", "topk/prob_gaps", "manifest/path_bytes"):
        meta = json.loads((store_dir / name / "zarr.json").read_text())
        bound = array_chunk_bound(meta)
        assert bound is not None
        biggest = max(p.stat().st_size for p in (store_dir / name / "c").rglob("*")
                      if p.is_file())
        assert biggest <= bound < 64 * biggest + 64 * 1024, (name, biggest, bound)
    assert array_chunk_bound({"node_type": "group", "zarr_format": 3}) is None


def test_no_error_quotes_the_bytes_of_a_damaged_chunk(store_dir: Path) -> None:
    """zarr's checksum error quotes the stored checksum; the store's errors do not."""
    shard = store_dir / CHUNK
    data = bytearray(shard.read_bytes())
    data[-4:] = b"SECR"  # the shard index's checksum
    shard.write_bytes(bytes(data))
    problems = inspect_store(str(store_dir)).problems
    with pytest.raises(StoreError, match="corrupt") as raised:
        StoreReader(str(store_dir)).read_block(1)
    for message in [*problems, str(raised.value)]:
        assert not any(piece in message for piece in SECRET_PIECES), message
        assert "<4 bytes>" in message, message


# ------------------------------------------------------------------------ stores over HTTP


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A file server that honours single `Range: bytes=...` requests (answers 206)."""

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if wanted is None or not os.path.isfile(path):
            return super().send_head()
        data = Path(path).read_bytes()
        first, last = wanted.groups()
        if first:
            start, stop = int(first), min(int(last) + 1 if last else len(data), len(data))
        else:
            start, stop = max(len(data) - int(last), 0), len(data)
        if start >= len(data) or start >= stop:
            self.send_error(416)
            return None
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        return io.BytesIO(data[start:stop])


class _UnlistedHandler(_RangeHandler):
    """Honours `Range` but lists no folder (as a bucket behind a plain web server may)."""

    def list_directory(self, path):  # type: ignore[no-untyped-def]
        self.send_error(404)
        return None


class _PlainHandler(http.server.SimpleHTTPRequestHandler):
    """Python's own file server: it ignores `Range` and answers 200 with the whole file."""

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A store served over loopback HTTP three ways: {"local", "range", "unlisted",
    "plain"} -> its URL."""
    pytest.importorskip("aiohttp", reason="fsspec's http:// needs aiohttp (the test extra)")
    folder = tmp_path_factory.mktemp("served")
    write_store(str(folder / "s.zarr"), make_manifest(), make_config())
    urls, servers = {"local": str(folder / "s.zarr")}, []
    for name, handler in (("range", _RangeHandler), ("unlisted", _UnlistedHandler),
                          ("plain", _PlainHandler)):
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        urls[name] = f"http://127.0.0.1:{server.server_address[1]}/s.zarr"
    yield urls
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_store_over_http_reads_like_the_local_store(served: dict[str, str]) -> None:
    report = inspect_store(served["range"])
    assert report.problems == [] and report.complete
    local, remote = StoreReader(served["local"]).epoch(1), StoreReader(served["range"]).epoch(1)
    assert np.array_equal(local.records, remote.records)
    assert np.array_equal(local.targets.classes, remote.targets.classes)
    assert np.array_equal(local.targets.probs, remote.targets.probs)


def test_a_server_that_ignores_ranges_is_named(served: dict[str, str]) -> None:
    url = served["plain"]
    pattern = (rf"^{re.escape(url)}: the server ignored a byte-range request \(the last \d+ bytes "
               r"of '[^']+/c/\d+/0(/0)?', at most \d+ bytes\) and answered with \d+ bytes.*HTTP "
               "Range requests")
    with pytest.raises(StoreError, match=pattern):
        StoreReader(url).epoch(0)
    with pytest.raises(StoreError, match=pattern):
        inspect_store(url)


def test_a_server_that_lists_no_folders_is_named(served: dict[str, str]) -> None:
    url = served["unlisted"]
    pattern = (rf"^{re.escape(url)}: listing the folder '[^']+' gives nothing although its "
               "zarr.json exists: the server does not list folders")
    with pytest.raises(StoreError, match=pattern):
        StoreReader(url)
    with pytest.raises(StoreError, match=pattern):
        inspect_store(url)


def test_a_writer_never_writes_through_a_linked_folder(tmp_path: Path) -> None:
    """Resuming a store whose chunk folder was made a link outside: refused, nothing written."""
    manifest, config = make_manifest(), make_config()
    url = str(tmp_path / "store")
    writer = create_store(url, manifest, config)
    (tmp_path / "outside").mkdir()
    (tmp_path / "store/records/crop/c").symlink_to(tmp_path / "outside")
    with pytest.raises(StoreError, match=r"object 'records/crop/c/0/0/0' is reached through a "
                                         r"symbolic link .* outside the store\)"):
        writer.fill(producer(config, manifest))
    assert list((tmp_path / "outside").iterdir()) == []
