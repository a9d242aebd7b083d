"""Probes: scikit-learn estimators on (X, y) feature matrices (numpy or torch), no model, no data loading."""

from __future__ import annotations

from masc_probe.probes._registry import PROBES, make_probe
from masc_probe.probes.baselines import LinearProbe, NearestClassMean, VeLPIC
from masc_probe.probes.masc import MinimumAngleSubspaceClassifier

__all__ = ["PROBES", "LinearProbe", "MinimumAngleSubspaceClassifier", "NearestClassMean", "VeLPIC", "make_probe"]
