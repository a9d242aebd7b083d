"""Controls: the same probes on what a network gives without training, in the same passes as the trained network.

A probe's number means little alone: the network at its initial weights, or the raw pixels, may read as much. So a
runner probes, beside the trained model,

* ``"init"``: the same architecture at its initial weights, at the same layers with the same probes, data, labels,
  reducers and ``n_components``. The pipeline hands a run folder's exact epoch-0 weights in (rebuilt and verified by
  ``masc_probe.training._init``); for any other model the runner builds a re-initialized copy the library's own way
  (:func:`reinitialized`) from its ``seed``;
* ``"input"``: the raw input, the layer ``"input"`` of the trained pass (it is the same for every model), reported as a
  control beside the layers rather than as a candidate for the best layer;
* any other name: a model the user passes (``controls={"clean": clean_model}``, e.g. a network trained on the clean
  labels as the upper reference).

Each control model runs in the same fit and evaluate passes, one more forward per batch; its rows travel under the
key ``"<name>::<layer>"`` (:func:`control_key`) beside the trained layers, so that the plan, the row cache, the
probes and the store treat them as more layers, and every test image is scored by both sides of each comparison.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from masc_probe._choices import CONTROLS
from masc_probe.errors import InputError

INIT, INPUT = CONTROLS
DEFAULT_CONTROLS = CONTROLS
SOURCES = ("run epoch 0", "re-initialized copy", "user model")
_SEP = "::"  # no layer name holds it: module paths use dots, FX nodes are identifiers
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


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


def control_key(name: str, layer: str) -> str:
    """The key a control's rows of *layer* travel under inside a pass."""
    return f"{name}{_SEP}{layer}"


def split_key(key: str) -> tuple[str | None, str]:
    """``(control name or None, layer)`` of a pass's row key."""
    name, sep, layer = key.partition(_SEP)
    return (name, layer) if sep else (None, key)


def control_layers(layers: Sequence[str], names: Iterable[str]) -> list[str]:
    """Every row key of a pass: the trained layers, then each control model's (all but the raw input)."""
    out = list(layers)
    for name in names:
        if name != INPUT:
            out += [control_key(name, layer) for layer in layers if layer != INPUT]
    return out


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
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(f"a control's name must be a word such as 'init', got {name!r}")
        if name not in DEFAULT_CONTROLS:
            raise InputError(f"control {name!r} needs its model: pass controls={{{name!r}: model}} (by name alone "
                             f"only {', '.join(DEFAULT_CONTROLS)})")
    return names


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
            if not isinstance(name, str) or not _NAME.match(name):
                raise InputError(f"a control's name must be a word such as 'init', got {name!r}")
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


