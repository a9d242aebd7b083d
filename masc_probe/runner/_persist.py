"""A fitted ProbeRunner on disk: ``runner.json`` (settings, results of the fit, one entry per probe) and
``probes/eNNNN.safetensors`` (each probe's arrays). Nothing is pickled: every probe saves itself (``to_state``).

A statistic probe is kept *frozen* (only what its predictions read: MASC's stacked basis, NCM's class means,
VeLPIC's vectors); a loaded one predicts exactly as the saved one, but a frozen MASC cannot score another
``n_components`` (refit, or use the probe directly, for a threshold sweep). scikit-learn's LDA and QDA are saved as
the arrays and numbers ``fit`` set on them; kNN as its training rows and labels, refitted on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masc_probe import __version__, _atomic
from masc_probe.errors import InputError
from masc_probe.probes import probe_from_state
from masc_probe.runner._cache import Reducer
from masc_probe.runner._config import RunnerConfig
from masc_probe.runner._fit import FitResult
from masc_probe.runner._plan import Plan
from masc_probe.runner._store import ProbeStore, probe_state, write_tensors

FORMAT = "masc-probe/probe-runner"
FORMAT_VERSION = 1


def save_runner(config: RunnerConfig, reducer: Reducer, fitted: FitResult, directory: Path) -> Path:
    """See :meth:`ProbeRunner.save`."""
    entries = []
    for i, key in enumerate(fitted.store):
        # One file per probe: saving never holds more than one probe's arrays (a spilled one is read back here).
        arrays, meta = probe_state(key[1], fitted.store[key])
        write_tensors(directory / "probes" / f"e{i:04d}.safetensors", arrays)
        del arrays
        entries.append({"layer": key[0], "probe": key[1], "labels": key[2], "file": f"probes/e{i:04d}.safetensors",
                        **meta})
    projections = {layer: [int(p.shape[0]), int(p.shape[1]), float(p.double().sum())]
                   for layer, p in reducer.projections.items()}
    saved = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "masc_probe": __version__,
        "layers": list(config.layers or []), "probes": list(config.probes), "labels": config.labels,
        "label_sets": fitted.label_sets, "num_classes": len(fitted.classes), "n_components": config.n_components,
        "reducer": {**reducer.to_config(), "projections": projections}, "seed": config.seed,
        "max_memory": config.max_memory, "protocol": config.protocol,
        "n_train": fitted.n_train, "n_train_scored": fitted.n_train_scored,
        "data_fingerprint": fitted.data_fingerprint, "data": fitted.data, "memory_plan": fitted.plan.to_dict(),
        "train_accuracy": [{"layer": k[0], "probe": k[1], "labels": k[2], "scores": v}
                           for k, v in fitted.train_accuracy.items()],
        "estimators": entries,
    }
    # Last: a folder with runner.json is complete.
    _atomic.write_text(directory / "runner.json", json.dumps(saved, indent=1) + "\n")
    return directory


def read_settings(directory: Path) -> dict[str, Any]:
    """The saved ``runner.json``, checked to be one this version reads.

    Raises:
        InputError: If the folder holds no saved runner, or a newer format.
    """
    path = directory / "runner.json"
    if not path.is_file():
        raise InputError(f"a saved ProbeRunner folder holds runner.json, got {str(directory)!r} without one")
    saved = json.loads(path.read_text())
    if saved.get("format") != FORMAT or saved.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"runner.json must be {FORMAT} version <= {FORMAT_VERSION}, got "
                         f"{saved.get('format')!r} version {saved.get('format_version')!r}")
    return saved


def runner_arguments(saved: dict[str, Any]) -> dict[str, Any]:
    """The ProbeRunner keyword arguments (beyond model, device and progress) that rebuild the saved settings."""
    return {"layers": saved["layers"], "probes": saved["probes"], "labels": saved["labels"],
            "n_components": saved["n_components"], "reducer": saved["reducer"]["spec"],
            "max_memory": saved.get("max_memory"), "train_accuracy": saved["n_train_scored"] or False,
            "seed": saved["reducer"]["seed"], "protocol": saved.get("protocol", "clean")}


def check_projections(saved: dict[str, Any], reducer: Reducer) -> None:
    """Refuse a random reducer whose projections regenerate differently here than where they were saved.

    Raises:
        InputError: A projection of another shape or sum.
    """
    for layer, (d, out_dim, total) in saved["reducer"].get("projections", {}).items():
        p = reducer.projection(layer, d)
        if p.shape != (d, out_dim) or not np.isclose(float(p.double().sum()), total, rtol=0, atol=1e-6):
            raise InputError(f"the random projection of layer {layer!r} regenerated differently here (torch "
                             f"{torch.__version__}); save with reducer=None or 'gap' to move across versions")


def load_fitted(saved: dict[str, Any], directory: Path, config: RunnerConfig, device: torch.device) -> FitResult:
    """The fitted probes and the fit's results, read back from *directory* onto *device*.

    Raises:
        InputError: If ``runner.json`` names a file outside *directory*.
    """
    from safetensors.torch import load_file

    store = ProbeStore(config.max_memory // 8, None, device)
    for entry in saved["estimators"]:
        path = (directory / entry["file"]).resolve()
        if directory.resolve() not in path.parents:
            raise InputError(f"runner.json must name files inside {str(directory)!r}, got {entry['file']!r}")
        store.put((entry["layer"], entry["probe"], entry["labels"]), probe_from_state(load_file(path), entry, device))
    plan = Plan(**{k: saved["memory_plan"].get(k, []) for k in ("stream", "deferred", "cached")})
    return FitResult(store=store, classes=np.arange(saved["num_classes"]), label_sets=saved["label_sets"],
                     train_accuracy={(t["layer"], t["probe"], t["labels"]): t["scores"]
                                     for t in saved["train_accuracy"]},
                     n_train=saved["n_train"], n_train_scored=saved["n_train_scored"],
                     data_fingerprint=saved["data_fingerprint"], plan=plan, data=dict(saved.get("data") or {}))
