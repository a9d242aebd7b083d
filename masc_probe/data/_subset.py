"""A stratified subset of a loaded split, drawn by a recorded seed: ``--max-train-samples`` / ``--max-eval-samples``.

The convention of the Hugging Face example scripts (``max_train_samples``: at most that many samples), stratified
here by the true label so that a subset keeps every class at its share: each class gets its share of *n* rounded
down, and the samples left over go to the classes with the largest remainders (ties to the lower class). Within a
class, the samples kept are those with the smallest keys of one seeded uniform draw over the whole split, so the
choice depends only on the seed, the labels and *n*, and a rerun (a resumed run, a probe of its folder) gets the
same samples. Kept samples stay in data order and keep their ``index``, so their corrupted labels are the ones the
whole split gave them.

>>> shares([5, 3, 2], 5)
[3, 1, 1]
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np

from masc_probe.errors import InputError

__all__ = ["shares", "stratified_indices", "subset_data"]

logger = logging.getLogger(__name__)


def shares(counts: list[int] | np.ndarray, n: int) -> list[int]:
    """How many samples of each class a stratified subset of *n* keeps (largest remainders, ties to the lower class).

    >>> shares([10, 10, 1], 7)
    [4, 3, 0]
    """
    counts = np.asarray(counts, dtype=np.int64)
    exact = counts * n / counts.sum()
    out = np.floor(exact).astype(np.int64)
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - out[c]), c))
    for c in order[: n - int(out.sum())]:
        out[c] += 1
    return [int(v) for v in out]


def stratified_indices(labels: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """The sorted row positions of a stratified subset of *n* of *labels* (all of them when *n* >= their number)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, inverse = np.unique(labels, return_inverse=True)
    keys = np.random.default_rng(seed).random(len(labels))
    kept = []
    for c, take in enumerate(shares(np.bincount(inverse, minlength=len(classes)), n)):
        members = np.flatnonzero(inverse == c)
        kept.append(members[np.argsort(keys[members], kind="stable")[:take]])
    return np.sort(np.concatenate(kept))


def subset_data(dataset: Any, n: int | None, *, seed: int) -> Any:
    """At most *n* samples of a split from :func:`masc_probe.load_data`, stratified by true label and drawn by *seed*.

    The dataset's record (:func:`masc_probe.data.describe_data`) then says so: ``subset`` (``max_samples``,
    ``from_rows``, ``seed``, ``stratified_by``), ``num_rows``, the corruption counted on the rows kept, and a
    fingerprint of its own.

    Args:
        dataset: A ``datasets.Dataset`` from ``load_data`` (not a stream).
        n: The most samples to keep; None or at least the split's size keeps it whole (and unmarked).
        seed: The seed of the draw (recorded).

    Raises:
        InputError: *n* is not a positive int, or the data is a stream or carries no record.
    """
    from masc_probe.data._load import describe_data, replace_record
    from masc_probe.data.corruption import corruption_summary

    if n is None:
        return dataset
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"expected a positive number of samples for the subset, got {n!r}")
    record = describe_data(dataset)
    if record.get("streaming"):
        raise InputError("expected a Dataset to take a subset of, got a stream (load it with streaming=False)")
    if n >= len(dataset):
        return dataset
    table = dataset.with_format("numpy")
    true, given = np.asarray(table["true_label"][:]), np.asarray(table["label"][:])
    rows = stratified_indices(true, int(n), seed=int(seed))
    out = dataset.select(rows.tolist())
    subset = {"max_samples": int(n), "from_rows": len(dataset), "seed": int(seed), "stratified_by": "true_label"}
    summary = dict(record["corruption"])
    summary.update({k: v for k, v in corruption_summary(true[rows], given[rows], mode=summary.get("mode"),
                                                         rate=summary.get("rate"), seed=summary.get("seed")).items()
                    if k in ("realized_rate", "n", "n_changed")})
    logger.info("kept a stratified subset of %d of the %d %s rows (seed %d)", len(rows), len(dataset),
                record.get("split"), seed)
    digest = hashlib.sha256(json.dumps([record["fingerprint"], subset], sort_keys=True).encode()).hexdigest()[:16]
    return replace_record(out, {**record, "subset": subset, "num_rows": len(rows), "corruption": summary,
                                "fingerprint": digest})
