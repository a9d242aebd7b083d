"""MASC's profile (every subspace size from one projection) against the float64 definition in test_masc."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masc_probe.errors import InputError
from masc_probe.probes import MinimumAngleSubspaceClassifier as MASC
from masc_probe.probes.masc import PROFILE_SIZES
from tests.test_masc import reference


def _data(solver: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = 30 if solver == "scatter" else 120  # gram: fewer rows per class than features
    n = 400 if solver == "scatter" else 200
    X = np.abs(rng.normal(size=(n, d))).astype(np.float32)
    y = rng.integers(0, 4, n)
    X[np.arange(n), y * 5] += 2.0 + rng.random(n).astype(np.float32)
    Xt = np.abs(rng.normal(size=(150, d))).astype(np.float32)
    yt = rng.integers(0, 4, 150)
    Xt[np.arange(150), yt * 5] += 1.0
    Xt[3] = 0.0  # no angle: class 0 at every size
    return X, y, Xt


def _clear_margin(cos: np.ndarray) -> np.ndarray:
    top = np.sort(cos, axis=1)
    return (top[:, -1] - top[:, -2]) > 1e-4


@pytest.mark.parametrize("solver", ["scatter", "gram"])
def test_profile_equals_the_definition_at_every_size(solver: str) -> None:
    X, y, Xt = _data(solver)
    masc = MASC(0.99, solver=solver).fit(X, y)
    frozen = masc.frozen(profile=PROFILE_SIZES)
    assert frozen.profile_sizes_ == list(PROFILE_SIZES)
    got = frozen.predict_profile(Xt)
    assert got.shape == (len(PROFILE_SIZES), len(Xt))
    for i, size in enumerate(PROFILE_SIZES):
        ks, cos, pred = reference(X, y, Xt, size)
        np.testing.assert_array_equal(frozen.profile_components_()[i], ks)
        if (ks == X.shape[1]).all():  # every subspace is the whole space: cos = 1 everywhere, a tie, the first class
            assert (got[i] == 0).all(), f"size {size}"
            continue
        clear = _clear_margin(cos)
        assert clear.mean() > 0.8  # the comparison covers most rows; near-ties may round either way
        np.testing.assert_array_equal(got[i][clear], pred[clear], err_msg=f"size {size}")
        assert got[i][3] == 0


def test_profile_survives_saving_and_agrees_with_the_fitted_size() -> None:
    X, y, Xt = _data("scatter", seed=1)
    masc = MASC(0.9).fit(X, y)
    frozen = masc.frozen(profile=PROFILE_SIZES)
    arrays, meta = frozen.to_state()
    back = MASC.from_state(arrays, meta, torch.device("cpu"))
    np.testing.assert_array_equal(back.predict_profile(Xt), frozen.predict_profile(Xt))
    at_fit = frozen.predict_profile(Xt)[PROFILE_SIZES.index(0.9)]
    assert (at_fit == masc.predict(Xt)).mean() > 0.99
    t = torch.from_numpy(Xt)
    assert isinstance(back.predict_profile(t), torch.Tensor)


def test_profile_budget_drops_large_sizes_but_never_the_fitted_one() -> None:
    X, y, Xt = _data("scatter", seed=2)
    d = X.shape[1]
    for fitted in (1, 0.999):
        small = MASC(fitted).fit(X, y).frozen(profile=PROFILE_SIZES, profile_max_bytes=4 * d * 4 * 2)  # 2 per class
        assert fitted in small.profile_sizes_
        assert set(small.profile_sizes_) | set(small.profile_dropped_) == set(PROFILE_SIZES)
    small = MASC(1).fit(X, y).frozen(profile=PROFILE_SIZES, profile_max_bytes=4 * d * 4 * 2)
    fits = [s for s in PROFILE_SIZES if (reference(X, y, Xt, s)[0] <= 2).all()]  # two columns per class at most
    assert 1 in fits and 2 in fits and 100 not in fits
    assert small.profile_sizes_ == fits
    assert small.profile_dropped_ == [s for s in PROFILE_SIZES if s not in fits]
    assert set(small.profile_sizes_) | set(small.profile_dropped_) == set(PROFILE_SIZES)


def test_profile_errors_are_one_line() -> None:
    X, y, Xt = _data("scatter")
    frozen = MASC(0.99).fit(X, y).frozen()
    with pytest.raises(InputError, match="keeps no profile"):
        frozen.predict_profile(Xt)
    with pytest.raises(InputError, match="n_components"):
        MASC(0.99).fit(X, y).predict_profile(Xt, sizes=(0.5, 0))


def test_segments_cut_each_class_at_its_distinct_sizes() -> None:
    """Written out by hand: class 0 keeps 3 columns cut at k = 1 and 3, class 1 none, class 2 two cut at 1 and 2.
    Segments 0-1 are class 0's, 2-3 class 2's; each (size, class) ends where its top-k_c ends in the segments'
    cumulative sum (leading zero column), or at its class's start for k_c = 0."""
    from masc_probe.probes._profile import _profile_segments

    ks = np.array([[1, 0, 2], [3, 0, 2], [1, 0, 1]])
    segment, hi, lo = _profile_segments(np.array([3, 0, 2]), ks)
    assert segment.tolist() == [0, 1, 1, 2, 3]
    assert lo.tolist() == [0, 2, 2, 4]
    assert hi.tolist() == [[1, 2, 4], [2, 2, 4], [1, 2, 3]]


