"""Where a model's output keeps its class scores, defined once for everything that reads them: training's loss and
accuracy, the stop rule's pass, and the runner's own accuracy of the model.

The rule, in order: the output itself when it is a tensor; its ``.logits`` (a ``transformers`` ``ModelOutput``, any
object with that attribute); its ``["logits"]`` (a dict or other mapping); the first element of a tuple or list
(torchvision's ``GoogLeNetOutputs`` in train mode, a ``(logits, aux)`` pair).

Example::

    >>> import torch
    >>> t = torch.zeros(2, 3)
    >>> logits_of({"logits": t}) is t, logits_of((t, "aux")) is t, logits_of({"hidden": t})
    (True, True, None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from masc_probe.errors import InputError

__all__ = ["LOOKED_FOR", "logits_of", "model_logits"]

LOOKED_FOR = "a tensor, .logits, ['logits'] or a tuple's first element"  # the rule, as messages name it


def logits_of(output: Any) -> torch.Tensor | None:
    """The class scores in a model's output by the rule above; None when the rule finds no tensor there."""
    if isinstance(output, torch.Tensor):
        return output
    value = getattr(output, "logits", None)
    if value is None and isinstance(output, Mapping):
        value = output.get("logits")
    if value is None and isinstance(output, (tuple, list)) and output:
        value = output[0]
    return value if isinstance(value, torch.Tensor) else None


def model_logits(output: Any) -> torch.Tensor:
    """The class scores in a model's output, as :func:`logits_of` finds them, for code that cannot go on without.

    Raises:
        InputError: The output holds no tensor where the rule looks (e.g. a backbone's dict of hidden states).
    """
    logits = logits_of(output)
    if logits is None:
        raise InputError(f"expected the model to return logits ({LOOKED_FOR}), got {type(output).__name__}")
    return logits
