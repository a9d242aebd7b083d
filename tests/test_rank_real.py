"""MASC's rank cut-off on real wide layers: k_c and predictions against a float64 reference from the definition.

MASC counts an eigenvalue of a class's (float32) scatter or Gram matrix as zero when it is at most 64 float32
epsilons of the largest (``probes/_eigen.py``); on a constructed spectrum that cut gives k = 1 where the float64 rule
gives k = 116 (issue 14, item 7). Here the cut is checked where it matters, on real CIFAR-10 images (the shared
copy, JPEG-re-encoded) through randomly initialized paper networks: ResNet-18's layer1.0 (16,384 wide: our stem is
3×3 stride 1 followed by a 3/2 max-pool, so layer1 works on 16×16 maps, not the 65,536 of a 32×32 map the issue
assumed), AlexNet's first convolution (16,384 wide) and second (9,408), its flatten (256) and fc1 (4,096).

What was measured. The lead's script (300-400 images per class, the AlexNet this package had before it took the
authors' variants) found MASC's k_c at t = 0.9 and 0.99 equal to a float64 reference's exactly. This test, at 100
images per class through the authors' CIFAR AlexNet, finds the same; MASC's cosines are within 7e-5 of the
reference's, and its predictions agree with the reference's wherever the reference's two best classes are further
apart than that error (at least 99.8% of the test images; one flatten image at t = 0.99 is a tie to 1e-8). The
float32 rank tolerance does fall well below the float64 rank on layers one direction dominates (fc1 here: 22-34
against 100; the lead's old AlexNet: 5 against 310 at fc1, 106 against 182 at flatten), but it never binds at
t <= 0.99: there the top eigenvalue holds more than 99% of the trace, so k_c is 1. On the other layers the smallest
eigenvalue a threshold keeps is far above the cut: this test still passes with a cut at 1e-4 of the largest
eigenvalue (13 times ours) and fails with 1e-3 (2 of its 10 cases) or 1e-2 (7 of 10).

Not asserted, measured with this data (100 per class, 500 test images): asked for a *count* above the float32
rank, MASC clips k_c at that rank (fc1, n_components=50: k_c 22-34 against the reference's 50; 65% of the
predictions agree), and even at an equal count the directions of eigenvalues near the float32 noise floor differ
(fc1, n_components=20: 94% agree). Variance thresholds stay clear of that floor; large counts on such layers do not.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from masc_probe import load_model
from masc_probe.layers import FeatureTap
from masc_probe.probes import MinimumAngleSubspaceClassifier

PER_CLASS, N_TEST = 100, 500
LAYERS = {"resnet18-cifar": ["layer1.0"], "alexnet": ["features.1", "features.4", "flatten", "fc1"]}
WIDTHS = {"layer1.0": 16384, "features.1": 16384, "features.4": 9408, "flatten": 256, "fc1": 4096}
COSINE_ERROR = 2e-4  # float32 cosines of d = 16,384 rows may differ from float64 by this much (measured: 7e-5)


def _images(table: object, rows: np.ndarray) -> torch.Tensor:
    """Decode the JPEGs of *rows* of the parquet table, normalized as the paper does ((x - 0.5) / 0.5)."""
    from PIL import Image

    images = table.take(rows).column("image").to_pylist()  # type: ignore[attr-defined]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(i["bytes"])).convert("RGB")) for i in images])
    return (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5


@pytest.fixture(scope="module")
def features(shared_cifar10: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{layer: (train rows, train labels, test rows)}``: 100 training images per class, then 500 others.

    The parquet file is read directly (only the images used are decoded): ``load_data`` would decode all 50,000
    once into a fresh cache, 20 s of a test that is about MASC.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(shared_cifar10 / "train.parquet")
    y = table.column("label").to_numpy()
    train = np.sort(np.concatenate([np.flatnonzero(y == c)[:PER_CLASS] for c in range(10)]))
    test = np.setdiff1d(np.arange(len(y)), train)[:N_TEST]
    x, x_test = _images(table, train), _images(table, test)
    out = {}
    for spec, layers in LAYERS.items():
        torch.manual_seed(0)
        model = load_model(spec, num_classes=10, input_size=(3, 32, 32))
        with FeatureTap(model, layers) as tap:
            rows = [tap(x[i:i + 250]) for i in range(0, len(x), 250)]
            rows_test = tap(x_test)
        for layer in layers:
            out[layer] = (torch.cat([r[layer] for r in rows]).flatten(1).numpy(), y[train],
                          rows_test[layer].flatten(1).numpy())
    return out


def _reference(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, t: float) -> tuple[list[int], np.ndarray, list]:
    """k_c, test cosines (n, 10) and eigenvalues per class, in float64 from the definition (docs/architecture.md):
    the top eigenvectors of X_cᵀX_c (through the Gram matrix X_c X_cᵀ, which has the same nonzero eigenvalues),
    k_c = #{i : r_i <= t} + 1 clipped to the float64 rank, cos = ‖B_c x‖ / ‖x‖."""
    ks, cosines, spectra = [], [], []
    x_test = x_test.astype(np.float64)
    norms = np.linalg.norm(x_test, axis=1)
    for c in range(10):
        xc = x[y == c].astype(np.float64)
        w, v = np.linalg.eigh(xc @ xc.T)
        w, v = np.clip(w[::-1], 0, None), v[:, ::-1]
        rank = int((w > w[0] * len(w) * np.finfo(np.float64).eps).sum())
        k = min(int((np.cumsum(w) / w.sum() <= t).sum()) + 1, rank)
        basis = (v[:, :k].T @ xc) / np.sqrt(w[:k])[:, None]  # (k, d), orthonormal rows
        ks.append(k)
        cosines.append(np.linalg.norm(x_test @ basis.T, axis=1) / norms)
        spectra.append(w)
    return ks, np.stack(cosines, axis=1), spectra


@pytest.mark.parametrize("t", [0.9, 0.99])
@pytest.mark.parametrize("layer", list(WIDTHS))
def test_k_and_predictions_match_float64_on_real_wide_layers(features: dict, layer: str, t: float) -> None:
    x, y, x_test = features[layer]
    assert x.shape == (10 * PER_CLASS, WIDTHS[layer])
    masc = MinimumAngleSubspaceClassifier(n_components=t).fit(x, y)
    ks, cosines, spectra = _reference(x, y, x_test, t)
    assert [int(k) for k in masc.n_components_] == ks
    # MASC's float32 cosines sit within float32 accumulation error of the reference's (measured: at most 7e-5) ...
    error = np.abs(masc.cosines(x_test) - cosines).max()
    assert error < COSINE_ERROR
    # ... so its predictions are the reference's wherever the reference's two best classes are further apart than
    # twice that, and almost everywhere else too.
    expected = cosines.argmax(axis=1)
    top2 = np.sort(cosines, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * error
    pred = masc.predict(x_test)
    assert np.array_equal(pred[clear], expected[clear])
    assert (pred == expected).mean() >= 0.99
    if layer == "fc1":
        # The layer where the float32 rank tolerance lies far below the float64 rank, without binding at t.
        rank32 = [int((w > w[0] * 64 * np.finfo(np.float32).eps).sum()) for w in spectra]
        rank64 = [int((w > w[0] * len(w) * np.finfo(np.float64).eps).sum()) for w in spectra]
        assert all(a < b / 2 for a, b in zip(rank32, rank64)) and max(ks) < min(rank32)
