"""MinimumAngleSubspaceClassifier against a float64 reference written here from DESIGN.md's definition."""

from __future__ import annotations

import gc
import os
import pickle

import numpy as np
import pytest
import torch

from masc_probe.errors import InputError, UnknownNameError
from masc_probe.probes import MinimumAngleSubspaceClassifier as MASC
from masc_probe.probes import masc as masc_module

THRESHOLDS = [0.25, 0.5, 0.9, 0.99, 1, 5]


# -- the reference: the definition, in float64, nothing shared with the package ---------------------------------------
def reference(X: np.ndarray, y: np.ndarray, X_test: np.ndarray, n_components: float | int):
    """k_c, cosines (n_test, C) and predictions, straight from the definition."""
    ks, cosines = [], []
    norms = np.linalg.norm(X_test.astype(np.float64), axis=1)
    for c in np.unique(y):
        Xc = X[y == c].astype(np.float64)
        S = Xc.T @ Xc  # uncentered scatter
        w, V = np.linalg.eigh(S)
        w, V = w[::-1], V[:, ::-1]
        rank = int(np.count_nonzero(w > w[0] * S.shape[0] * np.finfo(np.float64).eps))
        if isinstance(n_components, float):
            ratios = np.cumsum(w) / np.trace(S)
            k = min(int(np.count_nonzero(ratios <= n_components)) + 1, rank)
        else:
            k = min(n_components, rank)
        ks.append(k)
        projected = np.linalg.norm(X_test.astype(np.float64) @ V[:, :k], axis=1)
        cosines.append(np.divide(projected, norms, out=np.zeros_like(norms), where=norms > 0))
    cosines = np.stack(cosines, axis=1)
    return np.array(ks), cosines, np.unique(y)[np.argmax(cosines, axis=1)]


def structured(n_per_class, d: int = 48, rank: int = 6, noise: float = 0.1, seed: int = 1, sample_seed: int = 0):
    """Non-negative (post-ReLU-like) data: per class a mean direction plus a rank-6 subspace with decaying scales,
    plus noise. ``seed`` fixes the classes, ``sample_seed`` the draws from them."""
    params, rng = np.random.default_rng(seed), np.random.default_rng(sample_seed)
    X, y = [], []
    for c, n in enumerate(n_per_class):
        mean = params.uniform(0, 1, d)
        basis = params.normal(size=(rank, d))
        rows = mean + (rng.normal(size=(n, rank)) * 0.8 ** np.arange(rank)) @ basis + noise * rng.normal(size=(n, d))
        X.append(np.maximum(rows, 0))
        y += [c] * n
    X = np.vstack(X).astype(np.float32)
    y = np.array(y)
    perm = rng.permutation(len(y))
    return X[perm], y[perm]


@pytest.fixture(scope="module")
def data():
    # Class sizes on both sides of d = 48: the auto solver keeps rows for some classes and a scatter for others.
    # Against their true labels the reference scores 0.49 (t = 0.25), 0.65 (0.5), 0.995 (0.9) and 1.0 (0.99) here.
    X, y = structured([30, 40, 120, 200, 60])
    X_test, _ = structured([40] * 5, sample_seed=5)
    return X, y, X_test


# -- exactness --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["scatter", "gram", "auto"])
@pytest.mark.parametrize("n_components", THRESHOLDS)
def test_matches_float64_reference(data, solver, n_components) -> None:
    X, y, X_test = data
    ks, cos, pred = reference(X, y, X_test, n_components)
    masc = MASC(n_components, solver=solver).fit(X, y)
    np.testing.assert_array_equal(masc.n_components_, ks)
    np.testing.assert_array_equal(masc.predict(X_test), pred)
    np.testing.assert_allclose(masc.cosines(X_test), cos, atol=2e-5)


