"""MASC's profile: every subspace size of one fit scored from one projection (``MinimumAngleSubspaceClassifier``
``frozen(profile=...)`` and ``predict_profile``).

A class's profile needs its top k_max_c basis vectors (k_max_c: its k_c at the largest size kept). The fitted
stack already holds the top k_c of every class it scores from its basis, so the profile keeps only the vectors
beyond them (all k_max_c where the stack holds the class's complement instead) and reads the rest from the stack:
one projection of a row onto the stack and the profile's own rows gives every size, the fitted one included, and
the profile costs memory (and disk, where a runner spills it) only for the columns the fitted size does not use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from masc_probe.probes._base import add_column_runs, column_runs, row_blocks
from masc_probe.probes._linalg import matmul

__all__: list[str] = []  # internal module


class _Profile:
    """k_c at each size of a profile and the basis vectors that score them beside the fitted stack, so that one
    projection scores every size: ‖B_k x‖² for all k ≤ k_max are sums of the squared projections.

    The sums run in two stages: each class's basis vectors fall into segments between consecutive distinct k_c of
    the profile (at most one per size), summed in float32 as ``predict`` sums a class's columns; the segment sums
    are then accumulated in float64 over the few segments, and every size reads its ‖B_k x‖² from them.

    Args:
        stack: (d, Σ columns) the fitted stack (shared, not copied) and (C,) its columns per class.
        shared: (C,) class c's top vectors read from the stack (its first shared_c columns; 0 where the stack
            holds the complement).
        rows: (Σ (k_max_c - shared_c), d) float32, the other basis vectors as rows, class by class, in
            eigenvalue order.
        kmax: (C,) basis vectors per class.
        sizes: The sizes kept, in profile order.
        ks: (S, C) k_c at each size.
        dropped: Sizes left out because their columns did not fit the budget.
    """

    def __init__(self, stack: tuple[torch.Tensor, np.ndarray], shared: np.ndarray, rows: torch.Tensor,
                 kmax: np.ndarray, sizes: list[float | int], ks: np.ndarray, dropped: list[float | int]) -> None:
        self.stack, self.counts = stack[0], np.asarray(stack[1], np.int64)
        self.shared, self.rows = np.asarray(shared, np.int64), rows
        self.kmax, self.sizes, self.dropped = np.asarray(kmax, np.int64), list(sizes), dropped
        self.ks = np.asarray(ks, np.int64).reshape(len(self.sizes), len(self.kmax))
        cuts, lo, hi = _layout(self.kmax, self.ks)
        self._n_segments = int(lo[-1])
        # Segment of each stack column (the dummy last segment where the profile does not read it) and each row,
        # as runs of consecutive columns with the dummy segment's left out: what predict sums.
        self._stack_runs = column_runs(_stack_segments(cuts, lo, self.counts, self.shared), skip=self._n_segments)
        self._row_runs = column_runs(_row_segments(cuts, lo, self.kmax, self.shared), skip=self._n_segments)
        self._use_stack = bool(self.shared.any())
        # Column of the segments' cumulative sum (leading zero column) that ends class c's top-k_c at each size,
        # and the one where class c starts.
        self._hi = torch.from_numpy(hi.reshape(-1))
        self._lo = torch.from_numpy(lo[:-1].copy())
        d = self.stack.shape[0]
        # A class whose k_c spans all d dimensions contains every x: cos = 1 exactly (the sums would only round to it).
        self._whole = torch.from_numpy(self.ks == d)

    @classmethod
    def build(cls, subspaces: list[Any], stacked: tuple[torch.Tensor, Any, torch.Tensor], fitted_ks: np.ndarray,
              sizes: tuple[float | int, ...], keep: float | int, *, max_bytes: int,
              device: torch.device) -> _Profile:
        """The profile of solved *subspaces* at *sizes* beside their fitted stack (*stacked*: the stack, its
        column classes and complement flags; *fitted_ks*: its k_c). *keep* (the fitted size) is never dropped;
        another size is dropped where the profile's Σ k_max_c basis vectors would pass *max_bytes*."""
        d = subspaces[0].d if subspaces else 0
        kept: list[float | int] = []
        dropped: list[float | int] = []
        rows: list[list[int]] = []
        kmax = np.zeros(len(subspaces), dtype=np.int64)
        order = sorted(range(len(sizes)), key=lambda i: sizes[i] != keep)  # the fitted size first
        for i in order:
            k = np.array([s.k_for(sizes[i]) for s in subspaces], dtype=np.int64)
            grown = np.maximum(kmax, k)
            if sizes[i] != keep and grown.sum() > kmax.sum() and int(grown.sum()) * d * 4 > max_bytes:
                dropped.append(sizes[i])
                continue
            kmax = grown
            kept.append(sizes[i])
            rows.append(k.tolist())
        pos = {s: j for j, s in enumerate(kept)}
        kept_in_order = [s for s in sizes if s in pos]
        ks = np.array([rows[pos[s]] for s in kept_in_order], dtype=np.int64).reshape(len(kept_in_order), -1)
        W, _, flip = stacked
        complement = flip.cpu().numpy().astype(bool)
        counts = np.where(complement, d - np.asarray(fitted_ks), fitted_ks).astype(np.int64)
        shared = np.where(complement, 0, np.minimum(fitted_ks, kmax)).astype(np.int64)
        extra = torch.empty(int(np.maximum(kmax - shared, 0).sum()), d, dtype=torch.float32, device=device)
        start = 0
        for s, a, b in zip(subspaces, shared.tolist(), kmax.tolist(), strict=True):
            n = max(b - a, 0)
            s.basis_rows(a, b, out=extra[start : start + n])
            start += n
        return cls((W.to(device), counts), shared, extra.to(device, torch.float32), kmax, kept_in_order, ks,
                   [s for s in sizes if s in dropped])

    def nbytes(self) -> int:
        """Bytes of the profile's own rows (the stack it reads is the fitted MASC's)."""
        return int(self.rows.numel()) * 4

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """(S, n) int64 predictions at every size: argmax_c ‖B_c,k x‖/‖x‖, ties to the lowest class, a zero vector
        to class 0 (cos = 0 everywhere)."""
        S, C = len(self.sizes), len(self.kmax)
        out = torch.empty(S, X.shape[0], dtype=torch.int64)
        dev = X.device
        stack, rows = self.stack.to(dev), self.rows.to(dev)
        hi, lo, whole = self._hi.to(dev), self._lo.to(dev), self._whole.to(dev).view(1, S, C)
        blocks = row_blocks(X.shape[0], max(stack.shape[1] if self._use_stack else 0, rows.shape[0]))
        for start in blocks:
            block = X[start : start + blocks.step]
            parts = torch.zeros(block.shape[0], self._n_segments + 1, dtype=torch.float32, device=dev)
            if self._use_stack:
                add_column_runs(parts, matmul(block, stack).square_(), self._stack_runs)
            if rows.shape[0]:
                add_column_runs(parts, matmul(block, rows.T).square_(), self._row_runs)
            cum = torch.nn.functional.pad(torch.cumsum(parts[:, :-1].double(), dim=1), (1, 0))
            inside = (cum[:, hi].view(-1, S, C) - cum[:, lo].view(-1, 1, C)).clamp_(min=0.0)
            norm2 = torch.sum(block * block, dim=1, dtype=torch.float64).view(-1, 1, 1)
            cos2 = torch.where(norm2 > 0, inside / torch.where(norm2 > 0, norm2, torch.ones_like(norm2)), 0.0)
            cos2 = torch.where(whole & (norm2 > 0), 1.0, cos2.clamp_(max=1.0))
            out[:, start : start + block.shape[0]] = cos2.argmax(dim=2).T.cpu()
        return out


