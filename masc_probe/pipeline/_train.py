"""Training in the pipeline: :func:`train_model` (``masc-probe train``) and :class:`TrainPlan`, what every run
trains by (its data, its network at the seed's initial weights, the preset's TrainConfig and its folder), checked and
built before the first file is written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masc_probe._choices import PIPELINE_PRESETS, TIMM_PREFIX
from masc_probe._params import check_choice
from masc_probe.errors import InputError
from masc_probe.pipeline._config import KEEP_CHECKPOINTS, DataConfig, RunConfig
from masc_probe.pipeline._inputs import RunData, check_device, default_run_dir, load_run_data
from masc_probe.pipeline._outputs import RunResult

logger = logging.getLogger(__name__)

__all__ = ["TrainPlan", "train_model"]


def train_model(*, model: str = "mlp", dataset: str = "digits", corrupt: float = 0.8, corrupt_mode: str = "random",
                seed: int = 0, preset: str = "auto", max_epochs: int | None = None, batch_size: int | None = None,
                mixed_precision: str | None = None, device: str | None = None, image_column: str | None = None,
                label_column: str | None = None, revision: str | None = None,
                output_dir: str | os.PathLike[str] | None = None, progress: bool = True, protocol: str = "clean",
                keep_checkpoints: str = KEEP_CHECKPOINTS, record_margins: bool = False, eval_every: int | None = None,
                compile: bool = False, max_train_samples: int | None = None,
                max_eval_samples: int | None = None) -> RunResult:
    """Train *model* on *dataset* with corrupted labels until it memorizes them; rerunning resumes.

    Args:
        model: A model spec (``mlp``, ``cnn``, ``alexnet``, ``resnet18-cifar``, ``timm/<name>``, or a folder with a
            ``transformers`` ``config.json`` and no weights: that architecture, built new).
        dataset: A dataset spec (see :func:`masc_probe.load_data`).
        corrupt: Label corruption rate p in [0, 1] of the training split.
        corrupt_mode: ``random``, ``symmetric``, ``shuffle`` or ``asymmetric``.
        seed: Seed of corruption, initialization and data order.
        preset: ``paper``, ``fast``, or ``auto`` (fast on the built-in datasets, paper otherwise).
        max_epochs: Stop after this many epochs (default: the preset's, 500).
        batch_size: Global batch size (default: the preset's).
        mixed_precision: ``no``, ``fp16`` or ``bf16`` (default: TrainConfig's, ``no``).
        device: ``cpu`` forces the CPU; default: an accelerator when present.
        image_column: Image column of Hub / parquet data.
        label_column: Label column of Hub / parquet data.
        revision: Hub revision of the dataset.
        output_dir: The run folder (default :func:`default_run_dir`).
        progress: Show progress bars.
        protocol: ``clean`` or ``authors`` (the MASC authors' fixed order and running-accuracy stop rule; with
            ``preset="auto"`` it takes the paper preset). See :class:`masc_probe.training.TrainConfig`.
        keep_checkpoints: ``all``, ``dense`` or ``final`` (default; TrainConfig's own is ``dense``): which
            ``checkpoints/epoch-NNNN`` the run keeps besides the final one (``probe --all-checkpoints`` reads them).
        record_margins: Keep every training sample's margin after each epoch in ``margins.safetensors`` (the
            record AUM ranks by; ``masc-probe label-issues`` reads it).
        eval_every: Test accuracy and full training accuracy after every *eval_every*-th epoch and the last
            (default 10; the stop rule checks every epoch either way).
        compile: ``torch.compile`` the network (changes the numbers slightly; recorded).
        max_train_samples, max_eval_samples: At most this many training / test samples: a stratified subset drawn
            by *seed* (the Hugging Face example scripts' convention), recorded in config.json and the report; a
            rerun takes the same samples, and a rerun with another subset is refused like one with other data.

    Returns:
        A :class:`RunResult` with ``training`` set.

    Raises:
        InputError: A bad value. UnknownNameError: an unknown model, dataset, mode or preset.
        DataUnavailableError: The data cannot be read here (e.g. a Hub dataset offline).
    """
    run = RunConfig(model=model, preset=preset, device=device, output_dir=output_dir, train=dict(
        seed=seed, max_epochs=max_epochs, batch_size=batch_size, mixed_precision=mixed_precision, progress=progress,
        protocol=protocol, keep_checkpoints=keep_checkpoints, record_margins=record_margins, eval_every=eval_every,
        compile=compile))
    data = DataConfig(dataset=dataset, corrupt=corrupt, corrupt_mode=corrupt_mode, seed=seed,
                      image_column=image_column, label_column=label_column, revision=revision,
                      max_train_samples=max_train_samples, max_eval_samples=max_eval_samples)
    plan = TrainPlan.make(run, data)
    return RunResult(output_dir=plan.run_dir, training=plan.train())


@dataclass
class TrainPlan:
    """Everything a run trains by, checked and built before the first file is written."""

    data: RunData
    net: Any
    config: dict[str, Any]
    train_config: Any
    run_dir: Path

    @classmethod
    def make(cls, run: RunConfig, source: DataConfig) -> TrainPlan:
        from accelerate.utils import set_seed

        from masc_probe.models import PAPER_MODELS, is_architecture_folder, load_model, model_spec
        from masc_probe.training import paper_normalization, preset_config

        model, preset, dataset, seed = run.model, run.preset, source.dataset, source.seed
        check_device(run.device)
        check_choice("preset", preset, PIPELINE_PRESETS)
        architecture = Path(os.fspath(model)).is_dir() and is_architecture_folder(Path(os.fspath(model)))
        if not (model in PAPER_MODELS or str(model).startswith(TIMM_PREFIX) or architecture):
            # Training starts from an architecture; a run folder or hf-hub: model is probed (or relabeled) instead.
            load_model(model)  # an unknown spec raises its own error listing the valid forms
            raise InputError(f"expected an architecture to train ({', '.join(PAPER_MODELS)}, timm/<name>, a folder "
                             f"with a transformers config.json and no weights), got {model!r}; probe a trained "
                             f"model with `masc-probe probe {model}`")
        # The authors fed AlexNet unnormalized Tiny ImageNet pixels; every other paper row is normalized (0.5, 0.5).
        normalize = paper_normalization(model, os.fspath(dataset)) if preset in ("paper", "auto") else None
        data = load_run_data(dataset, corrupt=source.corrupt, mode=source.corrupt_mode, seed=seed,
                             image_column=source.image_column, label_column=source.label_column,
                             revision=source.revision, normalize=normalize,
                             max_train_samples=source.max_train_samples, max_eval_samples=source.max_eval_samples)
        set_seed(seed)  # the initial weights then depend on the seed alone, as when train() builds the model
        net = load_model(model, num_classes=data.num_classes, in_chans=data.shape[0], input_size=data.shape)
        if architecture:  # reports, cards and the default folder name the architecture, not a local path
            model = model_spec(net)
        builtin = data.info["source"] == "builtin" and run.train.get("protocol") != "authors"  # authors: their preset
        chosen = preset if preset != "auto" else ("fast" if builtin else "paper")
        run_dir = Path(run.output_dir) if run.output_dir is not None else default_run_dir(
            model, os.fspath(dataset), source.corrupt, source.corrupt_mode, seed)
        overrides: dict[str, Any] = {**run.train, "seed": seed, "num_classes": data.num_classes,
                                     "output_dir": str(run_dir), "cpu": run.device == "cpu",
                                     "corruption": data.corruption_spec, "preprocessing": data.info["preprocessing"],
                                     "subset": data.subset}
        # The stop target follows the dataset family; a local folder is known by its name (``…/mnist``: 99.9%).
        family = data.info.get("name") or Path(os.fspath(dataset).rstrip("/\\")).name
        config = preset_config(model, family, preset=chosen, **overrides).replace(dataset=os.fspath(dataset))
        if config.batch_size > data.n_train:
            raise InputError(f"expected a batch size of at most the {data.n_train} training samples, got "
                             f"{config.batch_size}")
        summary = {"preset": chosen, "protocol": config.protocol, "optimizer": config.optimizer, "lr": config.lr,
                   "batch_size": config.batch_size, "target_accuracy": config.target_accuracy,
                   "max_epochs": config.max_epochs}
        return cls(data=data, net=net, config=summary, train_config=config, run_dir=run_dir)

    def train(self) -> Any:
        from masc_probe.training import train

        logger.info("training %s in %s (%s preset)", self.train_config.model, self.run_dir, self.config["preset"])
        return train(self.net, self.data.train, config=self.train_config, test_data=self.data.test)
