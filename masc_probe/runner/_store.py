"""Where a runner keeps its fitted probes: in memory up to a byte budget, the rest in safetensors files on disk.

MASC's fitted form is a (d, Σk_c) basis per layer and label set; on wide layers with many training samples that is
hundreds of MB each (d = 4,096 and Σk_c = 30,000: 0.5 GB), so holding every one would let the dataset, not the budget,
set the memory. Probes past the budget are written out once (each in its own saved form) and read back one at a time
when scored; ``evaluate`` and the training-accuracy check then go probe by probe over cached rows.

One probe on disk is ``<prefix>.safetensors`` (its arrays) + ``<prefix>.json`` (its metadata), as the probe's own
``to_state`` gives them; the same files carry fitted probes between the processes of a multi-process fit.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from masc_probe import _atomic
from masc_probe.probes._registry import SPECS, probe_from_state
from masc_probe.runner._keys import Key, public_key


def probe_state(probe: str, est: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The probe's own ``to_state()``, its metadata naming it by its registry name *probe*.

    Raises:
        InputError: If the probe's state cannot be written without pickle.
    """
    arrays, meta = est.to_state()
    return arrays, {"probe": probe, **meta}


def write_tensors(path: Path, arrays: dict[str, torch.Tensor], *, durable: bool = True) -> None:
    """Arrays to one safetensors file: atomically (flushed to disk, then renamed) when *durable*, else written in
    place (a file only this process reads back, in its own temporary folder)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in arrays.items()}
    if durable:
        _atomic.write_with(path, lambda tmp: save_file(tensors, str(tmp)))
    else:
        save_file(tensors, str(path))


def write_probe(prefix: Path, probe: str, est: Any, *, durable: bool = True) -> None:
    """One probe to ``prefix.safetensors`` + ``prefix.json`` (*durable*: see :func:`write_tensors`)."""
    arrays, meta = probe_state(probe, est)
    write_tensors(prefix.with_suffix(".safetensors"), arrays, durable=durable)
    text = json.dumps(meta, indent=1) + "\n"
    if durable:
        _atomic.write_text(prefix.with_suffix(".json"), text)
    else:
        prefix.with_suffix(".json").write_text(text)


def read_probe(prefix: Path, device: torch.device) -> Any:
    """The probe :func:`write_probe` wrote, on *device*."""
    from safetensors.torch import load_file

    meta = json.loads(prefix.with_suffix(".json").read_text())
    return probe_from_state(load_file(prefix.with_suffix(".safetensors")), meta, device)


def probe_info(probe: str, est: Any) -> dict[str, Any]:
    """What the report needs without loading a spilled probe: MASC's k_c per class and the solver's form."""
    info: dict[str, Any] = {}
    entry = SPECS[probe]
    if entry.subspaces:
        info["n_components"] = [int(k) for k in est.n_components_]
    solver = getattr(est, "solver_", None) if entry.moments == 2 else None
    if solver:
        info["solver"] = solver
    return info


class ProbeStore(Mapping[Key, Any]):
    """Fitted probes by (layer, probe, label set), resident while they fit *budget* bytes, spilled after that.

    Args:
        budget: Bytes of fitted probes held in memory.
        parent: Folder for the spill folder (created on the first spill, removed by :meth:`close` or when the
            store is garbage-collected).
        device: Where spilled probes are loaded.
    """

    def __init__(self, budget: int, parent: str | Path | None, device: torch.device) -> None:
        self.budget, self.parent, self.device = int(budget), parent, device
        self._resident: dict[Key, Any] = {}
        self._spilled: dict[Key, Path] = {}
        self._info: dict[Key, dict[str, Any]] = {}
        self._order: list[Key] = []
        self._used = 0
        self._dir: Path | None = None
        self._finalizer: weakref.finalize | None = None

    def put(self, key: Key, est: Any) -> None:
        """Add a fitted probe; it stays in memory if it fits what is left of the budget, else it goes to disk."""
        self._info[key] = probe_info(key[1], est)
        size = int(getattr(est, "resident_bytes", lambda: 0)())
        if key not in self._order:
            self._order.append(key)
        if self._used + size <= self.budget or size == 0:
            self._resident[key] = est
            self._used += size
            return
        if self._dir is None:
            if self.parent is not None:
                Path(self.parent).mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="masc-probe-fitted-", dir=self.parent))
            self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        prefix = self._dir / f"p{len(self._spilled):05d}"
        # The spill folder is this store's own, read only by this process after the write returns: no fsync.
        write_probe(prefix, key[1], est, durable=False)
        self._spilled[key] = prefix

    def reorder(self, keys: list[Key]) -> None:
        """Iterate in this order (the report reads layers in forward order)."""
        self._order = [k for k in keys if k in self._resident or k in self._spilled]

    def resident(self, key: Key) -> bool:
        return key in self._resident

    @property
    def spilled(self) -> list[Key]:
        return [k for k in self._order if k in self._spilled]

    def info(self, key: Key) -> dict[str, Any]:
        return self._info[key]

    def __getitem__(self, key: Key) -> Any:
        if key in self._resident:
            return self._resident[key]
        if key in self._spilled:
            return read_probe(self._spilled[key], self.device)
        raise KeyError(key)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def close(self) -> None:
        """Drop every probe and delete the spill folder."""
        for est in self._resident.values():
            getattr(est, "close", lambda: None)()
        self._resident.clear()
        self._spilled.clear()
        self._order.clear()
        if self._finalizer is not None:
            self._finalizer()
        self._dir, self._finalizer = None, None


class NamedProbes(Mapping[tuple[str, str, str], Any]):
    """``ProbeRunner.estimators_``: a fitted :class:`ProbeStore` under the keys users spell, ``(layer, probe, label
    set)`` with a control model's layer as ``"<control>::<layer>"`` (``_controls.public_key``).

    Example::

        runner.estimators_[("fc1", "masc", "true")].predict(rows)
        runner.estimators_[("init::fc1", "masc", "true")]  # the init control's probe at fc1
    """

    def __init__(self, store: ProbeStore) -> None:
        self.store = store
        self._keys = {public_key(key): key for key in store}

    def __getitem__(self, key: tuple[str, str, str]) -> Any:
        return self.store[self._keys[key]]

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def device(self) -> torch.device:
        """Where spilled probes are loaded."""
        return self.store.device

    @property
    def spilled(self) -> list[tuple[str, str, str]]:
        """The probes kept on disk."""
        return [public_key(key) for key in self.store.spilled]
