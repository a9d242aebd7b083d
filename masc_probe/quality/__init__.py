"""Label quality from predicted probabilities: rankings, confident learning and detection metrics, each a function
of out-of-fold probabilities and given labels, usable on probabilities from anywhere (our probes, another model).

``_rank`` holds the rankings (self-confidence, normalized margin, logit margin), the calibration of a probe's class
scores into probabilities and the choice of a ranking on held-out data; ``_confident`` the confident joint, the noise
share it implies and its pruning methods (Northcutt et al., JAIR 2021, written from the paper; cleanlab, which is
AGPL, is never imported); ``_metrics`` AUROC, average precision, F1 and lift against known wrong labels.

>>> import numpy as np
>>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
>>> label_quality_scores(p, [0, 1, 1, 1]).round(2).tolist()
[0.9, 0.8, 0.3, 0.9]
>>> find_issues(p, [0, 1, 1, 1], filter_by="predicted_neq_given").tolist()
[False, False, True, False]
"""

from __future__ import annotations

from masc_probe.quality._confident import (
    FILTERS,
    UNIFORM_MODES,
    confident_joint,
    corruption_rate_from_share,
    estimate_joint,
    find_issues,
    noise_share,
)
from masc_probe.quality._metrics import detection_metrics, ranks
from masc_probe.quality._rank import RANKINGS, calibrated_probabilities, choose_ranking, label_quality_scores

__all__ = ["FILTERS", "RANKINGS", "UNIFORM_MODES", "calibrated_probabilities", "choose_ranking", "confident_joint",
           "corruption_rate_from_share", "detection_metrics", "estimate_joint", "find_issues",
           "label_quality_scores", "noise_share", "ranks"]
