"""The report files of a pipeline call, written so that a reader never meets a half-written one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from masc_probe.report import ProbeReport

REPORT_FILES = ("report.json", "report.md", "accuracy_by_layer.png")
DYNAMICS_PLOT = "accuracy_over_epochs.png"
CARD_FILE = "README.md"
_MODE = 0o644  # temporary files are created private (0600); the results are for sharing


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
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-report-", dir=out))
    names = [*REPORT_FILES, *([DYNAMICS_PLOT] if dynamics else [])]
    try:
        report.to_json(tmp / "report.json")
        (tmp / "report.md").write_text(report.to_markdown(), encoding="utf-8")
        report.plot_layers(tmp / "accuracy_by_layer.png")
        if dynamics:
            report.plot_dynamics(tmp / DYNAMICS_PLOT)
        for name in names:
            os.chmod(tmp / name, _MODE)
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = {name: out / name for name in names}
    if card:
        from masc_probe.hub import build_card

        text = str(build_card(out, repo_id=repo_id))
        fd, part = tempfile.mkstemp(prefix=f".{CARD_FILE}.", dir=out)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(part, _MODE)
            os.replace(part, out / CARD_FILE)
        except BaseException:
            Path(part).unlink(missing_ok=True)
            raise
        files[CARD_FILE] = out / CARD_FILE
    return files
