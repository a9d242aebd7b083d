"""Fitted probes as arrays + JSON (safetensors, never pickle): freezing, saving and loading ProbeRunner's probes.

A statistic probe is *frozen* after it is solved: only what its predictions read is kept (MASC's stacked basis,
NCM's class means, VeLPIC's vectors) and its statistics (scatter matrices, spilled rows, eigendecompositions) are
released. A frozen MASC predicts exactly as before (the same float32 basis in the same layout), but cannot score
another ``n_components``: that needs the statistics, so refit (or use the probe directly) for a threshold sweep.

scikit-learn's LDA and QDA are saved as the arrays and numbers ``fit`` set on them; kNN as its training rows and
labels (it has no other state), refitted on load. Anything else is refused with a clear error.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from masc_probe.errors import InputError

if TYPE_CHECKING:
    from masc_probe.runner import ProbeRunner

FORMAT = "masc-probe/probe-runner"
FORMAT_VERSION = 1
_TENSOR_PROBES = ("masc", "ncm", "velpic", "linear")


def takes_tensors(probe: str) -> bool:
    """Whether the probe takes torch tensors (ours) rather than numpy arrays (scikit-learn's)."""
    return probe in _TENSOR_PROBES


class _FrozenSubspace:
    """Stands in for MASC's per-class subspace: the fitted basis only (a view into the stacked basis)."""

    def __init__(self, basis: torch.Tensor) -> None:
        self._basis = basis

    def basis(self, k: int) -> torch.Tensor:
        return self._basis[:, :k]

    def k_for(self, n_components: float | int) -> int:
        raise InputError("a frozen (runner-fitted or loaded) MASC keeps only its fitted components; "
                         f"fit a MinimumAngleSubspaceClassifier to score n_components={n_components!r}")


class _FrozenSolution:
    """What MASC's scoring reads: the stacked (d, Σk) basis, the column-to-class map, per-class views and k_c."""

    def __init__(self, stacked: torch.Tensor, ks: list[int], solvers: list[str]) -> None:
        self.ks = np.asarray(ks, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(self.ks)])
        self.subspaces = [_FrozenSubspace(stacked[:, a:b]) for a, b in zip(starts[:-1], starts[1:])]
        self.solvers = solvers
        segment = torch.repeat_interleave(torch.arange(len(ks), device=stacked.device),
                                          torch.from_numpy(self.ks).to(stacked.device))
        self.stacked = (stacked, segment)  # the same (d, Σk) layout MASC's own solution scores with

    def stack(self, ks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        raise InputError("a frozen MASC scores only its fitted n_components")


def _statistic_shell(probe: str, params: dict[str, Any], classes: np.ndarray, d: int, device: torch.device) -> Any:
    """An unfitted statistic probe made to look fitted: empty statistics of the right classes and width."""
    from masc_probe.probes import PROBES
    from masc_probe.probes._stats import ClassStats

    est = PROBES[probe](**params)
    est.n_features_in_ = d
    est._stats = ClassStats(d, second_moment=False, solver="auto", max_memory=1, device=device, classes=classes)
    est.classes_ = est._stats.classes
    return est


def export_state(probe: str, est: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The arrays and JSON metadata that rebuild *est*'s predictions exactly.

    Raises:
        InputError: If the probe's state cannot be written without pickle.
    """
    meta: dict[str, Any] = {"probe": probe, "class": type(est).__name__}
    classes = np.asarray(est.classes_)
    if classes.dtype.kind not in "iub":
        raise InputError(f"saving probes needs integer class labels, got {classes.dtype} labels")
    arrays: dict[str, torch.Tensor] = {"classes": torch.from_numpy(classes.astype(np.int64))}
    if probe == "masc":
        comps = est.components_
        arrays["components"] = torch.from_numpy(np.concatenate(comps, axis=0)) if comps else torch.zeros(0, 0)
        meta.update(n_features=int(est.n_features_in_), ks=[int(c.shape[0]) for c in comps],
                    solvers=list(est._solved().solvers),
                    params={"n_components": est.n_components, "solver": est.solver, "max_memory": est.max_memory})
    elif probe in ("ncm", "velpic"):
        arrays["vectors"] = torch.from_numpy(est.centroids_ if probe == "ncm" else est.coef_)
        meta.update(n_features=int(est.n_features_in_),
                    params={} if probe == "ncm" else {"solver": est.solver, "max_memory": est.max_memory})
    elif probe == "linear":
        arrays["weight"], arrays["bias"] = torch.from_numpy(est.coef_), torch.from_numpy(est.intercept_)
        params = est.get_params()
        params.pop("device", None)
        meta.update(n_features=int(est.n_features_in_), params=_json_params(params, probe))
    elif probe == "knn":
        arrays["fit_X"] = torch.from_numpy(np.ascontiguousarray(est._fit_X, dtype=np.float32))
        arrays["y"] = torch.from_numpy(classes[est._y].astype(np.int64))
        meta["params"] = _json_params(est.get_params(), probe)
    elif probe in ("lda", "qda"):
        params = est.get_params()
        meta["params"] = _json_params(params, probe)
        numbers: dict[str, Any] = {}
        for name, value in vars(est).items():
            if name in params or name == "classes_":
                continue
            if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
                arrays[f"attr.{name}"] = torch.from_numpy(np.ascontiguousarray(value))
            elif isinstance(value, list) and all(isinstance(v, np.ndarray) for v in value):
                for i, v in enumerate(value):
                    arrays[f"list.{name}.{i}"] = torch.from_numpy(np.ascontiguousarray(v))
                numbers[name] = {"list_of_arrays": len(value)}
            elif value is None or isinstance(value, (bool, int, float, str, np.integer, np.floating)):
                numbers[name] = value.item() if isinstance(value, (np.integer, np.floating)) else value
            else:
                raise InputError(f"cannot save {type(est).__name__}.{name} ({type(value).__name__}) without "
                                 "pickle; leave this probe out of a runner you save")
        meta["attributes"] = numbers
    else:
        raise InputError(f"cannot save a {probe!r} probe without pickle; leave it out of a runner you save")
    return {k: v.contiguous() for k, v in arrays.items()}, meta


def _json_params(params: dict[str, Any], probe: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(params))
    except TypeError:
        raise InputError(f"cannot save the {probe!r} probe's parameters as JSON, got {params}") from None


def import_state(arrays: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device) -> Any:
    """Rebuild a predicting probe from :func:`export_state` output, on *device*."""
    from masc_probe.probes import PROBES

    probe = meta["probe"]
    classes = arrays["classes"].numpy()
    params = dict(meta.get("params", {}))
    if probe == "masc":
        est = _statistic_shell(probe, {**params, "device": device}, classes, meta["n_features"], device)
        rows = arrays["components"]
        if rows.numel() == 0:
            rows = torch.zeros(0, meta["n_features"])
        # One (d, Σk) copy, contiguous as MASC's own stacked basis, and nothing else kept.
        stacked = rows.to(device).T.contiguous()
        est._solution = _FrozenSolution(stacked, meta["ks"], meta["solvers"])
        return est
    if probe in ("ncm", "velpic"):
        est = _statistic_shell(probe, {**params, "device": device}, classes, meta["n_features"], device)
        est._solution = arrays["vectors"].to(device)
        return est
    if probe == "linear":
        est = PROBES[probe](**params, device=device)
        weight = arrays["weight"]
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], device=device)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(arrays["bias"])
        est._layer = layer.requires_grad_(False).eval()
        est.classes_, est.n_features_in_ = classes, int(weight.shape[1])
        return est
    est = PROBES[probe](**params)
    if probe == "knn":
        return est.fit(arrays["fit_X"].numpy(), arrays["y"].numpy())
    est.classes_ = classes
    for name, value in meta.get("attributes", {}).items():
        if isinstance(value, dict) and "list_of_arrays" in value:
            setattr(est, name, [arrays[f"list.{name}.{i}"].numpy() for i in range(value["list_of_arrays"])])
        else:
            setattr(est, name, value)
    for key, tensor in arrays.items():
        if key.startswith("attr."):
            setattr(est, key[5:], tensor.numpy())
    return est


def freeze(probe: str, est: Any, device: torch.device) -> Any:
    """A solved statistic probe in its compact predicting form (statistics released); other probes as they are.

    The frozen probe shares the solved arrays (MASC's stacked basis, the class means or vectors): nothing is
    copied, so freezing never needs more memory than solving did.
    """
    if probe not in ("masc", "ncm", "velpic"):
        return est
    params = {k: v for k, v in est.get_params().items() if k != "device"}
    solution = est._solved()
    classes = np.asarray(est.classes_)
    shell = _statistic_shell(probe, {**params, "device": device}, classes, int(est.n_features_in_), device)
    if probe == "masc":
        stacked = solution.stacked[0].to(device)
        shell._solution = _FrozenSolution(stacked, [int(k) for k in solution.ks], list(solution.solvers))
    else:
        shell._solution = solution.to(device)
    return shell


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_tensors(path: Path, arrays: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in arrays.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))


def _write(prefix: Path, arrays: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    _write_tensors(prefix.with_suffix(".safetensors"), arrays)
    _write_json(prefix.with_suffix(".json"), meta)


def _read(prefix: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    return load_file(prefix.with_suffix(".safetensors")), json.loads(prefix.with_suffix(".json").read_text())


def save_estimator(prefix: Path, probe: str, est: Any) -> None:
    """One probe to ``prefix.safetensors`` + ``prefix.json``."""
    _write(prefix, *export_state(probe, est))


def load_estimator(prefix: Path, device: torch.device) -> Any:
    return import_state(*_read(prefix), device)


def save_runner(runner: ProbeRunner, directory: Path) -> Path:
    """See :meth:`ProbeRunner.save`."""
    from masc_probe import __version__

    entries = []
    for i, key in enumerate(runner.estimators_):
        # One file per probe: saving never holds more than one probe's arrays (a spilled one is read back here).
        est_arrays, meta = export_state(key[1], runner.estimators_[key])
        _write_tensors(directory / "probes" / f"e{i:04d}.safetensors", est_arrays)
        del est_arrays
        entries.append({"layer": key[0], "probe": key[1], "labels": key[2], "file": f"probes/e{i:04d}.safetensors",
                        **meta})
    projections = {layer: [int(p.shape[0]), int(p.shape[1]), float(p.double().sum())]
                   for layer, p in runner.reducer._proj.items()}
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "masc_probe": __version__,
        "layers": runner.layers, "probes": list(runner.probes), "labels": runner.labels,
        "label_sets": runner.label_sets_, "num_classes": len(runner.classes_), "n_components": runner.n_components,
        "reducer": {**runner.reducer.to_config(), "projections": projections}, "seed": runner.seed,
        "max_memory": runner.max_memory,
        "n_train": runner.n_train_, "n_train_scored": runner.n_train_scored_,
        "data_fingerprint": runner.data_fingerprint_, "memory_plan": runner.plan_.to_dict(),
        "train_accuracy": [{"layer": k[0], "probe": k[1], "labels": k[2], "scores": v}
                           for k, v in runner.train_accuracy_.items()],
        "estimators": entries,
    }
    _write_json(directory / "runner.json", config)  # last: a folder with runner.json is complete
    return directory


def load_runner(cls: type[ProbeRunner], directory: Path, model: Any, *, device: Any, progress: bool) -> ProbeRunner:
    """See :meth:`ProbeRunner.load`."""
    from masc_probe._runner_fit import Plan

    path = directory / "runner.json"
    if not path.is_file():
        raise InputError(f"a saved ProbeRunner folder holds runner.json, got {str(directory)!r} without one")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT or config.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"runner.json must be {FORMAT} version <= {FORMAT_VERSION}, got "
                         f"{config.get('format')!r} version {config.get('format_version')!r}")
    reducer = config["reducer"]
    runner = cls(model, config["layers"] if model is not None else None, config["probes"], labels=config["labels"],
                 n_components=config["n_components"], reducer=reducer["spec"], device=device, progress=progress,
                 max_memory=config.get("max_memory"), train_accuracy=config["n_train_scored"] or False,
                 seed=reducer["seed"])
    runner.layers = config["layers"]
    for layer, (d, out_dim, total) in reducer.get("projections", {}).items():
        p = runner.reducer.projection(layer, d)
        if p.shape != (d, out_dim) or not np.isclose(float(p.double().sum()), total, rtol=0, atol=1e-6):
            raise InputError(f"the random projection of layer {layer!r} regenerated differently here (torch "
                             f"{torch.__version__}); save with reducer=None or 'gap' to move across versions")
    from masc_probe._probe_store import ProbeStore

    dev = torch.device(device) if device is not None else torch.device("cpu")
    store = ProbeStore(runner.max_memory // 8, None, dev)
    from safetensors.torch import load_file

    for entry in config["estimators"]:
        path = (directory / entry["file"]).resolve()
        if directory.resolve() not in path.parents:
            raise InputError(f"runner.json must name files inside {str(directory)!r}, got {entry['file']!r}")
        store.put((entry["layer"], entry["probe"], entry["labels"]), import_state(load_file(path), entry, dev))
    runner.estimators_ = store
    runner.classes_ = np.arange(config["num_classes"])
    runner.label_sets_ = config["label_sets"]
    runner.n_train_, runner.n_train_scored_ = config["n_train"], config["n_train_scored"]
    runner.data_fingerprint_ = config["data_fingerprint"]
    runner.train_accuracy_ = {(t["layer"], t["probe"], t["labels"]): t["scores"] for t in config["train_accuracy"]}
    runner.solvers_ = {k: i["solver"] for k in store if "solver" in (i := store.info(k))}
    runner.plan_ = Plan(**{k: config["memory_plan"].get(k, []) for k in ("stream", "deferred", "cached")})
    return runner
