"""What ProbeRunner needs when several processes share a job (torch.distributed, as Accelerate sets it): each
process's shard of the data, and the few collectives.

Shards: with ``shard=True`` each process reads only its part of the data, so that every sample is decoded once in
the whole job. A DataLoader over a map-style dataset is rebuilt over a contiguous range of its (sequential or
:class:`~masc_probe.data.EpochSampler`) order, rank 0 first, so the union of the shards in rank order is the
loader's own order; a streamed Hugging Face dataset is split with ``datasets.distributed.split_dataset_by_node`` (by
shards when it has at least one per process); :class:`~masc_probe.data.TensorBatches` are sliced. Anything else
(a list of batches, another iterable) is read whole by every process, which keeps every world-size-th batch.
A loader prepared by Accelerate is already this process's shard and is read as it is.

With ``shard=False`` each process is meant to pass its own part. Before anything is read past the first batch, the
processes compare their data (its length and a digest of its first batch, one gather): when every process holds the
same whole data (a plain loader built alike in each, under ``torchrun`` or ``accelerate launch``), it is sharded as
with ``shard=True``, and one log line says so; when some processes' data overlap otherwise (the same first batch,
different lengths), the job fails at once with the hint, instead of after reading everything.

Every row keeps its sample index (the batch's ``index`` column, or, where the runner made the shards, its position
in the data), so that the reduction can count each sample once: Accelerate's ``even_batches`` completes the last
batches with samples from the start of the data, and those repeats are dropped (:func:`first_occurrences`).

The collectives run once at the end of a pass, never per batch: an all-reduce of additive statistics, a shared
folder for rows and fitted probes, and gathers of small results. With one process (or torch.distributed not
initialized) every function is a cheap no-op.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("masc_probe.runner")


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


# ---------------------------------------------------------------------------------------------------- data shards
Indexed = Iterator[tuple[Any, "np.ndarray | None"]]


def batch_index(batch: Any) -> np.ndarray | None:
    """The sample indices a batch carries (its ``index`` column, or the 4th element of a tuple), or None."""
    from masc_probe.data._batches import split_batch

    index = split_batch(batch).index
    if index is None:
        return None
    return torch.as_tensor(index).detach().to("cpu", torch.int64).reshape(-1).numpy()


def _batch_rows(batch: Any) -> int:
    from masc_probe.data._batches import split_batch

    return len(split_batch(batch).y)


def is_prepared(data: Any) -> bool:
    """Whether *data* is a loader Accelerate prepared (already this process's shard)."""
    return type(data).__module__.startswith("accelerate.")


def _span(n: int, w: World) -> range:
    """This rank's contiguous part of n items (sizes differ by at most one; rank 0 first)."""
    return range(n * w.rank // w.size, n * (w.rank + 1) // w.size)


def _loader_order(loader: Any) -> list[int] | None:
    """The sample order of a DataLoader over a map-style dataset, when it is the same in every process (sequential,
    or an :class:`~masc_probe.data.EpochSampler`); None for any other sampler (a random one differs per process)."""
    from torch.utils.data import SequentialSampler

    from masc_probe.data._batches import EpochSampler

    if getattr(loader, "batch_size", None) is None:  # a custom batch sampler
        return None
    sampler = loader.sampler
    if isinstance(sampler, SequentialSampler):
        return list(range(len(loader.dataset)))
    if isinstance(sampler, EpochSampler):
        return list(iter(sampler))
    return None


def _with_positions(loader: Iterable[Any], order: list[int], batch_size: int) -> Indexed:
    """Each batch of *loader* (which reads *order* in batches of *batch_size*) with its rows' sample indices."""
    for b, batch in enumerate(loader):
        carried = batch_index(batch)
        yield batch, carried if carried is not None else np.asarray(order[b * batch_size:(b + 1) * batch_size])


def _carried(data: Iterable[Any]) -> Indexed:
    for batch in data:
        yield batch, batch_index(batch)


def _every_nth(data: Iterable[Any], w: World) -> Indexed:
    """Every world-size-th batch of the whole data (read by every process), with global row positions."""
    offset = 0
    for i, batch in enumerate(data):
        n = _batch_rows(batch)
        if i % w.size == w.rank:
            carried = batch_index(batch)
            yield batch, carried if carried is not None else np.arange(offset, offset + n)
        offset += n


def local_batches(data: Iterable[Any], w: World, *, shard: bool) -> tuple[Indexed, int | None]:
    """The batches this process handles, each with its rows' sample indices (None where unknown), and their number.

    Args:
        data: The whole data (``shard=True``), or this process's part of it (``shard=False``, or a loader Accelerate
            prepared).
        w: This process's world.
        shard: Take this process's shard of *data* (see the module docstring).

    Returns:
        ``(iterator of (batch, indices or None), number of batches or None when unknown)``.
    """
    if not w.distributed:
        return _carried(data), _length(data)
    if shard and is_prepared(data):
        logger.info("the loader was prepared by Accelerate: it is this process's shard already, read as it is")
        shard = False
    elif not shard and not is_prepared(data):
        data, shard = _same_everywhere(data, w)
    if not shard:
        return _carried(data), _length(data)
    made = _shard(data, w)
    if made is not None:
        return made
    total = _length(data)
    logger.info("%s cannot be split without reading it: every process reads it whole and keeps every %d-th batch",
                type(data).__name__, w.size)
    return _every_nth(data, w), None if total is None else len(range(w.rank, total, w.size))


def _same_everywhere(data: Iterable[Any], w: World) -> tuple[Iterable[Any], bool]:
    """Whether every process was given the same whole data, decided from each one's length and first batch.

    Returns:
        ``(data, shard)``: the data to read (a one-shot iterator comes back with its first batch put in front) and
        True when every process holds the same data, which is then sharded as with ``shard=True``.

    Raises:
        InputError: Some processes hold data that starts with the same batch but is not the same (its length
            differs, or only some of them share it): their parts overlap.
    """
    from masc_probe.errors import InputError

    n = _length(data)
    batches = iter(data)
    first = next(batches, None)
    if batches is data:  # a one-shot iterator: what was read for the look must still be read
        data = itertools.chain(() if first is None else (first,), batches)
    seen = all_gather_objects(w, (n, None if first is None else _batch_digest(first)))
    firsts = [digest for _, digest in seen]
    if firsts[0] is not None and len(set(seen)) == 1:
        logger.info("every process was given the same whole data (%s batches): each reads only its part, as with "
                    "shard=True", seen[0][0] if seen[0][0] is not None else "an unknown number of")
        return data, True
    shared = [r for r, digest in enumerate(firsts) if digest is not None and firsts.count(digest) > 1]
    if shared:
        raise InputError(f"processes {shared} were given data that starts with the same batch but is not the same "
                         f"whole data (lengths {[n for n, _ in seen]}): their parts overlap; pass each process a "
                         "disjoint part of the data, or every process the same whole data (shard=True)")
    return data, False


def _batch_digest(batch: Any) -> str:
    """A digest of a batch's inputs, labels and indices (where it carries them)."""
    from masc_probe.data._batches import split_batch

    h = hashlib.blake2b(digest_size=16)
    for part in split_batch(batch):
        if isinstance(part, torch.Tensor):
            part = part.detach().to("cpu").contiguous().numpy()
        h.update(np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    return h.hexdigest()


def _length(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def _shard(data: Any, w: World) -> tuple[Indexed, int | None] | None:
    """This process's shard of *data*, read without touching the other shards; None where that is not possible."""
    from torch.utils.data import DataLoader, IterableDataset

    from masc_probe.data._batches import TensorBatches

    if isinstance(data, TensorBatches):
        if data.shuffle_seed is not None:
            return None
        part = _span(data.num_samples, w)
        sliced = TensorBatches(data.x[part.start:part.stop], data.y[part.start:part.stop],
                               None if data.y_true is None else data.y_true[part.start:part.stop],
                               data.index[part.start:part.stop], batch_size=data.batch_size)
        return _carried(sliced), len(sliced)
    if not isinstance(data, DataLoader):
        return None
    kwargs = {"batch_size": data.batch_size, "collate_fn": data.collate_fn, "num_workers": data.num_workers,
              "pin_memory": data.pin_memory}
    if data.num_workers:
        kwargs.update(worker_init_fn=data.worker_init_fn, multiprocessing_context=data.multiprocessing_context,
                      persistent_workers=data.persistent_workers, prefetch_factor=data.prefetch_factor)
    dataset = data.dataset
    if isinstance(dataset, IterableDataset) or _is_hf_iterable(dataset):
        if not _is_hf_iterable(dataset) or data.batch_size is None:
            return None
        from datasets.distributed import split_dataset_by_node

        # By whole shards when there is at least one per process (each process then decodes only its own); else
        # example by example, which reads (and decodes) every example in every process.
        strategy = "shards" if dataset.num_shards >= w.size else "examples"
        if strategy == "examples":
            logger.info("the streamed dataset has %d shards for %d processes: split example by example, so every "
                        "process still decodes every example", dataset.num_shards, w.size)
        part = split_dataset_by_node(dataset, rank=w.rank, world_size=w.size, strategy=strategy)
        return _carried(DataLoader(part, **kwargs)), None
    order = _loader_order(data)
    if order is None:
        return None
    mine = [order[i] for i in _span(len(order), w)]
    loader = DataLoader(dataset, sampler=mine, drop_last=data.drop_last, **kwargs)
    return _with_positions(loader, mine, data.batch_size), len(loader)


def _is_hf_iterable(data: Any) -> bool:
    if not type(data).__module__.startswith("datasets."):
        return False
    from datasets import IterableDataset as HFIterable

    return isinstance(data, HFIterable)


def first_occurrences(w: World, indices: np.ndarray) -> np.ndarray:
    """Which of this process's rows are the first occurrence of their sample index in the whole job (bool mask).

    The order is rank by rank, each process's rows in the order it read them; later repeats (Accelerate's
    ``even_batches`` padding, a sample in two shards) are False. One gather of the index arrays.
    """
    parts = all_gather_objects(w, np.asarray(indices, dtype=np.int64))
    everything = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    first = np.zeros(len(everything), dtype=bool)
    first[np.unique(everything, return_index=True)[1]] = True
    start = sum(len(p) for p in parts[:w.rank])
    return first[start:start + len(indices)]
