"""`python -m dalidr ...`: the same command line as the `dalidr` console script."""

from __future__ import annotations

import sys

from dalidr.cli import main

if __name__ == "__main__":
    sys.exit(main())
