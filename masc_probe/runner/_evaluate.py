"""ProbeRunner.evaluate: one pass over the test batches, every probe and the model's own logits scored in it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

import numpy as np
import torch
from torch import nn

from masc_probe import __version__
from masc_probe._choices import TENSOR_PROBES
from masc_probe.errors import InputError
from masc_probe.models import model_spec
from masc_probe.report import ProbeReport
from masc_probe.runner import _distributed as dist
from masc_probe.runner._cache import Reducer, RowCache, split_batch
from masc_probe.runner._config import RunnerConfig
from masc_probe.runner._fit import FitResult
from masc_probe.runner._forward import Forward, batches, model_device, release_free_memory, sync


def predict_rows(probe: str, est: Any, rows: torch.Tensor) -> torch.Tensor:
    """The predicted labels of *est* (a fitted *probe*) for rows (B, D), as a CPU int64 tensor."""
    pred = est.predict(rows if probe in TENSOR_PROBES else rows.detach().cpu().numpy())
    if isinstance(pred, torch.Tensor):
        return pred.detach().to("cpu", torch.int64)
    return torch.as_tensor(np.asarray(pred), dtype=torch.int64)


def evaluate_pass(config: RunnerConfig, reducer: Reducer, fitted: FitResult, model: nn.Module, test: Iterable[Any],
                  *, shard: bool) -> dict[str, Any]:
    """Counts of correct predictions per probe and for the model, summed over processes (one all-reduce).

    Probes held in memory score each batch as it passes. Probes the store keeps on disk are read once each after
    the pass and score the rows of their layer, cached on disk during the pass.
    """
    world = dist.world()
    device = config.device or model_device(model)
    store = fitted.store
    keys = list(store)
    spilled = set(getattr(store, "spilled", []))
    live = {k: store[k] for k in keys if k not in spilled}
    cache = RowCache.temporary(config.cache_dir) if spilled else None
    cached_layers = sorted({k[0] for k in spilled})
    labels: list[torch.Tensor] = []
    correct = torch.zeros(len(keys) + 3, dtype=torch.int64)  # probes..., model correct, model scored, n
    timings = fitted.timings
    try:
        with Forward(model, list(config.layers or []), reducer, device, want_logits=True,
                     train_mode=config.protocol == "authors") as forward:
            for b, batch in enumerate(batches(test, world=world, shard=shard, progress=config.progress,
                                              desc="evaluate")):
                if b % 16 == 15:
                    release_free_memory()  # see release_free_memory: scoring churns 1-32 MB blocks
                x, sets = split_batch(batch)
                y = sets.get("true", sets.get("label"))
                t = sync(device)
                rows, logits = forward(x)
                t2 = sync(device)
                for i, key in enumerate(keys):
                    if key in live:
                        correct[i] += int((predict_rows(key[1], live[key], rows[key[0]]) == y).sum())
                if logits is not None and logits.ndim == 2:
                    correct[-3] += int((logits.argmax(dim=1).cpu() == y).sum())
                    correct[-2] += len(y)
                correct[-1] += len(y)
                if cache is not None:
                    for layer in cached_layers:
                        cache.append(layer, rows[layer])
                    labels.append(y)
                t3 = sync(device)
                timings["evaluate_forward"] = timings.get("evaluate_forward", 0.0) + t2 - t
                timings["predict"] = timings.get("predict", 0.0) + t3 - t2
        if cache is not None and labels:
            t = sync(device)
            cache.finish()
            y_all = torch.cat(labels)
            for i, key in enumerate(keys):
                if key not in spilled:
                    continue
                est, start = store[key], 0
                for chunk in cache.chunks(key[0], max(1, (128 * 1024**2) // (4 * cache.dims[key[0]]))):
                    pred = predict_rows(key[1], est, torch.from_numpy(chunk).to(device))
                    correct[i] += int((pred == y_all[start:start + len(chunk)]).sum())
                    start += len(chunk)
                del est
                release_free_memory()
            timings["predict"] = timings.get("predict", 0.0) + sync(device) - t
    finally:
        if cache is not None:
            cache.cleanup()
    total = dist.all_reduce_sum(world, {"counts": correct})["counts"]
    n = int(total[-1])
    if n == 0:
        raise InputError("evaluate needs at least one test batch, got none")
    return {"n": n, "correct": {key: int(total[i]) for i, key in enumerate(keys)},
            "model_accuracy": int(total[-3]) / int(total[-2]) if int(total[-2]) == n else None}


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
                 corruption: Mapping[str, Any] | None, extra: Mapping[str, Any] | None) -> ProbeReport:
    """The report of one evaluation."""
    n = counts["n"]
    results = []
    for key in fitted.store:
        layer, probe, labels = key
        res: dict[str, Any] = {"layer": layer, "probe": probe, "labels": labels,
                               "test_accuracy": counts["correct"][key] / n}
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
    solvers = {s for (_, p, _), s in fitted.solvers.items() if p == "masc"}
    provenance = {"masc_probe": __version__, "torch": torch.__version__, "timm": _version("timm"),
                  "data_fingerprint": fitted.data_fingerprint,
                  "solver": solvers.pop() if len(solvers) == 1 else ("mixed" if solvers else None)}
    more = {"layers": list(config.layers or []), "probes": list(config.probes), "label_sets": fitted.label_sets,
            "num_classes": len(fitted.classes), "masc_n_components": config.n_components,
            "reducer": reducer.spec, "memory_plan": fitted.plan.to_dict(), "protocol": config.protocol,
            **dict(extra or {})}
    if fitted.failed:
        more["failed"] = fitted.failed
    return ProbeReport(results, model=model_name, dataset=dataset, corruption=corruption, provenance=provenance,
                       model_test_accuracy=counts["model_accuracy"], n_test=n, n_train=fitted.n_train, extra=more)
