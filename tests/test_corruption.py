"""Label corruption: seeded, per-sample, at the requested rate, with each mode's defining property."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from masc_probe.data.corruption import CIFAR10_ASYMMETRIC, MODES, corrupt_labels, corruption_summary
from masc_probe.errors import InputError, UnknownNameError

K, N, P = 10, 50_000, 0.8


@pytest.fixture(scope="module")
def y() -> np.ndarray:
    return np.random.default_rng(1234).integers(0, K, N)


def _within(observed: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    """Binomial bound: |observed − expected| ≤ sigmas · sqrt(q(1−q)/n)."""
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("mode", ["random", "symmetric", "shuffle"])
def test_same_seed_same_labels_and_other_seed_other_labels(y: np.ndarray, mode: str) -> None:
    a = corrupt_labels(y, P, num_classes=K, mode=mode, seed=7)
    b = corrupt_labels(y, P, num_classes=K, mode=mode, seed=7)
    c = corrupt_labels(y, P, num_classes=K, mode=mode, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.5
    assert a.dtype == np.int64 and a.shape == y.shape


def test_random_mode_realized_rate_is_p_times_k_minus_one_over_k(y: np.ndarray) -> None:
    out = corrupt_labels(y, P, num_classes=K, mode="random", seed=0)
    realized = float(np.mean(out != y))
    assert _within(realized, P * (K - 1) / K, N), realized  # 0.72 ± 0.010
    summary = corruption_summary(y, out, mode="random", rate=P, seed=0)
    assert summary["realized_rate"] == realized and summary["n_changed"] == int(np.sum(out != y))
    assert summary["n"] == N and summary["mode"] == "random" and summary["rate"] == P


def test_random_mode_draws_uniform_classes(y: np.ndarray) -> None:
    # Among samples of true class 0, the corrupted label is 0 w.p. (1 − p) + p/K and each other class w.p. p/K.
    out = corrupt_labels(y, P, num_classes=K, mode="random", seed=0)[y == 0]
    expected = np.full(K, P / K)
    expected[0] += 1 - P
    observed = np.bincount(out, minlength=K)
    assert stats.chisquare(observed, expected * observed.sum()).pvalue > 1e-4


def test_symmetric_never_keeps_the_true_label_and_flips_the_selected_share(y: np.ndarray) -> None:
    out = corrupt_labels(y, P, num_classes=K, mode="symmetric", seed=0)
    changed = out != y
    assert _within(float(changed.mean()), P, N)
    # New classes are uniform over the K − 1 others.
    others = out[changed & (y == 3)]
    counts = np.bincount(others, minlength=K)
    assert counts[3] == 0
    assert stats.chisquare(np.delete(counts, 3)).pvalue > 1e-4
    # Every selected sample changes: with p = 1 all of them do.
    assert np.all(corrupt_labels(y, 1.0, num_classes=K, mode="symmetric", seed=5) != y)
    # One selection serves every mode: what random changes, symmetric changes too (same seed).
    rand = corrupt_labels(y, P, num_classes=K, mode="random", seed=0)
    assert np.all(changed[rand != y])


def test_shuffle_keeps_the_histogram(y: np.ndarray) -> None:
    out = corrupt_labels(y, P, num_classes=K, mode="shuffle", seed=0)
    np.testing.assert_array_equal(np.bincount(out, minlength=K), np.bincount(y, minlength=K))
    # Permuting a p-subset of labels changes about p(K−1)/K of them when classes are balanced.
    assert _within(float(np.mean(out != y)), P * (K - 1) / K, N)


def test_asymmetric_follows_the_cifar10_pairs(y: np.ndarray) -> None:
    out = corrupt_labels(y, P, num_classes=K, mode="asymmetric", seed=0, mapping="cifar10")
    pairs = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}  # truck→automobile, bird→airplane, deer→horse, cat↔dog
    assert pairs == CIFAR10_ASYMMETRIC
    changed = out != y
    for src in range(K):
        members = y == src
        if src in pairs:
            assert np.all(out[members & changed] == pairs[src])
            assert _within(float(changed[members].mean()), P, int(members.sum()))
        else:
            assert not changed[members].any()
    full = corrupt_labels(y, 1.0, num_classes=K, mode="asymmetric", mapping="cifar10")
    np.testing.assert_array_equal(full, [pairs.get(int(v), int(v)) for v in y])


def test_asymmetric_with_a_user_mapping_and_refusing_to_guess() -> None:
    y = np.arange(4).repeat(50)
    out = corrupt_labels(y, 1.0, num_classes=4, mode="asymmetric", mapping={0: 2})
    np.testing.assert_array_equal(out, np.where(y == 0, 2, y))
    with pytest.raises(InputError, match="mapping"):
        corrupt_labels(y, 0.5, num_classes=4, mode="asymmetric")
    with pytest.raises(InputError, match="10 classes"):
        corrupt_labels(y, 0.5, num_classes=4, mode="asymmetric", mapping="cifar10")
    with pytest.raises(InputError, match="asymmetric"):
        corrupt_labels(y, 0.5, num_classes=4, mode="random", mapping={0: 1})


@pytest.mark.parametrize("mode", ["random", "symmetric", "asymmetric"])
def test_labels_follow_the_sample_index_not_the_order(y: np.ndarray, mode: str) -> None:
    mapping = "cifar10" if mode == "asymmetric" else None
    full = corrupt_labels(y, P, num_classes=K, mode=mode, seed=3, mapping=mapping)
    perm = np.random.default_rng(0).permutation(N)
    shuffled = corrupt_labels(y[perm], P, num_classes=K, mode=mode, seed=3, mapping=mapping, indices=perm)
    np.testing.assert_array_equal(shuffled, full[perm])
    part = corrupt_labels(y[1000:1100], P, num_classes=K, mode=mode, seed=3, mapping=mapping,
                          indices=np.arange(1000, 1100))
    np.testing.assert_array_equal(part, full[1000:1100])


def test_edge_rates_and_inputs() -> None:
    y = np.array([0, 1, 2, 3, 4] * 20)
    np.testing.assert_array_equal(corrupt_labels(y, 0.0, mode="symmetric"), y)
    assert corrupt_labels(y, 1.0, mode="random").max() <= 4  # num_classes defaults to max + 1
    out = corrupt_labels(torch.tensor(y), 0.5, num_classes=5, seed=2)
    np.testing.assert_array_equal(out, corrupt_labels(y, 0.5, num_classes=5, seed=2))
    assert corrupt_labels(np.empty(0, dtype=int), 0.5, num_classes=3).shape == (0,)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "0.5", True])
def test_rate_outside_unit_interval_is_refused(rate: object) -> None:
    with pytest.raises(InputError, match="rate"):
        corrupt_labels([0, 1], rate, num_classes=2)  # type: ignore[arg-type]


def test_bad_mode_labels_and_seed() -> None:
    with pytest.raises(UnknownNameError) as info:
        corrupt_labels([0, 1], 0.5, mode="symetric")
    assert all(m in str(info.value) for m in MODES) and "\n" not in str(info.value)
    with pytest.raises(InputError, match=r"\[0, 3\)"):
        corrupt_labels([0, 3], 0.5, num_classes=3)
    with pytest.raises(InputError, match="seed"):
        corrupt_labels([0, 1], 0.5, seed=-1)
    with pytest.raises(InputError, match="1-D"):
        corrupt_labels([[0, 1]], 0.5)
    with pytest.raises(InputError, match="integers"):
        corrupt_labels([0.5, 1.0], 0.5)


# --- the MASC authors' recipe ----------------------------------------------------------------------------------------
def _authors_numpy(labels: np.ndarray, p: float, k: int, seed: int) -> np.ndarray:
    """The authors' released code, written out with numpy's global generator as they call it."""
    out = labels.copy()
    np.random.seed(seed)
    mask = np.random.rand(len(out)) <= p
    out[mask] = np.random.choice(k, mask.sum())
    return out


@pytest.mark.parametrize(("p", "seed"), [(0.8, 42), (0.2, 42), (0.5, 7), (1.0, 42)])
def test_authors_mode_is_the_authors_numpy_recipe_label_for_label(y: np.ndarray, p: float, seed: int) -> None:
    state = np.random.get_state()
    try:
        expected = _authors_numpy(y[:5000], p, K, seed)
    finally:
        np.random.set_state(state)
    got = corrupt_labels(y[:5000], p, num_classes=K, mode="authors", seed=seed)
    np.testing.assert_array_equal(got, expected)
    assert np.mean(got != y[:5000]) > 0  # the recipe changed labels at all
    # It leaves numpy's global generator alone (the authors' code seeds it; a library must not).
    before = np.random.get_state()[1].copy()
    corrupt_labels(y[:100], p, num_classes=K, mode="authors", seed=seed)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_authors_mode_differs_from_the_hashed_random_mode_and_refuses_a_subset(y: np.ndarray) -> None:
    authors = corrupt_labels(y, P, num_classes=K, mode="authors", seed=42)
    hashed = corrupt_labels(y, P, num_classes=K, mode="random", seed=42)
    assert np.mean(authors != hashed) > 0.5  # the same distribution, other draws
    assert _within(float(np.mean(authors != y)), P * (K - 1) / K, N)
    with pytest.raises(InputError, match="whole label column"):
        corrupt_labels(y[10:20], P, num_classes=K, mode="authors", seed=42, indices=np.arange(10, 20))
    with pytest.raises(InputError, match="below 2\\*\\*32"):
        corrupt_labels(y[:10], P, num_classes=K, mode="authors", seed=2**32)
