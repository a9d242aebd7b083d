"""Label corruption, as in Zhang et al. (2017) and the MASC paper: seeded, per sample, with the realized rate reported.

Every random draw is a counter-based hash of ``(seed, sample index, stream)`` (splitmix64), never a sequential random
generator. A sample's corrupted label therefore depends only on the seed and its own stable index: not on the order
in which samples arrive, on how a stream is sharded across DataLoader workers, or on the epoch. The in-memory and the
streamed paths of :func:`masc_probe.data.load_data` call the same rule, so they agree label for label.

For each sample with index ``i`` one uniform draw ``u_select(i)`` decides whether it is selected (``u_select < rate``);
the same selection serves every mode, so the modes differ only in what a selected label becomes:

- ``random`` (the paper's default): a uniformly random class, possibly the true one. Realized flip rate ≈ p(K−1)/K.
- ``symmetric``: a uniformly random *other* class. Realized flip rate ≈ p.
- ``shuffle``: the selected labels are permuted among themselves (the histogram is kept). Needs the whole column.
- ``asymmetric``: a class-pair map (``mapping=``), e.g. the usual CIFAR-10 pairs; classes outside the map never change.
- ``authors``: the MASC authors' released recipe, label for label: numpy's legacy generator seeded with ``seed``
  (they use 42), ``mask = rand(n) <= p``, then ``labels[mask] = choice(K, mask.sum())``, over the whole training set
  in file order. It is ``random`` in distribution but a sequential draw: it needs the whole label column (no subset
  or stream), and a sample's label depends on every sample before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from masc_probe._choices import CORRUPTION_MODES
from masc_probe._params import check_choice
from masc_probe.errors import InputError

__all__ = ["CIFAR10_ASYMMETRIC", "MODES", "corrupt_labels", "corruption_summary", "report_corruption"]

MODES: tuple[str, ...] = CORRUPTION_MODES

# truck → automobile, bird → airplane, deer → horse, cat ↔ dog (Patrini et al. 2017, CIFAR-10 class indices).
CIFAR10_ASYMMETRIC: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

# Named maps accepted by ``mapping=``; anything else must be given as an explicit dict.
_NAMED_MAPPINGS: dict[str, dict[int, int]] = {"cifar10": CIFAR10_ASYMMETRIC}

# Independent draw streams per sample.
_SELECT, _CLASS, _ORDER = 0, 1, 2

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that scatters every input bit over the output."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _hash64(seed: int, indices: np.ndarray, stream: int) -> np.ndarray:
    """uint64 hash of ``(seed, index, stream)`` for every index: the splitmix64 sequence of a per-(seed, stream) key."""
    key = _mix(_mix(np.asarray([seed], dtype=np.uint64)) + np.uint64(stream))
    with np.errstate(over="ignore"):
        return _mix(key + (indices.astype(np.uint64) + np.uint64(1)) * _GOLDEN)


def _uniform(seed: int, indices: np.ndarray, stream: int) -> np.ndarray:
    """Uniform draws in [0, 1) with 53 random bits, one per index."""
    return (_hash64(seed, indices, stream) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise InputError(f"rate must be a number in [0, 1], got {type(rate).__name__}: {rate!r}")
    if not 0.0 <= float(rate) <= 1.0:  # also refuses NaN
        raise InputError(f"rate must be in [0, 1], got {rate!r}")
    return float(rate)


def _check_mode(mode: str) -> str:
    return check_choice("corruption mode", mode, MODES)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise InputError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def _resolve_mapping(mapping: Mapping[int, int] | str | None, num_classes: int) -> dict[int, int]:
    if mapping is None:
        raise InputError(
            "mode='asymmetric' needs mapping=: a dict {true class: corrupted class}, or 'cifar10' for the usual "
            "CIFAR-10 pairs (it is never guessed for other datasets)"
        )
    if isinstance(mapping, str):
        check_choice("named mapping", mapping, _NAMED_MAPPINGS)
        if num_classes != 10:
            raise InputError(f"mapping={mapping!r} is for 10 classes, got labels with {num_classes} classes")
        return dict(_NAMED_MAPPINGS[mapping])
    out: dict[int, int] = {}
    for src, dst in dict(mapping).items():
        if not (0 <= int(src) < num_classes and 0 <= int(dst) < num_classes):
            raise InputError(f"mapping pairs must be classes in [0, {num_classes}), got {src!r}: {dst!r}")
        out[int(src)] = int(dst)
    return out


def _as_labels(y: Any) -> np.ndarray:
    arr = np.asarray(y.cpu() if hasattr(y, "cpu") else y)
    if arr.ndim != 1:
        raise InputError(f"labels must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise InputError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def corrupt_labels(
    y: Any,
    rate: float,
    *,
    num_classes: int | None = None,
    mode: str = "random",
    seed: int = 0,
    mapping: Mapping[int, int] | str | None = None,
    indices: Any = None,
) -> np.ndarray:
    """Corrupt integer labels at a given rate, deterministically per sample.

    Args:
        y: True labels, shape (n,), integers in ``[0, num_classes)`` (numpy, list or CPU/GPU torch tensor).
        rate: Probability p in [0, 1] that a sample is selected for corruption.
        num_classes: Number of classes K; defaults to ``max(y) + 1``.
        mode: ``"random"``, ``"symmetric"``, ``"shuffle"`` or ``"asymmetric"`` (see the module docstring).
        seed: Non-negative integer seed.
        mapping: For ``mode="asymmetric"`` only: ``{true class: corrupted class}``, or ``"cifar10"`` for
            :data:`CIFAR10_ASYMMETRIC`.
        indices: Stable sample indices, shape (n,), that key the per-sample draws; defaults to ``arange(n)``. Pass
            the dataset's own indices when ``y`` is a slice of a larger column, so that the result matches
            corrupting the whole column (for ``shuffle`` the permutation is only among the samples given).

    Returns:
        The corrupted labels, shape (n,), int64. The realized flip rate is ``mean(out != y)``; see
        :func:`corruption_summary`.

    Raises:
        InputError: ``rate`` outside [0, 1], labels outside ``[0, num_classes)``, a bad ``mapping`` or ``seed``, or
            ``mapping`` given for another mode.
        UnknownNameError: An unknown ``mode``.

    >>> corrupt_labels([0, 1, 2, 3], 1.0, num_classes=4, mode="symmetric", seed=0) != [0, 1, 2, 3]
    array([ True,  True,  True,  True])
    """
    rate = _check_rate(rate)
    mode = _check_mode(mode)
    seed = _check_seed(seed)
    labels = _as_labels(y)
    n = labels.shape[0]
    k = int(num_classes) if num_classes is not None else (int(labels.max()) + 1 if n else 0)
    if n and (labels.min() < 0 or labels.max() >= k):
        raise InputError(f"labels must be in [0, {k}), got values in [{labels.min()}, {labels.max()}]")
    if mapping is not None and mode != "asymmetric":
        raise InputError(f"mapping= applies to mode='asymmetric' only, got mode={mode!r}")
    if mode == "symmetric" and k < 2 and rate > 0:
        raise InputError(f"mode='symmetric' needs at least 2 classes, got num_classes={k}")
    pairs = _resolve_mapping(mapping, k) if mode == "asymmetric" else {}
    idx = np.arange(n, dtype=np.int64) if indices is None else _as_labels(indices)
    if idx.shape != labels.shape or (n and idx.min() < 0):
        raise InputError(f"indices must be {n} non-negative integers, got shape {idx.shape}")

    out = labels.copy()
    if mode == "authors":
        return _authors_recipe(out, rate, k, seed, idx)
    if rate == 0.0 or n == 0:
        return out
    selected = _uniform(seed, idx, _SELECT) < rate
    if mode == "random":
        draw = np.minimum((_uniform(seed, idx, _CLASS) * k).astype(np.int64), k - 1)
        out[selected] = draw[selected]
    elif mode == "symmetric":
        # An offset in [1, K-1] added modulo K is uniform over the K-1 other classes.
        offset = 1 + np.minimum((_uniform(seed, idx, _CLASS) * (k - 1)).astype(np.int64), k - 2)
        out[selected] = (labels[selected] + offset[selected]) % k
    elif mode == "shuffle":
        # The permutation is the order of a per-sample hash: fixed by the seed, independent of numpy's generators.
        chosen = np.flatnonzero(selected)
        order = np.argsort(_hash64(seed, idx[chosen], _ORDER), kind="stable")
        out[chosen] = labels[chosen][order]
    else:
        table = np.arange(k, dtype=np.int64)
        for src, dst in pairs.items():
            table[src] = dst
        out[selected] = table[labels[selected]]
    return out


def _authors_recipe(labels: np.ndarray, rate: float, k: int, seed: int, idx: np.ndarray) -> np.ndarray:
    """The authors' draw (``np.random.seed(seed)``; ``mask = rand(n) <= p``; ``choice(K, mask.sum())``) on *labels*."""
    n = labels.shape[0]
    if not np.array_equal(idx, np.arange(n)):
        raise InputError("mode='authors' draws over the whole label column in file order; got a subset or a shard of "
                         "it (indices other than 0..n-1): corrupt the whole column, then select")
    if seed >= 2**32:
        raise InputError(f"mode='authors' uses numpy's legacy generator, which takes a seed below 2**32, got {seed}")
    state = np.random.RandomState(seed)  # the generator behind np.random.seed / rand / choice
    mask = state.rand(n) <= rate
    labels[mask] = state.choice(k, int(mask.sum()))
    return labels


