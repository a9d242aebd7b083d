"""The data a training run reads: the steps' batches in the protocol's order, the loaders of the passes without a
step (the evaluation pass, the stop rule's pass, the test pass), and where the data is held.

Data whose batches are the same every epoch (:func:`~masc_probe.data._batches.fixed_bytes`: a list of batches, a
``TensorDataset``, :func:`~masc_probe.data.load_data`'s datasets, a DataLoader over one of those) is decoded once
into :class:`~masc_probe.data.TensorBatches` when it takes at most :data:`HOLD_MAX_BYTES`, instead of being decoded
and collated again every epoch. The steps do not change: a dataset is batched in the same seeded order
(:func:`~masc_probe.data._batches.epoch_order`, which the DataLoader's sampler also follows) and a list keeps its
own batches in its own order. What can change is the global random stream of a network that draws from it
(dropout): a DataLoader's pass draws one number, batches held as tensors draw none. Other data is read through a
DataLoader every epoch, as its dataset may draw at random when an item is read (augmentations).

On a CUDA device, tensor data that fits in a quarter of its memory is moved there once, larger tensor data is
pinned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from masc_probe.data._batches import EpochSampler, TensorBatches, fixed_bytes, make_loader, split_batch
from masc_probe.errors import InputError
from masc_probe.training._config import TrainConfig

__all__ = ["HOLD_MAX_BYTES", "RunData", "classes_from_data", "run_data"]

# Fixed training data up to this size is decoded once and held as tensors. 2 GiB holds CIFAR-10 (50,000 × 3×32×32
# float32: 0.6 GiB) and all of MNIST three times over, but not Tiny ImageNet at 64×64 (4.6 GiB), which a machine
# sized for probing (a 4 GiB statistics budget, DEFAULT_MAX_MEMORY) should not hold a second time.
HOLD_MAX_BYTES = 2 * 1024**3


@dataclass
class RunData:
    """The loaders of a run (Accelerate's ``prepare`` may swap the DataLoaders among them for its own)."""

    loader: Iterable[Any]  # the steps' batches
    sampler: EpochSampler | TensorBatches | None  # what set_epoch reorders (None: the data's own order)
    n_train: int | None  # None: data of unknown length
    eval_train: Iterable[Any]  # the complete evaluation pass over the training data
    stop_train: Iterable[Any]  # the stop rule's pass, in smaller batches: it mostly ends after one or a few
    eval_test: Iterable[Any] | None
    shape: list[int]  # one input's shape, from the first batch


def run_data(train_data: Any, test_data: Any, *, config: TrainConfig, world: int, device: torch.device) -> RunData:
    """The loaders of a run on *world* processes.

    Raises:
        InputError: A plain iterable for several processes, a one-shot iterator, or a batch larger than the data.
    """
    own_batches = world == 1 and isinstance(train_data, (list, tuple))
    if world == 1:  # several processes shard a DataLoader: held tensors would not be
        train_data = _held(train_data, config.batch_size)
    train_data, test_data = _placed(train_data, device), _placed(test_data, device)
    if own_batches and isinstance(train_data, TensorBatches):  # a held list: its own batches, in its own order
        loader, sampler, n_train = train_data, None, train_data.num_samples
    else:
        order_seed = None if config.protocol == "authors" else config.seed  # authors: the same order every epoch
        loader, sampler, n_train = make_loader(train_data, batch_size=config.batch_size, shuffle_seed=order_seed,
                                               name="training data")  # fmt: skip
    if not isinstance(loader, DataLoader) and world > 1:
        raise InputError("expected a DataLoader or dataset for multi-process training, got a plain iterable")
    if iter(loader) is loader:
        raise InputError("expected re-iterable training data (a DataLoader or list), got a one-shot iterator")
    eval_bs = max(world, min(config.eval_batch_size, n_train or config.eval_batch_size) // world * world)
    eval_train = make_loader(train_data, batch_size=eval_bs, strict=False)[0]
    stop_train = make_loader(train_data, batch_size=max(world, eval_bs // 4 // world * world), strict=False)[0]
    eval_test = make_loader(test_data, batch_size=eval_bs, strict=False)[0] if test_data is not None else None
    shape = [int(s) for s in split_batch(next(iter(loader))).x.shape[1:]]
    return RunData(loader, sampler, n_train, eval_train, stop_train, eval_test, shape)


def _held(data: Any, batch_size: int) -> Any:
    """*data* decoded once into TensorBatches when it is fixed and fits :data:`HOLD_MAX_BYTES`, else as it is. A
    list keeps its batch size (its order is kept by :func:`run_data`); a dataset is batched by *batch_size*."""
    if isinstance(data, TensorBatches):
        return data
    size = fixed_bytes(data)
    if size is None or size > HOLD_MAX_BYTES:
        return data
    if isinstance(data, (list, tuple)):
        batch_size = len(split_batch(data[0]).y)
    return TensorBatches.from_data(data, batch_size=batch_size)


def _placed(data: Any, device: torch.device) -> Any:
    """Data held as tensors on the CPU, for a CUDA device: moved there when it takes at most a quarter of the
    device's memory (no copy per batch), else pinned (copies without blocking). Anything else as it is: a
    DataLoader's batches are pinned by the loader and copied by Accelerate."""
    if not isinstance(data, TensorBatches) or device.type != "cuda" or data.x.device.type != "cpu":
        return data
    tensors = (data.x, data.y, data.y_true, data.index)
    size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    fits = size <= torch.cuda.get_device_properties(device).total_memory // 4
    x, y, y_true, index = (None if t is None else t.to(device) if fits else t.pin_memory() for t in tensors)
    return TensorBatches(x, y, y_true, index, batch_size=data.batch_size, shuffle_seed=data.shuffle_seed)


def classes_from_data(data: Any) -> int:
    """The number of classes of a dataset whose ``label`` feature is a ``ClassLabel``.

    Raises:
        InputError: The data says nothing of its classes.
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    features = getattr(dataset, "features", None)
    label = features.get("label") if features is not None else None
    if label is not None and hasattr(label, "num_classes"):
        return int(label.num_classes)
    raise InputError("expected config.num_classes (or a dataset with a ClassLabel 'label') to build the model")
