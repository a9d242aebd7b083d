"""Reports: :class:`ProbeReport` holds probe accuracies per layer × probe × label set (× epoch) and writes them as
the public report JSON, a markdown table and PNG plots (``_views``); ``_aggregate`` averages reports over seeds.
It knows nothing of models, data or probes: the runner builds reports, the pipeline and the hub read them.
"""

from __future__ import annotations

from masc_probe.report._html import report_html, run_html, write_run_html
from masc_probe.report._report import SCHEMA_VERSION, ProbeReport, wilson_interval

__all__ = ["SCHEMA_VERSION", "ProbeReport", "report_html", "run_html", "wilson_interval", "write_run_html"]
