"""What a fit builds up (``FitState``) and leaves on the runner (``FitResult``), and how it makes and freezes a probe
with the runner's settings: shared by the pass (``_fit_pass``), the solve after it (``_solve``) and training accuracy
(``_train_accuracy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from masc_probe.probes._registry import SPECS
from masc_probe.runner import _distributed as dist
from masc_probe.runner._cache import Reducer, RowCache
from masc_probe.runner._config import RunnerConfig
from masc_probe.runner._keys import Key, LayerKey
from masc_probe.runner._forward import sync
from masc_probe.runner._plan import Plan
from masc_probe.runner._store import ProbeStore

CHUNK_BYTES = 128 * 1024**2  # rows read back from the cache per block
INDEX = "_index"  # the row cache's "label set" of sample indices (no label set has this name)


def new_estimator(config: RunnerConfig, probe: str, device: torch.device, max_memory: int | None) -> Any:
    """A fresh probe with the runner's settings (those its registry entry says it takes), then its own keywords."""
    entry = SPECS[probe]
    kwargs = entry.settings(device=device, max_memory=max_memory, n_components=config.n_components)
    kwargs.update(config.probe_kwargs.get(probe, {}))
    return entry.factory(**kwargs)


def freeze(probe: str, est: Any, device: torch.device, config: RunnerConfig | None = None) -> Any:
    """A solved statistic probe in its compact predicting form (``frozen``); other probes as they are. A probe with
    a profile (MASC) keeps it when the runner asks (every size of ``config.profile_sizes()``, within a sixteenth of
    the memory budget per probe)."""
    entry = SPECS[probe]
    if entry.profile and config is not None and config.profile:
        return est.frozen(device, profile=config.profile_sizes(), profile_max_bytes=config.max_memory // 16)
    return est.frozen(device) if entry.streams else est


@dataclass
class FitResult:
    """What a fit leaves on the runner (its attributes ending in ``_``), and what a saved runner holds."""

    store: ProbeStore  # the fitted probes by (layer, probe, label set)
    classes: np.ndarray
    label_sets: list[str]
    train_accuracy: dict[Key, dict[str, float]]
    n_train: int
    n_train_scored: int
    data_fingerprint: str | None  # a digest of the labels fitted on (sample count, input shape, label sets)
    plan: Plan
    failed: list[dict[str, str]] = field(default_factory=list)  # probes left out, with their error
    timings: dict[str, float] = field(default_factory=dict)
    # What the training data's load_data record says ({"dataset", "corruption"}); empty for data without one.
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def solvers(self) -> dict[Key, str]:
        """The solver form of each statistic probe that has one."""
        return {k: i["solver"] for k in self.store if "solver" in (i := self.store.info(k))}


@dataclass
class FitState:
    """Everything one fit builds up."""

    config: RunnerConfig
    reducer: Reducer
    world: dist.World
    cache: RowCache
    num_classes: int | None
    device: torch.device = torch.device("cpu")
    label_sets: list[str] = field(default_factory=list)
    dims: dict[LayerKey, int] = field(default_factory=dict)
    plan: Plan = field(default_factory=Plan)
    estimators: dict[Key, Any] = field(default_factory=dict)
    n_local: int = 0
    n_train: int = 0
    n_train_scored: int = 0
    fingerprint: str | None = None
    input_shape: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    train_scores: dict[Key, dict[str, float]] = field(default_factory=dict)
    store: Any = None  # ProbeStore of the fitted probes
    failed: list[dict[str, str]] = field(default_factory=list)
    indexed: bool = True  # every row so far carried its sample index (kept in the cache as label set INDEX)

    def tick(self, name: str, since: float) -> float:
        now = sync(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + now - since
        return now

