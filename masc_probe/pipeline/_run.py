"""The end-to-end pipeline: data → model → training until memorized → probes on every layer → reports (→ Hub).

Each function here is what one ``masc-probe`` subcommand calls; the CLI only turns flags into its arguments.
Everything a user can get wrong (names, ranges, data that cannot be read, layer names) is checked before the first
file is written, so a failed call leaves no half-made run folder behind. Report files are written atomically.

Example::

    result = run_experiment(model="mlp", dataset="digits", corrupt=0.8)
    result.report.best_layer("masc", "true")["test_accuracy"]
    # 0.98...
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from masc_probe.pipeline._config import KEEP_CHECKPOINTS, DataConfig, ProbeConfig, RunConfig
from masc_probe.pipeline._inputs import (
    RunData,
    check_device,
    default_run_dir,
    load_run_data,
    resolve_source,
)
from masc_probe._hub import check_repo_id  # the one check of a repo id, for every Hub call
from masc_probe.pipeline._outputs import save_probes as _save_probes
from masc_probe.pipeline._outputs import write_outputs
from masc_probe._choices import (
    DEFAULT_PROBES,
    HUB_PREFIX,
    PIPELINE_LABELS,
    PIPELINE_PRESETS,
    PROTOCOLS,
    TIMM_PREFIX,
)
from masc_probe._params import DEFAULT_N_COMPONENTS, check_choice
from masc_probe.errors import InputError
from masc_probe.probes import check_n_components
from masc_probe.report import ProbeReport

logger = logging.getLogger(__name__)

__all__ = ["RunResult", "default_run_dir", "layer_table", "probe_source", "relabel_run", "run_experiment",
           "train_model"]

_PROBE_BATCH = 256  # batch of the probing passes: no effect on the results, only on speed and memory


@dataclass(frozen=True)
class RunResult:
    """What a pipeline call produced.

    Attributes:
        output_dir: The folder the report files went to (the run folder for ``run``).
        report: The probe report (None for :func:`train_model`).
        training: The training outcome (None when nothing was trained).
        files: ``{name: path}`` of the files written (``report.json``, ``report.md``, plots, ``README.md``).
        pushed: The Hub commit URL when the run was pushed.
    """

    output_dir: Path
    report: ProbeReport | None = None
    training: Any = None  # masc_probe.training.TrainResult
    files: dict[str, Path] = field(default_factory=dict)
    pushed: str | None = None


# ---------------------------------------------------------------------------------------------------- train / run
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
    plan = _TrainPlan.make(run, data)
    return RunResult(output_dir=plan.run_dir, training=plan.train())


def run_experiment(*, model: str = "mlp", dataset: str = "digits", corrupt: float = 0.8,
                   corrupt_mode: str = "random", seed: int = 0, preset: str = "auto", max_epochs: int | None = None,
                   batch_size: int | None = None, mixed_precision: str | None = None,
                   layers: Sequence[str] | None = None,
                   probes: Sequence[str] = DEFAULT_PROBES, labels: str = "both",
                   n_components: float | int = DEFAULT_N_COMPONENTS,
                   max_memory: int | None = None, device: str | None = None, image_column: str | None = None,
                   label_column: str | None = None, revision: str | None = None,
                   output_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                   push_to_hub: str | None = None, private: bool = False, protocol: str = "clean",
                   keep_checkpoints: str = KEEP_CHECKPOINTS, record_margins: bool = False,
                   eval_every: int | None = None, compile: bool = False, save_probes: bool = False,
                   reducer: str | Mapping[str, str] | None = None,
                   controls: Sequence[str] | str | None = ("init", "input"), max_train_samples: int | None = None,
                   max_eval_samples: int | None = None, select: str | None = None,
                   select_split: float | None = None, select_seed: int | None = None,
                   select_size: float | int | None = None, select_crossfit: bool | None = None) -> RunResult:
    """Train until memorized, probe every layer with every probe and label set, write the report and the card.

    The run folder receives the training files (:func:`masc_probe.training.train`), ``report.json``,
    ``report.md``, ``accuracy_by_layer.png`` and ``README.md`` (the model card a push would publish).
    Rerunning the same call resumes training from the last finished epoch.

    Args:
        model, dataset, corrupt, corrupt_mode, seed, preset, max_epochs, batch_size, mixed_precision, device,
            image_column, label_column, revision, output_dir, progress, keep_checkpoints, record_margins,
            eval_every, compile, max_train_samples, max_eval_samples: As in :func:`train_model` (the subsets are
            also what is probed, and the report's ``subset`` says so).
        protocol: As in :func:`train_model`, and for probing: ``authors`` reads the layers in train mode, one
            sample at a time (:class:`masc_probe.ProbeRunner`). The report records it.
        layers: Layers to probe (default: the model's probe points, :func:`masc_probe.layers.default_layers`).
        probes: Probe names (``masc``, ``ncm``, ``linear``, ``velpic``, ``knn``, ``lda``, ``qda``).
        labels: ``both``, ``corrupted`` or ``true``: the label sets subspaces are fitted on.
        n_components: MASC's subspace size: a variance fraction in (0, 1) or a count >= 1.
        max_memory: Bytes the probes may hold in memory (decides the exact solver per layer).
        push_to_hub: ``user/name``: publish the run folder there when done (one commit).
        private: Create the Hub repo private.
        reducer: How each layer's value becomes rows: None or ``flatten`` (the paper's), ``cls``, ``mean``,
            ``gap``, ``auto`` or ``{layer: name}`` (:class:`masc_probe.ProbeRunner`); the report records each
            layer's choice.
        save_probes: Also keep the fitted probes in ``<run>/probes`` (``ProbeRunner.save_pretrained``; a push then
            publishes them under ``masc/probes/``).
        controls: What the trained network is compared with at every layer (:class:`masc_probe.ProbeRunner`):
            ``"init"``, the run's own epoch-0 weights (rebuilt from the seed and SHA-256 the run recorded, and
            verified), and ``"input"``, the raw input; ``()`` or ``"none"`` for neither.
        select, select_split, select_seed, select_size, select_crossfit: How each network (trained, init, raw
            input) chooses its layer and MASC subspace size on a choosing part of the test images, against noisy
            labels drawn by the run's recipe (``"noisy"``, default), clean ones (``"clean"``) or not at all
            (``"none"``); the headline compares the choices on the other part (:class:`masc_probe.ProbeRunner`).
            None: the runner's default.

    Returns:
        A :class:`RunResult` with the report, training outcome, files and (when pushed) the commit URL.

    Raises:
        InputError, UnknownNameError, DataUnavailableError: As in :func:`train_model`, and for bad probing options.
        HubError: The push failed (the run folder is complete; ``masc-probe push`` retries it).
    """
    if push_to_hub is not None:
        check_repo_id(push_to_hub)
    run = RunConfig(model=model, preset=preset, device=device, output_dir=output_dir, train=dict(
        seed=seed, max_epochs=max_epochs, batch_size=batch_size, mixed_precision=mixed_precision, progress=progress,
        protocol=protocol, keep_checkpoints=keep_checkpoints, record_margins=record_margins, eval_every=eval_every,
        compile=compile))
    plan = _TrainPlan.make(run, DataConfig(dataset=dataset, corrupt=corrupt, corrupt_mode=corrupt_mode, seed=seed,
                                           image_column=image_column, label_column=label_column, revision=revision,
                                           max_train_samples=max_train_samples, max_eval_samples=max_eval_samples))
    probe = ProbeConfig(layers=layers, probes=probes, labels=labels, n_components=n_components,
                        max_memory=max_memory, protocol=protocol, reducer=reducer, controls=_control_names(controls),
                        selection={"select": select, "select_split": select_split, "select_seed": select_seed,
                                   "select_size": select_size, "select_crossfit": select_crossfit})
    probing = _ProbePlan.make(plan.net, probe, device=device, progress=progress, data=plan.data)
    probing.save_probes_to = plan.run_dir if save_probes else None
    training = plan.train()
    from masc_probe.models import load_model

    trained = load_model(plan.run_dir)  # exactly the checkpoint that is saved and would be published
    extra = {"training": {**plan.config, "epochs": training.epochs, "stopped": training.stopped}}
    # The spec as trained: a transformers architecture folder is named by its class, not its local path.
    report = probing.run(trained, model_name=plan.train_config.model or model, dataset=dataset, extra=extra,
                         controls=run_controls(probe.controls, plan.run_dir, trained, seed=plan.data.seed))
    files = write_outputs(report, plan.run_dir, card=True, repo_id=push_to_hub)
    pushed = None
    if push_to_hub is not None:
        from masc_probe.hub import push_run

        pushed = push_run(plan.run_dir, push_to_hub, private=private, with_probes=save_probes)
    return RunResult(output_dir=plan.run_dir, report=report, training=training, files=files, pushed=pushed)


@dataclass
class _TrainPlan:
    """Everything checked and built before the first file is written."""

    data: RunData
    net: Any
    config: dict[str, Any]
    train_config: Any
    run_dir: Path

    @classmethod
    def make(cls, run: RunConfig, source: DataConfig) -> _TrainPlan:
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


# ---------------------------------------------------------------------------------------------------------- probe
@dataclass
class _ProbePlan:
    """Probing options, validated against a model before any training or file writing."""

    options: dict[str, Any]
    data: RunData
    device: str | None
    batch_size: int = _PROBE_BATCH
    save_probes_to: Path | None = None  # a folder whose probes/ receives the fitted probes (pipeline._outputs)

    @classmethod
    def make(cls, net: Any, probe: ProbeConfig, *, device: str | None, progress: bool, data: RunData) -> _ProbePlan:
        from masc_probe.runner import ProbeRunner

        probe = replace(probe, n_components=check_n_components(probe.n_components))
        check_choice("labels", probe.labels, PIPELINE_LABELS)
        if probe.labels == "corrupted" and not data.corrupted:
            raise InputError("expected corrupted training labels for labels='corrupted', got clean data (corrupt=0)")
        options = probe.runner_options(progress=progress)
        # Validates layer, probe and control names now, not after training; the init control itself is built when
        # probing (a run's own epoch 0, or a re-initialized copy), not here.
        ProbeRunner(net, **{**options, "controls": tuple(c for c in options["controls"] if c != "init")})
        return cls(options=options, data=data, device=device)

    def run(self, net: Any, *, model_name: str, dataset: str, extra: Mapping[str, Any] | None = None,
            epoch: int | None = None, controls: Any = None) -> ProbeReport:
        """Fit every probe on the training split through *net*, score them on the test split.

        Args:
            controls: ProbeRunner's ``controls=`` for this call (default: the plan's names), e.g. a run's own
                epoch-0 network from :func:`run_controls`.
        """
        from torch.utils.data import DataLoader

        from masc_probe.runner import ProbeRunner

        data = self.data
        options = dict(self.options)
        if controls is not None:
            options["controls"] = controls
        if not data.corrupted and options["labels"] == "both":
            options["labels"] = "true"  # clean data: the "corrupted" set would repeat the true one
        train = DataLoader(data.train, batch_size=self.batch_size, shuffle=False)
        test = DataLoader(data.test, batch_size=self.batch_size, shuffle=False)
        # shard=True: under several processes (accelerate launch, torchrun) each reads only its part of the plain
        # loaders; one process reads them whole.
        with ProbeRunner(net, device=self.device, seed=data.seed, **options) as runner:  # spilled probes go with it
            runner.fit(train, num_classes=data.num_classes, shard=True)
            report = runner.evaluate(test, epoch=epoch, shard=True, model_name=model_name, dataset=dataset,
                                     corruption=data.corruption, extra={**(extra or {}), "data": data.record,
                                                                        **_subset_key(data)})
            if self.save_probes_to is not None:
                _save_probes(runner, self.save_probes_to)
            return report


def _subset_key(data: RunData) -> dict[str, Any]:
    """The report's ``subset`` (``max_train_samples``, ``max_eval_samples``, ``seed``) when a split was cut."""
    return {"subset": data.subset} if data.subset is not None else {}


