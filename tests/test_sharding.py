"""Row sharding of a cost matrix: interleaved rows, torchrun's environment, rank files and rank devices."""

from pathlib import Path

import pytest
import torch

from dpddpm.sharding import Shard, rank_path, shard_rows


def test_shard_rows_interleave():
    rows = [shard_rows(10, i, 3) for i in range(3)]
    assert sorted(sum(rows, [])) == list(range(1, 11))
    assert rows[1] == [1, 4, 7, 10]
    assert Shard(1, 3).rows(10) == rows[1] and Shard().rows(10) is None  # one shard: every row


def test_rank_path():
    assert rank_path("out/costs.npz", 3) == Path("out/costs.rank3.npz")
    assert rank_path("out/costs", 0) == Path("out/costs.rank0.npz")


def test_from_environ():
    assert Shard.from_environ({}) == Shard()
    assert Shard.from_environ({"RANK": "0"}) == Shard()  # WORLD_SIZE missing: not under torchrun
    shard = Shard.from_environ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (shard.index, shard.count, shard.from_env, shard.local_rank) == (1, 4, True, 1)
    assert shard.output("c.npz") == Path("c.rank1.npz")
    assert Shard(1, 4).output("c.npz") == Path("c.npz")  # explicit shards name their own files
    assert Shard.from_environ({"RANK": "0", "WORLD_SIZE": "1"}).output("c.npz") == Path("c.npz")


def test_rank_device():
    shard = Shard.from_environ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert shard.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert shard.device(torch.device("cuda:0")) == torch.device("cuda:0")  # an explicit index is kept
    assert shard.device(torch.device("cpu")) == torch.device("cpu")
    assert Shard(1, 2).device(torch.device("cuda")) == torch.device("cuda")


@pytest.mark.parametrize("index, count", [(2, 2), (-1, 2), (0, 0)])
def test_bad_shards_are_refused(index, count):
    with pytest.raises(ValueError, match="0 <= shard index < number of shards"):
        Shard(index, count)


def test_non_integer_environment_is_named():
    with pytest.raises(ValueError, match="RANK=.x."):
        Shard.from_environ({"RANK": "x", "WORLD_SIZE": "2"})
