"""Validators of the parameters that the probes, the runner and the pipeline share, each defined once.

``n_components`` follows scikit-learn's PCA: a float variance fraction in (0, 1) or an int count >= 1; numpy
scalars count as what they are (``np.float32(0.9)`` is a fraction, ``np.int64(5)`` a count), bools never.
``max_memory`` is a positive number of bytes, or None for :data:`DEFAULT_MAX_MEMORY`.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import numpy as np

from masc_probe.errors import InputError

__all__ = ["DEFAULT_MAX_MEMORY", "check_max_memory", "check_n_components"]

DEFAULT_MAX_MEMORY = 4 * 1024**3  # bytes of statistics a probe, or a whole ProbeRunner, holds in memory


def check_n_components(value: Any) -> float | int:
    """A float variance fraction in (0, 1) or an int count >= 1 (not a bool), as a plain Python number.

    Raises:
        InputError: Any other value.

    >>> check_n_components(np.float32(0.5)), check_n_components(np.int64(3))
    (0.5, 3)
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise InputError(f"n_components must be a float in (0, 1) or an int >= 1; got {value!r}")
    if isinstance(value, Integral):
        if value < 1:
            raise InputError(f"n_components must be a float in (0, 1) or an int >= 1; got int {value}")
        return int(value)
    if not 0.0 < float(value) < 1.0:
        raise InputError(f"n_components must be a float in (0, 1) or an int >= 1; got float {value!r}")
    return float(value)


def check_max_memory(value: Any) -> int:
    """A positive number of bytes; None gives :data:`DEFAULT_MAX_MEMORY`.

    Raises:
        InputError: Anything else (a bool, a float, zero or less).
    """
    if value is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral) or value < 1:
        raise InputError(f"max_memory must be a positive number of bytes or None; got {value!r}")
    return int(value)
