"""VeLPIC weight editing (follow-up paper, arXiv 2603.19865): replace a network's classifier by VeLPIC vectors.

VeLPIC fits one vector per class on the last hidden layer (the input of the final linear layer): the top
eigenvector v_c of the class's uncentered scatter, signed towards the data. Writing the v_c as the rows of the final
linear layer and zeroing its bias makes the network's logits ``x · v_c`` — the network then predicts exactly as the
VeLPIC probe does. Training can continue from the edited network (``masc_probe.training.train``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from masc_probe._choices import FIT_LABELS
from masc_probe.data._batches import make_loader, split_batch
from masc_probe._params import check_choice
from masc_probe.errors import InputError, UnknownNameError, closest
from masc_probe.runner._forward import model_device

logger = logging.getLogger(__name__)

__all__ = ["edit_with_velpic", "final_linear"]


def final_linear(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Linear]:
    """The linear layer that produces the logits: *layer* by module name, else the model's classifier.

    Without a name: a paper model's ``head``, a timm model's ``get_classifier()``, else the last ``nn.Linear``
    defined in the model.

    Raises:
        UnknownNameError: *layer* names no module.
        InputError: The module is not an ``nn.Linear``, or the model has none.
    """
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise UnknownNameError(f"unknown layer {layer!r}; " + closest(layer, linears))
        found = modules[layer]
    elif hasattr(model, "get_classifier"):
        found = model.get_classifier()
    elif isinstance(getattr(model, "head", None), nn.Linear):
        found = model.head
    else:
        linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
        found = linears[-1] if linears else None
    if not isinstance(found, nn.Linear):
        raise InputError(f"expected the final layer to be an nn.Linear, got {type(found).__name__}")
    name = next(n for n, m in modules.items() if m is found)
    return name, found


def edit_with_velpic(
    model: nn.Module,
    train_data: Any,
    *,
    layer: str | None = None,
    labels: Literal["corrupted", "true"] = "corrupted",
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Fit VeLPIC on the input of the final linear layer and write its vectors into that layer (bias zeroed).

    The model is edited in place (and returned): afterwards ``model(x).argmax(1)`` equals
    ``VeLPIC().fit(features, y).predict(features_of_x)`` for the features that reach the final layer.

    Args:
        model: The trained network (left in eval mode).
        train_data: The training data in the contract's batch forms (DataLoader, dataset or iterable of batches).
        layer: Module name of the final linear layer; default the model's classifier (see :func:`final_linear`).
        labels: ``"corrupted"`` fits on the labels the data gives (what a user has); ``"true"`` on the true labels
            (an oracle, for experiments only).
        batch_size: Batch of the feature pass (map-style data only).
        device: Where the features are computed; default the model's device (that of its first parameter or
            buffer; the CPU for a model with neither).

    Returns:
        The same model, edited.

    Raises:
        InputError: The final layer's input is not (B, d), the data lacks true labels for ``labels="true"``, or a
            class has no sample (it would get no vector).
        UnknownNameError: Unknown *layer* or *labels*.
    """
    from masc_probe.probes import VeLPIC

    check_choice("labels", labels, FIT_LABELS)
    name, linear = final_linear(model, layer)
    device = torch.device(device) if device is not None else model_device(model)
    probe = VeLPIC()
    classes = np.arange(linear.out_features)
    loader = make_loader(train_data, batch_size=batch_size, strict=False)[0]
    model.eval()
    seen = np.zeros(linear.out_features, dtype=bool)
    with torch.no_grad(), _linear_inputs(linear) as captured:
        for batch in loader:
            part = split_batch(batch)
            y = part.y if labels == "corrupted" else part.y_true
            if y is None:
                raise InputError("labels='true' needs batches with true labels (true_label or (x, y, y_true))")
            captured.clear()
            model(part.x.to(device))
            features = captured[0]
            if features.ndim != 2:
                raise InputError(f"expected the input of {name!r} to be (B, d), got shape {tuple(features.shape)}")
            probe.partial_fit(features, y.to(features.device), classes=classes)
            seen[np.unique(y.cpu().numpy())] = True
    if not seen.all():
        raise InputError(f"every class needs training samples for a VeLPIC vector; none for {np.flatnonzero(~seen)}")
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(probe.coef_, dtype=linear.weight.dtype, device=linear.weight.device))
        if linear.bias is not None:
            linear.bias.zero_()
    logger.info("wrote VeLPIC vectors (%s labels) into %s", labels, name)
    return model


@contextmanager
def _linear_inputs(linear: nn.Linear) -> Iterator[list[torch.Tensor]]:
    """Collect what each forward feeds *linear* (a pre-hook sees the exact input)."""
    captured: list[torch.Tensor] = []
    handle = linear.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    try:
        yield captured
    finally:
        handle.remove()
