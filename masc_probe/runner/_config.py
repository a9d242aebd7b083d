"""RunnerConfig: a ProbeRunner's settings, validated once and passed down (frozen) to the parts of a pass."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from masc_probe._choices import PROTOCOLS, RUNNER_LABELS
from masc_probe._params import DEFAULT_N_COMPONENTS, check_choice, check_max_memory, check_n_components, check_probes
from masc_probe.errors import InputError

Key = tuple[str, str, str]  # (layer, probe, label set)


@dataclass(frozen=True)
class RunnerConfig:
    """What a :class:`~masc_probe.runner.ProbeRunner` was asked to do (see its arguments for each meaning).

    Built from the constructor's arguments by :meth:`make`, which validates them and fills the defaults; the fit
    and evaluate passes, the memory plan and persistence read this object, never the runner.
    """

    layers: tuple[str, ...] | None  # resolved names (None only for a runner without a model, before load fills them)
    probes: tuple[str, ...]  # registry names, in the order results are reported
    labels: str = "both"
    n_components: float | int = DEFAULT_N_COMPONENTS  # plain Python number (numpy scalars are converted)
    reducer: str | Mapping[str, str] | None = None  # one for every layer, or layer -> reducer
    max_memory: int = field(default_factory=lambda: check_max_memory(None))  # the whole runner's budget in bytes
    device: torch.device | None = None  # None: the model's device
    cache_dir: str | os.PathLike[str] | None = None
    progress: bool = True
    probe_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    train_accuracy: bool | int = 5_000  # True, False or the most training rows scored
    seed: int = 0
    protocol: str = "clean"  # "authors": layers read in train mode, one sample at a time (masc_probe._choices)
    # Control names in report order: model controls (their models live on the runner), then "input" (the raw input).
    controls: tuple[str, ...] = ()
    # Choosing a (layer, subspace size) per network without the images that judge it (runner/_select.py): the rule
    # ("noisy", "clean", "none"), the choosing part's share of the test images, the seed of the split and of the
    # noisy labels, and a size to hold fixed (None: choose it from the MASC profile).
    select: str = "noisy"
    select_split: float = 0.5
    select_seed: int = 0
    select_size: float | int | None = None
    select_crossfit: bool = False  # also choose on the evaluation part and judge on the choosing part
    profile: bool = True  # False: MASC at the fitted size only (no profile, hence no selection)

    @property
    def row_layers(self) -> tuple[str, ...]:
        """Every row key of a pass: the trained layers, then each control model's (``_controls.control_key``)."""
        from masc_probe.runner._controls import control_layers

        return tuple(control_layers(self.layers or (), self.controls))

    @classmethod
    def make(cls, *, layers: Any, probes: Any, labels: str, n_components: Any,
             reducer: str | Mapping[str, str] | None, max_memory: Any, device: Any, cache_dir: Any,
             progress: bool, probe_kwargs: Any,
             train_accuracy: bool | int, seed: int, protocol: str = "clean",
             controls: tuple[str, ...] = (), select: str = "noisy", select_split: float = 0.5,
             select_seed: int = 0, select_size: float | int | None = None,
             select_crossfit: bool = False, profile: bool = True) -> RunnerConfig:
        """Validate the constructor's arguments.

        Raises:
            UnknownNameError: An unknown probe or label set.
            InputError: Any other invalid value.
        """
        probes = check_probes(probes)
        from masc_probe.runner._select import check_select

        select, select_split, select_seed = check_select(select, select_split, select_seed)
        if select_size is not None:
            select_size = check_n_components(select_size)
        check_choice("protocol", protocol, PROTOCOLS)
        check_choice("labels", labels, RUNNER_LABELS)
        if isinstance(train_accuracy, int) and not isinstance(train_accuracy, bool) and train_accuracy < 1:
            raise InputError(f"train_accuracy must be True, False or a row count >= 1, got {train_accuracy}")
        unknown = set(probe_kwargs or {}) - set(probes)
        if unknown:
            raise InputError(f"probe_kwargs must be keyed by the probes in use {list(probes)}, got {sorted(unknown)}")
        return cls(layers=tuple(layers) if layers is not None else None, probes=tuple(dict.fromkeys(probes)),
                   labels=labels, n_components=check_n_components(n_components), reducer=reducer,
                   max_memory=check_max_memory(max_memory),
                   device=torch.device(device) if device is not None else None, cache_dir=cache_dir,
                   progress=bool(progress), probe_kwargs={k: dict(v) for k, v in (probe_kwargs or {}).items()},
                   train_accuracy=train_accuracy, seed=int(seed), protocol=protocol, controls=tuple(controls),
                   select=select, select_split=select_split, select_seed=select_seed, select_size=select_size,
                   select_crossfit=bool(select_crossfit), profile=bool(profile))

    def profile_sizes(self) -> tuple[float | int, ...]:
        """The MASC profile's sizes: the package's, plus the fitted ``n_components`` and a fixed size if other."""
        from masc_probe.probes.masc import PROFILE_SIZES

        extra = [s for s in (self.n_components, self.select_size) if s is not None and s not in PROFILE_SIZES]
        return tuple(PROFILE_SIZES) + tuple(dict.fromkeys(extra))
