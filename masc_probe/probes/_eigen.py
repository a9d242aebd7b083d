"""Symmetric eigendecompositions computed once and kept, so that every threshold reads the same one.

On CPU the decomposition is LAPACK's ``syevd`` taken apart: one Householder tridiagonalization (``sytrd``, the only
O(m³) step), every eigenpair of the tridiagonal matrix by divide and conquer (``stevd``), and the back-transformation
of eigenvectors to the matrix's basis (``ormqr``) only for the top k that a threshold uses (or for the other m - k,
the complement, when a probe scores from it). The factors are kept, so a
later threshold that needs more eigenvectors only back-transforms the new ones; the matrix is never decomposed again.
Measured here on one thread (m = 2,000, float32): ``sytrd`` 0.3 s, ``stevd`` 0.1 s, against 1.0-1.6 s for a full
``eigh``, most of which is the back-transformation of all m vectors.
On CUDA ``torch.linalg.eigh`` computes all eigenpairs at once (fast there) and keeps them.

Threads: the decomposition runs on ONE thread by default (``MASC_PROBE_THREADS`` overrides it; see ``_threads``).
"""

from __future__ import annotations

import numpy as np
import torch

from masc_probe.errors import InputError
from masc_probe.probes._threads import limited_threads, probe_threads

__all__: list[str] = []  # internal module

# Eigenvalues at or below this fraction of the largest are rounding noise of the float32 product and decomposition
# (their error is about eps32 * lambda_max); they are treated as zero: the rank ends there.
_RANK_RTOL = 64 * float(np.finfo(np.float32).eps)


class Eigen:
    """All eigenvalues of a symmetric positive semi-definite matrix, eigenvectors of the top ones on demand.

    Attributes:
        values: float64 array (m,), descending, clipped at 0.
        rank: number of eigenvalues above the rank tolerance; ``vectors`` serves at most this many.
    """

    values: np.ndarray
    rank: int

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.clip(np.asarray(values, dtype=np.float64)[::-1], 0.0, None).copy()
        top = self.values[0] if self.values.size else 0.0
        self.rank = int((self.values > top * _RANK_RTOL).sum()) if top > 0 else 0

    def vectors(self, k: int) -> torch.Tensor:  # pragma: no cover - abstract
        """Top-k eigenvectors as columns, (m, k) float32, in descending eigenvalue order."""
        raise NotImplementedError

    def complement(self, k: int) -> torch.Tensor:  # pragma: no cover - abstract
        """The other m - k eigenvectors (null space included) as columns, (m, m - k) float32, in no set order.

        With the top k they form an orthonormal basis of the whole space, so ‖x‖² = ‖Vₖᵀx‖² + ‖complement(k)ᵀx‖²:
        a projection onto the top k can be scored from the complement when that is the smaller matrix.
        """
        raise NotImplementedError


class _DenseEigen(Eigen):
    """``torch.linalg.eigh``: every eigenpair at once (CUDA, and CPU matrices too small to bother)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        w, v = torch.linalg.eigh(matrix)
        super().__init__(w.double().cpu().numpy())
        self._v = v.flip(1).contiguous()  # every column: the complement of the top k needs the null space too

    def vectors(self, k: int) -> torch.Tensor:
        return self._v[:, : min(k, self.rank)]

    def complement(self, k: int) -> torch.Tensor:
        return self._v[:, min(k, self.rank):]


class _TridiagonalEigen(Eigen):
    """LAPACK ``sytrd`` + ``stevd`` once; ``ormqr`` maps eigenvectors back to the matrix's basis on demand."""

    def __init__(self, matrix: np.ndarray, *, overwrite: bool = False) -> None:
        from scipy.linalg import lapack

        m = matrix.shape[0]
        # A symmetric C-ordered matrix is its own Fortran-ordered transpose: LAPACK can take it without a copy.
        if matrix.flags.c_contiguous and matrix.dtype == np.float32:
            a = matrix.T if overwrite else matrix.T.copy(order="F")
        else:
            a = np.asfortranarray(matrix, np.float32)
            if not overwrite and np.shares_memory(a, matrix):
                a = a.copy(order="F")
        lwork = int(lapack.ssytrd_lwork(m, lower=1)[0])
        c, d, e, tau, info = lapack.ssytrd(a, lower=1, lwork=max(lwork, 1), overwrite_a=1)
        if info != 0:
            raise RuntimeError(f"LAPACK ssytrd failed with info={info}")
        # Divide and conquer on the tridiagonal matrix: all its eigenpairs in O(m²) to O(m³/3) flops (heavy
        # deflation makes it ~0.1 s at m = 2,000, where MRRR took 0.4 s for 500 vectors). Only the expensive
        # back-transformation (4 m² k flops) is deferred to the k vectors actually used.
        w, z, info = lapack.sstevd(d, e, compute_v=1)
        if info != 0:
            raise RuntimeError(f"LAPACK sstevd failed with info={info}")
        super().__init__(w)
        self._m = m
        # The Householder vectors of sytrd(lower) sit below the first subdiagonal; shifted by one row they are
        # exactly a QR factor's reflectors, which torch.ormqr (LAPACK ormqr) applies.
        self._reflectors = torch.from_numpy(np.ascontiguousarray(c[1:, : m - 1].T)).T
        self._tau = torch.from_numpy(np.asarray(tau[: m - 1], dtype=np.float32))
        self._tridiagonal_vectors = z  # (m, m), ascending order, Fortran layout as LAPACK left it
        self._v = torch.empty((m, 0), dtype=torch.float32)

    def vectors(self, k: int) -> torch.Tensor:
        k = min(k, self.rank)
        have = self._v.shape[1]
        if k > have:
            columns = np.arange(self._m - 1 - have, self._m - 1 - k, -1)  # descending eigenvalues have..k-1
            y = torch.from_numpy(np.ascontiguousarray(self._tridiagonal_vectors[:, columns]))
            with limited_threads(probe_threads()):
                y[1:] = torch.ormqr(self._reflectors, self._tau, y[1:])
            self._v = torch.cat([self._v, y], dim=1) if have else y
        return self._v[:, :k]

    def complement(self, k: int) -> torch.Tensor:
        k = min(k, self.rank)
        # Ascending order: columns 0 .. m-1-k are the eigenvalues below the top k (the null space included).
        y = torch.from_numpy(np.ascontiguousarray(self._tridiagonal_vectors[:, : self._m - k]))
        if y.shape[1]:
            with limited_threads(probe_threads()):
                y[1:] = torch.ormqr(self._reflectors, self._tau, y[1:])
        return y


# A 1x1 matrix has no tridiagonal form to speak of (sytrd has no reflector to store); the dense route serves it.
_DENSE_MAX = 1


def decompose(matrix: torch.Tensor, *, overwrite: bool = False) -> Eigen:
    """Eigendecompose a symmetric positive semi-definite float32 matrix (m, m), once, on its own device.

    The one routine every solver goes through (tests count its calls to prove a threshold sweep does not refit).
    With ``overwrite=True`` a CPU float32 matrix is used as LAPACK's workspace (no copy; its contents are lost).
    """
    if matrix.shape[0] == 0:
        raise InputError("cannot decompose an empty matrix")
    with limited_threads(probe_threads() if matrix.device.type == "cpu" else None):
        if matrix.device.type != "cpu" or matrix.shape[0] <= _DENSE_MAX:
            return _DenseEigen(matrix.float())
        return _TridiagonalEigen(matrix.float().numpy(), overwrite=overwrite)
