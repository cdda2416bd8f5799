"""`dalidr.ranks`: explicit arguments, then the process group, then torchrun's variables.

A process that cannot tell its rank must say so, never fall back to (0, 1) while a launcher set
half a world: that is how every rank silently served the whole dataset. The loaders' use of it
(shards from the environment, DROP without duplicates) is tested in tests/test_loader.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

from dalidr.errors import OptionError
from dalidr.ranks import local_rank, rank_and_world


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_without_a_launcher_a_process_is_alone() -> None:
    assert rank_and_world() == (0, 1)
    assert local_rank() == 0


def test_torchrun_variables_give_rank_and_world(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_and_world() == (3, 4)
    assert local_rank() == 1
    assert rank_and_world(rank=0) == (0, 4)  # explicit arguments win
    assert rank_and_world(1, 2) == (1, 2)


@pytest.mark.parametrize(("env", "match"), [
    ({"RANK": "1"}, "WORLD_SIZE is not set but RANK is"),
    ({"WORLD_SIZE": "2"}, "RANK is not set but WORLD_SIZE is"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2, WORLD_SIZE=2: need"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE >= 1"),
    ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK is 'one'; valid: an integer"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, r"RANK=-1, WORLD_SIZE=2"),
])
def test_inconsistent_variables_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                            match: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(OptionError, match=match):
        rank_and_world()


def test_explicit_arguments_out_of_range_are_refused() -> None:
    with pytest.raises(OptionError, match="rank 2 of world size 2"):
        rank_and_world(2, 2)
    with pytest.raises(OptionError, match="rank 0 of world size 0"):
        rank_and_world(0, 0)


def test_bad_local_rank_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "-2")
    with pytest.raises(OptionError, match="LOCAL_RANK is -2"):
        local_rank()
    monkeypatch.setenv("LOCAL_RANK", "gpu0")
    with pytest.raises(OptionError, match="LOCAL_RANK is 'gpu0'"):
        local_rank()


def test_the_process_group_wins_and_must_agree_with_the_variables(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1)
    try:
        assert rank_and_world() == (0, 1)
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("WORLD_SIZE", "1")
        assert rank_and_world() == (0, 1)
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(OptionError, match="contradict the process group"):
            rank_and_world()
    finally:
        dist.destroy_process_group()
