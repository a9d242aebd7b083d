"""The report files of a pipeline call, written so that a reader never meets a half-written one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from masc_probe import _atomic
from masc_probe.report import ProbeReport, run_html
from masc_probe.report._html import PAGE_NAME

REPORT_FILES = ("report.json", "report.md", "accuracy_by_layer.png")
PROBES_DIR = "probes"  # the fitted probes of a run folder (``--save-probes``; ``push --with-probes`` publishes them)
DYNAMICS_PLOT = "accuracy_over_epochs.png"
CARD_FILE = "README.md"


def write_outputs(report: ProbeReport, out: Path, *, card: bool, dynamics: bool = False,
                  repo_id: str | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``accuracy_by_layer.png`` (and the dynamics plot, and the card) to *out*.

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
    names = [*REPORT_FILES, *([DYNAMICS_PLOT] if dynamics else []), PAGE_NAME]
    with _atomic.staging(out, prefix=".tmp-report-") as tmp:
        report.to_json(tmp / "report.json")
        _atomic.write_text(tmp / "report.md", report.to_markdown())
        report.plot_layers(tmp / "accuracy_by_layer.png")
        if dynamics:
            report.plot_dynamics(tmp / DYNAMICS_PLOT)
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
