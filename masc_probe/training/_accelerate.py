"""The Accelerate state of a training run: made for the run when the process has none, joined when the user's own
Accelerator fits the run's settings, and released when the run that made it ends (:func:`train` calls
:func:`release_state` in a ``finally``), so that a run leaves the process as it found it.

Accelerate keeps one state per process; a second Accelerator joins it and cannot change its mixed precision or
device, and Accelerate has no public call that clears it (``AcceleratorState._reset_state`` is used here on the
state a run made itself, never on one someone else made).
"""

from __future__ import annotations

from typing import Any

from masc_probe.errors import InputError
from masc_probe.training._config import TrainConfig

__all__ = ["make_accelerator", "release_state"]

# The process-wide Accelerate state a run made itself and has not released (a state left all the same, by a run
# killed between making and releasing it, is released by the next run): the values it held, and whether the run
# made the PartialState under it too.
_MADE: dict[str, Any] | None = None


def make_accelerator(config: TrainConfig) -> tuple[Any, bool]:
    """An Accelerator for *config*, and whether this call made the process-wide state it stands on.

    A state someone else made — the user's own Accelerator — is used as it is when it fits *config*, refused in one
    line when it does not, and never reset under its owner.

    Raises:
        InputError: An Accelerator made elsewhere in this process has other settings than *config*.
    """
    global _MADE
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState, is_initialized
    from accelerate.utils import DataLoaderConfiguration

    if _MADE is not None and is_initialized() and _still_ours():
        release_state()
    made = not is_initialized()
    if not made:
        state = AcceleratorState()  # joins the present state, changes nothing
        if state.mixed_precision != config.mixed_precision or (config.cpu and state.device.type != "cpu"):
            raise InputError(
                f"expected settings this process's Accelerator can take (mixed_precision={state.mixed_precision!r} "
                f"on {state.device}), got mixed_precision={config.mixed_precision!r}{', cpu=True' * config.cpu}; "
                "train with its settings, or before creating it")
    partial = made and not PartialState._shared_state
    # split_batches: the loader's batch is the global one, divided among the processes. non_blocking: batches the
    # loader pinned are copied to a CUDA device without blocking.
    accelerator = Accelerator(cpu=config.cpu, mixed_precision=config.mixed_precision,
                              dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True))
    if made:
        _MADE = {"values": dict(vars(AcceleratorState())), "partial": partial}
    return accelerator, made


def release_state() -> None:
    """Clear the state a run made, so that the process is as the run found it. A multi-process job keeps its state,
    and its process group."""
    global _MADE
    from accelerate.state import AcceleratorState, PartialState

    if _MADE is not None and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=_MADE["partial"])
        _MADE = None


def _still_ours() -> bool:
    """Whether the present state is the very one a run made (same objects, not one rebuilt alike since)."""
    from accelerate.state import AcceleratorState

    now, then = vars(AcceleratorState()), (_MADE or {}).get("values", {})
    return now.keys() == then.keys() and all(now[k] is v for k, v in then.items())
