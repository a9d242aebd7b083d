"""One eval-mode torch.fx trace of a model, the names of every value it can be tapped at, and the taps themselves.

Private to :mod:`masc_probe.layers`. The names are torchvision's FX node names (the ones
``torchvision.models.feature_extraction.get_graph_node_names`` and timm's wrapper of it return, with timm's leaf
modules and functions when timm is loaded) plus the names of modules that run once per forward.

The extraction graph is built here rather than by ``create_feature_extractor``, with the same tracer, because that
function traces the model a second time in train mode (never used here, and a source of spurious failures), matches a
module name to the *last node traced inside it* rather than to the value the module returns, and offers no place to
copy a value before a later in-place operation overwrites it. Here every tapped value is copied by a node inserted
right after the point it is read at, and the graph ends at the last copy: nothing after it can change a copied value.
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import fx, nn
from torchvision.models.feature_extraction import NodePathTracer


logger = logging.getLogger("masc_probe.layers")

INPUT = "input"
"""The special layer name of the model's input tensor."""


@dataclass(frozen=True)
class Tap:
    """Where one layer name is read.

    ``node`` is the FX node whose value is taken and ``after`` the node right after which it is copied (the same node
    for an FX node name; a module's last node for a module name, so that in-place work inside the module is seen).
    ``module`` is the module path when the name is a module that runs once; a tap with a module and no node is read
    by a forward hook. A tap with neither is the model input. ``select`` is the path into a value that is a tuple,
    list, dict or ``ModelOutput`` (``lstm[0]``: ``(0,)``), applied after the value is read.
    """

    node: fx.Node | None = None
    after: fx.Node | None = None
    module: str | None = None
    select: tuple[int | str, ...] = ()

    @property
    def is_input(self) -> bool:
        return self.node is None and self.module is None


@dataclass
class _Call:
    """One call of a module during tracing: its first input, the value it returned, the last node traced by then,
    and, when it returned a tuple, list or dict of values, each element's key and node."""

    input: fx.Node | None
    output: fx.Node | None
    last: fx.Node | None
    elements: tuple[tuple[int | str, fx.Node], ...] = ()


@dataclass
class LayerIndex:
    """Everything a model's layer names resolve to.

    Attributes:
        taps: Every accepted name, in forward order (``"input"`` first), mapped to its tap.
        refused: Names that exist but cannot be tapped, mapped to the one-line reason.
        graph_module: The traced graph (eval mode), or ``None`` when the model cannot be traced.
        trace_error: Why tracing failed, when it did.
        calls: Module path to its calls during tracing.
        output: The node the model returns, when it returns one tensor.
    """

    taps: dict[str, Tap]
    refused: dict[str, str] = field(default_factory=dict)
    graph_module: fx.GraphModule | None = None
    trace_error: str | None = None
    calls: dict[str, list[_Call]] = field(default_factory=dict)
    output: fx.Node | None = None

    @property
    def names(self) -> list[str]:
        return list(self.taps)

    def name_of(self, node: fx.Node) -> str | None:
        """The preferred name of *node*'s value: the outermost module returning it, else its node name."""
        exact = [n for n, t in self.taps.items() if t.node is node and t.after is node]
        modules = [n for n in exact if self.taps[n].module == n]
        if modules:
            return min(modules, key=lambda n: n.count("."))
        return exact[0] if exact else None


