"""What ProbeRunner streams: batches split into images and label sets, reducers, and the on-disk row cache.

The row cache holds flattened training features, one raw float32 file per layer, appended batch by batch and read
back as memory maps. It serves the probes that need the feature matrix (linear, knn, lda, qda), the Gram-form MASC
layers and the training-accuracy pass, so the model runs once. Several processes write beside each other (one
sub-folder per rank) and any of them reads the union.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masc_probe.data._batches import split_batch as read_batch  # the package's one reader of the batch forms
from masc_probe.errors import InputError

# RowCache.rows: selected rows this close are read through (one read, not a seek and a read each), in spans of at
# most this many bytes.
_GAP_BYTES = 256 * 1024
_SPAN_BYTES = 32 * 1024**2

def split_batch(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Split one batch into the model input and its label sets.

    Args:
        batch: ``(x, y)``, ``(x, y, y_true)`` (``y`` corrupted; an index may follow) or a dict with an image key
            (``image``, ``pixel_values`` or ``x``), ``label`` and optionally ``true_label``.

    Returns:
        ``(x, {"label": y})`` for one label set, ``(x, {"corrupted": y, "true": y_true})`` for two; labels are
        int64 CPU tensors.

    Raises:
        InputError: If the batch has another form, or labels do not match the samples.
    """
    b = read_batch(batch)
    x = b.x if isinstance(b.x, torch.Tensor) else torch.as_tensor(np.asarray(b.x))
    if b.y_true is None:
        return x, {"label": _labels(b.y, len(x))}
    return x, {"corrupted": _labels(b.y, len(x)), "true": _labels(b.y_true, len(x))}


def _labels(y: Any, n: int) -> torch.Tensor:
    t = torch.as_tensor(y).detach().to("cpu").reshape(-1)
    if t.is_complex():
        raise InputError(f"expected integer class labels, got {t.dtype} labels")
    if t.is_floating_point():
        # Whole numbers stored as floats are the labels they name; a fraction would be truncated into another class.
        whole = torch.isfinite(t) & (t == t.round())
        if not bool(whole.all()):
            raise InputError(f"expected integer class labels, got {t.dtype} labels such as "
                             f"{float(t[~whole][0])!r} (a float label is never rounded)")
    t = t.long()
    if len(t) != n:
        raise InputError(f"labels must have one entry per sample ({n}), got {len(t)}")
    return t


