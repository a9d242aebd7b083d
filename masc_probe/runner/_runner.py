"""ProbeRunner: one model, its named layers, several probes and every label set, in one pass over the data.

``fit`` runs the model once over the training batches. Statistic probes (masc, ncm, velpic) add each batch to their
sufficient statistics and let it go; every layer that something else must read again (feature probes such as
linear/knn/lda/qda, a MASC layer too large to accumulate within the memory budget, the training-accuracy check) has
its flattened rows appended to a disk cache in a temporary folder, read back from there, and removed at the end.
``evaluate`` runs the model once over the test batches and scores every probe and the model's own logits in the
same pass. Fitted probes past an eighth of the memory budget wait on disk (``_store``).

Controls run in the same passes (``_controls``): by default the same network at its initial weights (``"init"``) and
the raw input (``"input"``), so that the report pairs every trained result with what the architecture and the pixels
give without training.

Example::

    runner = ProbeRunner(model, probes=("masc", "ncm"))
    report = runner.fit(train_loader).evaluate(test_loader)
    report.best_layer("masc", "true")["layer"]
    # 'layer3'
    report.comparison("layer3", "masc", "true", "init")["verdict"]
    # 'added'
    runner.save("probes/")
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masc_probe._choices import DEFAULT_PROBES
from masc_probe._params import DEFAULT_N_COMPONENTS
from masc_probe.errors import InputError
from masc_probe.layers import LayerReducer
from masc_probe.report import ProbeReport
from masc_probe.runner import _persist, _pretrained
from masc_probe.runner._cache import Reducer
from masc_probe.runner._config import RunnerConfig, Settings
from masc_probe.runner._controls import ControlModel, bind_layers, resolve
from masc_probe.runner._keys import public_key
from masc_probe.runner._data import data_record, num_classes_of
from masc_probe.runner._evaluate import build_report, evaluate_pass, model_name_of, predict_rows
from masc_probe.runner._fit import FitResult, fit
from masc_probe.runner._forward import Forward, model_device, report_notes
from masc_probe.runner._store import NamedProbes

__all__ = ["ProbeRunner"]


class ProbeRunner(Settings):
    """Probe every named layer of a model with several probes, for every label set its batches carry.

    Args:
        model: Any ``nn.Module`` (timm, torchvision, plain torch); run in eval mode under ``torch.no_grad()``.
            ``None`` only for a runner rebuilt by :meth:`load` to score features directly.
        layers: Layer names (see :func:`masc_probe.list_layers`); None: :func:`masc_probe.layers.default_layers`.
        probes: Probe names from ``masc_probe.probes.PROBES`` (``"masc"``, ``"ncm"``, ``"linear"``, ``"velpic"``,
            ``"knn"``, ``"lda"``, ``"qda"``).
        labels: Label sets to fit: ``"both"`` (every set the batches carry: ``"corrupted"`` and ``"true"``, or the
            single ``"label"``), or one of ``"corrupted"``, ``"true"``, ``"label"``.
        n_components: MASC's threshold: a variance fraction in (0, 1) or a count >= 1.
        reducer: How each activation becomes rows: None or ``"flatten"`` (every value, as the paper), ``"cls"``
            (the class token of a (B, T, D) token map), ``"mean"`` (the mean token), ``"gap"`` (global average
            pooling of conv maps), ``"auto"`` (cls for transformer blocks, flatten elsewhere; see
            :mod:`masc_probe.layers._reduce`), a mapping layer → one of those, or ``"random:D"`` (seeded Gaussian
            projection to D features). Reports record the per-layer choice under ``reducer``.
        max_memory: Bytes for probe statistics held in memory (default 4 GiB), or a size such as ``"4GB"``.
            Layers whose per-class scatter matrices do not fit are solved after the pass from the disk cache, one
            at a time; within that, each class takes the scatter or the Gram form (rows spilled to disk); results
            are exact either way.
        device: Where the model and the probes run; None: the model's device. The model is moved there.
        cache_dir: Parent folder of the temporary row cache (default: the system temp folder; every process of a
            multi-process job must see it).
        progress: Show tqdm progress bars (they stay quiet anyway when stderr is not a terminal or TQDM_DISABLE
            is set).
        probe_kwargs: Per-probe constructor arguments, e.g. ``{"linear": {"epochs": 5}}``.
        train_accuracy: Score each fitted probe on the training rows against every label set: True (all rows),
            an int (at most that many rows, a seeded uniform subset; default 5,000, whose 95% interval is within
            ±1.4 points: scoring costs as much per row as a test prediction, which for MASC on wide layers is
            Σk_c·d per row), or False.
        seed: Seed of the training-accuracy subset and of the random reducer.
        protocol: ``"clean"`` (layers read in eval mode) or ``"authors"``, the MASC authors' extraction: every
            module in train mode and each sample run alone, so that BatchNorm normalizes it by its own statistics
            (:class:`~masc_probe.layers.FeatureTap`'s ``mode="train"``; it changes ResNet-18's rows, not those of
            a network without BatchNorm or dropout). The model's own accuracy is measured in eval mode either
            way. Reports record it as ``protocol``.
        controls: What the trained network is compared with, probed in the same passes at the same layers with
            the same probes, labels, reducers and ``n_components``: ``"init"`` (the same architecture at its
            initial weights: a re-initialized copy built the library's own way from *seed*, see
            :func:`masc_probe.runner._reinit.reinitialized`; the pipeline passes a run's exact epoch-0 weights),
            ``"input"`` (the raw input, probed as the layer ``"input"`` and added to *layers* when missing), or a
            mapping name → model to pass any control model by name (``{"init": model0, "clean": clean_model,
            "input": None}``; a :class:`~masc_probe.runner.ControlModel` also says where its weights came from).
            ``None`` or ``()`` probes the trained network alone. Each control model costs one more forward per
            batch and its probe fits. The report then holds the control rows (``control`` set), a ``controls``
            block and paired ``comparisons`` (trained − control on the same test images, exact 95% interval).

        select: How each network (trained, init, raw input) picks its (layer, MASC subspace size) for the report's
            headline, on a *choosing* part of the test images that the comparison then leaves out: ``"noisy"``
            (against the choosing part's labels corrupted by the training data's own recipe and rate, the labels a
            user with noisy data would have), ``"clean"`` (its true labels) or ``"none"`` (the profile only).
            See :mod:`masc_probe.runner._select`; never the training rows (a memorizer's features carry its
            memorized labels there).
        select_split: The choosing part's share of the test images, per class (default half).
        select_seed: Seed of the split and of the noisy labels; recorded in the report.
        select_size: Hold the subspace size fixed (e.g. the paper's 0.99): only the layer is chosen.
        select_crossfit: Also choose on the evaluation part and judge on the choosing part; the report's
            ``selection["crossfit"]`` holds the swapped choices and comparisons and the mean of the two differences.
        profile: Keep every MASC probe's profile (accuracy at every subspace size from its one fit; needed by the
            selection). False scores MASC at ``n_components`` only: the report then has no profile and no selection.

    Raises:
        UnknownNameError: An unknown probe, label set or layer name (with the closest valid names).
        InputError: Any other invalid argument.
    """

    def __init__(self, model: nn.Module | None, layers: Sequence[str] | None = None,
                 probes: Sequence[str] = DEFAULT_PROBES, *, labels: str = "both",
                 n_components: float | int = DEFAULT_N_COMPONENTS, reducer: str | Mapping[str, str] | None = None,
                 max_memory: int | str | None = None,
                 device: str | torch.device | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 progress: bool = True, probe_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                 train_accuracy: bool | int = 5_000, seed: int = 0, protocol: str = "clean",
                 controls: Sequence[str] | Mapping[str, nn.Module | ControlModel | None] | str | None = (
                     "init", "input"), select: str = "noisy", select_split: float = 0.5, select_seed: int = 0,
                 select_size: float | int | None = None, select_crossfit: bool = False,
                 profile: bool = True) -> None:
        config = RunnerConfig.make(
            layers=layers, probes=probes, labels=labels, n_components=n_components, reducer=reducer,
            max_memory=max_memory, device=device, cache_dir=cache_dir, progress=progress, probe_kwargs=probe_kwargs,
            train_accuracy=train_accuracy, seed=seed, protocol=protocol, controls=(), select=select,
            select_split=select_split, select_seed=select_seed, select_size=select_size,
            select_crossfit=select_crossfit, profile=profile)
        self._setup(model, config, controls)

    @classmethod
    def from_config(cls, model: nn.Module | None, config: RunnerConfig, *,
                    controls: Sequence[str] | Mapping[str, nn.Module | ControlModel | None] | None = None,
                    ) -> ProbeRunner:
        """A runner with settings validated once elsewhere, by :meth:`RunnerConfig.make
        <masc_probe.runner._config.RunnerConfig.make>` (the constructor's arguments, as one object).

        Args:
            model: As in the constructor.
            config: The settings; ``config.controls`` names the controls.
            controls: The controls of this runner, as the constructor's ``controls=`` (e.g. a mapping that gives a
                run's own epoch-0 network as ``"init"``); default: ``config.controls``, each built as the
                constructor builds it.

        Example::

            runner = ProbeRunner.from_config(model, RunnerConfig.make(probes=("masc",), controls=("input",)))
        """
        runner = cls.__new__(cls)
        runner._setup(model, config, config.controls if controls is None else controls)
        return runner

    def _setup(self, model: nn.Module | None, config: RunnerConfig, controls: Any) -> None:
        names, self.control_models, self.controls_skipped_ = resolve(controls, model, seed=config.seed)
        self.config = dataclasses.replace(config, controls=names)
        self.model = model
        self.reducer: Reducer | LayerReducer = (
            Reducer(config.reducer, seed=config.seed)
            if isinstance(config.reducer, str) and config.reducer.startswith("random:")
            else LayerReducer(config.reducer, model=model, seed=config.seed))
        if model is not None:
            self.config, self.control_models = bind_layers(model, self.config, self.control_models)
        self.estimators_: Mapping[tuple[str, str, str], Any] = {}  # NamedProbes once fitted
        self.failed_: list[dict[str, str]] = []
        self.timings_: dict[str, float] = {}
        self._fitted: FitResult | None = None
        self._forward: Forward | None = None

    # ------------------------------------------------------------------------------------------------ fitting
    def fit(self, train: Iterable[Any], *, num_classes: int | None = None, shard: bool = False) -> ProbeRunner:
        """Run the model once over *train* and fit every probe on every layer and label set.

        Args:
            train: A DataLoader or any iterable of batches: ``(x, y)``, ``(x, y, y_true)`` (``y`` corrupted), or
                dicts with ``image``/``pixel_values``/``x``, ``label`` and optionally ``true_label``. Under several
                processes each one passes its own shard (or the whole data with ``shard=True``).
            num_classes: Number of classes; default: the dataset's ``ClassLabel``, else the model's output width.
            shard: With several processes, read only this process's shard of *train* (a DataLoader over a
                map-style dataset: a contiguous part of its order; a streamed Hugging Face dataset: split by node;
                other iterables: every world-size-th batch) instead of treating *train* as this process's shard
                already. A loader Accelerate prepared is a shard already. Samples read twice (Accelerate's
                ``even_batches`` padding) count once when batches carry their ``index`` (see ``_distributed``).

        Returns:
            self.

        Raises:
            InputError: Batches of an unknown form, labels out of range, a requested label set missing, or no data.
        """
        model = self._need_model()
        if self._fitted is not None:
            self._fitted.store.close()
        self.estimators_, self.timings_, self._fitted = {}, {}, None
        result = fit(self.config, self.reducer, model, train, num_classes=num_classes_of(train, num_classes),
                     shard=shard, controls=self._control_nets())
        result.data = data_record(train)
        self._set_fitted(result)
        return self

    def _set_fitted(self, result: FitResult) -> None:
        # The fit's keys leave the runner here, spelled as users spell them (``_controls.public_key``).
        self._fitted = result
        self.estimators_ = NamedProbes(result.store)
        self.classes_ = result.classes
        self.label_sets_ = result.label_sets
        self.train_accuracy_ = {public_key(k): v for k, v in result.train_accuracy.items()}
        self.n_train_ = result.n_train
        self.n_train_scored_ = result.n_train_scored
        self.data_fingerprint_ = result.data_fingerprint
        self.solvers_ = {public_key(k): v for k, v in result.solvers.items()}
        self.failed_ = result.failed
        self.plan_ = result.plan.named()
        self.timings_ = result.timings

    # ------------------------------------------------------------------------------------------------ scoring
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows the trained network's probes see for a batch: (B, D) float32 per layer, on the runner's device.
        (``estimators_`` also holds the control models' probes, under layer keys ``"<control>::<layer>"``.)"""
        model = self._need_model()
        if self._forward is None:  # built once: building a tap traces the model
            device = self.config.device or model_device(model)
            self._forward = Forward(model, self.layers or [], self.reducer, device, want_logits=False,
                                    train_mode=self.config.protocol == "authors")
        rows, _ = self._forward(x)
        return rows

    def predict(self, x: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[tuple[str, str, str], torch.Tensor]:
        """Predictions of every fitted probe for one batch.

        Args:
            x: A batch of model inputs (B, ...) — or, for a runner without a model, ``{layer: rows (B, D)}``.

        Returns:
            ``{(layer, probe, label set): labels (B,)}`` of the trained network's probes (a control's score in
            :meth:`evaluate`).
        """
        fitted = self._need_fitted()
        rows = dict(x) if isinstance(x, Mapping) else self.features(x)
        return {public_key(key): predict_rows(key[1], fitted.store[key], rows[key[0].layer]) for key in fitted.store
                if key[0].control is None}

    def evaluate(self, test: Iterable[Any], *, epoch: int | None = None, shard: bool = False,
                 model_name: str | None = None, dataset: str | None = None,
                 corruption: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                 select: str | None = None, select_split: float | None = None, select_seed: int | None = None,
                 select_size: float | int | None = None, select_crossfit: bool | None = None) -> ProbeReport:
        """Run the model once over *test*; score every probe and the model itself against the true test labels.

        Args:
            test: Batches as for :meth:`fit`. The label compared is ``true_label`` / ``y_true`` when the batch
                carries one, else ``label`` / ``y`` (test labels are never corrupted).
            epoch: Checkpoint epoch, stored on every result (see :meth:`ProbeReport.over_epochs`).
            shard: As in :meth:`fit`.
            model_name: The report's ``model`` (default: the model's spec, e.g. ``"timm/resnet18"``, or class name).
            dataset: The report's ``dataset`` (default: the spec the training data was loaded from, when it came
                from :func:`masc_probe.load_data`).
            corruption: The report's ``corruption`` (``mode``, ``rate``, ``seed``, ``realized_rate``; default: the
                training data's own, when it came from :func:`masc_probe.load_data`; None for clean labels).
            extra: More top-level report keys.
            select, select_split, select_seed, select_size, select_crossfit: This evaluation's choice of layer and
                subspace size (default: the constructor's; see there).

        Returns:
            The report: one result per layer × probe × label set, MASC's ``profile`` and the ``selection``.
        """
        model = self._need_model()
        fitted = self._need_fitted()
        config = self.config.with_selection(select=select, select_split=select_split, select_seed=select_seed,
                                            select_size=select_size, select_crossfit=select_crossfit)
        counts = evaluate_pass(config, self.reducer, fitted, model, test, shard=shard,
                               controls=self._control_nets())
        return build_report(config, self.reducer, fitted, counts, epoch=epoch, controls=self.control_models,
                            model_name=model_name or model_name_of(model),
                            dataset=dataset if dataset is not None else fitted.data.get("dataset"),
                            corruption=corruption if corruption is not None else fitted.data.get("corruption"),
                            extra=report_notes(self.controls_skipped_, model, counts, extra))

    # ------------------------------------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write the fitted probes: ``probes/eNNNN.safetensors`` (one per probe) and ``runner.json`` (the settings,
        the class list, each layer's row width, the fit's results), the layout :meth:`from_pretrained` and
        :meth:`push_to_hub` read. :meth:`save` is the same method under another name.

        Nothing is pickled. kNN keeps its training rows (it has no other state); LDA and QDA keep the arrays their
        predictions use.

        Args:
            save_directory: Folder to write (created; the two files are replaced atomically).

        Returns:
            The folder.

        Raises:
            InputError: If the runner is not fitted, or a probe cannot be saved without pickle.

        Example::

            runner.save_pretrained("probes/")
        """
        return _persist.save_runner(self.config, self.reducer, self._need_fitted(), Path(save_directory))

    save = save_pretrained  # an alias: one method, one set of defaults

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | os.PathLike[str], model: nn.Module | None = None, *,
                        revision: str | None = None, token: str | None = None,
                        cache_dir: str | os.PathLike[str] | None = None, subfolder: str | None = None,
                        device: str | torch.device | None = None, progress: bool = True) -> ProbeRunner:
        """Load fitted probes from a folder or a Hub repo; they predict exactly as the saved ones, without refitting.
        :meth:`load` is the same method under another name.

        A folder may be one :meth:`save_pretrained` wrote, a run folder holding them in ``probes/`` (``masc-probe
        run/probe --save-probes``) or a copy of a repo (``masc/probes/``). A repo (``"user/name"`` or
        ``"hf-hub:user/name"``) is read at ``masc/probes/`` (where :meth:`push_to_hub` and ``masc-probe push
        --with-probes`` put them): only ``runner.json`` and the safetensors files it names are downloaded.

        Args:
            repo_or_dir: A local folder, or a Hub repo id.
            model: The model the probes were fitted on (its layers must carry the saved names and widths); None to
                score rows (``predict({layer: rows})``) only.
            revision, token, cache_dir: For a Hub repo, as in ``huggingface_hub.hf_hub_download``.
            subfolder: The folder in the repo (default ``masc/probes``).
            device: Where the probes (and the model) run; None: the model's device, as in the constructor (the CPU
                without a model).
            progress: As in the constructor.

        Returns:
            The fitted runner.

        Raises:
            InputError: No saved runner there, a newer format, missing or malformed files, a model without the saved
                layers (or, on its first batch, with other widths).
            HubError: The repo, revision or a file cannot be had (one line).

        Example::

            net = load_model("hf-hub:me/mlp-digits")
            runner = ProbeRunner.from_pretrained("me/mlp-digits", model=net)
        """
        return _pretrained.load_runner(cls, repo_or_dir, model, revision=revision, token=token, cache_dir=cache_dir,
                                       subfolder=subfolder, device=device, progress=progress)

    load = from_pretrained  # an alias: one method, one set of defaults

    def push_to_hub(self, repo_id: str, *, path_in_repo: str = "masc/probes", private: bool = False,
                    revision: str | None = None, token: str | None = None, commit_message: str | None = None,
                    create_pr: bool = False) -> str:
        """Publish the fitted probes to a Hub repo in one commit, under *path_in_repo* (stale files there go).

        Args:
            repo_id: ``"user/name"`` (created when missing).
            path_in_repo: The folder in the repo (default ``masc/probes``, where :meth:`from_pretrained` looks).
            private, revision, token, create_pr: As in :func:`masc_probe.hub.push_run`.
            commit_message: The commit title.

        Returns:
            The commit URL, or the pull-request URL with *create_pr*.

        Raises:
            InputError: Not fitted, a malformed repo id, or a probe that cannot be saved without pickle.
            HubError: The Hub refuses or fails (one line).
        """
        return _pretrained.push_fitted(self.config, self.reducer, self._need_fitted(), repo_id,
                                       path_in_repo=path_in_repo, title=commit_message, private=private,
                                       revision=revision, token=token, create_pr=create_pr)

    def close(self) -> None:
        """Release the fitted probes, deleting any kept on disk (the runner must be fitted again to be used).

        ``with ProbeRunner(...) as runner:`` calls this on leaving the block, also after an error.
        """
        if self._fitted is not None:
            self._fitted.store.close()
        self.estimators_ = {}
        self._fitted = None
        if self._forward is not None:
            self._forward.close()
            self._forward = None

    def __enter__(self) -> ProbeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ helpers
    def _control_nets(self) -> dict[str, nn.Module]:
        return {name: control.model for name, control in self.control_models.items()}

    def _need_model(self) -> nn.Module:
        if self.model is None:
            raise InputError("this runner has no model; pass model= to ProbeRunner or ProbeRunner.load")
        return self.model

    def _need_fitted(self) -> FitResult:
        if self._fitted is None or not self._fitted.store:
            raise InputError("this ProbeRunner is not fitted yet; call fit(train) first")
        return self._fitted

    def __repr__(self) -> str:
        state = f"{len(self.estimators_)} fitted probes" if self.estimators_ else "not fitted"
        return f"ProbeRunner(layers={self.layers}, probes={list(self.probes)}, labels={self.labels!r}, {state})"

