"""Tests of masc_probe.layers: every tapped value is checked against the same value recomputed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from masc_probe.errors import InputError, UnknownNameError
from masc_probe.layers import FeatureTap, default_layers, list_layers


def _bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode batch norm written out: (x - running mean) / sqrt(running var + eps) * weight + bias."""
    shape = (1, -1, 1, 1)
    scale = (bn.running_var + bn.eps).rsqrt() * bn.weight
    return (x - bn.running_mean.view(shape)) * scale.view(shape) + bn.bias.view(shape)


def _randomize_batchnorms(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial weights and statistics (a fresh one is the identity in eval mode)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, (lo, hi) in ((m.weight, (0.5, 1.5)), (m.bias, (-0.5, 0.5)),
                                    (m.running_mean, (-0.3, 0.3)), (m.running_var, (0.5, 1.5))):
                    t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)


# --------------------------------------------------------------------------------------------------- nn.Sequential


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(inplace=True), nn.Linear(8, 6),
                         nn.ReLU(inplace=True), nn.Linear(6, 3))


def test_sequential_names_and_defaults() -> None:
    model = _mlp()
    assert list_layers(model) == ["input", "0", "1", "2", "3", "4", "5"]
    # Every child but the logits; the Flatten child is a probe point of its own.
    assert default_layers(model) == ["input", "0", "1", "2", "3", "4"]


@pytest.mark.parametrize("method", ["auto", "fx", "hooks"])
def test_sequential_values_survive_inplace_relu(method: str) -> None:
    model = _mlp()
    x = torch.randn(5, 3, 4)
    with FeatureTap(model, ["input", "1", "2", "3", "4"], method=method) as tap:
        out = tap(x)
    assert list(out) == ["input", "1", "2", "3", "4"]
    h = x.reshape(5, 12)
    z1 = h @ model[1].weight.T + model[1].bias
    a1 = z1.clamp_min(0)
    z2 = a1 @ model[3].weight.T + model[3].bias
    assert (z1 < 0).any()  # else the in-place ReLU could not have changed it and the check below would prove nothing
    assert_close(out["input"], x)
    assert_close(out["1"], z1)
    assert_close(out["2"], a1)
    assert_close(out["3"], z2)
    assert_close(out["4"], z2.clamp_min(0))
    assert not out["1"].requires_grad


# --------------------------------------------------------------------------------------------------- a small CNN


