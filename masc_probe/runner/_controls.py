"""Controls: the same probes on what a network gives without training, in the same passes as the trained network.

A probe's number means little alone: the network at its initial weights, or the raw pixels, may read as much. So a
runner probes, beside the trained model,

* ``"init"``: the same architecture at its initial weights, at the same layers with the same probes, data, labels,
  reducers and ``n_components``. The pipeline hands a run folder's exact epoch-0 weights in (rebuilt and verified by
  ``masc_probe.training._init``); for any other model the runner builds a re-initialized copy the library's own way
  (:func:`~masc_probe.runner._reinit.reinitialized`) from its ``seed``;
* ``"input"``: the raw input, the layer ``"input"`` of the trained pass (it is the same for every model), reported as a
  control beside the layers rather than as a candidate for the best layer;
* any other name: a model the user passes (``controls={"clean": clean_model}``, e.g. a network trained on the clean
  labels as the upper reference).

Each control model runs in the same fit and evaluate passes, one more forward per batch; its rows travel under the
key ``LayerKey(layer, name)`` (:class:`LayerKey`) beside the trained layers' ``LayerKey(layer)``, so that the plan,
the row cache, the probes and the store treat them as more layers, and every test image is scored by both sides of
each comparison. Outside the runner (``estimators_``, the report's memory plan and failures, runner.json) a key is
spelled ``"<name>::<layer>"``: ``str(key)`` writes it, :meth:`LayerKey.parse` reads it, nothing else does either.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from masc_probe.errors import InputError, UnknownNameError
from masc_probe.runner._keys import DEFAULT_CONTROLS, INPUT, LayerKey, check_name, check_names
from masc_probe.runner._reinit import NotReinitializable, reinitialized

if TYPE_CHECKING:
    from masc_probe.runner._config import RunnerConfig

logger = logging.getLogger(__name__)

SOURCES = ("run epoch 0", "re-initialized copy", "user model")


@dataclass(frozen=True)
class ControlModel:
    """A control model and what it is, as the report's ``controls`` block records it.

    Attributes:
        model: The network probed as the control.
        source: ``"run epoch 0"`` (a run's own initial weights, verified against its record), ``"re-initialized
            copy"`` (built here from a seed) or ``"user model"``.
        seed: The seed its weights were drawn with, when known.
        init_sha256: SHA-256 of its state dict (``masc_probe.training._init.state_sha256``); filled in when None.
        note: Anything a reader must know (e.g. why a run's own epoch 0 could not be used).
    """

    model: nn.Module
    source: str = "user model"
    seed: int | None = None
    init_sha256: str | None = None
    note: str | None = None

    def record(self) -> dict[str, Any]:
        """The report's entry for this control (its model accuracy is added by the evaluate pass)."""
        out: dict[str, Any] = {"source": self.source, "seed": self.seed, "init_sha256": self.init_sha256}
        if self.note:
            out["note"] = self.note
        return out


def resolve(controls: Any, model: nn.Module | None, *,
            seed: int) -> tuple[tuple[str, ...], dict[str, ControlModel], dict[str, str]]:
    """The control names in report order, the control models, and the controls skipped, from ``controls=``.

    The ``"init"`` control asked for without its model is built where the library can rebuild initial weights
    exactly (:func:`reinitialized`); where it cannot (a bare ``nn.Parameter`` such as a class token, a submodule
    without ``reset_parameters()``), it is skipped rather than turning a working probe into an error, and the reason
    with its fix is returned for the report (``controls_skipped``).

    Args:
        controls: Names (``("init", "input")``, ``"init,input"``, ``"none"``, ``None``) or a mapping name → model
            (an ``nn.Module``, a :class:`ControlModel`, or None for ``"init"``'s re-initialized copy and for
            ``"input"``).
        model: The trained model (None for a runner that only scores rows: no model control then).
        seed: The seed of a re-initialized copy.

    Returns:
        ``(names, models, skipped)``: model controls first, ``"input"`` last; ``models`` holds every name but
        ``"input"``; ``skipped`` maps a control left out to one sentence with the reason and the fix (the skipped
        name is not in ``names``).

    Raises:
        InputError: An unknown name without a model, a model for ``"input"``, or a model that is not an
            ``nn.Module``.
    """
    if isinstance(controls, Mapping):
        given = dict(controls)
        for name, value in given.items():
            check_name(name)
            if name == INPUT and value is not None:
                raise InputError("the 'input' control is the raw input, not a model; pass {'input': None}")
            if value is None and name not in DEFAULT_CONTROLS:
                raise InputError(f"control {name!r} needs its model, got None")
            if value is not None and not isinstance(value, (nn.Module, ControlModel)):
                raise InputError(f"control {name!r} must be an nn.Module or ControlModel, got "
                                 f"{type(value).__name__}")
    else:
        given = dict.fromkeys(check_names(controls))
    names = [n for n in given if n != INPUT] + ([INPUT] if INPUT in given else [])
    models: dict[str, ControlModel] = {}
    skipped: dict[str, str] = {}
    if model is None:
        return tuple(n for n in names if n == INPUT), models, skipped
    from masc_probe.training._init import state_sha256

    for name in names:
        if name == INPUT:
            continue
        value = given[name]
        if value is None:
            try:
                value = ControlModel(reinitialized(model, seed=seed), source="re-initialized copy", seed=int(seed))
            except NotReinitializable as exc:
                skipped[name] = skip_sentence(exc.reason)
                continue
        elif isinstance(value, nn.Module):
            value = ControlModel(value, source="user model")
        if value.source not in SOURCES:
            raise InputError(f"a ControlModel's source must be one of {list(SOURCES)}, got {value.source!r}")
        if value.init_sha256 is None:
            value = dataclasses.replace(value, init_sha256=state_sha256(value.model))
        models[name] = value
    return tuple(n for n in names if n not in skipped), models, skipped


def skip_sentence(reason: str) -> str:
    """The one sentence a report, the CLI and the card give for an init control left out, with its fix."""
    return (f"The init control was skipped: {reason}, so its initial weights cannot be rebuilt exactly; pass an "
            "untrained copy to compare with: ProbeRunner(model, controls={'init': untrained_model, 'input': None}).")


def bind_layers(model: nn.Module, config: RunnerConfig,
                models: dict[str, ControlModel]) -> tuple[RunnerConfig, dict[str, ControlModel]]:
    """*config* with its layers resolved on *model* (the raw input added when it is a control) and the control
    models that can be probed there, moved to the config's device and checked to have those layers.

    Raises:
        UnknownNameError: A layer *model* or a control model does not have (checked now, not after hours of data
            loading).
    """
    from masc_probe.layers import FeatureTap

    if config.device is not None:
        model.to(config.device)
    with FeatureTap(model, config.layers) as tap:
        resolved = tuple(tap.layers)
    names = config.controls
    if INPUT in names and INPUT not in resolved:
        resolved = (INPUT, *resolved)  # the raw input is a control: probed beside the layers
    hidden = [layer for layer in resolved if layer != INPUT]
    if not hidden:  # only the raw input probed: a control model has no layer to read
        models, names = {}, tuple(n for n in names if n == INPUT)
    for name, control in models.items():
        if config.device is not None:
            control.model.to(config.device)
        try:
            FeatureTap(control.model, hidden).close()
        except UnknownNameError as exc:
            raise UnknownNameError(f"control {name!r} must have the probed layers {hidden}; {exc}") from None
    return dataclasses.replace(config, layers=resolved, controls=names), models


def init_control(source: str | os.PathLike[str], net: nn.Module, *, seed: int,
                 revision: str | None = None) -> ControlModel:
    """The init control of a trained network *net* from *source* (a run or checkpoint folder, an ``hf-hub:``
    memorizer).

    It is the run's own epoch-0 network when its config recorded one that rebuilds with the recorded SHA-256
    (``masc_probe.training._init``); when the record does not verify here, a re-initialized copy from *seed* whose
    ``note`` says why; with no record (a run from before it), a re-initialized copy from *seed* — for the paper's
    models, built from the run's seed, the same weights as its epoch 0, though not verified.
    """
    from masc_probe.training._init import run_initial_model

    try:
        found = run_initial_model(source, revision=revision)
    except InputError as exc:
        logger.warning("%s", exc)
        return ControlModel(reinitialized(net, seed=seed), source="re-initialized copy", seed=seed,
                            note=f"not the run's own epoch 0: {exc}")
    if found is None:
        return ControlModel(reinitialized(net, seed=seed), source="re-initialized copy", seed=seed)
    model0, record = found
    return ControlModel(model0, source="run epoch 0", seed=int(record["seed"]), init_sha256=str(record["init_sha256"]))


def run_controls(names: Sequence[str], source: str | os.PathLike[str] | None, net: nn.Module, *, seed: int,
                 revision: str | None = None) -> tuple[str, ...] | dict[str, ControlModel | None]:
    """ProbeRunner's ``controls=`` for a trained network from *source* (None for a model spec, whose ``"init"`` the
    runner re-initializes itself): ``"init"`` becomes :func:`init_control`."""
    names = tuple(names)
    if "init" not in names or source is None:
        return names
    init = init_control(source, net, seed=seed, revision=revision)
    return {name: init if name == "init" else None for name in names}


# ----------------------------------------------------------------------------------------------- the forward
class ControlledForward:
    """The trained model's :class:`~masc_probe.runner._forward.Forward` and one per control model, as one call.

    ``forward(x)`` returns the trained model's ``(rows, logits)``, rows by :class:`LayerKey`, every control's
    among them; each control's logits (when asked) are in :attr:`control_logits` after the call.
    """

    def __init__(self, model: nn.Module, controls: Mapping[str, nn.Module], layers: Sequence[str], reducer: Any,
                 device: torch.device, *, want_logits: bool, control_logits: bool, train_mode: bool) -> None:
        from masc_probe.runner._forward import Forward

        self.main = Forward(model, list(layers), reducer, device, want_logits=want_logits, train_mode=train_mode)
        hidden = [layer for layer in layers if layer != INPUT]
        self.others: dict[str, Any] = {}
        try:
            for name, net in controls.items():
                net.to(device)
                self.others[name] = Forward(net, hidden, reducer, device, want_logits=control_logits,
                                            train_mode=train_mode)
        except BaseException:
            self.close()
            raise
        self.control_logits: dict[str, torch.Tensor | None] = {}

    def __call__(self, x: torch.Tensor) -> tuple[dict[LayerKey, torch.Tensor], torch.Tensor | None]:
        trained, logits = self.main(x)
        rows = {LayerKey(layer): value for layer, value in trained.items()}
        self.control_logits = {}
        for name, forward in self.others.items():
            more, self.control_logits[name] = forward(x)
            rows.update({LayerKey(layer, name): value for layer, value in more.items()})
        return rows, logits

    def close(self) -> None:
        self.main.close()
        for forward in self.others.values():
            forward.close()

    def __enter__(self) -> ControlledForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
