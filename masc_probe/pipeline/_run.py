"""The end-to-end run, ``masc-probe run``: data → model → training until memorized (:mod:`._train`) → probes on
every layer (:mod:`._probe`) → reports (→ Hub).

Everything a user can get wrong (names, ranges, data that cannot be read, layer names) is checked before the first
file is written, so a failed call leaves no half-made run folder behind. Report files are written atomically.

Example::

    result = run_experiment(model="mlp", dataset="digits", corrupt=0.8)
    result.report.best_layer("masc", "true")["test_accuracy"]
    # 0.98...
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from masc_probe._choices import DEFAULT_PROBES
from masc_probe._hub import check_repo_id  # the one check of a repo id, for every Hub call
from masc_probe._params import DEFAULT_N_COMPONENTS
from masc_probe.pipeline._config import KEEP_CHECKPOINTS, DataConfig, RunConfig
from masc_probe.pipeline._outputs import RunResult, write_outputs
from masc_probe.pipeline._probe import ProbePlan, probe_config
from masc_probe.pipeline._train import TrainPlan
from masc_probe.runner._controls import run_controls

__all__ = ["run_experiment"]


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
    plan = TrainPlan.make(run, DataConfig(dataset=dataset, corrupt=corrupt, corrupt_mode=corrupt_mode, seed=seed,
                                           image_column=image_column, label_column=label_column, revision=revision,
                                           max_train_samples=max_train_samples, max_eval_samples=max_eval_samples))
    config = probe_config(plan.data, layers=layers, probes=probes, labels=labels, n_components=n_components,
                          max_memory=max_memory, device=device, progress=progress, protocol=protocol, reducer=reducer,
                          controls=controls, select=select, select_split=select_split, select_seed=select_seed,
                          select_size=select_size, select_crossfit=select_crossfit)
    probing = ProbePlan.make(plan.net, config, plan.data)
    probing.save_probes_to = plan.run_dir if save_probes else None
    training = plan.train()
    from masc_probe.models import load_model

    trained = load_model(plan.run_dir)  # exactly the checkpoint that is saved and would be published
    extra = {"training": {**plan.config, "epochs": training.epochs, "stopped": training.stopped}}
    # The spec as trained: a transformers architecture folder is named by its class, not its local path.
    report = probing.run(trained, model_name=plan.train_config.model or model, dataset=dataset, extra=extra,
                         controls=run_controls(config.controls, plan.run_dir, trained, seed=plan.data.seed))
    files = write_outputs(report, plan.run_dir, card=True, repo_id=push_to_hub)
    pushed = None
    if push_to_hub is not None:
        from masc_probe.hub import push_run

        pushed = push_run(plan.run_dir, push_to_hub, private=private, with_probes=save_probes)
    return RunResult(output_dir=plan.run_dir, report=report, training=training, files=files, pushed=pushed)