@pytest.mark.parametrize("solver", ["scatter", "gram", "auto"])
def test_stack_columns_span_the_reference_subspaces_and_are_held_once(data, solver) -> None:
    """Each class's block of the stack is an orthonormal basis of the float64 reference's top-k_c eigenvectors
    (equal projectors), the stack is held as rows (its transpose, what is saved, needs no copy), and each class's
    kept basis is a view of it, not a second copy."""
    X, y, _ = data
    masc = MASC(0.9, solver=solver).fit(X, y)
    W, segment, flip = masc._solution.stacked
    assert not bool(flip.any())  # d = 48 and k_c <= 6: every class is scored from its basis
    assert W.T.is_contiguous()
    storage = W.untyped_storage().data_ptr()
    for c, k in zip(np.unique(y), masc.n_components_, strict=True):
        Xc = X[y == c].astype(np.float64)
        _, V = np.linalg.eigh(Xc.T @ Xc)
        ref = V[:, ::-1][:, :k]
        block = W[:, (segment == c).nonzero().flatten()].double().numpy()
        assert block.shape == (X.shape[1], k)
        np.testing.assert_allclose(block.T @ block, np.eye(k), atol=1e-5)
        np.testing.assert_allclose(block @ block.T, ref @ ref.T, atol=1e-4)
    for sub in masc._solution.subspaces:
        assert sub._basis.untyped_storage().data_ptr() == storage


def test_auto_solver_mixes_forms_by_class_size(data) -> None:
    X, y, _ = data
    masc = MASC(solver="auto").fit(X, y)
    counts = np.bincount(y)
    assert masc._solution.solvers == ["gram" if n <= X.shape[1] else "scatter" for n in counts]
    assert masc.solver_ == "mixed"


def test_auto_keeps_rows_when_a_scatter_does_not_fit(data) -> None:
    X, y, X_test = data
    d = X.shape[1]
    tight = MASC(0.9, max_memory=16 * d * d + 100).fit(X, y)  # room for one scatter class; rows go to disk
    assert tight._solution.solvers.count("scatter") == 1 and tight._stats.spill_dir is not None
    full = MASC(0.9).fit(X, y)
    np.testing.assert_array_equal(tight.n_components_, full.n_components_)
    np.testing.assert_array_equal(tight.predict(X_test), full.predict(X_test))
    tight.close()


def test_solvers_agree(data) -> None:
    X, y, X_test = data
    scatter = MASC(0.9, solver="scatter").fit(X, y)
    gram = MASC(0.9, solver="gram").fit(X, y)
    assert scatter.solver_ == "scatter" and gram.solver_ == "gram"
    np.testing.assert_array_equal(scatter.n_components_, gram.n_components_)
    np.testing.assert_array_equal(scatter.predict(X_test), gram.predict(X_test))
    np.testing.assert_allclose(scatter.cosines(X_test), gram.cosines(X_test), atol=2e-5)
    for a, b in zip(scatter.components_, gram.components_, strict=True):
        # Same subspaces: equal projectors (bases may differ by sign or rotation within ties).
        np.testing.assert_allclose(a.T @ a, b.T @ b, atol=1e-4)
        np.testing.assert_allclose(a @ a.T, np.eye(len(a)), atol=1e-4)


@pytest.mark.parametrize("with_classes", [True, False])
def test_partial_fit_shuffled_batches_equals_fit(data, with_classes) -> None:
    X, y, X_test = data
    full = MASC(0.9).fit(X, y)
    rng = np.random.default_rng(3)
    perm = rng.permutation(len(y))
    streamed = MASC(0.9)
    for idx in np.array_split(perm, [7, 50, 51, 200, 333]):  # uneven batches, one of a single row
        streamed.partial_fit(X[idx], y[idx], classes=np.unique(y) if with_classes else None)
        streamed.predict(X_test[:3])  # usable after any batch
    np.testing.assert_array_equal(streamed.classes_, full.classes_)
    assert streamed._solution.solvers == full._solution.solvers  # rows turn into a scatter once n_c > d
    np.testing.assert_array_equal(streamed.n_components_, full.n_components_)
    np.testing.assert_array_equal(streamed.predict(X_test), full.predict(X_test))
    np.testing.assert_allclose(streamed.cosines(X_test), full.cosines(X_test), atol=2e-5)


