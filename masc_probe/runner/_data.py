"""What :meth:`ProbeRunner.fit <masc_probe.runner.ProbeRunner.fit>` reads off its data beyond the batches: the number
of classes (given, checked, or declared by a ``datasets.ClassLabel`` column) and the record
:func:`masc_probe.load_data` attached (the report's ``dataset`` and ``corruption``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from masc_probe.errors import InputError


def num_classes_of(data: Any, num_classes: int | None) -> int | None:
    """*num_classes* checked, else the number of classes a ``datasets.ClassLabel`` column of *data* (or its loader's
    dataset) declares; None when neither says (the fit then reads the model's output width).

    Raises:
        InputError: *num_classes* is not an int >= 2 or None.

    >>> num_classes_of([], None) is None
    True
    """
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise InputError(f"num_classes must be an int >= 2 or None, got {num_classes!r}")
        return num_classes
    dataset = getattr(data, "dataset", data)
    features = getattr(dataset, "features", None)
    label = features.get("label") if isinstance(features, Mapping) else None
    n = getattr(label, "num_classes", None)
    return int(n) if isinstance(n, int) and n > 1 else None


def data_record(data: Any) -> dict[str, Any]:
    """``{"dataset", "corruption"}`` from the record :func:`masc_probe.load_data` attached to *data* (or its
    loader's dataset); empty when it has none."""
    from masc_probe.data import describe_data
    from masc_probe.data.corruption import report_corruption

    try:
        record = describe_data(getattr(data, "dataset", data))
    except InputError:
        return {}
    return {"dataset": record.get("spec"), "corruption": report_corruption(record.get("corruption"))}
