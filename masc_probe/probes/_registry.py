"""The probe registry: name -> factory, so that runners and the CLI can ask for probes by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from masc_probe.errors import UnknownNameError, closest
from masc_probe.probes.baselines import LinearProbe, NearestClassMean, VeLPIC
from masc_probe.probes.masc import MinimumAngleSubspaceClassifier

__all__ = ["PROBES", "make_probe"]


def _knn(**kwargs: Any) -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(**{"n_neighbors": 5, "metric": "cosine", **kwargs})


def _lda(**kwargs: Any) -> Any:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return LinearDiscriminantAnalysis(**kwargs)


def _qda(**kwargs: Any) -> Any:
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis

    return QuadraticDiscriminantAnalysis(**kwargs)


# Statistic probes (masc, ncm, velpic) stream with partial_fit and merge shards; the others need the whole matrix
# (numpy) in fit. Each factory takes the estimator's keyword arguments.
PROBES: dict[str, Callable[..., Any]] = {
    "masc": MinimumAngleSubspaceClassifier,
    "ncm": NearestClassMean,
    "linear": LinearProbe,
    "velpic": VeLPIC,
    "knn": _knn,
    "lda": _lda,
    "qda": _qda,
}


def make_probe(name: str, **kwargs: Any) -> Any:
    """A new, unfitted probe by registry name (see ``PROBES``).

    Raises:
        UnknownNameError: the name is not in ``PROBES``; the message lists the closest names.
    """
    factory = PROBES.get(name)
    if factory is None:
        hint = closest(name, list(PROBES))
        raise UnknownNameError(f"probe must be one of the registry's names; got {name!r} ({hint})")
    return factory(**kwargs)