def test_prediction_after_partial_fit_sees_new_data(data) -> None:
    X, y, X_test = data
    masc = MASC(0.9).partial_fit(X[:100], y[:100])
    first = masc.cosines(X_test)
    masc.partial_fit(X[100:], y[100:])
    np.testing.assert_allclose(masc.cosines(X_test), MASC(0.9).fit(X, y).cosines(X_test), atol=2e-5)
    assert not np.allclose(first, masc.cosines(X_test), atol=1e-3)


@pytest.mark.parametrize("solvers", [("auto", "auto"), ("scatter", "gram"), ("gram", "scatter")])
def test_merge_two_shards_equals_fit_on_all(data, solvers) -> None:
    X, y, X_test = data
    half = len(y) // 2
    a = MASC(0.9, solver=solvers[0]).fit(X[:half], y[:half])
    b = MASC(0.9, solver=solvers[1]).partial_fit(X[half:], y[half:])
    merged = a.merge(b)
    full = MASC(0.9).fit(X, y)
    np.testing.assert_array_equal(merged.n_components_, full.n_components_)
    np.testing.assert_array_equal(merged.predict(X_test), full.predict(X_test))
    np.testing.assert_allclose(merged.cosines(X_test), full.cosines(X_test), atol=2e-5)


def test_additive_statistics_sum_like_an_all_reduce(data) -> None:
    X, y, X_test = data
    classes = np.unique(y)
    shards = [MASC(0.9).partial_fit(X[i::3], y[i::3], classes=classes) for i in range(3)]
    stats = [s.additive_statistics() for s in shards]
    summed = {key: sum(s[key] for s in stats) for key in stats[0]}
    counts = np.bincount(y)
    np.testing.assert_array_equal(summed["count"].numpy(), counts)
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(summed["scatter"][2].numpy(), X64[y == 2].T @ X64[y == 2], rtol=1e-5, atol=1e-4)
    reduced = shards[0].load_additive_statistics(summed)
    full = MASC(0.9).fit(X, y)
    np.testing.assert_array_equal(reduced.n_components_, full.n_components_)
    np.testing.assert_array_equal(reduced.predict(X_test), full.predict(X_test))


def test_gram_rows_spill_to_disk_and_are_removed(data) -> None:
    X, y, X_test = data
    in_memory = MASC(0.9, solver="gram").fit(X, y)
    budget = 20 * X.shape[1] * 4  # twenty rows
    spilled = MASC(0.9, solver="gram", max_memory=budget)
    for idx in np.array_split(np.arange(len(y)), 9):
        spilled.partial_fit(X[idx], y[idx])
    folder = spilled._stats.spill_dir
    assert folder is not None and len(os.listdir(folder)) == len(np.unique(y))
    np.testing.assert_array_equal(spilled.predict(X_test), in_memory.predict(X_test))
    np.testing.assert_allclose(spilled.cosines(X_test, n_components=0.99), in_memory.cosines(X_test, 0.99), atol=2e-5)
    clone = pickle.loads(pickle.dumps(spilled))  # a pickle carries the rows, not the folder
    spilled.close()
    assert not os.path.exists(folder)
    with pytest.raises(InputError, match="closed"):
        spilled.partial_fit(X[:5], y[:5])
    np.testing.assert_array_equal(clone.predict(X_test), in_memory.predict(X_test))
    np.testing.assert_allclose(clone.cosines(X_test, n_components=5), in_memory.cosines(X_test, 5), atol=2e-5)

    again = MASC(0.9, solver="gram", max_memory=budget).fit(X, y)
    folder = again._stats.spill_dir
    assert folder is not None and os.path.isdir(folder)
    del again
    gc.collect()
    assert not os.path.exists(folder)


