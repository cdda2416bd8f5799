"""Where images come from: listing a user's tree or file list (`dataset`), the built-in
Fashion-MNIST from Debian's package (`fashion_mnist`), and real photographs cut into small
corpora for tests and benchmarks (`sample_data`)."""
