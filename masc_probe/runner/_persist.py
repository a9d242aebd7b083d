"""A fitted ProbeRunner on disk and on the Hub: ``runner.json`` (settings, results of the fit, one entry per probe)
and ``probes/eNNNN.safetensors`` (each probe's arrays). Nothing is pickled: every probe saves itself (``to_state``).

``runner.json`` holds the whole RunnerConfig (read field by field, so a setting added later is saved too), the class
list, the layer names and each layer's row width. Loading checks all of it at the door, each failure one line: a
newer format or a setting this version does not know, a file missing or outside the folder, arrays that do not fit
their metadata, a model without the saved layers, and (on the first batch) a layer whose rows have another width.
On the Hub the folder lies under ``masc/probes/`` (a run pushed with its probes, or :func:`push_runner`);
:func:`download_runner` fetches only ``runner.json`` and the safetensors files it names, from one commit.

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
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masc_probe import _atomic
from masc_probe._version import __version__
from masc_probe._choices import HUB_PREFIX
from masc_probe._hub import check_repo_id, commit_files, hub_errors, one_line
from masc_probe.errors import InputError
from masc_probe.probes import probe_from_state
from masc_probe.runner._cache import Reducer
from masc_probe.runner._config import RunnerConfig
from masc_probe.runner._controls import INPUT, split_key
from masc_probe.runner._fit import FitResult
from masc_probe.runner._plan import Plan
from masc_probe.runner._store import ProbeStore, probe_state, write_tensors

FORMAT = "masc-probe/probe-runner"
FORMAT_VERSION = 1
HUB_FOLDER = "masc/probes"  # where a repo keeps a fitted runner (a run pushed with --with-probes, or push_runner)
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
    trained = [key for key in fitted.store if split_key(key[0])[0] is None]
    for i, key in enumerate(trained):
        # One file per probe: saving never holds more than one probe's arrays (a spilled one is read back here).
        est = fitted.store[key]
        arrays, meta = probe_state(key[1], est)
        widths[key[0]] = int(est.n_features_in_)
        write_tensors(directory / "probes" / f"e{i:04d}.safetensors", arrays)
        del arrays, est
        entries.append({"layer": key[0], "probe": key[1], "labels": key[2], "file": f"probes/e{i:04d}.safetensors",
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
        "train_accuracy": [{"layer": k[0], "probe": k[1], "labels": k[2], "scores": v}
                           for k, v in fitted.train_accuracy.items() if split_key(k[0])[0] is None],
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
        InputError: If ``runner.json`` names a file that is missing, outside *directory* or not safetensors, or a
            probe whose arrays do not fit its metadata, the saved class list or the layer's saved width.
    """
    from safetensors.torch import load_file

    store = ProbeStore(config.max_memory // 8, None, device)
    classes = saved.get("classes", list(range(saved["num_classes"])))
    for entry in saved["estimators"]:
        key = (entry.get("layer"), entry.get("probe"), entry.get("labels"))
        if key[0] not in saved["layers"]:
            raise InputError(f"runner.json's probes must read the saved layers {saved['layers']}, got one on "
                             f"{key[0]!r}")
        path = entry_path(directory, entry)
        try:
            arrays = load_file(path)
        except Exception as exc:  # safetensors raises its own error type for a file that does not parse
            raise InputError(f"{path} must be a safetensors file, got one that does not load: "
                             f"{one_line(str(exc))}") from None
        store.put(key, _rebuilt(key, arrays, entry, device, width=saved.get("widths", {}).get(key[0]),
                                classes=classes))
    plan = Plan(**{k: saved["memory_plan"].get(k, []) for k in ("stream", "deferred", "cached")})
    return FitResult(store=store, classes=np.asarray(classes), label_sets=saved["label_sets"],
                     train_accuracy={(t["layer"], t["probe"], t["labels"]): t["scores"]
                                     for t in saved["train_accuracy"]},
                     n_train=saved["n_train"], n_train_scored=saved["n_train_scored"],
                     data_fingerprint=saved["data_fingerprint"], plan=plan, data=dict(saved.get("data") or {}))


def entry_path(directory: Path, entry: Mapping[str, Any]) -> Path:
    """The safetensors file a ``runner.json`` entry names, checked to lie inside *directory* and to exist.

    Raises:
        InputError: A name outside the folder, not ending in ``.safetensors``, or a file that is missing.
    """
    name = entry.get("file")
    if not isinstance(name, str) or not name.endswith(".safetensors"):
        raise InputError(f"runner.json must name .safetensors files, got {name!r}")
    # A lexical check, not resolve(): the huggingface_hub cache keeps each file as a symlink into its blobs/ folder.
    folder = Path(os.path.normpath(os.path.abspath(directory)))
    path = Path(os.path.normpath(folder / name))
    if folder not in path.parents:
        raise InputError(f"runner.json must name files inside {str(directory)!r}, got {name!r}")
    if not path.is_file():
        raise InputError(f"runner.json names {name}, which is missing in {str(directory)!r}")
    return path


def _rebuilt(key: tuple[str, str, str], arrays: dict[str, torch.Tensor], entry: dict[str, Any], device: torch.device,
             *, width: int | None, classes: Collection[Any]) -> Any:
    """The probe *entry* describes, rebuilt from *arrays* and checked by one prediction on a row of ones."""
    from masc_probe.runner._evaluate import predict_rows

    what = f"the saved probe {key} ({entry.get('file')})"
    try:
        est = probe_from_state(arrays, entry, device)
        d = int(est.n_features_in_)
        predict_rows(key[1], est, torch.ones(1, d, device=device))
    except InputError as exc:
        raise InputError(f"{what} must load as its metadata says, got: {exc}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise InputError(f"{what} must hold arrays that fit its metadata, got {type(exc).__name__}: "
                         f"{one_line(str(exc))}") from None
    if width is not None and d != width:
        raise InputError(f"{what} must read rows of the layer's saved width {width}, got a probe of width {d}")
    extra = [c for c in np.asarray(est.classes_).tolist() if c not in set(classes)]
    if extra:
        raise InputError(f"{what} must predict the saved classes {list(classes)}, got also {extra}")
    return est


class WidthCheck:
    """A runner's reducer that refuses rows of another width than the saved probes of their layer were fitted on.

    A loaded runner wraps its reducer in this, so that a model whose layers carry the saved names but other shapes
    (another architecture, input size or reducer) fails on the first batch with one line naming the layer, not
    deep inside a probe.
    """

    def __init__(self, reducer: Reducer, widths: Mapping[str, int]) -> None:
        self._reducer, self._widths = reducer, dict(widths)

    def __call__(self, layer: str, act: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        rows = self._reducer(layer, act, *args, **kwargs)
        want = self._widths.get(layer)
        if want is not None and rows.shape[-1] != want:
            raise InputError(f"layer {layer!r} must give rows of width {want} (what the saved probes were fitted "
                             f"on), got width {rows.shape[-1]} from activations of shape {tuple(act.shape)}: "
                             "another model or input size")
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reducer, name)


# ---------------------------------------------------------------------------------------------------------- the Hub
def find_runner(repo_or_dir: str | os.PathLike[str], *, subfolder: str | None, revision: str | None,
                token: str | None, cache_dir: str | os.PathLike[str] | None) -> Path:
    """The local folder of a saved runner: *repo_or_dir* itself when it is a folder (see :func:`local_folder`),
    else the download of a Hub repo's ``subfolder`` (default ``masc/probes``; see :func:`download_runner`).

    Raises:
        InputError: A folder without a saved runner, a file, or a string that is neither a folder nor a repo id.
        HubError: As :func:`download_runner`.
    """
    text = os.fspath(repo_or_dir)
    local = Path(text)
    if local.is_dir():
        folder = local_folder(local / subfolder if subfolder else local)
        if folder is None:
            raise InputError(f"expected runner.json in {text!r} (or its probes/ or masc/probes/), got none")
        return folder
    if local.exists():
        raise InputError(f"expected a folder or a Hub repo id, got the file {text!r}")
    repo_id = text.removeprefix(HUB_PREFIX)
    try:
        check_repo_id(repo_id)
    except InputError:
        raise InputError(f"expected a saved runner's folder or a Hub repo id 'user/name', got {text!r}, which is "
                         "neither (no such folder)") from None
    return download_runner(repo_id, subfolder=HUB_FOLDER if subfolder is None else subfolder, revision=revision,
                           token=token, cache_dir=cache_dir)


def push_fitted(config: RunnerConfig, reducer: Reducer, fitted: FitResult, repo_id: str, *, path_in_repo: str,
                title: str | None, private: bool, revision: str | None, token: str | None, create_pr: bool) -> str:
    """See :meth:`ProbeRunner.push_to_hub`: the runner saved in a temporary folder, then :func:`push_runner`."""
    import tempfile

    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="masc-probe-push-") as tmp:
        folder = save_runner(config, reducer, fitted, Path(tmp))
        saved = sum(split_key(key[0])[0] is None for key in fitted.store)
        title = title or f"masc-probe: {saved} fitted probes, {len(config.layers or [])} layers"
        return push_runner(folder, repo_id, path_in_repo=path_in_repo, title=title, private=private,
                           revision=revision, token=token, create_pr=create_pr)


