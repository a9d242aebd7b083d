"""Training: train a network with Accelerate until it memorizes its (corrupted) labels. ``_config`` holds the
frozen ``TrainConfig`` (protocol, checkpoint policy, …) and the named presets (the paper's and a fast one); ``_loop``
the run by stages (prepare, resume, epochs, finish); ``_steps`` an epoch's steps; ``_passes`` the passes without a
step; ``_data`` the loaders and where the data is held; ``_accelerate`` the Accelerate state a run stands on;
``_run_folder`` the files of a run folder (checkpoints, the resume state, metrics, ``config.json`` metadata), each
written atomically so that a killed run resumes where its last finished epoch left off.
"""

from __future__ import annotations

from masc_probe.data._batches import EpochSampler
from masc_probe.training._config import PRESETS, TrainConfig, paper_normalization, preset_config
from masc_probe.training._loop import TrainResult, train
from masc_probe.training._passes import evaluate
from masc_probe.training._run_folder import _settle_resume  # noqa: F401  (tests/test_training.py uses it)
from masc_probe.training._run_folder import run_checkpoints
from masc_probe.training._steps import make_optimizer, train_epoch

__all__ = ["PRESETS", "EpochSampler", "TrainConfig", "TrainResult", "evaluate", "make_optimizer",
           "paper_normalization", "preset_config", "run_checkpoints", "train", "train_epoch"]
