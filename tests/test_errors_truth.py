"""Errors that tell the truth (issue 27): a shape message only for a shape problem, the model's own error with its
layer otherwise; exit code 2 only for usage errors; the traceback on request for every error; an unknown command
named as such; the Hub's errors translated, nobody else's; the model's accuracy computed or explained; every
device's random state left alone by a re-initialization."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from masc_probe import ProbeRunner
from masc_probe.cli import main
from masc_probe.errors import DataUnavailableError, HubError, InputError, ModelError
from masc_probe.runner._reinit import reinitialized


class Asserting(nn.Module):
    """Takes (B, 16) like its first layer says, and fails inside `block` as a device-side assert does."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(16, 8)
        self.block = Failing()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.first(x)))


class Failing(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.abs() >= 0).all()):  # data-dependent: FX cannot trace it, so the layers are read by hooks
            raise RuntimeError("CUDA error: device-side assert triggered")
        return x


def data(shape: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(12, *shape, generator=g), torch.arange(12) % 3)]


def test_a_failure_inside_the_model_on_a_right_batch_is_the_models_error_with_its_layer() -> None:
    runner = ProbeRunner(Asserting(), ["first"], probes=("ncm",), controls=(), progress=False)
    with pytest.raises(ModelError) as err:
        runner.fit(data((16,)), num_classes=3)
    message = str(err.value)
    assert "layer 'block'" in message and "device-side assert triggered" in message
    assert "cannot take a batch" not in message and "\n" not in message
    assert isinstance(err.value.__cause__, RuntimeError)  # the model's own error, kept for MASC_PROBE_DEBUG


def test_a_batch_that_does_not_fit_the_first_layer_is_a_shape_error() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    runner = ProbeRunner(model, ["2"], probes=("ncm",), controls=(), progress=False)
    with pytest.raises(InputError, match=r"cannot take a batch of shape \(12, 3, 5, 5\) \(its first layer '1' is "
                                         r"Linear\(in_features=16\)\)"):
        runner.fit(data((3, 5, 5)), num_classes=3)
    runner.fit(data((4, 4)), num_classes=3)  # (B, 4, 4) flattens to the 16 it takes


def test_hub_errors_translates_the_hub_clients_errors_only() -> None:
    from huggingface_hub.utils import validate_repo_id

    from masc_probe._hub import hub_errors

    with pytest.raises(ValueError, match="our own bug") as err:
        with hub_errors("me/x", revision=None, token=None, what="download"):
            raise ValueError("our own bug")
    assert not isinstance(err.value, HubError)
    with pytest.raises(HubError, match="the Hub refused the download for 'me/x'"):
        with hub_errors("me/x", revision=None, token=None, what="download"):
            validate_repo_id("not a/repo id")  # huggingface_hub's own check raises a ValueError


def test_reinitialized_leaves_every_devices_random_state_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda_seeds: list[int] = []
    if not torch.cuda.is_available():  # a seed queued for CUDA would apply when CUDA starts: record any
        monkeypatch.setattr(torch.cuda, "manual_seed_all", cuda_seeds.append)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 3)).to(device)
    cpu_before = torch.get_rng_state()
    cuda_before = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    reinitialized(model, seed=3)
    assert torch.equal(torch.get_rng_state(), cpu_before)
    assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all() if cuda_before else [], cuda_before))
    assert cuda_seeds == []


# --------------------------------------------------------------------------------------------------- the CLI
def _run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, error: BaseException,
         debug: str | None = None) -> tuple[int, str]:
    """``masc-probe report X`` whose command raises *error*: the exit code and stderr."""
    import masc_probe.cli as cli

    def fail(ns: Any) -> int:
        raise error

    monkeypatch.setitem(cli.COMMANDS, "report", fail)
    if debug is None:
        monkeypatch.delenv("MASC_PROBE_DEBUG", raising=False)
    else:
        monkeypatch.setenv("MASC_PROBE_DEBUG", debug)
    code = main(["report", "somewhere"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("error", "code"), [
    (InputError("expected a rate, got 2"), 2),
    (HubError("cannot reach the Hub at https://huggingface.co"), 1),
    (DataUnavailableError("cifar10 is not in the local cache"), 1),
    (ModelError("Net failed in layer 'block'"), 1),
    (OSError("No space left on device"), 1),
])
def test_exit_codes_are_2_for_usage_errors_and_1_for_the_rest(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              error: BaseException, code: int) -> None:
    got, err = _run(capsys, monkeypatch, error)
    assert got == code and err.count("\n") == 1 and str(error) in err and "Traceback" not in err


@pytest.mark.parametrize("error", [InputError("expected a rate, got 2"), HubError("the Hub refused")])
def test_masc_probe_debug_prints_the_traceback_of_every_error(capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              error: BaseException) -> None:
    code, err = _run(capsys, monkeypatch, error, debug="1")
    assert code in (1, 2) and err.startswith("Traceback") and err.endswith(f"masc-probe: error: {error}\n")
    assert _run(capsys, monkeypatch, error, debug="0")[1].count("\n") == 1  # 0 means off


@pytest.mark.parametrize(("word", "answer"), [
    ("lable-issues", "unknown command 'lable-issues'; did you mean 'label-issues'?"),
    ("prob", "unknown command 'prob'; did you mean 'probe'?"),
    ("frobnicate", "unknown command 'frobnicate'; commands: run, train, probe"),
])
def test_an_unknown_command_is_named_as_such(capsys: pytest.CaptureFixture[str], word: str, answer: str) -> None:
    assert main([word, "RUN"]) == 2
    assert capsys.readouterr().err.startswith(f"masc-probe: error: {answer}")