class SmallCNN(nn.Module):
    """Reuses its max-pool and reads the batch size in forward, as many hand-written CNNs do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 2 * 2, 16)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn(self.conv1(x))))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        return self.head(self.drop(F.relu(self.fc1(x))))


@pytest.fixture
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN()
    _randomize_batchnorms(model)
    return model


def test_cnn_names_defaults_and_values(cnn: SmallCNN) -> None:
    names = list_layers(cnn)
    assert names[0] == "input"
    assert {"conv1", "bn", "relu", "pool_0", "pool_1", "view", "fc1", "relu_2", "drop", "head"} <= set(names)
    assert "pool" not in names
    # Top-level children in forward order, without the reused pool, the dropout and the logits.
    assert default_layers(cnn) == ["input", "conv1", "bn", "conv2", "fc1"]
    x = torch.randn(3, 1, 8, 8)
    with FeatureTap(cnn, ["pool_0", "pool_1", "view", "relu_2", "drop", "head"]) as tap:
        out = tap(x)
    p0 = F.max_pool2d(F.relu(_bn(cnn.bn, F.conv2d(x, cnn.conv1.weight, cnn.conv1.bias, padding=1))), 2)
    p1 = F.max_pool2d(F.relu(F.conv2d(p0, cnn.conv2.weight, cnn.conv2.bias, padding=1)), 2)
    flat = p1.reshape(3, -1)
    hidden = F.relu(flat @ cnn.fc1.weight.T + cnn.fc1.bias)
    assert_close(out["pool_0"], p0)
    assert_close(out["pool_1"], p1)
    assert_close(out["view"], flat)
    assert_close(out["relu_2"], hidden)
    assert_close(out["drop"], hidden)  # eval mode: dropout is the identity
    assert_close(out["head"], hidden @ cnn.head.weight.T + cnn.head.bias)


def test_cnn_refuses_reused_module_and_non_tensor_nodes(cnn: SmallCNN) -> None:
    with pytest.raises(InputError, match=r"module 'pool' runs 2 times per forward.*pool_0, pool_1$"):
        FeatureTap(cnn, ["pool"])
    with FeatureTap(cnn, ["size"]) as tap, pytest.raises(InputError, match="'size' gives int"):
        tap(torch.randn(2, 1, 8, 8))


# ------------------------------------------------------------------------------------- timm resnet18 (in-place blocks)


@pytest.fixture(scope="module")
def timm_resnet() -> nn.Module:
    import timm
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    # timm's zero_init_last makes every block's last BN output zero, which would hide an add/ReLU mix-up.
    assert torch.all(model.layer1[0].bn2.weight == 0)
    _randomize_batchnorms(model)
    return model.eval()


def _timm_block1(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stem and first residual block of timm's ResNet, recomputed with out-of-place functional ops."""
    stem = F.max_pool2d(F.relu(_bn(model.bn1, F.conv2d(x, model.conv1.weight, stride=2, padding=3))), 3, 2, 1)
    b = model.layer1[0]
    h = F.relu(_bn(b.bn1, F.conv2d(stem, b.conv1.weight, padding=1)))
    bn2 = _bn(b.bn2, F.conv2d(h, b.conv2.weight, padding=1))
    return {"stem": stem, "bn2": bn2, "add": bn2 + stem, "out": F.relu(bn2 + stem)}


