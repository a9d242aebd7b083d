"""The pipeline's settings as frozen dataclasses: what data, how to train, what to probe.

The public functions (``run_experiment``, ``train_model``, ``probe_source``) keep their keyword arguments; each
builds these once and hands them on, so no list of a dozen keywords is forwarded twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from masc_probe._choices import DEFAULT_PROBES


@dataclass(frozen=True)
class DataConfig:
    """The training data of a run (its test split is loaded beside it, never corrupted)."""

    dataset: str | os.PathLike[str] = "digits"  # a dataset spec (masc_probe.load_data)
    corrupt: float = 0.8  # label corruption rate of the training split
    corrupt_mode: str = "random"
    seed: int = 0  # corruption, and the run's initialization and data order
    image_column: str | None = None  # Hub / parquet data whose columns the guess misses
    label_column: str | None = None
    revision: str | None = None  # Hub revision of the dataset


@dataclass(frozen=True)
class RunConfig:
    """How a run trains and where its folder goes (None: the preset's value, or the default folder)."""

    model: str = "mlp"  # an architecture spec: a paper model or timm/<name>
    preset: str = "auto"  # paper, fast, or auto (fast on the built-in datasets, paper otherwise)
    max_epochs: int | None = None
    batch_size: int | None = None  # the global batch
    mixed_precision: str = "no"
    device: str | None = None  # "cpu" forces the CPU
    output_dir: str | os.PathLike[str] | None = None
    progress: bool = True
    protocol: str = "clean"  # "authors": the MASC authors' order, stop rule and extraction (masc_probe._choices)
    keep_checkpoints: str = "dense"  # all, dense or final (TrainConfig.keep_checkpoints)
    record_margins: bool = False  # margins.safetensors: every training sample's margin per epoch (AUM)
    eval_every: int | None = None  # test pass and full training accuracy every K epochs (None: TrainConfig's, 10)
    compile: bool = False  # torch.compile the network (TrainConfig.compile)


@dataclass(frozen=True)
class ProbeConfig:
    """What a run probes (see :class:`masc_probe.ProbeRunner` for each meaning)."""

    layers: Sequence[str] | None = None  # None: the model's probe points
    probes: Sequence[str] = DEFAULT_PROBES
    labels: str = "both"
    n_components: float | int = 0.99
    max_memory: int | None = None
    protocol: str = "clean"  # how layers are read: eval mode, or (authors) train mode one sample at a time
    # How each layer's value becomes rows: None/flatten (the paper's), cls, mean, gap, auto, or {layer: name}
    reducer: str | Mapping[str, str] | None = None
    # What the trained network is compared with: "init" (a run's own epoch-0 weights when it recorded them, else a
    # re-initialized copy) and "input" (the raw input); () for none (ProbeRunner's controls=)
    controls: Sequence[str] = ("init", "input")

    def runner_options(self, *, progress: bool) -> dict[str, Any]:
        """The ProbeRunner keyword arguments these settings stand for."""
        return {"layers": list(self.layers) if self.layers is not None else None, "probes": tuple(self.probes),
                "labels": self.labels, "n_components": self.n_components, "max_memory": self.max_memory,
                "progress": progress, "protocol": self.protocol, "reducer": self.reducer,
                "controls": tuple(self.controls)}
