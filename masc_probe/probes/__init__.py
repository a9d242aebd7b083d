"""Probes: scikit-learn estimators on (X, y) feature matrices (numpy or torch), no model, no data loading.

``masc`` is the Minimum Angle Subspace Classifier; ``baselines`` holds nearest class mean, the linear probe and
VeLPIC; ``_sklearn`` scikit-learn's kNN, LDA and QDA as probes. The statistic probes (MASC, NCM, VeLPIC) share
``_base`` (streaming fit, merge, lazy solve), ``_stats`` (per-class statistics that stream, merge and spill),
``_eigen`` and ``_linalg`` (exact decompositions and products) and ``_threads``; ``_params`` validates the
parameters other parts share. Every probe saves itself without pickle (``to_state`` / ``from_state``).
"""

from __future__ import annotations

from masc_probe._params import DEFAULT_MAX_MEMORY, check_max_memory, check_n_components
from masc_probe.probes._registry import PROBES, make_probe, probe_from_state
from masc_probe.probes.baselines import LinearProbe, NearestClassMean, VeLPIC
from masc_probe.probes.masc import MinimumAngleSubspaceClassifier

__all__ = ["DEFAULT_MAX_MEMORY", "PROBES", "LinearProbe", "MinimumAngleSubspaceClassifier", "NearestClassMean",
           "VeLPIC", "check_max_memory", "check_n_components", "make_probe", "probe_from_state"]
