"""masc_probe.quality against the definitions written out by hand in float64 and against constructed probabilities
whose answer is known (Northcutt et al., JAIR 2021: per-class thresholds, the confident joint, its calibration)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from masc_probe import quality
from masc_probe.data.corruption import corrupt_labels
from masc_probe.errors import InputError, UnknownNameError


def _noisy_probs(n: int = 600, K: int = 5, p: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, K, n)
    logits = rng.normal(size=(n, K)) * 1.5
    logits[np.arange(n), true] += 2.0
    given = corrupt_labels(true, p, num_classes=K, seed=seed)
    return softmax(logits, axis=1), given, true, logits


def _exact_probs(true: np.ndarray, K: int) -> np.ndarray:
    """Each row 0.91 on its true class, 0.01 elsewhere (K = 10): a model that knows every true label."""
    p = np.full((len(true), K), 0.01)
    p[np.arange(len(true)), true] = 1 - 0.01 * (K - 1)
    return p


def test_rankings_are_their_definitions() -> None:
    p, given, _, _ = _noisy_probs()
    for i in range(0, len(p), 37):
        own = p[i, given[i]]
        best_other = max(p[i, j] for j in range(p.shape[1]) if j != given[i])
        assert quality.label_quality_scores(p, given, "self_confidence")[i] == pytest.approx(own)
        assert quality.label_quality_scores(p, given, "normalized_margin")[i] == pytest.approx(own - best_other)
        assert quality.label_quality_scores(p, given, "logit_margin")[i] == pytest.approx(np.log(own / best_other))


def test_the_logit_margin_of_a_softmax_is_the_score_margin_over_the_temperature() -> None:
    _, given, _, S = _noisy_probs()
    probs, t = quality.calibrated_probabilities(S, given, kind="similarity")
    other = np.where(np.eye(S.shape[1], dtype=bool)[given], -np.inf, S).max(axis=1)
    expected = (S[np.arange(len(S)), given] - other) / t
    np.testing.assert_allclose(quality.label_quality_scores(probs, given, "logit_margin"), expected, rtol=1e-8)


def test_the_fitted_temperature_minimizes_the_log_loss() -> None:
    _, given, _, S = _noisy_probs()
    _, t = quality.calibrated_probabilities(S, given, kind="similarity")

    def loss(temp: float) -> float:
        return -log_softmax(S / temp, axis=1)[np.arange(len(S)), given].mean()

    assert loss(t) <= min(loss(t * 1.05), loss(t / 1.05))
    # Log-posteriors up to a row constant need none: their softmax is exact; a given T is applied as it is.
    probs, none = quality.calibrated_probabilities(S + 3.0, None, kind="log")
    assert none is None and np.allclose(probs, softmax(S, axis=1))
    fixed, t2 = quality.calibrated_probabilities(S, None, kind="similarity", temperature=0.5)
    assert t2 == 0.5 and np.allclose(fixed, softmax(S / 0.5, axis=1))


def test_the_confident_joint_is_the_papers_count() -> None:
    p, given, _, _ = _noisy_probs()
    K = p.shape[1]
    thresholds = [np.mean([p[i, j] for i in range(len(p)) if given[i] == j]) for j in range(K)]
    C = np.zeros((K, K), dtype=int)
    for i in range(len(p)):
        confident = [j for j in range(K) if p[i, j] >= thresholds[j]]
        if confident:
            C[given[i], max(confident, key=lambda j: p[i, j])] += 1
    got, column = quality.confident_joint(p, given)
    np.testing.assert_array_equal(got, C)
    assert np.array_equal(np.bincount(given[column >= 0], minlength=K), C.sum(axis=1))
    # Calibrated: each row holds its given class's share of the data, the whole sums to 1.
    Q = quality.estimate_joint(p, given)
    np.testing.assert_allclose(Q.sum(axis=1), np.bincount(given, minlength=K) / len(given))
    np.testing.assert_allclose(Q, C / C.sum(axis=1, keepdims=True) * np.bincount(given)[:, None] / len(given))


def test_a_model_that_knows_every_true_label_gives_the_exact_joint_and_flags() -> None:
    rng = np.random.default_rng(1)
    true = rng.integers(0, 10, 2000)
    given = corrupt_labels(true, 0.5, num_classes=10, seed=1)
    wrong = given != true
    p = _exact_probs(true, 10)
    contingency = np.zeros((10, 10))
    np.add.at(contingency, (given, true), 1)
    np.testing.assert_allclose(quality.estimate_joint(p, given), contingency / len(true))
    assert quality.noise_share(p, given) == pytest.approx(wrong.mean())
    for filter_by in quality.FILTERS:
        np.testing.assert_array_equal(quality.find_issues(p, given, filter_by), wrong, err_msg=filter_by)
    for method in quality.RANKINGS:  # every wrong label ranks below every right one
        s = quality.label_quality_scores(p, given, method)
        assert s[wrong].max() < s[~wrong].min()


def test_the_corruption_rate_follows_from_the_share_only_for_uniform_modes() -> None:
    true = np.arange(40000) % 10
    for mode in ("random", "authors"):
        given = corrupt_labels(true, 0.5, num_classes=10, seed=0, mode=mode)
        rate = quality.corruption_rate_from_share(np.mean(given != true), 10, mode)
        assert rate == pytest.approx(0.5, abs=0.01)
    for mode in ("symmetric", "asymmetric", "shuffle", None):
        assert quality.corruption_rate_from_share(0.4, 10, mode) is None


def test_choose_ranking_keeps_self_confidence_on_a_tie_and_takes_a_clear_winner() -> None:
    true = np.arange(400) % 10
    ranking, auroc = quality.choose_ranking(_exact_probs(true, 10), true, rate=0.3)
    assert ranking == "self_confidence" and auroc == pytest.approx(dict.fromkeys(quality.RANKINGS, 1.0))
    # Two kinds of rows, classes permuted at random: (0.40, 0.30, 0.30) and (0.55, 0.45, 0). A right label's
    # margin is +0.10 on both, a re-drawn one's at most -0.10, so both margins rank perfectly; self-confidence puts a
    # peaked row re-labeled to its runner-up (0.45) above a right label of a flat row (0.40).
    rng = np.random.default_rng(0)
    rows = np.array([[0.40, 0.30, 0.30], [0.55, 0.45, 0.0]])[np.arange(600) % 2]
    perm = np.argsort(rng.random((600, 3)), axis=1)
    p = np.take_along_axis(rows, np.argsort(perm, axis=1), axis=1)  # class perm[i, k] gets rows[i, k]
    labels = perm[:, 0]
    chosen, got = quality.choose_ranking(p, labels, rate=0.3, seed=0)
    assert got["normalized_margin"] == pytest.approx(1.0) and got["logit_margin"] == pytest.approx(1.0)
    assert got["self_confidence"] < 0.99 and chosen in ("normalized_margin", "logit_margin")
    assert quality.choose_ranking(p, labels, rate=0.3, seed=0) == (chosen, got)  # seeded


@pytest.mark.parametrize("probs, labels, needle", [
    (np.full((3, 2), 0.6), [0, 1, 0], "sum to 1"),
    (np.full((3, 2), 0.5), [0, 2, 0], "labels in [0, 2)"),
    (np.full((3, 2), 0.5), [0, 1], "3 integer labels"),
    (np.full((3,), 0.5), [0, 1, 0], "shape (n, K)"),
    (np.full((3, 2), 0.5), [0.5, 1, 0], "3 integer labels"),
])
def test_bad_probabilities_are_one_line(probs, labels, needle) -> None:
    with pytest.raises(InputError) as err:
        quality.label_quality_scores(probs, labels)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_names_suggest_the_known_ones() -> None:
    p = np.full((4, 2), 0.5)
    with pytest.raises(UnknownNameError, match="self_confidence"):
        quality.label_quality_scores(p, [0, 1, 0, 1], "self_confidance")
    with pytest.raises(UnknownNameError, match="prune_by_class"):
        quality.find_issues(p, [0, 1, 0, 1], "prune_by_klass")
