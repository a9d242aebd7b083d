"""models/_logits.py: the one rule that finds a model's class scores, held to the outputs real libraries return
(the reference is each library's own documented field: ``ModelOutput.logits``, ``GoogLeNetOutputs.logits``)."""

from __future__ import annotations

from collections import OrderedDict
from types import MappingProxyType

import pytest
import torch
from torchvision.models import GoogLeNetOutputs
from transformers.modeling_outputs import ImageClassifierOutput

from masc_probe.errors import InputError
from masc_probe.models import model_logits
from masc_probe.models._logits import LOOKED_FOR, logits_of
from masc_probe.runner._forward import why_no_accuracy

T = torch.arange(6.0).reshape(2, 3)
AUX = torch.ones(2, 3)


@pytest.mark.parametrize("output", [
    T,
    ImageClassifierOutput(logits=T, hidden_states=(AUX,)),  # transformers: a dict subclass with attributes
    {"logits": T, "features": AUX},
    OrderedDict(features=AUX, logits=T),
    MappingProxyType({"logits": T}),  # a mapping that is not a dict
    GoogLeNetOutputs(logits=T, aux_logits2=AUX, aux_logits1=AUX),  # torchvision's train-mode namedtuple
    (T, AUX),
    [T],
])
def test_the_rule_finds_the_field_each_library_documents(output: object) -> None:
    assert logits_of(output) is T
    assert model_logits(output) is T


@pytest.mark.parametrize("output", [{"hidden_states": T}, (), ("text", T), None, 3.0])
def test_no_tensor_where_the_rule_looks_is_none_or_one_line(output: object) -> None:
    assert logits_of(output) is None
    with pytest.raises(InputError, match=r"expected the model to return logits \(a tensor, \.logits") as err:
        model_logits(output)
    assert type(output).__name__ in str(err.value) and "\n" not in str(err.value)


def test_the_runners_reason_names_the_same_rule() -> None:
    assert why_no_accuracy(T, logits_of(T)) is None
    reason = why_no_accuracy({"hidden_states": T}, None)
    assert LOOKED_FOR in reason and "hidden_states" in reason  # type: ignore[operator]
    assert "(2, 3, 1)" in why_no_accuracy(T[..., None], logits_of(T[..., None]))  # type: ignore[operator]
