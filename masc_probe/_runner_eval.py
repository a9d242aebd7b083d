"""ProbeRunner.evaluate: one pass over the test batches, every probe and the model's own logits scored in it."""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from masc_probe import _distributed as dist
from masc_probe._feature_cache import RowCache, split_batch
from masc_probe._probe_state import takes_tensors
from masc_probe._runner_pass import Forward, batches, model_device, release_free_memory, sync
from masc_probe.report import ProbeReport

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from masc_probe.runner import ProbeRunner

Key = tuple[str, str, str]


def predict_rows(runner: ProbeRunner, key: Key, rows: torch.Tensor, est: Any = None) -> torch.Tensor:
    """One probe's predicted labels for rows (B, D), as a CPU int64 tensor."""
    est = runner.estimators_[key] if est is None else est
    pred = est.predict(rows if takes_tensors(key[1]) else rows.detach().cpu().numpy())
    if isinstance(pred, torch.Tensor):
        return pred.detach().to("cpu", torch.int64)
    return torch.as_tensor(np.asarray(pred), dtype=torch.int64)


def evaluate_pass(runner: ProbeRunner, model: nn.Module, test: Iterable[Any], *, shard: bool) -> dict[str, Any]:
    """Counts of correct predictions per probe and for the model, summed over processes (one all-reduce).

    Probes held in memory score each batch as it passes. Probes the store keeps on disk are read once each after
    the pass and score the rows of their layer, cached on disk during the pass.
    """
    world = dist.world()
    device = runner.device or model_device(model)
    store = runner.estimators_
    keys = list(store)
    spilled = set(getattr(store, "spilled", []))
    live = {k: store[k] for k in keys if k not in spilled}
    cache = RowCache.temporary(runner.cache_dir) if spilled else None
    cached_layers = sorted({k[0] for k in spilled})
    labels: list[torch.Tensor] = []
    correct = torch.zeros(len(keys) + 3, dtype=torch.int64)  # probes..., model correct, model scored, n
    timings = runner.timings_
    try:
        with Forward(model, runner.layers or [], runner.reducer, device, want_logits=True) as forward:
            for b, batch in enumerate(batches(test, world=world, shard=shard, progress=runner.progress,
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
                        correct[i] += int((predict_rows(runner, key, rows[key[0]], live[key]) == y).sum())
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
                    pred = predict_rows(runner, key, torch.from_numpy(chunk).to(device), est)
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
        from masc_probe.errors import InputError

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
    from masc_probe.errors import InputError
    from masc_probe.models import model_spec

    try:
        return model_spec(model)
    except InputError:
        return type(model).__name__


def build_report(runner: ProbeRunner, counts: dict[str, Any], *, epoch: int | None, model_name: str | None,
                 dataset: str | None, corruption: Mapping[str, Any] | None,
                 extra: Mapping[str, Any] | None) -> ProbeReport:
    """The report of one evaluation."""
    from masc_probe import __version__

    n = counts["n"]
    results = []
    for key in runner.estimators_:
        layer, probe, labels = key
        res: dict[str, Any] = {"layer": layer, "probe": probe, "labels": labels,
                               "test_accuracy": counts["correct"][key] / n}
        if key in runner.train_accuracy_:
            res["train_accuracy"] = dict(runner.train_accuracy_[key])
            res["n_train_scored"] = runner.n_train_scored_
        info = runner.estimators_.info(key) if hasattr(runner.estimators_, "info") else {}
        if "n_components" in info:
            res["n_components"] = info["n_components"]
        if "solver" in info:
            res["solver"] = info["solver"]
        if epoch is not None:
            res["epoch"] = int(epoch)
        results.append(res)
    solvers = {s for (_, p, _), s in runner.solvers_.items() if p == "masc"}
    provenance = {"masc_probe": __version__, "torch": torch.__version__, "timm": _version("timm"),
                  "data_fingerprint": runner.data_fingerprint_,
                  "solver": solvers.pop() if len(solvers) == 1 else ("mixed" if solvers else None)}
    more = {"layers": runner.layers, "probes": list(runner.probes), "label_sets": runner.label_sets_,
            "num_classes": len(runner.classes_), "n_components": runner.n_components,
            "reducer": runner.reducer.spec, "memory_plan": runner.plan_.to_dict(), **dict(extra or {})}
    if runner.failed_:
        more["failed"] = runner.failed_
    return ProbeReport(results, model=model_name or model_name_of(runner.model), dataset=dataset,
                       corruption=corruption, provenance=provenance, model_test_accuracy=counts["model_accuracy"],
                       n_test=n, n_train=runner.n_train_, extra=more)
