"""What rebuilds a run's initial (epoch-0) weights, bit for bit: the seed they were drawn with and a SHA-256 of them.

:func:`train` records ``{"seed", "init_sha256"}`` under ``masc_probe.init`` in every ``config.json`` it writes (the
final model and each checkpoint; a pushed memorizer carries it too). :func:`run_initial_model` reads that record,
rebuilds the network as the pipeline built it before training (``set_seed(seed)`` then ``load_model(spec, ...)``;
from the run's ``checkpoints/epoch-0000`` when it was kept) and accepts it only when its digest equals the recorded
one. A seed and a digest are 80 bytes; an ``init.safetensors`` would double the size of a run folder.

>>> len(init_record(torch.nn.Linear(2, 1), seed=0)["init_sha256"])
64
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from masc_probe.errors import InputError

__all__ = ["initial_model", "init_record", "run_initial_model", "state_sha256"]


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's state dict: every entry by name (sorted), with its dtype, shape and bytes (on the CPU).

    Equal digests mean equal weights and buffers bit for bit, wherever the model lives.
    """
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu")
        h.update(f"{name}\x00{tensor.dtype}\x00{tuple(tensor.shape)}\x00".encode())
        h.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def init_record(model: nn.Module, seed: int) -> dict[str, Any]:
    """The ``masc_probe.init`` entry of a run's config: the training seed and the digest of *model* as it starts."""
    return {"seed": int(seed), "init_sha256": state_sha256(model)}


def initial_model(spec: str, *, seed: int, num_classes: int | None, input_size: Sequence[int] | None,
                  in_chans: int | None = None) -> nn.Module:
    """The network a run starts from: ``set_seed(seed)``, then ``load_model(spec, ...)`` — what the pipeline (and
    ``train`` given a spec) does right before training.

    Args:
        spec: A model spec that builds a new model (``mlp``, ``cnn``, ``timm/<name>``, …).
        seed: The run's seed.
        num_classes: Output classes.
        input_size: The input's ``(C, H, W)`` (or ``(H, W)``).
        in_chans: Input channels (default: the C of a 3-long *input_size*).
    """
    from accelerate.utils import set_seed

    from masc_probe.models import load_model

    size = [int(s) for s in input_size] if input_size is not None else None
    if in_chans is None and size is not None and len(size) == 3:
        in_chans = size[0]
    set_seed(int(seed))
    return load_model(spec, num_classes=num_classes, in_chans=in_chans,
                      input_size=size if size is not None and len(size) == 3 else None)


def run_initial_model(source: str | os.PathLike[str], *, revision: str | None = None
                      ) -> tuple[nn.Module, dict[str, Any]] | None:
    """The epoch-0 network of a run folder, checkpoint folder or ``hf-hub:`` memorizer, verified against its record.

    Args:
        source: A folder whose ``config.json`` has a ``masc_probe`` key, or ``hf-hub:<user>/<repo>``.
        revision: Hub revision of an ``hf-hub:`` source.

    Returns:
        ``(model, record)`` with ``record = {"seed", "init_sha256"}`` when the weights rebuilt here have the
        recorded digest; None when the run recorded none (trained before masc-probe kept it, or not by
        masc-probe).

    Raises:
        InputError: The run recorded its initial weights but they cannot be rebuilt here with that digest (another
            torch version draws other numbers, or the run was handed a model built some other way); the message
            says how to probe without them or with a control model of one's own.
    """
    from masc_probe.models import load_model, read_config

    config = read_config(source, revision=revision, required=False)
    record = config.get("init")
    if not isinstance(record, Mapping) or record.get("seed") is None or not record.get("init_sha256"):
        return None
    want = str(record["init_sha256"])
    tried = []
    epoch0 = os.path.join(os.fspath(source), "checkpoints", "epoch-0000")
    if os.path.isfile(os.path.join(epoch0, "model.safetensors")):
        model = load_model(epoch0)
        got = state_sha256(model)
        if got == want:
            return model, dict(record)
        tried.append(f"checkpoints/epoch-0000 has SHA-256 {got[:12]}…")
    try:
        model = initial_model(str(config.get("model")), seed=int(record["seed"]), num_classes=config.get("num_classes"),
                              input_size=config.get("input_size"), in_chans=config.get("in_chans"))
    except InputError as exc:
        tried.append(f"rebuilding {config.get('model')!r} failed: {exc}")
    else:
        got = state_sha256(model)
        if got == want:
            return model, dict(record)
        tried.append(f"set_seed({record['seed']}) + load_model({config.get('model')!r}) gives SHA-256 {got[:12]}… "
                     f"(torch {torch.__version__})")
    raise InputError(f"expected to rebuild the initial weights of {os.fspath(source)} (SHA-256 {want[:12]}…), got "
                     f"other weights: {'; '.join(tried)}; probe with controls=('input',) (--controls input), or "
                     "pass the untrained network yourself: ProbeRunner(model, controls={'init': untrained})")