def report_corruption(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The report's ``corruption`` object from a :func:`corruption_summary` (or a ``load_data`` record's).

    Returns:
        ``{"mode", "rate", "seed", "realized_rate"}``, or None for clean labels (no summary, or rate 0).
    """
    if not summary or not float(summary.get("rate") or 0.0) > 0:
        return None
    return {k: summary.get(k) for k in ("mode", "rate", "seed", "realized_rate")}


def corruption_summary(y_true: Any, y_corrupt: Any, *, mode: str, rate: float, seed: int) -> dict[str, Any]:
    """Describe a corruption as the report's ``corruption`` object (JSON-able).

    Args:
        y_true: True labels, shape (n,).
        y_corrupt: Corrupted labels, shape (n,).
        mode: The corruption mode used.
        rate: The requested rate p.
        seed: The seed used.

    Returns:
        ``{"mode", "rate", "seed", "realized_rate", "n", "n_changed"}`` where ``realized_rate`` is the share of
        samples whose label differs from the true one (0.0 for an empty set).

    Raises:
        InputError: The two label arrays differ in shape.
    """
    a, b = _as_labels(y_true), _as_labels(y_corrupt)
    if a.shape != b.shape:
        raise InputError(f"true and corrupted labels must have the same shape, got {a.shape} and {b.shape}")
    changed = int(np.count_nonzero(a != b))
    return {
        "mode": mode,
        "rate": float(rate),
        "seed": int(seed),
        "realized_rate": changed / a.size if a.size else 0.0,
        "n": int(a.size),
        "n_changed": changed,
    }
