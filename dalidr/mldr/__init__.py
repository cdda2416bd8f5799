"""Interop with the paper's published reinforcements (apple/ml-dr: ImageNet+, CIFAR-100+, ...).

`dalidr import-mldr RDATA_DIR --images ROOT --out STORE` converts a directory of the paper's
per-sample pickles into a dalidr store that `ReinforcedLoader` serves; no teacher is re-run.
- `safe_load`: the files are loaded by a restricted unpickler; downloaded data never runs code.
- `source`: the paper's layout and config, and the dalidr recipe that replays its views.
- `params`: one view's parameters -> one record (crops, magnitudes, erase, MixUp/CutMix).
- `convert`: files -> blocks -> the store; parallel, resumable, verified; the CLI command.
"""

from __future__ import annotations

from dalidr.mldr.convert import ImportConfig, ImportReport, import_mldr, register
from dalidr.mldr.params import ParsedViews, convert_block, magnitude_bins, parse_view
from dalidr.mldr.safe_load import load_file
from dalidr.mldr.source import MldrSource, read_source

__all__ = ["ImportConfig", "ImportReport", "import_mldr", "register", "load_file",
           "MldrSource", "read_source", "ParsedViews", "parse_view", "magnitude_bins",
           "convert_block"]
