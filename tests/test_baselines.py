"""Baseline probes (NCM, VeLPIC, LinearProbe) against references written here, and the PROBES registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masc_probe.errors import InputError, UnknownNameError
from masc_probe.probes import PROBES, LinearProbe, NearestClassMean, VeLPIC, make_probe


@pytest.fixture(scope="module")
def blobs():
    """Four classes around non-negative centres, uneven sizes, plus a held-out set from the same centres."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 3, size=(4, 12))
    sizes = [25, 60, 40, 80]

    def draw(n_each):
        X = np.vstack([c + 0.5 * rng.normal(size=(n, 12)) for c, n in zip(centres, n_each, strict=True)])
        return X.astype(np.float32), np.repeat(np.arange(4), n_each)

    X, y = draw(sizes)
    X_test, y_test = draw([30] * 4)
    return X, y, X_test, y_test


# -- nearest class mean -----------------------------------------------------------------------------------------------
def ncm_reference(X, y, X_test):
    means = np.stack([X[y == c].astype(np.float64).mean(0) for c in np.unique(y)])
    Xt = X_test.astype(np.float64)
    cos = (Xt @ means.T) / np.linalg.norm(Xt, axis=1, keepdims=True) / np.linalg.norm(means, axis=1)
    return means, cos, np.unique(y)[np.argmax(cos, axis=1)]


def test_ncm_matches_numpy_reference(blobs) -> None:
    X, y, X_test, y_test = blobs
    means, cos, pred = ncm_reference(X, y, X_test)
    ncm = NearestClassMean().fit(X, y)
    np.testing.assert_allclose(ncm.centroids_, means, rtol=1e-5)
    np.testing.assert_allclose(ncm.decision_function(X_test), cos, atol=1e-5)
    np.testing.assert_array_equal(ncm.predict(X_test), pred)
    assert ncm.score(X_test, y_test) > 0.9


def test_ncm_streams_and_merges_exactly(blobs) -> None:
    X, y, X_test, _ = blobs
    full = NearestClassMean().fit(X, y)
    perm = np.random.default_rng(1).permutation(len(y))
    streamed = NearestClassMean()
    for idx in np.array_split(perm, 6):
        streamed.partial_fit(X[idx], y[idx])
    a = NearestClassMean().fit(X[perm[:70]], y[perm[:70]])
    b = NearestClassMean().partial_fit(X[perm[70:]], y[perm[70:]])
    for probe in (streamed, a.merge(b)):
        np.testing.assert_allclose(probe.centroids_, full.centroids_, rtol=1e-5)
        np.testing.assert_array_equal(probe.predict(X_test), full.predict(X_test))


def test_ncm_zero_vector_scores_zero(blobs) -> None:
    X, y, _, _ = blobs
    scores = NearestClassMean().fit(X, y).decision_function(np.zeros((2, X.shape[1])))
    np.testing.assert_array_equal(scores, 0.0)


# -- VeLPIC -----------------------------------------------------------------------------------------------------------
def velpic_reference(X, y):
    """Per class the top eigenvector of X_cᵀX_c, signed so that the mean of x·v over ALL points is >= 0."""
    X64 = X.astype(np.float64)
    total = X64.mean(0)
    rows = []
    for c in np.unique(y):
        Xc = X64[y == c]
        w, V = np.linalg.eigh(Xc.T @ Xc)
        v = V[:, -1]
        rows.append(-v if total @ v < 0 else v)
    return np.stack(rows)


@pytest.mark.parametrize("solver", ["scatter", "gram", "auto"])
def test_velpic_matches_float64_reference(blobs, solver) -> None:
    X, y, X_test, y_test = blobs
    coef = velpic_reference(X, y)
    velpic = VeLPIC(solver=solver).fit(X, y)
    np.testing.assert_allclose(velpic.coef_, coef, atol=1e-5)  # sign included
    pred = np.unique(y)[np.argmax(X_test.astype(np.float64) @ coef.T, axis=1)]
    np.testing.assert_array_equal(velpic.predict(X_test), pred)
    np.testing.assert_array_equal(velpic.intercept_, 0.0)


def test_velpic_signs_by_all_points_not_the_own_class() -> None:
    # Class 0 lies along +u, class 1 along -u (more points): over ALL points the mean of x·u is negative,
    # so both vectors point along -u, including class 0's, whose own points project positively.
    rng = np.random.default_rng(2)
    u = rng.normal(size=8)
    u /= np.linalg.norm(u)
    X = np.vstack([np.outer(rng.uniform(1, 2, 10), u), np.outer(-rng.uniform(1, 2, 30), u)])
    X += 0.01 * rng.normal(size=X.shape)
    y = np.repeat([0, 1], [10, 30])
    velpic = VeLPIC().fit(X, y)
    np.testing.assert_allclose(velpic.coef_, velpic_reference(X, y), atol=1e-5)
    assert (velpic.coef_ @ u < -0.99).all()


def test_velpic_coef_in_a_linear_layer_reproduces_predictions(blobs) -> None:
    X, y, X_test, _ = blobs
    velpic = VeLPIC().fit(X, y)
    layer = torch.nn.Linear(X.shape[1], 4)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(velpic.coef_))
        layer.bias.zero_()
        logits = layer(torch.from_numpy(X_test))
    np.testing.assert_array_equal(logits.argmax(1).numpy(), velpic.predict(X_test))


