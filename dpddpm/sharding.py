"""Splitting a cost matrix's rows over several processes (GPUs), and naming their partial files.

A shard is the set of rows t in 1..T with ``t % count == index``: interleaved, so every shard gets rows from the
whole range of t and about the same work. Each shard is an ordinary ``dpddpm.cost_matrix(..., rows=...)`` run;
:func:`dpddpm.merge_costs` (``dpddpm merge`` on the files) combines the partial matrices, and refuses overlaps,
other data or other weights.

Under ``torchrun`` the shard comes from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), each rank
writes ``<out>.rank<k>.npz`` and runs on its own GPU, ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Shard:
    """One of ``count`` interleaved shards of the rows; ``from_env``: it was read from torchrun's environment."""

    index: int = 0
    count: int = 1
    from_env: bool = False
    local_rank: int | None = None

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"need 0 <= shard index < number of shards, got {self.index} of {self.count}")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Shard:
        """The torchrun rank (``RANK`` of ``WORLD_SIZE``, ``LOCAL_RANK``), or the single shard (0 of 1)."""
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        try:
            index, count = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env["LOCAL_RANK"]) if "LOCAL_RANK" in env else None
        except ValueError:
            raise ValueError(
                f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got RANK={env['RANK']!r}, "
                f"WORLD_SIZE={env['WORLD_SIZE']!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}"
            ) from None
        return cls(index, count, from_env=True, local_rank=local)

    def rows(self, T: int) -> list[int] | None:
        """This shard's rows of a matrix with T steps (None: all of them, for the single shard)."""
        return None if self.count == 1 else shard_rows(T, self.index, self.count)

    def output(self, out: str | os.PathLike) -> Path:
        """The file this shard writes: ``out`` itself, or under torchrun its rank file (see :func:`rank_path`)."""
        return rank_path(out, self.index) if self.from_env and self.count > 1 else Path(out)

    def device(self, device: torch.device) -> torch.device:
        """Under torchrun, a bare ``cuda`` means this rank's own GPU, ``cuda:LOCAL_RANK``."""
        if self.from_env and self.local_rank is not None and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device


def shard_rows(T: int, index: int, count: int) -> list[int]:
    """The rows t in 1..T with t % count == index (interleaved, so shards get similar work)."""
    return [t for t in range(1, T + 1) if t % count == index]


def rank_path(out: str | os.PathLike, rank: int) -> Path:
    """``costs.npz`` -> ``costs.rank<k>.npz``: the partial file of one torchrun rank."""
    out = Path(out)
    stem = out.name[:-4] if out.name.endswith(".npz") else out.name
    return out.with_name(f"{stem}.rank{rank}.npz")