# -- invariances ------------------------------------------------------------------------------------------------------
def test_scaling_a_test_vector_never_changes_its_prediction(data) -> None:
    X, y, X_test = data
    masc = MASC(0.9).fit(X, y)
    pred = masc.predict(X_test)
    for scale in (1e-3, 0.37, 7.0, 1e4, -2.5):
        np.testing.assert_array_equal(masc.predict(X_test * scale), pred)
        np.testing.assert_allclose(masc.cosines(X_test * scale), masc.cosines(X_test), atol=1e-5)


def test_rotating_all_data_never_changes_a_prediction(data) -> None:
    X, y, X_test = data
    q, _ = np.linalg.qr(np.random.default_rng(11).normal(size=(X.shape[1], X.shape[1])))
    q = q.astype(np.float32)
    for n_components in (0.5, 0.99, 5):
        plain = MASC(n_components).fit(X, y)
        rotated = MASC(n_components).fit(X @ q, y)
        np.testing.assert_array_equal(rotated.n_components_, plain.n_components_)
        np.testing.assert_array_equal(rotated.predict(X_test @ q), plain.predict(X_test))


def test_opposite_rays_are_indistinguishable() -> None:
    # Why MASC carries scikit-learn's poor_score tag: the angle to a line ignores the side of the origin.
    u = np.array([[3.0, 4.0]]) / 5
    X = np.vstack([u * np.arange(1, 11)[:, None], -u * np.arange(1, 11)[:, None]])
    y = np.repeat([0, 1], 10)
    masc = MASC(1).fit(X, y)
    np.testing.assert_allclose(masc.cosines(X), 1.0, atol=1e-6)
    assert (masc.predict(X) == 0).all()  # a tie everywhere, which goes to the lowest class


# -- edge cases -------------------------------------------------------------------------------------------------------
def test_zero_vectors_score_zero_and_predict_the_first_class(data) -> None:
    X, y, _ = data
    masc = MASC(0.9).fit(X, y)
    zeros = np.zeros((3, X.shape[1]), dtype=np.float32)
    cos = masc.cosines(zeros)
    assert not np.isnan(cos).any()
    np.testing.assert_array_equal(cos, 0.0)
    np.testing.assert_array_equal(masc.predict(zeros), masc.classes_[0])
    assert not torch.isnan(masc.cosines(torch.from_numpy(zeros))).any()


@pytest.mark.parametrize("n_components", [0.5, 0.99, 1, 5])
def test_single_sample_classes(data, n_components) -> None:
    X, y, X_test = data
    y = y.copy()
    rows = [np.flatnonzero(y == 0)[0], np.flatnonzero(y == 1)[0]]
    y[rows] = [7, 8]  # two classes of one sample each
    ks, cos, pred = reference(X, y, X_test, n_components)
    masc = MASC(n_components).fit(X, y)
    assert list(masc.n_components_[-2:]) == [1, 1]
    np.testing.assert_array_equal(masc.n_components_, ks)
    np.testing.assert_allclose(masc.cosines(X_test), cos, atol=2e-5)
    np.testing.assert_array_equal(masc.predict(X_test), pred)
    x = X[rows[0]] / np.linalg.norm(X[rows[0]])
    np.testing.assert_allclose(np.abs(masc.components_[-2][0]), np.abs(x), atol=1e-5)


def test_a_declared_class_without_samples_scores_zero(data) -> None:
    X, y, X_test = data
    masc = MASC(0.9).partial_fit(X, y, classes=[0, 1, 2, 3, 4, 5])
    assert masc.n_components_[-1] == 0
    np.testing.assert_array_equal(masc.cosines(X_test)[:, -1], 0.0)
    assert 5 not in masc.predict(X_test)


