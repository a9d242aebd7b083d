"""Everything after the pass of ``ProbeRunner.fit`` (``_fit``'s docstring lists the order): the processes agree,
streamed statistics are reduced and solved, the other probes are fitted from the row cache, fitted probes are shared
between processes, and the fit's fingerprint is taken.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from masc_probe.errors import InputError
from masc_probe.probes._registry import SPECS
from masc_probe.runner import _distributed as dist
from masc_probe.runner._keys import Key, public_key
from masc_probe.runner._fit_state import CHUNK_BYTES, INDEX, FitState, freeze, new_estimator
from masc_probe.runner._forward import release_free_memory
from masc_probe.runner._store import read_probe, write_probe
from masc_probe.runner._train_accuracy import train_accuracy

logger = logging.getLogger("masc_probe.runner")


def _agree(state: FitState) -> None:
    metas = dist.all_gather_objects(state.world, {"n": state.n_local, "sets": state.label_sets, "dims": state.dims,
                                                  "k": state.num_classes})
    # Every process raises the same error (they all see every meta), so none is left waiting in a collective.
    if any(not m["n"] for m in metas):
        raise InputError(f"fit needs at least one training batch on every process, got sample counts "
                         f"{[m['n'] for m in metas]}")
    ref = metas[0]
    for m in metas:
        if (m["sets"], m["dims"], m["k"]) != (ref["sets"], ref["dims"], ref["k"]):
            raise InputError(f"every process must see the same label sets, layer widths and classes, got {metas}")
    state.n_train = sum(m["n"] for m in metas)


def finish_fit(state: FitState) -> None:
    """Everything after the pass (see the module docstring)."""
    world, config = state.world, state.config
    _agree(state)
    classes = np.arange(state.num_classes or 0)
    stream_keys = sorted(state.estimators, key=public_key)  # the same order in every process
    jobs = [(layer, probe, labels) for layer in state.plan.deferred for probe in config.probes
            if SPECS[probe].moments == 2 for labels in state.label_sets]
    jobs += [(layer, probe, labels) for layer in config.row_layers for probe in config.probes
             if not SPECS[probe].streams for labels in state.label_sets]
    every = stream_keys + jobs
    shared = state.cache.root / "fitted"
    t = time.perf_counter()
    for i, key in enumerate(stream_keys):
        est = state.estimators.pop(key)  # dropped as soon as it is frozen: its statistics are the big part
        if world.distributed:
            # One reduce per probe, to the process that solves it: exact sums of n_c, Σx, Σ‖x‖², X_cᵀX_c.
            summed = dist.reduce_sum(world, est.additive_statistics(), dst=world.owner(i))
            if world.owner(i) != world.rank:
                est.close()
                continue
            est.load_additive_statistics(summed)
            del summed
        _keep(state, key, freeze(key[1], est, state.device, state.config), shared, every.index(key))
        est.close()
        del est
        release_free_memory()
    t = state.tick("solve", t)
    for j in tqdm(world.share(len(jobs)), desc="fit: probes from the row cache", leave=False,
                  disable=None if config.progress and world.main else True):
        key = jobs[j]
        t = time.perf_counter()
        try:
            _keep(state, key, _fit_from_cache(state, key, classes), shared, every.index(key))
        except (np.linalg.LinAlgError, ValueError) as exc:
            if SPECS[key[1]].streams:
                raise
            # scikit-learn's QDA refuses rank-deficient classes (common after a ReLU): one probe on one layer is
            # left out of the report, the others stand.
            logger.warning("probe %s on layer %s (%s labels) failed and is left out: %s", key[1], key[0], key[2],
                           exc)
            state.failed.append({"layer": str(key[0]), "probe": key[1], "labels": key[2], "error": str(exc)})
        state.tick("deferred" if SPECS[key[1]].streams else "feature_probes", t)
    failed = dist.all_gather_objects(world, state.failed)
    state.failed = [f for part in failed for f in part]
    gone = {(f["layer"], f["probe"], f["labels"]) for f in state.failed}
    if world.distributed:
        # Every process ends with every probe: each wrote its own share to the shared folder; now all read them.
        dist.barrier(world)
        for i, key in enumerate(every):
            if public_key(key) not in gone:
                state.store.put(key, read_probe(shared / f"{i:05d}", state.device))
        dist.barrier(world)  # nobody removes the folder while another process still reads it
    layers, probes = list(config.row_layers), list(config.probes)
    state.store.reorder(sorted(state.store, key=lambda k: (layers.index(k[0]), probes.index(k[1]),
                                                           state.label_sets.index(k[2]))))
    state.fingerprint = _fingerprint(state)
    if config.train_accuracy:
        t = time.perf_counter()
        state.train_scores = train_accuracy(state)
        state.tick("train_accuracy", t)


def _keep(state: FitState, key: Key, est: Any, shared: Any, index: int) -> None:
    """A probe this process fitted: into the store, or (several processes) into the shared folder for all."""
    if state.world.distributed:
        write_probe(shared / f"{index:05d}", key[1], est)
    else:
        state.store.put(key, est)


def _fit_from_cache(state: FitState, key: Key, classes: np.ndarray) -> Any:
    layer, probe, labels = key
    y = state.cache.labels(labels)
    if SPECS[probe].streams:
        est = new_estimator(state.config, probe, state.device, state.plan.deferred_memory)
        rows_per_chunk = max(1, CHUNK_BYTES // (4 * state.dims[layer]))
        start, t = 0, time.perf_counter()
        for chunk in state.cache.chunks(layer, rows_per_chunk):
            est.partial_fit(torch.from_numpy(chunk).to(state.device), y[start:start + len(chunk)], classes=classes)
            start += len(chunk)
            del chunk
            release_free_memory()
        t = state.tick("deferred_statistics", t)
        frozen = freeze(probe, est, state.device, state.config)
        est.close()
        del est
        release_free_memory()
        state.tick("deferred_solve", t)
        return frozen
    est = new_estimator(state.config, probe, state.device, None)
    est.fit(state.cache.matrix(layer), y)
    return est

def _fingerprint(state: FitState) -> str:
    """A short digest of what was fitted: sample count, input shape and every label set, in sample-index order when
    every batch carried its rows' indices (so that a loader Accelerate prepared digests as the plain loader over
    data in index order does), else in the order the rows were read."""
    import hashlib

    h = hashlib.sha256(repr((state.n_train, state.input_shape, state.label_sets)).encode())
    order = None
    if all(dist.all_gather_objects(state.world, state.indexed)):
        order = np.argsort(state.cache.labels(INDEX), kind="stable")
    for name in state.label_sets:
        labels = state.cache.labels(name)
        h.update((labels if order is None else labels[order]).astype("<i8").tobytes())
    return h.hexdigest()[:16]
