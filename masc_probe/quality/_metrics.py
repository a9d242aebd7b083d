"""How well a ranking finds the wrong labels when they are known: AUROC, average precision, the flagged set's
precision / recall / F1, and lift among the lowest-scoring 1% and 5%."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["detection_metrics", "ranks"]


def ranks(score: Any) -> np.ndarray:
    """(n,) 1 for the lowest score; ties in position order."""
    score = np.asarray(score)
    order = np.lexsort((np.arange(len(score)), score))
    rank = np.empty(len(score), dtype=np.int64)
    rank[order] = np.arange(1, len(score) + 1)
    return rank


def detection_metrics(wrong: Any, score: Any, flagged: Any) -> dict[str, Any]:
    """How well low *score* finds the *wrong* labels (bool, (n,)), and how good the *flagged* set is.

    Returns:
        ``n_wrong``, ``n_flagged``, ``auroc`` and ``average_precision`` (None when every label is wrong or none
        is), ``precision``, ``recall``, ``f1`` and ``lift_top_1pct`` / ``lift_top_5pct`` (the wrong share among
        the lowest 1% / 5% over the overall wrong share).
    """
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    wrong, score, flagged = np.asarray(wrong, dtype=bool), np.asarray(score), np.asarray(flagged, dtype=bool)
    n, n_wrong = len(wrong), int(wrong.sum())
    both = 0 < n_wrong < n
    p, r, f, _ = precision_recall_fscore_support(wrong, flagged, average="binary", zero_division=0)
    out: dict[str, Any] = {
        "n_wrong": n_wrong, "n_flagged": int(flagged.sum()),
        "auroc": float(roc_auc_score(wrong, -score)) if both else None,
        "average_precision": float(average_precision_score(wrong, -score)) if both else None,
        "precision": float(p), "recall": float(r), "f1": float(f)}
    order = np.lexsort((np.arange(n), score))
    for q in (1, 5):
        top = order[:max(1, math.ceil(n * q / 100))]
        out[f"lift_top_{q}pct"] = float(wrong[top].mean() / (n_wrong / n)) if n_wrong else None
    return out
