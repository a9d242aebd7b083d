"""A layer's value when it is not one tensor: tuples, lists, dicts and ``ModelOutput``s, and the rule that picks a tensor.

Private to :mod:`masc_probe.layers`. A layer name may end in one or more selectors, ``lstm[0]``, ``block[1][0]``,
``encoder[last_hidden_state]``: an index into a tuple or list, or a key of a dict or ``ModelOutput``. A layer named
without a selector whose value is such a container gives its *first tensor of shape (B, ...)*, searched depth-first
in order (a dict's, a ``ModelOutput``'s, in key order); the tap records the selector it took
(:attr:`masc_probe.layers.FeatureTap.picked`), so that the rule is visible, never silent.

>>> split_name("lstm[0]")
('lstm', (0,))
>>> first_batched(((torch.zeros(3), torch.ones(2, 5)), torch.zeros(2)), batch=2)[0]
(0, 1)
"""

from __future__ import annotations

import re
from typing import Any

import torch

from masc_probe.errors import InputError

_SELECTOR = re.compile(r"\[([^\[\]]+)\]$")


def split_name(name: str) -> tuple[str, tuple[int | str, ...]]:
    """``(base name, selectors)`` of a layer name; ``("x", ())`` for a name without selectors.

    >>> split_name("block[1][out]")
    ('block', (1, 'out'))
    """
    keys: list[int | str] = []
    base = name
    while (match := _SELECTOR.search(base)) is not None and match.start() > 0:
        text = match.group(1).strip().strip("'\"")
        keys.insert(0, int(text) if re.fullmatch(r"-?\d+", text) else text)
        base = base[:match.start()]
    return base, tuple(keys)


def spell(base: str, keys: tuple[int | str, ...]) -> str:
    """The layer name of *keys* inside *base*'s value (the inverse of :func:`split_name`)."""
    return base + "".join(f"[{k}]" for k in keys)


def select(value: Any, keys: tuple[int | str, ...], name: str) -> Any:
    """``value[k1][k2]…`` through tuples, lists, dicts and ``ModelOutput``s.

    Raises:
        InputError: A key the value does not hold, or a value that is not a container (one line, naming both).
    """
    for i, key in enumerate(keys):
        where = spell(split_name(name)[0], keys[:i])
        if isinstance(value, dict):
            if isinstance(key, int) and key not in value:
                items = list(value.values())
                if -len(items) <= key < len(items):
                    value = items[key]
                    continue
            if key not in value:
                raise InputError(f"layer {where!r} gives a dict with keys {list(value)[:8]}, not the key {key!r}")
            value = value[key]
        elif isinstance(value, (tuple, list)):
            if not isinstance(key, int) or not -len(value) <= key < len(value):
                raise InputError(f"layer {where!r} gives a {type(value).__name__} of {len(value)}, so "
                                 f"[{key}] does not exist")
            value = value[key]
        else:
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise InputError(f"layer {where!r} gives {got}, which has no element [{key}]")
    return value


def is_container(value: Any) -> bool:
    return isinstance(value, (tuple, list, dict))


def first_batched(value: Any, *, batch: int) -> tuple[tuple[int | str, ...], torch.Tensor] | None:
    """The path to and the first tensor of shape (batch, ...) in *value*, depth-first in order; None when none is."""
    if isinstance(value, torch.Tensor):
        return ((), value) if value.dim() > 0 and value.shape[0] == batch else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (tuple, list)) else ()
    for key, item in items:
        found = first_batched(item, batch=batch)
        if found is not None:
            return (key, *found[0]), found[1]
    return None


def describe(value: Any) -> str:
    """A short account of a value for a message: ``tensor (2, 3)``, ``tuple of 2``, ``dict with keys [...]``."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a {type(value).__name__} with keys {list(value)[:5]}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def stack(parts: list[Any]) -> Any:
    """Join per-sample values along the batch axis, through tuples, lists and dicts (a value that is not a batched
    tensor is kept from the first sample; the tap's shape check then refuses it)."""
    head = parts[0]
    if all(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 1 for v in parts):
        return torch.cat(parts)
    if isinstance(head, dict) and all(isinstance(p, dict) and p.keys() == head.keys() for p in parts):
        return {key: stack([p[key] for p in parts]) for key in head}
    if type(head) in (tuple, list) and all(type(p) is type(head) and len(p) == len(head) for p in parts):
        return type(head)(stack([p[i] for p in parts]) for i in range(len(head)))
    return head
