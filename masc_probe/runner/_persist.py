"""A fitted ProbeRunner on disk, both ways: ``runner.json`` (settings, results of the fit, one entry per probe)
and ``probes/eNNNN.safetensors`` (each probe's arrays). Nothing is pickled: every probe saves itself (``to_state``).

``runner.json`` holds the whole RunnerConfig (read field by field, so a setting added later is saved too), the class
list, the layer names and each layer's row width. Loading checks all of it at the door, each failure one line: a
newer format or a setting this version does not know, a file missing or outside the folder, arrays that do not fit
their metadata, a model without the saved layers, and (on the first batch) a layer whose rows have another width
(:mod:`._checks`). Where a saved runner is found (a folder or a Hub repo) and how it is published: :mod:`._pretrained`.

Only the trained network's probes are saved (the raw input's among them): a control model's probes describe another
network, and no control model travels with the saved runner, so its settings record at most the ``"input"`` control.

A statistic probe is kept *frozen* (only what its predictions read: MASC's stacked basis, NCM's class means,
VeLPIC's vectors); a loaded one predicts exactly as the saved one, but a frozen MASC cannot score another
``n_components`` (refit, or use the probe directly, for a threshold sweep). scikit-learn's LDA and QDA are saved as
the arrays and numbers ``fit`` set on them; kNN as its training rows and labels, refitted on load.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masc_probe import _atomic
from masc_probe._version import __version__
from masc_probe._hub import one_line
from masc_probe.errors import InputError
from masc_probe.runner._cache import Reducer
from masc_probe.runner._checks import entry_path, rebuilt_probe
from masc_probe.runner._config import RunnerConfig
from masc_probe.runner._keys import INPUT, Key, LayerKey, public_key
from masc_probe.runner._fit import FitResult
from masc_probe.runner._plan import Plan
from masc_probe.runner._store import ProbeStore, probe_state, write_tensors

FORMAT = "masc-probe/probe-runner"
FORMAT_VERSION = 1
SETTINGS = "runner.json"
_RUNTIME = ("device", "cache_dir", "progress")  # where and how a process runs, not what was fitted


def config_record(config: RunnerConfig) -> dict[str, Any]:
    """Every field of *config* but the runtime ones, as JSON values (tuples become lists).

    Raises:
        InputError: A field JSON cannot hold (its value would be lost, so it is not saved at all).
    """
    record = {}
    for f in dataclasses.fields(config):
        if f.name in _RUNTIME:
            continue
        value = _plain(getattr(config, f.name))
        if f.name == "controls":  # no control model travels with saved probes (see the module docstring)
            value = [c for c in value if c == INPUT]
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise InputError(f"RunnerConfig.{f.name} must be a JSON value to be saved, got "
                             f"{type(getattr(config, f.name)).__name__}") from None
        record[f.name] = value
    return record


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (torch.device, os.PathLike)):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def save_runner(config: RunnerConfig, reducer: Reducer, fitted: FitResult, directory: Path) -> Path:
    """See :meth:`ProbeRunner.save`."""
    entries, widths = [], {}
    trained = [key for key in fitted.store if key[0].control is None]
    for i, key in enumerate(trained):
        # One file per probe: saving never holds more than one probe's arrays (a spilled one is read back here).
        est = fitted.store[key]
        layer, probe, labels = public_key(key)
        arrays, meta = probe_state(probe, est)
        widths[layer] = int(est.n_features_in_)
        write_tensors(directory / "probes" / f"e{i:04d}.safetensors", arrays)
        del arrays, est
        entries.append({"layer": layer, "probe": probe, "labels": labels, "file": f"probes/e{i:04d}.safetensors",
                        **meta})
    # Any reducer kind records itself (to_config); a random one also the checksum of each projection it generated.
    projections = {layer: [int(p.shape[0]), int(p.shape[1]), float(p.double().sum())]
                   for layer, p in getattr(reducer, "projections", {}).items()}
    described = reducer.to_config() if hasattr(reducer, "to_config") else {"spec": config.reducer, "seed": config.seed}
    saved = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "masc_probe": __version__,
        "layers": list(config.layers or []), "probes": list(config.probes), "labels": config.labels,
        "label_sets": fitted.label_sets, "num_classes": len(fitted.classes), "n_components": config.n_components,
        "reducer": {**_plain(described), "projections": projections}, "seed": config.seed,
        "max_memory": config.max_memory, "protocol": config.protocol,
        "n_train": fitted.n_train, "n_train_scored": fitted.n_train_scored,
        "data_fingerprint": fitted.data_fingerprint, "data": fitted.data, "memory_plan": fitted.plan.to_dict(),
        "train_accuracy": [{"layer": str(k[0]), "probe": k[1], "labels": k[2], "scores": v}
                           for k, v in fitted.train_accuracy.items() if k[0].control is None],
        "config": config_record(config), "classes": [_plain(c) for c in fitted.classes], "widths": widths,
        "estimators": entries,
    }
    # Last: a folder with runner.json is complete.
    _atomic.write_text(directory / SETTINGS, json.dumps(saved, indent=1) + "\n")
    return directory


def read_settings(directory: Path) -> dict[str, Any]:
    """The saved ``runner.json``, checked to be one this version reads.

    Raises:
        InputError: If the folder holds no runner.json, or one that is not JSON, not this format, of a newer
            version, or without the keys every version has.
    """
    path = directory / SETTINGS
    if not path.is_file():
        raise InputError(f"a saved ProbeRunner folder holds runner.json, got {str(directory)!r} without one")
    try:
        saved = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} must be JSON, got a file that does not parse: {one_line(str(exc))}") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        got = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
        raise InputError(f"{path} must be a {FORMAT} file, got format {got!r}")
    version = saved.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise InputError(f"{path} must be {FORMAT} version 1 to {FORMAT_VERSION} (masc-probe {__version__}), got "
                         f"version {version!r} (saved by masc-probe {saved.get('masc_probe')}); upgrade masc-probe")
    missing = [k for k in ("layers", "probes", "labels", "num_classes", "n_components", "reducer", "label_sets",
                           "n_train", "n_train_scored", "data_fingerprint", "memory_plan", "train_accuracy",
                           "estimators") if k not in saved]
    if missing:
        raise InputError(f"{path} must hold the keys {missing} too, got a file without them")
    return saved


def runner_arguments(saved: dict[str, Any]) -> dict[str, Any]:
    """The ProbeRunner keyword arguments (beyond model, device and progress) that rebuild the saved settings.

    Raises:
        InputError: A setting this version of RunnerConfig does not have (saved by a newer masc-probe: ignoring it
            could change what the probes see).
    """
    record = saved.get("config")
    if record is not None:
        import inspect

        arguments = set(inspect.signature(RunnerConfig.make).parameters) - {"cls"}
        known = arguments | {f.name for f in dataclasses.fields(RunnerConfig)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise InputError(f"runner.json has settings this masc-probe ({__version__}) does not know: {unknown} "
                             f"(saved by masc-probe {saved.get('masc_probe')}); upgrade masc-probe to load it")
        rebuilt = {k: v for k, v in record.items() if k in arguments and k not in _RUNTIME}
        resolved = saved["reducer"].get("spec")
        if isinstance(resolved, dict) and resolved:
            rebuilt["reducer"] = resolved  # the choice made per layer at fit time ("auto" resolved), kept exactly
        return rebuilt
    return {"layers": saved["layers"], "probes": saved["probes"], "labels": saved["labels"],
            "n_components": saved["n_components"], "reducer": saved["reducer"]["spec"],
            "max_memory": saved.get("max_memory"), "train_accuracy": saved["n_train_scored"] or False,
            "seed": saved["reducer"]["seed"], "protocol": saved.get("protocol", "clean")}


def load_fitted(saved: dict[str, Any], directory: Path, config: RunnerConfig, device: torch.device) -> FitResult:
    """The fitted probes and the fit's results, read back from *directory* onto *device*.

    Raises:
        InputError: If ``runner.json`` names a file that is missing, outside *directory* or not safetensors, or a
            probe whose arrays do not fit its metadata, the saved class list or the layer's saved width.
    """
    from safetensors.torch import load_file

    store = ProbeStore(config.max_memory // 8, None, device)
    classes = saved.get("classes", list(range(saved["num_classes"])))
    for entry in saved["estimators"]:
        named = (entry.get("layer"), entry.get("probe"), entry.get("labels"))
        if named[0] not in saved["layers"]:
            raise InputError(f"runner.json's probes must read the saved layers {saved['layers']}, got one on "
                             f"{named[0]!r}")
        path = entry_path(directory, entry)
        try:
            arrays = load_file(path)
        except Exception as exc:  # safetensors raises its own error type for a file that does not parse
            raise InputError(f"{path} must be a safetensors file, got one that does not load: "
                             f"{one_line(str(exc))}") from None
        store.put(_key(entry), rebuilt_probe(named, arrays, entry, device,
                                             width=saved.get("widths", {}).get(named[0]), classes=classes))
    plan = Plan(**{k: [LayerKey.parse(layer) for layer in saved["memory_plan"].get(k, [])]
                   for k in ("stream", "deferred", "cached")})
    return FitResult(store=store, classes=np.asarray(classes), label_sets=saved["label_sets"],
                     train_accuracy={_key(t): t["scores"] for t in saved["train_accuracy"]},
                     n_train=saved["n_train"], n_train_scored=saved["n_train_scored"],
                     data_fingerprint=saved["data_fingerprint"], plan=plan, data=dict(saved.get("data") or {}))


def _key(entry: Mapping[str, Any]) -> Key:
    """The fit's key of a runner.json entry (a probe, or its training accuracy)."""
    return (LayerKey.parse(entry["layer"]), entry["probe"], entry["labels"])
