"""The keys a layer's rows travel under inside a pass, and the control names of a ``controls=`` argument: the
naming half of the controls (masc_probe.runner._controls), with no model or torch in it, so that RunnerConfig can
validate names and list row keys without importing the controls' machinery.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from masc_probe._choices import CONTROLS
from masc_probe.errors import InputError

INIT, INPUT = CONTROLS
DEFAULT_CONTROLS = CONTROLS
_SEP = "::"  # no layer name holds it: module paths use dots, FX nodes are identifiers
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


class LayerKey(NamedTuple):
    """The key a layer's rows travel under inside a pass: the trained network's ``LayerKey("fc1")`` (the raw input
    is its ``LayerKey("input")``), a control model's ``LayerKey("fc1", "init")``.

    >>> str(LayerKey("fc1", "init")), LayerKey.parse("fc1")
    ('init::fc1', LayerKey(layer='fc1', control=None))
    """

    layer: str
    control: str | None = None  # the control model's name; None: the trained network

    def __str__(self) -> str:
        """The spelling outside the runner: ``"fc1"``, or ``"init::fc1"`` for a control model's layer."""
        return self.layer if self.control is None else f"{self.control}{_SEP}{self.layer}"

    @classmethod
    def parse(cls, text: str) -> LayerKey:
        """The key ``str()`` spelled as *text*."""
        control, sep, layer = text.partition(_SEP)
        return cls(layer, control) if sep else cls(text)


Key = tuple[LayerKey, str, str]  # a fitted probe's (layer, probe, label set)


def public_key(key: Key) -> tuple[str, str, str]:
    """*key* as ``estimators_``, ``train_accuracy_`` and ``predict`` spell it: ``("init::fc1", "masc", "true")``."""
    return (str(key[0]), key[1], key[2])


def control_layers(layers: Sequence[str], names: Iterable[str]) -> list[LayerKey]:
    """Every row key of a pass: the trained layers, then each control model's (all but the raw input)."""
    out = [LayerKey(layer) for layer in layers]
    for name in names:
        if name != INPUT:
            out += [LayerKey(layer, name) for layer in layers if layer != INPUT]
    return out


def check_name(name: Any) -> str:
    """*name* if it can name a control (a word: it becomes part of a key's spelling).

    Raises:
        InputError: Anything else.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"a control's name must be a word such as 'init', got {name!r}")
    return name


def check_names(controls: Any) -> tuple[str, ...]:
    """The control names of a ``controls=`` argument given as names (``None``/``"none"``/``()`` for none).

    Raises:
        InputError: A name that is not ``"init"`` or ``"input"`` (any other control needs its model).
    """
    if controls is None or controls is False or (isinstance(controls, str) and controls.strip() == "none"):
        return ()
    if isinstance(controls, str):
        controls = [part.strip() for part in controls.split(",") if part.strip()]
    names = tuple(dict.fromkeys(controls))
    for name in names:
        check_name(name)
        if name not in DEFAULT_CONTROLS:
            raise InputError(f"control {name!r} needs its model: pass controls={{{name!r}: model}} (by name alone "
                             f"only {', '.join(DEFAULT_CONTROLS)})")
    return names
