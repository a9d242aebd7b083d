"""The probe registry: every probe's name, factory and capabilities, defined once.

Whatever depends on a probe's kind (whether it streams statistics, takes tensors, which scores it gives and what they
are, whether it has MASC's subspaces and profile) reads it from its :class:`ProbeSpec` here, never from a list of
names. ``masc_probe._choices.PROBE_NAMES`` holds the same names for the CLI, which must not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from masc_probe._params import check_choice
from masc_probe.errors import InputError
from masc_probe.probes._sklearn import (
    KNeighborsClassifier,
    LinearDiscriminantAnalysis,
    QuadraticDiscriminantAnalysis,
)
from masc_probe.probes.baselines import LinearProbe, NearestClassMean, VeLPIC
from masc_probe.probes.masc import MinimumAngleSubspaceClassifier

__all__ = ["PROBES", "SPECS", "ProbeSpec", "make_probe", "probe_from_state", "spec"]


@dataclass(frozen=True)
class ProbeSpec:
    """What the package knows of one probe.

    >>> SPECS["ncm"].streams, SPECS["lda"].score_kind
    (True, 'log')
    """

    name: str
    cls: type  # its class: from_state rebuilds a saved one
    factory: Callable[..., Any]  # a new, unfitted probe from its keyword arguments (the class, or defaults over it)
    # Statistics it streams (partial_fit, merged across processes): 0 none (fit takes the whole matrix), 1 per-class
    # sums only, 2 second moments too (per-class scatter matrices or rows, which the memory plan budgets).
    moments: int
    tensors: bool  # takes torch tensors; the others are scikit-learn's and take numpy arrays
    scores: str  # the method giving (n, K) class scores
    # What those scores are, for calibration into probabilities (masc_probe.quality.calibrated_probabilities):
    # "similarity" (cosines, projections), "log" (log-posteriors, logits) or "shares" (neighbour votes).
    score_kind: str
    subspaces: bool = False  # fits a per-class subspace sized by n_components (k_c per class, its solver's form)
    profile: bool = False  # scores every subspace size from one fit (MASC's profile)

    @property
    def streams(self) -> bool:
        """Fitted by a sum of per-class statistics (``partial_fit`` over blocks, ``merge``, ``frozen``)."""
        return self.moments > 0

    def settings(self, *, device: Any = None, max_memory: int | None = None,
                 n_components: float | int | None = None) -> dict[str, Any]:
        """The shared settings this probe takes, as constructor keywords (None: left to its default): the device of
        a torch probe, the statistics' memory budget of a second-moment one, the subspace size of a subspace one."""
        given = {"device": (self.tensors, device), "max_memory": (self.moments == 2, max_memory),
                 "n_components": (self.subspaces, n_components)}
        return {key: value for key, (takes, value) in given.items() if takes and value is not None}

    def inputs(self, X: torch.Tensor) -> Any:
        """*X* as this probe takes it: the tensor itself, or a numpy copy on the CPU."""
        return X if self.tensors else X.detach().cpu().numpy()

    def class_scores(self, probe: Any, X: Any) -> np.ndarray:
        """(n, K) float32 class scores of a fitted *probe* (scikit-learn's two-class single column, the score of
        ``classes_[1]`` minus ``classes_[0]``, made two columns with a zero first)."""
        out = np.asarray(getattr(probe, self.scores)(X), dtype=np.float32)
        if out.ndim == 1:
            out = np.stack([np.zeros_like(out), out], axis=1)
        return out


def _knn(**kwargs: Any) -> KNeighborsClassifier:
    return KNeighborsClassifier(**{"n_neighbors": 5, "metric": "cosine", **kwargs})


# In the order of masc_probe._choices.PROBE_NAMES (tests/test_registry.py holds them equal). MASC's scores are its
# cosines: its decision_function folds two classes into one column, which is no similarity to calibrate.
SPECS: dict[str, ProbeSpec] = {s.name: s for s in (
    ProbeSpec("masc", MinimumAngleSubspaceClassifier, MinimumAngleSubspaceClassifier, moments=2, tensors=True,
              scores="cosines", score_kind="similarity", subspaces=True, profile=True),
    ProbeSpec("ncm", NearestClassMean, NearestClassMean, moments=1, tensors=True, scores="decision_function",
              score_kind="similarity"),
    ProbeSpec("linear", LinearProbe, LinearProbe, moments=0, tensors=True, scores="decision_function",
              score_kind="log"),
    ProbeSpec("velpic", VeLPIC, VeLPIC, moments=2, tensors=True, scores="decision_function",
              score_kind="similarity"),
    ProbeSpec("knn", KNeighborsClassifier, _knn, moments=0, tensors=False, scores="predict_proba",
              score_kind="shares"),
    ProbeSpec("lda", LinearDiscriminantAnalysis, LinearDiscriminantAnalysis, moments=0, tensors=False,
              scores="decision_function", score_kind="log"),
    ProbeSpec("qda", QuadraticDiscriminantAnalysis, QuadraticDiscriminantAnalysis, moments=0, tensors=False,
              scores="decision_function", score_kind="log"),
)}

# The public face: name -> factory (each takes the estimator's keyword arguments).
PROBES: dict[str, Callable[..., Any]] = {name: s.factory for name, s in SPECS.items()}


def spec(name: str) -> ProbeSpec:
    """The :class:`ProbeSpec` of a registry name.

    Raises:
        UnknownNameError: the name is not in ``SPECS``; the message lists the closest names.
    """
    return SPECS[check_choice("probe", name, SPECS)]


def make_probe(name: str, **kwargs: Any) -> Any:
    """A new, unfitted probe by registry name (see ``PROBES``).

    Raises:
        UnknownNameError: the name is not in ``PROBES``; the message lists the closest names.
    """
    return spec(name).factory(**kwargs)


def probe_from_state(arrays: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device) -> Any:
    """Rebuild a probe saved by its ``to_state()``; ``meta["probe"]`` names it in the registry.

    Raises:
        InputError: The metadata names no probe of the registry.
    """
    entry = SPECS.get(meta.get("probe", ""))
    if entry is None:
        raise InputError(f"a saved probe's metadata must name one of {list(SPECS)}, got {meta.get('probe')!r}")
    return entry.cls.from_state(arrays, meta, device)
