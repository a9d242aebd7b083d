"""ProbeRunner.fit: the memory plan, the one pass over the training batches, and what follows it.

After the pass, in order:

1. processes agree on the label sets, layer widths and sample count (one small gather);
2. statistics of the probes that streamed are reduced to the process that solves them (one reduce per probe, at the
   end, never per batch), solved, and frozen to their compact predicting form;
3. layers that did not stream (second-moment statistics over the memory budget) and feature probes are fitted from
   the row cache, one probe at a time, each process taking its share;
4. fitted probes travel between processes through the shared cache folder (safetensors, never pickle);
5. training accuracy: every probe is scored on (a seeded subset of) the cached training rows.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from masc_probe._choices import SECOND_MOMENT_PROBES as SECOND_MOMENT
from masc_probe._choices import STATISTIC_PROBES, TENSOR_PROBES
from masc_probe.errors import InputError
from masc_probe.probes import PROBES
from masc_probe.runner import _distributed as dist
from masc_probe.runner._cache import Reducer, RowCache, split_batch
from masc_probe.runner._config import Key, RunnerConfig
from masc_probe.runner._controls import ControlledForward
from masc_probe.runner._forward import batches, model_device, release_free_memory, sync
from masc_probe.runner._plan import Plan, make_plan
from masc_probe.runner._store import ProbeStore, read_probe, write_probe

logger = logging.getLogger("masc_probe.runner")

_CHUNK_BYTES = 128 * 1024**2  # rows read back from the cache per block
_INDEX = "_index"  # the row cache's "label set" of sample indices (no label set has this name)


def new_estimator(config: RunnerConfig, probe: str, device: torch.device, max_memory: int | None) -> Any:
    """A fresh probe with the runner's settings, passing only the arguments its constructor takes."""
    factory = PROBES[probe]
    try:
        accepted = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        accepted = set()
    defaults: dict[str, Any] = {"device": device, "max_memory": max_memory}
    if probe == "masc":
        defaults["n_components"] = config.n_components
    kwargs = {k: v for k, v in defaults.items() if k in accepted and v is not None}
    kwargs.update(config.probe_kwargs.get(probe, {}))
    return factory(**kwargs)


