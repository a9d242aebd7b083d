"""The one forward pass of ``ProbeRunner.fit`` over the training batches: the label sets and the memory plan read from
the first batch, statistics streamed in blocks, rows to the row cache, and (several processes) the last batches'
repeats resolved by sample index.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from masc_probe.errors import InputError
from masc_probe.probes._registry import SPECS
from masc_probe.runner import _distributed as dist
from masc_probe.runner._cache import split_batch
from masc_probe.runner._controls import ControlledForward
from masc_probe.runner._keys import LayerKey
from masc_probe.runner._fit_state import INDEX, FitState, new_estimator
from masc_probe.runner._forward import batches, model_device, release_free_memory, sync
from masc_probe.runner._plan import make_plan

logger = logging.getLogger("masc_probe.runner")


def _select_sets(sets: dict[str, torch.Tensor], wanted: str) -> list[str]:
    if wanted == "both":
        return list(sets)
    if wanted in sets:
        return [wanted]
    if wanted == "true" and "label" in sets:  # one label set, taken as given
        return ["label"]
    raise InputError(f"labels={wanted!r} needs batches that carry it, got batches with {sorted(sets)}")


def _setup(state: FitState, sets: dict[str, torch.Tensor], rows: dict[LayerKey, torch.Tensor],
           logits: torch.Tensor | None) -> None:
    config = state.config
    state.label_sets = _select_sets(sets, config.labels)
    if state.num_classes is None:
        if logits is None or logits.ndim != 2 or logits.shape[1] < 2:
            got = "no output" if logits is None else f"output shape {tuple(logits.shape)}"
            raise InputError(f"cannot tell the number of classes from the model ({got}); pass num_classes= to fit")
        state.num_classes = int(logits.shape[1])
    state.dims = {name: int(r.shape[1]) for name, r in rows.items()}
    state.plan = make_plan(config, state.dims, state.num_classes, len(state.label_sets))
    for layer in config.row_layers:
        for probe in config.probes:
            moments = SPECS[probe].moments  # first moments always stream; second ones where the plan says
            if moments == 1 or (moments == 2 and layer in state.plan.stream):
                budget = state.plan.stream_memory.get(layer) if moments == 2 else None
                for labels in state.label_sets:
                    state.estimators[(layer, probe, labels)] = new_estimator(config, probe, state.device, budget)
    named = state.plan.named()
    logger.debug("plan: stream %s, from the row cache %s, cached rows %s", named.stream, named.deferred, named.cached)


class _Blocks:
    """Batches gathered into blocks before they reach the streaming probes.

    A scatter update costs d² per class however few rows it adds; with 10 classes in a batch of 128 that is ~13
    rows per d×d product, so the products would be memory-bound. Blocks of about d rows make them compute-bound.
    """

    def __init__(self, state: FitState) -> None:
        self.state = state
        layers = {k[0] for k in state.estimators}
        width = sum(state.dims[layer] for layer in layers)
        cap = (state.config.max_memory // 16) // max(4 * width, 1)  # the buffer takes a sixteenth of the budget
        self.target = max(1, min(max([256, *(state.dims[layer] for layer in layers)]), 8192, cap))
        self.rows: dict[str, list[torch.Tensor]] = {}
        self.labels: dict[str, list[np.ndarray]] = {}
        self.n = 0

    def add(self, rows: dict[str, torch.Tensor], sets: dict[str, np.ndarray], classes: np.ndarray) -> None:
        if not self.state.estimators:
            return
        for layer in {k[0] for k in self.state.estimators}:
            self.rows.setdefault(layer, []).append(rows[layer])
        for name, y in sets.items():
            self.labels.setdefault(name, []).append(y)
        self.n += len(next(iter(sets.values())))
        if self.n >= self.target:
            self.flush(classes)

    def flush(self, classes: np.ndarray | None) -> None:
        if not self.n or classes is None:
            return
        rows = {layer: torch.cat(parts) if len(parts) > 1 else parts[0] for layer, parts in self.rows.items()}
        labels = {name: np.concatenate(parts) for name, parts in self.labels.items()}
        for (layer, _, name), est in self.state.estimators.items():
            est.partial_fit(rows[layer], labels[name], classes=classes)
        self.rows, self.labels, self.n = {}, {}, 0
        del rows
        release_free_memory()

def fit_pass(state: FitState, model: nn.Module, data: Any, *, shard: bool,
             controls: Mapping[str, nn.Module] | None = None) -> None:
    """The one forward pass over the training batches.

    With several processes and batches whose sample indices are known, each process holds its last batch back
    until the pass is over: Accelerate's ``even_batches`` repeats samples only there, and statistics cannot take a
    row back once added. One gather of every process's indices then keeps of the held rows only those whose
    sample no process added and no lower rank held (``_resolve_held``). A repeat anywhere else is an error.
    """
    config = state.config
    state.device = config.device or model_device(model)
    classes: np.ndarray | None = None
    first_sets: list[str] = []
    blocks: _Blocks | None = None
    dedup = state.world.distributed
    seen: list[np.ndarray] = []  # indices of the rows added so far (when dedup)
    held: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], np.ndarray, bool] | None = None

    def add(rows: dict[str, torch.Tensor], sets: dict[str, torch.Tensor], index: np.ndarray | None,
            carried: bool) -> None:
        t = sync(state.device)
        blocks.add(rows, {name: y.numpy() for name, y in sets.items()}, classes)  # type: ignore[union-attr]
        t = state.tick("statistics", t)
        for layer in state.plan.cached:
            state.cache.append(layer, rows[layer])
        state.cache.append_labels(sets)
        if index is None or not carried:
            state.indexed = False
        elif state.indexed:
            state.cache.append_labels({INDEX: torch.from_numpy(np.asarray(index, dtype=np.int64))})
        state.n_local += len(next(iter(sets.values())))
        state.tick("cache_write", t)

    with ControlledForward(model, controls or {}, list(config.layers or []), state.reducer, state.device,
                           want_logits=state.num_classes is None, control_logits=False,
                           train_mode=config.protocol == "authors") as forward:
        for batch, index in batches(data, world=state.world, shard=shard, progress=config.progress, desc="fit"):
            x, sets = split_batch(batch)
            t = sync(state.device)
            rows, logits = forward(x)
            state.tick("forward", t)
            if classes is None:
                state.input_shape = list(x.shape[1:])
                _setup(state, sets, rows, logits)
                classes = np.arange(state.num_classes)
                first_sets = sorted(sets)
                blocks = _Blocks(state)
            elif sorted(sets) != first_sets:
                raise InputError(f"every batch must carry the same label sets, got {sorted(sets)} after "
                                 f"{first_sets}")
            sets = {name: sets[name] for name in state.label_sets}
            for name, y in sets.items():
                if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
                    raise InputError(f"labels must lie in [0, {len(classes)}), got {name} labels in "
                                     f"[{int(y.min())}, {int(y.max())}]; pass num_classes= to fit")
            if index is not None and len(index) != len(x):
                index = None
            # Indices the batch carries itself (not positions the shards were cut at) also order the fingerprint.
            carried = index is not None and dist.batch_index(batch) is not None
            if dedup and index is None:
                dedup = False  # indices unknown: every row counts as it comes
                if held is not None:
                    add(*held)
                    held = None
            if not dedup:
                add(rows, sets, index, carried)
                continue
            if held is not None:
                add(*held)
                seen.append(held[2])
            held = (rows, sets, index, carried)
        if state.world.distributed:
            # Every process must agree before the gather: one without indices means none de-duplicates.
            if all(dist.all_gather_objects(state.world, dedup)):
                keep_rows = _resolve_held(state, seen, held)
                if held is not None and keep_rows.any():
                    pick = torch.from_numpy(np.flatnonzero(keep_rows))
                    add({layer: r.index_select(0, pick.to(r.device)) for layer, r in held[0].items()},
                        {name: y[pick] for name, y in held[1].items()}, held[2][keep_rows], held[3])
            elif held is not None:
                add(*held)
    if blocks is not None:
        t = sync(state.device)
        blocks.flush(classes)
        state.tick("statistics", t)
    state.cache.finish()


def _resolve_held(state: FitState, seen: list[np.ndarray], held: Any) -> np.ndarray:
    """Of this process's held-back last batch, the rows whose sample no process added, nor held earlier in the
    order (every added row, then the held batches rank by rank). One gather; every process takes part.

    Raises:
        InputError: A sample was added twice (the shards overlap before their last batches).
    """
    added = np.concatenate(seen) if seen else np.zeros(0, np.int64)
    tail = held[2] if held is not None else np.zeros(0, np.int64)
    parts = dist.all_gather_objects(state.world, (added, tail))
    all_added = np.concatenate([p[0] for p in parts])
    if len(np.unique(all_added)) != len(all_added):  # every process sees this and raises alike
        raise InputError(f"{len(all_added) - len(np.unique(all_added))} samples were read twice before the last "
                         "batches: the processes' shards overlap; pass each process a disjoint part of the data, or "
                         "the whole data with shard=True")
    order = np.concatenate([all_added, *(p[1] for p in parts)])
    first = np.zeros(len(order), dtype=bool)
    first[np.unique(order, return_index=True)[1]] = True
    start = len(all_added) + sum(len(p[1]) for p in parts[:state.world.rank])
    keep = first[start:start + len(tail)]
    dropped = len(order) - int(first.sum())
    if dropped and state.world.main:
        logger.info("dropped %d repeated samples from the processes' last batches (Accelerate's even_batches "
                    "padding)", dropped)
    return keep