def test_timm_block_taps_equal_hand_recomputation(timm_resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    ref = _timm_block1(timm_resnet, x)
    assert (ref["add"] < 0).any()  # the ReLU changes the sum, so reading it after the ReLU would be caught
    names = ["maxpool", "layer1.0.bn2", "layer1.0.add", "layer1.0.act2", "layer1.0", "global_pool", "fc"]
    with FeatureTap(timm_resnet, names) as tap:
        out = tap(x)
    assert_close(out["maxpool"], ref["stem"])
    assert_close(out["layer1.0.bn2"], ref["bn2"])
    assert_close(out["layer1.0.add"], ref["add"])
    assert_close(out["layer1.0.act2"], ref["out"])
    assert_close(out["layer1.0"], ref["out"])
    with torch.no_grad():
        features = timm_resnet.forward_features(x)
        logits = timm_resnet(x)
    assert_close(out["global_pool"], features.mean((2, 3)))
    assert_close(out["fc"], logits)


def test_timm_hook_taps_copy_before_inplace_add(timm_resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    ref = _timm_block1(timm_resnet, x)
    # What a plain hook keeps: the block's `x += shortcut` and in-place ReLU overwrite bn2's output afterwards.
    kept = {}
    handle = timm_resnet.layer1[0].bn2.register_forward_hook(lambda m, a, out: kept.setdefault("bn2", out))
    with torch.no_grad():
        timm_resnet(x)
    handle.remove()
    assert_close(kept["bn2"], ref["out"])
    with FeatureTap(timm_resnet, ["layer1.0.bn2", "layer1.0.act2", "layer1.0"], method="hooks") as tap:
        out = tap(x)
    assert_close(out["layer1.0.bn2"], ref["bn2"])
    assert_close(out["layer1.0.act2"], ref["out"])
    assert_close(out["layer1.0"], ref["out"])
    with pytest.raises(InputError, match="not a module"):
        FeatureTap(timm_resnet, ["layer1.0.add"], method="hooks")


def test_timm_names_and_defaults(timm_resnet: nn.Module) -> None:
    import timm

    names = list_layers(timm_resnet)
    _, eval_nodes = timm.models.get_graph_node_names(timm_resnet)
    assert eval_nodes[0] == "x"  # the placeholder, offered as "input"
    assert set(eval_nodes[1:]) <= set(names)
    assert {"input", "layer1", "layer1.0", "layer2.0.downsample", "global_pool"} <= set(names)
    assert "x" not in names
    assert names.index("layer1.0.add") < names.index("layer1.0") < names.index("layer1") < names.index("layer2")
    stages = [info["module"] for info in timm_resnet.feature_info]
    assert default_layers(timm_resnet) == [*stages, "global_pool"]


def test_tap_runs_in_eval_mode_and_restores_training_flags(timm_resnet: nn.Module) -> None:
    timm_resnet.train()
    timm_resnet.layer2.eval()  # mixed flags must come back as they were, not as one model.train()
    flags = {name: m.training for name, m in timm_resnet.named_modules()}
    running_mean = timm_resnet.bn1.running_mean.clone()
    x = torch.randn(2, 3, 32, 32)
    try:
        with FeatureTap(timm_resnet, ["layer1.0.add"]) as tap:
            out = tap(x)
        assert {name: m.training for name, m in timm_resnet.named_modules()} == flags
        assert torch.equal(timm_resnet.bn1.running_mean, running_mean)  # a train-mode forward would update it
    finally:
        timm_resnet.eval()
    assert_close(out["layer1.0.add"], _timm_block1(timm_resnet, x)["add"])


# -------------------------------------------------------------------------------- torchvision resnet18 reuses relu


def test_torchvision_reused_relu_is_refused_with_its_calls() -> None:
    import torchvision
    from torchvision.models.feature_extraction import get_graph_node_names

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    _randomize_batchnorms(model)
    x = torch.randn(2, 3, 32, 32)
    fired = {"relu": 0, "layer1.0.relu": 0}
    handles = [model.get_submodule(n).register_forward_hook(lambda *a, n=n: fired.__setitem__(n, fired[n] + 1))
               for n in fired]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert fired == {"relu": 1, "layer1.0.relu": 2}

    with pytest.raises(InputError) as err:
        FeatureTap(model, ["layer1.0.relu"])
    assert str(err.value) == ("module 'layer1.0.relu' runs 2 times per forward; tap one call by its node name: "
                              "layer1.0.relu_0, layer1.0.relu_1")
    names = list_layers(model)
    _, eval_nodes = get_graph_node_names(model)
    reused = {n for n in eval_nodes if n.endswith(".relu")}  # first calls of the blocks' reused ReLUs
    assert set(eval_nodes[1:]) - reused <= set(names)
    assert not reused & set(names)
    assert {"relu", "layer1.0.relu_0", "layer1.0.relu_1"} <= set(names)

    with FeatureTap(model, ["relu", "layer1.0.relu_0", "layer1.0.relu_1"]) as tap:
        out = tap(x)
    stem = F.relu(_bn(model.bn1, F.conv2d(x, model.conv1.weight, stride=2, padding=3)))
    b = model.layer1[0]
    h = F.relu(_bn(b.bn1, F.conv2d(F.max_pool2d(stem, 3, 2, 1), b.conv1.weight, padding=1)))
    block = F.relu(_bn(b.bn2, F.conv2d(h, b.conv2.weight, padding=1)) + F.max_pool2d(stem, 3, 2, 1))
    assert_close(out["relu"], stem)
    assert_close(out["layer1.0.relu_0"], h)
    assert_close(out["layer1.0.relu_1"], block)


# --------------------------------------------------------------------------------------- a model FX cannot trace


class Branchy(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(5, 4)
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if h.sum() > 0:
            h = h * 2
        h = self.fc2(self.act(h))
        return self.head(self.act(h))


def test_untraceable_model_is_tapped_through_hooks() -> None:
    torch.manual_seed(0)
    model = Branchy()
    assert list_layers(model) == ["input", "fc1", "act", "fc2", "unused", "head"]
    with pytest.raises(InputError, match="method='fx' needs a model torch.fx can trace"):
        FeatureTap(model, ["fc1"], method="fx")
    for sign in (1.0, -1.0):  # both branches
        x = sign * torch.randn(4, 6).abs()
        with FeatureTap(model, ["input", "fc1", "fc2"]) as tap:
            out = tap(x)
        z1 = x @ model.fc1.weight.T + model.fc1.bias
        h = z1 * 2 if z1.sum() > 0 else z1
        assert (z1 < 0).any()  # the in-place ReLU would have changed fc1's output
        assert_close(out["input"], x)
        assert_close(out["fc1"], z1)
        assert_close(out["fc2"], F.relu(h) @ model.fc2.weight.T + model.fc2.bias)


def test_untraceable_model_checks_each_module_runs_once() -> None:
    model = Branchy()
    with FeatureTap(model, ["act"]) as tap, pytest.raises(InputError, match="'act' ran 2 times"):
        tap(torch.randn(2, 6))
    with FeatureTap(model, ["unused"]) as tap, pytest.raises(InputError, match="'unused' did not run"):
        tap(torch.randn(2, 6))


# ---------------------------------------------------------------------------------------------- names and errors


def test_unknown_name_lists_closest_on_one_line(cnn: SmallCNN) -> None:
    with pytest.raises(UnknownNameError) as err:
        FeatureTap(cnn, ["conv3"])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("unknown layer 'conv3' for SmallCNN; did you mean: ")
    assert "conv1" in message and "conv2" in message
    with pytest.raises(UnknownNameError, match="valid: input, conv1"):
        FeatureTap(cnn, ["zzzzzzzz"])


def test_bad_layer_lists_are_refused(cnn: SmallCNN) -> None:
    with pytest.raises(InputError, match="named 2 times"):
        FeatureTap(cnn, ["conv1", "conv1"])
    with pytest.raises(InputError, match="empty"):
        FeatureTap(cnn, [])
    with pytest.raises(InputError, match="list of layer names"):
        FeatureTap(cnn, "conv1")  # type: ignore[arg-type]


def test_close_removes_hooks_and_default_layers_are_used() -> None:
    model = Branchy()
    tap = FeatureTap(model)
    assert tap.layers == ["input", "fc1", "act", "fc2", "unused"]  # definition order, the last child left out
    assert model.fc1._forward_hooks
    tap.close()
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(InputError, match="closed"):
        tap(torch.randn(2, 6))


def test_declared_probe_layers_are_the_default() -> None:
    class Declared(nn.Sequential):
        PROBE_LAYERS = ("input", "1")

    assert default_layers(Declared(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))) == ["input", "1"]


class _InPlaceBlock(nn.Module):
    """Returns a tensor it changed in place after computing it: its output is not the value of its last node's input."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        y.relu_()
        return y


class _Named(nn.Module):
    """Has its own layer called ``input`` (as masc_probe's paper models do) and a block working in place."""

    def __init__(self) -> None:
        super().__init__()
        self.input = nn.Identity()
        self.block = _InPlaceBlock()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.input(x)))


def test_module_name_reads_what_the_module_returns() -> None:
    torch.manual_seed(0)
    model = _Named()
    names = list_layers(model)
    assert names[0] == "input" and names.count("input") == 1
    assert names.index("block.lin") < names.index("block.relu_") < names.index("block")
    assert default_layers(model) == ["input", "block"]
    x = torch.randn(6, 4)
    with FeatureTap(model, ["input", "block.lin", "block"]) as tap:
        out = tap(x)
    z = x @ model.block.lin.weight.T + model.block.lin.bias
    assert (z < 0).any()
    assert_close(out["input"], x)
    assert_close(out["block.lin"], z)  # the node, before the in-place ReLU
    assert_close(out["block"], z.clamp_min(0))  # the module's return value, after it


def test_modules_inside_timm_leaf_modules_are_hooked_beside_fx_nodes() -> None:
    import timm
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), timm.layers.BatchNormAct2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    _randomize_batchnorms(model)
    names = list_layers(model)
    # timm registers BatchNormAct2d as an FX leaf: its `act` is not in the graph, so a hook reads it.
    assert names[:5] == ["input", "0", "1", "1.drop", "1.act"]
    x = torch.randn(3, 1, 6, 6)
    with FeatureTap(model, ["0", "1.act", "2"]) as tap:
        out = tap(x)
    conv = F.conv2d(x, model[0].weight, model[0].bias)
    assert_close(out["0"], conv)
    assert_close(out["1.act"], F.relu(_bn(model[1], conv)))
    assert_close(out["2"], F.relu(_bn(model[1], conv)).flatten(1))


