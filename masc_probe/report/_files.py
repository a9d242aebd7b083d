"""The run folder's report file names, defined once.

The pipeline writes these files and the report page reads them back; both import the names from here (this tier
sits below the pipeline, so the pipeline can import it and the page need not know the pipeline).
"""

from __future__ import annotations

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PAGE_NAME = "report.html"
LAYER_PLOT = "accuracy_by_layer.png"
DYNAMICS_PLOT = "accuracy_over_epochs.png"
PROFILE_PLOT = "profile.png"  # MASC accuracy against subspace size, written when the report has a profile
CARD_FILE = "README.md"
ISSUES_DIR = "label-issues"  # what `masc-probe label-issues` writes, inside the run folder
ISSUES_CSV, ISSUES_JSON, GALLERY_PNG = "label_issues.csv", "label_issues.json", "label_issues.png"
