"""Per-class sufficient statistics that stream, merge and spill to disk, for the statistic probes.

For every class c the store keeps the count n_c, the sum Σx (float64; when a first moment is wanted: NCM, VeLPIC),
and, when a second moment is wanted (MASC, VeLPIC), ONE exact form of it:

* ``scatter``: S_c = X_cᵀX_c, a (d, d) float64 accumulator (each batch's product is taken in float32);
* ``gram``: the rows X_c themselves (float32), in memory or spilled to files in a temporary folder, from which
  G_c = X_c X_cᵀ (n_c, n_c) is formed at solve time.

Both give the same nonzero eigenvalues; the cheaper one to decompose is the smaller matrix. Policy (``solver="auto"``,
the same for ``fit`` and for streaming, where n is not known ahead): a class keeps its rows while n_c <= d and turns
into a scatter (exactly: S_c = X_cᵀX_c) once n_c > d, if one more scatter class fits in ``max_memory`` (16 d² bytes:
the float64 accumulator and, later, its kept decomposition); otherwise it stays rows. Rows held in memory beyond
``max_memory`` are written to disk. Both forms are exact, so results never depend on the order of the batches (only
which classes got a scatter under a tight budget may). ``solver="scatter"`` / ``"gram"`` force one form.
Memory besides the statistics: each solved class keeps two m × m float32 factors, m = min(n_c, d) by form.

What is additive: n_c, Σx and S_c add exactly over batches, shards and processes (one all-reduce each);
rows concatenate (a Gram matrix does not add: it has cross terms).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from masc_probe.errors import InputError
from masc_probe.probes._linalg import scatter

__all__: list[str] = []  # internal module

logger = logging.getLogger(__name__)

_ROW_BLOCK = 8192  # rows read back from disk per block when converting or merging


class _Entry:
    """The statistics of one class."""

    def __init__(self, d: int, device: torch.device, *, first_moment: bool = True) -> None:
        self.count = 0
        self.sum = torch.zeros(d, dtype=torch.float64, device=device) if first_moment else None
        self.scatter: torch.Tensor | None = None
        self.chunks: list[torch.Tensor] = []  # float32 (n_i, d), never modified after being stored
        self.n_spilled = 0
        self.path: str | None = None
        self.n_files = 0  # spill files this class has had (a file dropped by _to_scatter is never reused)

    @property
    def n_memory_rows(self) -> int:
        return sum(int(c.shape[0]) for c in self.chunks)


class ClassStats:
    """Sufficient statistics per class label.

    Args:
        n_features: d.
        second_moment: keep S_c or the rows (MASC, VeLPIC); False keeps only counts and sums (NCM).
        first_moment: keep Σx per class (NCM, VeLPIC); MASC does not need it.
        solver: ``"auto"``, ``"scatter"`` or ``"gram"`` (see the module docstring).
        max_memory: bytes allowed for accumulators and rows held in memory.
        device: where tensors live.
        classes: the fixed set of labels, or None to grow it as labels arrive.
    """

    def __init__(
        self,
        n_features: int,
        *,
        second_moment: bool,
        solver: str,
        max_memory: int,
        device: torch.device,
        classes: np.ndarray | None = None,
        first_moment: bool = True,
    ) -> None:
        self.d = n_features
        self.first_moment = first_moment
        self.second_moment = second_moment
        self.solver = solver
        self.max_memory = max_memory
        self.device = device
        self.fixed = classes is not None
        self.classes = np.asarray(classes) if classes is not None else np.asarray([])
        self.entries: dict[Any, _Entry] = {label: self._new_entry() for label in self.classes.tolist()}
        self._dir: str | None = None
        self._finalizer: weakref.finalize | None = None
        self.closed = False

    def _new_entry(self) -> _Entry:
        return _Entry(self.d, self.device, first_moment=self.first_moment)

    # -- adding data ---------------------------------------------------------------------------------------------
    def add(self, X: torch.Tensor, y: np.ndarray) -> None:
        """Add a batch: X (n, d) float32 on ``device``, y (n,) labels."""
        self._check_open()
        labels, inverse = np.unique(y, return_inverse=True)
        if self.fixed:
            unknown = np.setdiff1d(labels, self.classes)
            if unknown.size:
                raise InputError(
                    f"y must hold only the classes given at the first partial_fit {self.classes.tolist()}; "
                    f"got {unknown.tolist()}"
                )
        elif self.classes.size == 0:
            self.classes = labels
        else:
            self.classes = np.union1d(self.classes, labels)
        # One gather puts each class's rows together; the chunks are views of this private copy.
        order = torch.from_numpy(np.argsort(inverse, kind="stable")).to(X.device)
        grouped = X.index_select(0, order)
        sizes = np.bincount(inverse, minlength=len(labels)).tolist()
        for label, rows in zip(labels.tolist(), torch.split(grouped, sizes), strict=True):
            entry = self.entries.get(label)
            if entry is None:
                entry = self.entries[label] = self._new_entry()
            entry.count += int(rows.shape[0])
            if entry.sum is not None:
                entry.sum += rows.sum(0, dtype=torch.float64)
            if self.second_moment:
                self._add_second(entry, rows)
        self._spill_if_needed()

    def _add_second(self, entry: _Entry, rows: torch.Tensor) -> None:
        if entry.scatter is None and self.solver == "scatter":
            entry.scatter = torch.zeros(self.d, self.d, dtype=torch.float64, device=self.device)
        if entry.scatter is not None:
            entry.scatter += scatter(rows).double()
            return
        entry.chunks.append(rows)
        if self.solver == "auto" and entry.count > self.d and self._scatter_fits():
            self._to_scatter(entry)

    def _scatter_fits(self) -> bool:
        n_scatter = sum(e.scatter is not None for e in self.entries.values())
        return (n_scatter + 1) * self.d * self.d * 16 <= self.max_memory

    def _to_scatter(self, entry: _Entry) -> None:
        """Replace a class's rows by S_c = X_cᵀX_c (exact)."""
        total = torch.zeros(self.d, self.d, dtype=torch.float64, device=self.device)
        for block in self._row_blocks(entry):
            total += scatter(block).double()
        entry.scatter, entry.chunks = total, []
        self._drop_file(entry)

    # -- rows on disk ----------------------------------------------------------------------------------------------
    def _spill_if_needed(self) -> None:
        in_memory = sum(e.n_memory_rows for e in self.entries.values()) * self.d * 4
        if in_memory <= self.max_memory:
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="masc-probe-rows-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, True)
            logger.info("class rows exceed max_memory=%d bytes; spilling them to %s", self.max_memory, self._dir)
        for i, entry in enumerate(self.entries.values()):
            if not entry.chunks:
                continue
            if entry.path is None:
                # A private folder (mkdtemp) of this object's: a fixed name per class cannot collide.
                entry.path = os.path.join(self._dir, f"class{i}-{entry.n_files}.f32")
                entry.n_files += 1
            with open(entry.path, "ab") as f:
                for chunk in entry.chunks:
                    chunk.cpu().numpy().tofile(f)
                    entry.n_spilled += int(chunk.shape[0])
            entry.chunks = []

    def _disk_rows(self, entry: _Entry) -> torch.Tensor | None:
        if not entry.n_spilled or entry.path is None:
            return None
        # Copy-on-write mapping: a writable array for torch, nothing written back to the file.
        mapped = np.memmap(entry.path, dtype=np.float32, mode="c", shape=(entry.n_spilled, self.d))
        return torch.from_numpy(mapped)

    def _drop_file(self, entry: _Entry) -> None:
        if entry.path is not None:
            os.remove(entry.path)
        entry.path, entry.n_spilled = None, 0

    def _row_blocks(self, entry: _Entry) -> Iterator[torch.Tensor]:
        disk = self._disk_rows(entry)
        if disk is not None:
            for start in range(0, disk.shape[0], _ROW_BLOCK):
                yield disk[start : start + _ROW_BLOCK].to(self.device)
        yield from entry.chunks

    def rows(self, label: Any) -> torch.Tensor:
        """All rows of a class, (n_c, d) float32 (a disk mapping when spilled and nothing is left in memory)."""
        entry = self.entries[label]
        disk = self._disk_rows(entry)
        if disk is not None and not entry.chunks:
            return disk if self.device.type == "cpu" else disk.to(self.device)
        parts = ([disk.to(self.device)] if disk is not None else []) + entry.chunks
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return torch.zeros(0, self.d, dtype=torch.float32, device=self.device)
        return torch.cat(parts)

    @property
    def spill_dir(self) -> str | None:
        """The temporary folder holding spilled rows, or None."""
        return self._dir

    def close(self) -> None:
        """Delete the spilled rows. What was solved from them stays usable; adding or merging afterwards is refused."""
        if self._finalizer is not None:
            self._finalizer()
            self.closed = True
        self._dir, self._finalizer = None, None
        for entry in self.entries.values():
            entry.path, entry.n_spilled = None, 0

    def _check_open(self) -> None:
        if self.closed:
            raise InputError("these statistics were closed (their spilled rows deleted); fit again to add data")

    def __getstate__(self) -> dict[str, Any]:
        # A pickle carries the spilled rows themselves, never a path into a folder that dies with this object.
        state = self.__dict__.copy()
        entries = {}
        for label, entry in self.entries.items():
            copy = _Entry.__new__(_Entry)
            copy.__dict__.update(entry.__dict__)
            disk = self._disk_rows(entry)
            if disk is not None:
                copy.chunks = [disk.to(self.device).clone(), *entry.chunks]
            copy.path, copy.n_spilled = None, 0
            entries[label] = copy
        state.update(entries=entries, _dir=None, _finalizer=None)
        return state

    # -- merging and all-reduce --------------------------------------------------------------------------------------
    def merge(self, other: ClassStats) -> None:
        """Add another shard's statistics (exact)."""
        self._check_open()
        other._check_open()
        if (other.d, other.first_moment, other.second_moment) != (self.d, self.first_moment, self.second_moment):
            raise InputError(f"merge needs statistics of {self.d} features; got {other.d}")
        if self.fixed:
            unknown = np.setdiff1d(other.classes, self.classes)
            if unknown.size:
                expected = self.classes.tolist()
                raise InputError(f"merge needs a shard with classes among {expected}; got {unknown.tolist()}")
        else:
            self.classes = np.union1d(self.classes, other.classes) if self.classes.size else other.classes.copy()
        for label, theirs in other.entries.items():
            mine = self.entries.get(label)
            if mine is None:
                mine = self.entries[label] = self._new_entry()
            mine.count += theirs.count
            if mine.sum is not None:
                mine.sum += theirs.sum.to(self.device)
            if not self.second_moment:
                continue
            if theirs.scatter is not None:
                if mine.scatter is None:
                    self._to_scatter(mine)
                mine.scatter += theirs.scatter.to(self.device)
            for block in other._row_blocks(theirs):
                # A private copy: the other shard may close (and delete its files) at any time.
                self._add_second(mine, block.to(self.device).clone())
            self._spill_if_needed()

    def additive(self) -> dict[str, torch.Tensor]:
        """The statistics in their additive form, stacked in class order: a sum over shards is the exact whole.

        Returns:
            ``count`` (C,) and, as the probe keeps them, ``sum`` (C, d) and ``scatter`` (C, d, d); float64.
        """
        self._check_open()
        entries = [self.entries[label] for label in self.classes.tolist()]
        out = {"count": torch.tensor([float(e.count) for e in entries], dtype=torch.float64, device=self.device)}
        if self.first_moment:
            out["sum"] = torch.stack([e.sum for e in entries])
        if self.second_moment:
            scatters = []
            for e in entries:
                s = torch.zeros(self.d, self.d, dtype=torch.float64, device=self.device)
                if e.scatter is not None:
                    s += e.scatter
                for block in self._row_blocks(e):
                    s += scatter(block).double()
                scatters.append(s)
            out["scatter"] = torch.stack(scatters)
        return out

    def load_additive(self, stats: dict[str, torch.Tensor]) -> None:
        """Replace everything by (summed) additive statistics as ``additive`` returns them."""
        self.close()
        self.closed = False
        self.entries = {}
        for i, label in enumerate(self.classes.tolist()):
            entry = self.entries[label] = self._new_entry()
            entry.count = int(round(float(stats["count"][i])))
            if self.first_moment:
                entry.sum = stats["sum"][i].to(self.device, torch.float64).clone()
            if self.second_moment:
                entry.scatter = stats["scatter"][i].to(self.device, torch.float64).clone()
