"""Data: dataset specs → batches. Hub datasets by name, local files (parquet, image folders, ``save_to_disk``,
MNIST idx) and offline built-ins become Hugging Face datasets with corrupted labels beside the true ones
(``load_data``, ``describe_data``); ``corruption`` corrupts label arrays reproducibly; ``_preprocess`` decodes and
normalizes images; ``_batches`` reads the batch forms every consumer accepts and holds ``TensorBatches``.
Nothing here knows of models or probes. The heavy names load on first use, so that the light parts (corruption,
batch forms) do not import ``datasets``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_data": "masc_probe.data._load",
    "describe_data": "masc_probe.data._load",
    "HUB_NAMES": "masc_probe.data._sources",
    "TensorBatches": "masc_probe.data._batches",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from masc_probe.data._batches import TensorBatches
    from masc_probe.data._load import describe_data, load_data
    from masc_probe.data._sources import HUB_NAMES


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'masc_probe.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
