"""The thread policy of the probes' latency-bound steps (eigendecompositions, small SGD steps).

On 2-core machines shared with other processes, a 2-threaded LAPACK ``eigh`` ran 20-50x slower than a 1-threaded one
whenever another process was busy (threads wait at every barrier for a sibling that is descheduled), and the
``LinearProbe``'s batch-128 Adam steps ran 50x slower on 2 threads than on 1 (5 s against 0.1 s for a toy fit).
Small inputs are latency-bound as a whole: under the same load a 300-row MASC fit took 0.2 s on 2 threads and 0.01 s
on 1, and a 1,000 x 4,096 one 1.0 s against 0.13 s (each of its small element-wise ops waited ~15 ms for the second
thread). These steps, and every call on fewer than ``SMALL_WORK`` input elements, therefore run on ONE thread by
default. ``MASC_PROBE_THREADS`` overrides it: a positive count, or 0 to
leave torch's and BLAS's own settings. Large products (Gram, scatter, scoring) always use the process's setting.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from masc_probe.errors import InputError

__all__: list[str] = []  # internal module

THREADS_ENV = "MASC_PROBE_THREADS"
SMALL_WORK = 1 << 24  # input elements (64 MiB of float32) below which a whole call is latency-bound


def probe_threads() -> int | None:
    """Threads for latency-bound steps: ``MASC_PROBE_THREADS`` (default 1); None leaves the libraries' defaults."""
    raw = os.environ.get(THREADS_ENV, "1").strip()
    try:
        n = int(raw)
    except ValueError:
        raise InputError(f"{THREADS_ENV} must be an integer >= 0; got {raw!r}") from None
    if n < 0:
        raise InputError(f"{THREADS_ENV} must be an integer >= 0; got {n}")
    return n or None


@functools.cache
def _controller() -> Any:
    # Inspecting the loaded BLAS libraries takes milliseconds; do it once per process.
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def limited_threads(n: int | None) -> Iterator[None]:
    """Run torch and BLAS/LAPACK on ``n`` threads inside the block, restoring the previous settings after it.

    torch's setting is process-wide: another thread running torch code meanwhile also sees ``n``.
    """
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with _controller().limit(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


def threads_for(X: Any) -> int | None:
    """Threads for a whole call on input X (or on that many elements): ``probe_threads()`` when it is small."""
    if isinstance(X, (int, np.integer)):
        numel = int(X)
    elif isinstance(X, torch.Tensor):
        numel = X.numel() if X.device.type == "cpu" else SMALL_WORK
    else:
        shape = getattr(X, "shape", None)
        numel = int(np.prod(shape)) if shape is not None else 0
    return probe_threads() if numel < SMALL_WORK else None