def test_velpic_streams_and_merges_exactly(blobs) -> None:
    X, y, X_test, _ = blobs
    full = VeLPIC().fit(X, y)
    perm = np.random.default_rng(3).permutation(len(y))
    streamed = VeLPIC()
    for idx in np.array_split(perm, 5):
        streamed.partial_fit(X[idx], y[idx], classes=[0, 1, 2, 3])
    merged = VeLPIC(solver="gram").fit(X[perm[:90]], y[perm[:90]]).merge(VeLPIC().fit(X[perm[90:]], y[perm[90:]]))
    for probe in (streamed, merged):
        np.testing.assert_allclose(probe.coef_, full.coef_, atol=1e-5)
        np.testing.assert_array_equal(probe.predict(X_test), full.predict(X_test))


# -- linear probe -----------------------------------------------------------------------------------------------------
def test_linear_probe_defaults_are_the_papers() -> None:
    params = LinearProbe().get_params()
    assert (params["lr"], params["epochs"], params["batch_size"]) == (1e-3, 20, 128)


def test_linear_probe_learns_and_is_seeded(blobs) -> None:
    X, y, X_test, y_test = blobs
    probe = LinearProbe(lr=0.02, epochs=60, random_state=3).fit(X, y)
    assert probe.score(X_test, y_test) > 0.9
    again = LinearProbe(lr=0.02, epochs=60, random_state=3).fit(X, y)
    np.testing.assert_array_equal(again.coef_, probe.coef_)
    other = LinearProbe(lr=0.02, epochs=60, random_state=4).fit(X, y)
    assert not np.array_equal(other.coef_, probe.coef_)
    proba = probe.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    logits = X_test @ probe.coef_.T + probe.intercept_
    np.testing.assert_array_equal(probe.predict(X_test), np.argmax(logits, axis=1))


def test_linear_probe_tensors_in_give_tensors_out(blobs) -> None:
    X, y, X_test, _ = blobs
    probe = LinearProbe(epochs=3).fit(torch.from_numpy(X), torch.from_numpy(y))
    pred = probe.predict(torch.from_numpy(X_test))
    assert isinstance(pred, torch.Tensor) and pred.dtype == torch.int64
    np.testing.assert_array_equal(pred.numpy(), probe.predict(X_test))
    assert isinstance(probe.predict_proba(torch.from_numpy(X_test)), torch.Tensor)


@pytest.mark.parametrize("probe", [NearestClassMean(), VeLPIC(), LinearProbe(epochs=2)], ids=lambda p: type(p).__name__)
def test_binary_decision_function_is_one_score_per_sample(blobs, probe) -> None:
    X, y, X_test, _ = blobs
    keep = y < 2
    probe.fit(X[keep], y[keep])
    scores = probe.decision_function(X_test)
    assert scores.shape == (len(X_test),)
    np.testing.assert_array_equal(probe.predict(X_test), np.where(scores > 0, 1, 0))


def test_baseline_input_errors(blobs) -> None:
    X, y, _, _ = blobs
    with pytest.raises(InputError, match="X has 2 features, but NearestClassMean is expecting 12"):
        NearestClassMean().fit(X, y).predict(X[:, :2])
    with pytest.raises(InputError, match="LinearProbe needs at least 2 classes; got 1 class"):
        LinearProbe().fit(X, np.ones(len(X)))
    with pytest.raises(InputError, match="epochs must be a number > 0; got 0"):
        LinearProbe(epochs=0).fit(X, y)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="got 1 NaN"):
        VeLPIC().fit(bad, y)


# -- registry ---------------------------------------------------------------------------------------------------------
# Settings for 245 rows in 12 isotropic dimensions: MASC at t = 0.99 would span nearly the whole space, and 20 epochs
# of 2 steps at lr 1e-3 barely move a linear layer. The registry passes these through to the estimators.
TOY_SETTINGS = {"masc": {"n_components": 1}, "linear": {"lr": 0.02}}


@pytest.mark.parametrize("name", sorted(PROBES))
def test_every_registry_entry_fits_and_predicts(blobs, name) -> None:
    X, y, X_test, y_test = blobs
    probe = make_probe(name, **TOY_SETTINGS.get(name, {}))
    probe.fit(X, y)
    pred = probe.predict(X_test)
    assert pred.shape == y_test.shape
    assert np.mean(pred == y_test) > 0.9  # four well-separated classes


def test_registry_sklearn_entries_are_configured_as_documented() -> None:
    knn = PROBES["knn"]()
    assert (knn.n_neighbors, knn.metric) == (5, "cosine")
    assert type(PROBES["lda"]()).__name__ == "LinearDiscriminantAnalysis"
    assert type(PROBES["qda"]()).__name__ == "QuadraticDiscriminantAnalysis"
    assert PROBES["masc"](0.5).n_components == 0.5


def test_unknown_probe_name_lists_the_closest() -> None:
    with pytest.raises(UnknownNameError, match=r"got 'mac' \(did you mean: masc"):
        make_probe("mac")
