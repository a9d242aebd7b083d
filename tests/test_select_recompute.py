"""The selected readout recomputed outside the package's probe code: the run's weights read with safetensors, the
layer computed in float64 numpy, MASC fitted from its definition (tests/test_masc.reference), scored on the
evaluation images the report lists, against the accuracy the report gives the trained network's choice."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import load_file

from tests.test_masc import reference


def _layer(weights: dict[str, np.ndarray], x: np.ndarray, layer: str) -> np.ndarray:
    """The paper MLP's post-ReLU output of *layer* (``input``: the flattened pixels), in float64."""
    h = x.reshape(len(x), -1).astype(np.float64)
    if layer == "input":
        return h
    for i in range(1, int(layer.removeprefix("fc")) + 1):
        w, b = weights[f"fc{i}.linear.weight"].astype(np.float64), weights[f"fc{i}.linear.bias"].astype(np.float64)
        h = np.maximum(h @ w.T + b, 0.0)
    return h


def _split(data) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images as the data yields them (decoded, normalized), given labels, true labels, indices."""
    from torch.utils.data import DataLoader

    parts = list(DataLoader(data, batch_size=4096))
    return tuple(np.concatenate([p[k].numpy() for p in parts]) for k in ("image", "label", "true_label", "index"))


def test_the_trained_choice_recomputes_from_the_weights(digits_run) -> None:
    from masc_probe.pipeline._inputs import load_run_data, resolve_source

    folder = digits_run.output_dir
    report = json.loads((folder / "report.json").read_text())
    block = report["selection"]
    src = resolve_source(folder, dataset=None, corrupt=None, corrupt_mode=None, seed=None, revision=None,
                         all_checkpoints=False)
    data = load_run_data(src.dataset, corrupt=src.corrupt, mode=src.mode, seed=src.seed, normalize=src.normalize,
                         input_size=src.input_size, in_chans=src.in_chans)
    x_train, y_train, y_train_true, _ = _split(data.train)
    x_test, y_test, _, index = _split(data.test)
    weights = load_file(str(folder / "model.safetensors"))
    evaluate = np.isin(index, block["evaluation_index"])
    choose = np.isin(index, block["choosing_index"])
    assert evaluate.sum() == block["n_eval"] and choose.sum() == block["n_choose"] and not (evaluate & choose).any()
    checked = 0
    for choice in block["choices"]:
        if choice["network"] != "trained":
            continue
        assert choice["labels"] == "corrupted" or choice["labels"] == "true"
        labels = y_train if choice["labels"] == "corrupted" else y_train_true
        feats = _layer(weights, x_train, choice["layer"])
        test_feats = _layer(weights, x_test[evaluate], choice["layer"])
        _, cos, pred = reference(feats, labels, test_feats, choice["size"])
        top = np.sort(cos, axis=1)
        clear = (top[:, -1] - top[:, -2]) > 1e-6
        acc = float(np.mean(pred == y_test[evaluate]))
        # Rows without a clear winner may round either way in float32: they bound the difference.
        assert abs(acc - choice["evaluation_accuracy"]) <= (np.sum(~clear) + 1e-9) / evaluate.sum(), choice
        checked += 1
    assert checked == 2
