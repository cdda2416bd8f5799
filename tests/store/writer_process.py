"""A teacher-pass process for the kill-and-resume tests: `python -m tests.store.writer_process`.

It fills the pending blocks of an existing store (made by `helpers.make_config` and
`helpers.make_manifest`). With `--stall-after N` it prints STALLED and sleeps forever right after
its N-th data-shard write, i.e. in the middle of a block, for the test to SIGKILL it there.
"""

from __future__ import annotations

import argparse
import sys
import time

import zarr

from store.writer import StoreWriter
from tests.store.helpers import make_config, make_manifest, producer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--stall-after", type=int, default=0)
    args = parser.parse_args()
    if args.stall_after:
        writes = 0
        original = zarr.Array.__setitem__

        def counting(self, selection, value):  # type: ignore[no-untyped-def]
            nonlocal writes
            original(self, selection, value)
            if not self.path.startswith("commit"):
                writes += 1
                if writes == args.stall_after:
                    print("STALLED", flush=True)
                    time.sleep(3600)

        zarr.Array.__setitem__ = counting  # type: ignore[method-assign]
    writer = StoreWriter(args.url)
    written = writer.fill(producer(make_config(), make_manifest()), args.worker, args.workers)
    print("WROTE", " ".join(map(str, written)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
