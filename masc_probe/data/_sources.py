"""Dataset sources for :mod:`masc_probe.data`: resolve a spec and load one split as rows ``image`` + ``true_label``.

Specs are tried in this order: a known name (``mnist``, ``cifar10``, …, ``digits``, ``mnist-5k``), a local path
(parquet file or folder, imagefolder tree, ``save_to_disk`` folder, MNIST idx folder), then a Hub id ``owner/name``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from masc_probe.data import _idx
from masc_probe.data._builtin import BUILTINS, SCALES, load_builtin
from masc_probe.data._streams import files_fingerprint, parquet_column, parquet_features
from masc_probe.data._preprocess import image_to_array
from masc_probe.errors import DataUnavailableError, InputError, UnknownNameError, closest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _HubName:
    repo_id: str
    image_column: str
    label_column: str
    channels: int  # some Tiny ImageNet images are grayscale: a known count keeps batches uniform


HUB_NAMES: dict[str, _HubName] = {
    "mnist": _HubName("ylecun/mnist", "image", "label", 1),
    "fashion_mnist": _HubName("zalando-datasets/fashion_mnist", "image", "label", 1),
    "cifar10": _HubName("uoft-cs/cifar10", "img", "label", 3),
    "cifar100": _HubName("uoft-cs/cifar100", "img", "fine_label", 3),
    "tiny-imagenet": _HubName("zh-plus/tiny-imagenet", "image", "label", 3),  # its test split is called "valid"
}
_IMAGE_NAMES = ("image", "img", "pixel_values", "pixels", "x")
_LABEL_NAMES = ("label", "labels", "fine_label", "target", "y", "class")
_TEST_ALIASES = ("validation", "valid", "val")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _canonical(spec: str) -> str | None:
    """Map a loosely spelled name ("CIFAR-10", "fashion-mnist", "mnist_5k") to its canonical form, or None."""
    key = re.sub(r"[-_ ]", "", spec.lower())
    return next((n for n in (*HUB_NAMES, *BUILTINS) if re.sub(r"[-_]", "", n) == key), None)


@dataclass
class Source:
    """One split of a dataset before labels and preprocessing: rows ``image`` and ``true_label`` (a ClassLabel)."""

    kind: str  # "hub", "parquet", "imagefolder", "arrow", "idx", "builtin", ...
    location: str  # hub id, path or built-in name
    split: str
    fingerprint: str
    dataset: datasets.Dataset | None = None  # in-memory / memory-mapped rows
    files: list[str] = field(default_factory=list)  # parquet files, when streamed from them
    columns: tuple[str, str] = ("image", "label")  # the original image and label column names
    image_feature: Any = None
    class_label: datasets.ClassLabel | None = None
    true_labels: np.ndarray | None = None
    raw_size: tuple[int, int, int] | None = None  # (C, H, W) when images are raw uint8 buffers
    channels: int | None = None
    scale: float = 255.0


def _offline() -> bool:
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pick_split(available: Sequence[str], split: str, where: str) -> str:
    if split in available:
        return split
    if split == "test":
        alias = next((a for a in _TEST_ALIASES if a in available), None)
        if alias is not None:
            logger.info("%s has no 'test' split; using %r", where, alias)
            return alias
    got = ", ".join(map(str, available))
    raise DataUnavailableError(f"expected a split {split!r} in {where}, got splits: {got}")


def _from_arrays(kind: str, location: str, split: str, images: np.ndarray, labels: np.ndarray, digest: str,
                 *, names: list[str], scale: float = 255.0) -> Source:
    """Wrap arrays (images (n, H, W) or (n, C, H, W) uint8, labels (n,)) as rows of raw image bytes."""
    import pyarrow as pa

    images = np.ascontiguousarray(images[:, None] if images.ndim == 3 else images)
    n, (c, h, w) = images.shape[0], (int(v) for v in images.shape[1:])
    # One buffer for all images (no per-image Python objects); raw bytes decode with a single frombuffer per batch.
    flat = pa.FixedSizeBinaryArray.from_buffers(pa.binary(c * h * w), n, [None, pa.py_buffer(images.tobytes())])
    class_label = datasets.ClassLabel(names=names)
    table = pa.table({"image": flat.cast(pa.binary()), "true_label": pa.array(labels.astype(np.int64))})
    features = datasets.Features({"image": datasets.Value("binary"), "true_label": class_label})
    ds = datasets.Dataset(table, info=datasets.DatasetInfo(features=features))
    return Source(kind, location, split, digest, dataset=ds, class_label=class_label, raw_size=(c, h, w),
                  true_labels=labels.astype(np.int64), channels=c, scale=scale)


def _choose_columns(features: datasets.Features, image_column: str | None, label_column: str | None,
                    where: str) -> tuple[str, str]:
    cols = list(features)
    for given in (image_column, label_column):
        if given is not None and given not in features:
            raise InputError(f"expected a column {given!r} in {where}, got columns: {', '.join(cols)}")
    image = image_column or next((c for c in cols if isinstance(features[c], datasets.Image)), None) or next(
        (c for c in _IMAGE_NAMES if c in features), None)
    label = label_column or next(
        (c for c in (*_LABEL_NAMES, *cols) if c in features and isinstance(features[c], datasets.ClassLabel)), None
    ) or next((c for c in _LABEL_NAMES if c in features), None)
    if image is None:
        raise InputError(f"found no image column in {where} (columns: {', '.join(cols)}); pass image_column=")
    if label is None:
        raise InputError(f"found no label column in {where} (columns: {', '.join(cols)}); pass label_column=")
    return image, label


def _class_label(feature: Any, labels: np.ndarray | None, num_classes: int | None, where: str) -> datasets.ClassLabel:
    if isinstance(feature, datasets.ClassLabel):
        if num_classes is not None and num_classes != feature.num_classes:
            raise InputError(f"num_classes={num_classes} contradicts the {feature.num_classes} classes of {where}")
        return feature
    if labels is None or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"expected integer or ClassLabel labels in {where}, got {feature}")
    k = num_classes if num_classes is not None else int(labels.max()) + 1 if labels.size else 0
    return datasets.ClassLabel(names=[str(i) for i in range(k)])


def _adopt(src: Source, ds: datasets.Dataset, image_column: str | None, label_column: str | None,
           num_classes: int | None) -> Source:
    """Fill *src* from a loaded split: pick and rename the columns, make the labels a ClassLabel."""
    where = f"{src.kind} {src.location} ({src.split})"
    img, lab = _choose_columns(ds.features, image_column, label_column, where)
    ds = ds.select_columns([img, lab])
    if isinstance(ds.features[lab], datasets.Value) and ds.features[lab].dtype == "string":
        ds = ds.class_encode_column(lab)  # names sorted, so each split encodes a shared class set the same way
    labels = np.asarray(ds.data.column(lab).to_numpy(zero_copy_only=False))
    class_label = _class_label(ds.features[lab], labels, num_classes, where)
    ds = ds.rename_columns({c: n for c, n in ((img, "image"), (lab, "true_label")) if c != n})
    ds = ds.cast_column("true_label", class_label)
    src.dataset, src.columns, src.class_label, src.true_labels = ds, (img, lab), class_label, labels.astype(np.int64)
    src.image_feature = ds.features["image"]
    return src


def _builder(path_or_id: str, *, revision: str | None, cache_dir: str | None, hub: bool, **kwargs: Any) -> Any:
    try:
        return datasets.load_dataset_builder(path_or_id, revision=revision, cache_dir=cache_dir, **kwargs)
    except (ConnectionError, OSError, datasets.exceptions.DatasetsError) as exc:
        if hub and _offline():
            # Offline mode fails at once (measured: under a millisecond) and still serves a cached copy, so the
            # call is made rather than refused up front.
            raise DataUnavailableError(
                f"Hub dataset {path_or_id!r} is not available offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set and "
                "it is not cached); point at a local copy instead, e.g. --dataset /path/to/parquet_or_imagefolder"
            ) from None
        what = "the Hub dataset" if hub else "the local dataset"
        raise DataUnavailableError(f"cannot load {what} {path_or_id!r}: {_first_line(exc)}") from exc


def _from_builder(src: Source, builder: Any, *, streaming: bool, image_column: str | None,
                  label_column: str | None, num_classes: int | None) -> Source:
    data_files = builder.config.data_files
    available = [str(s) for s in (data_files or builder.info.splits or {})]
    src.split = _pick_split(available, src.split, f"{src.kind} {src.location}")
    if streaming and builder.name == "parquet" and data_files:
        # Streamed by row group with a stable index (see masc_probe.data._streams), hub and local files alike.
        src.files = [str(f) for f in data_files[src.split]]
        features = parquet_features(src.files[0]) if builder.info.features is None else builder.info.features
        img, lab = _choose_columns(features, image_column, label_column, f"{src.kind} {src.location}")
        labels = parquet_column(src.files, lab)
        src.columns, src.image_feature, src.true_labels = (img, lab), features[img], labels.astype(np.int64)
        src.class_label = _class_label(features[lab], labels, num_classes, f"{src.kind} {src.location}")
        src.fingerprint = files_fingerprint(src.files)
        return src
    if streaming and src.kind == "hub":
        raise DataUnavailableError(f"streaming needs parquet data files, got a {builder.name!r} dataset "
                                   f"in {src.location}; use streaming=False")
    try:
        builder.download_and_prepare()
        ds = builder.as_dataset(split=src.split)
    except (ConnectionError, OSError, datasets.exceptions.DatasetsError) as exc:
        raise DataUnavailableError(f"cannot prepare {src.location!r}: {_first_line(exc)}") from exc
    src.fingerprint = ds._fingerprint
    return _adopt(src, ds, image_column, label_column, num_classes)


def resolve(spec: str | os.PathLike[str], split: str, *, streaming: bool, image_column: str | None,
             label_column: str | None, num_classes: int | None, revision: str | None,
             cache_dir: str | None) -> tuple[Source, str | None]:
    """Load the split *spec* names, as a :class:`Source`, and the canonical dataset name if it has one."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    name = _canonical(text)  # a bare known name wins over a same-named folder; "./mnist" reaches the folder
    opts = {"streaming": streaming, "image_column": image_column, "label_column": label_column,
            "num_classes": num_classes}
    if name in BUILTINS:
        images, labels, digest = load_builtin(name, split)
        names = [str(i) for i in range(10)]
        return _from_arrays("builtin", name, split, images, labels, digest, names=names, scale=SCALES[name]), name
    if name in HUB_NAMES or (not path.exists() and _HUB_ID.match(text) and not text.startswith(".")):
        known = HUB_NAMES.get(name or "")
        repo = known.repo_id if known else text
        src = Source("hub", repo, split, "", channels=known.channels if known else None)
        opts["image_column"] = image_column or (known.image_column if known else None)
        opts["label_column"] = label_column or (known.label_column if known else None)
        return _from_builder(src, _builder(repo, revision=revision, cache_dir=cache_dir, hub=True), **opts), name
    if not path.exists():
        if re.match(r"^[\w-]+$", text):
            valid = (*HUB_NAMES, *BUILTINS)
            raise UnknownNameError(f"unknown dataset {text!r}; expected a name, a local path or a Hub id "
                                   f"(owner/name); {closest(text, valid)}")
        raise DataUnavailableError(f"expected a dataset at {text!r}, got no such file or folder")
    where = str(path.resolve())
    if path.is_file():
        if path.suffix != ".parquet":
            raise InputError(f"expected a .parquet file or a dataset folder, got the file {where}")
        builder = _builder("parquet", revision=None, cache_dir=cache_dir, hub=False, data_files={"train": [where]})
        return _from_builder(Source("parquet", where, split, ""), builder, **opts), None
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(where)
        available = list(loaded) if isinstance(loaded, datasets.DatasetDict) else ["train"]
        chosen = _pick_split(available, split, f"the saved dataset {where}")
        ds = loaded[chosen] if isinstance(loaded, datasets.DatasetDict) else loaded
        src = Source("arrow", where, chosen, ds._fingerprint)
        return _adopt(src, ds, image_column, label_column, num_classes), None
    if _idx.is_idx_folder(path):
        chosen = _pick_split(_idx.idx_splits(path), split, f"the idx folder {where}")
        images, labels, digest = _idx.read_idx_split(path, chosen)
        k = num_classes or int(labels.max()) + 1
        return _from_arrays("idx", where, chosen, images, labels, digest, names=[str(i) for i in range(k)]), None
    builder = _builder(where, revision=None, cache_dir=cache_dir, hub=False)
    return _from_builder(Source(builder.name, where, split, ""), builder, **opts), None


