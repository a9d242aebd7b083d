"""Out-of-fold probe scores for label issues, on the runner's own machinery: the one cross-fitting of the package.

The model runs once over the data through the runner's forward pass (:class:`~masc_probe.runner._forward.Forward`:
the layers tapped by name, each activation turned into rows by the same reducers, ``cls`` / ``mean`` / ``gap`` /
``auto``) and the rows go to the runner's on-disk row cache (:class:`~masc_probe.runner._cache.RowCache`, which also
checks that a layer keeps its width from batch to batch). The samples are split into K stratified, seeded folds; at
each layer x probe the probe fitted on the other folds scores each fold, so no sample is scored by a probe that saw
it, and the K fold probes also score the *select* data (held out from the network too).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from masc_probe.data._batches import make_loader
from masc_probe.data._batches import split_batch as read_batch
from masc_probe.errors import InputError
from masc_probe.probes._registry import SPECS, make_probe

logger = logging.getLogger("masc_probe.label_issues")

_BLOCK = 4096  # rows per block while fitting and scoring
# Label issues' own defaults per probe, under the caller's probe_kwargs. scikit-learn's QDA refuses a class with
# fewer samples than features under its default solver, which every fold of a wide layer has: Ledoit-Wolf shrinkage
# fits any width; `tol` (an absolute rank check that small-scale features fail although shrinkage made them
# positive) does not change predictions.
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {"qda": {"solver": "eigen", "shrinkage": "auto", "tol": 0.0}}


@dataclass
class Rows:
    """One pass over labelled data: each layer's rows in a row cache, the given / true labels and the indices."""

    cache: Any  # RowCache
    layers: list[str]
    given: np.ndarray
    true: np.ndarray | None
    index: np.ndarray

    def __getitem__(self, layer: str) -> np.ndarray:
        return self.cache.matrix(layer)

    def close(self) -> None:
        self.cache.cleanup()


def collect(model: nn.Module | None, data: Any, layers: Sequence[str] | None, reducer: Any, device: Any, *,
            progress: bool, batch_size: int, root: str | Path, desc: str) -> Rows:  # fmt: skip
    """Read *data* once: every layer's rows (the runner's forward and reducers) into a row cache under *root*."""
    from masc_probe.layers import default_layers
    from masc_probe.runner._cache import RowCache
    from masc_probe.runner._cache import _labels as labels_of  # the runner's label check: integers, one per sample
    from masc_probe.runner._distributed import World
    from masc_probe.runner._forward import Forward, batches, model_device

    if model is None and layers is not None and list(layers) != ["input"]:
        raise InputError(f"without a model only the layer 'input' exists, got layers={list(layers)}")
    names = ["input"] if model is None else list(layers) if layers is not None else default_layers(model)
    forward = None if model is None else Forward(
        model, names, reducer, torch.device(device) if device is not None else model_device(model), want_logits=False)
    loader = make_loader(data, batch_size=batch_size, name="data", strict=False)[0]
    cache = RowCache.temporary(root)
    n, n_true, ok = 0, 0, False
    try:
        for batch, _ in batches(loader, world=World(), shard=False, progress=progress, desc=desc):
            if (isinstance(batch, Mapping) and batch.get("label") is None) or (
                    isinstance(batch, (tuple, list)) and len(batch) < 2) or isinstance(batch, torch.Tensor):
                got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
                raise InputError(f"find_label_issues needs the given labels: expected batches with 'label' (or "
                                 f"(x, y) tuples), got {got}")
            part = read_batch(batch)
            x = part.x if isinstance(part.x, torch.Tensor) else torch.as_tensor(np.asarray(part.x))
            b = len(x)
            sets = {"given": labels_of(part.y, b),
                    "index": labels_of(part.index, b) if part.index is not None else torch.arange(n, n + b)}
            if part.y_true is not None:
                sets["true"] = labels_of(part.y_true, b)
                n_true += b
            rows = forward(x)[0] if forward is not None else {"input": reducer("input", x)}
            for name in names:
                cache.append(name, rows[name])
            cache.append_labels(sets)
            n += b
        cache.finish()
        ok = True
    finally:
        if forward is not None:
            forward.close()
        if not ok:
            cache.cleanup()
    if n == 0:
        cache.cleanup()
        raise InputError("expected data with at least one sample, got none")
    if n_true not in (0, n):
        cache.cleanup()
        raise InputError("expected true labels in every batch or in none; some batches carry them, some do not")
    return Rows(cache, names, cache.labels("given"), cache.labels("true") if n_true else None, cache.labels("index"))

def resolve_model(model: Any, device: Any) -> nn.Module | None:
    if model is None or isinstance(model, nn.Module):
        net = model
    elif isinstance(model, (str, os.PathLike)):
        from masc_probe.models import load_model

        net = load_model(model)  # a run folder without a model is its one-line InputError
    else:
        raise InputError(f"model must be an nn.Module, a model spec or run folder, or None; got {type(model)}")
    if net is not None and device is not None:
        net.to(device)
    return net

