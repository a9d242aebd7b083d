"""Label issues: which training labels are wrong, read from the layers of a network that memorized them.

``_find`` holds :func:`find_label_issues` and its result :class:`LabelIssues`; ``_oof`` the rows (one pass of the
runner's forward into its row cache) and the one cross-fitting of the package (stratified, seeded folds; every
layer x probe scored out of fold), which relabeling's MASC suggestions use too; ``_choose`` the choices made on
held-out data (the labels chosen against, each candidate's ranking), the flagged set and the detection metrics.
The probabilities go through :mod:`masc_probe.quality`, which works on probabilities from anywhere.
"""

from __future__ import annotations

from masc_probe.label_issues._find import FLAGS, LabelIssues, find_label_issues

__all__ = ["FLAGS", "LabelIssues", "find_label_issues"]
