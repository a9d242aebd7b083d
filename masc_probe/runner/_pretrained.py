"""A saved ProbeRunner found, loaded and published: the one path behind ``ProbeRunner.from_pretrained`` (alias
``load``) and ``push_to_hub``.

A saved runner is a folder (``runner.json`` + safetensors, see :mod:`._persist`): one written by ``save_pretrained``,
a run folder's ``probes/``, a repo copy's ``masc/probes/``, or a Hub repo, where it lies under ``masc/probes/`` (a run
pushed with its probes, or :func:`push_runner`). :func:`download_runner` fetches only ``runner.json`` and the
safetensors files it names, from one commit; :func:`push_runner` uploads them in one commit.

Example::

    runner = load_runner(ProbeRunner, "me/mlp-digits", model, revision=None, token=None, cache_dir=None,
                         subfolder=None, device=None, progress=False)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masc_probe._version import __version__
from masc_probe._choices import HUB_PREFIX
from masc_probe._hub import check_repo_id, commit_files, hub_errors
from masc_probe.errors import InputError, UnknownNameError
from masc_probe.runner._cache import Reducer
from masc_probe.runner._checks import WidthCheck, check_projections, entry_path
from masc_probe.runner._config import RunnerConfig
from masc_probe.runner._keys import INPUT
from masc_probe.runner._fit import FitResult
from masc_probe.runner._forward import model_device
from masc_probe.runner._persist import SETTINGS, load_fitted, read_settings, runner_arguments, save_runner

__all__ = ["HUB_FOLDER", "download_runner", "find_runner", "load_runner", "push_fitted", "push_runner",
           "runner_files"]

HUB_FOLDER = "masc/probes"  # where a repo keeps a fitted runner (a run pushed with --with-probes, or push_runner)


def load_runner(cls: type[Any], repo_or_dir: str | os.PathLike[str], model: nn.Module | None, *,
                revision: str | None, token: str | None, cache_dir: str | os.PathLike[str] | None,
                subfolder: str | None, device: str | torch.device | None, progress: bool) -> Any:
    """See :meth:`ProbeRunner.from_pretrained`: *cls* rebuilt from the saved settings, its probes loaded onto
    *device* (None: the model's device, the CPU without a model; where a fitted runner keeps its probes).

    Raises:
        InputError, UnknownNameError, HubError: As :meth:`ProbeRunner.from_pretrained`.
    """
    folder = find_runner(repo_or_dir, subfolder=subfolder, revision=revision, token=token, cache_dir=cache_dir)
    saved = read_settings(folder)
    arguments = runner_arguments(saved)
    # Saved probes are the trained network's (and the raw input's): no control model comes back with them.
    arguments["controls"] = tuple(c for c in arguments.get("controls") or () if c == INPUT)
    if model is None:
        arguments["layers"] = None  # not checked against a model; filled in below
    try:
        runner = cls(model, device=device, progress=progress, **arguments)
    except UnknownNameError as exc:
        if model is None:
            raise
        raise UnknownNameError(f"the model must have the layers the probes were fitted on, {saved['layers']}; "
                               f"{exc}") from None
    runner.config = dataclasses.replace(runner.config, layers=tuple(saved["layers"]))
    check_projections(saved, runner.reducer)
    if saved.get("widths"):
        runner.reducer = WidthCheck(runner.reducer, saved["widths"])
    if device is not None:
        target = torch.device(device)
    else:
        target = model_device(model) if model is not None else torch.device("cpu")
    runner._set_fitted(load_fitted(saved, folder, runner.config, target))
    return runner


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
        saved = sum(key[0].control is None for key in fitted.store)
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
