"""The trainer's per-epoch margins (``record_margins``, AUM's training record): each equals the margin computed here
by hand from the logits of that epoch's checkpoint; they survive a resume, and a row written past the resumed
history is cut back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from _training_helpers import DictDigits, digits, tuple_data
from masc_probe.errors import InputError
from masc_probe.models import load_model
from masc_probe.training import TrainConfig, preset_config, train

N = 120
# The paper's CNN (216k parameters), not its MLP (5.3M): what a few epochs on 120 digits cost is mostly writing the
# weights (the resume state every epoch, the checkpoints), 25 times smaller here; the margins do not care which.
MODEL = "cnn"


class _Shifted(DictDigits):
    """Digits whose ``index`` column is not the position: sample i has index 1000 + 7 * (N - 1 - i)."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**super().__getitem__(i), "index": torch.tensor(1000 + 7 * (len(self) - 1 - i))}


def _config(out: Path, epochs: int, **kw: Any) -> TrainConfig:
    return preset_config(MODEL, "digits", preset="fast", num_classes=10, max_epochs=epochs, batch_size=32,
                         output_dir=str(out), progress=False, record_margins=True, **kw)  # fmt: skip


def _by_hand(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """Given-label logit minus the largest other logit, row by row in float64."""
    model.eval()
    with torch.no_grad():
        z = model(x).double().numpy()
    out = np.empty(len(y))
    for i, row in enumerate(z):
        others = [row[c] for c in range(len(row)) if c != y[i]]
        out[i] = row[y[i]] - max(others)
    return out


def test_margins_equal_a_hand_computation_from_each_epochs_logits(tmp_path: Path) -> None:
    x, yc, y, _, _ = digits(N)
    data = _Shifted(x, yc, y)
    result = train(MODEL, data, config=_config(tmp_path / "run", 3, keep_checkpoints="all"))
    saved = load_file(str(tmp_path / "run" / "margins.safetensors"))
    assert saved["epoch"].tolist() == [1, 2, 3] == [r["epoch"] for r in result.history]
    # Columns in index order: sample i (index 1000 + 7 (N-1-i)) is column N-1-i.
    assert saved["index"].tolist() == [1000 + 7 * j for j in range(N)]
    assert saved["margins"].dtype == np.float32 and saved["margins"].shape == (3, N)
    for row, epoch in enumerate([1, 2, 3]):
        model = load_model(tmp_path / "run" / "checkpoints" / f"epoch-{epoch:04d}")
        expected = _by_hand(model, data.x, yc)[::-1]
        np.testing.assert_allclose(saved["margins"][row], expected, rtol=0, atol=1e-5)
    # Not vacuous: the margins move between epochs, and a positive margin is exactly a correct prediction.
    assert not np.allclose(saved["margins"][0], saved["margins"][2])
    final = _by_hand(load_model(tmp_path / "run"), data.x, yc)[::-1]
    assert ((final > 0).mean()) == pytest.approx(result.history[-1]["train_accuracy_corrupted"])


def test_tuple_batches_without_index_are_kept_by_position(tmp_path: Path) -> None:
    data = tuple_data(N)
    train(MODEL, data, config=_config(tmp_path / "run", 1, keep_checkpoints="all"))
    saved = load_file(str(tmp_path / "run" / "margins.safetensors"))
    assert saved["index"].tolist() == list(range(N))
    model = load_model(tmp_path / "run" / "checkpoints" / "epoch-0001")
    x, y = data.tensors[0], data.tensors[1].numpy()
    np.testing.assert_allclose(saved["margins"][0], _by_hand(model, x, y), rtol=0, atol=1e-5)


def test_margins_survive_a_resume_and_a_row_past_the_history_is_cut(tmp_path: Path) -> None:
    x, yc, y, _, _ = digits(N)
    data = DictDigits(x, yc, y)
    whole = train(MODEL, data, config=_config(tmp_path / "whole", 4))
    train(MODEL, data, config=_config(tmp_path / "parts", 2))
    # As if killed after writing epoch 3's margins but before its resume state: a row the history does not have.
    path = tmp_path / "parts" / "margins.safetensors"
    saved = load_file(str(path))
    save_file({"epoch": np.array([1, 2, 3]), "index": saved["index"],
               "margins": np.vstack([saved["margins"], np.full((1, N), 99.0, np.float32)])}, str(path))
    parts = train(MODEL, data, config=_config(tmp_path / "parts", 4))
    assert parts.history == whole.history
    a, b = load_file(str(tmp_path / "whole" / "margins.safetensors")), load_file(str(path))
    assert a["epoch"].tolist() == b["epoch"].tolist() == [1, 2, 3, 4]
    assert np.array_equal(a["margins"], b["margins"]) and np.array_equal(a["index"], b["index"])
    # A run recorded without margins is another run: resuming it with them is refused (its AUM would lack epochs).
    with pytest.raises(InputError, match="record_margins"):
        train(MODEL, data, config=_config(tmp_path / "whole", 5).replace(record_margins=False))


def test_record_margins_must_be_a_bool() -> None:
    with pytest.raises(InputError, match="record_margins"):
        TrainConfig(record_margins="yes")
    assert TrainConfig().record_margins is False
