"""Relabeling's suggestions and its choice of layer (:func:`masc_probe.pipeline.relabel.relabel`, steps 2-3).

The layer is chosen on the choosing part of the test set (never on the training rows: the network memorized their
labels, and a choice made on them falls on its most memorized layer) against the labels the report's rule gives
that part (``_choose.choice_labels``: by default re-drawn by the training data's corruption recipe with a recorded
seed, the true ones on request). The suggestions are out-of-fold MASC predictions at that layer (``masc_suggest``),
or label issues' chosen layer x probe (``issues_suggest``, which chooses by the same rule).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from masc_probe.data._batches import make_loader, split_batch
from masc_probe.errors import InputError
from masc_probe.label_issues import _choose, _oof
from masc_probe.probes._registry import SPECS


class WithLabels(Dataset):
    """Map-style rows with their given label replaced (dict rows: ``label``; tuple rows: the second item), and with
    ``true=True`` their true label too (``true_label``; the third item), so that a probe's test accuracy on them is
    its accuracy against *labels*."""

    def __init__(self, base: Any, labels: np.ndarray, *, true: bool = False) -> None:
        self.base, self.labels, self.true = base, torch.as_tensor(labels, dtype=torch.int64), true

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Any:
        row, label = self.base[i], self.labels[i]
        if isinstance(row, dict):
            return {**row, "label": label, **({"true_label": label} if self.true and "true_label" in row else {})}
        if self.true and len(row) > 2:
            return (row[0], label, label, *row[3:])
        return (row[0], label, *row[2:])


def _labels_and_index(data: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """True labels (``true_label``, else the labels) and stable indices (the data's ``index``, else positions) of
    map-style *data*, in its order: the keys label issues' row reader gives the same rows."""
    ys, idx, n = [], [], 0
    for batch in make_loader(data, batch_size=batch_size, strict=False)[0]:
        part = split_batch(batch)
        y = part.y_true if part.y_true is not None else part.y
        y = np.asarray(torch.as_tensor(y)).reshape(-1).astype(np.int64)
        ys.append(y)
        idx.append(np.asarray(torch.as_tensor(part.index)).reshape(-1).astype(np.int64) if part.index is not None
                   else np.arange(n, n + len(y)))
        n += len(y)
    return np.concatenate(ys), np.concatenate(idx)


def masc_layer(runner: Any, select: Any, *, labels: str, rule: str, corruption: Mapping[str, Any] | None,
               num_classes: int | None, seed: int, batch_size: int) -> tuple[str, float, dict[str, Any]]:
    """The layer whose fitted MASC (*runner*'s, on the *labels* set) is most accurate on *select* against its
    choosing labels: (layer, that accuracy, the labels' record). Every candidate layer competes, the raw input too
    when it is one (this chooses where to relabel from, not what training added)."""
    y, index = _labels_and_index(select, batch_size)
    classes = np.asarray(runner.classes_)
    k = int(num_classes) if num_classes else int(max(classes.max(), y.max())) + 1
    chosen, record = _choose.choice_labels(y, index, rule, corruption, k, seed)
    report = runner.evaluate(make_loader(WithLabels(select, chosen, true=True), batch_size=batch_size, strict=False)[0])
    best = report.best_layer("masc", labels, include_input=True)
    return best["layer"], best["test_accuracy"], record


def masc_suggest(model: nn.Module, runner: Any, layer: str, dataset: Any, batch_size: int, *, labels: str,
                 folds: int, seed: int, in_sample: Any, n_components: float | int, device: torch.device,
                 progress: bool) -> tuple[Any, ...]:  # fmt: skip
    """Given labels, true labels (or None), indices, MASC suggestions and cosine margins, in dataset order.

    One pass reads *layer*'s rows (*model* through the runner's reducer) into the label-issue machinery's row
    cache. With ``folds`` > 1 each sample is then scored by the MASC fitted on the other folds: the stratified, seeded
    folds of :func:`~masc_probe.label_issues.find_label_issues` (stratified by the given labels, so that
    both detectors split the samples alike), fitted on the *labels* set. With ``folds`` = 1, by *in_sample*.
    """
    from masc_probe.probes import check_max_memory

    classes = np.asarray(runner.classes_)
    with tempfile.TemporaryDirectory(prefix="masc-relabel-") as spill:
        rows = _oof.collect(model, dataset, [layer], runner.reducer, device, progress=progress,
                            batch_size=batch_size, root=spill, desc="relabel")  # fmt: skip
        try:
            fit_on = rows.given if labels == "corrupted" else rows.true
            if fit_on is None:
                raise InputError("oracle relabeling needs true labels in the training batches, got none")
            X = rows[layer]
            if in_sample is not None:
                S = np.concatenate([SPECS["masc"].class_scores(in_sample, np.asarray(X[i:i + 4096]))
                                    for i in range(0, len(X), 4096)])
            else:
                fold = _oof.stratified_folds(rows.given, folds, seed)
                kwargs = _oof.probe_kwargs(("masc",), None, check_max_memory(None), device, n_components)
                S = _oof.out_of_fold_scores("masc", X, fit_on, fold, classes, kwargs["masc"])[0]
        finally:
            rows.close()
    S = S.astype(np.float64)
    top = np.sort(S, axis=1)[:, ::-1][:, : min(2, S.shape[1])]
    suggested = classes[S.argmax(axis=1)].astype(np.int64)  # ties to the lowest class, as MASC's predict
    return rows.given, rows.true, rows.index, suggested, top[:, 0] - top[:, -1]


def issues_suggest(model: nn.Module, train_set: Any, select: Any, **kwargs: Any) -> tuple[Any, ...]:
    """find_label_issues' suggestions (*kwargs*: its arguments, the choosing rule among them): given, true (or
    None), index, suggested, the chosen probe's gap between its two best class scores, the layer, the probe, its
    accuracy on *select* against the choosing labels, and their record."""
    from masc_probe.label_issues import find_label_issues

    issues = find_label_issues(model, train_set, select=select, **kwargs)
    top = np.sort(issues.class_scores, axis=1)
    gap = (top[:, -1] - top[:, -2]).astype(np.float64)
    return (issues.given_label, issues.true_label, issues.index, issues.suggested_label.astype(np.int64), gap,
            issues.layer, issues.probe, issues.select_accuracy, issues.choosing_labels)
