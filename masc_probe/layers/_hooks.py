"""Forward hooks that read module outputs where torch.fx cannot go (an untraceable model, a leaf module's insides).

Private to :mod:`masc_probe.layers`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from masc_probe.errors import InputError
from masc_probe.layers._trace import snapshot


class HookTaps:
    """Forward hooks that copy the outputs of named modules while :meth:`collecting` is active."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        modules = dict(model.named_modules())
        self._values: dict[str, Any] = {}
        self._counts = dict.fromkeys(paths, 0)
        self._active = False
        self._handles = [modules[p].register_forward_hook(partial(self._hook, p)) for p in paths]

    def _hook(self, path: str, module: nn.Module, args: Any, output: Any) -> None:
        if not self._active:
            return
        self._counts[path] += 1
        if self._counts[path] == 1:
            self._values[path] = snapshot(output)

    def collecting(self) -> _Collect:
        return _Collect(self)

    def values(self) -> dict[str, Any]:
        """The value each module returned in the last forward; each module must have run exactly once."""
        for path, count in self._counts.items():
            if count == 0:
                raise InputError(f"module {path!r} did not run in this forward, so it has no value to tap")
            if count > 1:
                raise InputError(f"module {path!r} ran {count} times in this forward; a tap needs a module that runs "
                                 "once (tap a module around it instead)")
        return self._values

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class _Collect:
    def __init__(self, hooks: HookTaps) -> None:
        self._hooks = hooks

    def __enter__(self) -> None:
        self._hooks._values.clear()
        self._hooks._counts = dict.fromkeys(self._hooks._counts, 0)
        self._hooks._active = True

    def __exit__(self, *exc: object) -> None:
        self._hooks._active = False
