"""Reading the contract's batch forms, and building seeded loaders over whatever data a caller hands in.

Batches are dicts ``{"image" | "pixel_values" | "x": (B, C, H, W), "label": (B,), "true_label": (B,), "index": (B,)}``
or tuples ``(x, y)`` / ``(x, y, y_true)`` / ``(x, y, y_true, index)``; ``y`` is the given (possibly corrupted) label.

Data whose batches are the same every epoch (:func:`fixed_bytes`) can be decoded once into :class:`TensorBatches`
and batched by index, which takes the same steps as a DataLoader over it without decoding every epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler, TensorDataset, default_collate

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
    got = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
    raise InputError(f"expected a batch dict or an (x, y[, y_true[, index]]) tuple, got {got}")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The random order of *n* samples in *epoch*: a function of ``(seed, epoch)`` only."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


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
        return iter(epoch_order(self.n, self.seed, self.epoch).tolist())


class TensorBatches:
    """Data held as tensors (on the CPU or on a device) and batched by index: no DataLoader, no per-epoch decoding.

    With ``shuffle_seed`` the order of each epoch is :func:`epoch_order`, the same order :class:`EpochSampler` gives
    a DataLoader, so training on a ``TensorBatches`` takes exactly the steps that training on its dataset takes.
    Batches are dicts ``{"image", "label", "true_label", "index"}`` (``true_label`` only when known).

    >>> data = TensorBatches(torch.zeros(10, 1, 2, 2), torch.arange(10) % 2, batch_size=4)
    >>> [len(b["label"]) for b in data]
    [4, 4, 2]
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, y_true: torch.Tensor | None = None,
                 index: torch.Tensor | None = None, *, batch_size: int = 256,
                 shuffle_seed: int | None = None) -> None:  # fmt: skip
        n = len(x)
        if n < 1:
            raise InputError("expected at least one sample, got none")
        for name, t in (("labels", y), ("true labels", y_true), ("indices", index)):
            if t is not None and len(t) != n:
                raise InputError(f"expected {n} {name} (one per input), got {len(t)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"expected batch_size to be an int >= 1, got {batch_size!r}")
        self.x, self.y, self.y_true = x, y, y_true
        self.index = index if index is not None else torch.arange(n, device=x.device)
        self.batch_size, self.shuffle_seed, self.epoch = batch_size, shuffle_seed, 0

    @classmethod
    def from_data(cls, data: Any, *, batch_size: int = 256, device: Any = None, chunk: int = 2048) -> TensorBatches:
        """Decode *data* (a dataset, a DataLoader or batches in the contract's forms) once into tensors."""
        loader, _, _ = make_loader(data, batch_size=chunk, strict=False)
        parts = [split_batch(b) for b in loader]
        if not parts:
            raise InputError("expected at least one batch of data, got none")

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            if any(v is None for v in values):
                return None
            return torch.cat([torch.as_tensor(v) for v in values]).to(device)

        return cls(cat("x"), cat("y"), cat("y_true"), cat("index"), batch_size=batch_size)

    def with_batches(self, batch_size: int, shuffle_seed: int | None = None) -> TensorBatches:
        """The same tensors (not copied), batched by *batch_size*, in a seeded order when *shuffle_seed* is given."""
        return TensorBatches(self.x, self.y, self.y_true, self.index, batch_size=batch_size, shuffle_seed=shuffle_seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.x)
        order = None if self.shuffle_seed is None else epoch_order(n, self.shuffle_seed, self.epoch)
        for start in range(0, n, self.batch_size):
            if order is None:
                pick: Any = slice(start, start + self.batch_size)
            else:
                pick = order[start:start + self.batch_size].to(self.x.device)
            batch = {"image": self.x[pick], "label": self.y[pick], "index": self.index[pick]}
            if self.y_true is not None:
                batch["true_label"] = self.y_true[pick]
            yield batch


def make_loader(
    data: Any, *, batch_size: int, shuffle_seed: int | None = None, name: str = "data", strict: bool = True
) -> tuple[Iterable[Any], EpochSampler | TensorBatches | None, int | None]:
    """Wrap *data* in a DataLoader with *batch_size* and (when *shuffle_seed* is given) a seeded epoch order.

    A DataLoader over a map-style dataset is rebuilt over the same dataset (keeping its collate function and
    workers); a map-style dataset (torch ``Dataset``, ``datasets.Dataset``) gets a new loader; an iterable dataset
    gets a loader without shuffling; any other iterable of batches is used as it is.

    Returns:
        ``(loader, sampler or None, number of samples or None when unknown)``.

    Raises:
        InputError: The batch size is larger than the data (when *strict*; evaluation passes take what there is).
    """
    if isinstance(data, TensorBatches):
        if strict and batch_size > data.num_samples:
            raise InputError(f"batch_size={batch_size} is larger than the {name} ({data.num_samples} samples)")
        batches = data.with_batches(batch_size, shuffle_seed)
        return batches, batches if shuffle_seed is not None else None, data.num_samples
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
        if isinstance(data, (list, tuple)):  # batches in memory: counting their labels costs nothing
            return data, None, sum(len(split_batch(b).y) for b in data) or None
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


def fixed_bytes(data: Any) -> int | None:
    """The bytes *data* takes decoded into tensors, when its batches are known to be the same every epoch; else None.

    Known to be fixed: a list or tuple of batches of one size (the last may be smaller), a ``TensorDataset``, a
    ``datasets.Dataset`` as :func:`~masc_probe.data.load_data` returns it (its preprocessing draws nothing at random)
    or in a torch/numpy format, and a DataLoader over one of those datasets with the default collate function. Any
    other dataset may draw at random when an item is read (augmentations), so it is not known to be fixed.

    >>> fixed_bytes([(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))] * 2)
    160
    >>> fixed_bytes([(torch.zeros(2, 3), torch.zeros(2)), (torch.zeros(4, 3), torch.zeros(4))]) is None
    True
    """
    if isinstance(data, (list, tuple)):
        sizes = [len(split_batch(b).y) for b in data]
        if not sizes or any(s != sizes[0] for s in sizes[:-1]) or sizes[-1] > sizes[0]:
            return None
        return sum(_nbytes(b) for b in data)
    dataset = data
    if isinstance(data, DataLoader):
        if data.collate_fn is not default_collate:
            return None
        dataset = data.dataset
    if not _fixed_dataset(dataset) or len(dataset) < 1:
        return None
    return _nbytes(dataset[0]) * len(dataset)


def _fixed_dataset(dataset: Any) -> bool:
    """Whether reading an item of *dataset* gives the same values every time (see :func:`fixed_bytes`)."""
    if type(dataset) is TensorDataset:  # a subclass may read its items otherwise
        return True
    if not type(dataset).__module__.startswith("datasets.") or _is_iterable_dataset(dataset):
        return False
    from masc_probe.data._preprocess import BatchTransform

    fmt = dataset.format
    if fmt["type"] == "custom":
        return isinstance(fmt["format_kwargs"].get("transform"), BatchTransform)
    return fmt["type"] in ("torch", "numpy")


def _nbytes(item: Any) -> int:
    """The bytes of the tensors and arrays in one batch or item (a dict, tuple or list of them)."""
    values = item.values() if isinstance(item, Mapping) else item if isinstance(item, (tuple, list)) else [item]
    return sum(int(torch.as_tensor(v).nbytes) for v in values if hasattr(v, "shape"))


def _is_iterable_dataset(data: Any) -> bool:
    if isinstance(data, IterableDataset):
        return True
    if not type(data).__module__.startswith("datasets."):  # spare importing datasets for data that is not its
        return False
    from datasets import IterableDataset as HFIterable

    return isinstance(data, HFIterable)
