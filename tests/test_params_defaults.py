"""One default for the subspace size and one for the probes, whichever way a run is started.

The paper keeps the subspace explaining 99% of a class's variance (t = 0.99) and compares MASC with the nearest
class mean and a linear probe; every public signature that takes ``n_components`` or ``probes`` must say so.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import masc_probe

PAPER_T = 0.99
PAPER_PROBES = ("masc", "ncm", "linear")


def _signatures() -> dict[str, inspect.Signature]:
    """Every function and class (its __init__) defined in the package, by qualified name."""
    found: dict[str, inspect.Signature] = {}
    for info in pkgutil.walk_packages(masc_probe.__path__, "masc_probe."):
        if info.name.startswith("masc_probe.benchmarks"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == info.name:
                try:
                    found[f"{info.name}.{name}"] = inspect.signature(obj)
                except (TypeError, ValueError):
                    pass
    return found


def _defaults(parameter: str) -> dict[str, Any]:
    return {name: sig.parameters[parameter].default for name, sig in _signatures().items()
            if parameter in sig.parameters and sig.parameters[parameter].default is not inspect.Parameter.empty}


def test_every_n_components_default_is_the_papers_threshold() -> None:
    defaults = _defaults("n_components")
    # The entry points a user calls are among them (a scan that found nothing would pass vacuously).
    for name in ("masc_probe.runner._runner.ProbeRunner", "masc_probe.runner._config.RunnerConfig",
                 "masc_probe.pipeline._run.run_experiment", "masc_probe.pipeline._probe.probe_source",
                 "masc_probe.label_issues._find.find_label_issues", "masc_probe.pipeline.relabel.relabel",
                 "masc_probe.probes.masc.MinimumAngleSubspaceClassifier"):
        assert name in defaults, name
    # scikit-learn's LDA names its projection's dimension n_components: another quantity, default None.
    defaults.pop("masc_probe.probes._sklearn.LinearDiscriminantAnalysis")
    wrong = {name: value for name, value in defaults.items() if value != PAPER_T}
    assert not wrong, wrong


def test_the_runners_default_probes_are_the_papers_three() -> None:
    from masc_probe import ProbeRunner

    assert tuple(inspect.signature(ProbeRunner).parameters["probes"].default) == PAPER_PROBES
    assert ProbeRunner(__import__("torch").nn.Linear(3, 2), ["input"], progress=False).config.probes == PAPER_PROBES
