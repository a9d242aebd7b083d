"""Any module, default settings: ``ProbeRunner(model).fit(train).evaluate(test)`` gives a report for ordinary modules
nobody wrote for masc-probe, and where it cannot build the init control or read the model's accuracy, the report
says why (issue 27).

Each model is tiny and each data set is 60 random samples of 3 classes: what is checked is that a report comes back
and what it holds, against numbers computed here by hand from the model itself (its logits, its layer's value).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from masc_probe import ProbeRunner, list_layers
from masc_probe.errors import InputError
from masc_probe.layers import FeatureTap, default_layers

N_CLASSES = 3


def batches(shape: tuple[int, ...], *, seed: int, n: int = 60, size: int = 20) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    return [(x[i:i + size], y[i:i + size]) for i in range(0, n, size)]


def probe(model: nn.Module, shape: tuple[int, ...], **fit: Any) -> Any:
    """The default runner on tiny random data; the report."""
    torch.manual_seed(0)
    return ProbeRunner(model, progress=False).fit(batches(shape, seed=1), **fit).evaluate(batches(shape, seed=2))


def own_accuracy(model: nn.Module, data: list[tuple[torch.Tensor, ...]], pick: Any) -> float:
    """The model's accuracy computed here: argmax of ``pick(model(x))`` against y, in eval mode."""
    model.eval()
    with torch.no_grad():
        hits = sum(int((pick(model(x)).argmax(1) == y).sum()) for x, y in data)
    return hits / sum(len(y) for _, y in data)


# ------------------------------------------------------------------------------------------------ the models
class ClassToken(nn.Module):
    """A transformer encoder with a class-token parameter (no module owns it, so no reset_parameters() re-draws it)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.cls = nn.Parameter(torch.randn(1, 1, 32))
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.head = nn.Linear(32, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x)], dim=1)
        return self.head(self.encoder(tokens)[:, 0])


class Recurrent(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=batch_first)
        self.head = nn.Linear(8, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x if self.lstm.batch_first else x.transpose(0, 1))
        return self.head(out[:, -1] if self.lstm.batch_first else out[-1])


class DictOut(nn.Module):
    def __init__(self, key: str = "logits") -> None:
        super().__init__()
        self.key = key
        self.hidden = nn.Linear(16, 8)
        self.out = nn.Linear(8, N_CLASSES)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.key: self.out(torch.relu(self.hidden(x.flatten(1))))}


class TupleOut(DictOut):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        h = torch.relu(self.hidden(x.flatten(1)))
        return self.out(h), h


class Norms(nn.Module):
    """BatchNorm, GroupNorm, dropout and a plain buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.drop = nn.Dropout(0.2)
        self.register_buffer("gain", torch.tensor(2.0))
        self.fc = nn.Linear(64, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.gn(self.bn(self.conv(x))) * self.gain).flatten(1))


# ------------------------------------------------------------------------------------------------ the tests
def test_a_class_token_transformer_gets_a_report_that_says_why_the_init_control_is_skipped() -> None:
    report = probe(ClassToken(), (4, 16)).to_dict()
    assert report["results"] and "init" not in report["controls"] and "input" in report["controls"]
    why = report["controls_skipped"]["init"]
    assert "cls" in why and "controls={'init': untrained_model" in why and "\n" not in why
    assert not [r for r in report["results"] if r.get("control") == "init"]


def test_torchvision_vision_transformer_and_resnet18() -> None:
    from torchvision.models import VisionTransformer, resnet18

    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                            num_classes=N_CLASSES)
    report = probe(vit, (3, 32, 32)).to_dict()
    assert "class_token" in report["controls_skipped"]["init"] and report["model_test_accuracy"] is not None
    net = resnet18(num_classes=N_CLASSES)
    report = probe(net, (3, 32, 32)).to_dict()
    assert report["controls"]["init"]["source"] == "re-initialized copy" and "controls_skipped" not in report
    assert report["model_test_accuracy"] == own_accuracy(net, batches((3, 32, 32), seed=2), lambda out: out)


