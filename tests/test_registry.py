"""The probe registry (masc_probe.probes._registry): each ProbeSpec's capabilities checked against what its class
does, never against the registry itself: its constructor's signature, its base class, what it returns for tensors,
and scikit-learn's own probabilities."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from scipy.special import softmax

from masc_probe._choices import DEFAULT_PROBES, ISSUE_PROBES, PROBE_NAMES, PROBE_TEXT
from masc_probe.probes import PROBES
from masc_probe.probes._base import StatisticProbe
from masc_probe.probes._registry import SPECS, spec

SETTINGS = ("device", "max_memory", "n_components")
TOY = {"masc": {"n_components": 1}, "linear": {"lr": 0.02, "epochs": 60}}


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Three classes around non-negative centres, 30 rows each, 6 features."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 3, size=(3, 6))
    X = np.vstack([c + 0.3 * rng.normal(size=(30, 6)) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(3), 30)


def test_the_registry_holds_the_names_the_cli_offers_in_their_order() -> None:
    assert tuple(SPECS) == PROBE_NAMES == tuple(PROBES)
    assert set(DEFAULT_PROBES) <= set(PROBE_NAMES) and set(ISSUE_PROBES) <= set(PROBE_NAMES)
    assert tuple(PROBE_TEXT) == PROBE_NAMES  # every probe has its sentence name and card description, in order
    assert all(SPECS[name].name == name and PROBES[name] is SPECS[name].factory for name in PROBE_NAMES)


@pytest.mark.parametrize("name", PROBE_NAMES)
def test_the_settings_a_probe_gets_are_those_its_constructor_takes(name: str) -> None:
    takes = set(inspect.signature(SPECS[name].cls).parameters)
    given = SPECS[name].settings(device="cpu", max_memory=1 << 20, n_components=0.9)
    assert set(given) <= takes
    # Every shared setting its constructor takes is given, but scikit-learn LDA's n_components: the dimension of its
    # projection, another quantity.
    assert set(given) == {s for s in SETTINGS if s in takes} - ({"n_components"} if name == "lda" else set())
    assert SPECS[name].settings() == {}  # None leaves each to the probe's default


@pytest.mark.parametrize("name", PROBE_NAMES)
def test_streaming_and_moments_are_the_classes_own(name: str) -> None:
    entry = SPECS[name]
    assert entry.streams == issubclass(entry.cls, StatisticProbe)
    assert (entry.moments == 2) == bool(entry.streams and entry.cls._second_moment)
    assert entry.profile == hasattr(entry.cls, "predict_profile")
    assert entry.subspaces == hasattr(entry.cls, "n_components_")


@pytest.mark.parametrize("name", PROBE_NAMES)
def test_tensor_probes_answer_tensors_and_inputs_hand_numpy_to_the_others(name: str, blobs) -> None:
    X, y = blobs
    entry = SPECS[name]
    rows = entry.inputs(torch.from_numpy(X))
    assert isinstance(rows, torch.Tensor) == entry.tensors
    if entry.tensors:
        pred = entry.factory(**TOY.get(name, {})).fit(rows, torch.from_numpy(y)).predict(rows)
        assert isinstance(pred, torch.Tensor)


@pytest.mark.parametrize("name", PROBE_NAMES)
@pytest.mark.parametrize("k", [3, 2])
def test_class_scores_rank_as_the_probe_predicts_and_are_of_their_kind(name: str, k: int, blobs) -> None:
    X, y = blobs
    X, y = X[y < k], y[y < k]
    entry = SPECS[name]
    probe = entry.factory(**TOY.get(name, {})).fit(X, y)
    S = entry.class_scores(probe, X)
    assert S.shape == (len(X), k) and S.dtype == np.float32
    np.testing.assert_array_equal(probe.classes_[S.argmax(axis=1)], np.asarray(probe.predict(X)))
    if entry.score_kind == "log":  # softmax of log-posteriors (or logits) is the probe's own probabilities
        # (float32 scores: a log-likelihood near 100 keeps about 1e-5 of it)
        np.testing.assert_allclose(softmax(S.astype(np.float64), axis=1), probe.predict_proba(X), atol=1e-3)
    elif entry.score_kind == "shares":  # neighbour votes: fractions of k that sum to one
        np.testing.assert_allclose(S.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(S * probe.n_neighbors, np.round(S * probe.n_neighbors), atol=1e-5)
    else:  # similarities of unit vectors: the rows' cosines with each class (MASC) or mean (NCM), in [-1, 1]
        assert entry.score_kind == "similarity"
        if name != "velpic" and k > 2:  # VeLPIC's are projections x·v_c; two classes: a difference of two
            assert np.all(np.abs(S) <= 1 + 1e-5)


def test_spec_names_the_closest_probe_for_an_unknown_one() -> None:
    from masc_probe.errors import UnknownNameError

    assert spec("masc") is SPECS["masc"]
    with pytest.raises(UnknownNameError, match="probe must be one of masc, .*; got 'mas' "):
        spec("mas")
