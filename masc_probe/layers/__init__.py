"""Layers: naming and tapping the layers of any ``nn.Module``. ``_trace`` indexes a model once (torch.fx graph
nodes, module hooks where FX cannot go, keyword-input models); ``_tap`` holds what users call: ``list_layers``,
``default_layers`` and ``FeatureTap``, which returns the values of named layers for a batch; ``_defaults`` holds the
default layers' rules; ``_values`` reads a value that is not one tensor (``lstm[0]``, the first-tensor rule);
``_reduce`` turns each layer's value into rows (flatten, the class token, the mean token, pooled conv maps, or an
automatic choice).
Layers know nothing of probes or data; the runner composes them.
"""

from __future__ import annotations

from masc_probe.layers._reduce import REDUCERS, LayerReducer, reduce_activation
from masc_probe.layers._tap import FeatureTap, default_layers, list_layers

__all__ = ["REDUCERS", "FeatureTap", "LayerReducer", "default_layers", "list_layers", "reduce_activation"]
