"""The pipeline's training settings as frozen dataclasses: what data, how to train.

The public functions (``run_experiment``, ``train_model``) keep their keyword arguments; each builds these once and
hands them on. They hold no defaults of their own: a value comes from the function's signature, and what belongs to
training is composed from :class:`~masc_probe.training.TrainConfig` (``RunConfig.train``), whose defaults are the
ones that count. Probing's settings are the runner's own :class:`~masc_probe.runner._config.RunnerConfig`
(``pipeline._probe.probe_config``). The CLI passes only the flags a user gave, so its defaults are these too
(tests/test_cli_defaults.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The pipeline keeps only the final checkpoint unless asked (TrainConfig's own default, "dense", serves train()
# callers who study dynamics): `masc-probe` on digits stays under 60 MB, where the dense schedule kept 20 copies of
# the 21 MB network. Training dynamics (probe --all-checkpoints) need "dense" or "all" at training time.
KEEP_CHECKPOINTS = "final"


@dataclass(frozen=True)
class DataConfig:
    """The training data of a run (its test split is loaded beside it, never corrupted)."""

    dataset: str | os.PathLike[str]  # a dataset spec (masc_probe.load_data)
    corrupt: float  # label corruption rate of the training split
    corrupt_mode: str
    seed: int  # corruption, and the run's initialization and data order
    image_column: str | None = None  # Hub / parquet data whose columns the guess misses
    label_column: str | None = None
    revision: str | None = None  # Hub revision of the dataset
    # At most this many training / test samples: a stratified subset drawn by `seed` (masc_probe.data._subset),
    # recorded in the run's config.json and report; None keeps the split whole.
    max_train_samples: int | None = None
    max_eval_samples: int | None = None


@dataclass(frozen=True)
class RunConfig:
    """What a run trains and where its folder goes; how it trains is ``train``, composed with the preset."""

    model: str  # an architecture spec: a paper model or timm/<name>
    preset: str  # paper, fast, or auto (fast on the built-in datasets, paper otherwise)
    device: str | None = None  # "cpu" forces the CPU
    output_dir: str | os.PathLike[str] | None = None  # None: the default folder
    # TrainConfig fields the call sets (seed, protocol, keep_checkpoints, ...; TrainConfig validates them). A field
    # left out, or None here, is the preset's (optimizer, lr, batch size, stop target) or TrainConfig's default.
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", {k: v for k, v in self.train.items() if v is not None})