def _layout(kmax: np.ndarray, ks: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The segments of a profile: per class the sorted distinct k_c > 0 of *ks* (S, C) and k_max_c, where its
    segments end; each class's first segment (C + 1,), the number of segments last; and for each (size, class)
    the index just past the segment that ends its top-k_c in the segments' cumulative sum (the class's start
    where k_c = 0), (S, C)."""
    cuts = []
    for c in range(len(kmax)):
        positive = ks[:, c][ks[:, c] > 0]
        cuts.append(np.unique(np.concatenate([positive, [kmax[c]] if kmax[c] > 0 else []])).astype(np.int64))
    lo = np.concatenate([[0], np.cumsum([len(c) for c in cuts])]).astype(np.int64)
    hi = np.zeros(ks.shape, dtype=np.int64)
    for c, cut in enumerate(cuts):
        hi[:, c] = lo[c] + np.searchsorted(cut, ks[:, c], side="right")
    return cuts, lo, hi


def _segment_of(cuts: np.ndarray, start: int, positions: np.ndarray) -> np.ndarray:
    """The segment (from *start*) of basis vectors at 0-based *positions*: vector i ends at k = i + 1."""
    return start + np.searchsorted(cuts, positions + 1, side="left")


def _stack_segments(cuts: list[np.ndarray], lo: np.ndarray, counts: np.ndarray, shared: np.ndarray) -> torch.Tensor:
    """Segment of each fitted stack column: class c's first shared_c columns are its top vectors; every other
    column goes to the dummy segment lo[-1], dropped after the sums."""
    out = np.full(int(counts.sum()), lo[-1], dtype=np.int64)
    col = 0
    for c, cut in enumerate(cuts):
        out[col : col + int(shared[c])] = _segment_of(cut, int(lo[c]), np.arange(int(shared[c])))
        col += int(counts[c])
    return torch.from_numpy(out)


def _row_segments(cuts: list[np.ndarray], lo: np.ndarray, kmax: np.ndarray, shared: np.ndarray) -> torch.Tensor:
    """Segment of each of the profile's rows: class c's vectors shared_c .. k_max_c - 1."""
    parts = [_segment_of(cut, int(lo[c]), np.arange(int(shared[c]), int(kmax[c]))) for c, cut in enumerate(cuts)]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64))


def _profile_segments(kmax: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A profile that reads nothing from a stack: the segment of each of its Σ k_max_c basis vectors, and
    ``_layout``'s hi (S, C) and lo (C + 1,)."""
    kmax, ks = np.asarray(kmax, np.int64), np.asarray(ks, np.int64)
    cuts, lo, hi = _layout(kmax, ks)
    return _row_segments(cuts, lo, kmax, np.zeros(len(cuts), np.int64)).numpy(), hi, lo
