"""The report files of a pipeline call, written so that a reader never meets a half-written one, and what the call
returns (:class:`RunResult`)."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from masc_probe import _atomic
from masc_probe.report import ProbeReport, plot_profile, run_html
from masc_probe.report._files import (CARD_FILE, DYNAMICS_PLOT, LAYER_PLOT, PAGE_NAME, PROFILE_PLOT, REPORT_JSON,
                                      REPORT_MD)
from masc_probe.report._view import profile_of

REPORT_FILES = (REPORT_JSON, REPORT_MD, LAYER_PLOT)
PROBES_DIR = "probes"  # the fitted probes of a run folder (``--save-probes``; ``push --with-probes`` publishes them)


@dataclass(frozen=True)
class RunResult:
    """What a pipeline call produced.

    Attributes:
        output_dir: The folder the report files went to (the run folder for ``run``).
        report: The probe report (None for :func:`~masc_probe.pipeline.train_model`).
        training: The training outcome (None when nothing was trained).
        files: ``{name: path}`` of the files written (``report.json``, ``report.md``, plots, ``README.md``).
        pushed: The Hub commit URL when the run was pushed.
    """

    output_dir: Path
    report: ProbeReport | None = None
    training: Any = None  # masc_probe.training.TrainResult
    files: dict[str, Path] = field(default_factory=dict)
    pushed: str | None = None


def write_outputs(report: ProbeReport, out: Path, *, card: bool, dynamics: bool = False,
                  repo_id: str | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``accuracy_by_layer.png``, ``report.html`` (and the dynamics plot, the
    profile plot when the report has a profile, and the card) to *out*.

    All report files are drawn in a temporary folder inside *out* first and renamed into place only when every one
    of them succeeded. The card is rendered last, by :func:`masc_probe.hub.build_card` from the folder itself (it
    reads the report, ``config.json`` and ``metrics.jsonl`` there), and replaces ``README.md`` atomically.

    Args:
        report: The report.
        out: The folder (created when missing).
        card: Also write the model card a push of *out* would publish, as ``README.md``.
        dynamics: Also draw accuracy over epochs (the report has an epoch axis).
        repo_id: The Hub repo the card names in its loading snippets.

    Returns:
        ``{file name: path}`` of what was written.
    """
    profile = profile_of(report) is not None
    names = [*REPORT_FILES, *([DYNAMICS_PLOT] if dynamics else []), *([PROFILE_PLOT] if profile else []), PAGE_NAME]
    with _atomic.staging(out, prefix=".tmp-report-") as tmp:
        report.to_json(tmp / REPORT_JSON)
        _atomic.write_text(tmp / REPORT_MD, report.to_markdown())
        report.plot_layers(tmp / LAYER_PLOT)
        if dynamics:
            report.plot_dynamics(tmp / DYNAMICS_PLOT)
        if profile:
            plot_profile(report, tmp / PROFILE_PLOT)
        _atomic.write_text(tmp / PAGE_NAME, run_html(out, staged=tmp))  # report.html, from the files above
        for name in names:
            _atomic.publish(tmp / name, out / name)
    files = {name: out / name for name in names}
    if card:
        from masc_probe.hub import build_card

        files[CARD_FILE] = _atomic.write_text(out / CARD_FILE, str(build_card(out, repo_id=repo_id)))
    return files


def save_probes(runner: Any, out: Path) -> Path:
    """Write *runner*'s fitted probes to ``out/probes`` (``ProbeRunner.save_pretrained``) as a whole: drawn in a
    staging folder, then swapped in for any previous ``probes/``, so that a reader finds the old set or the new.

    Returns:
        The folder.
    """
    target = out / PROBES_DIR
    with _atomic.staging(out, prefix=".tmp-probes-") as tmp:
        runner.save_pretrained(tmp / PROBES_DIR)
        if target.exists():
            _atomic.rename(target, tmp / "old")  # removed with the staging folder
        _atomic.publish(tmp / PROBES_DIR, target)
    return target


# ------------------------------------------------------------------------------------------------- label issues
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