def freeze(probe: str, est: Any, device: torch.device, config: RunnerConfig | None = None) -> Any:
    """A solved statistic probe in its compact predicting form (``frozen``); other probes as they are. MASC keeps
    its profile (every size of ``config.profile_sizes()``, within a sixteenth of the memory budget per probe)."""
    if probe == "masc" and config is not None and config.profile:
        return est.frozen(device, profile=config.profile_sizes(), profile_max_bytes=config.max_memory // 16)
    return est.frozen(device) if probe in STATISTIC_PROBES else est


@dataclass
class FitResult:
    """What a fit leaves on the runner (its attributes ending in ``_``), and what a saved runner holds."""

    store: ProbeStore  # the fitted probes by (layer, probe, label set)
    classes: np.ndarray
    label_sets: list[str]
    train_accuracy: dict[Key, dict[str, float]]
    n_train: int
    n_train_scored: int
    data_fingerprint: str | None  # a digest of the labels fitted on (sample count, input shape, label sets)
    plan: Plan
    failed: list[dict[str, str]] = field(default_factory=list)  # probes left out, with their error
    timings: dict[str, float] = field(default_factory=dict)
    # What the training data's load_data record says ({"dataset", "corruption"}); empty for data without one.
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def solvers(self) -> dict[Key, str]:
        """The solver form of each statistic probe that has one."""
        return {k: i["solver"] for k in self.store if "solver" in (i := self.store.info(k))}


@dataclass
class FitState:
    """Everything one fit builds up."""

    config: RunnerConfig
    reducer: Reducer
    world: dist.World
    cache: RowCache
    num_classes: int | None
    device: torch.device = torch.device("cpu")
    label_sets: list[str] = field(default_factory=list)
    dims: dict[str, int] = field(default_factory=dict)
    plan: Plan = field(default_factory=Plan)
    estimators: dict[Key, Any] = field(default_factory=dict)
    n_local: int = 0
    n_train: int = 0
    n_train_scored: int = 0
    fingerprint: str | None = None
    input_shape: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    train_scores: dict[Key, dict[str, float]] = field(default_factory=dict)
    store: Any = None  # ProbeStore of the fitted probes
    failed: list[dict[str, str]] = field(default_factory=list)
    indexed: bool = True  # every row so far carried its sample index (kept in the cache as label set _INDEX)

    def tick(self, name: str, since: float) -> float:
        now = sync(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + now - since
        return now


def _select_sets(sets: dict[str, torch.Tensor], wanted: str) -> list[str]:
    if wanted == "both":
        return list(sets)
    if wanted in sets:
        return [wanted]
    if wanted == "true" and "label" in sets:  # one label set, taken as given
        return ["label"]
    raise InputError(f"labels={wanted!r} needs batches that carry it, got batches with {sorted(sets)}")


def _setup(state: FitState, sets: dict[str, torch.Tensor], rows: dict[str, torch.Tensor],
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
            streaming = probe == "ncm" or (probe in SECOND_MOMENT and layer in state.plan.stream)
            if probe in STATISTIC_PROBES and streaming:
                budget = state.plan.stream_memory.get(layer) if probe in SECOND_MOMENT else None
                for labels in state.label_sets:
                    state.estimators[(layer, probe, labels)] = new_estimator(config, probe, state.device, budget)
    logger.debug("plan: stream %s, from the row cache %s, cached rows %s", state.plan.stream, state.plan.deferred,
                 state.plan.cached)


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
            state.cache.append_labels({_INDEX: torch.from_numpy(np.asarray(index, dtype=np.int64))})
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
    stream_keys = sorted(state.estimators)
    jobs = [(layer, probe, labels) for layer in state.plan.deferred for probe in config.probes
            if probe in SECOND_MOMENT for labels in state.label_sets]
    jobs += [(layer, probe, labels) for layer in config.row_layers for probe in config.probes
             if probe not in STATISTIC_PROBES for labels in state.label_sets]
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
            if key[1] in STATISTIC_PROBES:
                raise
            # scikit-learn's QDA refuses rank-deficient classes (common after a ReLU): one probe on one layer is
            # left out of the report, the others stand.
            logger.warning("probe %s on layer %s (%s labels) failed and is left out: %s", key[1], key[0], key[2],
                           exc)
            state.failed.append({"layer": key[0], "probe": key[1], "labels": key[2], "error": str(exc)})
        state.tick("deferred" if key[1] in SECOND_MOMENT else "feature_probes", t)
    failed = dist.all_gather_objects(world, state.failed)
    state.failed = [f for part in failed for f in part]
    gone = {(f["layer"], f["probe"], f["labels"]) for f in state.failed}
    if world.distributed:
        # Every process ends with every probe: each wrote its own share to the shared folder; now all read them.
        dist.barrier(world)
        for i, key in enumerate(every):
            if key not in gone:
                state.store.put(key, read_probe(shared / f"{i:05d}", state.device))
        dist.barrier(world)  # nobody removes the folder while another process still reads it
    layers, probes = list(config.row_layers), list(config.probes)
    state.store.reorder(sorted(state.store, key=lambda k: (layers.index(k[0]), probes.index(k[1]),
                                                           state.label_sets.index(k[2]))))
    state.fingerprint = _fingerprint(state)
    if config.train_accuracy:
        t = time.perf_counter()
        state.train_scores = _train_accuracy(state)
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
    if probe in STATISTIC_PROBES:
        est = new_estimator(state.config, probe, state.device, state.plan.deferred_memory)
        rows_per_chunk = max(1, _CHUNK_BYTES // (4 * state.dims[layer]))
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


def _train_accuracy(state: FitState) -> dict[Key, dict[str, float]]:
    """Accuracy of each probe on the training rows against every label set (a seeded subset when capped).

    Probe by probe (a spilled probe is read from disk once), each over its layer's rows in blocks.
    """
    config, world, cache, store = state.config, state.world, state.cache, state.store
    n = state.n_train
    cap = n if config.train_accuracy is True else min(n, int(config.train_accuracy))
    index = np.arange(n) if cap == n else np.sort(np.random.default_rng(config.seed).choice(n, cap, replace=False))
    truth = {name: cache.labels(name)[index] for name in state.label_sets}
    keys = list(store)
    counts: dict[str, int] = {}
    for ki in tqdm(world.share(len(keys)), desc="fit: training accuracy", leave=False,
                   disable=None if config.progress and world.main else True):
        key = keys[ki]
        est = store[key]
        step = max(1, _CHUNK_BYTES // (4 * state.dims[key[0]]))
        correct = dict.fromkeys(state.label_sets, 0)
        for start in range(0, cap, step):
            X = torch.from_numpy(cache.rows(key[0], index[start:start + step])).to(state.device)
            pred = _labels_np(est.predict(_input_for(key[1], X)))
            for s in state.label_sets:
                correct[s] += int((pred == truth[s][start:start + step]).sum())
        del est
        release_free_memory()
        counts.update({"\x1f".join((*key, s)): v for s, v in correct.items()})
    merged: dict[str, int] = {}
    for part in dist.all_gather_objects(world, counts):
        merged.update(part)
    out: dict[Key, dict[str, float]] = {}
    for joined, value in merged.items():
        layer, probe, labels, s = joined.split("\x1f")
        out.setdefault((layer, probe, labels), {})[s] = value / cap
    state.n_train_scored = cap
    return out


def _fingerprint(state: FitState) -> str:
    """A short digest of what was fitted: sample count, input shape and every label set, in sample-index order when
    every batch carried its rows' indices (so that a loader Accelerate prepared digests as the plain loader over
    data in index order does), else in the order the rows were read."""
    import hashlib

    h = hashlib.sha256(repr((state.n_train, state.input_shape, state.label_sets)).encode())
    order = None
    if all(dist.all_gather_objects(state.world, state.indexed)):
        order = np.argsort(state.cache.labels(_INDEX), kind="stable")
    for name in state.label_sets:
        labels = state.cache.labels(name)
        h.update((labels if order is None else labels[order]).astype("<i8").tobytes())
    return h.hexdigest()[:16]


def _input_for(probe: str, X: torch.Tensor) -> Any:
    """Our probes take tensors; scikit-learn's take numpy."""
    return X if probe in TENSOR_PROBES else X.cpu().numpy()


def _labels_np(pred: Any) -> np.ndarray:
    return pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
