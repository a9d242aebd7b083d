"""The report files of a pipeline call, written so that a reader never meets a half-written one, and what the call
returns (:class:`RunResult`)."""

from __future__ import annotations

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
