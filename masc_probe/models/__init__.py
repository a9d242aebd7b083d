"""Models: model specs → ``nn.Module``. ``_paper`` builds the MASC paper's architectures (mlp, cnn, alexnet,
resnet18-cifar); ``_zoo`` resolves every spec (paper names, ``timm/<name>``, ``hf-hub:<user>/<repo>``, run and
checkpoint folders); ``_transformers`` recognizes, loads and saves Hugging Face ``transformers`` image classifiers;
``_logits`` is the one rule that reads class scores out of any model's output. It loads safetensors only from a hub,
and saves models with the run's metadata in ``config.json``. Nothing here knows of probes, data or training.
"""

from __future__ import annotations

from masc_probe.models._paper import PaperModel
from masc_probe.models._logits import model_logits
from masc_probe.models._transformers import is_architecture_folder, is_transformers_model
from masc_probe.models._zoo import (
    PAPER_MODELS,
    load_model,
    model_spec,
    paper_layers,
    read_config,
    save_model,
)

__all__ = ["PAPER_MODELS", "PaperModel", "is_architecture_folder", "is_transformers_model", "load_model",
           "model_logits", "model_spec", "paper_layers", "read_config", "save_model"]
