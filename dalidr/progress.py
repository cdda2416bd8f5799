"""Progress bars for the long steps (teacher pass, training, evaluation, experiments).

One helper so every command behaves alike: a tqdm bar with rate and ETA on the terminal's
stderr, off when asked (`--no-progress`) and off by itself when stderr is not a terminal (a
log file, CI, a pipe), where commands print one line per epoch instead. Trade-off: the bar
is drawn by tqdm (a dependency already), not by a home-made printer.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_wanted", "progress_bar"]


def progress_wanted(requested: bool = True) -> bool:
    """Whether to draw bars: asked for, and stderr is a terminal."""
    stream = sys.stderr
    return bool(requested and stream is not None and hasattr(stream, "isatty")
                and stream.isatty())


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str = "it",
                 **kwargs: Any) -> Any:
    """A tqdm bar (disabled unless `enabled`): rate and ETA, sized to the terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.05,
                disable=not enabled, leave=False, **kwargs)
