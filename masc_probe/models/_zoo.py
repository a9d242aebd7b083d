"""Model specs → ``nn.Module``: the paper's architectures, timm models, published memorizers and run folders.

A spec is one of

* ``"mlp"``, ``"cnn"``, ``"alexnet"``, ``"resnet18-cifar"`` — the MASC paper's architectures (``models._paper``);
* ``"timm/<name>"`` — ``timm.create_model(name, ...)`` (the prefix is ours; timm's Hub repos are
  ``timm/<arch>.<tag>``);
* ``"hf-hub:<user>/<repo>"`` (optionally ``@<revision>``) — a published checkpoint, safetensors only;
* a ``transformers`` image classifier: an ``hf-hub:`` repo or a folder written by ``save_pretrained`` whose
  ``config.json`` has a ``model_type`` (``models._transformers``: safetensors only, never remote code); a folder
  with such a ``config.json`` and no weights is an architecture, built new when ``num_classes`` is given;
* a local run folder or checkpoint folder (``config.json`` + ``model.safetensors``), or a legacy local ``.pt`` /
  ``.pth`` / ``.bin`` file or folder with a ``config.json`` beside it (read with ``torch.load(weights_only=True)``).

Saved folders hold ``model.safetensors`` and ``config.json`` in the layout of their family — the
``PyTorchModelHubMixin`` layout for paper models, timm's ``save_for_hf`` layout for timm models, ``save_pretrained``'s
for ``transformers`` models — plus a top-level ``"masc_probe"`` key with the run's metadata, so that
``load_model(folder)`` needs no other argument.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from masc_probe import _atomic
from masc_probe._choices import HUB_PREFIX, TIMM_PREFIX
from masc_probe.errors import HubError, InputError, UnknownNameError, closest
from masc_probe.models import _transformers
from masc_probe.models._checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    HubOptions,
    download_checkpoint,
    hub_repo,
    load_file,
    load_folder,
    read_json,
)
from masc_probe.models._paper import PAPER_MODELS, PaperModel

logger = logging.getLogger(__name__)

__all__ = ["PAPER_MODELS", "load_model", "model_spec", "paper_layers", "read_config", "save_model"]

VALID_FORMS = (*PAPER_MODELS, f"{TIMM_PREFIX}<name>", f"{HUB_PREFIX}<user>/<repo>", "<run or checkpoint folder>")


def load_model(
    spec: str | os.PathLike[str],
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    input_size: int | Sequence[int] | None = None,
    pretrained: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> nn.Module:
    """Build or load a model from a spec (see the module docstring for the forms).

    Args:
        spec: A paper architecture name, ``timm/<name>``, ``hf-hub:<user>/<repo>``, or a local folder / file.
        num_classes: Output classes of a new model. For saved models it must match the saved value when given.
        in_chans: Input channels of a new model; same rule.
        input_size: Image size ``H`` / ``(H, W)`` / ``(C, H, W)`` of a new model (the paper's MLP and CNN need it
            for their widths; timm models with a fixed input size get it as ``img_size``).
        pretrained: timm specs only: start from timm's pretrained weights (downloaded as safetensors).
        revision: Hub revision (branch, tag or commit) for ``hf-hub:`` specs and pretrained timm weights.
        token: Hub token for private repos (``hf-hub:`` specs and pretrained timm weights); default: the usual
            huggingface_hub sources (``HF_TOKEN``, ``hf auth login``). Never logged.
        cache_dir: Hub cache folder for the download; default: huggingface_hub's (``HF_HUB_CACHE``).
        local_files_only: Use the Hub cache only, never the network (as ``HF_HUB_OFFLINE=1`` for this call).

    Returns:
        The model, always in eval mode (new, pretrained or loaded); call ``.train()`` to train it.

    Raises:
        UnknownNameError: The spec is none of the valid forms, or names an unknown timm model.
        InputError: A saved model disagrees with ``num_classes`` / ``in_chans``, or a folder has no weights, or a
            ``transformers`` config needs remote code (``auto_map``).
        UnsafeCheckpointError: A Hub repo offers only pickled weights.
        HubError: A Hub repo, revision or file cannot be had.

    >>> load_model("mlp", num_classes=10, in_chans=1, input_size=8).fc1.linear.in_features
    64
    """
    if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec):
        raise InputError(f"expected a model spec string or path, got {spec!r}")
    text = os.fspath(spec)
    hub = HubOptions(token=token, cache_dir=cache_dir, local_files_only=bool(local_files_only))
    if text in PAPER_MODELS:
        if pretrained:
            raise InputError(f"expected pretrained=False for the paper's {text!r} (it has no pretrained weights)")
        return _new_paper_model(text, num_classes=num_classes, in_chans=in_chans, input_size=input_size).eval()
    if text.startswith(TIMM_PREFIX):
        return _new_timm_model(
            text[len(TIMM_PREFIX) :],
            num_classes=num_classes,
            in_chans=in_chans,
            input_size=input_size,
            pretrained=pretrained,
            revision=revision,
            hub=hub,
        ).eval()
    expect = {"num_classes": num_classes, "in_chans": in_chans}
    if text.startswith(HUB_PREFIX):
        folder = download_checkpoint(*hub_repo(text, revision), hub)
        return load_folder(folder, source=text, expect=expect)
    path = Path(text).expanduser()
    if path.is_dir() and num_classes is not None and _transformers.is_architecture_folder(path):
        return _transformers.new_transformers_model(path, source=text, num_classes=num_classes, in_chans=in_chans,
                                                    input_size=input_size).eval()
    if path.is_dir():
        return load_folder(path, source=text, expect=expect)
    if path.is_file():
        return load_file(path, expect=expect)
    raise UnknownNameError(
        f"unknown model spec {text!r}: expected one of {', '.join(VALID_FORMS)}; "
        + closest(text, [*PAPER_MODELS, f"{TIMM_PREFIX}resnet18", HUB_PREFIX])
    )


def save_model(model: nn.Module, directory: str | os.PathLike[str], *, masc_config: Mapping[str, Any]) -> None:
    """Write ``model.safetensors`` and ``config.json`` (with a top-level ``"masc_probe"`` key) into *directory*.

    Each file is replaced atomically; the weights go first and the config last, so a folder whose ``config.json``
    is present always has the weights it describes.

    Args:
        model: A paper model, a timm model or a ``transformers`` model (unwrapped: not DDP, not compiled).
        directory: The folder; created when missing.
        masc_config: The run's metadata (docs/architecture.md: model, num_classes, in_chans, input_size, dataset,
            corruption, preprocessing, training, epoch). ``model``, ``num_classes`` and ``masc_probe_version`` are
            filled in when absent. Values must be JSON-serializable.

    Raises:
        InputError: The model is neither a paper model nor a timm model.
    """
    from masc_probe._version import __version__

    masc = {"model": model_spec(model), "num_classes": _num_classes(model), **dict(masc_config)}
    masc.setdefault("masc_probe_version", __version__)
    directory = Path(directory)
    with _atomic.staging(directory, prefix=".tmp-save-") as tmp:
        if _transformers.is_transformers_model(model):
            _transformers.save_transformers_model(model, tmp, masc)
        elif isinstance(model, PaperModel):
            # The mixin's own layout: __init__ arguments at the top level; its README.md card is not kept here.
            config = {**(model._hub_mixin_config or {}), "masc_probe": masc}
            model.save_pretrained(tmp, config=config)
        else:
            from timm.models import save_for_hf

            save_for_hf(model, tmp, model_config={"masc_probe": masc}, safe_serialization=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            _atomic.publish(tmp / name, directory / name)


def read_config(source: str | os.PathLike[str], *, revision: str | None = None,
                required: bool = True) -> dict[str, Any]:
    """Return the ``"masc_probe"`` section of a run folder's, checkpoint folder's or ``hf-hub:`` repo's config.

    Args:
        source: A folder, or ``hf-hub:<user>/<repo>[@<revision>]``.
        revision: Hub revision, when the spec names none (the same rule as :func:`load_model`).
        required: False returns ``{}`` for a model saved elsewhere (a ``transformers`` or timm checkpoint whose
            ``config.json`` has no ``"masc_probe"`` key) instead of raising.

    Raises:
        InputError: The folder has no ``config.json`` or it has no ``"masc_probe"`` key, or two revisions differ.
        HubError: A Hub repo, revision or file cannot be had.
    """
    text = os.fspath(source)
    if text.startswith(HUB_PREFIX):
        folder = download_checkpoint(*hub_repo(text, revision), HubOptions())
    else:
        folder = Path(text)
    config = read_json(folder / CONFIG_NAME)
    if "masc_probe" not in config and not required:
        return {}
    if "masc_probe" not in config:
        raise InputError(f"expected a 'masc_probe' key in {folder / CONFIG_NAME}, got keys {sorted(config)}")
    return dict(config["masc_probe"])


def model_spec(model: nn.Module) -> str:
    """The spec that rebuilds *model*'s architecture: ``"mlp"`` … for paper models, ``"timm/<arch>"`` for timm,
    ``"transformers/<class>"`` for ``transformers`` models (whose saved ``config.json`` rebuilds them).

    Raises:
        InputError: The model is neither a paper model, a timm model nor a ``transformers`` model.
    """
    if isinstance(model, PaperModel):
        return model.SPEC
    if _transformers.is_transformers_model(model):
        return _transformers.transformers_spec(model)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("architecture"):
        return TIMM_PREFIX + str(cfg["architecture"])
    raise InputError(f"expected a paper model ({', '.join(PAPER_MODELS)}), a timm or a transformers model, "
                     f"got {type(model).__name__}")


def paper_layers(model: nn.Module) -> list[str] | None:
    """The paper's probe points for a paper model (module names whose outputs the paper probes), else ``None``."""
    return list(model.PROBE_LAYERS) if isinstance(model, PaperModel) else None


