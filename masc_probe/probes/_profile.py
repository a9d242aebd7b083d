"""MASC's profile: every subspace size of one fit scored from one projection (``MinimumAngleSubspaceClassifier``
``frozen(profile=...)`` and ``predict_profile``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from masc_probe.probes._base import row_blocks
from masc_probe.probes._linalg import matmul

__all__: list[str] = []  # internal module


class _Profile:
    """Every class's top basis vectors up to the largest size of a profile, and k_c at each size, so that one
    projection scores every size: ‖B_k x‖² for all k ≤ k_max are cumulative sums of the squared projections.

    The sums run in two stages: each class's columns fall into segments between consecutive distinct k_c of the
    profile (at most one per size), summed in float32 as ``predict`` sums a class's columns; the segment sums are
    then accumulated in float64, so every size reads its ‖B_k x‖² from one (rows × segments) table instead of a
    float64 cumulative sum over every column.

    Args:
        W: (d, Σ k_max_c) float32, class by class, each class's columns in eigenvalue order.
        kmax: (C,) columns per class.
        sizes: The sizes kept, in profile order.
        ks: (S, C) k_c at each size.
        dropped: Sizes left out because their columns did not fit the budget.
    """

    def __init__(self, W: torch.Tensor, kmax: np.ndarray, sizes: list[float | int], ks: np.ndarray,
                 dropped: list[float | int]) -> None:
        self.W, self.kmax, self.sizes, self.ks, self.dropped = W, np.asarray(kmax, np.int64), list(sizes), ks, dropped
        ks2 = np.asarray(self.ks, np.int64).reshape(len(self.sizes), len(self.kmax))
        segment, hi, lo = _profile_segments(self.kmax, ks2)
        self._segment = torch.from_numpy(segment)  # (Σ k_max_c,) the segment of each column
        self._n_segments = int(lo[-1]) if lo.size else 0
        # Column of the segments' cumulative sum (leading zero column) that ends class c's top-k_c at each size,
        # and the one where class c starts.
        self._hi = torch.from_numpy(hi.reshape(-1))
        self._lo = torch.from_numpy(lo[:-1].copy())
        # A class whose k_c spans all d dimensions contains every x: cos = 1 exactly (the sums would only round to it).
        self._whole = torch.from_numpy(ks2 == W.shape[0])

    @classmethod
    def build(cls, subspaces: list[Any], sizes: tuple[float | int, ...], keep: float | int, *,
              max_bytes: int, device: torch.device) -> _Profile:
        """The profile of solved *subspaces* at *sizes*; *keep* (the fitted size) is never dropped."""
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
        parts = [s.basis(int(k)).to(device) for s, k in zip(subspaces, kmax, strict=True)]
        W = torch.cat(parts, dim=1) if parts else torch.zeros(d, 0, device=device)
        return cls(W.contiguous(), kmax, kept_in_order, ks, [s for s in sizes if s in dropped])

    def nbytes(self) -> int:
        return int(self.W.numel()) * 4

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """(S, n) int64 predictions at every size: argmax_c ‖B_c,k x‖/‖x‖, ties to the lowest class, a zero vector
        to class 0 (cos = 0 everywhere)."""
        S, C = len(self.sizes), len(self.kmax)
        out = torch.empty(S, X.shape[0], dtype=torch.int64)
        W = self.W.to(X.device)
        segment, hi, lo = self._segment.to(X.device), self._hi.to(X.device), self._lo.to(X.device)
        whole = self._whole.to(X.device).view(1, S, C)
        blocks = row_blocks(X.shape[0], W.shape[1])
        for start in blocks:
            block = X[start : start + blocks.step]
            parts = torch.zeros(block.shape[0], self._n_segments, dtype=torch.float32, device=X.device)
            parts.index_add_(1, segment, matmul(block, W).square_())
            cum = torch.nn.functional.pad(torch.cumsum(parts.double(), dim=1), (1, 0))
            inside = (cum[:, hi].view(-1, S, C) - cum[:, lo].view(-1, 1, C)).clamp_(min=0.0)
            norm2 = torch.sum(block * block, dim=1, dtype=torch.float64).view(-1, 1, 1)
            cos2 = torch.where(norm2 > 0, inside / torch.where(norm2 > 0, norm2, torch.ones_like(norm2)), 0.0)
            cos2 = torch.where(whole & (norm2 > 0), 1.0, cos2.clamp_(max=1.0))
            out[:, start : start + block.shape[0]] = cos2.argmax(dim=2).T.cpu()
        return out


def _profile_segments(kmax: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The segments of a profile's columns: class c's k_max_c columns cut at every distinct k_c of *ks* (S, C).

    Returns the segment of each column (Σ k_max_c,), for each (size, class) the index just past the segment that
    ends its top-k_c in the segments' cumulative sum (S, C) (the class's start where k_c = 0), and each class's
    first segment (C + 1,) with the number of segments last.
    """
    S, C = ks.shape
    segment = np.zeros(int(kmax.sum()), dtype=np.int64)
    hi = np.zeros((S, C), dtype=np.int64)
    lo = np.zeros(C + 1, dtype=np.int64)
    col = 0
    for c in range(C):
        positive = ks[:, c][ks[:, c] > 0]
        cuts = np.unique(np.concatenate([positive, [kmax[c]] if kmax[c] > 0 else []])).astype(np.int64)
        sizes = np.diff(np.concatenate([[0], cuts]))
        segment[col : col + int(kmax[c])] = lo[c] + np.repeat(np.arange(len(cuts)), sizes)
        hi[:, c] = lo[c] + np.searchsorted(cuts, ks[:, c], side="right")
        col += int(kmax[c])
        lo[c + 1] = lo[c] + len(cuts)
    return segment, hi, lo
