"""A :class:`~masc_probe.label_issues.LabelIssues`'s files: its numbers as JSON and its per-sample table as CSV, each
written atomically."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from masc_probe import _atomic


def issues_summary(issues: Any) -> dict[str, Any]:
    """A :class:`~masc_probe.label_issues.LabelIssues`'s numbers (no per-sample arrays), JSON-ready."""
    import numpy as np

    known = issues.true_label is not None
    return _jsonable({
        "n_samples": len(issues.score), "n_classes": len(issues.classes), "folds": issues.folds, "seed": issues.seed,
        "method": issues.method, "layer": issues.layer, "probe": issues.probe, "criterion": issues.criterion,
        "heldout_accuracy": issues.heldout_accuracy, "select_accuracy": issues.select_accuracy,
        "runner_up": issues.runner_up, "choosing_labels": issues.choosing_labels,
        "ranking": issues.ranking, "ranking_auroc": issues.ranking_auroc,
        "temperature": issues.temperature, "noise_rate": issues.noise_rate,
        "disagreement_rate": issues.disagreement_rate, "corruption_mode": issues.corruption_mode,
        "corruption_rate": issues.corruption_rate,
        "realized_noise_rate": float(np.mean(issues.given_label != issues.true_label)) if known else None,
        "flag": issues.flag, "threshold": issues.threshold, "n_flagged": issues.n_flagged,
        "aum": issues.aum is not None, "metrics": issues.metrics, "candidates": issues.candidates,
    })


def write_issues_summary(issues: Any, path: str | os.PathLike[str]) -> Path:
    """:func:`issues_summary` as JSON at *path* (atomically)."""
    return _atomic.write_text(path, json.dumps(issues_summary(issues), indent=2) + "\n")


def write_issues_csv(issues: Any, path: str | os.PathLike[str]) -> Path:
    """The per-sample table at *path*, most suspect first (atomically): index, given_label, suggested_label, score,
    flagged, rank, fold, then true_label and aum when known."""
    import numpy as np

    extra = [(n, v) for n, v in (("true_label", issues.true_label), ("aum", issues.aum)) if v is not None]
    order = np.argsort(issues.rank, kind="stable")

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["index", "given_label", "suggested_label", "score", "flagged", "rank", "fold",
                          *(n for n, _ in extra)])
            for i in order.tolist():
                out.writerow([int(issues.index[i]), int(issues.given_label[i]), int(issues.suggested_label[i]),
                              f"{issues.score[i]:.7g}", int(issues.flagged[i]), int(issues.rank[i]),
                              int(issues.fold[i]), *(f"{v[i]:.7g}" if n == "aum" else int(v[i]) for n, v in extra)])

    return _atomic.write_with(path, write)


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
