"""scikit-learn's own estimator checks over every probe class of ours.

MASC, VeLPIC and LinearProbe set the classifier tag ``poor_score`` (each says why in its ``__sklearn_tags__``); that
skips only the accuracy assertion of ``check_classifiers_train``. Nothing is declared as an expected failure.
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from masc_probe.probes import LinearProbe, MinimumAngleSubspaceClassifier, NearestClassMean, VeLPIC

# One instance per class; MASC's forced-solver paths are held to a float64 reference in test_masc.py.
ESTIMATORS = [MinimumAngleSubspaceClassifier(), NearestClassMean(), VeLPIC(), LinearProbe()]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check) -> None:
    check(estimator)