def probe_source(source: str | os.PathLike[str], *, dataset: str | None = None, corrupt: float | None = None,
                 corrupt_mode: str | None = None, seed: int | None = None, all_checkpoints: bool = False,
                 layers: Sequence[str] | None = None, probes: Sequence[str] = DEFAULT_PROBES, labels: str = "both",
                 n_components: float | int = DEFAULT_N_COMPONENTS, max_memory: int | None = None,
                 device: str | None = None,
                 batch_size: int | None = None, image_column: str | None = None, label_column: str | None = None,
                 revision: str | None = None, pretrained: bool = False,
                 output_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                 protocol: str = "clean", save_probes: bool = False,
                 reducer: str | Mapping[str, str] | None = None,
                 controls: Sequence[str] | str | None = ("init", "input"), select: str | None = None,
                 select_split: float | None = None, select_seed: int | None = None,
                 select_size: float | int | None = None, select_crossfit: bool | None = None,
                 max_train_samples: int | None = None,
                 max_eval_samples: int | None = None) -> RunResult:
    """Probe a trained model (run folder, checkpoint folder, ``hf-hub:`` repo) or a model spec on a dataset.

    A run folder or ``hf-hub:`` repo supplies its dataset, corruption, seed and preprocessing from its
    ``config.json``; the arguments override them. A model spec (``timm/<name>``, a paper name) needs *dataset*.

    Args:
        source: A run or checkpoint folder, ``hf-hub:<user>/<repo>``, ``timm/<name>`` or a paper model name.
        dataset, corrupt, corrupt_mode, seed, image_column, label_column: The data (defaults: the run's own; for a
            model spec, clean labels and seed 0).
        all_checkpoints: Probe every ``checkpoints/epoch-NNNN`` of a run folder into one report with an epoch axis
            (plus an accuracy-over-epochs plot).
        layers, probes, labels, n_components, max_memory, device, progress, reducer: As in
            :func:`run_experiment`.
        batch_size: Batch of the probing passes (default 256; no effect on the results).
        revision: Hub revision of an ``hf-hub:`` model.
        pretrained: For a ``timm/<name>`` spec: start from timm's pretrained weights.
        output_dir: Where the report files go. Default: the run folder itself when probing it on its own data
            (``<run>/dynamics`` with *all_checkpoints*), else ``runs/probe-<source>-<dataset>-…``.
        protocol: ``clean`` (layers read in eval mode) or ``authors`` (train mode, one sample at a time); not
            taken from the run, so that every report says which extraction it used.
        save_probes: Also keep the fitted probes in ``<output_dir>/probes`` (not with *all_checkpoints*).
        controls: As in :func:`run_experiment`. A run folder's or ``hf-hub:`` memorizer's ``"init"`` is its own
            epoch-0 network (from the seed and SHA-256 its config records, verified); any other model's is a
            re-initialized copy built the library's way from the seed. With *all_checkpoints* the init control is
            probed once, with the last checkpoint: the epoch-0 reference line of the dynamics.
        max_train_samples, max_eval_samples: Stratified subsets drawn by the seed (as in :func:`train_model`);
            default: a run folder's own, when probed on its own data (the samples it was trained on), else whole.
        select, select_split, select_seed, select_size, select_crossfit: As in :func:`run_experiment`.

    Returns:
        A :class:`RunResult` with the report and the files written.

    Raises:
        InputError: A missing folder, a run without checkpoints, no dataset for a model spec, a bad option.
        UnknownNameError, DataUnavailableError, HubError: As raised by loading the model or the data.
    """
    if save_probes and all_checkpoints:
        raise InputError("expected one checkpoint to save the probes of, got all_checkpoints=True with save_probes")
    src = resolve_source(source, dataset=dataset, corrupt=corrupt, corrupt_mode=corrupt_mode, seed=seed,
                         revision=revision, all_checkpoints=all_checkpoints)
    data = load_run_data(src.dataset, corrupt=src.corrupt, mode=src.mode, seed=src.seed, image_column=image_column,
                         label_column=label_column, revision=None, normalize=src.normalize,
                         input_size=src.input_size, in_chans=src.in_chans,
                         **src.subset_sizes(max_train_samples, max_eval_samples))
    check_device(device)
    checkpoints = src.checkpoints if all_checkpoints else [(None, src.model_path)]
    first = src.load(checkpoints[0][1], data=data, pretrained=pretrained, revision=revision)
    probe = ProbeConfig(layers=layers, probes=probes, labels=labels, n_components=n_components,
                        max_memory=max_memory, protocol=protocol, reducer=reducer, controls=_control_names(controls),
                        selection={"select": select, "select_split": select_split, "select_seed": select_seed,
                                   "select_size": select_size, "select_crossfit": select_crossfit})
    plan = _ProbePlan.make(first, probe, device=device, progress=progress, data=data)
    if batch_size is not None:
        plan.batch_size = batch_size
    out = Path(output_dir) if output_dir is not None else src.default_output(all_checkpoints)
    plan.save_probes_to = out if save_probes else None
    name = src.model_name or str(source)
    reports: list[tuple[int, ProbeReport]] = []
    for i, (epoch, path) in enumerate(checkpoints):
        net = first if i == 0 else src.load(path, data=data, pretrained=pretrained, revision=revision)
        logger.info("probing %s%s", path, "" if epoch is None else f" (epoch {epoch})")
        # The init control once, beside the last checkpoint (the one its comparisons are about); the raw input
        # (no model to run) with every one.
        names = probe.controls if i == len(checkpoints) - 1 else tuple(c for c in probe.controls if c == "input")
        kept = run_controls(names, None if src.kind == "spec" else path, net, seed=data.seed,
                            revision=revision if src.kind == "hub" else None)
        reports.append((epoch or 0, plan.run(net, model_name=name, dataset=src.dataset, epoch=epoch,
                                             extra={"source": str(source)}, controls=kept)))
    report = ProbeReport.over_epochs(reports) if all_checkpoints else reports[0][1]
    card = not all_checkpoints and (out / "config.json").is_file()
    files = write_outputs(report, out, card=card, dynamics=all_checkpoints)
    return RunResult(output_dir=out, report=report, files=files)


