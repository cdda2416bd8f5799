"""Where images come from.

- `dataset`: listing a user's folder tree or file list into the order a store indexes.
- `path_list`, `node_cache`, `image_sizes`: the listing's compact path table, its node-local
  cache, and image sizes read from headers.
- `file_hash`: one SHA-256 of a file, for the manifest and the kept teachers.
- `fashion_mnist`: the built-in dataset from Debian's package; `sample_data`: real
  photographs cut into small corpora for tests and benchmarks.
"""