class _Tracer(NodePathTracer):
    """torchvision's node-naming tracer that also records each module call (leaf or not) in order."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: dict[str, list[_Call]] = {}
        self.events: list[fx.Node | str] = []  # nodes as created, module paths as their calls return
        self._last: fx.Node | None = None

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        path = self.path_of_module(m)
        out = super().call_module(m, forward, args, kwargs)
        first = args[0] if args else next(iter(kwargs.values()), None)
        items = (out.items() if isinstance(out, dict) else enumerate(out) if isinstance(out, (tuple, list)) else ())
        self.calls.setdefault(path, []).append(
            _Call(
                input=first.node if isinstance(first, fx.Proxy) else None,
                output=out.node if isinstance(out, fx.Proxy) else None,
                last=self._last,
                elements=tuple((k, v.node) for k, v in items if isinstance(v, fx.Proxy)),
            )
        )
        self.events.append(path)
        return out

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, name: Any = None, type_expr: Any = None,
                     *rest: Any) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest)
        self._last = proxy.node
        self.events.append(proxy.node)
        return proxy


def _tracer_kwargs() -> dict[str, Any]:
    """torchvision's defaults (its ops are leaves) plus timm's registered leaf modules and functions."""
    import torchvision

    leaves = [c for _, c in inspect.getmembers(torchvision.ops, inspect.isclass) if issubclass(c, nn.Module)]
    functions: list[Any] = []
    # A timm model can only exist once timm is imported; importing it for other models would cost seconds.
    if "timm" in sys.modules:
        from timm.layers import get_notrace_functions, get_notrace_modules

        leaves += get_notrace_modules()
        functions += get_notrace_functions()
    return {"leaf_modules": leaves, "autowrap_modules": (math, torchvision.ops), "autowrap_functions": functions}


@dataclass
class _Names:
    """Builds the ordered name → tap map; the first tap given for a name stays, except that the model's own layer
    called ``input`` replaces the special one."""

    taps: dict[str, Tap] = field(default_factory=lambda: {INPUT: Tap()})

    def add(self, name: str, tap: Tap) -> None:
        if name not in self.taps or (name == INPUT and self.taps[INPUT].is_input):
            self.taps[name] = tap


# The trace of each model, reused while the model holds the same modules: one pipeline run builds several taps of a
# model (checking the layer names, the fit pass, the evaluate pass, the output node) and traced it for each, five
# times in all. Keyed weakly: the cache never keeps a model alive.
_TRACES: weakref.WeakKeyDictionary[nn.Module, tuple[list[tuple[str, nn.Module]], bool, LayerIndex]] = (
    weakref.WeakKeyDictionary())


def trace(model: nn.Module) -> LayerIndex:
    """Trace *model* once in eval mode and name its values; fall back to module names when FX cannot trace it.

    A model is traced once and its trace reused while its module tree is the same (the same module objects under
    the same names); each call gets its own copy of the graph (:func:`build_extractor` rewrites the one it is
    given), built over the model as it is now, so that it reads the parameters and buffers the model holds now.
    """
    modules = [(name, m) for name, m in model.named_modules() if m is not model]  # the model itself: never held
    timm_loaded = "timm" in sys.modules
    cached = _TRACES.get(model)
    if cached is not None and cached[1] == timm_loaded and len(cached[0]) == len(modules) and all(
            a == c and b is d for (a, b), (c, d) in zip(cached[0], modules)):
        return _copy_index(cached[2], model)
    index = _trace(model)
    _TRACES[model] = (modules, timm_loaded, index)
    return _copy_index(index, model)


def _copy_index(index: LayerIndex, model: nn.Module) -> LayerIndex:
    """*index* with a fresh graph module over *model*; its taps, calls and output point into the new graph."""
    if index.graph_module is None:
        return index
    graph, remap = fx.Graph(), {}
    graph.output(graph.graph_copy(index.graph_module.graph, remap))
    gm = fx.GraphModule(model, graph, type(model).__name__)

    def node(n: fx.Node | None) -> fx.Node | None:
        return None if n is None else remap[n]

    return replace(index, graph_module=gm, output=node(index.output),
                   taps={k: replace(t, node=node(t.node), after=node(t.after)) for k, t in index.taps.items()},
                   calls={k: [_Call(node(c.input), node(c.output), node(c.last),
                                    tuple((key, remap[n]) for key, n in c.elements)) for c in v]
                          for k, v in index.calls.items()})


def _trace(model: nn.Module) -> LayerIndex:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        tracer = _Tracer(**_tracer_kwargs())
        graph = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # FX fails in many ways (TraceError, TypeError, NameError, ...) on untraceable code
        logger.debug("torch.fx cannot trace %s (%s: %s); layers are module names, tapped by hooks",
                     type(model).__name__, type(exc).__name__, exc)
        return _hook_index(model, f"{type(exc).__name__}: {exc}")
    finally:
        for module, training in flags:
            module.training = training
    return _fx_index(model, gm, tracer)


def _hook_index(model: nn.Module, error: str) -> LayerIndex:
    names = _Names()
    for path, _ in model.named_modules():
        if path:
            names.add(path, Tap(module=path))
    return LayerIndex(taps=names.taps, trace_error=error)


def _fx_index(model: nn.Module, gm: fx.GraphModule, tracer: _Tracer) -> LayerIndex:
    calls = tracer.calls
    reused = {path for path, c in calls.items() if len(c) > 1}
    modules = dict(model.named_modules())
    taken = set(tracer.node_to_qualname.values()) | set(modules)
    leaves = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    names = _Names()
    node_names: dict[fx.Node, str] = {}
    aliases: dict[fx.Node, str] = {}  # the name an element of a node's value is spelled after (`lstm` → `lstm[0]`)
    for event in tracer.events:
        if isinstance(event, fx.Node):
            if event.op in ("placeholder", "get_attr") or event not in tracer.node_to_qualname:
                continue
            name = tracer.node_to_qualname[event]
            if name in reused:
                # torchvision names a reused module's first call after the module itself; the bare name would be
                # ambiguous, so that call is `name_0` beside torchvision's `name_1`, `name_2`, ...
                if f"{name}_0" in taken:
                    logger.debug("node %s of reused module has no free name", name)
                    continue
                name = f"{name}_0"
            once = event.op == "call_module" and event.target not in reused
            names.add(name, Tap(node=event, after=event, module=event.target if once else None))
            node_names[event] = name
            part = _element_of(event)
            if part is not None and part[0] in aliases:  # `lstm[0]`: an element of a named tuple/list/dict value
                aliases[event] = f"{aliases[part[0]]}[{part[1]}]"
                names.add(aliases[event], Tap(node=event, after=event))
            elif event.op == "call_module":
                aliases[event] = name
        elif event not in reused:
            call = calls[event][0]
            if call.output is not None:
                names.add(event, Tap(node=call.output, after=call.last, module=event))
                aliases[call.output] = event
            for key, element in call.elements:  # a module that returns a tuple, list or dict of values
                names.add(f"{event}[{key}]", Tap(node=element, after=call.last))
            if event in leaves:
                # Modules inside a leaf module are not traced through; a forward hook reads them.
                for sub, _ in modules[event].named_modules(prefix=event):
                    if sub != event:
                        names.add(sub, Tap(module=sub))
    index = LayerIndex(taps=names.taps, graph_module=gm, calls=calls)
    for path in modules:
        if not path or path in index.taps:
            continue
        if path in reused:
            per_call = [node_names.get(c.output, "?") if c.output is not None else "?" for c in calls[path]]
            index.refused[path] = (f"module {path!r} runs {len(per_call)} times per forward; tap one call by its "
                                   f"node name: {', '.join(per_call)}")
        elif path in calls:
            parts = [n for n in index.taps if n.startswith(f"{path}[")]
            index.refused[path] = (f"module {path!r} does not return a single tensor; tap one of its elements "
                                   f"({', '.join(parts[:4])}) or nodes instead" if parts else
                                   f"module {path!r} does not return a single tensor; tap one of its nodes instead")
        elif any(path.startswith(leaf + ".") for leaf in reused & leaves):
            index.refused[path] = f"module {path!r} runs inside a module that runs several times per forward"
        else:
            index.refused[path] = f"module {path!r} does not run in the model's forward (traced in eval mode)"
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    if outputs and isinstance(outputs[0].args[0], fx.Node):
        index.output = outputs[0].args[0]
    return index


def _element_of(node: fx.Node) -> tuple[fx.Node, int | str] | None:
    """``(container node, key)`` when *node* is ``container[key]`` with a constant int or str key."""
    if node.op == "call_function" and node.target is operator.getitem and len(node.args) == 2:
        base, key = node.args
        if isinstance(base, fx.Node) and isinstance(key, (int, str)) and not isinstance(key, bool):
            return base, key
    return None


def snapshot(value: Any) -> Any:
    """Copy a tensor (or each tensor of a tuple, list or dict) so that later in-place operations of the model cannot
    change it. A dict (a ``ModelOutput`` too) becomes a plain dict of its items, in order."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(snapshot(v) for v in value) if type(value) in (tuple, list) else [
            snapshot(v) for v in value]
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    return value


