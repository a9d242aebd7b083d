"""One torch.fx trace per model object: a pipeline run reuses it, a changed model is traced again, taps built from
the reused trace read the model as it is now, and the cache never keeps a model alive."""

from __future__ import annotations

import collections
import gc
import weakref
from pathlib import Path

import pytest
import torch
from _pipeline_helpers import RUN_KWARGS
from _runner_helpers import data, mlp, tuples
from torch import nn

import masc_probe.layers._trace as trace_module
from masc_probe.layers import FeatureTap, list_layers
from masc_probe.runner import ProbeRunner


@pytest.fixture
def traces(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """How often each model object (by id) is actually traced."""
    counts: collections.Counter = collections.Counter()
    real = trace_module._trace

    def counting(model: nn.Module):
        counts[id(model)] += 1
        return real(model)

    monkeypatch.setattr(trace_module, "_trace", counting)
    return counts


def test_a_pipeline_run_traces_each_model_once(traces: collections.Counter, tmp_path: Path) -> None:
    from masc_probe.pipeline import run_experiment

    run_experiment(**{**RUN_KWARGS, "max_epochs": 1}, output_dir=tmp_path / "run")  # how long it trains: no matter
    # Three model objects: the untrained net whose layer names are checked before training, the trained one loaded
    # from the run folder and the run's epoch-0 network (the init control); before the cache the trained one was
    # traced four times.
    assert sorted(traces.values()) == [1, 1, 1]


def test_a_runner_traces_once_and_gives_what_fresh_traces_give(traces: collections.Counter) -> None:
    x, yc, y = data(60)
    model = mlp()
    runner = ProbeRunner(model, probes=("ncm",), train_accuracy=False, controls=()).fit(tuples(x, yc, y, 20))
    report = runner.evaluate(tuples(x, y, y, 20))
    runner.features(x)
    assert dict(traces) == {id(model): 1}
    trace_module._TRACES.clear()  # the same numbers from traces made afresh for every tap
    again = ProbeRunner(model, probes=("ncm",), train_accuracy=False, controls=()).fit(tuples(x, yc, y, 20))
    assert again.evaluate(tuples(x, y, y, 20)) == report


def test_a_changed_module_tree_is_traced_again(traces: collections.Counter) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    before = list_layers(model)
    model[2] = nn.Sequential(nn.ReLU(), nn.Identity())  # same position, another module with children
    after = list_layers(model)
    assert traces[id(model)] == 2 and "2.1" in after and "2.1" not in before
    x = torch.randn(4, 1, 4, 4)
    with FeatureTap(model, ["2.1", "3"]) as tap:
        out = tap(x)
    with torch.no_grad():
        assert torch.equal(out["3"], model(x))


class _Offset(nn.Module):
    """A buffer read directly by the traced code (not through a leaf module): the graph holds the tensor itself."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.register_buffer("offset", torch.arange(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.offset


def test_taps_from_a_reused_trace_read_the_tensors_the_model_holds_now(traces: collections.Counter) -> None:
    model = _Offset()
    x = torch.randn(3, 4)
    with FeatureTap(model, ["add"]) as tap:
        tap(x)
    model.double()  # replaces the buffer and the parameters
    with torch.no_grad():
        model.offset += 1.0
        model.linear.weight.mul_(2.0)
        want = model(x.double())
    with FeatureTap(model, ["add"]) as tap:
        got = tap(x.double())["add"]
    assert traces[id(model)] == 1 and got.dtype == torch.float64 and torch.equal(got, want)


def test_the_cache_never_keeps_a_model_alive(traces: collections.Counter) -> None:
    model = mlp()
    list_layers(model)
    with FeatureTap(model, ["1"]) as tap:
        tap(torch.zeros(1, 1, 4, 4))
    ref = weakref.ref(model)
    del model, tap
    gc.collect()
    assert ref() is None
