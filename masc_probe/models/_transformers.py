"""Hugging Face ``transformers`` image classifiers: recognize their folders, load them safely, save them.

Optional: ``pip install 'masc-probe[transformers]'``. A folder (or ``hf-hub:`` snapshot) is a ``transformers`` one when
its ``config.json`` has a ``model_type`` and no timm ``architecture`` key; it is built with
``AutoModelForImageClassification`` from ``model.safetensors`` only, and never with remote code: a config that maps
its classes to code in the repo (``auto_map``) is refused before anything is imported from it.

A folder with a ``transformers`` ``config.json`` and no weights is an *architecture*: ``load_model(folder,
num_classes=...)`` builds a new model from it (what ``masc-probe train --model <folder>`` trains).

Nothing here imports ``transformers`` until a ``transformers`` model or folder is actually met, so that the rest of
the package works without it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from masc_probe.errors import InputError, MascProbeError

logger = logging.getLogger(__name__)

__all__ = ["TRANSFORMERS_PREFIX", "is_architecture_folder", "is_transformers_config", "is_transformers_model",
           "load_transformers_folder", "new_transformers_model", "save_transformers_model", "transformers_spec"]

TRANSFORMERS_PREFIX = "transformers/"  # model_spec of a transformers model: "transformers/<architecture class>"
_INSTALL_HINT = "pip install 'masc-probe[transformers]'"


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise MascProbeError(f"expected the optional 'transformers' package for this model, found none; "
                             f"{_INSTALL_HINT}") from None
    return transformers


def is_transformers_config(config: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` is a ``transformers`` one (``model_type``; timm's has ``architecture`` instead)."""
    return isinstance(config.get("model_type"), str) and "architecture" not in config


def is_transformers_model(model: nn.Module) -> bool:
    """Whether *model* is a ``transformers.PreTrainedModel`` (without importing transformers when it is not loaded)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def transformers_spec(model: nn.Module) -> str:
    """``"transformers/<class name>"``: what reports and run folders record; the folder's config rebuilds it."""
    return TRANSFORMERS_PREFIX + type(model).__name__


def num_labels(model: nn.Module) -> int | None:
    value = getattr(getattr(model, "config", None), "num_labels", None)
    return int(value) if isinstance(value, int) else None


def is_architecture_folder(folder: Path) -> bool:
    """Whether *folder* holds a ``transformers`` ``config.json`` and no weights: an architecture to build and train."""
    import json

    path = folder / "config.json"
    if not path.is_file() or any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")):
        return False
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and is_transformers_config(config)


def new_transformers_model(folder: Path, *, source: str, num_classes: int, in_chans: int | None,
                           input_size: int | tuple[int, ...] | list[int] | None) -> nn.Module:
    """A new, randomly initialized ``AutoModelForImageClassification`` from *folder*'s ``config.json``, with its
    classes, channels and image size set to the data's.

    Raises:
        InputError: The config needs remote code or is not an image-classification architecture.
    """
    import json

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    _refuse_remote_code(config, source)
    transformers = _import_transformers()
    cfg = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    cfg.num_labels = int(num_classes)
    cfg.id2label = {i: f"LABEL_{i}" for i in range(int(num_classes))}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    if in_chans is not None and hasattr(cfg, "num_channels"):
        cfg.num_channels = int(in_chans)
    if input_size is not None and hasattr(cfg, "image_size"):
        size = [input_size] if isinstance(input_size, int) else list(input_size)
        cfg.image_size = int(size[-1]) if len(size) < 2 or size[-1] == size[-2] else [int(s) for s in size[-2:]]
    try:
        return transformers.AutoModelForImageClassification.from_config(cfg, trust_remote_code=False)
    except ValueError as err:
        raise InputError(f"expected an image-classification architecture in {source}, got: {err}"
                         .splitlines()[0]) from None


def _refuse_remote_code(config: Mapping[str, Any], source: str) -> None:
    if config.get("auto_map"):
        raise InputError(f"{source} needs remote code (config.json has auto_map {sorted(config['auto_map'])}); "
                         f"expected a model transformers builds itself, and trust_remote_code is never used")


def load_transformers_folder(folder: Path, config: Mapping[str, Any], *, source: str,
                             expect: Mapping[str, int | None]) -> nn.Module:
    """Build ``AutoModelForImageClassification`` from *folder*'s ``config.json`` and ``model.safetensors``.

    Args:
        folder: A folder written by ``save_pretrained`` (or a Hub snapshot of one).
        config: Its parsed ``config.json``.
        source: How the user named it, for messages.
        expect: ``num_classes`` / ``in_chans`` the caller asked for (None: anything).

    Raises:
        InputError: The config needs remote code, is not an image classifier, disagrees with *expect*, or the
            folder has no ``model.safetensors`` or weights that do not fit.
    """
    _refuse_remote_code(config, source)
    if not (folder / "model.safetensors").is_file():
        found = sorted(p.name for p in folder.iterdir() if p.is_file())
        raise InputError(f"expected model.safetensors in transformers folder {source}, got files {found[:6]}")
    have = {"num_classes": len(config.get("id2label") or {}) or config.get("num_labels"),
            "in_chans": config.get("num_channels")}
    for key, want in expect.items():
        if want is not None and have.get(key) is not None and int(want) != int(have[key]):
            raise InputError(f"{source} was saved with {key}={have[key]}, but {key}={want} was asked for")
    transformers = _import_transformers()
    try:
        with _no_bars():
            model, info = transformers.AutoModelForImageClassification.from_pretrained(
                str(folder), use_safetensors=True, trust_remote_code=False, output_loading_info=True)
    except ValueError as err:  # an architecture without an image-classification head
        raise InputError(f"expected an image classifier in {source}, got: {err}".splitlines()[0]) from None
    bad = [*info.get("missing_keys", []), *info.get("mismatched_keys", [])]
    if bad:
        raise InputError(f"weights of {source} do not fit its config: missing or mismatched "
                         f"{sorted(map(str, bad))[:3]}")
    return model.eval()


def save_transformers_model(model: nn.Module, directory: Path, masc: Mapping[str, Any]) -> None:
    """``save_pretrained`` (safetensors) into *directory*, with the run's metadata as ``config.json``'s
    ``"masc_probe"`` key (transformers keeps unknown config keys as attributes and writes them back)."""
    import json

    with _no_bars():
        model.save_pretrained(str(directory), safe_serialization=True)
    path = directory / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["masc_probe"] = dict(masc)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _no_bars() -> Iterator[None]:
    """transformers' own progress bars off ("Loading weights", "Writing model shards": local files, instant)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()
