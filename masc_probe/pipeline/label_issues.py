"""Label-issue detection: which training labels are wrong, read from the layers of a network that memorized them.

:func:`find_label_issues` runs the model once over the training data and keeps each layer's flattened rows (in
memory up to a quarter of ``max_memory``, on disk beyond). The samples are split into K folds, stratified by the given
label and seeded; at each layer x probe, the probe fitted on the other K-1 folds scores every sample of fold k, so
no sample is ever scored by a probe that saw it. A sample's *score* is the given class's probe score minus the best
other class's (MASC: cosines; NCM: cosine similarities; LDA, QDA, linear: decision values, i.e. log-probabilities
up to a per-row constant; kNN: vote shares): below zero, the probe prefers another label. The most negative scores
come first in the ranking.

The layer and probe are chosen without the true labels, by accuracy against *given* labels on held-out samples:
under random label noise with rate p over K classes a classifier of true accuracy a, whose errors do not depend on
the noise, agrees with the given labels with probability a(1 - p) + p/K, an increasing affine function of a, so
ranking candidates by it ranks them by true accuracy. The held-out samples must be held out from the *network* too:
a network that memorized the training set carries each sample's given label in its late layers, so a probe fitted
on other folds there reads the wrong labels back, wins the out-of-fold choice and finds few of them (MLPs that
memorized 5,000 MNIST images at p = 0.4: NCM at the last hidden layer agreed with the given labels on 99% of the
held-out folds, where a classifier exact on the true labels agrees on 64%; it flagged them with F1 0.04, the choice
by test accuracy with F1 0.94; ``benchmarks/label_issues.py``). So, given ``select`` data the model
never trained on (the test split; its labels may be noisy too), the candidates, fitted on the training folds, are
ranked by their accuracy there; without it, by out-of-fold accuracy on the training data itself, which is sound
for features the labels did not shape (the inputs, a network trained on other data) and logged as a risk when a
model is given.

The chosen probe's out-of-fold disagreement rate D estimates the share of wrong labels (exactly when the probe
predicts every true label; a probe of true accuracy a < 1 adds about (1 - a)(1 - p)), and the corruption rate p of
the random mode, which redraws the true label by chance once in K, is estimated as D K / (K - 1). By default the
D n lowest-ranked samples are flagged (``threshold`` flags the scores below it instead). With ``method="aum"`` the
ranking, scores and flagged set are AUM's (the training margins), the suggested labels and the noise estimate still
the chosen probe's.

When the data carries true labels, each method (the chosen detector; MASC alone at its best layer by the same criterion; AUM,
when training margins are given; and every layer x probe) is scored against the corruption mask: AUROC, average
precision, precision / recall / F1 of its flagged set, and lift at the top 1% and 5%.

Example::

    issues = find_label_issues("runs/mlp-digits-p0.6", load_data("digits", corrupt=0.6),
                               select=load_data("digits", split="test"))
    issues.layer, issues.probe, issues.n_flagged, issues.metrics["chosen"]["auroc"]
    issues.write("runs/mlp-digits-p0.6/label_issues")
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from masc_probe import _atomic
from masc_probe._choices import ISSUE_PROBES
from masc_probe._params import check_folds, check_probes
from masc_probe.data._batches import make_loader, split_batch
from masc_probe.errors import InputError, UnknownNameError, closest
from masc_probe.probes import check_max_memory, check_n_components, make_probe

__all__ = ["LabelIssues", "find_label_issues"]

logger = logging.getLogger(__name__)

_STREAMING = ("masc", "ncm", "velpic")  # statistic probes: fitted by partial_fit over blocks of rows
_BLOCK = 4096  # rows per block while fitting and scoring
# scikit-learn's QDA refuses a class with fewer samples than features under its default solver (reg_param or not),
# which every fold of a wide layer has: Ledoit-Wolf shrinkage of each class covariance fits any width. Its rank check
# compares eigenvalues with an absolute `tol` (1e-4) that small-scale features (a ReLU unit dead for a class) fail
# although shrinkage made them positive; `tol` does not change predictions. The cost is one d x d eigendecomposition
# per class and fold (2048-d, 10 classes: ~50 s on one busy thread here).
_DEFAULT_KWARGS: dict[str, dict[str, Any]] = {"qda": {"solver": "eigen", "shrinkage": "auto", "tol": 0.0}}
CSV_NAME, JSON_NAME = "label_issues.csv", "label_issues.json"


@dataclass(frozen=True, eq=False)
class LabelIssues:
    """What :func:`find_label_issues` found. Per-sample arrays are in data order (position i = i-th sample read).

    Attributes:
        index: (n,) the data's ``index`` column (positions when the batches carry none).
        given_label, suggested_label: (n,) the label the data gives and the chosen probe's out-of-fold prediction.
        score: (n,) given class's score minus the best other class's (negative: another label is preferred).
        rank: (n,) 1 = most suspect (lowest score; ties by position). flagged: (n,) bool.
        fold: (n,) the fold of each sample (its scores come from probes fitted on the other folds).
        true_label: (n,) or None. aum: (n,) area under the margin from training, or None.
        layer, probe, heldout_accuracy: the chosen candidate and its out-of-fold accuracy against the given labels.
        criterion: ``"select"`` (chosen by accuracy on the ``select`` data) or ``"out_of_fold"``.
        select_accuracy: the chosen candidate's accuracy on the ``select`` data (mean over the K fold probes).
        runner_up: the second-best candidate (``layer``, ``probe``, ``heldout_accuracy``, ``select_accuracy``).
        candidates: every layer x probe: ``layer``, ``probe``, ``heldout_accuracy``, ``select_accuracy`` (None with
            ``error`` when its fit failed) and, with true labels, ``metrics``.
        noise_rate: estimated share of wrong labels (the chosen probe's disagreement rate).
        corruption_rate: the random mode's p implied by it, noise_rate x K / (K - 1), capped at 1.
        metrics: with true labels, per method (``chosen``, ``masc``, ``aum``) the detection metrics, else None.
        class_scores: (n, K) out-of-fold class scores of the chosen probe (columns: ``classes``).
        all_class_scores: the same for every candidate ``(layer, probe)`` when asked (``keep_scores=True``).
    """

    index: np.ndarray
    given_label: np.ndarray
    suggested_label: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    flagged: np.ndarray
    fold: np.ndarray
    true_label: np.ndarray | None
    aum: np.ndarray | None
    classes: np.ndarray
    layer: str
    probe: str
    heldout_accuracy: float
    criterion: str
    select_accuracy: float | None
    runner_up: dict[str, Any] | None
    candidates: list[dict[str, Any]]
    noise_rate: float
    corruption_rate: float
    threshold: float | None
    folds: int
    seed: int
    metrics: dict[str, dict[str, Any]] | None
    class_scores: np.ndarray = field(repr=False)
    all_class_scores: dict[tuple[str, str], np.ndarray] | None = field(default=None, repr=False)
    method: str = "probe"  # what score / rank / flagged come from: "probe" (the chosen one) or "aum"

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    def summary(self) -> dict[str, Any]:
        """The numbers (no per-sample arrays), JSON-ready: the choice, the estimates, the metrics."""
        known = self.true_label is not None
        return _jsonable({
            "n_samples": len(self.score), "n_classes": len(self.classes), "folds": self.folds, "seed": self.seed,
            "method": self.method, "layer": self.layer, "probe": self.probe, "criterion": self.criterion,
            "heldout_accuracy": self.heldout_accuracy, "select_accuracy": self.select_accuracy,
            "runner_up": self.runner_up, "noise_rate": self.noise_rate, "corruption_rate": self.corruption_rate,
            "realized_noise_rate": float(np.mean(self.given_label != self.true_label)) if known else None,
            "threshold": self.threshold, "n_flagged": self.n_flagged, "aum": self.aum is not None,
            "metrics": self.metrics, "candidates": self.candidates,
        })

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the per-sample table, most suspect first (atomically): index, given_label, suggested_label, score,
        flagged, rank, fold, then true_label and aum when known."""
        extra = [(n, v) for n, v in (("true_label", self.true_label), ("aum", self.aum)) if v is not None]
        order = np.argsort(self.rank, kind="stable")

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                out = csv.writer(f)
                out.writerow(["index", "given_label", "suggested_label", "score", "flagged", "rank", "fold",
                              *(n for n, _ in extra)])
                for i in order.tolist():
                    out.writerow([int(self.index[i]), int(self.given_label[i]), int(self.suggested_label[i]),
                                  f"{self.score[i]:.7g}", int(self.flagged[i]), int(self.rank[i]), int(self.fold[i]),
                                  *(f"{v[i]:.7g}" if n == "aum" else int(v[i]) for n, v in extra)])

        return _atomic.write_with(path, write)

    def write_summary(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`summary` as JSON (atomically)."""
        return _atomic.write_text(path, json.dumps(self.summary(), indent=2) + "\n")

    def write(self, folder: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``label_issues.csv`` and ``label_issues.json`` into *folder* (created when missing)."""
        return self.write_csv(Path(folder) / CSV_NAME), self.write_summary(Path(folder) / JSON_NAME)

    def plot_gallery(self, data: Any, k: int = 32, ax: Any = None) -> Any:
        """The top *k* suspected samples as a grid of images (``masc_probe.pipeline._gallery``: how they are drawn).

        Args:
            data: The map-style data the issues were found on, in the same order (e.g. the ``load_data`` dataset).
            k: How many of the best-ranked samples to show (fewer when the data is smaller).
            ax: A matplotlib Axes to draw the grid into; None draws on a new figure (no pyplot).

        Returns:
            The matplotlib Figure. Each panel shows the image as the data stores it, its index, score, given and
            suggested label (class names where the data has them) and, with true labels, whether the given label
            was wrong (red frame) or right (green).

        Raises:
            InputError: *k* < 1, data that is not map-style, or data that is not the data the issues were found on.
        """
        from masc_probe.pipeline._gallery import plot_gallery

        return plot_gallery(self, data, k=k, ax=ax)


def find_label_issues(
    model: nn.Module | str | os.PathLike[str] | None,
    data: Any,
    *,
    layers: Sequence[str] | None = None,
    probes: Sequence[str] = ISSUE_PROBES,
    folds: int = 2,
    seed: int = 0,
    threshold: float | None = None,
    max_memory: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    margins: Any = None,
    select: Any = None,
    n_components: float | int = 0.99,
    probe_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 256,
    keep_scores: bool = False,
    method: str = "probe",
) -> LabelIssues:
    """Rank the training samples by how likely their given label is wrong (module docstring: the method).

    Args:
        model: A model, a model spec or run folder for :func:`masc_probe.models.load_model`, or None to probe the
            inputs themselves (layer ``"input"``, each sample flattened).
        data: Training data with given labels (and ``true_label`` when known): a map-style dataset, a DataLoader
            or an iterable of batches in the contract's forms. Read once, in its own order.
        layers: Layer names (:func:`masc_probe.list_layers`); None: :func:`masc_probe.layers.default_layers`.
        probes: Candidate probes (registry names); default masc, ncm and lda (qda is slow on wide
            layers: ``masc_probe._choices.ISSUE_PROBES``).
        folds: K >= 2; every class needs at least K samples.
        seed: Seed of the stratified folds (scikit-learn's ``StratifiedKFold(shuffle=True)`` over data order).
        threshold: Flag the samples scoring below it; None flags as many as the estimated noise rate says.
        max_memory: Bytes: half for the layer rows held in memory (a quarter each for *data* and *select*; the rest
            spill to a temporary folder), half for one probe's statistics (default 4 GiB in all).
        device: Where the model and the statistic probes run (the model is moved there); None: the model's.
        progress: A progress bar over the batches.
        margins: Per-sample training margins for AUM, indexed by the data's ``index``: an array (N,) of AUMs, an
            array (epochs, N) of per-epoch margins (averaged), or a mapping index -> AUM.
        select: Labelled data the model never trained on (e.g. the test split), in the same forms as *data*:
            candidates are chosen by their accuracy there (module docstring: why a memorizing model needs it).
        n_components: MASC's threshold.
        probe_kwargs: Per-probe constructor arguments (default QDA: ``solver="eigen", shrinkage="auto", tol=0``).
        batch_size: Batch size of the forward pass for map-style data.
        keep_scores: Keep every candidate's (n, K) out-of-fold scores in ``all_class_scores``.
        method: ``"probe"`` ranks and flags by the chosen probe's scores; ``"aum"`` by the AUM of *margins* (as
            many flagged as the probe's noise estimate, or those below *threshold*).

    Returns:
        A :class:`LabelIssues`; ``.write(folder)`` writes ``label_issues.csv`` and ``label_issues.json``.

    Raises:
        InputError: Data without labels, folds < 2 or more folds than samples of a class, a run folder without a
            model, bad margins, or no candidate that could be fitted.
        UnknownNameError: An unknown probe or layer.
    """
    probes = _check_args(probes, folds, seed, threshold, batch_size)
    if method not in ("probe", "aum"):
        raise UnknownNameError(f"unknown method {method!r}; " + closest(str(method), ["probe", "aum"]))
    if method == "aum" and margins is None:
        raise InputError("method='aum' needs margins= (per-sample training margins, e.g. the margins.safetensors "
                         "of a run trained with record_margins / --record-margins), got none")
    n_components = check_n_components(n_components)
    budget = check_max_memory(max_memory)
    kwargs = {name: {**_DEFAULT_KWARGS.get(name, {}), **dict((probe_kwargs or {}).get(name, {}))} for name in probes}
    for name in probes:
        if name in ("masc", "velpic"):
            kwargs[name] = {"max_memory": budget // 2, "device": device, **kwargs[name]}
            if name == "masc":
                kwargs[name].setdefault("n_components", n_components)
        elif name == "ncm":
            kwargs[name] = {"device": device, **kwargs[name]}
    net = _resolve_model(model, device)
    if net is not None and select is None:
        logger.warning("label issues: no select data; out-of-fold accuracy on the training data can favour layers "
                       "that reproduce labels the model memorized (pass select=, e.g. the test split)")
    with tempfile.TemporaryDirectory(prefix="masc-label-issues-") as spill:
        rows, given, true, index = _collect(net, data, layers, device, progress, batch_size, budget // 4,
                                            os.path.join(spill, "train"))
        held = None
        try:
            if select is not None:
                held = _collect(net, select, layers, device, progress, batch_size, budget // 4,
                                os.path.join(spill, "select"))[:2]
            classes, counts = np.unique(given, return_counts=True)
            if len(classes) < 2:
                raise InputError(f"expected given labels of at least 2 classes, got only class {classes.tolist()}")
            if counts.min() < folds:
                c = int(classes[np.argmin(counts)])
                raise InputError(f"folds={folds} needs at least {folds} samples of every class; class {c} has "
                                 f"{int(counts.min())}")
            fold = stratified_folds(given, folds, seed)
            aum = _aum(margins, index) if margins is not None else None
            scored: dict[tuple[str, str], np.ndarray] = {}
            candidates = _score_candidates(rows, probes, given, fold, classes, kwargs, scored, held)
        finally:
            rows.close()
            if held is not None:
                held[0].close()
    criterion = "select" if select is not None else "out_of_fold"
    key = "select_accuracy" if select is not None else "heldout_accuracy"
    fitted = sorted((c for c in candidates if c["heldout_accuracy"] is not None),
                    key=lambda c: -c[key])  # stable: ties keep layer, then probe order
    if not fitted:
        raise InputError(f"no probe could be fitted on any layer; first failure: {candidates[0].get('error')}")
    best = fitted[0]
    S = scored[(best["layer"], best["probe"])]
    score, suggested = margin_scores(S, given, classes)
    rank = ranks(score)
    disagree = float(np.mean(suggested != given))
    flagged = score < threshold if threshold is not None else rank <= round(disagree * len(score))
    logger.info("label issues: chose %s at %s (%s accuracy %.4f), noise rate %.3f, %d flagged",
                best["probe"], best["layer"], criterion, best[key], disagree, int(flagged.sum()))
    metrics = None
    if true is not None:
        metrics = _score_methods(given != true, candidates, fitted, scored, given, classes, threshold,
                                 score, flagged, aum)
    if method == "aum":
        assert aum is not None  # checked at the door
        score, rank = aum, ranks(aum)
        flagged = score < threshold if threshold is not None else rank <= round(disagree * len(score))
        if metrics is not None:
            metrics["aum"] = detection_metrics(given != true, aum, np.asarray(flagged, dtype=bool))
    runner_up = fitted[1] if len(fitted) > 1 else None
    K = len(classes)
    return LabelIssues(
        index=index, given_label=given, suggested_label=suggested, score=score, rank=rank,
        flagged=np.asarray(flagged, dtype=bool), fold=fold, true_label=true, aum=aum, classes=classes,
        layer=best["layer"], probe=best["probe"], heldout_accuracy=best["heldout_accuracy"], criterion=criterion,
        select_accuracy=best["select_accuracy"],
        runner_up={k: runner_up[k] for k in ("layer", "probe", "heldout_accuracy", "select_accuracy")}
        if runner_up else None,
        candidates=candidates, noise_rate=disagree, corruption_rate=min(1.0, disagree * K / (K - 1)),
        threshold=threshold, folds=folds, seed=seed, metrics=metrics, class_scores=S,
        all_class_scores=scored if keep_scores else None, method=method)  # fmt: skip


def _score_methods(wrong: np.ndarray, candidates: list[dict[str, Any]], fitted: list[dict[str, Any]],
                   scored: Mapping[tuple[str, str], np.ndarray], given: np.ndarray, classes: np.ndarray,
                   threshold: float | None, score: np.ndarray, flagged: np.ndarray,
                   aum: np.ndarray | None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Against the known corruption: every candidate (into its entry), the chosen detector, MASC alone, AUM."""
    for c in candidates:
        if c["heldout_accuracy"] is not None:
            s = margin_scores(scored[(c["layer"], c["probe"])], given, classes)[0]
            c["metrics"] = detection_metrics(wrong, s, _own_flags(s, threshold))
    metrics = {"chosen": detection_metrics(wrong, score, flagged)}
    masc = next((c for c in fitted if c["probe"] == "masc"), None)  # MASC alone: its best layer by the criterion
    if masc is not None:
        metrics["masc"] = {"layer": masc["layer"], **masc["metrics"]}
    if aum is not None:  # AUM has no noise estimate of its own: it flags as many as the chosen probe
        metrics["aum"] = detection_metrics(wrong, aum, rank_flag(aum, int(flagged.sum())))
    return metrics


# ---------------------------------------------------------------------------------------------- the pieces
def _score_candidates(rows: Mapping[str, np.ndarray], probes: Sequence[str], given: np.ndarray, fold: np.ndarray,
                      classes: np.ndarray, kwargs: Mapping[str, Mapping[str, Any]],
                      scored: dict[tuple[str, str], np.ndarray],
                      held: tuple[Mapping[str, np.ndarray], np.ndarray] | None) -> list[dict[str, Any]]:  # fmt: skip
    """Every layer x probe's out-of-fold scores (into *scored*), out-of-fold accuracy against the given labels and
    accuracy on the select data *held* (rows, labels)."""
    candidates = []
    for layer, X in rows.items():
        for name in probes:
            entry: dict[str, Any] = {"layer": layer, "probe": name, "heldout_accuracy": None, "select_accuracy": None}
            try:
                S, entry["select_accuracy"] = out_of_fold_scores(
                    name, X, given, fold, classes, kwargs[name], None if held is None else (held[0][layer], held[1]))
            except (ValueError, np.linalg.LinAlgError, torch.linalg.LinAlgError) as err:
                # A probe that cannot fit here (QDA on a rank-deficient class, …) drops out of the choice.
                entry["error"] = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                logger.warning("label issues: %s at %s failed: %s", name, layer, entry["error"])
            else:
                entry["heldout_accuracy"] = float(np.mean(classes[S.argmax(axis=1)] == given))
                scored[(layer, name)] = S
            candidates.append(entry)
    return candidates


def stratified_folds(given: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold of each sample: scikit-learn's ``StratifiedKFold(folds, shuffle=True, random_state=seed)``."""
    from sklearn.model_selection import StratifiedKFold

    fold = np.empty(len(given), dtype=np.int64)
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(given)), given)
    for k, (_, held) in enumerate(split):
        fold[held] = k
    return fold


def _fold_split(fold: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(training mask, scored mask) of fold *k*: the probe that scores fold k never sees it."""
    return fold != k, fold == k


def out_of_fold_scores(name: str, X: np.ndarray, given: np.ndarray, fold: np.ndarray, classes: np.ndarray,
                       kwargs: Mapping[str, Any],
                       select: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, float | None]:  # fmt: skip
    """(n, K) class scores, each row from the probe *name* fitted on the folds other than its own; and the mean
    accuracy of the K fold probes on the *select* rows and labels (None without them).

    Statistic probes stream the training rows block by block (``partial_fit``), the others fit the matrix.
    """
    S = np.empty((len(given), len(classes)), dtype=np.float32)
    correct = 0
    for k in range(int(fold.max()) + 1):
        train, held = _fold_split(fold, k)
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
            if select is not None:
                for start in range(0, len(select[1]), _BLOCK):
                    block = class_scores(probe, name, np.asarray(select[0][start:start + _BLOCK]))
                    correct += int(np.sum(classes[block.argmax(axis=1)] == select[1][start:start + _BLOCK]))
        finally:
            if hasattr(probe, "close"):
                probe.close()
    if not np.isfinite(S).all():
        raise ValueError("non-finite class scores")
    return S, None if select is None else correct / (len(select[1]) * (int(fold.max()) + 1))


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


def ranks(score: np.ndarray) -> np.ndarray:
    """1 for the lowest score; ties in position order."""
    order = np.lexsort((np.arange(len(score)), score))
    rank = np.empty(len(score), dtype=np.int64)
    rank[order] = np.arange(1, len(score) + 1)
    return rank


def rank_flag(score: np.ndarray, n: int) -> np.ndarray:
    """The *n* lowest scores."""
    return ranks(score) <= n


def _own_flags(score: np.ndarray, threshold: float | None) -> np.ndarray:
    """A candidate's own flagged set: below *threshold*, else its disagreements (score below 0, ranked)."""
    if threshold is not None:
        return score < threshold
    return rank_flag(score, int(np.sum(score < 0)))


def detection_metrics(wrong: np.ndarray, score: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """How well low *score* finds the *wrong* labels: AUROC, average precision, precision / recall / F1 of the
    *flagged* set, and lift (precision over the base rate) among the lowest-scoring 1% and 5%."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    n, n_wrong = len(wrong), int(wrong.sum())
    both = 0 < n_wrong < n
    p, r, f, _ = precision_recall_fscore_support(wrong, flagged, average="binary", zero_division=0)
    out: dict[str, Any] = {
        "n_wrong": n_wrong, "n_flagged": int(flagged.sum()),
        "auroc": float(roc_auc_score(wrong, -score)) if both else None,
        "average_precision": float(average_precision_score(wrong, -score)) if both else None,
        "precision": float(p), "recall": float(r), "f1": float(f)}
    order = np.lexsort((np.arange(n), score))
    for q in (1, 5):
        top = order[:max(1, math.ceil(n * q / 100))]
        out[f"lift_top_{q}pct"] = float(wrong[top].mean() / (n_wrong / n)) if n_wrong else None
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# ----------------------------------------------------------------------------------------------- inputs
def _check_args(probes: Any, folds: Any, seed: Any, threshold: Any, batch_size: Any) -> tuple[str, ...]:
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


def _resolve_model(model: Any, device: Any) -> nn.Module | None:
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


def _labels(y: Any, n: int, what: str) -> np.ndarray:
    t = torch.as_tensor(y).detach().cpu().reshape(-1)
    if t.is_floating_point() and not bool((t == t.round()).all()) or t.is_complex() or len(t) != n:
        raise InputError(f"expected {n} integer {what} per batch, got {tuple(t.shape)} {t.dtype}")
    return t.long().numpy()


def _collect(model: nn.Module | None, data: Any, layers: Sequence[str] | None, device: Any, progress: bool,
             batch_size: int, budget: int,
             spill: str) -> tuple[_Rows, np.ndarray, np.ndarray | None, np.ndarray]:  # fmt: skip
    """One pass: every layer's flattened rows, the given and true labels, the indices."""
    from tqdm.auto import tqdm

    from masc_probe.layers import FeatureTap

    if model is None and layers is not None and list(layers) != ["input"]:
        raise InputError(f"without a model only the layer 'input' exists, got layers={list(layers)}")
    tap = FeatureTap(model, list(layers) if layers is not None else None, device=device) if model else None
    names = tap.layers if tap is not None else ["input"]
    loader, _, _ = make_loader(data, batch_size=batch_size, name="data", strict=False)
    rows = _Rows(names, budget, spill)
    given, true, index, n = [], [], [], 0
    ok = False
    try:
        for batch in tqdm(loader, desc="label issues", unit="batch", leave=False, disable=None if progress else True):
            if (isinstance(batch, Mapping) and batch.get("label") is None) or (
                    isinstance(batch, (tuple, list)) and len(batch) < 2) or isinstance(batch, torch.Tensor):
                got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
                raise InputError(f"find_label_issues needs the given labels: expected batches with 'label' (or "
                                 f"(x, y) tuples), got {got}")
            part = split_batch(batch)
            x = part.x if isinstance(part.x, torch.Tensor) else torch.as_tensor(np.asarray(part.x))
            b = len(x)
            given.append(_labels(part.y, b, "labels"))
            true.append(None if part.y_true is None else _labels(part.y_true, b, "true labels"))
            index.append(_labels(part.index, b, "indices") if part.index is not None else np.arange(n, n + b))
            values = tap(x) if tap is not None else {"input": x}
            for name in names:
                rows.add(name, values[name].reshape(b, -1).float().cpu().numpy())
            n += b
        ok = True
    finally:
        if tap is not None:
            tap.close()
        if not ok:
            rows.close()
    if n == 0:
        raise InputError("expected data with at least one sample, got none")
    if any(t is None for t in true) and not all(t is None for t in true):
        raise InputError("expected true labels in every batch or in none; some batches carry them, some do not")
    has_true = true[0] is not None
    return (rows, np.concatenate(given), np.concatenate(true) if has_true else None,  # type: ignore[arg-type]
            np.concatenate(index))


class _Rows(Mapping[str, np.ndarray]):
    """Each layer's rows, appended batch by batch: in memory up to *budget* bytes in all, then every layer in a
    raw float32 file under *spill*, read back as a memory map."""

    def __init__(self, names: Sequence[str], budget: int, spill: str) -> None:
        self.names, self.budget, self.spill = list(names), budget, Path(spill)
        self._parts: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        self._files: dict[str, Any] = {}
        self._width: dict[str, int] = {}
        self._count: dict[str, int] = dict.fromkeys(self.names, 0)
        self._bytes = 0

    def add(self, name: str, block: np.ndarray) -> None:
        self._width.setdefault(name, block.shape[1])
        self._count[name] += len(block)
        block = np.ascontiguousarray(block, dtype=np.float32)
        if not self._files and self._bytes + block.nbytes > self.budget:
            self.spill.mkdir(parents=True, exist_ok=True)
            for layer in self.names:  # from here on every layer goes to disk
                self._files[layer] = open(self.spill / f"{len(self._files)}.f32", "wb")  # noqa: SIM115
                for part in self._parts.pop(layer):
                    part.tofile(self._files[layer])
        if self._files:
            block.tofile(self._files[name])
        else:
            self._parts[name].append(block)
            self._bytes += block.nbytes

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._files:
            self._files[name].flush()
            return np.memmap(self._files[name].name, dtype=np.float32, mode="r",
                             shape=(self._count[name], self._width[name]))
        if len(self._parts[name]) > 1:  # joined once, and the pieces let go
            self._parts[name] = [np.concatenate(self._parts[name])]
        return self._parts[name][0]

    def __iter__(self) -> Any:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._parts.clear()
        shutil.rmtree(self.spill, ignore_errors=True)


def _aum(margins: Any, index: np.ndarray) -> np.ndarray:
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
