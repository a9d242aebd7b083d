"""MASC scored from the orthogonal complement (k_c > d/2, scatter form) equals the definition and the direct path.

cos θ_c(x) = ‖B_c x‖ / ‖x‖ is computed as sqrt(1 − ‖B_c^⊥ x‖² / ‖x‖²) when the complement has fewer columns than the
basis. The reference here is the definition in float64: the top-k_c eigenvectors of X_cᵀX_c from numpy's ``eigh``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masc_probe.probes import MinimumAngleSubspaceClassifier
from masc_probe.probes import masc as masc_module


def _data(d: int, rank: int, n_per: int, n_classes: int, seed: int, n_test: int = 0
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of rank <= *rank* (a null space when rank < d), classes with different mixing; the last
    *n_test* of the class-ordered rows are the test rows (from the same classes)."""
    rng = np.random.default_rng(seed)
    parts, labels = [], []
    for c in range(n_classes):
        # Rank <= rank; scaled factors spread the spectrum so that a fraction picks k_c well inside it.
        mix = rng.normal(size=(rank, d)) * np.geomspace(3.0, 0.3, rank)[:, None]
        parts.append(rng.normal(size=(n_per, rank)) @ mix)
        labels.append(np.full(n_per, c))
    X, y = np.concatenate(parts).astype(np.float32), np.concatenate(labels)
    test = np.random.default_rng(seed + 1).permutation(len(y))[:n_test]
    train = np.setdiff1d(np.arange(len(y)), test)
    return X[train], y[train], X[test]


def _reference_cosines(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, ks: list[int]) -> np.ndarray:
    """cos θ_c from the definition in float64: top-k_c eigenvectors of the uncentered scatter."""
    Xt = X_test.astype(np.float64)
    norm = np.linalg.norm(Xt, axis=1)
    out = []
    for c, k in zip(np.unique(y), ks, strict=True):
        rows = X[y == c].astype(np.float64)
        w, v = np.linalg.eigh(rows.T @ rows)
        basis = v[:, ::-1][:, :k]
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(norm > 0, np.linalg.norm(Xt @ basis, axis=1) / np.where(norm > 0, norm, 1), 0.0))
    return np.stack(out, axis=1)


@pytest.mark.parametrize(("rank", "n_components"), [(48, 0.99), (48, 40), (36, 0.999), (36, 30)])
def test_complement_path_equals_definition_and_direct_path(rank: int, n_components: float | int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    d = 48
    X, y, X_test = _data(d, rank, 340, 3, seed=rank, n_test=120)
    X_test[0] = 0.0  # no angle: cos 0 everywhere on both paths
    masc = MinimumAngleSubspaceClassifier(n_components, solver="scatter").fit(X, y)
    ks = masc.n_components_.tolist()
    flip = masc._solution.stacked[2]
    assert bool(flip.all()), (ks, flip)  # every class has k_c > d/2 here: the complement path is the one taken
    # Fewer columns than the basis: Σ (d − k_c) < Σ k_c.
    assert masc._solution.stacked[0].shape[1] == sum(d - k for k in ks) < sum(ks)
    complement = masc.cosines(X_test)
    ref = _reference_cosines(X, y, X_test, ks)
    np.testing.assert_allclose(complement, ref, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(masc.predict(X_test), np.argmax(ref, axis=1))

    # The same fit scored the direct way (the basis, ‖B_c x‖²) gives the same numbers.
    monkeypatch.setattr(masc_module._Subspace, "scores_from_complement", lambda self, k: False)
    direct = MinimumAngleSubspaceClassifier(n_components, solver="scatter").fit(X, y)
    assert not bool(direct._solution.stacked[2].any())
    np.testing.assert_allclose(direct.cosines(X_test), complement, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(direct.predict(X_test), masc.predict(X_test))
    # components_ still gives the basis, which the direct path scores with.
    for a, b in zip(masc.components_, direct.components_, strict=True):
        np.testing.assert_allclose(np.abs(a @ b.T), np.eye(len(a)), atol=1e-4)


def test_mixed_classes_frozen_and_saved_score_the_same() -> None:
    d = 40
    X, y, X_test = _data(d, 40, 330, 3, seed=3, n_test=90)
    # A count of 30 > d/2 clipped per class by rank; a Gram-form class (forced) never uses the complement.
    masc = MinimumAngleSubspaceClassifier(30, solver="scatter").fit(X, y)
    gram = MinimumAngleSubspaceClassifier(30, solver="gram").fit(X, y)
    assert bool(masc._solution.stacked[2].all()) and not bool(gram._solution.stacked[2].any())
    np.testing.assert_allclose(masc.cosines(X_test), gram.cosines(X_test), atol=2e-5, rtol=0)

    frozen = masc.frozen("cpu")
    Xt = torch.from_numpy(X_test)
    torch.testing.assert_close(frozen.cosines(Xt), masc.cosines(Xt), atol=0, rtol=0)
    arrays, meta = frozen.to_state()
    assert meta["complement"] == [True, True, True] and meta["ks"] == [30, 30, 30]
    loaded = MinimumAngleSubspaceClassifier.from_state(arrays, meta, torch.device("cpu"))
    torch.testing.assert_close(loaded.cosines(Xt), masc.cosines(Xt), atol=0, rtol=0)
    with pytest.raises(Exception, match="complement"):
        _ = frozen.components_


def test_state_without_complement_entry_loads_as_basis() -> None:
    """Files saved before complements existed (no ``complement`` entry) load as basis columns."""
    X, y, _ = _data(16, 16, 100, 2, seed=5)
    masc = MinimumAngleSubspaceClassifier(4, solver="scatter").fit(X, y)  # k_c = 4 < d/2: basis columns
    arrays, meta = masc.to_state()
    assert meta.pop("complement") == [False, False]
    loaded = MinimumAngleSubspaceClassifier.from_state(arrays, meta, torch.device("cpu"))
    np.testing.assert_array_equal(loaded.predict(X), masc.predict(X))