class _Scaled(nn.Module):
    """Traced code reads a buffer directly, so the FX graph holds that tensor itself."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("scale", torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


def test_tap_follows_the_model_to_another_dtype() -> None:
    torch.manual_seed(0)
    model = _Scaled()
    tap = FeatureTap(model, ["mul"])
    model.double()  # replaces the buffer object the graph was built with
    with torch.no_grad():
        model.scale.mul_(10.0)
    x = torch.randn(4, 3, dtype=torch.float64)
    out = tap(x)["mul"]
    assert out.dtype == torch.float64
    assert_close(out, (x @ model.lin.weight.T + model.lin.bias) * torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64))
    tap.close()


# ------------------------------------------------------------------------------------------------------- reducers
def _timm_vit(**kwargs: object) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", patch_size=4, img_size=16, depth=2, num_classes=3,
                             **kwargs).eval()


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification  # in the test extra: no skip

    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=64, num_labels=3)).eval()


def _block_output(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The raw output of module *name*, captured by a plain forward hook (independent of FeatureTap)."""
    seen: list[torch.Tensor] = []
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize(("make", "block"), [(_timm_vit, "blocks.1"), (_hf_vit, "vit.layers.1")])
def test_cls_and_mean_reducers_equal_a_hand_computation_on_a_vit_block(make, block: str) -> None:
    from masc_probe import ProbeRunner

    model = make()
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = _block_output(model, block, x)
    assert out.shape == (6, 17, out.shape[2])  # 16 patches + the class token
    rows = {r: ProbeRunner(model, [block], probes=("ncm",), reducer=r, progress=False).features(x)[block]
            for r in ("cls", "mean", "flatten", "auto")}
    assert_close(rows["cls"], out[:, 0], rtol=0, atol=0)
    assert_close(rows["mean"], out.sum(1) / out.shape[1])
    assert_close(rows["flatten"], out.reshape(6, -1), rtol=0, atol=0)
    assert_close(rows["auto"], rows["cls"], rtol=0, atol=0)  # a ViT block with a class token: CLS