@pytest.mark.parametrize("from_stack", [False, True])
def test_a_class_with_no_columns_and_sizes_sharing_k_score_as_the_definition(from_stack: bool) -> None:
    """A profile built by hand from known orthonormal vectors: class 1 has none (k = 0: cos = 0, never chosen over
    a positive cosine), sizes 0 and 1 share class 0's k. Held whole as rows, or partly read from a fitted stack
    (class 0's top 2 and class 2's top 1 there, class 1's stack columns a complement the profile must not read):
    predictions against norms computed here in float64."""
    from masc_probe.probes._profile import _Profile

    rng = np.random.default_rng(3)
    d = 6
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    kmax, ks = np.array([3, 0, 2]), np.array([[2, 0, 1], [2, 0, 2], [3, 0, 2]])
    if from_stack:
        stack = (f32(np.concatenate([Q[:, :2], Q[:, 5:6], Q[:, 3:4]], axis=1)), np.array([2, 1, 1]))
        shared, rows = np.array([2, 0, 1]), f32(np.stack([Q[:, 2], Q[:, 4]]))
    else:
        stack, shared = (f32(np.zeros((d, 0))), np.array([0, 0, 0])), np.array([0, 0, 0])
        rows = f32(np.concatenate([Q[:, :3], Q[:, 3:5]], axis=1).T)
    profile = _Profile(stack, shared, rows, kmax, [0.5, 0.9, 3], ks, [])
    X = rng.normal(size=(200, d)).astype(np.float32)
    X[7] = 0.0
    got = profile.predict(torch.from_numpy(X)).numpy()
    x64 = X.astype(np.float64)
    for s in range(3):
        inside0 = np.sum((x64 @ Q[:, : ks[s, 0]]) ** 2, axis=1)
        inside2 = np.sum((x64 @ Q[:, 3 : 3 + ks[s, 2]]) ** 2, axis=1)
        want = np.where(inside2 > inside0, 2, 0)
        clear = np.abs(inside2 - inside0) > 1e-4 * np.sum(x64**2, axis=1)
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(got[s][clear], want[clear])
        assert got[s][7] == 0
    assert set(np.unique(got)) <= {0, 2}


def test_the_runner_reads_the_fitted_size_from_the_profile_and_scores_other_sizes_directly() -> None:
    """With the profile on, MASC's test accuracy at its fitted size is read from the profile's row; a fitted size the
    profile lacks (n_components=3 here) is scored by predict. Both equal MASC fitted directly on the same rows."""
    from masc_probe.runner import ProbeRunner
    from tests._runner_helpers import data, mlp, tuples

    x, yc, y = data(150)
    xt, _, yt = data(60, seed=1)
    model = mlp()
    for n_components, in_profile in ((0.9, True), (3, False)):
        runner = ProbeRunner(model, ["1", "3"], probes=("masc",), labels="true", progress=False, controls=(),
                             probe_kwargs={"masc": {"n_components": n_components}})
        runner.fit(tuples(x, yc, y, 32))
        report = runner.evaluate([(xt, yt)])
        assert (n_components in runner.estimators_[("1", "masc", "true")].profile_sizes_) == in_profile
        feats = runner.features(x)
        test_feats = runner.features(xt)
        for r in report.results:
            direct = MASC(n_components).fit(feats[r["layer"]].numpy(), y.numpy())
            acc = float((direct.predict(test_feats[r["layer"]].numpy()) == yt.numpy()).mean())
            assert r["test_accuracy"] == pytest.approx(acc), (n_components, r["layer"])
        runner.close()


def test_a_profile_saved_whole_before_it_read_the_stack_loads_and_predicts_the_same() -> None:
    """Files written before the profile read its top vectors from the fitted stack hold every vector in
    profile_basis and no "shared": such a file (rebuilt here from the fitted MASC's own basis) predicts as now."""
    X, y, Xt = _data("gram", seed=4)
    masc = MASC(0.9).fit(X, y)
    frozen = masc.frozen(profile=PROFILE_SIZES)
    arrays, meta = frozen.to_state()
    kmax = meta["profile"]["kmax"]
    arrays["profile_basis"] = torch.cat([s.basis_rows(0, k) for s, k in zip(masc._solved().subspaces, kmax)])
    del meta["profile"]["shared"]
    old = MASC.from_state(arrays, meta, torch.device("cpu"))
    np.testing.assert_array_equal(old.predict_profile(Xt), frozen.predict_profile(Xt))


def test_column_runs_sum_as_index_add_does() -> None:
    # Runs of equal consecutive entries (a stack's classes, a profile's segments), a skipped dummy among them and
    # an output column fed by two separate runs: the same sums as index_add_ over the columns, in float64.
    from masc_probe.probes._base import add_column_runs, column_runs

    index = np.array([0, 0, 0, 3, 3, 1, 5, 5, 5, 5, 0, 2, 2, 5], dtype=np.int64)
    runs = column_runs(torch.from_numpy(index), skip=5)
    assert runs == [(0, 3, 0), (3, 5, 3), (5, 6, 1), (10, 11, 0), (11, 13, 2)]
    values = torch.randn(7, len(index), dtype=torch.float64)
    expected = torch.zeros(7, 6, dtype=torch.float64).index_add_(1, torch.from_numpy(index), values)
    expected[:, 5] = 0  # the skipped segment stays as it was
    got = add_column_runs(torch.zeros(7, 6, dtype=torch.float64), values, runs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert column_runs(np.zeros(0, np.int64)) == []
