"""Progress bars for the long steps (teacher pass, training, evaluation, experiments).

One helper so every command behaves alike: a tqdm bar with rate and ETA on the terminal's
stderr, off when asked (`--no-progress`) and off by itself when stderr is not a terminal (a
log file, CI, a pipe), where commands print one line per epoch instead. Trade-off: the bar
is drawn by tqdm (a dependency already), not by a home-made printer.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

__all__ = ["progress_wanted", "progress_bar"]


class _Bar(tqdm):
    """tqdm that draws its final count before it closes (tqdm skips redraws closer together
    than `mininterval`, so a fast last step would otherwise never show as done)."""

    def close(self) -> None:
        if not self.disable and not getattr(self, "_closed_once", False):
            self._closed_once = True
            self.refresh()
        super().close()


def progress_wanted(requested: bool = True) -> bool:
    """Whether to draw bars: asked for, and stderr is a terminal."""
    stream = sys.stderr
    return bool(requested and stream is not None and hasattr(stream, "isatty")
                and stream.isatty())


def progress_bar(total: int | None, desc: str, enabled: bool, unit: str = "it",
                 **kwargs: Any) -> Any:
    """A tqdm bar (disabled unless `enabled`): rate and ETA, sized to the terminal."""
    return _Bar(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.05,
                disable=not enabled, leave=False, **kwargs)
