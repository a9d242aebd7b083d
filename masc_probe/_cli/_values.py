"""The flags' value parsers: each turns one flag's text into the library's value, or fails as argparse's one line.

Where the library has a validator (``masc_probe._params``), the flag goes through it (:func:`checked`), so the CLI and
the library accept and refuse the same values.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from masc_probe._choices import CONTROLS, REDUCERS
from masc_probe._params import check_folds, check_max_memory, check_n_components, check_probes, parse_number


def _bounded(parse: Callable[[str], Any], ok: Callable[[Any], bool], expected: str, name: str) -> Callable[[str], Any]:
    """A number parsed by *parse* and accepted when *ok*; else argparse's one line saying what was *expected*."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    convert.__name__ = name  # argparse names the type in some messages
    return convert


fraction = _bounded(float, lambda v: 0.0 <= v <= 1.0, "a rate in [0, 1]", "fraction")
open_fraction = _bounded(float, lambda v: 0.0 < v < 1.0, "a fraction in (0, 1)", "open_fraction")
positive_int = _bounded(int, lambda v: v >= 1, "a positive integer", "positive_int")
non_negative_int = _bounded(int, lambda v: v >= 0, "an integer >= 0", "non_negative_int")


def reducer(text: str) -> str | dict[str, str]:
    """``NAME`` for every layer, or ``LAYER=NAME,LAYER=NAME`` per layer (NAME one of REDUCERS, or random:D)."""
    pairs = [part.partition("=") for part in text.split(",")] if "=" in text else [("", "", text)]
    for layer, eq, name in pairs:
        if (eq and not layer) or not (name in REDUCERS or (name.startswith("random:") and name[7:].isdigit()
                                                          and not eq)):
            raise argparse.ArgumentTypeError(f"expected {'|'.join(REDUCERS)} or LAYER=NAME,…, got {text!r}")
    return pairs[0][2] if not pairs[0][1] else {layer: name for layer, _, name in pairs}


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (at least one)."""
    found = tuple(part.strip() for part in text.split(",") if part.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return found


def controls(text: str) -> tuple[str, ...]:
    """``init``, ``input`` (comma-separated), or ``none`` for neither."""
    chosen = () if text.strip() == "none" else names(text)
    if any(name not in CONTROLS for name in chosen):
        raise argparse.ArgumentTypeError(f"expected controls among {','.join(CONTROLS)} or none, got {text!r}")
    return chosen


def checked(check: Callable[[Any], Any], parse: Callable[[str], Any] = str) -> Callable[[str], Any]:
    """A flag's value through the library's own validator (masc_probe._params), its error as argparse's one line."""

    def convert(text: str) -> Any:
        try:
            return check(parse(text))
        except ValueError as exc:  # InputError is a ValueError
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__.removeprefix("check_")  # argparse names the type in some messages
    return convert


n_components = checked(check_n_components, parse_number)
memory = checked(check_max_memory)
folds = checked(check_folds, parse_number)
probes = checked(check_probes, names)