def test_auto_reducer_chooses_per_layer_and_the_report_records_it() -> None:
    from masc_probe import ProbeRunner

    x = torch.randn(30, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.arange(30) % 3
    vit = _timm_vit()
    runner = ProbeRunner(vit, ["input", "patch_embed.proj", "blocks.0", "norm"], probes=("ncm",), reducer="auto",
                         progress=False).fit([(x, y)])
    expected = {"input": "flatten", "patch_embed.proj": "flatten", "blocks.0": "cls", "norm": "flatten"}
    assert runner.reducer.spec == expected
    assert runner.evaluate([(x, y)]).to_dict()["reducer"] == expected
    pooled = _timm_vit(class_token=False, global_pool="avg")  # no class token: the mean token
    rows = ProbeRunner(pooled, ["blocks.0"], probes=("ncm",), reducer="auto", progress=False).features(x)
    assert_close(rows["blocks.0"], _block_output(pooled, "blocks.0", x).mean(1))
    mixed = ProbeRunner(vit, ["patch_embed.proj", "blocks.0"], probes=("ncm",), progress=False,
                        reducer={"patch_embed.proj": "gap", "blocks.0": "mean"}).features(x)
    assert_close(mixed["patch_embed.proj"], _block_output(vit, "patch_embed.proj", x).mean((2, 3)))
    default = ProbeRunner(vit, ["blocks.0"], probes=("ncm",), progress=False).fit([(x, y)])
    assert default.evaluate([(x, y)]).to_dict()["reducer"] is None  # the paper's flatten, as before


@pytest.mark.parametrize(("layer", "reducer", "message"), [
    ("patch_embed.proj", "cls", "reducer 'cls' takes token maps (B, T, D), but layer 'patch_embed.proj' gives "
                                "(4, 192, 4, 4)"),
    ("blocks.0", "gap", "reducer 'gap' takes conv maps (B, C, H, W) or rows (B, D), but layer 'blocks.0' gives "
                        "(4, 17, 192)"),
    ("head", "mean", "reducer 'mean' takes token maps (B, T, D), but layer 'head' gives (4, 3)"),
])
def test_a_reducer_that_does_not_fit_the_layer_is_one_line(layer: str, reducer: str, message: str) -> None:
    from masc_probe import ProbeRunner

    runner = ProbeRunner(_timm_vit(), [layer], probes=("ncm",), reducer=reducer, progress=False)
    with pytest.raises(InputError) as err:
        runner.features(torch.zeros(4, 3, 16, 16))
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UnknownNameError, match=r"reducer must be one of .*\(or 'random:D' .*\); got 'token'"):
        ProbeRunner(_timm_vit(), [layer], reducer={layer: "token"})