# ---------------------------------------------------------------------------------------------- building new models
def _new_paper_model(
    name: str, *, num_classes: int | None, in_chans: int | None, input_size: int | Sequence[int] | None
) -> PaperModel:
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = _positive_int(num_classes, "num_classes")
    if input_size is not None:
        size = [input_size] * 2 if isinstance(input_size, int) else [int(s) for s in input_size]
        if len(size) == 3:
            in_chans = in_chans if in_chans is not None else size[0]
            if in_chans != size[0]:
                raise InputError(f"input_size {tuple(size)} has {size[0]} channels but in_chans={in_chans}")
        if len(size) not in (2, 3) or min(size) < 1:
            raise InputError(f"expected input_size H, (H, W) or (C, H, W) of positive ints, got {input_size!r}")
        kwargs["input_size"] = size[-2:]
        if name == "cnn" and min(size[-2:]) < 8:
            raise InputError(f"the paper CNN pools three times and needs inputs of at least 8×8, got {size[-2:]}")
    if in_chans is not None:
        kwargs["in_chans"] = _positive_int(in_chans, "in_chans")
    return PAPER_MODELS[name](**kwargs)


def _new_timm_model(
    name: str,
    *,
    num_classes: int | None,
    in_chans: int | None,
    input_size: int | Sequence[int] | None,
    pretrained: bool,
    revision: str | None,
    hub: HubOptions,
) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, _tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise UnknownNameError(f"unknown timm model {name!r}; " + closest(arch, timm.list_models()))
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = _positive_int(num_classes, "num_classes")
    if in_chans is not None:
        kwargs["in_chans"] = _positive_int(in_chans, "in_chans")
    try:
        pretrained_cfg = get_pretrained_cfg(name)
    except RuntimeError:
        raise UnknownNameError(
            f"unknown pretrained tag in timm model {name!r}; " + closest(name, timm.list_pretrained(f"{arch}.*"))
        ) from None
    if input_size is not None and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        # Transformers fix their patch grid at build time; convnets take any size and would refuse img_size.
        size = [input_size] * 2 if isinstance(input_size, int) else [int(s) for s in input_size]
        kwargs["img_size"] = tuple(size[-2:])
    if not pretrained:
        return timm.create_model(name, **kwargs)
    hub_id = getattr(pretrained_cfg, "hf_hub_id", None)
    if not hub_id:
        raise HubError(f"timm model {name!r} has no Hub weights to start from; use pretrained=False")
    # Our own download keeps the safetensors-only rule; timm then adapts the classifier and stem as usual.
    folder = download_checkpoint(hub_id, revision, hub)
    return timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay={"file": str(folder / WEIGHTS_NAME)}, **kwargs
    )


# ------------------------------------------------------------------------------------------------------- helpers
def _num_classes(model: nn.Module) -> int | None:
    head = getattr(model, "head", None)
    if isinstance(model, PaperModel) and isinstance(head, nn.Linear):
        return head.out_features
    if _transformers.is_transformers_model(model):
        return _transformers.num_labels(model)
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"expected {name} to be a positive int, got {value!r}")
    return value