# -- thresholds without refitting -------------------------------------------------------------------------------------
def test_cosines_for_another_threshold_equal_a_refit_without_decomposing_again(data, monkeypatch) -> None:
    X, y, X_test = data
    masc = MASC(0.5).fit(X, y)
    refits = {t: MASC(t).fit(X, y) for t in (0.25, 0.9, 0.99, 1, 5)}
    calls = []
    original = masc_module.decompose
    monkeypatch.setattr(masc_module, "decompose", lambda m: calls.append(m.shape) or original(m))
    from scipy.linalg import lapack

    monkeypatch.setattr(lapack, "ssytrd", lambda *a, **k: calls.append("ssytrd"))
    monkeypatch.setattr(torch.linalg, "eigh", lambda *a, **k: calls.append("eigh"))
    for t, refit in refits.items():
        np.testing.assert_allclose(masc.cosines(X_test, n_components=t), refit.cosines(X_test), atol=2e-5)
    np.testing.assert_array_equal(masc.cosines(X_test, n_components=0.5), masc.cosines(X_test))
    assert calls == []
    monkeypatch.undo()
    assert calls == []


# -- tensors ----------------------------------------------------------------------------------------------------------
def _check_tensor_round_trip(device: str, data) -> None:
    X, y, X_test = data
    expected = MASC(0.9).fit(X, y)
    masc = MASC(0.9).fit(torch.from_numpy(X).to(device), torch.from_numpy(y).to(device))
    Xt = torch.from_numpy(X_test).to(device)
    pred = masc.predict(Xt)
    assert isinstance(pred, torch.Tensor) and pred.device.type == device
    np.testing.assert_array_equal(pred.cpu().numpy(), expected.predict(X_test))
    cos = masc.cosines(Xt, n_components=5)
    assert isinstance(cos, torch.Tensor) and cos.device.type == device and cos.shape == (len(X_test), 5)
    np.testing.assert_allclose(cos.cpu().numpy(), expected.cosines(X_test, 5), atol=2e-5)
    assert masc.decision_function(Xt).device.type == device
    assert masc.score(Xt, torch.from_numpy(expected.predict(X_test))) == 1.0
    # numpy in, numpy out, from the same tensor-fitted probe
    assert isinstance(masc.predict(X_test), np.ndarray)


def test_torch_tensors_in_give_tensors_out_cpu(data) -> None:
    _check_tensor_round_trip("cpu", data)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_tensors_in_give_tensors_out_cuda(data) -> None:
    _check_tensor_round_trip("cuda", data)
    X, y, X_test = data
    masc = MASC(0.9, device="cuda").fit(X, y)  # numpy in, math on the GPU, numpy out
    assert masc._stats.device.type == "cuda"
    np.testing.assert_array_equal(masc.predict(X_test), MASC(0.9).fit(X, y).predict(X_test))


def test_dense_route_agrees_with_the_tridiagonal_route(data) -> None:
    # CUDA uses the dense torch.linalg.eigh route; check it on CPU against the LAPACK route CPU fits take.
    from masc_probe.probes._eigen import _DenseEigen, _TridiagonalEigen

    X, y, _ = data
    Xc = torch.from_numpy(X[y == 3])
    scatter = Xc.T @ Xc
    dense, tridiagonal = _DenseEigen(scatter), _TridiagonalEigen(scatter.numpy())
    np.testing.assert_allclose(dense.values, tridiagonal.values, rtol=1e-4, atol=1e-4 * dense.values[0])
    assert dense.rank == tridiagonal.rank
    a, b = dense.vectors(10).double(), tridiagonal.vectors(10).double()
    np.testing.assert_allclose((a @ a.T).numpy(), (b @ b.T).numpy(), atol=1e-4)


# -- shapes and errors ------------------------------------------------------------------------------------------------
def test_binary_decision_function_is_one_score_per_sample(data) -> None:
    X, y, X_test = data
    keep = y < 2
    masc = MASC(0.9).fit(X[keep], y[keep])
    scores = masc.decision_function(X_test)
    cos = masc.cosines(X_test)
    assert scores.shape == (len(X_test),)
    np.testing.assert_allclose(scores, cos[:, 1] - cos[:, 0], atol=1e-6)
    np.testing.assert_array_equal(masc.predict(X_test), np.where(scores > 0, 1, 0))