def _control_names(controls: Sequence[str] | str | None) -> tuple[str, ...]:
    """The pipeline's control names (``init``, ``input``; ``none`` / None / () for neither), checked."""
    from masc_probe.runner._controls import check_names

    return check_names(controls)


def init_control(source: str | os.PathLike[str], net: Any, *, seed: int, revision: str | None = None) -> Any:
    """The init control of a trained network *net* from *source* (a run or checkpoint folder, an ``hf-hub:``
    memorizer): a :class:`~masc_probe.runner.ControlModel`.

    It is the run's own epoch-0 network when its config recorded one that rebuilds with the recorded SHA-256
    (``masc_probe.training._init``); when the record does not verify here, a re-initialized copy from *seed* whose
    ``note`` says why; with no record (a run from before it), a re-initialized copy from *seed* — for the paper's
    models, built from the run's seed, the same weights as its epoch 0, though not verified.
    """
    from masc_probe.runner._controls import ControlModel, reinitialized
    from masc_probe.training._init import run_initial_model

    try:
        found = run_initial_model(source, revision=revision)
    except InputError as exc:
        logger.warning("%s", exc)
        return ControlModel(reinitialized(net, seed=seed), source="re-initialized copy", seed=seed,
                            note=f"not the run's own epoch 0: {exc}")
    if found is None:
        return ControlModel(reinitialized(net, seed=seed), source="re-initialized copy", seed=seed)
    model0, record = found
    return ControlModel(model0, source="run epoch 0", seed=int(record["seed"]), init_sha256=str(record["init_sha256"]))


