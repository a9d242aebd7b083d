"""Confident learning (Northcutt, Jiang and Chuang, JAIR 2021), written from the paper: the confident joint of
given and true labels, the noise it implies, and the samples it prunes.

With out-of-fold probabilities p (n, K) and given labels y:

* each class's threshold t_j is the mean p[:, j] over the samples labeled j;
* a sample labeled i counts in C[i, j] for the class j with the largest p_j among those with p_j >= t_j (none: it
  is not counted);
* calibration scales each row of C to the number of samples labeled i, and the whole to sum 1: the estimated
  joint Q[i, j] of (given i, true j); the estimated share of wrong labels is its off-diagonal mass;
* pruning flags, per method: ``confident_joint`` the samples counted off the diagonal; ``prune_by_class`` in each
  class i the n * sum_{j != i} Q[i, j] samples with the lowest p_i; ``prune_by_noise_rate`` for each i != j the
  n * Q[i, j] samples labeled i with the largest margin p_j - p_i; ``both`` what the last two flag alike;
  ``predicted_neq_given`` the samples whose most probable class is not their label.

The share of wrong labels is not the corruption rate p of a mode: a mode that redraws the label uniformly over all
K classes (``random``, ``authors``) leaves it right once in K, so p = share * K / (K - 1)
(:func:`corruption_rate_from_share`); other modes (``asymmetric``, ``symmetric`` which always changes the class,
``shuffle``) have their own relation or none.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from masc_probe._choices import CL_FILTERS, UNIFORM_MODES
from masc_probe._params import check_choice
from masc_probe.quality._rank import check_probabilities

__all__ = ["FILTERS", "UNIFORM_MODES", "confident_joint", "corruption_rate_from_share", "estimate_joint",
           "find_issues", "noise_share"]

FILTERS = CL_FILTERS


def confident_joint(pred_probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """(C (K, K) int64 counts of given i x confidently-true j, each sample's column j or -1 when uncounted)."""
    p, y = check_probabilities(pred_probs, labels)
    K = p.shape[1]
    sums = np.bincount(y, minlength=K)
    thresholds = np.array([p[y == j, j].mean() if sums[j] else np.inf for j in range(K)])
    above = p >= thresholds[None, :] - 1e-12  # a probability equal to its class's mean counts
    masked = np.where(above, p, -np.inf)
    true = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    C = np.zeros((K, K), dtype=np.int64)
    counted = true >= 0
    np.add.at(C, (y[counted], true[counted]), 1)
    return C, true


def estimate_joint(pred_probs: Any, labels: Any) -> np.ndarray:
    """Q (K, K): the calibrated confident joint of (given, true) labels, summing to 1."""
    p, y = check_probabilities(pred_probs, labels)
    C = confident_joint(p, y)[0].astype(np.float64)
    given = np.bincount(y, minlength=p.shape[1]).astype(np.float64)
    rows = C.sum(axis=1)
    # A class none of whose samples is counted keeps its mass on the diagonal (no evidence of noise there).
    C[rows == 0] = np.diag(np.ones(p.shape[1]))[rows == 0]
    C = C / C.sum(axis=1, keepdims=True) * given[:, None]
    return C / C.sum()


def noise_share(pred_probs: Any, labels: Any) -> float:
    """The estimated share of wrong labels: the off-diagonal mass of :func:`estimate_joint`."""
    Q = estimate_joint(pred_probs, labels)
    return float(1.0 - np.trace(Q))


def corruption_rate_from_share(share: float, n_classes: int, mode: str | None) -> float | None:
    """The corruption rate p a share of wrong labels implies under *mode*, or None where the relation is unknown
    (module docstring: only the uniform modes have share = p (K - 1) / K)."""
    if mode not in UNIFORM_MODES:
        return None
    return min(1.0, share * n_classes / (n_classes - 1))


def find_issues(pred_probs: Any, labels: Any, filter_by: str = "prune_by_noise_rate") -> np.ndarray:
    """(n,) bool: the samples flagged by confident learning's *filter_by* (module docstring: the methods)."""
    check_choice("filter_by", filter_by, FILTERS)
    p, y = check_probabilities(pred_probs, labels)
    n, K = p.shape
    if filter_by == "predicted_neq_given":
        return p.argmax(axis=1) != y
    if filter_by == "confident_joint":
        true = confident_joint(p, y)[1]
        return (true >= 0) & (true != y)
    Q = estimate_joint(p, y)
    by_class = np.zeros(n, dtype=bool)
    by_noise = np.zeros(n, dtype=bool)
    for i in range(K):
        members = np.flatnonzero(y == i)
        if not len(members):
            continue
        if filter_by in ("prune_by_class", "both"):
            count = min(len(members), round(n * (Q[i].sum() - Q[i, i])))
            order = members[np.lexsort((members, p[members, i]))]
            by_class[order[:count]] = True
        if filter_by in ("prune_by_noise_rate", "both"):
            for j in range(K):
                count = min(len(members), round(n * Q[i, j])) if j != i else 0
                if count:
                    margin = p[members, j] - p[members, i]
                    order = members[np.lexsort((members, -margin))]
                    by_noise[order[:count]] = True
    if filter_by == "prune_by_class":
        return by_class
    if filter_by == "prune_by_noise_rate":
        return by_noise
    return by_class & by_noise
