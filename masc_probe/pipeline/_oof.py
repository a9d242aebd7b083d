"""Out-of-fold probe scores for label issues, on the runner's own machinery.

The model runs once over the data through the runner's forward pass (:class:`~masc_probe.runner._forward.Forward`:
the layers tapped by name, each activation turned into rows by the same reducers, ``cls`` / ``mean`` / ``gap`` /
``auto``) and the rows go to the runner's on-disk row cache (:class:`~masc_probe.runner._cache.RowCache`, which also
checks that a layer keeps its width from batch to batch). The samples are split into K stratified, seeded folds; at
each layer x probe the probe fitted on the other folds scores each fold, so no sample is scored by a probe that saw
it, and the K fold probes also score the *select* data (held out from the network too).

The labels the choices are made against on the select data come from :func:`choice_labels`, the report's rule
(``runner._select.choosing_labels``): by default the select data's labels re-drawn by the training data's own
corruption recipe with a recorded seed, the true ones on request. Never the training rows: a network that memorized
them carries each given label in its late layers, so a choice made there falls on the most memorized layer.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from masc_probe.data._batches import make_loader
from masc_probe.data._batches import split_batch as read_batch
from masc_probe import quality
from masc_probe._choices import SELECT_RULES
from masc_probe._params import check_choice, check_folds, check_probes
from masc_probe.errors import InputError
from masc_probe.probes import make_probe

_STREAMING = ("masc", "ncm", "velpic")  # statistic probes: fitted by partial_fit over blocks of rows
logger = logging.getLogger("masc_probe.pipeline.label_issues")

_BLOCK = 4096  # rows per block while fitting and scoring
# What a probe's class scores are, for calibration into probabilities (masc_probe.quality.calibrated_probabilities).
# scikit-learn's QDA refuses a class with fewer samples than features under its default solver, which every fold of
# a wide layer has: Ledoit-Wolf shrinkage fits any width; `tol` (an absolute rank check that small-scale features
# fail although shrinkage made them positive) does not change predictions.
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {"qda": {"solver": "eigen", "shrinkage": "auto", "tol": 0.0}}
SCORE_KIND = {"lda": "log", "qda": "log", "linear": "log", "knn": "shares"}  # the rest: similarities
CHOOSE_RULES = tuple(r for r in SELECT_RULES if r != "none")  # a layer must be chosen: noisy or clean labels


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


class RankChoice(NamedTuple):
    """A candidate's calibrated out-of-fold probabilities and what follows from them."""

    probs: np.ndarray
    temperature: float | None
    noise: float  # the confident joint's share of wrong labels
    ranking: str
    auroc: dict[str, float] | None  # each ranking's AUROC on the held-out re-labeling (None: ranking given)


def rank_choice(S: np.ndarray, S_sel: np.ndarray | None, y: np.ndarray, held_given: np.ndarray | None,
                classes: np.ndarray, probe: str, ranking: str, seed: int) -> RankChoice:
    """Calibrate a candidate's scores *S* (labels *y*: class positions), estimate the noise share, and choose its
    ranking (``"auto"``) on the select rows *S_sel* (labels *held_given*), or on the out-of-fold rows without them.
    A given *ranking* is still scored there when select rows exist."""
    kind = SCORE_KIND.get(probe, "similarity")
    probs, temperature = quality.calibrated_probabilities(S, y, kind=kind)
    noise = quality.noise_share(probs, y)
    methods = quality.RANKINGS if ranking == "auto" else (ranking,)
    if S_sel is not None and held_given is not None:
        known = np.isin(held_given, classes)
        ref = quality.calibrated_probabilities(S_sel[known], None, kind=kind, temperature=temperature)[0]
        ref_y = np.searchsorted(classes, held_given[known])
    elif ranking == "auto":
        ref, ref_y = probs, y
    else:
        return RankChoice(probs, temperature, noise, ranking, None)
    chosen, auroc = quality.choose_ranking(ref, ref_y, rate=noise, methods=methods, seed=seed)
    return RankChoice(probs, temperature, noise, chosen, auroc)


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
            if name in _STREAMING:
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
                S[pick] = class_scores(probe, name, np.asarray(X[pick]))
            if select is not None and T is not None:
                for start in range(0, len(T), _BLOCK):
                    block = class_scores(probe, name, np.asarray(select[0][start:start + _BLOCK]))
                    T[start:start + _BLOCK] += block / K
                    correct += int(np.sum(classes[block.argmax(axis=1)] == select[1][start:start + _BLOCK]))
        finally:
            if hasattr(probe, "close"):
                probe.close()
    if not np.isfinite(S).all() or (T is not None and not np.isfinite(T).all()):
        raise ValueError("non-finite class scores")
    return S, T, None if select is None else correct / (len(select[1]) * K)


