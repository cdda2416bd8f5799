"""Which rank of how many this process is, and which GPU it owns: one answer for every pass.

The teacher pass (`dalidr reinforce`) and the training loaders shard their work by (rank,
world). Explicit arguments win; then an initialised `torch.distributed` process group; then the
RANK / WORLD_SIZE variables a launcher such as `torchrun` sets (so a loader made before
`init_process_group` already serves its own shard); then (0, 1) for a single process.
Variables that are malformed, half set, out of range or that contradict the process group are
refused: a rank that guesses would silently serve the whole dataset, or someone else's shard.
LOCAL_RANK picks the process's GPU on its node (`local_cuda_index`). Trade-off: every launcher
that sets these variables is trusted as torchrun is; one that sets none gets (0, 1).
"""

from __future__ import annotations

import os

import torch

from dalidr.errors import OptionError

__all__ = ["rank_and_world", "local_rank", "local_cuda_index"]


def _env_int(name: str) -> int | None:
    """The integer in environment variable `name`, None when unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"environment variable {name} is {value!r}; valid: an integer (as "
                          "torchrun sets it)") from None


def _env_rank_world() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) from the environment, None when neither is set."""
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if rank is None and world is None:
        return None
    if rank is None or world is None:
        missing = "RANK" if rank is None else "WORLD_SIZE"
        raise OptionError(f"environment variable {missing} is not set but "
                          f"{'WORLD_SIZE' if rank is None else 'RANK'} is; set both (torchrun "
                          "does) or neither, or pass rank= and world= explicitly")
    if world < 1 or not 0 <= rank < world:
        raise OptionError(f"environment variables RANK={rank}, WORLD_SIZE={world}: need "
                          "WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    return rank, world


def rank_and_world(rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """(rank, world size): each given one, else torch.distributed's when a process group is
    initialised, else RANK / WORLD_SIZE from the environment, else (0, 1). OptionError when
    the result is out of range or the environment contradicts the process group."""
    dist = torch.distributed
    env = _env_rank_world()
    if dist.is_available() and dist.is_initialized():
        found = dist.get_rank(), dist.get_world_size()
        if env is not None and env != found:
            raise OptionError(f"environment variables RANK={env[0]}, WORLD_SIZE={env[1]} "
                              f"contradict the process group (rank {found[0]} of {found[1]}); "
                              "fix the launcher or pass rank= and world= explicitly")
    else:
        found = env if env is not None else (0, 1)
    rank = found[0] if rank is None else rank
    world = found[1] if world is None else world
    if world < 1 or not 0 <= rank < world:
        raise OptionError(f"rank {rank} of world size {world}: need world >= 1 and "
                          "0 <= rank < world")
    return rank, world


def local_rank() -> int:
    """This process's index on its node: LOCAL_RANK (set by torchrun), else 0."""
    local = _env_int("LOCAL_RANK")
    if local is not None and local < 0:
        raise OptionError(f"environment variable LOCAL_RANK is {local}; valid: >= 0")
    return 0 if local is None else local


def local_cuda_index() -> int | None:
    """The CUDA device this process owns (LOCAL_RANK modulo the visible GPUs), or None
    without CUDA: `LoaderConfig(device_id=local_cuda_index())` under torchrun."""
    if not torch.cuda.is_available():
        return None
    return local_rank() % max(torch.cuda.device_count(), 1)
