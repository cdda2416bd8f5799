"""Real servers on 127.0.0.1 for the remote-shard tests: an HTTP file server that honours Range
(with knobs for latency, a Range-ignoring mode and transient 503s) and moto's S3 server.

Both bind port 0 (a free port), serve from threads, and stop when their context ends; nothing
listens beyond 127.0.0.1. The S3 context sets fake credentials and the endpoint through the
environment (`AWS_*`, as a user of an S3-compatible store would) and restores them after.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.server
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["RangeServer", "serve_http", "serve_s3", "silent_port", "closed_port"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves files of `root`; the knobs are read by every request."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = Path(root)
        self.latency_s = 0.0  # added before every answer
        self.ignore_range = False  # answer 200 with the whole file, as a plain server does
        self.fail_next = 0  # the next this-many GETs are answered 503
        self.gets = 0
        self.heads = 0
        self.ranges: list[tuple[str, int, int]] = []  # (path, start, stop) of each range GET
        self.lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up early (fsspec refusing a whole-object answer) is no error.
        pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RangeServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass

    def _file(self) -> Path | None:
        name = self.path.split("?", 1)[0].lstrip("/")
        path = (self.server.root / name).resolve()
        if self.server.root.resolve() not in path.parents or not path.is_file():
            return None
        return path

    def _headers(self, status: int, length: int, path: Path | None,
                 extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Type", "application/x-tar")
        if path is not None:
            st = path.stat()
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            self.send_header("ETag", f'"{st.st_size:x}-{st.st_mtime_ns:x}"')
            if not self.server.ignore_range:
                self.send_header("Accept-Ranges", "bytes")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        time.sleep(self.server.latency_s)
        with self.server.lock:
            self.server.heads += 1
        path = self._file()
        if path is None:
            self._headers(404, 0, None)
            return
        self._headers(200, path.stat().st_size, path)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        time.sleep(self.server.latency_s)
        with self.server.lock:
            self.server.gets += 1
            fail = self.server.fail_next > 0
            if fail:
                self.server.fail_next -= 1
        if fail:
            self._headers(503, 0, None, {"Retry-After": "0"})
            return
        path = self._file()
        if path is None:
            self._headers(404, 0, None)
            return
        data = path.read_bytes()
        wanted = _RANGE.fullmatch(self.headers.get("Range", "").strip())
        if wanted is None or self.server.ignore_range:
            self._headers(200, len(data), path)
            self.wfile.write(data)
            return
        first, last = wanted.groups()
        if first == "":
            start, stop = max(0, len(data) - int(last or 0)), len(data)
        else:
            start = int(first)
            stop = min(len(data), int(last) + 1) if last else len(data)
        if start >= len(data):
            self._headers(416, 0, path, {"Content-Range": f"bytes */{len(data)}"})
            return
        with self.server.lock:
            self.server.ranges.append((path.name, start, stop))
        self._headers(206, stop - start, path,
                      {"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"})
        self.wfile.write(data[start:stop])


@contextlib.contextmanager
def serve_http(root: Path) -> Iterator[RangeServer]:
    """An HTTP server for the files of `root` on 127.0.0.1, stopped on exit."""
    server = RangeServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def _moto(latency_s: float) -> Iterator[str]:
    """moto's S3 server in this process (its endpoint URL)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    if latency_s > 0:
        wsgi = server._server  # the werkzeug server, whose handler calls `.app` per request
        assert wsgi is not None
        wsgi.app = _delayed(wsgi.app, latency_s)  # type: ignore[method-assign]
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def _moto_process(latency_s: float) -> Iterator[str]:
    """moto's S3 server in a child process (`python -m tests.remote_servers`), so that its
    per-request CPU does not hold this process's GIL; stopped when its stdin closes."""
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-m", "tests.remote_servers", str(latency_s)],
                             cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"the moto server process did not start (said {line!r})")
        yield f"http://127.0.0.1:{line}"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@contextlib.contextmanager
def serve_s3(latency_s: float = 0.0, own_process: bool = False) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with fake credentials in the environment; yields its
    endpoint URL. `latency_s` is added before every answer (the benchmark's object-store
    latency); `own_process` runs it in a child process (for timings). s3fs's cached file
    systems are dropped before and after."""
    from s3fs import S3FileSystem

    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
             "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
             "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
    saved = {name: os.environ.get(name) for name in names}
    with (_moto_process if own_process else _moto)(latency_s) as endpoint:
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                           "AWS_CONFIG_FILE": os.devnull,
                           "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
        for name in ("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            os.environ.pop(name, None)
        S3FileSystem.clear_instance_cache()
        try:
            yield endpoint
        finally:
            S3FileSystem.clear_instance_cache()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _delayed(app: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    def answer(environ: Any, start_response: Any) -> Any:
        time.sleep(seconds)
        return app(environ, start_response)

    return answer


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connections are refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


if __name__ == "__main__":  # `python -m tests.remote_servers LATENCY_S`: see `_moto_process`
    with _moto(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0) as url:
        print(url.rsplit(":", 1)[1], flush=True)
        sys.stdin.read()  # until the parent closes it
