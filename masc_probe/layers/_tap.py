"""Naming and tapping the layers of any ``nn.Module``: torch.fx graph nodes first, forward hooks where FX cannot go.

A *layer name* is one of:

* a torch.fx node name, as torchvision's and timm's ``get_graph_node_names`` give them for the model traced in eval
  mode (``layer1.0.add``, ``flatten``); these are canonical;
* the name of a module (``named_modules``) that runs exactly once per forward (``layer1``, ``global_pool``): its
  value is what the module returns;
* ``"input"``: the model's input (unless the model has its own layer called ``input``, which is then meant).

A module that runs several times per forward has one FX node per call and is refused by its bare name, with the
list of those nodes. torchvision names the first call after the module itself (``layer1.0.relu``, then
``layer1.0.relu_1``); that first call is spelled ``layer1.0.relu_0`` here, so that every name means one value.

When FX cannot trace a model (Python control flow on tensor values), every module name is accepted and read by a
forward hook, which checks at each call that the module ran exactly once.

>>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 2))
>>> list_layers(model)
['input', '0', '1', '2', '3']
>>> with FeatureTap(model, ["1", "2"]) as tap:
...     {name: tuple(value.shape) for name, value in tap(torch.ones(5, 2, 2)).items()}
{'1': (5, 3), '2': (5, 3)}
"""

from __future__ import annotations

import logging
from dataclasses import replace
from types import TracebackType
from typing import Any, Literal

import torch
from torch import fx, nn

from masc_probe.layers._defaults import PASS_THROUGH, _default_layers
from masc_probe.layers._hooks import HookTaps
from masc_probe.layers._trace import INPUT, LayerIndex, Tap, build_extractor, trace
from masc_probe.layers._values import describe, first_batched, is_container, select, spell, split_name, stack
from masc_probe._params import check_choice
from masc_probe.errors import InputError, UnknownNameError, closest

__all__ = ["FeatureTap", "default_layers", "list_layers"]

logger = logging.getLogger(__name__)



def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    return model


def list_layers(model: nn.Module, *, nodes: bool = True) -> list[str]:
    """Every layer name :class:`FeatureTap` (and ``ProbeRunner(layers=...)``) accepts for *model*, in forward order.

    The model is traced once with torch.fx in eval mode; its training flags are left as they were.

    Args:
        model: Any module; timm models are traced with timm's leaf modules.
        nodes: Also list the FX nodes that are not modules (``getattr``, ``getitem``, functional calls, …: most of
            the names of a transformer). False lists what a person usually types: ``"input"`` and the modules
            that run once per forward, leaving out those that only pass their input on (``Identity``, dropout).

    Returns:
        ``"input"``, then FX node names and the names of modules that run once per forward, in the order their
        values are computed (a module right after its last node), without duplicates. When FX cannot trace the
        model: ``"input"`` and every module name, in definition order.

    Raises:
        InputError: *model* is not an ``nn.Module``.

    >>> list_layers(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    ['input', '0', '1']
    """
    index = trace(_check_model(model))
    if nodes:
        return index.names
    modules = dict(model.named_modules())
    return [name for name, tap in index.taps.items()
            if name == INPUT or (tap.module == name and not isinstance(modules.get(name), PASS_THROUGH))]


def default_layers(model: nn.Module) -> list[str]:
    """The layers probed when none are named.

    * A model that declares its probe points in a ``PROBE_LAYERS`` attribute (as masc_probe's paper models do):
      those.
    * A timm model: its ``feature_info`` stages, then the pooled features (the value fed to the classifier,
      e.g. ``global_pool``). The input is left out: at ImageNet sizes it is larger than every stage.
    * A ``transformers`` model: ``"input"``, then every member of its longest list of same-class modules (the
      encoder layers, e.g. ``vit.layers.0`` …).
    * Any other model: ``"input"``, then the output of each top-level child in forward order (through wrappers with
      a single child), leaving out pass-through children (``Identity``, dropout) and the child whose output is the
      model's output (the logits, which the model's own accuracy already measures). For an ``nn.Sequential``:
      every child but the last. A child that returns a tuple, list or dict is probed at its first element
      (``lstm[0]``, as :func:`list_layers` lists it); one with no element of shape (B, ...) known (an ``nn.LSTM``
      without ``batch_first``) is left out, and the reason logged. When FX cannot trace the model, the children are taken in definition order and the
      last one is left out as the classifier; a child that does not run exactly once then makes the tap fail, so
      name the layers of such a model explicitly.

    Args:
        model: Any module.

    Returns:
        Layer names, each accepted by :class:`FeatureTap`.

    Raises:
        InputError: *model* is not an ``nn.Module``.

    >>> default_layers(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    ['input', '0', '1']
    """
    return _default_layers(_check_model(model), trace(model))


