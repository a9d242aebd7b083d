"""Small real data for the training, relabeling and editing tests: scikit-learn's digits with corrupted labels.

The memorized run is trained once per test session (``functools.cache``; conftest.py's ``memorizer`` fixture) and
shared by every test that needs a network that memorized.
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

RATE = 0.8
N_TRAIN = 300
N_TEST = 300


class DictDigits(Dataset):
    """Rows in the contract's dict form: image (1, 8, 8) normalized (mean 0.5, std 0.5), label, true_label, index."""

    def __init__(self, x: np.ndarray, label: np.ndarray, true_label: np.ndarray) -> None:
        self.x = torch.tensor(x)
        self.label = torch.tensor(label, dtype=torch.int64)
        self.true_label = torch.tensor(true_label, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.x[i], "label": self.label[i], "true_label": self.true_label[i], "index": torch.tensor(i)}


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, read from the file ``sklearn.datasets.load_digits`` reads (64 pixels, then the label).

    Reading the file directly spares the training subprocesses the seconds it takes to import scikit-learn.
    """
    root = importlib.util.find_spec("sklearn").submodule_search_locations[0]
    table = np.loadtxt(Path(root) / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def digits(n_train: int = N_TRAIN, rate: float = RATE, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(x_train, y_corrupted, y_true, x_test, y_test)``: the first n_train digits, then N_TEST more for testing."""
    from masc_probe.data.corruption import corrupt_labels

    x, y = _load_digits()
    x = ((x / 16.0 - 0.5) / 0.5).astype(np.float32).reshape(-1, 1, 8, 8)
    y = y.astype(np.int64)
    y_corrupt = corrupt_labels(y[:n_train], rate, num_classes=10, seed=seed)
    test = slice(n_train, n_train + N_TEST)
    return x[:n_train], y_corrupt, y[:n_train], x[test], y[test]


def tuple_data(n_train: int, rate: float = RATE) -> TensorDataset:
    """The first n_train digits as ``(x, y_corrupted, y_true)`` rows."""
    x, yc, y, _, _ = digits(n_train, rate)
    return TensorDataset(torch.tensor(x), torch.tensor(yc), torch.tensor(y))


@dataclass
class MemorizedRun:
    run_dir: Path
    result: Any
    seconds: float
    train: DictDigits
    test: DictDigits


@functools.cache
def memorized_run() -> MemorizedRun:
    """The paper's MLP trained with the fast preset on 300 digits at p=0.8 until it fits the corrupted labels.

    At Adam lr 1e-3 in 3 batches of 100 an epoch it memorizes at epoch 27; the preset's own lr 3e-4 and batch 128
    took 59 epochs, twice the time (measured here), in the fast tier every test session pays for.
    """
    from masc_probe.training import preset_config, train

    x, yc, y, xt, yt = digits()
    train_set, test_set = DictDigits(x, yc, y), DictDigits(xt, yt, yt)
    run_dir = Path(tempfile.mkdtemp(prefix="masc-probe-memorized-")) / "run"
    config = preset_config("mlp", "digits", preset="fast", num_classes=10, output_dir=str(run_dir), max_epochs=80,
                           lr=1e-3, batch_size=100,
                           corruption={"mode": "random", "rate": RATE, "seed": 0})  # fmt: skip
    threads = torch.get_num_threads()
    # One thread: on a 2-core machine shared with other jobs, 2-threaded BLAS runs several times slower.
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        result = train("mlp", train_set, config=config, test_data=test_set)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return MemorizedRun(run_dir, result, seconds, train_set, test_set)
