"""Re-initialization: a copy of a model's architecture at fresh initial weights, drawn the library's own way from a
seed (the ``"init"`` control of a model that is no run of this package, :mod:`._controls`), with every device's
random state left as it was.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from masc_probe.errors import InputError


class NotReinitializable(InputError):
    """:func:`reinitialized` cannot rebuild a model's initial weights; ``reason`` says why (a clause)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
