"""ProbeRunner: one model, its named layers, several probes and every label set, in one pass over the data.

``fit`` runs the model once over the training batches. Statistic probes (masc, ncm, velpic) add each batch to their
sufficient statistics and let it go; every layer that something else must read again (feature probes such as
linear/knn/lda/qda, a MASC layer too large to accumulate within the memory budget, the training-accuracy check) has
its flattened rows appended to a disk cache in a temporary folder, read back from there, and removed at the end.
``evaluate`` runs the model once over the test batches and scores every probe and the model's own logits in the
same pass. Fitted probes past an eighth of the memory budget wait on disk (``_probe_store``).

>>> runner = ProbeRunner(model, probes=("masc", "ncm"))          # doctest: +SKIP
>>> report = runner.fit(train_loader).evaluate(test_loader)      # doctest: +SKIP
>>> report.best_layer("masc", "true")["layer"]                   # doctest: +SKIP
'layer3'
>>> runner.save("probes/")                                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from masc_probe import _distributed as dist
from masc_probe._feature_cache import Reducer, RowCache
from masc_probe._probe_store import ProbeStore
from masc_probe._runner_eval import build_report, evaluate_pass, predict_rows
from masc_probe._runner_fit import FitState, Plan, finish_fit, fit_pass
from masc_probe._runner_pass import Forward, model_device
from masc_probe.errors import InputError, UnknownNameError, closest
from masc_probe.report import ProbeReport

__all__ = ["ProbeRunner"]

DEFAULT_MAX_MEMORY = 4 * 1024**3
LABEL_CHOICES = ("both", "corrupted", "true", "label")
Key = tuple[str, str, str]  # (layer, probe, label set)


class ProbeRunner:
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
        reducer: None (flatten each activation per sample, as the paper), ``"gap"`` (global average pooling over
            the spatial axes) or ``"random:D"`` (seeded Gaussian projection to D features). Never the default.
        max_memory: Bytes for probe statistics held in memory (default 4 GiB). Layers whose per-class scatter
            matrices do not fit are solved after the pass from the disk cache, one at a time; within that, each
            class takes the scatter or the Gram form (rows spilled to disk); results are exact either way.
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

    Raises:
        UnknownNameError: An unknown probe, label set or layer name (with the closest valid names).
        InputError: Any other invalid argument.
    """

    def __init__(self, model: nn.Module | None, layers: Sequence[str] | None = None,
                 probes: Sequence[str] = ("masc", "ncm", "linear"), *, labels: str = "both",
                 n_components: float | int = 0.99, reducer: str | None = None, max_memory: int | None = None,
                 device: str | torch.device | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 progress: bool = True, probe_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                 train_accuracy: bool | int = 5_000, seed: int = 0) -> None:
        from masc_probe.probes import PROBES

        if isinstance(probes, str):
            probes = (probes,)
        if not probes:
            raise InputError("probes is empty; name at least one of " + ", ".join(PROBES))
        for name in probes:
            if name not in PROBES:
                raise UnknownNameError(f"unknown probe {name!r}; {closest(str(name), list(PROBES))}")
        if labels not in LABEL_CHOICES:
            raise UnknownNameError(f"unknown label set {labels!r}; {closest(str(labels), LABEL_CHOICES)}")
        if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, int)
                                       or max_memory < 1):
            raise InputError(f"max_memory must be a positive number of bytes or None, got {max_memory!r}")
        if isinstance(train_accuracy, int) and not isinstance(train_accuracy, bool) and train_accuracy < 1:
            raise InputError(f"train_accuracy must be True, False or a row count >= 1, got {train_accuracy}")
        fraction = isinstance(n_components, float) and 0.0 < n_components < 1.0
        count = isinstance(n_components, int) and not isinstance(n_components, bool) and n_components >= 1
        if not (fraction or count):
            raise InputError(f"n_components must be a float in (0, 1) or an int >= 1, got {n_components!r}")
        unknown = set(probe_kwargs or {}) - set(probes)
        if unknown:
            raise InputError(f"probe_kwargs must be keyed by the probes in use {list(probes)}, got {sorted(unknown)}")
        self.model = model
        self.probes = tuple(dict.fromkeys(probes))
        self.labels = labels
        self.n_components = n_components
        self.reducer = Reducer(reducer, seed=seed)
        self.max_memory = DEFAULT_MAX_MEMORY if max_memory is None else int(max_memory)
        self.cache_dir = cache_dir
        self.progress = bool(progress)
        self.probe_kwargs = {k: dict(v) for k, v in (probe_kwargs or {}).items()}
        self.train_accuracy = train_accuracy
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else None
        self.layers: list[str] | None = list(layers) if layers is not None else None
        if model is not None:
            from masc_probe.layers import FeatureTap

            if self.device is not None:
                model.to(self.device)
            with FeatureTap(model, self.layers) as tap:  # validates names now, not after an hour of data loading
                self.layers = list(tap.layers)
        self.estimators_: Mapping[Key, Any] = {}  # a ProbeStore once fitted
        self.failed_: list[dict[str, str]] = []
        self.timings_: dict[str, float] = {}
        self._forward: Forward | None = None

    # ------------------------------------------------------------------------------------------------ fitting
    def fit(self, train: Iterable[Any], *, num_classes: int | None = None, shard: bool = False) -> ProbeRunner:
        """Run the model once over *train* and fit every probe on every layer and label set.

        Args:
            train: A DataLoader or any iterable of batches: ``(x, y)``, ``(x, y, y_true)`` (``y`` corrupted), or
                dicts with ``image``/``pixel_values``/``x``, ``label`` and optionally ``true_label``. Under several
                processes each one passes its own shard (or the whole data with ``shard=True``).
            num_classes: Number of classes; default: the dataset's ``ClassLabel``, else the model's output width.
            shard: With several processes, take every world-size-th batch of *train* (from this rank on) instead
                of treating *train* as this process's shard already. Shards must not repeat samples: Accelerate's
                prepared loaders pad the last batches by repeating some (``even_batches=True``), which would count
                them twice; pass the plain loader with ``shard=True``, or use ``Accelerator(even_batches=False)``.

        Returns:
            self.

        Raises:
            InputError: Batches of an unknown form, labels out of range, a requested label set missing, or no data.
        """
        model = self._need_model()
        world = dist.world()
        t0 = time.perf_counter()
        if isinstance(self.estimators_, ProbeStore):
            self.estimators_.close()
        self.estimators_, self.timings_ = {}, {}
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise InputError(f"num_classes must be an int >= 2 or None, got {num_classes!r}")
        classes = num_classes or _dataset_classes(train)
        cache_root = dist.shared_tempdir(world, self.cache_dir, "masc-probe-rows-")
        cache = RowCache(cache_root, rank=world.rank, world_size=world.size)
        device = self.device or model_device(model)
        # Fitted probes held in memory take an eighth of the budget; the rest wait on disk (see _probe_store).
        store = ProbeStore(self.max_memory // 8, self.cache_dir, device)
        state = FitState(runner=self, world=world, cache=cache, num_classes=classes, store=store)
        try:
            fit_pass(state, model, train, shard=shard)
            finish_fit(state)
        finally:
            dist.barrier(world)
            if world.main:
                cache.cleanup()
        self.estimators_ = store
        self.classes_ = np.arange(state.num_classes or 0)
        self.label_sets_ = list(state.label_sets)
        self.train_accuracy_ = state.train_scores
        self.n_train_ = state.n_train
        self.n_train_scored_ = state.n_train_scored
        self.data_fingerprint_ = state.fingerprint
        self.solvers_ = {k: i["solver"] for k in store if "solver" in (i := store.info(k))}
        self.failed_ = state.failed
        self.plan_: Plan = state.plan
        self.timings_ = {**state.timings, "fit": time.perf_counter() - t0}
        return self

    # ------------------------------------------------------------------------------------------------ scoring
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows each probe sees for a batch: (B, D) float32 per layer, on the runner's device."""
        model = self._need_model()
        if self._forward is None:  # built once: building a tap traces the model
            device = self.device or model_device(model)
            self._forward = Forward(model, self.layers or [], self.reducer, device, want_logits=False)
        rows, _ = self._forward(x)
        return rows

    def predict(self, x: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[Key, torch.Tensor]:
        """Predictions of every fitted probe for one batch.

        Args:
            x: A batch of model inputs (B, ...) — or, for a runner without a model, ``{layer: rows (B, D)}``.

        Returns:
            ``{(layer, probe, label set): labels (B,)}``.
        """
        self._need_fitted()
        rows = dict(x) if isinstance(x, Mapping) else self.features(x)
        return {key: predict_rows(self, key, rows[key[0]]) for key in self.estimators_}

    def evaluate(self, test: Iterable[Any], *, epoch: int | None = None, shard: bool = False,
                 model_name: str | None = None, dataset: str | None = None,
                 corruption: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> ProbeReport:
        """Run the model once over *test*; score every probe and the model itself against the true test labels.

        Args:
            test: Batches as for :meth:`fit`. The label compared is ``true_label`` / ``y_true`` when the batch
                carries one, else ``label`` / ``y`` (test labels are never corrupted).
            epoch: Checkpoint epoch, stored on every result (see :meth:`ProbeReport.over_epochs`).
            shard: As in :meth:`fit`.
            model_name: The report's ``model`` (default: the model's spec, e.g. ``"timm/resnet18"``, or class name).
            dataset: The report's ``dataset``.
            corruption: The report's ``corruption`` (``mode``, ``rate``, ``seed``, ``realized_rate``).
            extra: More top-level report keys.

        Returns:
            The report: one result per layer × probe × label set.
        """
        model = self._need_model()
        self._need_fitted()
        counts = evaluate_pass(self, model, test, shard=shard)
        return build_report(self, counts, epoch=epoch, model_name=model_name, dataset=dataset,
                            corruption=corruption, extra=extra)

    # ------------------------------------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the fitted probes: ``probes.safetensors`` (arrays) and ``runner.json`` (everything else).

        Nothing is pickled. kNN keeps its training rows (it has no other state); LDA and QDA keep the arrays their
        predictions use.

        Args:
            directory: Folder to write (created; the two files are replaced atomically).

        Returns:
            The folder.

        Raises:
            InputError: If the runner is not fitted, or a probe cannot be saved without pickle.
        """
        from masc_probe._probe_state import save_runner

        self._need_fitted()
        return save_runner(self, Path(directory))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], model: nn.Module | None = None, *,
             device: str | torch.device | None = None, progress: bool = True) -> ProbeRunner:
        """Rebuild a runner saved by :meth:`save`; it predicts exactly as the saved one.

        Args:
            directory: Folder written by :meth:`save`.
            model: The same model (for :meth:`predict` on inputs and :meth:`evaluate`); None to score rows only.
            device: Where the probes (and the model) run; default: the CPU.
            progress: As in the constructor.

        Raises:
            InputError: If the folder holds no saved runner, or a newer format.
        """
        from masc_probe._probe_state import load_runner

        return load_runner(cls, Path(directory), model, device=device, progress=progress)

    def close(self) -> None:
        """Release the fitted probes, deleting any kept on disk (the runner must be fitted again to be used)."""
        if isinstance(self.estimators_, ProbeStore):
            self.estimators_.close()
        self.estimators_ = {}
        if self._forward is not None:
            self._forward.close()
            self._forward = None

    # ------------------------------------------------------------------------------------------------ helpers
    def _need_model(self) -> nn.Module:
        if self.model is None:
            raise InputError("this runner has no model; pass model= to ProbeRunner or ProbeRunner.load")
        return self.model

    def _need_fitted(self) -> None:
        if not self.estimators_:
            raise InputError("this ProbeRunner is not fitted yet; call fit(train) first")

    def __repr__(self) -> str:
        state = f"{len(self.estimators_)} fitted probes" if self.estimators_ else "not fitted"
        return f"ProbeRunner(layers={self.layers}, probes={list(self.probes)}, labels={self.labels!r}, {state})"


def _dataset_classes(data: Any) -> int | None:
    """The number of classes a datasets.ClassLabel column declares, when *data* (or its loader's dataset) has one."""
    dataset = getattr(data, "dataset", data)
    features = getattr(dataset, "features", None)
    label = features.get("label") if isinstance(features, Mapping) else None
    n = getattr(label, "num_classes", None)
    return int(n) if isinstance(n, int) and n > 1 else None

