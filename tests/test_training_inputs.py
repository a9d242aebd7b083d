"""train() on each form of training data: a DataLoader or dataset takes the seeded order TensorBatches takes (the
same weights), a list of batches is taken as it is every epoch (the weights of a plain loop over it), and its length
is known (the stop rule's pass ends early on it as on a dataset)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from _training_helpers import digits
from masc_probe.data import TensorBatches
from masc_probe.data._batches import epoch_order
from masc_probe.models import load_model
from masc_probe.training import TrainConfig, train

N, BATCH, EPOCHS = 96, 32, 2


def _config(tmp_path: Path, name: str) -> TrainConfig:
    return TrainConfig(optimizer="adam", lr=1e-3, batch_size=BATCH, max_epochs=EPOCHS, num_classes=10, cpu=True,
                       progress=False, keep_checkpoints="final", output_dir=str(tmp_path / name))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return load_model("mlp", num_classes=10, input_size=[1, 8, 8])


def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, yc, y, _, _ = digits(N)
    return torch.tensor(x), torch.tensor(yc), torch.tensor(y)


def _reference(net: nn.Module, batches_of_epoch: Any) -> dict[str, torch.Tensor]:
    """A plain PyTorch loop: Adam, the batch's mean cross-entropy, one step per batch."""
    net = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for epoch in range(1, EPOCHS + 1):
        net.train()
        for x, y in batches_of_epoch(epoch):
            loss = F.cross_entropy(net(x).float(), y, reduction="none").mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.state_dict()


def _trained(data: Any, tmp_path: Path, name: str) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    net = _net()
    result = train(net, data, config=_config(tmp_path, name))
    return net.state_dict(), result.history


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_dataloader_a_dataset_and_tensor_batches_take_the_same_seeded_steps(tmp_path: Path) -> None:
    x, yc, y = _tensors()
    seed = _config(tmp_path, "x").seed

    def seeded(epoch: int) -> Any:
        order = epoch_order(N, seed, epoch)  # the documented order: a function of (seed, epoch)
        return [(x[order[i:i + BATCH]], yc[order[i:i + BATCH]]) for i in range(0, N, BATCH)]

    expected = _reference(_net(), seeded)
    rows = TensorDataset(x, yc, y)
    for name, data in [("tensors", TensorBatches(x, yc, y)), ("dataset", rows),
                       ("loader", DataLoader(rows, batch_size=7, shuffle=True))]:  # its own batch and order: replaced
        weights, _ = _trained(data, tmp_path, name)
        assert _same(weights, expected), name


def test_a_list_of_batches_is_taken_as_it_is_every_epoch(tmp_path: Path) -> None:
    x, yc, y = _tensors()
    batches = [{"image": x[i:i + BATCH], "label": yc[i:i + BATCH], "true_label": y[i:i + BATCH]}
               for i in range(0, N, BATCH)]
    expected = _reference(_net(), lambda epoch: [(b["image"], b["label"]) for b in batches])
    weights, history = _trained(batches, tmp_path, "list")
    assert _same(weights, expected)
    # Its length is known: the stop rule's pass after epoch 1 ended once the target (1.0) was out of reach, and the
    # row records None for the accuracy it did not complete; the last epoch's pass is complete.
    assert history[0]["train_accuracy_corrupted"] is None
    assert history[1]["train_accuracy_corrupted"] is not None


def test_a_list_of_uneven_batches_is_taken_as_it_is_too(tmp_path: Path) -> None:
    x, yc, y = _tensors()
    cuts = [0, 10, 50, 60, N]  # not held as tensors (batches of one size only): iterated as it is
    batches = [(x[a:b], yc[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    expected = _reference(_net(), lambda epoch: [(bx, by) for bx, by, _ in batches])
    weights, history = _trained(batches, tmp_path, "uneven")
    assert _same(weights, expected) and history[0]["train_accuracy_corrupted"] is None


class _Counting(Dataset):
    """Rows read through __getitem__, counted: a dataset that could draw at each read (an augmentation)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.reads = x, y, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        return self.x[i], self.y[i]


def test_a_dataset_not_known_to_be_fixed_is_read_again_every_epoch(tmp_path: Path) -> None:
    x, yc, _ = _tensors()
    data = _Counting(x, yc)
    _trained(data, tmp_path, "counting")
    assert data.reads >= EPOCHS * N  # every epoch's steps read every row again
