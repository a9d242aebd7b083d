"""Reading MNIST-style idx folders (``train-images-idx3-ubyte`` and friends), gzipped or raw.

The idx format (LeCun's MNIST page): two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then
one big-endian uint32 per dimension and the data in C order.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from masc_probe.errors import DataUnavailableError

# File stems per split; both the original "-idx3-ubyte" and the common "." spelling, with or without ".gz".
_STEMS = {"train": "train", "test": "t10k"}
_KINDS = {"images": ("idx3",), "labels": ("idx1",)}


def _candidates(folder: Path, split: str, kind: str) -> list[Path]:
    stem = _STEMS[split]
    names = []
    for sep in ("-", "."):
        for dims in _KINDS[kind]:
            base = f"{stem}-{kind}{sep}{dims}-ubyte"
            names += [base + ".gz", base]
    return [folder / name for name in names]


def find_idx_file(folder: Path, split: str, kind: str) -> Path | None:
    """Return the idx file for ``split`` ("train" or "test") and ``kind`` ("images" or "labels"), or None."""
    return next((p for p in _candidates(folder, split, kind) if p.is_file()), None)


def is_idx_folder(folder: Path) -> bool:
    """Whether *folder* holds at least the training images and labels of an idx dataset."""
    return find_idx_file(folder, "train", "images") is not None and find_idx_file(folder, "train", "labels") is not None


def idx_splits(folder: Path) -> list[str]:
    """The splits present in an idx folder, among "train" and "test"."""
    return [s for s in _STEMS if find_idx_file(folder, s, "images") and find_idx_file(folder, s, "labels")]


def read_idx(path: Path) -> tuple[np.ndarray, str]:
    """Read one idx file of unsigned bytes.

    Args:
        path: An idx file, gzipped when its name ends in ``.gz``.

    Returns:
        The array (dims as the header says, uint8) and the sha256 hex digest of the file's uncompressed bytes.

    Raises:
        DataUnavailableError: The file is not an unsigned-byte idx file or is truncated.
    """
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataUnavailableError(f"expected an unsigned-byte idx file (magic 00 00 08 ..), got {raw[:4]!r} in {path}")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims))
    offset = 4 + 4 * ndim
    if len(raw) - offset != size:
        raise DataUnavailableError(f"expected {size} data bytes for shape {dims} in {path}, got {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims), hashlib.sha256(raw).hexdigest()


def read_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Read the images (n, H, W) and labels (n,) of one split, and a fingerprint of both files.

    Raises:
        DataUnavailableError: A file is missing, malformed, or the two files disagree in length.
    """
    images_path, labels_path = find_idx_file(folder, split, "images"), find_idx_file(folder, split, "labels")
    if images_path is None or labels_path is None:
        raise DataUnavailableError(f"expected {_STEMS[split]}-images/-labels idx files for split {split!r} in {folder}")
    images, h_images = read_idx(images_path)
    labels, h_labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataUnavailableError(
            f"expected images (n, H, W) and labels (n,) in {folder}, got {images.shape} and {labels.shape}"
        )
    return images, labels, hashlib.sha256((h_images + h_labels).encode()).hexdigest()
