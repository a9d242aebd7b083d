"""masc-probe: how much true-label generalization is still decodable from each layer of a memorizing network.

The public names load lazily, so that ``import masc_probe`` (and ``masc-probe --help``) does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from masc_probe._version import __version__

_EXPORTS = {
    "MinimumAngleSubspaceClassifier": "masc_probe.probes",
    "NearestClassMean": "masc_probe.probes",
    "LinearProbe": "masc_probe.probes",
    "VeLPIC": "masc_probe.probes",
    "PROBES": "masc_probe.probes",
    "corrupt_labels": "masc_probe.data.corruption",
    "list_layers": "masc_probe.layers",
    "ProbeRunner": "masc_probe.runner",
    "ProbeReport": "masc_probe.report",
    "load_model": "masc_probe.models",
    "load_data": "masc_probe.data",
    "find_label_issues": "masc_probe.label_issues",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from masc_probe.data.corruption import corrupt_labels
    from masc_probe.data import load_data
    from masc_probe.layers import list_layers
    from masc_probe.models import load_model
    from masc_probe.label_issues import find_label_issues
    from masc_probe.probes import PROBES, LinearProbe, MinimumAngleSubspaceClassifier, NearestClassMean, VeLPIC
    from masc_probe.report import ProbeReport
    from masc_probe.runner import ProbeRunner


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'masc_probe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
