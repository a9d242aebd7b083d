"""Reading the contract's batch forms, and building seeded loaders over whatever data a caller hands in.

Batches are dicts ``{"image" | "pixel_values" | "x": (B, C, H, W), "label": (B,), "true_label": (B,), "index": (B,)}``
or tuples ``(x, y)`` / ``(x, y, y_true)`` / ``(x, y, y_true, index)``; ``y`` is the given (possibly corrupted) label.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

from masc_probe.errors import InputError

_IMAGE_KEYS = ("image", "pixel_values", "x")


class Batch(NamedTuple):
    """One batch, split: inputs, given labels, true labels (or None) and sample indices (or None)."""

    x: torch.Tensor
    y: torch.Tensor
    y_true: torch.Tensor | None
    index: torch.Tensor | None


def split_batch(batch: Any) -> Batch:
    """Split a batch in any of the contract's forms.

    Raises:
        InputError: The batch is of no known form.
    """
    if isinstance(batch, Mapping):
        key = next((k for k in _IMAGE_KEYS if k in batch), None)
        if key is None or "label" not in batch:
            raise InputError(f"expected a batch dict with an image key {_IMAGE_KEYS} and 'label', got {sorted(batch)}")
        return Batch(batch[key], batch["label"], batch.get("true_label"), batch.get("index"))
    if isinstance(batch, (tuple, list)) and 2 <= len(batch) <= 4:
        parts = list(batch) + [None] * (4 - len(batch))
        return Batch(parts[0], parts[1], parts[2], parts[3])
    raise InputError(f"expected a batch dict or an (x, y[, y_true[, index]]) tuple, got {type(batch).__name__}")


class EpochSampler(Sampler[int]):
    """A random order that depends only on ``seed`` and the epoch set with :meth:`set_epoch`.

    Every process draws the same order (the sharding is done after it), and a resumed run redraws exactly the
    order the interrupted one would have used.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def make_loader(
    data: Any, *, batch_size: int, shuffle_seed: int | None = None, name: str = "data", strict: bool = True
) -> tuple[Iterable[Any], EpochSampler | None, int | None]:
    """Wrap *data* in a DataLoader with *batch_size* and (when *shuffle_seed* is given) a seeded epoch order.

    A DataLoader over a map-style dataset is rebuilt over the same dataset (keeping its collate function and
    workers); a map-style dataset (torch ``Dataset``, ``datasets.Dataset``) gets a new loader; an iterable dataset
    gets a loader without shuffling; any other iterable of batches is used as it is.

    Returns:
        ``(loader, sampler or None, number of samples or None when unknown)``.

    Raises:
        InputError: The batch size is larger than the data (when *strict*; evaluation passes take what there is).
    """
    kwargs: dict[str, Any] = {}
    dataset = data
    if isinstance(data, DataLoader):
        dataset = data.dataset
        kwargs = {"collate_fn": data.collate_fn, "num_workers": data.num_workers, "pin_memory": data.pin_memory}
        if isinstance(dataset, IterableDataset):
            return data, None, None
    elif _is_iterable_dataset(data):
        return DataLoader(data, batch_size=batch_size), None, None
    elif not (hasattr(data, "__getitem__") and hasattr(data, "__len__")) or isinstance(data, (list, tuple)):
        if isinstance(data, Iterable):
            return data, None, None
        raise InputError(f"expected {name} as a DataLoader, a dataset or an iterable of batches, got {type(data)}")
    n = len(dataset)
    if n < 1:
        raise InputError(f"expected {name} with at least one sample, got none")
    if strict and batch_size > n:
        raise InputError(f"batch_size={batch_size} is larger than the {name} ({n} samples)")
    sampler = EpochSampler(n, shuffle_seed) if shuffle_seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs), sampler, n


def _is_iterable_dataset(data: Any) -> bool:
    if isinstance(data, IterableDataset):
        return True
    if not type(data).__module__.startswith("datasets."):  # spare importing datasets for data that is not its
        return False
    from datasets import IterableDataset as HFIterable

    return isinstance(data, HFIterable)