def class_scores(probe: Any, name: str, X: np.ndarray) -> np.ndarray:
    """(n, K) scores of a fitted probe: MASC's cosines, kNN's vote shares, else the decision function."""
    if name == "masc":
        out = probe.cosines(X)
    elif name == "knn":
        out = probe.predict_proba(X)
    else:
        out = probe.decision_function(X)
    out = np.asarray(out, dtype=np.float32)
    if out.ndim == 1:  # two classes: scikit-learn's single column is classes_[1]'s score minus classes_[0]'s
        out = np.stack([np.zeros_like(out), out], axis=1)
    return out


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
    kwargs = {name: {**DEFAULT_KWARGS.get(name, {}), **dict((given or {}).get(name, {}))} for name in probes}
    for name in probes:
        if name in ("masc", "velpic"):
            kwargs[name] = {"max_memory": budget // 2, "device": device, **kwargs[name]}
            if name == "masc":
                kwargs[name].setdefault("n_components", n_components)
        elif name == "ncm":
            kwargs[name] = {"device": device, **kwargs[name]}
    return kwargs


def check_args(probes: Any, folds: Any, seed: Any, threshold: Any, batch_size: Any) -> tuple[str, ...]:
    probes = check_probes(probes)
    check_folds(folds)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be an int >= 0, got {seed!r}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise InputError(f"threshold must be a finite number or None, got {threshold!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return probes


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


def aum(margins: Any, index: np.ndarray) -> np.ndarray:
    """Each sample's AUM, looked up by its index."""
    if isinstance(margins, Mapping):
        missing = [int(i) for i in index if int(i) not in margins]
        if missing:
            raise InputError(f"margins must hold every sample's index; {len(missing)} are missing, e.g. {missing[0]}")
        out = np.array([float(margins[int(i)]) for i in index])
    else:
        m = np.asarray(margins, dtype=np.float64)
        if m.ndim == 2:  # (epochs, N): the area under the margin is its mean over epochs
            m = m.mean(axis=0)
        if m.ndim != 1 or (len(index) and (index.min() < 0 or index.max() >= len(m))):
            raise InputError(f"margins must be (N,) or (epochs, N) with N > the largest index {int(index.max())}, "
                             f"got shape {np.shape(margins)}")
        out = m[index]
    if not np.isfinite(out).all():
        raise InputError("margins must be finite numbers; got NaN or inf")
    return out


def flags(score: np.ndarray, threshold: float | None, flag: str, noise: float, probs: np.ndarray,
           y: np.ndarray) -> np.ndarray:
    if threshold is not None:
        return score < threshold
    if flag == "rank":
        return quality.ranks(score) <= round(noise * len(score))
    return quality.find_issues(probs, y, filter_by=flag)


def score_methods(wrong: np.ndarray, candidates: list[dict[str, Any]], fitted: list[dict[str, Any]],
                   scored: Mapping[tuple[str, str], tuple[np.ndarray, Any]], y: np.ndarray, classes: np.ndarray,
                   ranking: str, score: np.ndarray, flagged: np.ndarray,
                   aum: np.ndarray | None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Against the known corruption: every candidate (into its entry; its own calibrated probabilities under the
    chosen ranking, flagging its disagreements), the chosen detector, MASC alone, AUM."""
    for c in candidates:
        if c["heldout_accuracy"] is not None:
            p = quality.calibrated_probabilities(scored[(c["layer"], c["probe"])][0], y,
                                                 kind=SCORE_KIND.get(c["probe"], "similarity"))[0]
            s = quality.label_quality_scores(p, y, ranking)
            c["metrics"] = quality.detection_metrics(wrong, s, quality.ranks(s) <= int(np.sum(p.argmax(1) != y)))
    metrics = {"chosen": quality.detection_metrics(wrong, score, flagged)}
    masc = next((c for c in fitted if c["probe"] == "masc"), None)  # MASC alone: its best layer by the criterion
    if masc is not None:
        metrics["masc"] = {"layer": masc["layer"], **masc["metrics"]}
    if aum is not None:  # AUM has no noise estimate of its own: it flags as many as the chosen probe
        metrics["aum"] = quality.detection_metrics(wrong, aum, quality.ranks(aum) <= int(flagged.sum()))
    return metrics


def data_corruption(data: Any) -> tuple[dict[str, Any] | None, int | None]:
    """The corruption record and class count :func:`masc_probe.load_data` attached to *data* (or to the dataset of
    its loader or Subset); ``(None, None)`` when it carries none. The record keeps an asymmetric class map."""
    from masc_probe.data import describe_data

    for candidate in (data, getattr(data, "dataset", None)):
        try:
            record = describe_data(candidate) if candidate is not None else None
        except InputError:
            continue
        if record is not None:
            return record.get("corruption"), record.get("num_classes")
    return None, None


def choice_labels(y: np.ndarray, index: np.ndarray, rule: str, corruption: Mapping[str, Any] | None,
                  num_classes: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The labels a layer is chosen against on held-out images (true labels *y*, stable *index*), in their order,
    and their record: the report's ``choosing_labels``, called on the images sorted by index as the report does (a
    ``shuffle`` recipe permutes among the images given, in that order).

    Never call it on training rows: a memorizer's features there carry the labels it memorized, so a choice made
    on them falls on the most memorized layer.
    """
    from masc_probe.runner._select import choosing_labels

    order = np.argsort(index, kind="stable")
    drawn, record = choosing_labels(y[order], rule, corruption, num_classes, seed, index[order])
    out = np.empty_like(drawn)
    out[order] = drawn
    return out, {**record, "n": int(len(y))}


def check_choice_rule(rule: Any, seed: Any) -> tuple[str, int]:
    """The rule of a layer choice (noisy or clean labels) and its seed, each checked in one line."""
    rule = check_choice("select", rule, CHOOSE_RULES)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise InputError(f"select_seed must be an int >= 0; got {seed!r}")
    return rule, int(seed)

