"""ProbeRunner.fit: the one pass over the training batches (``_fit_pass``: the memory plan, streamed statistics, the
row cache), then what follows it (``_solve``), in order:

1. processes agree on the label sets, layer widths and sample count (one small gather);
2. statistics of the probes that streamed are reduced to the process that solves them (one reduce per probe, at the
   end, never per batch), solved, and frozen to their compact predicting form;
3. layers that did not stream (second-moment statistics over the memory budget) and feature probes are fitted from
   the row cache, one probe at a time, each process taking its share;
4. fitted probes travel between processes through the shared cache folder (safetensors, never pickle);
5. training accuracy: every probe is scored on (a seeded subset of) the cached training rows (``_train_accuracy``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from masc_probe.runner import _distributed as dist
from masc_probe.runner._cache import Reducer, RowCache
from masc_probe.runner._config import RunnerConfig
from masc_probe.runner._fit_pass import fit_pass
from masc_probe.runner._fit_state import FitResult, FitState
from masc_probe.runner._forward import model_device
from masc_probe.runner._solve import finish_fit
from masc_probe.runner._store import ProbeStore

__all__ = ["FitResult", "fit"]


def fit(config: RunnerConfig, reducer: Reducer, model: nn.Module, train: Any, *, num_classes: int | None,
        shard: bool, controls: Mapping[str, nn.Module] | None = None) -> FitResult:
    """The whole fit: the pass over *train*, then everything after it (see the module docstring). The control
    models (``_controls``) run in the same pass; their rows are more layers to it."""
    world = dist.world()
    t0 = time.perf_counter()
    cache_root = dist.shared_tempdir(world, config.cache_dir, "masc-probe-rows-")
    cache = RowCache(cache_root, rank=world.rank, world_size=world.size)
    device = config.device or model_device(model)
    # Fitted probes held in memory take an eighth of the budget; the rest wait on disk (see _store).
    store = ProbeStore(config.max_memory // 8, config.cache_dir, device)
    state = FitState(config=config, reducer=reducer, world=world, cache=cache, num_classes=num_classes, store=store)
    try:
        fit_pass(state, model, train, shard=shard, controls=controls or {})
        finish_fit(state)
    except BaseException:
        store.close()
        raise
    finally:
        dist.barrier(world)
        if world.main:
            cache.cleanup()
    return FitResult(store=store, classes=np.arange(state.num_classes or 0), label_sets=list(state.label_sets),
                     train_accuracy=state.train_scores, n_train=state.n_train, n_train_scored=state.n_train_scored,
                     data_fingerprint=state.fingerprint, plan=state.plan, failed=state.failed,
                     timings={**state.timings, "fit": time.perf_counter() - t0})