def test_transformers_model_is_tapped_with_pixel_values_and_its_blocks_are_the_default() -> None:
    model = _hf_vit()
    assert default_layers(model) == ["input", "vit.layers.0", "vit.layers.1"]
    calls: list[tuple[int, list[str]]] = []
    handle = model.register_forward_pre_hook(lambda m, a, k: calls.append((len(a), sorted(k))), with_kwargs=True)
    x = torch.randn(2, 3, 16, 16)
    with FeatureTap(model, ["vit.layers.0"]) as tap:
        value = tap(x)["vit.layers.0"]
    handle.remove()
    assert calls == [(0, ["pixel_values"])]
    assert_close(value, _block_output(model, "vit.layers.0", x), rtol=0, atol=0)


def test_markdown_names_each_layers_reducer_where_it_is_not_flatten() -> None:
    from masc_probe import ProbeRunner

    x = torch.randn(30, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.arange(30) % 3
    runner = ProbeRunner(_timm_vit(), ["input", "blocks.0"], probes=("ncm",), reducer="mean", progress=False)
    table = runner.fit([(x, y)]).evaluate([(x, y)]).to_markdown()
    assert "| `blocks.0` (mean) |" in table and "| `input` |" in table


class _DictBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.fc(x)
        return {"stats": h.mean(0), "hidden": torch.relu(h)}  # "stats" is (6,): not one value per sample


class _DictNet(nn.Module):
    def __init__(self, traceable: bool) -> None:
        super().__init__()
        self.block, self.head, self.traceable = _DictBlock(), nn.Linear(6, 2), traceable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.traceable and bool(x.isfinite().all()):  # control flow on a value: FX cannot trace it
            pass
        return self.head(self.block(x)["hidden"])


@pytest.mark.parametrize("traceable", [True, False])
def test_an_element_of_a_dict_valued_layer_is_named_by_its_key(traceable: bool) -> None:
    model = _DictNet(traceable)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    expected = torch.relu(model.block.fc(x)).detach()
    assert ("block[hidden]" in list_layers(model)) == traceable  # an FX trace knows the elements; hooks do not
    with FeatureTap(model, ["block[hidden]", "block"]) as tap:
        values = tap(x)
        assert tap.picked == {"block": "block[hidden]"}  # "stats" comes first but holds no row per sample
    assert_close(values["block[hidden]"], expected, rtol=0, atol=0)
    assert_close(values["block"], expected, rtol=0, atol=0)
    with pytest.raises(InputError, match=r"unknown layer 'block\[logits\]'|not the key 'logits'"):
        with FeatureTap(model, ["block[logits]"]) as tap:  # traced: refused by name; hooked: by its value
            tap(x)
