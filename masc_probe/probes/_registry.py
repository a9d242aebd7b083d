"""The probe registry: name -> factory, so that runners and the CLI can ask for probes by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from masc_probe._choices import PROBE_NAMES
from masc_probe._params import check_choice
from masc_probe.errors import InputError
from masc_probe.probes._sklearn import (
    KNeighborsClassifier,
    LinearDiscriminantAnalysis,
    QuadraticDiscriminantAnalysis,
)
from masc_probe.probes.baselines import LinearProbe, NearestClassMean, VeLPIC
from masc_probe.probes.masc import MinimumAngleSubspaceClassifier

__all__ = ["PROBES", "make_probe", "probe_from_state"]


def _knn(**kwargs: Any) -> KNeighborsClassifier:
    return KNeighborsClassifier(**{"n_neighbors": 5, "metric": "cosine", **kwargs})


# Each probe's class, in the order of PROBE_NAMES; every class saves and loads itself (to_state / from_state).
_CLASSES: dict[str, type] = dict(zip(PROBE_NAMES, (MinimumAngleSubspaceClassifier, NearestClassMean, LinearProbe,
                                                   VeLPIC, KNeighborsClassifier, LinearDiscriminantAnalysis,
                                                   QuadraticDiscriminantAnalysis), strict=True))

# Statistic probes (masc, ncm, velpic) stream with partial_fit and merge shards; the others need the whole matrix
# (numpy) in fit. Each factory takes the estimator's keyword arguments.
PROBES: dict[str, Callable[..., Any]] = {**_CLASSES, "knn": _knn}


def make_probe(name: str, **kwargs: Any) -> Any:
    """A new, unfitted probe by registry name (see ``PROBES``).

    Raises:
        UnknownNameError: the name is not in ``PROBES``; the message lists the closest names.
    """
    return PROBES[check_choice("probe", name, PROBES)](**kwargs)


def probe_from_state(arrays: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device) -> Any:
    """Rebuild a probe saved by its ``to_state()``; ``meta["probe"]`` names it in the registry.

    Raises:
        InputError: The metadata names no probe of the registry.
    """
    cls = _CLASSES.get(meta.get("probe", ""))
    if cls is None:
        raise InputError(f"a saved probe's metadata must name one of {list(_CLASSES)}, got {meta.get('probe')!r}")
    return cls.from_state(arrays, meta, device)
