"""Label-issue detection: which training labels are wrong, read from the layers of a network that memorized them.

:func:`find_label_issues` composes three parts. (1) ``_oof``: one pass of the runner's forward (layers by name,
the runner's reducers) into its row cache, and out-of-fold class scores of every layer x probe on K stratified,
seeded folds, so that no sample is scored by a probe that saw it. (2) The choice of layer and probe, without the
true labels, by accuracy against noisy labels on held-out samples: under random label noise a classifier of
true accuracy a agrees with the noisy labels with probability a(1 - p) + p/K, increasing in a. The held-out samples
must be held out from the *network* too (``select=``, e.g. the test split), never the training rows: a network that
memorized the training set carries each given label in its late layers, so a probe there reads the wrong labels
back and finds few of them (MNIST, 5,000 images, p = 0.4: F1 0.04 chosen out-of-fold, 0.94 chosen on the test
split; ``benchmarks/label_issues.py``). Without ``select`` the out-of-fold accuracy chooses, sound for features the
labels did not shape, a logged risk for a model. The select data's labels are those a user with noisy data would
have, by the report's rule (``select_rule``: ``"noisy"``, the default, re-draws them by the training data's own
corruption recipe with a recorded seed; ``"clean"`` keeps the true ones); every choice made there (layer x probe,
ranking) is made against them, and ``choosing_labels`` records which. (3) :mod:`masc_probe.quality` on the chosen
probe's out-of-fold probabilities (its class scores calibrated: softmax of log-posteriors, or of similarities over a
temperature fitted to the given labels): the noise share from the confident joint, the ranking (self-confidence,
normalized margin or logit margin, chosen on the held-out data by re-labeling a random share of it:
``quality.choose_ranking``) and the flagged set (the noise share's worth of lowest-ranked samples, or a
confident-learning filter, or a threshold).

With ``method="aum"`` the ranking, scores and flagged set are AUM's (the training margins); suggestions and the noise
estimate stay the probe's. With true labels every method is scored against the corruption (``quality.detection_
metrics``): the chosen detector, MASC alone at its best layer by the same criterion, AUM, and every candidate.

Example::

    issues = find_label_issues("runs/mlp-digits-p0.6", load_data("digits", corrupt=0.6),
                               select=load_data("digits", split="test"))
    issues.layer, issues.probe, issues.ranking, issues.n_flagged, issues.metrics["chosen"]["auroc"]
    issues.write("runs/mlp-digits-p0.6/label_issues")
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from masc_probe import quality
from masc_probe._choices import ISSUE_FLAGS, ISSUE_PROBES
from masc_probe._params import DEFAULT_N_COMPONENTS, check_choice
from masc_probe.errors import InputError
from masc_probe.label_issues import _choose, _oof
from masc_probe.probes import check_max_memory, check_n_components
from masc_probe.report._files import ISSUES_CSV, ISSUES_JSON

__all__ = ["FLAGS", "LabelIssues", "find_label_issues"]

logger = logging.getLogger(__name__)

FLAGS = ISSUE_FLAGS  # "rank": the noise share's worth of lowest-ranked samples, or a confident-learning filter
CSV_NAME, JSON_NAME = ISSUES_CSV, ISSUES_JSON  # defined once, in report._files


@dataclass(frozen=True, eq=False)
class LabelIssues:
    """What :func:`find_label_issues` found. Per-sample arrays are in data order (position i = i-th sample read).

    Attributes:
        index, given_label, suggested_label, true_label (or None), fold, aum (or None): per sample (n,).
        score: (n,) the ranking's score (lower = more suspect); rank: 1 = most suspect; flagged: (n,) bool.
        pred_probs: (n, K) the chosen probe's out-of-fold probabilities (columns: ``classes``); temperature: the one
            fitted to turn its similarities into them (None for log-posteriors or vote shares).
        layer, probe, criterion (``"select"`` or ``"out_of_fold"``), heldout_accuracy, select_accuracy, runner_up,
            candidates: the choice of layer x probe and every candidate's numbers (``select_accuracy``: against
            the choosing labels).
        choosing_labels: the select data's labels the choice was made against (the report's ``choosing_labels``
            record: kind ``noisy`` with mode, rate, seed and realized rate, or ``clean``; ``given`` when the training
            data carries no corruption record), or None without select data.
        ranking, ranking_auroc: the chosen ranking and each ranking's AUROC on the held-out re-labeling.
        noise_rate: the estimated share of wrong labels (confident joint); disagreement_rate: the share whose
            suggested label differs from the given one (too high by about (1 - a)(1 - p) for a probe of accuracy a).
        corruption_rate: the rate p of *corruption_mode* the noise share implies, or None when the mode is not a
            uniform redraw (``quality.corruption_rate_from_share``).
        flag: how ``flagged`` was chosen (:data:`FLAGS`, or ``"threshold"``); metrics: with true labels, per method
            the detection metrics; class_scores: (n, K) raw out-of-fold scores; all_class_scores: every candidate's
            when ``keep_scores=True``.
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
    corruption_rate: float | None
    threshold: float | None
    folds: int
    seed: int
    metrics: dict[str, dict[str, Any]] | None
    class_scores: np.ndarray = field(repr=False)
    pred_probs: np.ndarray = field(repr=False)
    all_class_scores: dict[tuple[str, str], np.ndarray] | None = field(default=None, repr=False)
    method: str = "probe"  # what score / rank / flagged come from: "probe" (the chosen one) or "aum"
    ranking: str = "self_confidence"
    ranking_auroc: dict[str, float] | None = None
    temperature: float | None = None
    disagreement_rate: float | None = None
    flag: str = "rank"
    corruption_mode: str | None = None
    select_by: str = "accuracy"
    choosing_labels: dict[str, Any] | None = None  # what the select data's labels were (None: no select data)

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    def summary(self) -> dict[str, Any]:
        """The numbers (no per-sample arrays), JSON-ready: the choice (with ``choosing_labels``: which labels it
        was made against), the estimates, the metrics."""
        from masc_probe.label_issues._files import issues_summary

        return issues_summary(self)

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the per-sample table, most suspect first (atomically): index, given_label, suggested_label, score,
        flagged, rank, fold, then true_label and aum when known."""
        from masc_probe.label_issues._files import write_issues_csv

        return write_issues_csv(self, path)

    def write_summary(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`summary` as JSON (atomically)."""
        from masc_probe.label_issues._files import write_issues_summary

        return write_issues_summary(self, path)

    def write(self, folder: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``label_issues.csv`` and ``label_issues.json`` into *folder* (created when missing)."""
        return self.write_csv(Path(folder) / CSV_NAME), self.write_summary(Path(folder) / JSON_NAME)

    def plot_gallery(self, data: Any, k: int = 32, ax: Any = None) -> Any:
        """The top *k* suspects as a grid of images, each with its index, score, given and suggested label and,
        with true labels, a red (wrong) or green (right) frame (``masc_probe.label_issues._gallery``). *data*: the
        map-style data the issues were found on. Returns the matplotlib Figure (no pyplot when *ax* is given).

        Raises:
            InputError: *k* < 1, data that is not map-style, or not the data the issues were found on.
        """
        from masc_probe.label_issues._gallery import plot_gallery

        return plot_gallery(self, data, k=k, ax=ax)


def find_label_issues(
    model: nn.Module | str | os.PathLike[str] | None, data: Any, *, layers: Sequence[str] | None = None,
    probes: Sequence[str] = ISSUE_PROBES, folds: int = 2, seed: int = 0, threshold: float | None = None,
    max_memory: int | None = None, device: str | torch.device | None = None, progress: bool = True,
    margins: Any = None, select: Any = None, n_components: float | int = DEFAULT_N_COMPONENTS,
    probe_kwargs: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int = 256, keep_scores: bool = False,
    method: str = "probe", reducer: str | Mapping[str, str] | None = None, ranking: str = "auto",
    flag: str = "rank", corruption_mode: str | None = None, select_by: str = "accuracy",
    select_rule: str = "noisy", select_seed: int = 0, corruption: Mapping[str, Any] | None = None,
) -> LabelIssues:
    """Rank the training samples by how likely their given label is wrong (module docstring: the method).

    Args:
        model: A model, a model spec or run folder for :func:`masc_probe.models.load_model`, or None to probe the
            inputs themselves (layer ``"input"``, each sample flattened).
        data: Training data with given labels (and ``true_label`` when known): a map-style dataset, a DataLoader
            or an iterable of batches in the contract's forms. Read once, in its own order.
        layers: Layer names (:func:`masc_probe.list_layers`); None: :func:`masc_probe.layers.default_layers`.
        probes: Candidate probes (default masc, ncm, lda: ``masc_probe._choices.ISSUE_PROBES``).
        folds: K >= 2; every class needs at least K samples. seed: Seed of the folds (scikit-learn's
            ``StratifiedKFold(shuffle=True)`` over data order) and of the held-out re-labeling.
        threshold: Flag the samples whose ranking score is below it (overrides *flag*).
        max_memory: Bytes for one probe's statistics (default 4 GiB); the rows wait on disk (the row cache).
        device: Where the model and the torch probes run (the model is moved there); None: the model's.
        progress: Progress bars over the batches.
        margins: Per-sample training margins for AUM, indexed by the data's ``index``: (N,) AUMs, (epochs, N)
            margins (averaged), or a mapping index -> AUM.
        select: Labelled data the model never trained on (e.g. the test split; its ``true_label``, else its
            ``label``, taken as true): candidates are chosen by their accuracy there and rankings by how they find
            labels re-drawn there, against the labels *select_rule* gives it. Never the training rows: a memorizer
            reads its memorized labels back there.
        n_components: MASC's threshold. probe_kwargs: Per-probe constructor arguments.
        batch_size: Batch of the forward pass for map-style data.
        keep_scores: Keep every candidate's (n, K) out-of-fold scores in ``all_class_scores``.
        method: ``"probe"`` ranks and flags by the chosen probe; ``"aum"`` by the AUM of *margins*.
        reducer: How each layer's value becomes rows, as for :class:`masc_probe.ProbeRunner` (``"cls"`` for a ViT
            block's class token, a mapping layer -> reducer, ``"auto"``); None flattens.
        ranking: One of :data:`masc_probe.quality.RANKINGS`, or ``"auto"`` to choose on the held-out data.
        flag: ``"rank"`` (the noise share's worth of lowest-ranked samples) or a confident-learning filter
            (:data:`masc_probe.quality.FILTERS`).
        corruption_mode: How the labels were corrupted, when known: the corruption rate is reported only for the
            modes that redraw uniformly (``random``, ``authors``).
        select_by: ``"accuracy"`` chooses the layer x probe by accuracy on the select data (out of fold without
            it); ``"detection"`` by how well its best ranking finds labels re-drawn at random there
            (``quality.choose_ranking``'s AUROC, recorded per candidate as ``detection_auroc``).
        select_rule: The select data's labels every choice is made against, as the report's ``select``:
            ``"noisy"`` re-draws them by *corruption*'s recipe (mode, rate) with *select_seed*, per image index
            (clean training data: the labels as given); ``"clean"`` keeps them.
        select_seed: Seed of the noisy labels (the report's ``select_seed``, 0 by default).
        corruption: The training labels' corruption record (``mode``, ``rate``; ``mapping`` for ``asymmetric``);
            default the one :func:`masc_probe.load_data` attached to *data*.

    Raises:
        InputError: Data without labels, folds < 2 or more folds than samples of a class, a run folder without a
            model, bad margins, a layer whose width changes between batches, or no candidate that could be fitted.
        UnknownNameError: An unknown probe, layer, reducer, ranking or flag.
    """
    probes = _choose.check_args(probes, folds, seed, threshold, batch_size)
    select_rule, select_seed = _choose.check_choice_rule(select_rule, select_seed)
    for value, allowed, what in ((method, ("probe", "aum"), "method"), (ranking, ("auto", *quality.RANKINGS),
                                 "ranking"), (flag, FLAGS, "flag"), (select_by, ("accuracy", "detection"),
                                                                     "select_by")):
        check_choice(what, value, allowed)
    if method == "aum" and margins is None:
        raise InputError("method='aum' needs margins= (per-sample training margins, e.g. the margins.safetensors "
                         "of a run trained with record_margins / --record-margins), got none")
    from masc_probe.layers import LayerReducer

    budget = check_max_memory(max_memory)
    kwargs = _oof.probe_kwargs(probes, probe_kwargs, budget, device, check_n_components(n_components))
    net = _oof.resolve_model(model, device)
    rows_of = LayerReducer(reducer, model=net, seed=seed)
    if net is not None and select is None:
        logger.warning("label issues: no select data; out-of-fold accuracy on the training data can favour layers "
                       "that reproduce labels the model memorized (pass select=, e.g. the test split)")
    with tempfile.TemporaryDirectory(prefix="masc-label-issues-") as spill:
        read = {"progress": progress, "batch_size": batch_size, "root": spill}
        rows = _oof.collect(net, data, layers, rows_of, device, desc="label issues", **read)
        held, chosen_by = None, None
        try:
            if select is not None:
                held = _oof.collect(net, select, rows.layers, rows_of, device, desc="select", **read)
                held.given, chosen_by = _choosing(held, rows.given, data, select_rule, select_seed, corruption)
            classes, counts = np.unique(rows.given, return_counts=True)
            if len(classes) < 2:
                raise InputError(f"expected given labels of at least 2 classes, got only class {classes.tolist()}")
            if counts.min() < folds:
                raise InputError(f"folds={folds} needs at least {folds} samples of every class; class "
                                 f"{int(classes[np.argmin(counts)])} has {int(counts.min())}")
            fold = _oof.stratified_folds(rows.given, folds, seed)
            aum = _choose.aum(margins, rows.index) if margins is not None else None
            scored, candidates = _oof.score_candidates(rows, held, probes, fold, classes, kwargs)
        finally:
            rows.close()
            if held is not None:
                held.close()
    given, true = rows.given, rows.true
    key = "select_accuracy" if select is not None else "heldout_accuracy"
    fitted = sorted((c for c in candidates if c["heldout_accuracy"] is not None), key=lambda c: -c[key])
    if not fitted:
        raise InputError(f"no probe could be fitted on any layer; first failure: {candidates[0].get('error')}")
    y = np.searchsorted(classes, given)

    choices: dict[tuple[str, str], _choose.RankChoice] = {}

    def choice(c: dict[str, Any]) -> _choose.RankChoice:  # once per candidate: the chosen one is asked twice
        at = (c["layer"], c["probe"])
        if at not in choices:
            choices[at] = _choose.rank_choice(*scored[at], y, None if held is None else held.given, classes,
                                           c["probe"], ranking, seed)
        return choices[at]

    if select_by == "detection":  # every candidate by how well its best ranking finds re-drawn held-out labels
        for c in fitted:
            got = choice(c)
            c["detection_ranking"], c["detection_auroc"] = got.ranking, got.auroc[got.ranking]
        fitted.sort(key=lambda c: -c["detection_auroc"])
        key = "detection_auroc"
    best = fitted[0]
    S = scored[(best["layer"], best["probe"])][0]
    probs, temperature, noise, ranking, auroc = choice(best)
    score = quality.label_quality_scores(probs, y, ranking)
    suggested = classes[probs.argmax(axis=1)]
    flagged = _choose.flags(score, threshold, flag, noise, probs, y)
    logger.info("label issues: chose %s at %s (%s %.4f), ranking %s, noise share %.3f, %d flagged", best["probe"],
                best["layer"], key, best[key], ranking, noise, int(flagged.sum()))
    metrics = None
    if true is not None:
        metrics = _choose.score_methods(given != true, candidates, fitted, scored, y, classes, ranking, score, flagged,
                                        aum)
    if method == "aum":
        assert aum is not None  # checked at the door
        score = aum
        flagged = aum < threshold if threshold is not None else quality.ranks(aum) <= round(noise * len(aum))
        if metrics is not None:
            metrics["aum"] = quality.detection_metrics(given != true, aum, flagged)
    runner_up = fitted[1] if len(fitted) > 1 else None
    return LabelIssues(
        index=rows.index, given_label=given, suggested_label=suggested, score=score, rank=quality.ranks(score),
        flagged=np.asarray(flagged, dtype=bool), fold=fold, true_label=true, aum=aum, classes=classes,
        layer=best["layer"], probe=best["probe"], heldout_accuracy=best["heldout_accuracy"],
        criterion="select" if select is not None else "out_of_fold", select_accuracy=best["select_accuracy"],
        runner_up={k: runner_up[k] for k in ("layer", "probe", "heldout_accuracy", "select_accuracy")}
        if runner_up else None, candidates=candidates, noise_rate=noise,
        corruption_rate=quality.corruption_rate_from_share(noise, len(classes), corruption_mode),
        threshold=threshold, folds=folds, seed=seed, metrics=metrics, class_scores=S, pred_probs=probs,
        all_class_scores={k: v[0] for k, v in scored.items()} if keep_scores else None, method=method,
        ranking=ranking, ranking_auroc=auroc, temperature=temperature,
        disagreement_rate=float(np.mean(suggested != given)), flag="threshold" if threshold is not None else flag,
        corruption_mode=corruption_mode, select_by=select_by, choosing_labels=chosen_by)  # fmt: skip


def _choosing(held: _oof.Rows, train_given: np.ndarray, data: Any, rule: str, seed: int,
              corruption: Mapping[str, Any] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The select rows' labels every choice is made against, and their record (``_choose.choice_labels``): the true
    labels of the select data (its ``true_label``, else its labels), re-drawn by the training data's recipe under
    ``"noisy"``. K: the classes the data's record declares, else those the labels show."""
    recorded, k = _choose.data_corruption(data)
    corruption = corruption if corruption is not None else recorded
    y = held.true if held.true is not None else held.given
    k = int(k) if k else int(max(train_given.max(), y.max())) + 1
    return _choose.choice_labels(y, held.index, rule, corruption, k, seed)
