"""One forward over a batch for ProbeRunner: the tapped layers as probe rows, plus the model's own logits.

The logits come from the same pass: an FX model gets one more tap on the node it returns (so the extraction graph,
which otherwise stops at the last tapped layer, runs to the end); a model read through hooks gets a forward hook on
the model itself. Only a traced model whose output is not one tensor (a tuple, a ``ModelOutput``) needs a separate
call, which is logged.

Under the authors' protocol (``train_mode``) the layers are read in train mode, one sample at a time (the MASC
authors' extraction: :class:`~masc_probe.layers.FeatureTap`'s ``mode="train"``), while the logits still come from an
eval-mode forward of the whole batch: the model's own test accuracy is that of the network as it is deployed.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from masc_probe.errors import InputError, MascProbeError, ModelError
from masc_probe.models._logits import LOOKED_FOR, logits_of
from masc_probe.runner._distributed import World
from masc_probe.runner._cache import Reducer

logger = logging.getLogger("masc_probe.runner")


def model_device(model: nn.Module) -> torch.device:
    for tensors in (model.parameters(), model.buffers()):
        for tensor in tensors:
            return tensor.device
    return torch.device("cpu")


def why_no_accuracy(output: Any, logits: torch.Tensor | None) -> str | None:
    """Why the model's own accuracy cannot be read from *output* (None when *logits* are class scores (B, K))."""
    if logits is not None and logits.ndim == 2:
        return None
    if logits is not None:
        return (f"the model's output has shape {tuple(logits.shape)}, not (batch, classes), so its own accuracy is "
                "not computed")
    what = type(output).__name__
    if isinstance(output, dict):
        what += f" with keys {list(output)[:5]}"
    return (f"the model returns a {what}, with no class scores where they are looked for ({LOOKED_FOR}), so its own "
            "accuracy is not computed")


