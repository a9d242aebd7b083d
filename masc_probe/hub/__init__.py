"""Hub: publishing a run folder (memorizing checkpoint, report, plots, metrics, a model card and, on request, the
fitted probes) to the Hugging Face Hub in one commit, a dry run of it, and pulling published reports back
(``_push``); ``_probes`` checks a run's fitted probes against its report before they go; ``_card`` renders the model
card with model-index metadata from the report. Fitted probes come back with ``ProbeRunner.from_pretrained``;
loading a published model is ``masc_probe.models.load_model`` with an ``hf-hub:`` spec.
"""

from __future__ import annotations

from masc_probe.hub._push import REPORT_FILE, build_card, load_report, push_run, write_dry_run

__all__ = ["REPORT_FILE", "build_card", "load_report", "push_run", "write_dry_run"]
