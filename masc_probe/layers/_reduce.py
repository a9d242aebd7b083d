"""Reducers: how one layer's activation becomes one row per sample.

* ``"flatten"`` — every value of the activation, as the MASC paper does (the default);
* ``"cls"`` — the first token of a token map ``(B, T, D)``: the class token of a ViT block's output;
* ``"mean"`` — the mean over all T tokens of a token map ``(B, T, D)`` (the class token included);
* ``"gap"`` — global average pooling of a conv map ``(B, C, H, W)`` (every axis after the channel axis); a row
  ``(B, D)`` passes unchanged, a token map is refused (use ``mean``);
* ``"auto"`` — per layer: ``cls`` for the ``(B, T, D)`` output of a transformer block (a member of a repeated block
  list such as timm's ``blocks`` or transformers' ``vit.layers``) in a model with a class token, ``mean`` for such a
  block in a model without one, ``flatten`` for everything else (conv maps, vectors, other token maps).

A reducer that does not fit the layer's shape is a one-line :class:`~masc_probe.errors.InputError` naming the layer,
its shape and what the reducer takes.

>>> reducer = LayerReducer({"blocks.0": "cls"})
>>> tuple(reducer("blocks.0", torch.zeros(2, 5, 3)).shape), reducer.chosen
((2, 3), {'blocks.0': 'cls'})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from masc_probe._choices import REDUCERS
from masc_probe._params import check_choice
from masc_probe.errors import InputError
from masc_probe.layers._trace import INPUT

__all__ = ["REDUCERS", "LayerReducer", "reduce_activation"]

_TAKES = {"cls": "token maps (B, T, D)", "mean": "token maps (B, T, D)",
          "gap": "conv maps (B, C, H, W) or rows (B, D)", "flatten": "any (B, ...) value"}


def reduce_activation(value: torch.Tensor, reducer: str, *, layer: str = "?") -> torch.Tensor:
    """Rows ``(B, D)`` (float32) of one activation under one concrete reducer (not ``"auto"``).

    Raises:
        InputError: The activation's shape does not fit the reducer.
    """
    shape = tuple(value.shape)
    if reducer in ("cls", "mean") and value.dim() != 3:
        raise InputError(f"reducer {reducer!r} takes {_TAKES[reducer]}, but layer {layer!r} gives {shape}; "
                         "use 'flatten'" + (" or 'gap'" if value.dim() == 4 else ""))
    if reducer == "gap" and value.dim() == 3:
        raise InputError(f"reducer 'gap' takes {_TAKES['gap']}, but layer {layer!r} gives {shape} (a token map?); "
                         "use 'mean', 'cls' or 'flatten'")
    if reducer == "cls":
        value = value[:, 0]
    elif reducer == "mean":
        value = value.float().mean(dim=1)
    elif reducer == "gap" and value.dim() > 2:
        value = value.float().mean(dim=tuple(range(2, value.dim())))
    elif reducer != "gap":  # the concrete reducers, "auto" resolved before
        check_choice("reducer", reducer, tuple(_TAKES))
    return value.reshape(shape[0], -1).float()


class LayerReducer:
    """Maps each layer's activation ``(B, ...)`` to rows ``(B, D)``, with one reducer per layer.

    Args:
        spec: ``None`` (``"flatten"`` everywhere, the paper's rule), one of :data:`REDUCERS` for every layer but
            the raw ``"input"`` (always flattened: it is the paper's control), or a mapping layer name → reducer
            (layers it does not name are flattened).
        model: The model the layers belong to; ``"auto"`` reads its structure (block lists, a class token).

    The choice for each layer is made at its first activation (``"auto"`` needs its shape) and kept in
    :attr:`chosen`; :attr:`spec` then reports the per-layer choices, which rebuild the same reducer without the
    model.

    Raises:
        UnknownNameError: A reducer name is not one of :data:`REDUCERS`.
        InputError: *spec* is neither a name nor a mapping of names.
    """

    kind = "layer"
    out_dim = None

    def __init__(self, spec: str | Mapping[str, str] | None = None, *, model: nn.Module | None = None,
                 seed: int = 0) -> None:
        if spec is not None and not isinstance(spec, (str, Mapping)):
            raise InputError(f"reducer must be a name ({', '.join(REDUCERS)}) or a mapping layer -> name, "
                             f"got {type(spec).__name__}")
        names = [spec] if isinstance(spec, str) else list(dict(spec).values()) if spec is not None else []
        for name in names:
            check_choice("reducer", name, REDUCERS, also="or 'random:D' for a seeded projection")
        self._given = spec if not isinstance(spec, Mapping) else dict(spec)
        self.seed = int(seed)
        self.chosen: dict[str, str] = {}
        self._blocks, self._has_cls = _structure(model) if model is not None else (set(), False)

    @property
    def spec(self) -> str | dict[str, str] | None:
        """What the reports record: None for the default flatten, else the per-layer choices made so far (the
        given spec until a layer has been seen)."""
        if self._given is None or self._given == "flatten":
            return None
        return dict(self.chosen) if self.chosen else self._given

    def choice(self, layer: str, value: torch.Tensor) -> str:
        """The concrete reducer of *layer* (resolving ``"auto"`` from *value*'s shape the first time)."""
        if layer in self.chosen:
            return self.chosen[layer]
        if isinstance(self._given, dict):
            given = self._given.get(layer, "flatten")
        else:
            given = "flatten" if layer == INPUT else (self._given or "flatten")
        if given == "auto":
            given = "flatten"
            if value.dim() == 3 and layer in self._blocks:
                given = "cls" if self._has_cls else "mean"
        self.chosen[layer] = given
        return given

    def __call__(self, layer: str, act: torch.Tensor) -> torch.Tensor:
        """Rows of *act*: (B, ...) → (B, D), float32."""
        return reduce_activation(act, self.choice(layer, act), layer=layer)

    @property
    def projections(self) -> dict[str, torch.Tensor]:
        return {}

    def to_config(self) -> dict[str, Any]:
        return {"spec": self.spec, "seed": self.seed}

    def __repr__(self) -> str:
        return f"LayerReducer({self.spec!r})"


def _structure(model: nn.Module) -> tuple[set[str], bool]:
    """(names of transformer blocks — members of a list of ≥ 2 modules of one class —, whether a class token exists)."""
    blocks: set[str] = set()
    has_cls = False
    for path, module in model.named_modules():
        token = getattr(module, "cls_token", None)
        has_cls = has_cls or isinstance(token, torch.Tensor)
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and not issubclass(kinds.pop(), (nn.Linear, nn.Conv2d, nn.Identity)):
                blocks.update(f"{path}.{name}" if path else name for name, _ in module.named_children())
    return blocks, has_cls
