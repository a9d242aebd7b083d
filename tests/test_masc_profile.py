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
