"""Label-quality scores from out-of-fold predicted probabilities, and the choice among them on held-out data.

A ranking puts the samples whose given label looks worst first (lowest score first). Each works on an (n, K)
matrix of predicted probabilities from a model that did not see the sample (out-of-fold), and the given labels:

* ``self_confidence``: the probability of the given label, p[i, y_i] (Northcutt et al., JAIR 2021, section 3.3);
* ``normalized_margin``: p[i, y_i] minus the largest probability of another class (the same paper);
* ``logit_margin``: log p[i, y_i] minus the log of the largest other probability; for probabilities that are a
  softmax of class scores this is the score margin itself (divided by the temperature), so it ranks as the probe's
  raw scores do, whatever the calibration.

:func:`choose_ranking` chooses among them without true labels, on samples a probe never saw (the select data, or
the out-of-fold rows): it re-labels a seeded random share of them to another class, uniformly, asks how well each
ranking puts the re-labeled samples first (AUROC), averages over several draws, and keeps ``self_confidence`` (the
confident-learning default) unless another ranking beats it there by more than ``tie``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from masc_probe._choices import ISSUE_RANKINGS
from masc_probe._params import check_choice
from masc_probe.errors import InputError

__all__ = ["RANKINGS", "calibrated_probabilities", "choose_ranking", "label_quality_scores"]

RANKINGS = ISSUE_RANKINGS
_TINY = 1e-300  # log of a zero probability (a kNN vote share of 0): very negative, not -inf


def check_probabilities(pred_probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(pred_probs (n, K) float64, labels (n,) int64), checked: rows of K >= 2 finite non-negative values that sum
    to 1, one integer label in [0, K) per row.

    Raises:
        InputError: Anything else, naming what was expected and what arrived.
    """
    p = np.asarray(pred_probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] < 2 or p.shape[0] < 1:
        raise InputError(f"expected pred_probs of shape (n, K) with n >= 1 and K >= 2, got shape {p.shape}")
    if y.shape != (len(p),) or not (np.issubdtype(y.dtype, np.integer) or (
            np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise InputError(f"expected {len(p)} integer labels (one per row of pred_probs), got {y.dtype} of shape "
                         f"{y.shape}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise InputError(f"expected labels in [0, {p.shape[1]}), got labels in [{y.min()}, {y.max()}]")
    if not np.isfinite(p).all() or p.min() < 0 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise InputError("expected pred_probs rows of finite non-negative probabilities that sum to 1; "
                         f"row sums range over [{p.sum(axis=1).min():.4g}, {p.sum(axis=1).max():.4g}]")
    return p, y


def label_quality_scores(pred_probs: Any, labels: Any, method: str = "self_confidence") -> np.ndarray:
    """(n,) scores, lower = the given label more likely wrong (module docstring: the methods).

    Raises:
        UnknownNameError: *method* is not one of :data:`RANKINGS`. InputError: bad probabilities or labels.
    """
    check_choice("ranking method", method, RANKINGS)
    p, y = check_probabilities(pred_probs, labels)
    rows = np.arange(len(y))
    own = p[rows, y]
    if method == "self_confidence":
        return own
    other = p.copy()
    other[rows, y] = -np.inf
    best = other.max(axis=1)
    if method == "normalized_margin":
        return own - best
    return np.log(np.maximum(own, _TINY)) - np.log(np.maximum(best, _TINY))


def calibrated_probabilities(scores: Any, labels: Any, *, kind: str,
                             temperature: float | None = None) -> tuple[np.ndarray, float | None]:
    """Probabilities from a probe's (n, K) class scores, and the temperature used (None when none is fitted).

    Args:
        scores: Class scores, one row per sample (from probes that did not see the sample).
        labels: The given labels, which fit the temperature.
        kind: ``"log"`` — log-probabilities up to a per-row constant (LDA, QDA, a linear probe's decision values):
            their softmax is exact; ``"shares"`` — non-negative vote shares (kNN): normalized; ``"similarity"`` —
            cosines or other similarities (MASC, NCM): softmax(scores / T), T fitted by the log-loss against *labels*
            (bounded search over log T in [-9, 3]).
        temperature: For ``"similarity"``: use this T instead of fitting one (*labels* may then be None), e.g. the
            T fitted on the out-of-fold rows, applied to held-out rows.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    check_choice("score kind", kind, ("log", "shares", "similarity"))
    S = np.asarray(scores, dtype=np.float64)
    if kind == "shares":
        S = np.clip(S, 1e-12, None)
        return S / S.sum(axis=1, keepdims=True), None
    if kind == "log":
        return np.exp(log_softmax(S, axis=1)), None
    if temperature is not None:
        return np.exp(log_softmax(S / temperature, axis=1)), float(temperature)
    rows, y = np.arange(len(S)), np.asarray(labels, dtype=np.int64)

    def loss(log_t: float) -> float:
        return float(-log_softmax(S / math.exp(log_t), axis=1)[rows, y].mean())

    t = math.exp(minimize_scalar(loss, bounds=(-9.0, 3.0), method="bounded").x)
    return np.exp(log_softmax(S / t, axis=1)), t


def choose_ranking(pred_probs: Any, labels: Any, *, rate: float, methods: Sequence[str] = RANKINGS,
                   draws: int = 16, seed: int = 0, tie: float = 0.005) -> tuple[str, dict[str, float]]:
    """The ranking that best finds labels re-drawn at random among samples none of the probes saw.

    Args:
        pred_probs, labels: Held-out probabilities and their labels (taken as right; wrong ones in them only blur
            every ranking alike).
        rate: Share of samples re-labeled in each draw (clipped to [0.05, 0.9]).
        methods: The candidates; ``self_confidence`` (when among them) is kept unless another beats it by > *tie*.
        draws: Independent re-labelings averaged.
        seed: Seed of the draws.
        tie: AUROC margin another ranking needs over ``self_confidence``.

    Returns:
        (the chosen ranking, its mean AUROC and every other's: ``{method: auroc}``).
    """
    from sklearn.metrics import roc_auc_score

    p, y = check_probabilities(pred_probs, labels)
    K, n = p.shape[1], len(y)
    m = min(n - 1, max(1, round(min(0.9, max(0.05, float(rate))) * n)))
    if n < 4:
        raise InputError(f"expected at least 4 held-out samples to choose a ranking, got {n}")
    rng = np.random.default_rng(seed)
    auroc = dict.fromkeys(methods, 0.0)
    for _ in range(draws):
        pick = rng.choice(n, size=m, replace=False)
        noisy = y.copy()
        noisy[pick] = (y[pick] + rng.integers(1, K, size=m)) % K  # another class, uniformly
        wrong = np.zeros(n, dtype=bool)
        wrong[pick] = True
        for method in methods:
            auroc[method] += roc_auc_score(wrong, -label_quality_scores(p, noisy, method)) / draws
    best = max(methods, key=lambda k: auroc[k])
    if "self_confidence" in methods and auroc[best] <= auroc["self_confidence"] + tie:
        best = "self_confidence"
    return best, auroc
