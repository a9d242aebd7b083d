"""The runner's row cache read back against the arrays written into it (one rank and two ranks' files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from masc_probe.runner import _cache
from masc_probe.runner._cache import RowCache


def _write(root: Path, parts: list[np.ndarray]) -> RowCache:
    """Rank r's rows parts[r] appended in uneven batches, as the pass writes them; a reader over every rank."""
    for r, rows in enumerate(parts):
        cache = RowCache(root, rank=r, world_size=len(parts), owned=False)
        for start in range(0, len(rows), 7):
            cache.append("layer", torch.from_numpy(rows[start:start + 7]))
        cache.append_labels({"label": torch.zeros(len(rows), dtype=torch.int64)})
        cache.finish()
    reader = RowCache(root, rank=0, world_size=len(parts), owned=False)
    reader.dims["layer"] = parts[0].shape[1]
    return reader


@pytest.mark.parametrize("gap_bytes, span_bytes", [(1, 1), (64, 4 * 12 * 5), (1 << 20, 1 << 30)])
def test_rows_at_any_index_whatever_the_spans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gap_bytes: int,
                                              span_bytes: int) -> None:
    # One row per read, spans of 5 rows read through gaps of one row, everything in one read: the same rows.
    monkeypatch.setattr(_cache, "_GAP_BYTES", gap_bytes)
    monkeypatch.setattr(_cache, "_SPAN_BYTES", span_bytes)
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((53, 12)).astype(np.float32), rng.standard_normal((40, 12)).astype(np.float32)]
    cache = _write(tmp_path, parts)
    whole = np.concatenate(parts)
    for index in (np.arange(93), np.sort(rng.choice(93, 31, replace=False)), np.array([0]), np.array([92]),
                  np.array([52, 53]), np.array([], dtype=np.int64), np.array([3, 4, 5, 40, 41, 88])):
        got = cache.rows("layer", index)
        assert got.shape == (len(index), 12)
        np.testing.assert_array_equal(got, whole[index])


def test_spans_cut_at_gaps_and_at_the_span_length() -> None:
    sel = np.array([0, 1, 2, 10, 11, 30, 31, 32, 33, 34, 35])
    got = [s.tolist() for s in _cache._spans(sel, max_gap=3, max_span=4)]
    assert got == [[0, 1, 2], [10, 11], [30, 31, 32, 33], [34, 35]]


def test_batches_of_no_rows_append_nothing(tmp_path: Path) -> None:
    rows = np.arange(36, dtype=np.float32).reshape(3, 12)
    cache = RowCache(tmp_path, owned=False)
    cache.append("layer", torch.zeros(0, 12))
    cache.append("layer", torch.from_numpy(rows[:2]))
    cache.append("layer", torch.zeros(0, 12))
    cache.append("layer", torch.from_numpy(rows[2:]))
    cache.finish()
    np.testing.assert_array_equal(np.concatenate(list(cache.chunks("layer", 2))), rows)