class NotReinitializable(InputError):
    """:func:`reinitialized` cannot rebuild a model's initial weights; ``reason`` says why (a clause)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# -------------------------------------------------------------------------------------------- re-initialization
def reinitialized(model: nn.Module, *, seed: int) -> nn.Module:
    """A copy of *model*'s architecture at fresh initial weights, drawn the library's own way from *seed*.

    * the MASC paper's models: the class again with its recorded arguments (what ``load_model(spec)`` builds, so
      with the run's seed these are its epoch-0 weights);
    * ``transformers`` models: the class again from a copy of the model's config (``post_init`` initializes it);
    * timm models: ``timm.create_model(architecture, pretrained=False, …)`` with the model's classes and input
      channels (and image size where it is fixed) when that gives the same state-dict shapes; else (a model built
      with other arguments, e.g. ``depth=2``) a deep copy re-initialized by timm's own ``init_weights()``;
    * any other module: a deep copy with ``reset_parameters()`` called on every submodule that holds parameters.

    The random state of every device (the CPU's, and each CUDA device's once CUDA is in use) is left as it was. The
    copy is on the model's device, in eval mode.

    Raises:
        NotReinitializable: A parameter that no ``reset_parameters()`` re-draws (a bare ``nn.Parameter`` such as a
            class token, or a submodule without one), or a copy of another shape (one line, naming them, with how to
            pass an untrained copy yourself).
    """
    from masc_probe.models import PaperModel, is_transformers_model

    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    with _own_rng(model, int(seed)):
        if isinstance(model, PaperModel) and isinstance(getattr(model, "_hub_mixin_config", None), Mapping):
            fresh = type(model)(**dict(model._hub_mixin_config))
        elif is_transformers_model(model):
            fresh = type(model)(copy.deepcopy(model.config))
        elif _is_timm(model):
            fresh = _timm_copy(model)
            if not _shapes_equal(model, fresh):
                fresh = _reset_copy(model, own_init="init_weights")
        else:
            fresh = _reset_copy(model)
    _same_shapes(model, fresh)
    return fresh.to(device).eval()


@contextlib.contextmanager
def _own_rng(model: nn.Module, seed: int) -> Iterator[None]:
    """Seed the generators a re-initialization may draw from, and give every device's state back afterwards.

    ``torch.manual_seed`` would also seed CUDA (queued until CUDA starts, when it is not started yet) and
    ``fork_rng(devices=[])`` saves only the CPU's: a copy drawn on a GPU would move the caller's CUDA stream. Here the
    CPU and each device type in use (every CUDA device once CUDA is initialized, and the model's own devices) are
    forked, and only those are seeded.
    """
    types = {t.device.type for t in (*model.parameters(), *model.buffers())} - {"cpu", "meta"}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        types.add("cuda")
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        for kind in sorted(types):
            backend = getattr(torch, kind)
            stack.enter_context(torch.random.fork_rng(devices=list(range(backend.device_count())), device_type=kind))
        torch.random.default_generator.manual_seed(seed)
        for kind in types:
            getattr(torch, kind).manual_seed_all(seed)
        yield


def _is_timm(model: nn.Module) -> bool:
    cfg = getattr(model, "pretrained_cfg", None)
    return isinstance(cfg, Mapping) and bool(cfg.get("architecture")) and type(model).__module__.startswith("timm.")


def _timm_copy(model: nn.Module) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {}
    if isinstance(getattr(model, "num_classes", None), int):
        kwargs["num_classes"] = model.num_classes
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))), None)
    chans = getattr(model, "in_chans", None) or getattr(first, "in_channels", None)
    if isinstance(chans, int):
        kwargs["in_chans"] = chans
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if model.pretrained_cfg.get("fixed_input_size") and size is not None:
        kwargs["img_size"] = tuple(size)
    return timm.create_model(str(model.pretrained_cfg["architecture"]), pretrained=False, **kwargs)


def _reset_copy(model: nn.Module, own_init: str | None = None) -> nn.Module:
    fresh = copy.deepcopy(model)
    init = getattr(fresh, own_init, None) if own_init else None
    if callable(init):  # the library's own initialization of the whole model (timm's init_weights)
        init()
        return fresh
    stuck = _not_reset(fresh)
    if stuck:
        more = f", … ({len(stuck)} in all)" if len(stuck) > 3 else ""
        what = stuck[0][0] or "(the model itself)"
        reason = (f"{type(model).__name__} holds parameters that no reset_parameters() re-draws "
                  f"({', '.join(p for _, _, p in stuck[:3])}{more})")
        raise NotReinitializable(reason, f"cannot re-initialize {what} ({stuck[0][1]}): {reason}; pass an untrained "
                                 "copy yourself: ProbeRunner(model, controls={'init': untrained_model, 'input': "
                                 "None}), or controls=('input',) to probe without it")
    for _, module in fresh.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            _reset_of(module)()  # type: ignore[misc]
    return fresh


def _reset_of(module: nn.Module) -> Any:
    """The call that re-draws *module*'s own parameters: ``reset_parameters()``, or torch.nn's private
    ``_reset_parameters()`` (``nn.MultiheadAttention``, ``nn.Transformer``: torch's own initialization); else None."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        return reset
    private = getattr(module, "_reset_parameters", None)
    return private if callable(private) and type(module).__module__.startswith("torch.nn.") else None


def _not_reset(model: nn.Module) -> list[tuple[str, str, str]]:
    """``(module path, module class, parameter path)`` of every parameter whose own module has no reset call."""
    out = []
    for path, module in model.named_modules():
        if _reset_of(module) is None:
            out += [(path, type(module).__name__, f"{path}.{n}" if path else n)
                    for n, _ in module.named_parameters(recurse=False)]
    return out


def _shapes_equal(model: nn.Module, fresh: nn.Module) -> bool:
    return ({k: tuple(v.shape) for k, v in model.state_dict().items()}
            == {k: tuple(v.shape) for k, v in fresh.state_dict().items()})


def _same_shapes(model: nn.Module, fresh: nn.Module) -> None:
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    if mine != theirs:
        diff = sorted(set(mine.items()) ^ set(theirs.items()))[:2]
        reason = f"the re-initialized copy of {type(model).__name__} has another shape (e.g. {diff})"
        raise NotReinitializable(reason, f"{reason}; pass an untrained copy yourself: ProbeRunner(model, "
                                 "controls={'init': untrained_model, 'input': None})")


# ----------------------------------------------------------------------------------------------- the forward
class ControlledForward:
    """The trained model's :class:`~masc_probe.runner._forward.Forward` and one per control model, as one call.

    ``forward(x)`` returns the trained model's ``(rows, logits)`` with every control's rows added under
    :func:`control_key`; each control's logits (when asked) are in :attr:`control_logits` after the call.
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

    def __call__(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        rows, logits = self.main(x)
        self.control_logits = {}
        for name, forward in self.others.items():
            more, self.control_logits[name] = forward(x)
            rows.update({control_key(name, layer): value for layer, value in more.items()})
        return rows, logits

    def close(self) -> None:
        self.main.close()
        for forward in self.others.values():
            forward.close()

    def __enter__(self) -> ControlledForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
