"""ProbeRunner.evaluate: one pass over the test batches, every probe and the model's own logits scored in it.

Controls (``_controls``) are scored in the same pass on the same rows, so each trained result and its control at the
same layer are paired image by image: the pass counts, per pair, the images only the trained side gets right and
those only the control gets right (summed over processes like every other count), and the report turns them into
the exact paired interval (``masc_probe.report._compare``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

import numpy as np
import torch
from torch import nn

from masc_probe._version import __version__
from masc_probe.errors import InputError
from masc_probe.models import model_spec
from masc_probe.probes._registry import SPECS
from masc_probe.report import ProbeReport
from masc_probe.runner import _distributed as dist
from masc_probe.runner._cache import Reducer, RowCache, split_batch
from masc_probe.runner._config import RunnerConfig
from masc_probe.runner._controls import ControlledForward, ControlModel
from masc_probe.runner._keys import INPUT, Key, LayerKey
from masc_probe.runner._fit_state import FitResult
from masc_probe.runner._forward import batches, model_device, release_free_memory, sync


def predict_rows(probe: str, est: Any, rows: torch.Tensor) -> torch.Tensor:
    """The predicted labels of *est* (a fitted *probe*) for rows (B, D), as a CPU int64 tensor."""
    pred = est.predict(SPECS[probe].inputs(rows))
    if isinstance(pred, torch.Tensor):
        return pred.detach().to("cpu", torch.int64)
    return torch.as_tensor(np.asarray(pred), dtype=torch.int64)


def pairs(keys: list[Key], controls: Iterable[str]) -> list[tuple[int, int, str]]:
    """``(trained column, control column, control name)`` of every trained result that has a control result at
    the same layer (the raw input: the layer ``"input"`` of the same probe and label set)."""
    index = {key: i for i, key in enumerate(keys)}
    out = []
    for i, (layer, probe, labels) in enumerate(keys):
        if layer.control is not None or layer.layer == INPUT:
            continue
        for name in controls:
            partner = (LayerKey(INPUT) if name == INPUT else layer._replace(control=name), probe, labels)
            if partner in index:
                out.append((i, index[partner], name))
    return out


def evaluate_pass(config: RunnerConfig, reducer: Reducer, fitted: FitResult, model: nn.Module, test: Iterable[Any],
                  *, shard: bool, controls: Mapping[str, nn.Module] | None = None) -> dict[str, Any]:
    """Counts of correct predictions per probe and for the model, summed over processes (one all-reduce).

    Probes held in memory score each batch as it passes. Probes the store keeps on disk are read once each after
    the pass and score the rows of their layer, cached on disk during the pass. Every row's outcome is kept (one
    byte per probe) beside its sample index; with several processes, a sample read twice (Accelerate's
    ``even_batches`` padding) counts once: at its first occurrence (see ``_distributed.first_occurrences``).
    """
    world = dist.world()
    device = config.device or model_device(model)
    store = fitted.store
    keys = list(store)
    spilled = set(getattr(store, "spilled", []))
    live = {k: store[k] for k in keys if k not in spilled}
    profiled = [k for k in keys if SPECS[k[1]].profile] if config.profile else []
    profile_preds: dict[Key, list[torch.Tensor]] = {k: [] for k in profiled}
    profile_meta: dict[Key, tuple[list[Any], list[list[int]]]] = {}
    cache = RowCache.temporary(config.cache_dir) if spilled else None
    cached_layers = sorted({k[0] for k in spilled}, key=str)
    labels: list[torch.Tensor] = []
    controls = dict(controls or {})
    names = list(controls)
    extra_cols = 2 + 2 * len(names)
    # Per row: one column per probe, then per control model its hit and whether it was scored, then the model's hit
    # and whether the model was scored on it (the last two columns).
    hits: list[torch.Tensor] = []
    indices: list[Any] = []
    row_keys: list[Any] = []  # several processes, batches without sample indices: a digest of each row's input
    timings = fitted.timings
    try:
        with ControlledForward(model, controls, list(config.layers or []), reducer, device, want_logits=True,
                               control_logits=True, train_mode=config.protocol == "authors") as forward:
            for b, (batch, index) in enumerate(batches(test, world=world, shard=shard, progress=config.progress,
                                                       desc="evaluate")):
                if b % 16 == 15:
                    release_free_memory()  # see release_free_memory: scoring churns 1-32 MB blocks
                x, sets = split_batch(batch)
                y = sets.get("true", sets.get("label"))
                t = sync(device)
                rows, logits = forward(x)
                t2 = sync(device)
                hit = torch.zeros(len(y), len(keys) + extra_cols, dtype=torch.int8)
                for i, key in enumerate(keys):
                    if key in live:
                        hit[:, i] = _scored(key, live[key], rows[key[0]], profile_preds, profile_meta) == y
                for j, name in enumerate(names):
                    scores = forward.control_logits.get(name)
                    if scores is not None and scores.ndim == 2:
                        hit[:, len(keys) + 2 * j] = scores.argmax(dim=1).cpu() == y
                        hit[:, len(keys) + 2 * j + 1] = 1
                if logits is not None and logits.ndim == 2:
                    hit[:, -2] = logits.argmax(dim=1).cpu() == y
                    hit[:, -1] = 1
                hits.append(hit)
                indices.append(index if index is not None and len(index) == len(y) else None)
                if world.distributed and indices[-1] is None:  # no sample indices: key the rows by their input
                    row_keys.append(content_keys(x, len(y)))
                labels.append(y)
                if cache is not None:
                    for layer in cached_layers:
                        cache.append(layer, rows[layer])
                t3 = sync(device)
                timings["evaluate_forward"] = timings.get("evaluate_forward", 0.0) + t2 - t
                timings["predict"] = timings.get("predict", 0.0) + t3 - t2
        table = torch.cat(hits) if hits else torch.zeros(0, len(keys) + extra_cols, dtype=torch.int8)
        if cache is not None and labels:
            t = sync(device)
            cache.finish()
            y_all = torch.cat(labels)
            for i, key in enumerate(keys):
                if key not in spilled:
                    continue
                est, start = store[key], 0
                for chunk in cache.chunks(key[0], max(1, (128 * 1024**2) // (4 * cache.dims[key[0]]))):
                    x_chunk = torch.from_numpy(chunk).to(device)
                    pred = _scored(key, est, x_chunk, profile_preds, profile_meta)
                    table[start:start + len(chunk), i] = pred == y_all[start:start + len(chunk)]
                    start += len(chunk)
                del est
                release_free_memory()
            timings["predict"] = timings.get("predict", 0.0) + sync(device) - t
    finally:
        if cache is not None:
            cache.cleanup()
    keep = _first_rows(world, indices, len(table))
    kept = table[torch.from_numpy(keep)]
    counts = kept.sum(dim=0, dtype=torch.int64)
    paired = pairs(keys, config.controls)
    # Per pair: images only the trained side gets right (b), and only the control (c): all McNemar needs.
    discordant = torch.tensor([int(((kept[:, i] == 1) & (kept[:, j] == 0)).sum()) for i, j, _ in paired]
                              + [int(((kept[:, i] == 0) & (kept[:, j] == 1)).sum()) for i, j, _ in paired],
                              dtype=torch.int64)
    local = torch.cat([counts, discordant, torch.tensor([int(keep.sum())], dtype=torch.int64)])
    total = dist.all_reduce_sum(world, {"counts": local})["counts"]
    n = int(total[-1])
    if n == 0:
        raise InputError("evaluate needs at least one test batch, got none")
    width = len(keys) + extra_cols
    scored = int(total[width - 1])
    control_acc = {}
    for j, name in enumerate(names):
        got = int(total[len(keys) + 2 * j + 1])
        control_acc[name] = int(total[len(keys) + 2 * j]) / got if got == n else None
    b, c = total[width:width + len(paired)], total[width + len(paired):width + 2 * len(paired)]
    profiles = _gather_profiles(world, profile_meta, profile_preds, labels, indices, row_keys, keep)
    return {"n": n, "correct": {key: int(total[i]) for i, key in enumerate(keys)}, "profiles": profiles,
            "model_accuracy": int(total[width - 2]) / scored if scored == n else None,
            "control_accuracy": control_acc,
            "pairs": [(keys[i], keys[j], name, int(b[k]), int(c[k])) for k, (i, j, name) in enumerate(paired)]}


def _scored(key: Key, est: Any, rows: torch.Tensor, preds: dict[Key, list[torch.Tensor]],
            meta: dict[Key, Any]) -> torch.Tensor:
    """The predicted labels of *est* for rows (B, D), as a CPU int64 tensor. A MASC whose profile is collected
    (*key* in *preds*) is scored at every size of its profile, from one projection, and its fitted size's
    predictions are read from that row (where the profile holds it: a runner's always does) instead of a second
    projection."""
    if key not in preds:
        return predict_rows(key[1], est, rows)
    profile = _profile_rows(est, rows, key, meta)
    preds[key].append(profile)
    at = meta[key][2]
    return profile[at] if at is not None else predict_rows(key[1], est, rows)


def _profile_rows(est: Any, rows: torch.Tensor, key: Key, meta: dict[Key, Any]) -> torch.Tensor:
    """MASC's predictions at every size of its kept profile, (S, B) int64 on the CPU; its sizes, k_c and the row
    of its fitted size (None if the profile lacks it) into *meta* the first time."""
    if key not in meta:
        sizes, fitted = est.profile_sizes_, est.n_components
        at = [i for i, s in enumerate(sizes) if s == fitted and isinstance(s, int) == isinstance(fitted, int)]
        meta[key] = (sizes, est.profile_components_().tolist(), at[0] if at else None)
    pred = est.predict_profile(rows)
    return pred.detach().to("cpu", torch.int64) if isinstance(pred, torch.Tensor) else torch.as_tensor(pred)


def content_keys(x: Any, n: int) -> np.ndarray:
    """A stable key per row from its input's bytes (a 56-bit BLAKE2b digest), for rows that came without sample
    indices: the choosing / evaluation split then depends on the images, not on their order or on how the batches
    were shared among processes."""
    import hashlib

    tensor = x if isinstance(x, torch.Tensor) else next(v for v in x.values() if isinstance(v, torch.Tensor))
    rows = tensor.detach().to("cpu").contiguous().reshape(n, -1).numpy()
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=7).digest(), "little") for r in rows],
                    dtype=np.int64)


def _gather_profiles(world: dist.World, meta: dict[Key, Any], preds: dict[Key, list[torch.Tensor]],
                     labels: list[torch.Tensor], indices: list[Any], row_keys: list[Any],
                     keep: np.ndarray) -> dict[str, Any] | None:
    """Every MASC key's profile predictions on the kept rows of every process, with the rows' labels and stable keys:
    the sample indices the batches carry; without them, the rows' positions in one process, or a digest of each row's
    input across several (whose batches arrive in no one order)."""
    if not preds or not labels:
        return None
    y = torch.cat(labels).numpy()[keep]
    known = all(i is not None for i in indices)
    if known:
        keys = np.concatenate([np.asarray(i) for i in indices])[keep].astype(np.int64)
    elif world.distributed:
        keys = np.concatenate(row_keys)[keep]
    else:
        keys = np.arange(len(y), dtype=np.int64)  # one process: the rows' order in the test data
    local = {"y": y, "index": keys, "known": known,
             "preds": {k: torch.cat(v, dim=1).numpy()[:, keep].astype(np.int32) for k, v in preds.items() if v}}
    parts = dist.all_gather_objects(world, local) if world.distributed else [local]
    if not all(p["known"] for p in parts) and any(p["known"] for p in parts):
        raise InputError("every process's test batches must carry sample indices, or none")
    out = {}
    for key in preds:
        if key in meta:
            sizes, ks = meta[key][0], meta[key][1]
            out[key] = (sizes, np.concatenate([p["preds"][key] for p in parts], axis=1), ks)
    return {"y": np.concatenate([p["y"] for p in parts]), "index": np.concatenate([p["index"] for p in parts]),
            "index_kind": "dataset" if parts[0]["known"] else "content" if world.distributed else "position",
            "by_key": out}


def _first_rows(world: dist.World, indices: list[Any], n_rows: int) -> np.ndarray:
    """Which rows count: all of them, or with several processes that all know their rows' sample indices, the
    first occurrence of each sample in the job."""
    known = bool(indices) and all(i is not None for i in indices)
    if not world.distributed or not all(dist.all_gather_objects(world, known or not indices)):
        return np.ones(n_rows, dtype=bool)
    return dist.first_occurrences(world, np.concatenate(indices) if indices else np.zeros(0, np.int64))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def model_name_of(model: nn.Module | None) -> str | None:
    if model is None:
        return None
    try:
        return model_spec(model)
    except InputError:
        return type(model).__name__


def build_report(config: RunnerConfig, reducer: Reducer, fitted: FitResult, counts: dict[str, Any], *,
                 epoch: int | None, model_name: str | None, dataset: str | None,
                 corruption: Mapping[str, Any] | None, extra: Mapping[str, Any] | None,
                 controls: Mapping[str, ControlModel] | None = None) -> ProbeReport:
    """The report of one evaluation: a control model's results carry ``control``; the ``controls`` block and the
    paired ``comparisons`` follow from the pass's counts."""
    n = counts["n"]
    results = []
    for key in fitted.store:
        (layer, name), probe, labels = key
        res: dict[str, Any] = {"layer": layer, "probe": probe, "labels": labels,
                               "test_accuracy": counts["correct"][key] / n}
        if name is not None:
            res["control"] = name
        if key in fitted.train_accuracy:
            res["train_accuracy"] = dict(fitted.train_accuracy[key])
            res["n_train_scored"] = fitted.n_train_scored
        info = fitted.store.info(key)
        if "n_components" in info:
            res["n_components"] = info["n_components"]
        if "solver" in info:
            res["solver"] = info["solver"]
        if epoch is not None:
            res["epoch"] = int(epoch)
        results.append(res)
    solvers = {s for (_, p, _), s in fitted.solvers.items() if SPECS[p].subspaces}  # MASC's form
    provenance = {"masc_probe": __version__, "torch": torch.__version__, "timm": _version("timm"),
                  "data_fingerprint": fitted.data_fingerprint,
                  "solver": solvers.pop() if len(solvers) == 1 else ("mixed" if solvers else None)}
    more = {"layers": list(config.layers or []), "probes": list(config.probes), "label_sets": fitted.label_sets,
            "num_classes": len(fitted.classes), "masc_n_components": config.n_components,
            "reducer": reducer.spec, "memory_plan": fitted.plan.to_dict(), "protocol": config.protocol,
            **dict(extra or {})}
    if fitted.failed:
        more["failed"] = fitted.failed
    more.update(_selection_block(config, counts.get("profiles"), corruption, len(fitted.classes)))
    if config.controls:
        more.update(_controls_block(config, counts, controls or {}, epoch=epoch))
    return ProbeReport(results, model=model_name, dataset=dataset, corruption=corruption, provenance=provenance,
                       model_test_accuracy=counts["model_accuracy"], n_test=n, n_train=fitted.n_train, extra=more)


def _selection_block(config: RunnerConfig, profiles: Mapping[str, Any] | None,
                     corruption: Mapping[str, Any] | None, num_classes: int) -> dict[str, Any]:
    """The report's ``profile`` (MASC accuracy at every subspace size, every network) and ``selection`` (each
    network's (layer, size) chosen on the choosing part, compared on the evaluation part; ``runner._select``)."""
    from masc_probe.runner._select import INPUT as INPUT_NET
    from masc_probe.runner._select import TRAINED, select

    if not profiles:
        return {}
    by_network = {}
    for ((layer, name), _, labels), value in profiles["by_key"].items():
        network = name if name is not None else (INPUT_NET if layer == INPUT else TRAINED)
        by_network[(network, layer, labels)] = value
    rows, block = select(by_network, profiles["y"], profiles["index"], rule=config.select,
                         split=config.select_split, seed=config.select_seed, corruption=corruption,
                         num_classes=num_classes, fixed_size=config.select_size, crossfit=config.select_crossfit)
    if block is not None:
        # "dataset": sample indices; "position": row order (one process); "content": digests of the rows' inputs
        block["index_kind"] = profiles["index_kind"]
    return {"profile": rows, **({"selection": block} if block is not None else {})}


def _controls_block(config: RunnerConfig, counts: dict[str, Any], controls: Mapping[str, ControlModel], *,
                    epoch: int | None) -> dict[str, Any]:
    """The report's ``controls`` (what each control is) and ``comparisons`` (each pair with its exact interval)."""
    from masc_probe.report._compare import apply_holm, paired_difference

    n = counts["n"]
    block: dict[str, Any] = {}
    for name in config.controls:
        if name == INPUT:
            if INPUT in (config.layers or ()):
                block[INPUT] = {"source": "raw input"}
        elif name in controls:
            block[name] = {**controls[name].record(), "model_test_accuracy": counts["control_accuracy"].get(name)}
    comparisons = []
    for trained, control, name, b, c in counts.get("pairs", []):
        comp = {"layer": trained[0].layer, "probe": trained[1], "labels": trained[2], "control": name,
                "trained": counts["correct"][trained] / n, "control_accuracy": counts["correct"][control] / n,
                **paired_difference(b, c, n), "n": n}
        if epoch is not None:
            comp["epoch"] = int(epoch)
        comparisons.append(comp)
    apply_holm(comparisons)  # the per-layer table is exploration: its verdicts are Holm-adjusted per control
    return {"controls": block, "comparisons": comparisons}
