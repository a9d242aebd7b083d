"""The validators of the parameters a user sets in Python and on the command line alike, each defined once.

The probes, the runner, the pipeline and the CLI all call these; the CLI hands them the text of a flag (or the number
it parsed), so a bad value gets the same one-line error whichever way it came. This module imports nothing heavy
(no numpy, no torch): ``masc-probe`` checks its flags before it imports either.

``n_components`` follows scikit-learn's PCA: a float variance fraction in (0, 1) or an int count >= 1; numpy
scalars count as what they are (``np.float32(0.9)`` is a fraction, ``np.int64(5)`` a count), bools never.
``max_memory`` is a positive number of bytes, a size such as ``"4GB"``, or None for :data:`DEFAULT_MAX_MEMORY`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

from masc_probe._choices import PROBE_NAMES
from masc_probe.errors import InputError, UnknownNameError, closest

__all__ = ["DEFAULT_MAX_MEMORY", "DEFAULT_N_COMPONENTS", "check_choice", "check_folds", "check_max_memory",
           "check_n_components", "check_probes", "parse_number"]

DEFAULT_MAX_MEMORY = 4 * 1024**3  # bytes of statistics a probe, or a whole ProbeRunner, holds in memory
DEFAULT_N_COMPONENTS = 0.99  # MASC's subspace size wherever none is given: the variance fraction the paper keeps

# Binary units: the budget is compared with allocations.
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*")


def check_choice(what: str, value: Any, valid: Iterable[str], *, also: str = "") -> str:
    """*value* when it is one of the *valid* names, else a one-line error naming them (and the closest ones);
    *also* names other accepted forms in the message (``"or 'random:D'"``) when they are checked elsewhere.

    Raises:
        UnknownNameError: Any other value.

    >>> check_choice("select", "noisy", ("noisy", "clean"))
    'noisy'
    """
    valid = tuple(valid)
    if isinstance(value, str) and value in valid:
        return value
    hint = closest(str(value), valid)
    other = f" ({also})" if also else ""
    raise UnknownNameError(f"{what} must be one of {', '.join(valid)}{other}; got {value!r} ({hint})")


def parse_number(text: str) -> int | float:
    """An int when *text* reads as one, else a float (``"3"`` → 3, ``"0.5"`` → 0.5); the text itself otherwise,
    for the validator to refuse by name."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text  # type: ignore[return-value]


def check_n_components(value: Any) -> float | int:
    """A float variance fraction in (0, 1) or an int count >= 1 (not a bool), as a plain Python number.

    Raises:
        InputError: Any other value.

    >>> import numpy as np
    >>> check_n_components(np.float32(0.5)), check_n_components(np.int64(3))
    (0.5, 3)
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"n_components must be a float in (0, 1) or an int >= 1; got {value!r}")
    if isinstance(value, Integral):
        if value < 1:
            raise InputError(f"n_components must be a float in (0, 1) or an int >= 1; got int {value}")
        return int(value)
    if not 0.0 < float(value) < 1.0:
        raise InputError(f"n_components must be a float in (0, 1) or an int >= 1; got float {value!r}")
    return float(value)


def check_max_memory(value: Any) -> int:
    """A positive number of bytes, given as an int or as a size (``"4GB"``, ``"512MiB"``, ``"1e9"``); None gives
    :data:`DEFAULT_MAX_MEMORY`.

    Raises:
        InputError: Anything else (a bool, a float, zero or less, an infinite or unreadable size).

    >>> check_max_memory("1.5GB"), check_max_memory(1024)
    (1610612736, 1024)
    """
    if value is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.lower())
        size = float(match.group(1)) * _UNITS[match.group(2)] if match and match.group(2) in _UNITS else math.nan
        if not (math.isfinite(size) and size >= 1):
            raise InputError(f"max_memory must be a positive number of bytes or a size such as 4GB or 512MB; "
                             f"got {value!r}")
        return int(size)
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise InputError(f"max_memory must be a positive number of bytes, a size such as '4GB', or None; "
                         f"got {value!r}")
    return int(value)


def check_folds(value: Any) -> int:
    """K >= 2 folds, an int (each sample is scored by probes fitted on the other K - 1 folds).

    Raises:
        InputError: Anything else (a bool, a float, 1 or less).
    """
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 2:
        raise InputError(f"folds must be an int >= 2 (each sample is scored by probes fitted on the other folds); "
                         f"got {value!r}")
    return int(value)


def check_probes(names: Any) -> tuple[str, ...]:
    """Probe names of the registry (one name, or several), without repeats, in the order given.

    Raises:
        InputError: No name at all, or something that is not a name.
        UnknownNameError: A name the registry does not have (with the closest ones).

    >>> check_probes(["masc", "ncm", "masc"])
    ('masc', 'ncm')
    """
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, Iterable):
        raise InputError(f"probes must be probe names ({', '.join(PROBE_NAMES)}); got {names!r}")
    names = tuple(dict.fromkeys(names))
    if not names:
        raise InputError("probes is empty; name at least one of " + ", ".join(PROBE_NAMES))
    for name in names:
        check_choice("probe", name, PROBE_NAMES)
    return names
