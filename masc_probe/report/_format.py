"""The one number formatter of every rendering of a report (report.md, report.html, the card, the CLI summary), and
how a MASC subspace size is written and ordered.

>>> fmt(0.31549), fmt(-0.0234, signed=True), fmt(None)
('0.315', '−0.023', '–')
"""

from __future__ import annotations

import math
from typing import Any


DIGITS = 3
MINUS = "\u2212"  # a true minus sign, as wide as the plus


def fmt(value: Any, *, signed: bool = False, p: bool = False, digits: int = DIGITS) -> str:
    """A measured number as every renderer shows it: *digits* decimals, '–' for none.

    Args:
        value: The number (None, NaN or a non-number show as '–').
        signed: Show the sign of a difference (``+0.012``, ``−0.034``: a true minus sign).
        p: A p-value: below 10^-digits it shows as ``<0.001``.
        digits: Decimals.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    if p and value < 10.0 ** -digits:
        return f"<{10.0 ** -digits:.{digits}f}"
    return f"{value:{'+' if signed else ''}.{digits}f}".replace("-", MINUS)


def size_text(size: Any) -> str:
    """A MASC subspace size as the headline writes it (``t = 0.99``: a variance fraction; ``k = 5 per class``)."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        return str(size)
    return f"t = {size:g}" if isinstance(size, float) else f"k = {size} per class"


def size_order(size: Any) -> tuple[int, float]:
    """Sort key of subspace sizes on a categorical axis: the fractions first, then the counts, each ascending."""
    return (int(not isinstance(size, float)), float(size))