def test_fitted_attributes(data) -> None:
    X, y, _ = data
    masc = MASC(0.9).fit(X, y)
    assert masc.n_features_in_ == X.shape[1]
    np.testing.assert_array_equal(masc.classes_, np.unique(y))
    assert masc.n_components_.shape == (5,)
    assert [c.shape for c in masc.components_] == [(k, X.shape[1]) for k in masc.n_components_]


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2, 0, -3, True, "0.9", None])
def test_n_components_out_of_range(data, bad) -> None:
    X, y, _ = data
    with pytest.raises(InputError, match=r"n_components must be a float in \(0, 1\) or an int >= 1; got"):
        MASC(bad).fit(X, y)
    with pytest.raises(InputError, match="n_components must be"):
        MASC(0.9).fit(X, y).cosines(X, n_components=bad if bad is not None else -1)


def test_input_errors_name_expected_and_got(data) -> None:
    X, y, _ = data
    masc = MASC(0.9).fit(X, y)
    with pytest.raises(InputError, match="X has 3 features, but MinimumAngleSubspaceClassifier is expecting 48"):
        masc.predict(X[:, :3])
    with pytest.raises(InputError, match="X has 3 features.*expecting 48"):
        masc.predict(torch.from_numpy(X[:, :3]))
    with pytest.raises(InputError, match="needs at least 2 classes; got 1 class"):
        MASC().fit(X, np.zeros(len(X)))
    for value, word in ((np.nan, "1 NaN and 0 inf"), (np.inf, "0 NaN and 1 inf")):
        bad = X.copy()
        bad[4, 2] = value
        with pytest.raises(InputError, match=f"finite values; got {word}"):
            MASC().fit(bad, y)
        with pytest.raises(InputError, match=word):
            masc.predict(bad)
        with pytest.raises(InputError, match=word):
            masc.predict(torch.from_numpy(bad))
    from masc_probe.probes._inputs import _check_finite

    _check_finite(torch.full((4, 4), 3e38))  # huge but finite: the fast sum overflows, the exact check passes
    with pytest.raises(UnknownNameError, match="did you mean: gram"):
        MASC(solver="grm").fit(X, y)
    with pytest.raises(InputError, match="classes must match the first partial_fit call"):
        MASC().partial_fit(X, y, classes=np.unique(y)).partial_fit(X, y, classes=[0, 1])
    with pytest.raises(InputError, match=r"only the classes given at the first partial_fit \[0, 1, 2, 3, 4\]; got \[9"):
        MASC().partial_fit(X, y, classes=np.unique(y)).partial_fit(X[:2], [9, 9])
    with pytest.raises(InputError, match="max_memory must be a positive number of bytes"):
        MASC(max_memory=-5).fit(X, y)


def test_decomposition_runs_on_one_thread_by_default(data, monkeypatch) -> None:
    from scipy.linalg import lapack

    seen = []
    original = lapack.ssytrd
    monkeypatch.setattr(lapack, "ssytrd", lambda *a, **k: seen.append(torch.get_num_threads()) or original(*a, **k))
    from masc_probe.probes import _threads

    monkeypatch.setattr(_threads, "SMALL_WORK", 0)  # every call counts as large: only the decomposition is limited
    before = torch.get_num_threads()
    X, y, _ = data
    MASC(0.9).fit(X, y)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
    monkeypatch.setenv("MASC_PROBE_THREADS", "0")  # 0: leave the libraries' own setting
    seen.clear()
    MASC(0.9).fit(X, y)
    assert seen and set(seen) == {before}
    monkeypatch.setenv("MASC_PROBE_THREADS", "two")
    with pytest.raises(InputError, match="MASC_PROBE_THREADS must be an integer >= 0; got 'two'"):
        MASC(0.9).fit(X, y)
