"""The paper's relabeling experiment, and probing every kept checkpoint of a run (dynamics).

Relabeling (:func:`relabel`):

1. split the test set 80/20 with a fixed seed;
2. choose the layer where MASC does best on the 20% part, against the labels a user with noisy data would have there
   (the report's rule, ``select``: by default the part's labels re-drawn by the training data's own corruption
   recipe with a recorded seed; ``clean``: the true ones; ``relabel.json`` records which). Never on the training
   rows: the network memorized their labels, and a choice made on them falls on its most memorized layer;
3. relabel the training set with that layer's MASC predictions from *corrupted-label* subspaces (true-label subspaces
   leak the answer: they are allowed only as an oracle bound, ``oracle=True``, and the result says so), cross-fitted
   so that no sample is labelled by a subspace fitted on itself (on the stratified folds of label issues,
   ``label_issues._oof``: both detectors split the samples alike), and write ``relabel.csv`` (index, given label,
   suggested label, margin between the two best cosines);
4. fine-tune the memorized network on the suggested labels with a fresh optimizer of the same kind and lr, up to
   30 epochs, stopping early on the 20% part (patience 3) and keeping its best epoch;
5. report the accuracy on the 80% part, the share of corrupted samples whose label was repaired and the share of
   clean samples that were broken (against the known corruption, when the batches carry true labels).

``detector="issues"`` replaces steps 2-3 by :func:`~masc_probe.label_issues.find_label_issues`: every layer x
probe scored out of fold, the one most accurate on the 20% part (by the same rule) chosen, its out-of-fold
predictions the suggestions.
``ceiling=True`` also fine-tunes the memorized network, the same way, on the true labels: the accuracy a perfect
detector would reach (the batches must carry true labels).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from masc_probe import _atomic
from masc_probe._choices import ISSUE_PROBES, OPTIMIZERS
from masc_probe._params import DEFAULT_N_COMPONENTS
from masc_probe.data._batches import EpochSampler, make_loader, split_batch
from masc_probe.errors import InputError
from masc_probe.models import load_model, read_config, save_model
from masc_probe.training import evaluate, make_optimizer, run_checkpoints, train_epoch

logger = logging.getLogger(__name__)

__all__ = ["RelabelResult", "probe_checkpoints", "relabel"]


@dataclass(frozen=True)
class RelabelResult:
    """Outcome of :func:`relabel` (also written as ``relabel.json``)."""

    output_dir: str
    layer: str  # the layer chosen on the 20% part
    labels: str  # "corrupted" (the experiment) or "true" (oracle bound: true-label subspaces)
    oracle: bool
    cross_fit: int  # folds of the suggestions (1: in-sample)
    selection_accuracy: float  # the chosen layer's accuracy on the 20% part, against the choosing labels
    n_train: int
    n_changed: int  # training samples whose suggested label differs from the given one
    repaired: float | None  # share of corrupted samples (given != true) whose suggestion is the true label
    broken: float | None  # share of clean samples (given == true) whose suggestion is wrong
    accuracy_before: float  # the memorized model on the 80% part
    accuracy_after: float  # the fine-tuned model (best epoch on the 20% part) on the 80% part
    best_epoch: int  # 0 when no fine-tuning epoch beat the memorized model on the 20% part
    history: list[dict[str, float]] = field(default_factory=list)  # fine-tuning: epoch, loss, select_accuracy
    detector: str = "masc"  # "masc" (the paper's: best MASC layer) or "issues" (find_label_issues' chosen probe)
    probe: str = "masc"  # the probe whose predictions are the suggestions
    accuracy_ceiling: float | None = None  # fine-tuned on the true labels instead (ceiling=True), on the 80% part
    ceiling_best_epoch: int | None = None
    choosing_labels: dict[str, Any] | None = None  # the 20% part's labels the layer was chosen against: their record

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def relabel(
    source: str | os.PathLike[str] | nn.Module,
    train_data: Any,
    test_data: Any,
    *,
    seed: int = 0,
    oracle: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
    layers: list[str] | None = None,
    n_components: float | int = DEFAULT_N_COMPONENTS,
    optimizer: str | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    max_epochs: int = 30,
    patience: int = 3,
    cross_fit: int = 2,
    device: str | torch.device | None = None,
    progress: bool = True,
    detector: str = "masc",
    probes: tuple[str, ...] = ISSUE_PROBES,
    ceiling: bool = False,
    select: str = "noisy",
    select_seed: int = 0,
    corruption: dict[str, Any] | None = None,
) -> RelabelResult:
    """Relabel the training set with MASC and fine-tune on the suggestions (module docstring: the five steps).

    Args:
        source: A run or checkpoint folder / spec for :func:`masc_probe.models.load_model`, or a model.
        train_data: The (corrupted) training data: a map-style dataset or a DataLoader over one, in the contract's
            batch forms; true labels (``true_label`` / ``y_true``) make the repaired/broken shares computable.
        test_data: The clean test data, map-style (it is split by index).
        seed: Seed of the 80/20 split and of the fine-tuning order.
        oracle: Use true-label subspaces (an upper bound that leaks the answer, never a result).
        output_dir: Where ``relabel.csv``, ``relabel.json`` and the fine-tuned model go; default
            ``<run>/relabel`` (``relabel-oracle`` for the oracle), or ``./relabel`` for a model.
        layers: Candidate layers (default: the runner's default layers); the raw input competes when it is one.
        n_components: MASC's threshold.
        optimizer, lr, batch_size: Fine-tuning settings; default those the run was trained with (its config.json),
            else Adam, 1e-3, 128.
        max_epochs: Fine-tuning epochs at most (30).
        patience: Epochs without a better 20%-part accuracy before stopping (3).
        cross_fit: Folds K of the suggestions: each training sample is labelled by subspaces fitted on the other
            K-1 folds (scikit-learn's ``StratifiedKFold(K, shuffle=True, random_state=seed)`` over the given labels,
            as :func:`~masc_probe.label_issues.find_label_issues`). ``1`` predicts in-sample, with subspaces fitted
            on the sample itself — which on small data hands back the given label (each class subspace spans its
            own training points: on 300 digits with the 2048-wide layers none of the 300 labels changed), so K=2
            is the default.
        device: Where everything runs; default the model's device (that of its first parameter or buffer).
        progress: Progress bars of the probe passes.
        detector: ``"masc"`` (the paper's experiment) or ``"issues"``: the suggestions of
            :func:`~masc_probe.label_issues.find_label_issues` over *layers* x *probes*, chosen on the 20%
            part (``cross_fit`` folds, at least 2).
        probes: The candidate probes of ``detector="issues"``.
        ceiling: Also fine-tune a copy of the memorized network on the true labels (needs them in the batches).
        select: The 20% part's labels the layer is chosen against, as the report's ``select``: ``"noisy"``
            re-draws them by *corruption*'s recipe with *select_seed* (clean training data: the labels as given),
            ``"clean"`` keeps the true ones. Fine-tuning still stops early on the part's own labels.
        select_seed: Seed of the noisy labels (0, the report's default).
        corruption: The training labels' corruption record (``mode``, ``rate``); default the one
            :func:`masc_probe.load_data` attached to *train_data*, else the run's ``config.json``.

    Returns:
        The numbers, also written to ``relabel.json``.

    Raises:
        InputError: Data that is not map-style, training data without labels, bad fine-tuning settings, a class
            with fewer training samples than ``cross_fit``, or a model without trainable parameters (there is
            nothing to fine-tune).
    """
    from masc_probe.label_issues import _choose
    from masc_probe.pipeline import _suggest
    from masc_probe.runner import ProbeRunner
    from masc_probe.runner._forward import model_device

    select_rule, select_seed = _choose.check_choice_rule(select, select_seed)
    model, masc, out = _resolve_source(source, oracle, output_dir)
    training = masc.get("training") or {}
    opt_name = optimizer or training.get("optimizer", "adam")
    lr = float(lr if lr is not None else training.get("lr", 1e-3))
    momentum = float(training.get("momentum", 0.9))
    batch_size = int(batch_size or training.get("batch_size", 128))
    if detector not in ("masc", "issues"):
        raise InputError(f"expected detector 'masc' or 'issues', got {detector!r}")
    if detector == "issues" and cross_fit < 2:
        raise InputError(f"detector='issues' scores every sample out of fold: expected cross_fit >= 2, got {cross_fit}")
    if opt_name not in OPTIMIZERS or lr <= 0 or max_epochs < 1 or patience < 1 or cross_fit < 1:
        raise InputError(f"expected optimizer sgd|adam, lr > 0, max_epochs >= 1, patience >= 1, cross_fit >= 1; "
                         f"got {opt_name!r}, {lr}, {max_epochs}, {patience}, {cross_fit}")  # fmt: skip
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError(f"expected a model with trainable parameters to fine-tune on the suggestions, got a "
                         f"{type(model).__name__} with none")
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device).eval()
    train_set, test_set = _map_style(train_data, "training data"), _map_style(test_data, "test data")
    order = np.random.default_rng(seed).permutation(len(test_set))
    cut = len(order) // 5
    choose, held_out = Subset(test_set, order[:cut].tolist()), Subset(test_set, order[cut:].tolist())
    if cut < 1:
        raise InputError(f"expected a test set of at least 5 samples for the 80/20 split, got {len(test_set)}")
    eval_bs = 512
    labels = "true" if oracle else "corrupted"
    if ceiling and split_batch(next(iter(_loader(train_set, 1)))).y_true is None:
        raise InputError("ceiling=True fine-tunes on the true labels: expected them in the training batches, got none")

    # Steps 2-3: the best layer on the 20% part against its choosing labels, and its predictions on the training set.
    recorded, num_classes = _choose.data_corruption(train_set)
    corruption = corruption if corruption is not None else recorded if recorded is not None else masc.get("corruption")
    rule = {"select_rule": select_rule, "select_seed": select_seed, "corruption": corruption}
    probe_name = "masc"
    if detector == "issues" and not oracle:
        given, true, index, suggested, margin, layer, probe_name, selection, chosen_by = _suggest.issues_suggest(
            model, train_set, choose, layers=layers, probes=probes, folds=cross_fit, seed=seed, device=device,
            progress=progress, n_components=n_components, batch_size=eval_bs, **rule)  # fmt: skip
    else:
        # No controls: nothing here shows them; no selection of the runner's own (this one chooses the layer).
        runner = ProbeRunner(model, layers=layers, probes=("masc",), labels=labels, n_components=n_components,
                             device=device, progress=progress, train_accuracy=False, controls=(), select="none",
                             profile=False)  # fmt: skip
        runner.fit(_loader(train_set, eval_bs))
        layer, selection, chosen_by = _suggest.masc_layer(
            runner, choose, labels=labels, rule=select_rule, corruption=corruption, num_classes=num_classes,
            seed=select_seed, batch_size=eval_bs)  # fmt: skip
        in_sample = runner.estimators_[(layer, "masc", labels)] if cross_fit == 1 else None
        given, true, index, suggested, margin = _suggest.masc_suggest(
            model, runner, layer, train_set, eval_bs, labels=labels, folds=cross_fit, seed=seed,
            in_sample=in_sample, n_components=n_components, device=device, progress=progress)  # fmt: skip

    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "relabel.csv", index, given, suggested, margin)
    repaired = broken = None
    if true is not None:
        corrupted = given != true
        repaired = float((suggested[corrupted] == true[corrupted]).mean()) if corrupted.any() else None
        broken = float((suggested[~corrupted] != true[~corrupted]).mean()) if (~corrupted).any() else None

    # Steps 4-5: fine-tune on the suggestions, keep the best epoch on the 20% part, score the 80% part.
    before = _accuracy(model, _loader(held_out, eval_bs), device)
    upper = upper_epoch = None
    if ceiling:  # the same fine-tuning from the same memorized weights, on the true labels
        import copy

        twin = copy.deepcopy(model)
        _, upper_epoch = _fine_tune(
            twin, _suggest.WithLabels(train_set, true), _loader(choose, eval_bs), optimizer=opt_name, lr=lr,
            momentum=momentum, batch_size=min(batch_size, len(train_set)), max_epochs=max_epochs,
            patience=patience, seed=seed, device=device)  # fmt: skip
        upper = _accuracy(twin, _loader(held_out, eval_bs), device)
        del twin
    history, best_epoch = _fine_tune(
        model, _suggest.WithLabels(train_set, suggested), _loader(choose, eval_bs), optimizer=opt_name, lr=lr,
        momentum=momentum, batch_size=min(batch_size, len(train_set)), max_epochs=max_epochs, patience=patience,
        seed=seed, device=device)  # fmt: skip
    after = _accuracy(model, _loader(held_out, eval_bs), device)
    result = RelabelResult(
        output_dir=str(out), layer=layer, labels=labels, oracle=oracle, cross_fit=cross_fit,
        selection_accuracy=selection, detector=detector if not oracle else "masc", probe=probe_name,
        accuracy_ceiling=upper, ceiling_best_epoch=upper_epoch, choosing_labels=chosen_by,
        n_train=len(given), n_changed=int((suggested != given).sum()), repaired=repaired, broken=broken,
        accuracy_before=before, accuracy_after=after, best_epoch=best_epoch, history=history)  # fmt: skip
    _atomic.write_text(out / "relabel.json", json.dumps(result.to_dict(), indent=2))
    meta = {k: v for k, v in masc.items() if k not in ("relabel", "metrics", "masc_probe_version")}
    meta["relabel"] = {k: v for k, v in result.to_dict().items() if k != "history"}
    try:
        save_model(model, out, masc_config=meta)
    except InputError as err:  # a model of another family: the numbers and the csv are still written
        logger.warning("fine-tuned model not saved: %s", err)
    logger.info("relabel: layer %s, repaired %s, broken %s, 80%% accuracy %.4f -> %.4f", layer, repaired, broken,
                before, after)  # fmt: skip
    return result


def probe_checkpoints(run_dir: str | os.PathLike[str], train: Any, test: Any, *, epochs: list[int] | None = None,
                      **runner_kwargs: Any) -> Any:  # fmt: skip
    """Probe every kept checkpoint of a run folder: a :class:`~masc_probe.report.ProbeReport` with an epoch axis.

    Args:
        run_dir: A run folder with ``checkpoints/epoch-NNNN/``.
        train: Training batches (an iterable that can be passed over once per checkpoint, e.g. a DataLoader).
        test: Test batches, likewise.
        epochs: Only these epochs (default: every kept one).
        **runner_kwargs: Passed to :class:`~masc_probe.runner.ProbeRunner` (layers, probes, n_components, …).
            ``controls`` defaults to none here: the epoch-0 checkpoint is the init reference of the dynamics, and
            the runner's default would re-initialize a copy beside every checkpoint.

    Returns:
        ``ProbeReport.over_epochs`` of the per-checkpoint reports; ``report.plot_dynamics(path)`` draws it.

    Raises:
        InputError: The folder has no checkpoints (or none of *epochs*).
    """
    from masc_probe.report import ProbeReport
    from masc_probe.runner import ProbeRunner

    kept = dict(run_checkpoints(run_dir))
    chosen = sorted(kept) if epochs is None else [e for e in sorted(set(epochs)) if e in kept]
    if not chosen:
        raise InputError(f"expected checkpoints/epoch-NNNN folders in {run_dir} (epochs {epochs}), found "
                         f"{sorted(kept)}")
    reports = []
    for epoch in chosen:
        masc = read_config(kept[epoch])
        runner = ProbeRunner(load_model(kept[epoch]), **{"controls": (), **runner_kwargs}).fit(train)
        reports.append((epoch, runner.evaluate(test, epoch=epoch, model_name=masc.get("model"),
                                               dataset=masc.get("dataset"), corruption=masc.get("corruption"))))
    return ProbeReport.over_epochs(reports)


# ------------------------------------------------------------------------------------------------------- helpers
def _resolve_source(source: Any, oracle: bool, output_dir: Any) -> tuple[nn.Module, dict[str, Any], Path]:
    """The model, its config.json "masc_probe" section ({} for a bare model) and the output folder."""
    name = "relabel-oracle" if oracle else "relabel"
    if isinstance(source, nn.Module):
        return source, {}, Path(output_dir or name)
    model = load_model(source)
    try:
        masc = read_config(source)
    except InputError:
        masc = {}
    return model, masc, Path(output_dir) if output_dir else Path(source) / name


def _map_style(data: Any, name: str) -> Dataset:
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")) or isinstance(dataset, (list, tuple)):
        raise InputError(f"expected {name} as a map-style dataset (or a DataLoader over one), got {type(data)}")
    return dataset


def _loader(dataset: Any, batch_size: int) -> Any:
    return make_loader(dataset, batch_size=batch_size, strict=False)[0]


def _write_csv(path: Path, index: np.ndarray, given: np.ndarray, suggested: np.ndarray, margin: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "given_label", "suggested_label", "margin"])
            for row in zip(index.tolist(), given.tolist(), suggested.tolist(), margin.tolist()):
                writer.writerow([row[0], row[1], row[2], f"{row[3]:.6g}"])

    _atomic.write_with(path, write)


def _accuracy(model: nn.Module, loader: Any, device: torch.device) -> float:
    """Accuracy against the test labels (``true_label`` when present, else ``label``)."""
    given, true, _ = evaluate(model, loader, device=device)
    return true if true is not None else given


def _fine_tune(model: nn.Module, data: Dataset, select: Any, *, optimizer: str, lr: float, momentum: float,
               batch_size: int, max_epochs: int, patience: int, seed: int,
               device: torch.device) -> tuple[list[dict[str, float]], int]:  # fmt: skip
    """Train on *data* from a fresh optimizer; early-stop on *select* and leave the model at its best epoch."""
    torch.manual_seed(seed)  # dropout and the like, for models that have them
    opt = make_optimizer(model.parameters(), optimizer, lr=lr, momentum=momentum)
    sampler = EpochSampler(len(data), seed)
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
    best_acc, best_epoch = _accuracy(model, select, device), 0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history: list[dict[str, float]] = []
    waited = 0
    for epoch in range(1, max_epochs + 1):
        sampler.set_epoch(epoch)
        loss = train_epoch(model, opt, loader, device=device)
        acc = _accuracy(model, select, device)
        history.append({"epoch": epoch, "loss": loss, "select_accuracy": acc})
        if acc > best_acc:
            best_acc, best_epoch, waited = acc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= patience:
                break
    model.load_state_dict(best_state)
    return history, best_epoch