def test_a_timm_vit_and_a_transformers_vit() -> None:
    import timm
    from transformers import ViTConfig, ViTForImageClassification

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=N_CLASSES)
    report = probe(vit, (3, 32, 32)).to_dict()
    assert report["controls"]["init"]["source"] == "re-initialized copy" and "controls_skipped" not in report
    hf = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32,
                                             num_attention_heads=2, intermediate_size=64, num_labels=N_CLASSES))
    report = probe(hf, (3, 32, 32)).to_dict()
    assert report["controls"]["init"]["source"] == "re-initialized copy"
    expected = own_accuracy(hf, batches((3, 32, 32), seed=2), lambda out: out.logits)
    assert report["model_test_accuracy"] == expected


@pytest.mark.parametrize(("model", "pick"), [(DictOut(), lambda out: out["logits"]),
                                             (TupleOut(), lambda out: out[0])])
def test_dict_and_tuple_outputs_give_the_models_accuracy(model: nn.Module, pick: Any) -> None:
    report = probe(model, (4, 4)).to_dict()
    assert report["model_test_accuracy"] == own_accuracy(model, batches((4, 4), seed=2), pick)
    assert "model_test_accuracy_note" not in report


def test_an_output_without_class_scores_is_said_in_the_report() -> None:
    # No class scores, so fit is told the number of classes (it says so when it is not: "pass num_classes=").
    report = probe(DictOut(key="scores"), (4, 4), num_classes=N_CLASSES).to_dict()
    assert report["model_test_accuracy"] is None
    note = report["model_test_accuracy_note"]
    assert "dict with keys ['scores']" in note and "not computed" in note


def test_an_lstm_is_probed_at_its_output_tensor_named_by_the_rule() -> None:
    model = Recurrent()
    assert "lstm[0]" in list_layers(model) and default_layers(model) == ["input", "lstm[0]"]
    report = probe(model, (5, 4)).to_dict()
    assert {r["layer"] for r in report["results"]} == {"input", "lstm[0]"}
    x = batches((5, 4), seed=3)[0][0]
    with FeatureTap(model, ["lstm[0]"]) as tap, torch.no_grad():
        torch.testing.assert_close(tap(x)["lstm[0]"], model.lstm(x)[0])
    with FeatureTap(model, ["lstm[1][0]"]) as tap, pytest.raises(InputError, match=r"gives a tensor of shape "
                                                                                 r"\(1, 20, 8\), not .* B=20"):
        tap(x)  # h_n is (layers, B, H): named, it is refused rather than read as 1 sample


def test_an_lstm_without_batch_first_is_left_out_of_the_defaults_with_the_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="masc_probe"):
        assert default_layers(Recurrent(batch_first=False)) == ["input"]
    assert "'lstm' is left out of the default layers" in caplog.text and "batch_first" in caplog.text


def test_a_bare_container_layer_gives_its_first_batched_tensor_and_records_it() -> None:
    model = TupleOut()
    x = batches((4, 4), seed=3)[0][0]
    wrapped = nn.Sequential()
    wrapped.add_module("net", model)  # the whole tuple-returning model as one layer of another
    for method in ("auto", "hooks"):  # a traced element (net[0]), and the rule on the value a hook reads
        with FeatureTap(wrapped, ["net"], method=method) as tap:
            value = tap(x)["net"]
            assert tap.picked == {"net": "net[0]"}
        torch.testing.assert_close(value, model(x)[0].detach())


def test_batchnorm_groupnorm_dropout_and_buffers() -> None:
    net = Norms()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)  # non-trivial statistics: eval mode must use them
    report = probe(net, (1, 4, 4)).to_dict()
    assert report["model_test_accuracy"] == own_accuracy(net, batches((1, 4, 4), seed=2), lambda out: out)
    assert report["controls"]["init"]["source"] == "re-initialized copy"
    assert {"conv", "bn", "gn"} <= {r["layer"] for r in report["results"]}
