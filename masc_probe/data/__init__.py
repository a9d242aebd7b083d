"""Data: dataset specs → batches. Hub datasets by name, local files (parquet, image folders, ``save_to_disk``,
MNIST idx) and offline built-ins become Hugging Face datasets with corrupted labels beside the true ones
(``load_data``, ``describe_data``); ``corruption`` corrupts label arrays reproducibly; ``_preprocess`` decodes and
normalizes images; ``_batches`` reads the batch forms every consumer accepts and holds ``TensorBatches``.
Nothing here knows of models or probes. The heavy names load on first use, so that the light parts (corruption,
batch forms) do not import ``datasets``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["HUB_NAMES", "TensorBatches", "describe_data", "load_data"]

if TYPE_CHECKING:  # pragma: no cover
    from masc_probe.data._batches import TensorBatches
    from masc_probe.data._load import describe_data, load_data
    from masc_probe.data._sources import HUB_NAMES


def __getattr__(name: str) -> Any:
    # Imported on first use: _load and _sources import `datasets`, _batches imports torch.
    if name in ("load_data", "describe_data"):
        from masc_probe.data import _load as module
    elif name == "HUB_NAMES":
        from masc_probe.data import _sources as module
    elif name == "TensorBatches":
        from masc_probe.data import _batches as module
    else:
        raise AttributeError(f"module 'masc_probe.data' has no attribute {name!r}")
    return getattr(module, name)
