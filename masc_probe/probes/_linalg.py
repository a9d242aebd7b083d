"""The heavy float32 products of the probes, routed to the fastest BLAS at hand.

On CPU they go through numpy's BLAS (OpenBLAS in numpy's wheels): numpy sees ``a @ a.T`` and ``a.T @ a`` and calls
``syrk``, which computes one triangle, half the flops of the general product torch makes. Measured here on one
thread: Gram 2,000 x 2,048 0.33 s (numpy) against 0.7-0.8 s (torch); basis 2,048 x 2,000 x 500 0.17 s against
0.27 s; scoring 2,000 x 2,048 x 3,000 0.87 s against 1.07 s. Elsewhere (CUDA) torch does the work.
Inputs and outputs are torch tensors; on CPU no copies are made (``Tensor.numpy`` and ``from_numpy`` share memory).

A CPU product under ``_SMALL_FLOPS`` (a millisecond or two on one core) runs on ``probe_threads()`` (one by
default): under load, waking a second thread took longer than such a product (a 10-class fit of 1,000 x 4,096 took
0.13 s on one thread and 0.5-1.6 s on two while other processes were busy). Larger ones use the process's setting.
"""

from __future__ import annotations

import numpy as np
import torch

from masc_probe.probes._threads import limited_threads, probe_threads

__all__: list[str] = []  # internal module

_SMALL_FLOPS = 1 << 27


def _threads(flops: int) -> int | None:
    return probe_threads() if flops < _SMALL_FLOPS else None


def gram(rows: torch.Tensor) -> torch.Tensor:
    """G = R Rᵀ (n, n) float32 of rows R (n, d), full (both triangles)."""
    if rows.device.type == "cpu":
        a = rows.numpy()
        with limited_threads(_threads(a.shape[0] ** 2 * a.shape[1])):
            return torch.from_numpy(a @ a.T)
    return rows @ rows.T


def scatter(rows: torch.Tensor) -> torch.Tensor:
    """S = Rᵀ R (d, d) float32 of rows R (n, d), full (both triangles)."""
    if rows.device.type == "cpu":
        a = rows.numpy()
        with limited_threads(_threads(a.shape[1] ** 2 * a.shape[0])):
            return torch.from_numpy(a.T @ a)
    return rows.T @ rows


def matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b for float32 matrices on one device; into *out* (C-contiguous, the product's shape) where given, which
    spares the copy of a product that is only written somewhere else (a row block of a stack)."""
    if a.device.type == "cpu":
        with limited_threads(_threads(2 * a.shape[0] * a.shape[1] * b.shape[1])):
            if out is None:
                return torch.from_numpy(a.numpy() @ b.numpy())
            np.matmul(a.numpy(), b.numpy(), out=out.numpy())
            return out
    return a @ b if out is None else torch.matmul(a, b, out=out)
