"""The package's exceptions.

Every message is one line that names what was expected and what arrived, so that the CLI can print it as it is.
"""

from __future__ import annotations


class MascProbeError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(MascProbeError, ValueError):
    """A value given by the user is out of range, of the wrong shape or of the wrong kind."""


class UnknownNameError(InputError):
    """A name (layer, probe, model, dataset, mode) is not one of the valid ones; the message lists the closest."""


class DataUnavailableError(MascProbeError, RuntimeError):
    """A dataset cannot be read here, for example a Hub dataset while offline."""


class HubError(MascProbeError, RuntimeError):
    """A Hub operation failed: a missing repo or file, a refused upload."""


class ModelError(MascProbeError, RuntimeError):
    """A model failed inside its own forward on a batch it should take; the message carries the model's own error
    and the layer it came from."""


class UnsafeCheckpointError(HubError):
    """A checkpoint is offered only in a pickled format, which this package never loads from a hub."""


def closest(name: str, valid: list[str] | tuple[str, ...], n: int = 5) -> str:
    """Return ``"did you mean: a, b?"`` for the valid names closest to *name*, or a short list of valid names."""
    import difflib

    near = difflib.get_close_matches(name, list(valid), n=n, cutoff=0.5)
    if near:
        return "did you mean: " + ", ".join(near) + "?"
    shown = list(valid)[:n]
    more = f", … ({len(valid)} in all)" if len(valid) > n else ""
    return "valid: " + ", ".join(shown) + more
