"""The choices label issues make, and the checks at their door: the labels a layer is chosen against on held-out
data, each candidate's calibration and ranking, the flagged set, and the detection metrics against a known
corruption.

The labels the choices are made against on the select data come from :func:`choice_labels`, the report's rule
(``runner._select.choosing_labels``): by default the select data's labels re-drawn by the training data's own
corruption recipe with a recorded seed, the true ones on request. Never the training rows: a network that memorized
them carries each given label in its late layers, so a choice made there falls on the most memorized layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from masc_probe import quality
from masc_probe._choices import SELECT_RULES
from masc_probe._params import check_choice, check_folds, check_probes
from masc_probe.errors import InputError
from masc_probe.probes._registry import SPECS

CHOOSE_RULES = tuple(r for r in SELECT_RULES if r != "none")  # a layer must be chosen: noisy or clean labels


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
    kind = SPECS[probe].score_kind
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
                                                 kind=SPECS[c["probe"]].score_kind)[0]
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