class Reducer:
    """Maps a layer's activation (B, ...) to rows (B, D): flatten (default), global average pooling, or a seeded
    random projection of the flattened activation.

    Args:
        spec: None (flatten, as the paper), ``"gap"`` (mean over every axis after the channel axis of a (B, C, ...)
            activation; 2-D activations pass unchanged) or ``"random:D"`` (Gaussian projection to D dimensions,
            scaled by 1/sqrt(D), seeded per layer).
        seed: Seed of the random projections.

    Raises:
        InputError: If *spec* is none of these.
    """

    def __init__(self, spec: str | None, *, seed: int = 0) -> None:
        self.spec, self.seed, self.out_dim = spec, int(seed), None
        self._proj: dict[str, torch.Tensor] = {}
        if spec in (None, "none", "flatten"):
            self.kind = "flatten"
        elif spec == "gap":
            self.kind = "gap"
        elif isinstance(spec, str) and spec.startswith("random:") and spec[7:].isdigit() and int(spec[7:]) > 0:
            self.kind, self.out_dim = "random", int(spec[7:])
        else:
            raise InputError(f"reducer must be None, 'gap' or 'random:D' with D > 0, got {spec!r}")

    def projection(self, layer: str, d: int) -> torch.Tensor:
        """The (d, D) projection matrix of *layer* (random reducer only), generated on the CPU from the seed."""
        if layer not in self._proj:
            digest = hashlib.sha256(f"{self.seed}/{layer}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
            self._proj[layer] = torch.randn(d, self.out_dim, generator=gen) / self.out_dim**0.5
        return self._proj[layer]

    @property
    def projections(self) -> dict[str, torch.Tensor]:
        """The projection matrices generated so far, by layer (empty unless random)."""
        return dict(self._proj)

    def __call__(self, layer: str, act: torch.Tensor) -> torch.Tensor:
        """Rows of *act*: (B, ...) → (B, D), float32."""
        if self.kind == "gap" and act.ndim > 2:
            act = act.float().mean(dim=tuple(range(2, act.ndim)))
        rows = act.reshape(act.shape[0], -1).float()
        if self.kind == "random":
            proj = self.projection(layer, rows.shape[1])
            if proj.device != rows.device:
                proj = self._proj[layer] = proj.to(rows.device)
            rows = rows @ proj
        return rows

    def to_config(self) -> dict[str, Any]:
        return {"spec": self.spec, "seed": self.seed}


class RowCache:
    """Flattened training rows per layer on disk, written by one or more ranks.

    Args:
        root: Folder shared by every rank (created if needed, removed by :meth:`cleanup` when *owned*).
        rank: This process's rank; it writes under ``root/rank-<rank>``.
        world_size: Number of ranks whose parts are read back.
        owned: Whether :meth:`cleanup` deletes *root*.
    """

    def __init__(self, root: Path, *, rank: int = 0, world_size: int = 1, owned: bool = True) -> None:
        self.root, self.rank, self.world_size, self.owned = Path(root), rank, world_size, owned
        self._mine = self.root / f"rank-{rank}"
        self._mine.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}
        self._labels: dict[str, list[np.ndarray]] = {}
        self.dims: dict[str, int] = {}

    @classmethod
    def temporary(cls, parent: str | Path | None) -> RowCache:
        """A single-process cache in a fresh temporary folder under *parent* (the system's temp dir if None)."""
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        return cls(Path(tempfile.mkdtemp(prefix="masc-probe-rows-", dir=parent)))

    @staticmethod
    def _name(layer: Any) -> str:
        # Layer names (a pass's row keys: _controls.LayerKey) hold dots and may hold slashes; a digest of their
        # spelling keeps file names safe and unique.
        return hashlib.sha1(str(layer).encode()).hexdigest()[:16]

    def append(self, layer: str, rows: torch.Tensor) -> None:
        """Append (B, d) rows of *layer* (any device; stored as float32)."""
        arr = rows.detach().to("cpu", torch.float32).contiguous().numpy()
        d = self.dims.setdefault(layer, arr.shape[1])
        if arr.shape[1] != d:
            raise InputError(f"layer {layer!r} must give {d} features per sample every batch, got {arr.shape[1]}")
        fh = self._files.get(layer)
        if fh is None:
            fh = self._files[layer] = open(self._mine / f"{self._name(layer)}.f32", "ab")  # noqa: SIM115
        # The array's own buffer, not a bytes copy of it (an allocation and a copy per batch and layer): 80 batches of
        # 128 rows over the benchmark's 8 layers were written in 0.20-0.26 s this way, 0.22-1.42 s through a copy.
        if arr.size:  # (a view with a zero in its shape cannot be cast to bytes)
            fh.write(memoryview(arr).cast("B"))

    def append_labels(self, sets: Mapping[str, torch.Tensor]) -> None:
        for name, y in sets.items():
            self._labels.setdefault(name, []).append(y.numpy().astype(np.int64, copy=False))

    def finish(self) -> None:
        """Close this rank's files and write its labels; call on every rank before reading."""
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        for name, parts in self._labels.items():
            np.save(self._mine / f"labels-{name}.npy", np.concatenate(parts) if parts else np.zeros(0, np.int64))

    def labels(self, name: str) -> np.ndarray:
        """Labels of set *name* over the union of ranks, in rank order (the row order of :meth:`parts`)."""
        return np.concatenate([np.load(self.root / f"rank-{r}" / f"labels-{name}.npy")
                               for r in range(self.world_size)])

    def parts(self, layer: str) -> list[np.memmap | np.ndarray]:
        """(n_r, d) copy-on-write memory maps of *layer*, one per rank, in rank order."""
        d = self.dims[layer]
        out: list[np.memmap | np.ndarray] = []
        for r in range(self.world_size):
            path = self.root / f"rank-{r}" / f"{self._name(layer)}.f32"
            size = path.stat().st_size if path.exists() else 0
            n = size // (4 * d)
            # Copy-on-write: writable for torch.from_numpy, nothing ever written back to the file.
            out.append(np.memmap(path, dtype=np.float32, mode="c", shape=(n, d)) if n
                       else np.zeros((0, d), np.float32))
        return out

    def _files_of(self, layer: str) -> list[tuple[Path, int]]:
        d = self.dims[layer]
        out = []
        for r in range(self.world_size):
            path = self.root / f"rank-{r}" / f"{self._name(layer)}.f32"
            out.append((path, (path.stat().st_size if path.exists() else 0) // (4 * d)))
        return out

    def chunks(self, layer: str, rows_per_chunk: int) -> Iterator[np.ndarray]:
        """Consecutive (≤ rows_per_chunk, d) float32 arrays over the union of ranks.

        Plain reads, not a memory map: pages of a map count in the process's resident memory while it lives.
        """
        d = self.dims[layer]
        for path, n in self._files_of(layer):
            if not n:
                continue
            with open(path, "rb") as fh:
                for start in range(0, n, rows_per_chunk):
                    count = min(rows_per_chunk, n - start)
                    yield np.fromfile(fh, dtype=np.float32, count=count * d).reshape(count, d)

    def rows(self, layer: str, index: np.ndarray) -> np.ndarray:
        """Rows at the global indices *index* (sorted ascending), as one in-memory (len(index), d) array.

        Selected rows closer than ``_GAP_BYTES`` apart are read as one span (at most ``_SPAN_BYTES``) and picked
        from it: a seeded half of the rows came back in a few reads instead of one per run (80,640 reads for the
        training-accuracy rows of a 10-class probe pass).
        """
        d = self.dims[layer]
        row_bytes = 4 * d
        max_gap, max_span = max(1, _GAP_BYTES // row_bytes), max(1, _SPAN_BYTES // row_bytes)
        out = np.empty((len(index), d), np.float32)
        offset, filled = 0, 0
        for path, n in self._files_of(layer):
            sel = index[(index >= offset) & (index < offset + n)] - offset
            if len(sel):
                with open(path, "rb") as fh:
                    for span in _spans(sel, max_gap, max_span):
                        first, count = int(span[0]), int(span[-1] - span[0]) + 1
                        fh.seek(first * row_bytes)
                        block = np.fromfile(fh, dtype=np.float32, count=count * d).reshape(count, d)
                        out[filled:filled + len(span)] = block if count == len(span) else block[span - first]
                        filled += len(span)
            offset += n
        return out

    def matrix(self, layer: str) -> np.memmap | np.ndarray:
        """The whole (n, d) matrix: a memory map for one rank, an in-memory copy of the union otherwise."""
        parts = self.parts(layer)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def cleanup(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


def _spans(sel: np.ndarray, max_gap: int, max_span: int) -> list[np.ndarray]:
    """Sorted row indices *sel* cut where two are more than *max_gap* apart or a piece would span more than
    *max_span* rows: each piece is read as one span."""
    out = []
    for group in np.split(sel, np.flatnonzero(np.diff(sel) > max_gap) + 1):
        pieces = (group - group[0]) // max_span
        out += np.split(group, np.flatnonzero(np.diff(pieces)) + 1)
    return out
