"""load_model as a new user meets it: what mode a model comes back in, and damaged files as one-line errors.

(tests/test_models.py holds the architectures and round trips; tests/test_hub.py the Hub options token=, cache_dir=
and local_files_only=.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from masc_probe.errors import InputError
from masc_probe.models import PAPER_MODELS, load_model, save_model

_SIZES = {"mlp": 8, "cnn": 8, "alexnet": 32, "resnet18-cifar": 32}


@pytest.mark.parametrize("spec", [*PAPER_MODELS, "timm/test_resnet"])
def test_new_and_loaded_models_come_back_in_eval_mode(spec: str, tmp_path: Path) -> None:
    model = load_model(spec, num_classes=3, input_size=_SIZES.get(spec, 32))
    assert not any(m.training for m in model.modules()), spec
    save_model(model.train(), tmp_path, masc_config={})
    loaded = load_model(tmp_path)
    assert not any(m.training for m in loaded.modules()), spec


@pytest.fixture
def saved_mlp(tmp_path: Path) -> Path:
    save_model(load_model("mlp", num_classes=3, in_chans=1, input_size=8), tmp_path / "run", masc_config={})
    return tmp_path / "run"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
@pytest.mark.parametrize("by", ["folder", "file"])
def test_a_damaged_safetensors_file_is_a_one_line_input_error(saved_mlp: Path, damage: str, by: str) -> None:
    weights = saved_mlp / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"garbage": b"not a safetensors file at all" * 10, "truncated": data[: len(data) // 2],
                         "empty": b""}[damage])
    with pytest.raises(InputError) as err:
        load_model(saved_mlp if by == "folder" else weights)
    text = str(err.value)
    assert "model.safetensors" in text and "safetensors" in text and "\n" not in text, text
    assert type(err.value) is InputError  # not safetensors' own SafetensorError, nor a subclass of both


def test_an_intact_folder_still_loads_exactly(saved_mlp: Path) -> None:
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a, b = load_model(saved_mlp), load_model(saved_mlp / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
