"""``masc-probe layers``: :func:`layer_table`, every layer name of a model and whether it is probed by default."""

from __future__ import annotations

from pathlib import Path

from masc_probe._choices import HUB_PREFIX

__all__ = ["layer_table"]


def layer_table(spec: str, *, num_classes: int = 10, in_chans: int | None = None, input_size: int | None = None,
                revision: str | None = None, nodes: bool = True) -> list[tuple[str, bool]]:
    """Every layer name of a model, each with whether it is probed by default.

    Args:
        spec: A model spec, run folder or ``hf-hub:`` repo.
        num_classes, in_chans, input_size: Shape of a new model (ignored for saved ones, which carry their own).
        revision: Hub revision of an ``hf-hub:`` model.
        nodes: Also list FX nodes that are not modules (``list_layers(..., nodes=False)`` otherwise; the default
            layers are listed either way).

    Returns:
        ``[(layer name, probed by default), ...]`` in forward order.

    Raises:
        UnknownNameError, InputError, HubError: As :func:`masc_probe.load_model` raises them.
    """
    from masc_probe.layers import default_layers, list_layers
    from masc_probe.models import load_model

    if str(spec).startswith(HUB_PREFIX) or Path(spec).exists():
        net = load_model(spec, revision=revision)
    else:
        size = None if input_size is None else (input_size, input_size)
        net = load_model(spec, num_classes=num_classes, in_chans=in_chans, input_size=size)
    chosen = set(default_layers(net))
    shown = None if nodes else set(list_layers(net, nodes=False)) | chosen
    return [(name, name in chosen) for name in list_layers(net) if shown is None or name in shown]
