"""The few collectives ProbeRunner needs when several processes share a job (torch.distributed, as Accelerate sets it).

Each process streams its own shard; the collectives below run once at the end of a pass, never per batch:
an all-reduce of additive statistics, a shared folder for rows and fitted probes, and gathers of small results.
With one process (or torch.distributed not initialized) every function is a cheap no-op.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a job."""

    rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n_jobs: int) -> list[int]:
        """Indices of the jobs 0..n_jobs-1 this rank does (round robin, so each rank gets a similar share)."""
        return list(range(self.rank, n_jobs, self.size))

    def owner(self, job: int) -> int:
        return job % self.size


def world() -> World:
    """The current job's world: torch.distributed's when it is initialized, else a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size())
    return World()


def barrier(w: World) -> None:
    if w.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(w: World, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum each tensor over every process (exact for integer-valued and float64 sums of the same shapes).

    Gloo reduces CPU tensors; a CUDA tensor under NCCL is reduced where it lives.
    """
    if not w.distributed:
        return tensors
    import torch.distributed as dist

    out = {}
    for name in sorted(tensors):  # the same order on every rank
        t = tensors[name].contiguous().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out[name] = t
    return out


def reduce_sum(w: World, tensors: dict[str, torch.Tensor], *, dst: int) -> dict[str, torch.Tensor]:
    """Sum each tensor over every process into rank *dst* (other ranks get their partial values back)."""
    if not w.distributed:
        return tensors
    import torch.distributed as dist

    out = {}
    for name in sorted(tensors):  # the same order on every rank
        t = tensors[name].contiguous().clone()
        dist.reduce(t, dst=dst, op=dist.ReduceOp.SUM)
        out[name] = t
    return out


def all_gather_objects(w: World, obj: Any) -> list[Any]:
    """Every rank's *obj* (small, JSON-like), in rank order."""
    if not w.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(w: World, obj: Any) -> Any:
    """Rank 0's *obj* on every rank."""
    if not w.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shared_tempdir(w: World, parent: str | Path | None, prefix: str) -> Path:
    """A fresh folder made by rank 0 under *parent* and known to every rank.

    Every rank must see *parent* (one machine, or a shared file system); the system temp folder serves processes of
    one machine.
    """
    path = None
    if w.main:
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    path = broadcast_object(w, path)
    return Path(path)
