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
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from masc_probe.errors import InputError
from masc_probe.runner._distributed import World
from masc_probe.runner._cache import Reducer

logger = logging.getLogger("masc_probe.runner")


def model_device(model: nn.Module) -> torch.device:
    for tensors in (model.parameters(), model.buffers()):
        for tensor in tensors:
            return tensor.device
    return torch.device("cpu")


def logits_of(output: Any) -> torch.Tensor | None:
    """The class scores in a model's output: the tensor itself, ``.logits``, ``["logits"]`` or the first element."""
    if isinstance(output, torch.Tensor):
        return output
    value = getattr(output, "logits", None)
    if value is None and isinstance(output, dict):
        value = output.get("logits")
    if value is None and isinstance(output, (tuple, list)) and output:
        value = output[0]
    return value if isinstance(value, torch.Tensor) else None


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
        except RuntimeError as err:
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            # Most often a batch of the wrong shape ("mat1 and mat2 shapes cannot be multiplied" from deep inside):
            # say what came and what the model takes; the model's own error stays attached as the cause.
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"the model cannot take a batch of shape {tuple(x.shape)} ({expected_input(self.model)})"
                             f": {first}") from err
        logits = None
        if self.want_logits:
            if self._out_name is not None:
                logits = values[self._out_name]
            elif self._hook is not None:
                logits = logits_of(self._captured)
            else:
                flags = [(m, m.training) for m in self.model.modules()]
                self.model.eval()
                try:
                    with torch.no_grad():
                        logits = logits_of(self.model(x))
                finally:
                    for m, training in flags:
                        m.training = training
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
