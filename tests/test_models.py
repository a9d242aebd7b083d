"""Tests of masc_probe.models: the paper's shapes, spec dispatch, save/load round trips, safe legacy loading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from masc_probe.errors import InputError, UnknownNameError
from masc_probe.models import load_model, model_spec, paper_layers, read_config, save_model


def _linear_widths(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_mlp_widths_follow_the_paper() -> None:
    model = load_model("mlp", num_classes=10, in_chans=1, input_size=(28, 28))
    assert _linear_widths(model) == [(784, 128), (128, 512), (512, 2048), (2048, 2048), (2048, 10)]
    assert [type(m) for m in model.modules() if isinstance(m, nn.ReLU)] == [nn.ReLU] * 4
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize(("size", "chans", "flat"), [(28, 1, 576), (32, 3, 1024)])
def test_cnn_flatten_size_follows_the_input(size: int, chans: int, flat: int) -> None:
    model = load_model("cnn", num_classes=10, in_chans=chans, input_size=size)
    convs = [(m.in_channels, m.out_channels, m.kernel_size, m.padding) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    assert [c[1] for c in convs] == [16, 16, 32, 32, 64, 64]
    assert all(c[2] == (3, 3) and c[3] == (1, 1) for c in convs)
    assert _linear_widths(model) == [(flat, 250), (250, 250), (250, 250), (250, 10)]
    assert model.head.bias is None  # the paper's last layer has no bias
    seen: dict[str, torch.Tensor] = {}
    model.flatten.register_forward_hook(lambda m, i, o: seen.setdefault("flat", o))
    assert model(torch.zeros(2, chans, size, size)).shape == (2, 10)
    assert seen["flat"].shape == (2, flat)


def test_alexnet_and_resnet_shapes() -> None:
    alex = load_model("alexnet", num_classes=100)
    assert _linear_widths(alex) == [(256, 4096), (4096, 4096), (4096, 100)]
    assert sum(isinstance(m, nn.Conv2d) for m in alex.modules()) == 5
    assert alex(torch.zeros(1, 3, 64, 64)).shape == (1, 100)  # Tiny ImageNet size pools to 1×1 too
    res = load_model("resnet18-cifar", num_classes=10)
    assert res.conv1.kernel_size == (3, 3) and res.conv1.stride == (1, 1)
    assert isinstance(res.maxpool, nn.MaxPool2d)
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in res.modules()) == 17  # stem + 16
    assert res(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_paper_layers_are_named_modules_with_the_probed_widths() -> None:
    model = load_model("mlp", num_classes=10, in_chans=1, input_size=8)
    names = paper_layers(model)
    assert names == ["input", "fc1", "fc2", "fc3", "fc4"]
    outputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for name in names:
        modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, o))
    x = torch.randn(4, 1, 8, 8)
    model(x)
    torch.testing.assert_close(outputs["input"], x)
    assert [outputs[n].shape[1] for n in names[1:]] == [128, 512, 2048, 2048]
    assert all((outputs[n] >= 0).all() for n in names[1:])  # post-ReLU values, as the paper probes
    assert paper_layers(nn.Linear(2, 2)) is None


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("spec", ["mlp", "cnn"])
def test_paper_model_round_trip_uses_the_mixin_layout(spec: str, tmp_path: Path) -> None:
    model = load_model(spec, num_classes=7, in_chans=1, input_size=(16, 16))
    meta = {"dataset": "digits", "epoch": 3, "input_size": [1, 16, 16]}
    save_model(model, tmp_path, masc_config=meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["num_classes"], config["in_chans"], config["input_size"]) == (7, 1, [16, 16])
    assert config["masc_probe"]["model"] == spec and config["masc_probe"]["epoch"] == 3
    assert read_config(tmp_path)["dataset"] == "digits"
    loaded = load_model(tmp_path)
    assert _same_weights(model, loaded) and not loaded.training
    # The mixin's own loader reads the same folder.
    native = type(model).from_pretrained(tmp_path)
    assert _same_weights(model, native)
    with pytest.raises(InputError, match="num_classes=7"):
        load_model(tmp_path, num_classes=10)


def test_timm_model_round_trip_uses_timm_layout(tmp_path: Path) -> None:
    import timm

    model = load_model("timm/resnet18", num_classes=5, in_chans=1)
    assert model_spec(model) == "timm/resnet18"
    with torch.no_grad():  # timm zero-inits the last BN of each block: randomize so that weights matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_model(model, tmp_path, masc_config={"dataset": "mnist-5k"})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 5
    assert config["masc_probe"]["model"] == "timm/resnet18"
    loaded = load_model(str(tmp_path))
    assert _same_weights(model, loaded)
    # timm's own loader reads the folder as a timm checkpoint.
    native = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert _same_weights(model, native)
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))


def test_legacy_pt_is_read_weights_only(tmp_path: Path) -> None:
    model = load_model("mlp", num_classes=3, in_chans=1, input_size=4)
    save_model(model, tmp_path / "ref", masc_config={})
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((tmp_path / "ref" / "config.json").read_text())
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, legacy / "model.pt")
    assert _same_weights(model, load_model(legacy / "model.pt"))
    assert _same_weights(model, load_model(legacy))

    # Any object beyond tensors and plain containers needs a full unpickle, which is refused.
    torch.save({"state_dict": model.state_dict(), "extra": argparse.Namespace(a=1)}, legacy / "model.pt")
    with pytest.raises(InputError, match="weights_only"):
        load_model(legacy / "model.pt")


def test_bad_specs_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="mlp") as info:
        load_model("mpl")
    assert "timm/<name>" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UnknownNameError, match="resnet18"):
        load_model("timm/resnet181")
    with pytest.raises(InputError, match="config.json"):
        load_model(tmp_path)
    with pytest.raises(InputError, match="8×8"):
        load_model("cnn", input_size=4)
    with pytest.raises(InputError):
        load_model("mlp", num_classes=0)
    with pytest.raises(InputError, match="pretrained"):
        load_model("cnn", pretrained=True)