def run_controls(names: Sequence[str], source: str | os.PathLike[str] | None, net: Any, *, seed: int,
                 revision: str | None = None) -> Any:
    """ProbeRunner's ``controls=`` for a trained network from *source* (None for a model spec, whose ``"init"`` the
    runner re-initializes itself): ``"init"`` becomes :func:`init_control`."""
    names = tuple(names)
    if "init" not in names or source is None:
        return names
    init = init_control(source, net, seed=seed, revision=revision)
    return {name: init if name == "init" else None for name in names}


def relabel_run(run_dir: str | os.PathLike[str], *, dataset: str | None = None, corrupt: float | None = None,
                corrupt_mode: str | None = None, seed: int | None = None, oracle: bool = False,
                layers: Sequence[str] | None = None, max_epochs: int = 30, batch_size: int | None = None,
                device: str | None = None, image_column: str | None = None, label_column: str | None = None,
                output_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                protocol: str = "clean", detector: str = "masc", ceiling: bool = False, select: str = "noisy",
                select_seed: int = 0) -> list[Any]:
    """The paper's relabeling experiment on a run folder, on the data it was trained on (see
    :func:`masc_probe.pipeline.relabel.relabel`); with *oracle*, the true-label-subspace bound as well, labelled as
    such.

    Args:
        run_dir: A run folder (or ``hf-hub:`` repo) with its config.
        dataset, corrupt, corrupt_mode, seed, image_column, label_column: The data (default: the run's own).
        oracle: Also run the oracle bound (written to ``relabel-oracle/``).
        layers: Candidate layers for the best MASC layer (default: the model's probe points).
        max_epochs: Fine-tuning epochs at most.
        batch_size: Fine-tuning batch size (default: the run's).
        device, progress: As in :func:`run_experiment`.
        output_dir: Folder of the experiment's files (default ``<run>/relabel``); the oracle's go beside it.
        protocol: ``clean`` (each training sample labelled by subspaces fitted on the other half, ``cross_fit=2``)
            or ``authors`` (subspaces fitted on the whole training set, ``cross_fit=1``, as the authors did).
        detector: ``masc`` (the paper's) or ``issues`` (find_label_issues' chosen layer x probe; clean protocol).
        ceiling: Also fine-tune on the true labels (the accuracy a perfect detector would give).
        select, select_seed: The labels the layer is chosen against on the test set's 20% part (``noisy``: re-drawn
            by the run's recipe with *select_seed*; ``clean``: the true ones), as in ``relabel``.

    Returns:
        ``[RelabelResult]``, then the oracle's when asked.

    Raises:
        InputError: A missing run folder, or a bad value. DataUnavailableError: the data cannot be read here.
    """
    from masc_probe.pipeline.relabel import relabel

    check_choice("protocol", protocol, PROTOCOLS)
    src = resolve_source(run_dir, dataset=dataset, corrupt=corrupt, corrupt_mode=corrupt_mode, seed=seed,
                         revision=None, all_checkpoints=False)
    if src.kind == "spec":
        raise InputError(f"expected a trained model (run folder or hf-hub: repo) to relabel, got the spec {run_dir!r}")
    check_device(device)
    data = load_run_data(src.dataset, corrupt=src.corrupt, mode=src.mode, seed=src.seed, image_column=image_column,
                         label_column=label_column, normalize=src.normalize, input_size=src.input_size,
                         in_chans=src.in_chans)
    if output_dir is None and src.kind == "hub":  # relabel() would default to a folder named after the repo spec
        output_dir = default_run_dir(f"relabel-{src.text}", src.dataset, src.corrupt, src.mode, src.seed)
    results = []
    for bound in (False, True) if oracle else (False,):
        out = None
        if output_dir is not None:
            out = Path(output_dir) if not bound else Path(output_dir).with_name(Path(output_dir).name + "-oracle")
        results.append(relabel(run_dir, data.train, data.test, seed=src.seed, oracle=bound, output_dir=out,
                               layers=list(layers) if layers is not None else None, max_epochs=max_epochs,
                               batch_size=batch_size, device=device, progress=progress,
                               cross_fit=1 if protocol == "authors" else 2, detector=detector,
                               ceiling=ceiling and not bound, select=select, select_seed=select_seed))
    return results


