"""Reports: :class:`ProbeReport` holds probe accuracies per layer × probe × label set (× epoch) and writes them as
the public report JSON; ``_view`` builds the one view of a report that report.md (``_markdown``), report.html
(``_html``), the model card and the CLI summary lay out; ``_views`` draws the plots; ``_aggregate`` averages reports
over seeds. It knows nothing of models, data or probes: the runner builds reports, the pipeline and the hub read them.
"""

from __future__ import annotations

from masc_probe.report._html import report_html, run_html, write_run_html
from masc_probe.report._report import SCHEMA_VERSION, ProbeReport, wilson_interval
from masc_probe.report._view import ReportView, build_view, fmt
from masc_probe.report._views import plot_profile, summary_text

__all__ = ["SCHEMA_VERSION", "ProbeReport", "ReportView", "build_view", "fmt", "plot_profile", "report_html",
           "run_html", "summary_text", "wilson_interval", "write_run_html"]
