"""The reinforcement store: a chunked Zarr v3 store of parameter records and teacher top-k."""

__all__: list[str] = []
