"""torch.distributed plumbing for ``torchrun`` launches, and the seeded data order.

Why our own sampler instead of DistributedSampler: resuming mid-epoch must replay the
exact remainder of the interrupted epoch, so the order has to be a pure function of
(seed, epoch) and must be able to start at any batch. The sharding is the same as
DistributedSampler's (pad to a multiple of the world size, then take every
``world_size``-th index), so each rank sees ``ceil(n / world_size)`` samples.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistInfo", "setup_distributed", "cleanup_distributed", "resolve_device", "epoch_order",
           "ShardedEpochSampler", "broadcast_object", "all_gather_rows"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``auto``/None -> this rank's GPU when there is one, else the CPU."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op for one process.

    nccl on CUDA, gloo on the CPU, as the users' own torchrun scripts would choose.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_rows(rows: list[dict[str, Any]], dedupe: bool = True) -> list[dict[str, Any]]:
    """Every rank's per-image rows on every rank, in rank order (``rows`` itself outside torch.distributed).

    With ``dedupe``, only the first row of each ``name`` is kept: the sharded sampler pads
    the last batch with repeated images, which must count once in the metrics.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    shards: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, rows)
    gathered = [row for shard in shards for row in shard]
    if not dedupe:
        return gathered
    seen: set[str] = set()
    return [row for row in gathered if not (row["name"] in seen or seen.add(row["name"]))]


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (identity outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The permutation of ``range(n)`` used in ``epoch``: a pure function of (seed, epoch)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch), 0x7467]).permutation(n)


class ShardedEpochSampler(Sampler[int]):
    """This rank's indices of one epoch, optionally starting after ``skip`` samples.

    ``skip`` counts samples already consumed by this rank in the epoch (batches done x
    batch size), so a resumed run continues exactly where the interrupted one stopped.
    """

    def __init__(self, n: int, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, skip: int = 0, pad: bool = True) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty data set")
        self.n, self.seed, self.epoch = n, seed, epoch
        self.rank, self.world_size, self.shuffle, self.skip, self.pad = rank, world_size, shuffle, skip, pad

    def shard(self) -> np.ndarray:
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle)
        if self.world_size > 1:
            if self.pad:
                total = -(-self.n // self.world_size) * self.world_size
                order = np.concatenate([order, np.resize(order, total - self.n)]) if total > self.n else order
            order = order[self.rank::self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.skip:].tolist())

    def __len__(self) -> int:
        return max(0, len(self.shard()) - self.skip)
