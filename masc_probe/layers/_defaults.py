"""Which layers are probed when none are named (:func:`masc_probe.layers.default_layers`'s rules).

Private to :mod:`masc_probe.layers`: a model's declared probe points, timm's feature stages and pooled features, a
transformers model's encoder blocks, or any other model's top-level children — each child whose value is a tuple,
list or dict probed at its first element (``lstm[0]``), or left out with the reason logged.
"""

from __future__ import annotations

import logging

from torch import nn

from masc_probe.layers._trace import INPUT, LayerIndex, iter_children

logger = logging.getLogger("masc_probe.layers")

# Children that only pass their input on (in eval mode) add no probe point of their own.
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _default_layers(model: nn.Module, index: LayerIndex) -> list[str]:
    declared = getattr(model, "PROBE_LAYERS", None)
    if isinstance(declared, (list, tuple)) and declared:
        valid = [name for name in declared if name in index.taps]
        if len(valid) < len(declared):
            logger.debug("PROBE_LAYERS of %s names unknown layers: %s", type(model).__name__,
                         sorted(set(declared) - set(valid)))
        if valid:
            return list(dict.fromkeys(valid))
    if type(model).__module__.startswith("timm."):
        names = _timm_layers(model, index)
        if names:
            return names
    if type(model).__module__.startswith("transformers."):
        names = _repeated_blocks(model, index)
        if names:
            return [INPUT, *names]
    return _block_layers(model, index)


def _repeated_blocks(model: nn.Module, index: LayerIndex) -> list[str]:
    """The members of the longest list of modules of one class (a transformer's encoder layers), in order."""
    best: list[str] = []
    for path, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > len(best):
            if len({type(child) for child in module}) == 1:
                best = [f"{path}.{name}" if path else name for name, _ in module.named_children()]
    return [name for name in best if name in index.taps]


def _timm_layers(model: nn.Module, index: LayerIndex) -> list[str]:
    info = getattr(model, "feature_info", None)
    if hasattr(info, "get_dicts"):  # a features_only model's FeatureInfo
        info = info.get_dicts()
    stages = [d["module"] for d in info or [] if isinstance(d, dict) and "module" in d]
    names = [s for s in stages if s in index.taps]
    if len(names) < len(stages):
        logger.debug("feature_info modules without a tap: %s", [s for s in stages if s not in index.taps])
    pooled = None
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    path = next((p for p, m in model.named_modules() if m is classifier), None) if classifier is not None else None
    calls = index.calls.get(path or "", [])
    if len(calls) == 1 and calls[0].input is not None:
        pooled = index.name_of(calls[0].input)
    elif index.graph_module is None:  # no graph to follow: timm's usual pooling modules
        pooled = next((n for n in ("global_pool", "head.global_pool") if n in index.taps), None)
    if pooled is not None and pooled not in names and pooled != INPUT:
        names.append(pooled)
    return names


def _block_layers(model: nn.Module, index: LayerIndex) -> list[str]:
    kept = {name: child for name, child in iter_children(model) if not isinstance(child, PASS_THROUGH)}
    names = [INPUT]
    for name, tap in index.taps.items():
        if name in kept and not (tap.node is not None and tap.node is index.output):
            names.append(name)
    if index.graph_module is None:
        # Without a graph, neither forward order nor the output is known: definition order, and the last child is
        # taken for the classifier, as it is by convention.
        defined = [n for n, _ in iter_children(model)][:-1]
        names = [INPUT, *(n for n in defined if n in kept and n in index.taps)]
    else:  # children that return a tuple, list or dict: their first element, or left out with the reason
        names = [INPUT, *(_element_or_none(index, n, kept.get(n)) or "" for n in
                          dict.fromkeys([*names[1:], *(n for n in kept if n in index.refused)]))]
    return list(dict.fromkeys(n for n in names if n))


def _element_or_none(index: LayerIndex, name: str, module: nn.Module | None) -> str | None:
    """*name* itself when its value is one tensor; else its first element that is (B, ...) (``lstm[0]``), or None
    (logged with the reason) when none is known to be."""
    elements = [n for n in index.taps if n.startswith(f"{name}[") and "][" not in n[len(name):]]
    if not elements:
        if name in index.refused:
            logger.info("layer %r is left out of the default layers: %s", name, index.refused[name])
            return None
        return name
    if isinstance(module, nn.RNNBase):  # (output, h_n): output is (B, T, H) only with batch_first; h_n never is
        if module.batch_first and f"{name}[0]" in elements:
            return f"{name}[0]"
        logger.info("layer %r is left out of the default layers: %s gives (T, B, H) and (layers, B, H) tensors "
                    "(batch_first=False), no (B, ...) value; name a layer after it, or build it with batch_first=True",
                    name, type(module).__name__)
        return None
    return elements[0]
