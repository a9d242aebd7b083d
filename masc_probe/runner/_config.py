"""RunnerConfig: a ProbeRunner's settings, validated once and passed down (frozen) to the parts of a pass."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from masc_probe._choices import CONTROLS, DEFAULT_PROBES, PROTOCOLS, RUNNER_LABELS
from masc_probe._params import DEFAULT_N_COMPONENTS, check_choice, check_max_memory, check_n_components, check_probes
from masc_probe.errors import InputError

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
    def row_layers(self) -> tuple[Any, ...]:
        """Every row key of a pass (``_controls.LayerKey``): the trained layers, then each control model's."""
        from masc_probe.runner._keys import control_layers

        return tuple(control_layers(self.layers or (), self.controls))

    @classmethod
    def make(cls, *, layers: Any = None, probes: Any = DEFAULT_PROBES, labels: str = "both",
             n_components: Any = DEFAULT_N_COMPONENTS, reducer: str | Mapping[str, str] | None = None,
             max_memory: Any = None, device: Any = None, cache_dir: Any = None, progress: bool = True,
             probe_kwargs: Any = None, train_accuracy: bool | int = 5_000, seed: int = 0, protocol: str = "clean",
             controls: Any = CONTROLS, select: str = "noisy", select_split: float = 0.5,
             select_seed: int = 0, select_size: float | int | None = None,
             select_crossfit: bool = False, profile: bool = True) -> RunnerConfig:
        """The settings, validated: :class:`~masc_probe.runner.ProbeRunner`'s arguments (the defaults are its own),
        with *controls* as names (``"init"``, ``"input"``; control models are handed to the runner itself).

        Raises:
            UnknownNameError: An unknown probe or label set.
            InputError: Any other invalid value.

        Example::

            config = RunnerConfig.make(probes=("masc",), controls=("input",))
            runner = ProbeRunner.from_config(model, config)
        """
        from masc_probe.runner._keys import check_names
        from masc_probe.runner._select import check_select

        probes = check_probes(probes)
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
                   train_accuracy=train_accuracy, seed=int(seed), protocol=protocol, controls=check_names(controls),
                   select=select, select_split=select_split, select_seed=select_seed, select_size=select_size,
                   select_crossfit=bool(select_crossfit), profile=bool(profile))

    def with_selection(self, *, select: str | None = None, select_split: float | None = None,
                       select_seed: int | None = None, select_size: float | int | None = None,
                       select_crossfit: bool | None = None) -> RunnerConfig:
        """These settings with another choice of layer and subspace size (None keeps a setting), validated.

        Raises:
            UnknownNameError: An unknown rule.
            InputError: A bad split or seed, or a size the fitted profile does not hold.
        """
        asked = {"select": select, "select_split": select_split, "select_seed": select_seed,
                 "select_size": select_size, "select_crossfit": select_crossfit}
        if all(v is None for v in asked.values()):
            return self
        from masc_probe.runner._select import check_select

        merged = {k: getattr(self, k) if v is None else v for k, v in asked.items()}
        rule, split, seed = check_select(merged["select"], merged["select_split"], merged["select_seed"])
        if merged["select_size"] not in (None, *self.profile_sizes()):
            raise InputError(f"select_size must be a size of the fitted profile {list(self.profile_sizes())}; "
                             f"got {merged['select_size']!r}")
        return dataclasses.replace(self, select=rule, select_split=split, select_seed=seed,
                                   select_size=merged["select_size"], select_crossfit=bool(merged["select_crossfit"]))

    def profile_sizes(self) -> tuple[float | int, ...]:
        """The MASC profile's sizes: the package's, plus the fitted ``n_components`` and a fixed size if other."""
        from masc_probe.probes.masc import PROFILE_SIZES

        extra = [s for s in (self.n_components, self.select_size) if s is not None and s not in PROFILE_SIZES]
        return tuple(PROFILE_SIZES) + tuple(dict.fromkeys(extra))


class Settings:
    """A :class:`RunnerConfig`'s values as read-only attributes of the object that holds it (``ProbeRunner``)."""

    config: RunnerConfig

    @property
    def layers(self) -> list[str] | None:
        return list(self.config.layers) if self.config.layers is not None else None

    @property
    def probes(self) -> tuple[str, ...]:
        return self.config.probes

    @property
    def labels(self) -> str:
        return self.config.labels

    @property
    def n_components(self) -> float | int:
        return self.config.n_components

    @property
    def max_memory(self) -> int:
        return self.config.max_memory

    @property
    def device(self) -> torch.device | None:
        return self.config.device

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def cache_dir(self) -> str | os.PathLike[str] | None:
        return self.config.cache_dir

    @property
    def progress(self) -> bool:
        return self.config.progress

    @property
    def probe_kwargs(self) -> Mapping[str, Mapping[str, Any]]:
        return self.config.probe_kwargs

    @property
    def train_accuracy(self) -> bool | int:
        return self.config.train_accuracy
