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


def _map_sizes(model: nn.Module, x: torch.Tensor, kinds: tuple[type, ...]) -> list[tuple[int, ...]]:
    """Output shapes (C, H, W) of the modules of *kinds*, in the order they run."""
    seen: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
             for m in model.modules() if isinstance(m, kinds)]
    model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize(("size", "variant", "convs", "pools"), [
    # The authors' CIFAR-100 AlexNet: 3×3 stride 2 padding 1, then 3×3 convs; pools 3/2 take 16 → 7 → 3 → 1.
    (32, "cifar", [(3, 2, 1), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 1, 1)], [(64, 7, 7), (192, 3, 3), (256, 1, 1)]),
    # Their Tiny ImageNet AlexNet: 11×11 stride 4 padding 2, then 5×5 padding 2; 64 → 15 → 7 → 3 → 1.
    (64, "tiny-imagenet", [(11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1)],
     [(64, 7, 7), (192, 3, 3), (256, 1, 1)]),
])  # fmt: skip
def test_alexnet_variants_follow_the_authors(size: int, variant: str, convs: list, pools: list) -> None:
    alex = load_model("alexnet", num_classes=100, input_size=size)
    assert alex.variant == variant
    layers = [m for m in alex.features if isinstance(m, nn.Conv2d)]
    assert [(m.kernel_size[0], m.stride[0], m.padding[0]) for m in layers] == convs
    assert [m.out_channels for m in layers] == [64, 192, 384, 256, 256]
    assert all(m.kernel_size == 3 and m.stride == 2 for m in alex.features if isinstance(m, nn.MaxPool2d))
    x = torch.zeros(2, 3, size, size)
    assert _map_sizes(alex, x, (nn.MaxPool2d,)) == pools
    first = _map_sizes(alex, x, (nn.Conv2d,))[0]
    assert first == ((64, 16, 16) if variant == "cifar" else (64, 15, 15))
    assert _linear_widths(alex) == [(256, 4096), (4096, 4096), (4096, 100)]
    assert alex(x).shape == (2, 100)
    assert paper_layers(alex) == ["flatten", "fc1", "fc2"]


def test_alexnet_refuses_inputs_its_pools_cannot_take() -> None:
    assert load_model("alexnet", input_size=29).flat_features == 256  # 15 → 7 → 3 → 1: the smallest that pools
    with pytest.raises(InputError, match="at least 29×29"):
        load_model("alexnet", input_size=28)


def _torchvision_resnet18(ours: nn.Module) -> nn.Module:
    """torchvision's ResNet-18 with the authors' CIFAR changes (3×3 stride-1 stem, the max-pool kept, 10 classes),
    holding *ours*'s weights: an independent reference, whose FX node names the authors' code taps."""
    import torchvision

    ref = torchvision.models.resnet18(num_classes=10)
    ref.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    names = {k.replace(".shortcut.", ".downsample.").replace("head.", "fc."): v for k, v in ours.state_dict().items()}
    ref.load_state_dict(names)
    return ref


# The authors' nine ResNet-18 probe points as torchvision FX nodes, and ours.
_AUTHORS_NODES = {"maxpool": "maxpool", "layer1.0.relu": "layer1.0.relu1", "layer1.0.relu_1": "layer1.0",
                  "layer1.1.relu": "layer1.1.relu1", "layer1.1.relu_1": "layer1", "layer2.1.relu_1": "layer2",
                  "layer3.1.relu_1": "layer3", "layer4.1.relu_1": "layer4", "flatten": "flatten"}


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_resnet18_probe_points_are_the_authors_nine(mode: str) -> None:
    from torchvision.models.feature_extraction import create_feature_extractor

    from masc_probe.layers import FeatureTap

    torch.manual_seed(0)
    res = load_model("resnet18-cifar", num_classes=10)
    assert res.conv1.kernel_size == (3, 3) and res.conv1.stride == (1, 1)
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in res.modules()) == 17  # stem + 16
    with torch.no_grad():  # BatchNorm statistics other than the init's, so that eval mode is not the identity
        for m in res.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    assert paper_layers(res) == list(_AUTHORS_NODES.values())
    ref = _torchvision_resnet18(res)
    x = torch.randn(3, 3, 32, 32)
    res.eval(), ref.eval()
    torch.testing.assert_close(res(x), ref(x), rtol=1e-5, atol=1e-5)
    buffers = {k: v.clone() for k, v in res.state_dict().items()}
    with FeatureTap(res, list(_AUTHORS_NODES.values()), mode=mode) as tap:
        ours = tap(x)
    # The tap leaves the model as it found it, though train-mode BatchNorm updates its running statistics.
    assert all(torch.equal(v, res.state_dict()[k]) for k, v in buffers.items())
    ref.train(mode == "train")
    extractor = create_feature_extractor(ref, return_nodes=list(_AUTHORS_NODES))
    with torch.no_grad():
        # The authors' extraction: the model left in train mode, one image per batch.
        theirs = ({k: v for k, v in extractor(x).items()} if mode == "eval" else
                  {k: torch.cat(v) for k, v in zip(_AUTHORS_NODES, zip(*[extractor(x[i:i + 1]).values()
                                                                          for i in range(len(x))]))})
    widths = {name: ours[name][0].numel() for name in ours}
    assert widths == {"maxpool": 16384, "layer1.0.relu1": 16384, "layer1.0": 16384, "layer1.1.relu1": 16384,
                      "layer1": 16384, "layer2": 8192, "layer3": 4096, "layer4": 2048, "flatten": 512}
    for node, name in _AUTHORS_NODES.items():
        torch.testing.assert_close(ours[name], theirs[node], rtol=1e-5, atol=1e-5)


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