def build_extractor(gm: fx.GraphModule, taps: dict[str, tuple[fx.Node, fx.Node]], *, whole: bool) -> fx.GraphModule:
    """Rewrite *gm* in place to return ``{key: copy of node's value taken right after after_node}``.

    Args:
        gm: A graph module from :func:`trace`, used by no one else.
        taps: Key to ``(node, after_node)``.
        whole: Keep the whole graph (forward hooks inside it must fire); otherwise the graph ends at the last copy.

    Returns:
        gm, recompiled.
    """
    graph = gm.graph
    for node in [n for n in graph.nodes if n.op == "output"]:
        graph.erase_node(node)
    copies: dict[tuple[fx.Node, fx.Node], fx.Node] = {}
    outputs: dict[str, fx.Node] = {}
    for key, (node, after) in taps.items():
        if (node, after) not in copies:
            with graph.inserting_after(after):
                copies[(node, after)] = graph.call_function(snapshot, (node,))
        outputs[key] = copies[(node, after)]
    if not whole and outputs:
        kept = set(outputs.values())
        for node in reversed(list(graph.nodes)):
            if node in kept:
                break
            graph.erase_node(node)
    graph.output(outputs)
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm


def iter_children(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Top-level children, descending through wrappers with a single child (``self.net = nn.Sequential(...)``)."""
    prefix, root = "", model
    children = list(root.named_children())
    while len(children) == 1:
        name, root = children[0]
        prefix = f"{prefix}{name}."
        children = list(root.named_children())
    for name, child in children:
        yield prefix + name, child