def local_folder(path: Path) -> Path | None:
    """The saved runner in *path*: the folder itself, a run folder's ``probes/``, or a repo copy's ``masc/probes/``."""
    for folder in (path, path / "probes", path / HUB_FOLDER):
        if (folder / SETTINGS).is_file():
            return folder
    return None


def download_runner(repo_id: str, *, subfolder: str = HUB_FOLDER, revision: str | None = None,
                    token: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fetch ``<subfolder>/runner.json`` of *repo_id* and the safetensors files it names (nothing else, all from the
    one commit runner.json came from) into the huggingface_hub cache.

    Returns:
        The local folder holding ``runner.json``.

    Raises:
        InputError: A malformed repo id, or a runner.json naming files outside its folder.
        HubError: A missing repo, revision or file, or a Hub that cannot be reached (one line).
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    check_repo_id(repo_id)
    sub = subfolder.strip("/")
    options: dict[str, Any] = {"token": token, "cache_dir": cache_dir, "library_name": "masc-probe",
                               "library_version": __version__}
    settings = f"{sub}/{SETTINGS}" if sub else SETTINGS
    with hub_errors(repo_id, revision=revision, token=token, what="download", filename=settings):
        path = Path(hf_hub_download(repo_id, settings, revision=revision, **options))
    folder = path.parent
    root = folder.parents[len(Path(sub).parts) - 1] if sub else folder  # snapshots/<commit>
    saved = read_settings(folder)
    names = []
    for entry in saved["estimators"]:
        name = entry.get("file")
        if not isinstance(name, str) or not name.endswith(".safetensors") or ".." in Path(name).parts \
                or Path(name).is_absolute() or any(c in name for c in "*?[]"):
            raise InputError(f"runner.json must name .safetensors files inside its folder, got {name!r}")
        names.append(f"{sub}/{name}" if sub else name)
    if names:
        with hub_errors(repo_id, revision=revision, token=token, what="download", filename=f"{sub}/probes/"):
            snapshot_download(repo_id, revision=root.name, allow_patterns=names, **options)
    for name in names:
        if not (root / name).is_file():
            raise InputError(f"{repo_id} must hold {name}, which its {settings} names; the repo lacks it")
    return folder


def push_runner(folder: Path, repo_id: str, *, path_in_repo: str = HUB_FOLDER, title: str, private: bool = False,
                revision: str | None = None, token: str | None = None, create_pr: bool = False) -> str:
    """Upload a saved runner *folder* (``runner.json`` and the files it names) under *path_in_repo*, in one commit
    that also deletes whatever else lay there.

    Returns:
        The commit URL, or the pull-request URL with *create_pr*.

    Raises:
        InputError: A malformed repo id. HubError: The Hub refuses or fails (one line).
    """
    check_repo_id(repo_id)
    files = runner_files(folder, path_in_repo)
    return commit_files(repo_id, files, replace_under=path_in_repo.strip("/") + "/", title=title,
                        description=f"Fitted probes saved by masc-probe {__version__} (safetensors + JSON).",
                        private=private, revision=revision, token=token, create_pr=create_pr)


def runner_files(folder: Path, path_in_repo: str = HUB_FOLDER) -> dict[str, Path]:
    """``{path in repo: local file}`` of a saved runner: ``runner.json`` and every safetensors file it names.

    Raises:
        InputError: If *folder* holds no saved runner, or one naming a missing file.
    """
    saved = read_settings(folder)
    prefix = path_in_repo.strip("/") + "/" if path_in_repo.strip("/") else ""
    files = {f"{prefix}{SETTINGS}": folder / SETTINGS}
    for entry in saved["estimators"]:
        entry_path(folder, entry)
        files[f"{prefix}{entry['file']}"] = folder / entry["file"]
    return files