def image_size(value: Any, channels: int | None) -> tuple[int, int, int]:
    """(C, H, W) of one stored image; C from the image's mode unless the dataset's channel count is known."""
    if channels is None:
        from PIL import Image

        probe = value
        if isinstance(value, dict):
            probe = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        if isinstance(probe, Image.Image):
            channels = 1 if probe.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        else:
            arr = np.asarray(probe)
            channels = 1 if arr.ndim == 2 or arr.shape[-1] == 1 else 3
    return (channels, *image_to_array(value, channels).shape[1:])  # type: ignore[return-value]


class _ToRaw:
    """``Dataset.map`` callable: stored images → raw (C, H, W) uint8 bytes of one common size."""

    def __init__(self, size: tuple[int, int, int]) -> None:
        self.size = size

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {"image": [image_to_array(v, self.size[0], self.size[1:]).tobytes() for v in batch["image"]]}


def decode_once(src: Source, size: tuple[int, int, int], cache_dir: str | None) -> Source:
    """Decode every image of an in-memory source once into raw bytes (C, H, W), cached on disk by fingerprint.

    PNG/JPEG decoding dominated an epoch (MNIST from parquet: 21 s per epoch decoding on the fly on a busy 2-core
    machine, against ~1.5 s from raw bytes); training runs for hundreds of epochs, so the decode is paid once. The
    cache is an arrow file under ``cache_dir`` (default: the datasets cache), memory-mapped, keyed by the source's
    fingerprint and the size — never written beside the user's own files.
    """
    assert src.dataset is not None and src.class_label is not None
    key = hashlib.sha256(f"{src.fingerprint}:{size}:raw-v1".encode()).hexdigest()[:16]
    features = datasets.Features({"image": datasets.Value("binary"), "true_label": src.class_label})
    opts: dict[str, Any] = {"batched": True, "batch_size": 500, "features": features, "new_fingerprint": key,
                            "desc": "Decoding images once"}
    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "masc_probe"
    try:
        root.mkdir(parents=True, exist_ok=True)
        decoded = src.dataset.map(_ToRaw(size), cache_file_name=str(root / f"raw-{key}.arrow"), **opts)
    except OSError as exc:  # a read-only cache: decode into memory instead
        logger.info("cannot write the decoded-image cache in %s (%s); keeping it in memory", root, exc)
        decoded = src.dataset.map(_ToRaw(size), keep_in_memory=True, **opts)
    src.dataset, src.raw_size, src.channels = decoded, size, size[0]
    return src
