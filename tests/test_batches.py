"""data._batches: which data is known to be the same every epoch (and so may be held as tensors), and the length of
a list of batches."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from masc_probe.data._batches import fixed_bytes, make_loader


def _batches(sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    return [{"image": torch.zeros(n, 1, 2, 3), "label": torch.zeros(n, dtype=torch.int64)} for n in sizes]


def test_a_list_of_batches_of_one_size_is_fixed_and_its_bytes_are_its_tensors() -> None:
    # 10 samples: 6 float32 pixels (24 bytes) + one int64 label (8 bytes) each
    assert fixed_bytes(_batches([4, 4, 2])) == 10 * (24 + 8)
    assert fixed_bytes(tuple(_batches([4]))) == 4 * 32


@pytest.mark.parametrize("sizes", [[2, 4], [4, 2, 4], [4, 5]])
def test_a_list_whose_batches_differ_in_size_is_not_held(sizes: list[int]) -> None:
    assert fixed_bytes(_batches(sizes)) is None


def test_a_tensor_dataset_is_fixed_a_dataset_that_may_draw_is_not() -> None:
    data = TensorDataset(torch.zeros(7, 3, dtype=torch.float64), torch.zeros(7, dtype=torch.int64))
    assert fixed_bytes(data) == 7 * (3 * 8 + 8)
    assert fixed_bytes(DataLoader(data, batch_size=2)) == 7 * 32

    class Drawing(Dataset):
        def __len__(self) -> int:
            return 7

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.rand(3), 0  # an augmentation: another value at every read

    assert fixed_bytes(Drawing()) is None
    assert fixed_bytes(DataLoader(Drawing(), batch_size=2)) is None
    # Another collate function may draw too (mixup, …).
    assert fixed_bytes(DataLoader(data, batch_size=2, collate_fn=lambda rows: rows)) is None


def test_hugging_face_datasets_are_fixed_only_in_a_format_that_draws_nothing() -> None:
    datasets = pytest.importorskip("datasets")
    rows = datasets.Dataset.from_dict({"image": [[0.0, 1.0]] * 5, "label": [0, 1, 0, 1, 0]})
    assert fixed_bytes(rows.with_format("torch")) == 5 * (2 * 4 + 8)
    assert fixed_bytes(rows.with_transform(lambda batch: batch)) is None  # any callable: it may draw


def test_a_list_of_batches_has_a_known_length() -> None:
    # The stop rule's pass can end early only over data whose length is known.
    batches = _batches([4, 4, 3])
    loader, sampler, n = make_loader(batches, batch_size=4)
    assert loader is batches and sampler is None and n == 11
    assert make_loader(iter(batches), batch_size=4)[2] is None  # a one-shot iterator is not counted