def stratified_folds(given: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold of each sample: scikit-learn's ``StratifiedKFold(folds, shuffle=True, random_state=seed)``. The one
    cross-fitting of the package: label issues and relabeling's MASC suggestions both split by it.

    Raises:
        InputError: A class of *given* has fewer than *folds* samples.
    """
    from sklearn.model_selection import StratifiedKFold

    classes, counts = np.unique(given, return_counts=True)
    if counts.min() < folds:
        raise InputError(f"folds={folds} needs at least {folds} samples of every class; class "
                         f"{int(classes[np.argmin(counts)])} has {int(counts.min())}")
    fold = np.empty(len(given), dtype=np.int64)
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(given)), given)
    for k, (_, held) in enumerate(split):
        fold[held] = k
    return fold


def fold_split(fold: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(training mask, scored mask) of fold *k*: the probe that scores fold k never sees it."""
    return fold != k, fold == k


def out_of_fold_scores(name: str, X: np.ndarray, given: np.ndarray, fold: np.ndarray, classes: np.ndarray,
                       kwargs: Mapping[str, Any],
                       select: tuple[np.ndarray, np.ndarray] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray | None, float | None]:  # fmt: skip
    """(n, K) class scores, each row from the probe *name* fitted on the folds other than its own; the mean of the
    K fold probes' (m, K) scores of the *select* rows (rows, labels); and the mean of the K fold probes' accuracies
    there (both None without select data).

    Statistic probes stream the training rows block by block (``partial_fit``), the others fit the matrix.
    """
    S = np.empty((len(given), len(classes)), dtype=np.float32)
    K = int(fold.max()) + 1
    T = None if select is None else np.zeros((len(select[1]), len(classes)), dtype=np.float64)
    correct = 0
    for k in range(K):
        train, held = fold_split(fold, k)
        probe = make_probe(name, **kwargs)
        try:
            if SPECS[name].streams:
                for start in range(0, len(given), _BLOCK):
                    keep = train[start:start + _BLOCK]
                    if keep.any():
                        block = np.asarray(X[start:start + _BLOCK])[keep]
                        probe.partial_fit(block, given[start:start + _BLOCK][keep], classes=classes)
            else:
                probe.fit(np.asarray(X[train]), given[train])
            if not np.array_equal(np.asarray(probe.classes_), classes):
                raise ValueError(f"fold {k}'s probe knows classes {np.asarray(probe.classes_).tolist()}, "
                                 f"expected {classes.tolist()}")
            where = np.flatnonzero(held)
            for start in range(0, len(where), _BLOCK):
                pick = where[start:start + _BLOCK]
                S[pick] = SPECS[name].class_scores(probe, np.asarray(X[pick]))
            if select is not None and T is not None:
                for start in range(0, len(T), _BLOCK):
                    block = SPECS[name].class_scores(probe, np.asarray(select[0][start:start + _BLOCK]))
                    T[start:start + _BLOCK] += block / K
                    correct += int(np.sum(classes[block.argmax(axis=1)] == select[1][start:start + _BLOCK]))
        finally:
            if hasattr(probe, "close"):
                probe.close()
    if not np.isfinite(S).all() or (T is not None and not np.isfinite(T).all()):
        raise ValueError("non-finite class scores")
    return S, T, None if select is None else correct / (len(select[1]) * K)

def margin_scores(S: np.ndarray, given: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, suggested label): the given class's score minus the best other class's, and the argmax class."""
    col = np.searchsorted(classes, given)
    rows = np.arange(len(given))
    own = S[rows, col].astype(np.float64)
    other = S.astype(np.float64, copy=True)
    other[rows, col] = -np.inf
    return own - other.max(axis=1), classes[S.argmax(axis=1)]


def score_candidates(rows: Rows, held: Rows | None, probes: Sequence[str], fold: np.ndarray,
                      classes: np.ndarray, kwargs: Mapping[str, Mapping[str, Any]],
                      ) -> tuple[dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]], list[dict[str, Any]]]:
    """Every layer x probe: out-of-fold scores and the select rows' scores (into the first dict), out-of-fold
    accuracy against the given labels and accuracy on the select data (the candidate entries)."""
    scored: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] = {}
    candidates = []
    for layer in rows.layers:
        X = rows[layer]
        for name in probes:
            entry: dict[str, Any] = {"layer": layer, "probe": name, "heldout_accuracy": None, "select_accuracy": None}
            try:
                S, T, entry["select_accuracy"] = out_of_fold_scores(
                    name, X, rows.given, fold, classes, kwargs[name], None if held is None else (held[layer], held.given))
            except (ValueError, np.linalg.LinAlgError, torch.linalg.LinAlgError) as err:
                # A probe that cannot fit here (QDA on a rank-deficient class, …) drops out of the choice.
                entry["error"] = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                logger.warning("label issues: %s at %s failed: %s", name, layer, entry["error"])
            else:
                entry["heldout_accuracy"] = float(np.mean(classes[S.argmax(axis=1)] == rows.given))
                scored[(layer, name)] = (S, T)
            candidates.append(entry)
    return scored, candidates


def probe_kwargs(probes: Sequence[str], given: Mapping[str, Mapping[str, Any]] | None, budget: int, device: Any,
                 n_components: float | int) -> dict[str, dict[str, Any]]:
    """Each candidate's constructor keywords: the shared settings it takes (a second-moment probe's statistics get
    half of *budget*), then :data:`DEFAULT_KWARGS`, then the caller's *given* ones."""
    return {name: {**SPECS[name].settings(device=device, max_memory=budget // 2, n_components=n_components),
                   **DEFAULT_KWARGS.get(name, {}), **dict((given or {}).get(name, {}))} for name in probes}