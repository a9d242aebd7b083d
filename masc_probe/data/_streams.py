"""Streamed datasets for :mod:`masc_probe.data`, with a stable index per sample.

A streamed sample's corrupted label is a function of the seed and the sample's index, so the index must not depend
on batch order, worker count or epoch. Parquet data is therefore streamed by row group: each shard is
``(file, row group, global offset)``, the offsets come from the files' footers, and a sample's index is its offset
plus its row in the group — the same number as its row in the in-memory dataset. DataLoader workers and
``IterableDataset.shuffle`` only redistribute or reorder whole shards. Local data already held as an arrow table carries
an ``index`` column and is streamed with ``Dataset.to_iterable_dataset``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import datasets
import numpy as np

from masc_probe.data._preprocess import Preprocessing, decode_batch
from masc_probe.data.corruption import corrupt_labels

# Rows per map call: enough to amortize the per-call cost, small enough to keep the first batch quick.
_MAP_BATCH = 64


def _open(path: str) -> Any:
    import fsspec

    # fsspec serves local paths and the hub's hf:// URLs (through huggingface_hub's HfFileSystem) alike.
    return fsspec.open(path, "rb").open()


def parquet_shards(files: list[str]) -> tuple[list[tuple[str, int, int]], int]:
    """Return one ``(file, row group, offset of its first row)`` per row group, and the total number of rows."""
    import pyarrow.parquet as pq

    shards, offset = [], 0
    for path in files:
        with _open(path) as handle:
            meta = pq.ParquetFile(handle).metadata
        for group in range(meta.num_row_groups):
            shards.append((path, group, offset))
            offset += meta.row_group(group).num_rows
    return shards, offset


def parquet_features(path: str) -> datasets.Features:
    """The dataset features stored in a parquet file's schema (Hugging Face metadata when present)."""
    import pyarrow.parquet as pq

    with _open(path) as handle:
        return datasets.Features.from_arrow_schema(pq.ParquetFile(handle).schema_arrow)


def parquet_column(files: list[str], column: str) -> np.ndarray:
    """Read one column of every file, in order (only that column's pages are fetched)."""
    import pyarrow.parquet as pq

    parts = []
    for path in files:
        with _open(path) as handle:
            parts.append(pq.read_table(handle, columns=[column]).column(column).to_numpy(zero_copy_only=False))
    return np.concatenate(parts) if parts else np.empty(0)


def parquet_first(path: str, column: str) -> Any:
    """The first value of *column* in *path* (for sizing the images before streaming)."""
    import pyarrow.parquet as pq

    with _open(path) as handle:
        batch = next(pq.ParquetFile(handle).iter_batches(batch_size=1, columns=[column]))
    return batch.column(0)[0].as_py()


def files_fingerprint(files: list[str]) -> str:
    """A hash of the file list, with size and modification time for local files (hub URLs carry the commit)."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.encode())
        if os.path.exists(path):
            st = os.stat(path)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _generate(
    shards: list[tuple[str, int, int]], image_column: str, label_column: str
) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for path, group, offset in shards:
        with _open(path) as handle:
            table = pq.ParquetFile(handle).read_row_group(group, columns=[image_column, label_column])
        images = table.column(image_column).to_pylist()
        labels = table.column(label_column).to_pylist()
        for row, (image, label) in enumerate(zip(images, labels)):
            yield {"image": image, "true_label": label, "index": offset + row}


def parquet_stream(
    files: list[str], *, image_column: str, label_column: str, features: datasets.Features, split: str
) -> datasets.IterableDataset:
    """Stream parquet files as rows ``{"image", "true_label", "index"}`` typed by ``features`` (see module doc)."""
    shards, _ = parquet_shards(files)
    return datasets.IterableDataset.from_generator(
        _generate,
        features=features,
        gen_kwargs={"shards": shards, "image_column": image_column, "label_column": label_column},
        split=datasets.NamedSplit(split),
    )


class StreamTransform:
    """``IterableDataset.map(batched=True)`` callable: add the corrupted ``label`` and turn images into arrays."""

    def __init__(
        self, preprocessing: Preprocessing, *, raw: bool, corruption: Mapping[str, Any] | None, num_classes: int
    ) -> None:
        self.preprocessing = preprocessing
        self.raw = raw
        self.corruption = dict(corruption) if corruption else None  # corrupt_labels keywords: rate, mode, seed, mapping
        self.num_classes = num_classes

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        true = np.asarray(batch["true_label"], dtype=np.int64)
        index = np.asarray(batch["index"], dtype=np.int64)
        label = true
        if self.corruption:
            label = corrupt_labels(true, num_classes=self.num_classes, indices=index, **self.corruption)
        pixels = decode_batch(batch["image"], self.preprocessing.source_size, self.raw)
        return {"image": self.preprocessing.apply(pixels).numpy(), "label": label, "true_label": true, "index": index}


def finish_stream(
    rows: datasets.IterableDataset, transform: StreamTransform, class_label: datasets.ClassLabel
) -> datasets.IterableDataset:
    """Apply *transform* lazily and format rows as torch tensors with a ``ClassLabel`` for both label columns."""
    c, h, w = transform.preprocessing.input_size
    features = datasets.Features(
        {
            "image": datasets.Array3D(shape=(c, h, w), dtype="float32"),
            "label": class_label,
            "true_label": class_label,
            "index": datasets.Value("int64"),
        }
    )
    mapped = rows.map(transform, batched=True, batch_size=_MAP_BATCH, features=features)
    return mapped.with_format("torch")