# Why a model's accuracy was not computed, by model, as the last Forward over it found (the report says it).
_NO_ACCURACY: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def report_notes(skipped: Mapping[str, str], model: nn.Module, counts: Mapping[str, Any],
                 extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The report's extra keys: ``controls_skipped`` (control → the sentence why, with the fix) when a control was
    left out, ``model_test_accuracy_note`` when the model's own accuracy could not be computed, then *extra*."""
    notes: dict[str, Any] = {}
    if skipped:
        notes["controls_skipped"] = dict(skipped)
    if counts.get("model_accuracy") is None:
        notes["model_test_accuracy_note"] = _NO_ACCURACY.get(model) or (
            "the model's own accuracy is not computed: not every test batch gave class scores")
    return {**notes, **dict(extra or {})}


def _output_layer(model: nn.Module) -> tuple[str | None, bool]:
    """(name of the tap that holds the model's output, whether the model is traced by FX)."""
    from masc_probe.layers._trace import trace  # the layers' own index; no public accessor names the output node

    index = trace(model)
    if index.graph_module is None:
        return None, False
    if index.output is None:
        return None, True
    return index.name_of(index.output), True


class Forward:
    """Runs a model on batches and returns ``({layer: rows (B, D)}, logits (B, K) or None)``.

    Args:
        model: The model (already on *device*).
        layers: Layer names to tap.
        reducer: Maps each activation to rows.
        device: Where inputs go.
        want_logits: Also return the model's output.
        train_mode: Read the layers in train mode, each sample alone (the authors' protocol); the logits then come
            from a separate eval-mode forward.
    """

    def __init__(self, model: nn.Module, layers: list[str], reducer: Reducer, device: torch.device, *,
                 want_logits: bool, train_mode: bool = False) -> None:
        from masc_probe.layers import FeatureTap

        self.model, self.layers, self.reducer, self.device = model, list(layers), reducer, device
        self.want_logits = want_logits
        self._out_name: str | None = None
        self._hook = None
        self._separate = False
        self._captured: Any = None
        names = list(self.layers)
        if want_logits and train_mode:
            self._separate = True
        elif want_logits:
            self._out_name, traced = _output_layer(model)
            if self._out_name is not None:
                if self._out_name not in names:
                    names.append(self._out_name)
            elif not traced:
                self._hook = model.register_forward_hook(self._capture)
            else:
                self._separate = True
                logger.info("the output of %s is not one tensor; its logits take a separate forward",
                            type(model).__name__)
        self.tap = FeatureTap(model, names, device=device, mode="train" if train_mode else "eval")

    def _capture(self, module: nn.Module, args: Any, output: Any) -> None:
        self._captured = output

    def __call__(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        x = x.to(self.device, non_blocking=True)
        self._captured = None
        try:
            values = self.tap(x)
        except (MascProbeError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:  # the model's own failure: a shape message only where the shape is the problem
            raise forward_error(self.model, x, err) from err
        logits = None
        if self.want_logits:
            if self._out_name is not None:
                output = values[self._out_name]
            elif self._hook is not None:
                output = self._captured
            else:
                flags = [(m, m.training) for m in self.model.modules()]
                self.model.eval()
                try:
                    with torch.no_grad():
                        output = self.model(x)
                finally:
                    for m, training in flags:
                        m.training = training
            logits = logits_of(output)
            why = why_no_accuracy(output, logits)
            if why is not None and self.model not in _NO_ACCURACY:
                logger.warning("%s", why)
                _NO_ACCURACY[self.model] = why
            elif why is None:
                _NO_ACCURACY.pop(self.model, None)
        rows = {name: self.reducer(name, values[name]) for name in self.layers}
        return rows, logits

    def close(self) -> None:
        self.tap.close()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def forward_error(model: nn.Module, x: torch.Tensor, err: BaseException) -> MascProbeError:
    """The error to raise for *err*, raised by *model*'s forward on batch *x*.

    A shape message (InputError) only when the batch does not fit the model's first layer (or the input size a
    paper model was built for); anything else is the model's own failure (ModelError) with its message and the
    innermost layer it came from — a device assert on a batch of the right shape is not a shape problem.
    """
    first = _first_line(err)
    problem = input_mismatch(model, x)
    if problem is not None:
        return InputError(f"the model cannot take a batch of shape {tuple(x.shape)} ({problem}): {first}")
    layer = failing_layer(model, err)
    where = f" in layer {layer!r}" if layer else ""
    return ModelError(f"{type(model).__name__} failed{where} on a batch of shape {tuple(x.shape)}: "
                      f"{type(err).__name__}: {first}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def input_mismatch(model: nn.Module, x: torch.Tensor) -> str | None:
    """What in batch *x* does not fit *model*'s first layer (Linear, ConvNd, RNN) or its built input size; None when
    nothing visibly does."""
    config = getattr(model, "_hub_mixin_config", None)  # the paper models' PyTorchModelHubMixin arguments
    if isinstance(config, Mapping) and config.get("input_size") is not None and x.dim() >= 3:
        size = config["input_size"]
        hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)[-2:]
        if tuple(x.shape[-2:]) != hw:
            return expected_input(model)
    name, layer = first_layer(model)
    if layer is None:
        return None
    flat = int(torch.tensor(x.shape[1:]).prod()) if x.dim() > 1 else None
    if isinstance(layer, nn.Linear) and layer.in_features not in (x.shape[-1] if x.dim() else None, flat):
        return expected_input(model)
    if isinstance(layer, nn.RNNBase) and (x.dim() not in (2, 3) or x.shape[-1] != layer.input_size):
        return f"its first layer {name!r} is {type(layer).__name__}(input_size={layer.input_size})"
    for kind, dims in ((nn.Conv1d, 3), (nn.Conv2d, 4), (nn.Conv3d, 5)):
        if isinstance(layer, kind) and (x.dim() != dims or x.shape[1] != layer.in_channels):
            return expected_input(model)
    return None


def first_layer(model: nn.Module) -> tuple[str, nn.Module | None]:
    """The first Linear, convolution or RNN module *model* runs (forward order where FX traces it, else definition
    order)."""
    from masc_probe.layers._trace import trace  # the layers' own index, in forward order

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.RNNBase)
    modules = dict(model.named_modules())
    order = [t.module for t in trace(model).taps.values() if t.module is not None]
    for name in [*order, *modules]:
        if isinstance(modules.get(name), kinds):
            return name, modules[name]
    return "", None


def failing_layer(model: nn.Module, err: BaseException) -> str | None:
    """The innermost module of *model* whose forward was running when *err* was raised (from its traceback)."""
    names = {id(m): n for n, m in model.named_modules() if n}
    found, tb = None, err.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            found = names[id(owner)]
        tb = tb.tb_next
    return found


def expected_input(model: nn.Module) -> str:
    """What *model* says it takes: the input it was built for (paper models, timm's default) and its first layer."""
    parts = []
    config = getattr(model, "_hub_mixin_config", None)  # the paper models' PyTorchModelHubMixin arguments
    default = getattr(model, "pretrained_cfg", None)  # timm
    if isinstance(config, Mapping) and config.get("input_size") is not None:
        size = config["input_size"]
        hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)[-2:]
        parts.append(f"it was built for inputs {(int(config.get('in_chans', 1)), *hw)}")
    elif isinstance(default, Mapping) and default.get("input_size"):
        parts.append(f"timm's default input is {tuple(default['input_size'])}")
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            parts.append(f"its first layer {name!r} is Linear(in_features={module.in_features})")
            break
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            parts.append(f"its first layer {name!r} is {type(module).__name__}(in_channels={module.in_channels})")
            break
    return "; ".join(parts) or f"{type(model).__name__} does not say what input it takes"


def batches(data: Iterable[Any], *, world: World, shard: bool, progress: bool,
            desc: str) -> Iterator[tuple[Any, Any]]:
    """The batches this process handles, each with its rows' sample indices or None (see ``_distributed``), under a
    progress bar (quiet when *progress* is False or not a TTY)."""
    from tqdm.auto import tqdm

    from masc_probe.runner._distributed import local_batches

    pairs, total = local_batches(data, world, shard=shard)
    yield from tqdm(pairs, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                    disable=None if progress and world.main else True)


_LIBC: Any = None


def release_free_memory() -> None:
    """Hand memory the allocator holds but no longer uses back to the system (glibc only; elsewhere a no-op).

    A pass allocates and frees many 1-32 MB blocks (activations, copies, batch products). glibc serves blocks of
    that size from its heap once its dynamic mmap threshold has risen, and the freed space stays in the process:
    measured here, resident memory grew by ~50 MB per 1,000 images of ResNet-18 rows without this call and stayed
    flat with it, so that the data size, not the budget, would set the peak.
    """
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = libc if hasattr(libc, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def sync(device: torch.device) -> float:
    """A time stamp after the device's queued work is done (so per-phase timings mean something on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
