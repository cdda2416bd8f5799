"""Custom GPU kernels (Triton), each with a pure-torch reference that is also the CPU path."""

__all__: list[str] = []
