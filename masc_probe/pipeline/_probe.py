"""Probing in the pipeline: :func:`probe_source` (``masc-probe probe``) and :class:`ProbePlan`, what every probing
pass of a call follows: one :class:`~masc_probe.runner._config.RunnerConfig`, checked against the model before any
training or file writing, then one :class:`~masc_probe.ProbeRunner` per network probed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from masc_probe._choices import DEFAULT_PROBES, PIPELINE_LABELS
from masc_probe._params import DEFAULT_N_COMPONENTS, check_choice
from masc_probe.errors import InputError
from masc_probe.pipeline._inputs import RunData, check_device, load_run_data, resolve_source
from masc_probe.pipeline._outputs import RunResult, save_probes, write_outputs
from masc_probe.report import ProbeReport
from masc_probe.runner._config import RunnerConfig
from masc_probe.runner._controls import run_controls

logger = logging.getLogger(__name__)

__all__ = ["ProbePlan", "probe_config", "probe_source"]

_PROBE_BATCH = 256  # batch of the probing passes: no effect on the results, only on speed and memory


@dataclass
class ProbePlan:
    """A pipeline call's probing: its settings (validated against a model before any training or file writing) and
    its data; :meth:`run` probes one network."""

    config: RunnerConfig  # controls by name: "init" is built per network (run_controls), not at planning
    data: RunData
    batch_size: int = _PROBE_BATCH
    save_probes_to: Path | None = None  # a folder whose probes/ receives the fitted probes (pipeline._outputs)

    @classmethod
    def make(cls, net: Any, config: RunnerConfig, data: RunData) -> ProbePlan:
        """Check *config*'s layer, probe and control names against *net* now, not after training.

        Raises:
            UnknownNameError: A layer *net* does not have.
        """
        from masc_probe.runner import ProbeRunner

        # The init control itself is built when probing (a run's own epoch 0, or a re-initialized copy), not here;
        # nor is the network moved to the device before training.
        ProbeRunner.from_config(net, replace(config, device=None,
                                             controls=tuple(c for c in config.controls if c != "init")))
        return cls(config=config, data=data)

    def run(self, net: Any, *, model_name: str, dataset: str, extra: Mapping[str, Any] | None = None,
            epoch: int | None = None, controls: Any = None) -> ProbeReport:
        """Fit every probe on the training split through *net*, score them on the test split.

        Args:
            controls: ProbeRunner's ``controls=`` for this call (default: the plan's names), e.g. a run's own
                epoch-0 network from :func:`~masc_probe.runner._controls.run_controls`.
        """
        from torch.utils.data import DataLoader

        from masc_probe.runner import ProbeRunner

        data = self.data
        train = DataLoader(data.train, batch_size=self.batch_size, shuffle=False)
        test = DataLoader(data.test, batch_size=self.batch_size, shuffle=False)
        # shard=True: under several processes (accelerate launch, torchrun) each reads only its part of the plain
        # loaders; one process reads them whole.
        with ProbeRunner.from_config(net, self.config, controls=controls) as runner:  # spilled probes go with it
            runner.fit(train, num_classes=data.num_classes, shard=True)
            report = runner.evaluate(test, epoch=epoch, shard=True, model_name=model_name, dataset=dataset,
                                     corruption=data.corruption, extra={**(extra or {}), "data": data.record,
                                                                        **_subset_key(data)})
            if self.save_probes_to is not None:
                save_probes(runner, self.save_probes_to)
            return report


def probe_config(data: RunData, *, labels: str, **options: Any) -> RunnerConfig:
    """The settings of a pipeline call's probing, validated once: :meth:`RunnerConfig.make
    <masc_probe.runner._config.RunnerConfig.make>` of *options* (a selection setting left None is the runner's
    default), with the data's seed and its label sets.

    Raises:
        InputError: ``labels="corrupted"`` on clean data, or any value ``RunnerConfig.make`` refuses.
        UnknownNameError: An unknown label set, probe or control.
    """
    check_choice("labels", labels, PIPELINE_LABELS)
    if not data.corrupted:
        if labels == "corrupted":
            raise InputError("expected corrupted training labels for labels='corrupted', got clean data (corrupt=0)")
        labels = "true" if labels == "both" else labels  # clean data: the "corrupted" set would repeat the true one
    default = ("select", "select_split", "select_seed", "select_size", "select_crossfit")
    given = {key: value for key, value in options.items() if value is not None or key not in default}
    return RunnerConfig.make(labels=labels, seed=data.seed, **given)


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
    config = probe_config(data, layers=layers, probes=probes, labels=labels, n_components=n_components,
                          max_memory=max_memory, device=device, progress=progress, protocol=protocol, reducer=reducer,
                          controls=controls, select=select, select_split=select_split, select_seed=select_seed,
                          select_size=select_size, select_crossfit=select_crossfit)
    plan = ProbePlan.make(first, config, data)
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
        names = config.controls if i == len(checkpoints) - 1 else tuple(c for c in config.controls if c == "input")
        kept = run_controls(names, None if src.kind == "spec" else path, net, seed=data.seed,
                            revision=revision if src.kind == "hub" else None)
        reports.append((epoch or 0, plan.run(net, model_name=name, dataset=src.dataset, epoch=epoch,
                                             extra={"source": str(source)}, controls=kept)))
    report = ProbeReport.over_epochs(reports) if all_checkpoints else reports[0][1]
    card = not all_checkpoints and (out / "config.json").is_file()
    files = write_outputs(report, out, card=card, dynamics=all_checkpoints)
    return RunResult(output_dir=out, report=report, files=files)