def layer_table(spec: str, *, num_classes: int = 10, in_chans: int | None = None, input_size: int | None = None,
                revision: str | None = None, nodes: bool = True) -> list[tuple[str, bool]]:
    """Every layer name of a model, each with whether it is probed by default.

    Args:
        spec: A model spec, run folder or ``hf-hub:`` repo.
        num_classes, in_chans, input_size: Shape of a new model (ignored for saved ones, which carry their own).
        revision: Hub revision of an ``hf-hub:`` model.
        nodes: Also list FX nodes that are not modules (``list_layers(..., nodes=False)`` otherwise; the default
            layers are listed either way).

    Returns:
        ``[(layer name, probed by default), ...]`` in forward order.

    Raises:
        UnknownNameError, InputError, HubError: As :func:`masc_probe.load_model` raises them.
    """
    from masc_probe.layers import default_layers, list_layers
    from masc_probe.models import load_model

    if str(spec).startswith(HUB_PREFIX) or Path(spec).exists():
        net = load_model(spec, revision=revision)
    else:
        size = None if input_size is None else (input_size, input_size)
        net = load_model(spec, num_classes=num_classes, in_chans=in_chans, input_size=size)
    chosen = set(default_layers(net))
    shown = None if nodes else set(list_layers(net, nodes=False)) | chosen
    return [(name, name in chosen) for name in list_layers(net) if shown is None or name in shown]
