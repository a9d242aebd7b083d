"""Saved checkpoints → ``nn.Module``: a run or checkpoint folder, a weights file with its ``config.json`` beside it,
or an ``hf-hub:`` repo downloaded to the cache. Weights from a hub are safetensors only (pickled ones are refused,
never downloaded); local legacy files are read with ``torch.load(weights_only=True)``. The architecture comes from
``config.json``: a paper model named under ``masc_probe.model``, timm's ``architecture``, or a ``transformers``
``model_type`` (handed to ``models._transformers``).

Example::

    model = load_folder(Path("runs/mlp/checkpoints/epoch-0100"), source="runs/mlp/...", expect={"num_classes": 10})
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masc_probe._choices import HUB_PREFIX
from masc_probe._hub import check_repo_id, hub_errors
from masc_probe.errors import HubError, InputError, UnsafeCheckpointError
from masc_probe.models import _transformers
from masc_probe.models._paper import PAPER_MODELS

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "HubOptions", "download_checkpoint", "hub_repo", "load_file", "load_folder",
           "read_json"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_LEGACY_WEIGHTS = ("pytorch_model.bin", "model.pt", "model.pth")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def load_folder(folder: Path, *, source: str, expect: Mapping[str, int | None]) -> nn.Module:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        if (folder / "checkpoints").is_dir():
            raise InputError(f"run folder {source} has no final model yet (no {CONFIG_NAME}); finish the run or "
                             f"name one of its checkpoints/epoch-NNNN folders")
        raise InputError(f"expected a {CONFIG_NAME} in model folder {source}, found none")
    config = read_json(config_path)
    if _transformers.is_transformers_config(config):
        return _transformers.load_transformers_folder(folder, config, source=source, expect=expect)
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        state = _safetensors_weights(weights)
    else:
        legacy = next((folder / n for n in _LEGACY_WEIGHTS if (folder / n).is_file()), None)
        if legacy is None:
            raise InputError(f"expected {WEIGHTS_NAME} in model folder {source}, found none")
        state = _torch_load_weights(legacy)
    return _build_and_fill(config, state, source=source, expect=expect)


def load_file(path: Path, *, expect: Mapping[str, int | None]) -> nn.Module:
    config_path = path.parent / CONFIG_NAME
    if not config_path.is_file():
        raise InputError(f"expected a {CONFIG_NAME} beside {path} naming its architecture, found none")
    if path.suffix == ".safetensors":
        state = _safetensors_weights(path)
    elif path.suffix in _PICKLE_SUFFIXES:
        state = _torch_load_weights(path)
    else:
        raise InputError(f"expected a .safetensors, .pt, .pth or .bin weights file, got {path.name}")
    return _build_and_fill(read_json(config_path), state, source=str(path), expect=expect)


def _safetensors_weights(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors; a damaged file (truncated, empty, not safetensors) is an InputError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except SafetensorError as err:
        raise InputError(f"expected a safetensors file at {path}, got one that does not parse: {err}"
                         .splitlines()[0]) from None


def _torch_load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A local legacy file, read with ``weights_only=True`` (tensors and plain containers, no code)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError (or others) for anything beyond plain weights
        raise InputError(f"expected a plain state dict in {path} (weights_only load), got: {err}".splitlines()[0])
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"expected a state dict of tensors in {path}, got {type(obj).__name__}")
    # DataParallel / DDP / torch.compile prefixes are a wrapper's, not the model's.
    prefixes = ("module.", "_orig_mod.")
    return {_strip(k, prefixes): v for k, v in obj.items()}


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _build_and_fill(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, source: str, expect: Mapping[str, int | None]
) -> nn.Module:
    masc = config.get("masc_probe") or {}
    spec = str(masc.get("model", ""))
    if spec in PAPER_MODELS:
        kwargs = {k: config[k] for k in ("num_classes", "in_chans", "input_size") if k in config}
        model: nn.Module = PAPER_MODELS[spec](**kwargs)
    elif "architecture" in config:
        import timm

        # timm's own config layout (save_for_hf): rebuild from its architecture and recorded model_args.
        args = dict(config.get("model_args") or {})
        args["num_classes"] = config.get("num_classes", args.get("num_classes"))
        model = timm.create_model(str(config["architecture"]), pretrained=False, **args)
    else:
        raise InputError(
            f"expected config.json of {source} to name a paper model in 'masc_probe.model' or a timm "
            f"'architecture', got keys {sorted(config)}"
        )
    for key, want in expect.items():
        have = config.get(key, masc.get(key))
        if key == "in_chans" and have is None:
            have = (config.get("model_args") or {}).get("in_chans", 3)
        if want is not None and have is not None and int(want) != int(have):
            raise InputError(f"{source} was saved with {key}={have}, but {key}={want} was asked for")
    try:
        missing, unexpected = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as err:  # shape mismatches
        raise InputError(f"weights of {source} do not fit its config: {err}".splitlines()[0]) from None
    if missing or unexpected:
        raise InputError(
            f"weights of {source} do not fit its config: missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}"
        )
    return model.eval()


@dataclass(frozen=True)
class HubOptions:
    """How load_model reaches the Hub (huggingface_hub's own arguments of the same names)."""

    token: str | bool | None = None
    cache_dir: str | os.PathLike[str] | None = None
    local_files_only: bool = False


def hub_repo(spec: str, revision: str | None) -> tuple[str, str | None]:
    """``(repo_id, revision)`` of an ``hf-hub:<user>/<repo>[@<revision>]`` spec and a ``revision=`` argument."""
    repo_id, _, at_revision = spec[len(HUB_PREFIX) :].partition("@")
    if at_revision and revision and at_revision != revision:
        raise InputError(f"two revisions for {repo_id}: {at_revision!r} in the spec and revision={revision!r}")
    return repo_id, revision or at_revision or None


def download_checkpoint(repo_id: str, revision: str | None, hub: HubOptions) -> Path:
    """Download ``config.json`` and ``model.safetensors`` of a Hub model repo; return the local snapshot folder.

    All Hub downloads of weights go through here, and every Hub call in it through :func:`masc_probe._hub.hub_errors`.
    Pickled weights are refused, never downloaded.

    Raises:
        InputError: *repo_id* is not ``user/name``.
        UnsafeCheckpointError: The repo has no ``model.safetensors`` but has ``.bin``/``.pt``/``.pth`` files.
        HubError: The repo, revision or files cannot be had (including offline mode without a cached copy).
    """
    from huggingface_hub import hf_hub_download, list_repo_files
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    check_repo_id(repo_id)
    token = hub.token if isinstance(hub.token, str) else None  # True/False ask huggingface_hub for the stored one
    options: dict[str, Any] = {"token": hub.token, "cache_dir": hub.cache_dir, "local_files_only": hub.local_files_only}
    with hub_errors(repo_id, revision=revision, token=token, what="download", filename=WEIGHTS_NAME):
        try:
            weights = Path(hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, **options))
        except EntryNotFoundError as err:
            if isinstance(err, LocalEntryNotFoundError):  # not cached, and the Hub not asked: nothing to list
                raise
            pickled = [f for f in list_repo_files(repo_id, revision=revision, token=hub.token)
                       if f.endswith(_PICKLE_SUFFIXES)]
            if pickled:
                raise UnsafeCheckpointError(
                    f"{repo_id}@{revision or 'main'} offers only pickled weights ({', '.join(pickled[:3])}); "
                    f"masc-probe loads {WEIGHTS_NAME} only, never pickles from a hub"
                ) from None
            raise
    # The cache keeps files under snapshots/<commit>/: asking for that commit puts the config beside the weights
    # even if the branch moved in between.
    commit = weights.parent.name if re.fullmatch(r"[0-9a-f]{40}", weights.parent.name) else revision
    with hub_errors(repo_id, revision=revision, token=token, what="download", filename=CONFIG_NAME):
        config = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=commit, **options))
    if config.parent != weights.parent:
        raise HubError(f"expected {CONFIG_NAME} and {WEIGHTS_NAME} of {repo_id}@{revision or 'main'} in one "
                       "snapshot, got two folders")
    return weights.parent


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"expected {path}, found none") from None
    except json.JSONDecodeError as err:
        raise InputError(f"expected JSON in {path}, got a parse error: {err}") from None
    if not isinstance(value, dict):
        raise InputError(f"expected a JSON object in {path}, got {type(value).__name__}")
    return value