class FeatureTap:
    """Read the values of named layers of a model in one forward pass.

    The extraction is built once: a torch.fx graph that returns a copy of each value taken right where it is
    computed (so a later in-place operation, such as timm's ``x += shortcut`` and in-place ReLU, cannot change it)
    and stops after the last one; forward hooks that copy module outputs where FX cannot trace. Each call runs the
    model under ``torch.no_grad()`` in the tap's *mode* and then restores every module's own training flag.

    Args:
        model: The model. Its parameters are shared, not copied: a tap sees later weight updates, and rebuilds
            itself when the model has moved to another device or dtype, but does not see later changes to the
            module structure.
        layers: Layer names (see :func:`list_layers`); ``None`` means :func:`default_layers`.
        device: Where inputs are moved before the forward; ``None`` means the device of the model's first
            parameter or buffer (the CPU when it has none). The model itself is never moved.
        method: ``"auto"`` (FX where the model traces, hooks otherwise), ``"fx"`` (fail when the model does not
            trace) or ``"hooks"`` (module names and ``"input"`` only, read by forward hooks).
        mode: ``"eval"`` (every module in eval mode: BatchNorm uses its running statistics, dropout is off) or
            ``"train"``, the MASC authors' extraction: every module in train mode and each sample run on its own
            (batch size 1), so that BatchNorm normalizes each sample by its own statistics and a value does not
            depend on how samples were batched. The model's buffers (BatchNorm's running statistics, which a
            train-mode forward updates) are restored after each call, so the tap leaves the model as it found it.
            Dropout is active in this mode; control flow on ``self.training`` in traced code stays as it was
            traced (in eval mode) — only leaf modules such as BatchNorm and dropout change behaviour.

    Raises:
        UnknownNameError: A layer name is not one of :func:`list_layers`; the message lists the closest.
        InputError: A name is refused (a module that runs several times, or never), repeated, or not available to
            *method*.

    >>> model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(inplace=True))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.fill_(1.0), model[0].bias.zero_()
    >>> with FeatureTap(model, ["0", "1"]) as tap:  # "0" is read before the in-place ReLU overwrites it
    ...     out = tap(torch.tensor([[-2.0]]))
    >>> out["0"].item(), out["1"].item()
    (-2.0, 0.0)
    """

    def __init__(self, model: nn.Module, layers: list[str] | tuple[str, ...] | None = None, *,
                 device: torch.device | str | None = None,
                 method: Literal["auto", "fx", "hooks"] = "auto", mode: Literal["eval", "train"] = "eval") -> None:
        self.model = _check_model(model)
        check_choice("method", method, ("auto", "fx", "hooks"))
        check_choice("mode", mode, ("eval", "train"))
        self.mode = mode
        self.device = torch.device(device) if device is not None else None
        index = trace(model)
        if method == "fx" and index.graph_module is None:
            raise InputError(f"method='fx' needs a model torch.fx can trace; {type(model).__name__} fails: "
                             f"{index.trace_error}")
        if layers is None:
            layers = _default_layers(model, index)
        elif isinstance(layers, str) or not isinstance(layers, (list, tuple)):
            raise InputError(f"layers must be a list of layer names or None, not {type(layers).__name__}")
        self.layers: list[str] = list(layers)
        if not self.layers:
            raise InputError("layers is empty; name at least one layer, or pass None for the default layers")
        self._method = method
        self.picked: dict[str, str] = {}  # a layer whose value is a container → the selector its tensor came from
        self._groups: dict[str, list[tuple[int | str, Tap]]] = {}  # such a traced layer's elements, by key
        self._keyword = _keyword_input(model)
        self._traced = index.graph_module is not None
        self._taps = {name: self._resolve(index, name, method) for name in self.layers}
        self._modules = list(model.modules())
        hooked = [t.module for t in self._taps.values() if t.node is None and t.module is not None]
        self._hooks: HookTaps | None = HookTaps(model, list(dict.fromkeys(hooked))) if hooked else None
        self._keys = {name: f"tap{i}" for i, name in enumerate(n for n, t in self._taps.items() if t.node is not None)}
        self._graph: fx.GraphModule | None = None
        self._build(index)
        self._closed = False

    def _build(self, index: LayerIndex) -> None:
        """Build the FX extraction for the node taps, recording the model's placement it holds references to."""
        nodes = {self._keys[name]: (t.node, t.after) for name, t in self._taps.items() if t.node is not None}
        for name, parts in self._groups.items():
            nodes.update({f"{self._keys[name]}.{i}": (t.node, t.after) for i, (_, t) in enumerate(parts)})
        if nodes and index.graph_module is not None:  # node taps come only from a traced model
            self._graph = build_extractor(index.graph_module, nodes, whole=self._hooks is not None)
        self._placement = _placement(self.model)

    def _rebuild_if_moved(self) -> None:
        # The graph holds the model's modules, which `model.to()` changes in place, but also the tensors the traced
        # code reads directly (e.g. a buffer of a traced-through module), which `model.to()` replaces.
        if self._graph is None or _placement(self.model) == self._placement:
            return
        logger.debug("the model moved to %s since the tap was built; rebuilding it", _placement(self.model))
        index = trace(self.model)
        self._taps = {name: self._resolve(index, name, self._method) for name in self.layers}
        self._build(index)

    def _resolve(self, index: LayerIndex, name: object, method: str) -> Tap:
        if not isinstance(name, str):
            raise InputError(f"layer names must be strings, not {type(name).__name__}: {name!r}")
        if self.layers.count(name) > 1:
            raise InputError(f"layer {name!r} is named {self.layers.count(name)} times; name each layer once")
        tap = index.taps.get(name)
        base, keys = split_name(name)
        if tap is None and keys and index.taps.get(base) is not None:  # `block[0]`: an element of block's value
            tap = replace(index.taps[base], select=index.taps[base].select + keys)
        elements = [n for n in index.taps if n.startswith(f"{name}[") and "][" not in n[len(name):]]
        if tap is None and elements and method != "hooks":
            # A traced module that returns a tuple/list/dict: every element is read, and __call__ applies the rule.
            self._groups[name] = [(split_name(e)[1][-1], index.taps[e]) for e in elements]
            tap = index.taps[elements[0]]
        if tap is None and method == "hooks" and len(index.calls.get(name, ())) == 1:
            tap = Tap(module=name)  # runs once, returns several values: a hook reads them, and the rule applies
        if tap is None and name in index.refused:
            raise InputError(index.refused[name])
        if tap is None:
            raise UnknownNameError(f"unknown layer {name!r} for {type(self.model).__name__}; "
                                   f"{closest(name, index.names)}")
        if method == "hooks" and tap.node is not None:
            if tap.module is None:
                raise InputError(f"layer {name!r} is a torch.fx node, not a module; method='hooks' taps modules only")
            return Tap(module=tap.module, select=tap.select)
        return tap

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on a batch and return each layer's value.

        Args:
            x: A batch, shape (B, ...), the model's only positional input (``transformers`` models get it as
                ``pixel_values=x``).

        Returns:
            Layer name to a detached copy of its value, shape (B, ...), in the order of :attr:`layers`.

        Raises:
            InputError: *x* is not a tensor, the tap is closed, or a layer's value is not a (B, ...) tensor (some FX
                nodes hold shapes or Python numbers), or a hooked module did not run exactly once.
        """
        if self._closed:
            raise InputError("this FeatureTap is closed; make a new one")
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor batch of shape (B, ...), not {type(x).__name__}")
        self._rebuild_if_moved()
        x = x.to(self.device if self.device is not None else _placement(self.model)[0])
        flags = [m.training for m in self._modules]
        train = self.mode == "train"
        saved = [(b, b.detach().clone()) for b in self.model.buffers()] if train else []
        self.model.train(train)
        try:
            with torch.no_grad():
                first = x.detach().clone() if any(t.is_input for t in self._taps.values()) else None
                if train and len(x):  # one sample at a time: train-mode BatchNorm sees that sample's statistics
                    graph_out, hooked = _stack([self._forward(x[i:i + 1]) for i in range(len(x))])
                else:
                    graph_out, hooked = self._forward(x)
        finally:
            for module, training in zip(self._modules, flags):
                module.training = training
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
        result: dict[str, torch.Tensor] = {}
        for name, tap in self._taps.items():
            if name in self._groups:
                value = {k: graph_out[f"{self._keys[name]}.{i}"] for i, (k, _) in enumerate(self._groups[name])}
            elif tap.node is not None:
                value = graph_out[self._keys[name]]
            elif tap.module is not None:
                value = hooked[tap.module]
            else:
                value = first
            result[name] = self._tensor_of(name, select(value, tap.select, name), len(x))
        return result

    def _tensor_of(self, name: str, value: Any, batch: int) -> torch.Tensor:
        """*value* itself when it is a (B, ...) tensor; a container's first (B, ...) tensor, by the recorded rule."""
        if is_container(value):
            found = first_batched(value, batch=batch)
            if found is None:
                raise InputError(f"layer {name!r} gives {describe(value)} holding no tensor of shape (B, ...) with "
                                 f"B={batch}; name another layer")
            if name not in self.picked:
                self.picked[name] = spell(name, found[0])
                logger.info("layer %r gives %s; its first tensor of shape (B, ...), %s, is probed", name,
                            describe(value), self.picked[name])
            value = found[1]
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
            raise InputError(f"layer {name!r} gives {describe(value)}, not a tensor of shape (B, ...) with B={batch}")
        return value

    def _forward(self, x: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
        if self._graph is not None:
            if self._hooks is None:
                return self._graph(x), {}
            with self._hooks.collecting():
                return self._graph(x), self._hooks.values()
        if self._hooks is None:
            # The input alone: a traced model need not run; an untraceable one still does, for the forward hooks
            # others keep on it (the runner reads the model's logits that way).
            if not self._traced:
                self._call_model(x)
            return {}, {}
        with self._hooks.collecting():
            self._call_model(x)
        return {}, self._hooks.values()

    def _call_model(self, x: torch.Tensor) -> Any:
        return self.model(x) if self._keyword is None else self.model(**{self._keyword: x})

    def close(self) -> None:
        """Remove the hooks from the model and drop the graph; the tap cannot be called again."""
        if self._hooks is not None:
            self._hooks.remove()
        self._hooks, self._graph, self._closed = None, None, True

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        how = "fx" if self._graph is not None else "hooks"
        return f"FeatureTap({type(self.model).__name__}, layers={self.layers}, {how})"


def _stack(parts: list[tuple[dict[Any, Any], dict[Any, Any]]]) -> tuple[dict[Any, Any], dict[Any, Any]]:
    """Join per-sample ``(graph values, hooked values)`` along the batch axis (see :func:`_values.stack`)."""
    return tuple({key: stack([p[i][key] for p in parts]) for key in parts[0][i]} for i in (0, 1))  # type: ignore


def _keyword_input(model: nn.Module) -> str | None:
    """The keyword a ``transformers`` model takes its images by (``pixel_values``), else None (positional)."""
    if not type(model).__module__.startswith("transformers."):
        return None
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return "pixel_values" if "pixel_values" in params else None


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    """Device and dtype of the model's first parameter or buffer (the CPU and no dtype when it has none)."""
    for tensors in (model.parameters(), model.buffers()):
        for tensor in tensors:
            return tensor.device, tensor.dtype
    return torch.device("cpu"), None
