"""Where images come from.

- `dataset`: listing a user's folder tree, file list or tar shards into the order a store
  indexes.
- `data_source`: reading a sample's bytes by index (a file, or a shard member's byte range):
  the one path every pass reads data through.
- `shards`: webdataset tar shards named, indexed from their headers (or a wds2idx index),
  checked and cached (`index_workers`: many local shards indexed in worker processes); `pack`:
  `dalidr pack`, a dataset written as such shards.
- `remote_shards`: shards named by fsspec URLs (`s3://`, `http(s)://`, ...), read through
  `byte_ranges`: coalesced byte-range requests kept in flight, retried, failures named
  (`range_requests`: the ranges asked, their coalescing, the reader's options and counters).
- `path_list`, `node_cache`, `image_sizes`: the listing's compact path table, its node-local
  cache, and image sizes read from headers.
- `file_hash`: one SHA-256 of a file, for the manifest and the kept teachers.
- `fashion_mnist`: the built-in dataset from Debian's package; `sample_data`: real
  photographs cut into small corpora for tests and benchmarks.
"""
