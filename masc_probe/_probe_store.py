"""Where a runner keeps its fitted probes: in memory up to a byte budget, the rest in safetensors files on disk.

MASC's fitted form is a (d, Σk_c) basis per layer and label set; on wide layers with many training samples that is
hundreds of MB each (d = 4,096 and Σk_c = 30,000: 0.5 GB), so holding every one would let the dataset, not the budget,
set the memory. Probes past the budget are written out once (``_probe_state``'s format) and read back one at a time
when scored; ``evaluate`` and the training-accuracy check then go probe by probe over cached rows.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from masc_probe._probe_state import load_estimator, save_estimator

Key = tuple[str, str, str]


def resident_bytes(probe: str, est: Any) -> int:
    """Bytes a fitted probe keeps in memory (its arrays; small objects count as 0)."""
    solution = getattr(est, "_solution", None)
    if probe == "masc" and solution is not None:
        return int(solution.stacked[0].numel()) * 4
    if isinstance(solution, torch.Tensor):
        return int(solution.numel()) * solution.element_size()
    layer = getattr(est, "_layer", None)
    if layer is not None:
        return sum(int(p.numel()) * p.element_size() for p in layer.parameters())
    fit_x = getattr(est, "_fit_X", None)
    return int(getattr(fit_x, "nbytes", 0))


def probe_info(probe: str, est: Any) -> dict[str, Any]:
    """What the report needs without loading a spilled probe: MASC's k_c per class and the solver's form."""
    info: dict[str, Any] = {}
    if probe == "masc":
        info["n_components"] = [int(k) for k in est.n_components_]
    solver = getattr(est, "solver_", None) if probe in ("masc", "velpic") else None
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
        size = resident_bytes(key[1], est)
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
        save_estimator(prefix, key[1], est)
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
            return load_estimator(self._spilled[key], self.device)
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
