"""Training accuracy of a fit: every fitted probe scored on (a seeded subset of) the cached training rows, against
every label set, each process taking its share of the probes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from masc_probe.runner import _distributed as dist
from masc_probe.runner._keys import Key
from masc_probe.runner._evaluate import predict_rows
from masc_probe.runner._fit_state import CHUNK_BYTES, FitState
from masc_probe.runner._forward import release_free_memory


def train_accuracy(state: FitState) -> dict[Key, dict[str, float]]:
    """Accuracy of each probe on the training rows against every label set (a seeded subset when capped).

    Probe by probe (a spilled probe is read from disk once), each over its layer's rows in blocks; the probes of
    one layer come one after another, so a layer whose rows fit one block reads them from the cache once.
    """
    config, world, cache, store = state.config, state.world, state.cache, state.store
    n = state.n_train
    cap = n if config.train_accuracy is True else min(n, int(config.train_accuracy))
    index = np.arange(n) if cap == n else np.sort(np.random.default_rng(config.seed).choice(n, cap, replace=False))
    truth = {name: cache.labels(name)[index] for name in state.label_sets}
    keys = list(store)
    counts: dict[tuple[Any, ...], int] = {}  # (*key, label set) -> rows right
    last: tuple[Any, ...] | None = None  # (layer, start, stop) of the block read last, kept for the next probe
    X = torch.zeros(0)
    for ki in tqdm(world.share(len(keys)), desc="fit: training accuracy", leave=False,
                   disable=None if config.progress and world.main else True):
        key = keys[ki]
        est = store[key]
        step = max(1, CHUNK_BYTES // (4 * state.dims[key[0]]))
        correct = dict.fromkeys(state.label_sets, 0)
        for start in range(0, cap, step):
            if last != (key[0], start, start + step):
                X = torch.from_numpy(cache.rows(key[0], index[start:start + step])).to(state.device)
                last = (key[0], start, start + step)
            pred = predict_rows(key[1], est, X).numpy()
            for s in state.label_sets:
                correct[s] += int((pred == truth[s][start:start + step]).sum())
        del est
        release_free_memory()
        counts.update({(*key, s): v for s, v in correct.items()})
    merged: dict[tuple[Any, ...], int] = {}
    for part in dist.all_gather_objects(world, counts):
        merged.update(part)
    out: dict[Key, dict[str, float]] = {}
    for (layer, probe, labels, s), value in merged.items():
        out.setdefault((layer, probe, labels), {})[s] = value / cap
    state.n_train_scored = cap
    return out
