"""RunnerConfig is the one settings object of probing: ``make`` validates once (its defaults are ProbeRunner's),
``ProbeRunner.from_config`` takes it and behaves as the constructor does, ``with_selection`` re-validates a changed
choice, and the pipeline's probing settings are one RunnerConfig (``pipeline._probe.probe_config``).
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from _runner_helpers import data, mlp, tuples

from masc_probe import ProbeRunner
from masc_probe.errors import InputError, UnknownNameError
from masc_probe.pipeline._probe import probe_config
from masc_probe.runner import ControlModel
from masc_probe.runner._config import RunnerConfig

# ProbeRunner's documented defaults, written out (its docstring and the README say these).
DOCUMENTED = {"layers": None, "probes": ("masc", "ncm", "linear"), "labels": "both", "n_components": 0.99,
              "reducer": None, "max_memory": None, "device": None, "cache_dir": None, "progress": True,
              "probe_kwargs": None, "train_accuracy": 5_000, "seed": 0, "protocol": "clean",
              "controls": ("init", "input"), "select": "noisy", "select_split": 0.5, "select_seed": 0,
              "select_size": None, "select_crossfit": False, "profile": True}


def _defaults(function: object) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_make_takes_the_constructors_settings_with_the_documented_defaults() -> None:
    made, constructed = _defaults(RunnerConfig.make), _defaults(ProbeRunner)
    assert {k: tuple(v) if isinstance(v, tuple) else v for k, v in made.items()} == DOCUMENTED
    assert {k: tuple(v) if isinstance(v, tuple) else v for k, v in constructed.items()} == DOCUMENTED
    config = RunnerConfig.make()
    assert (config.probes, config.labels, config.n_components, config.controls, config.select) == (
        ("masc", "ncm", "linear"), "both", 0.99, ("init", "input"), "noisy")
    assert config.max_memory == 4 * 1024**3  # "default 4 GiB" (ProbeRunner's max_memory)


def test_make_refuses_at_the_door() -> None:
    with pytest.raises(InputError, match="control 'clean' needs its model"):
        RunnerConfig.make(controls=("clean",))
    with pytest.raises(UnknownNameError, match="masc"):
        RunnerConfig.make(probes=("mas",))
    with pytest.raises(InputError, match="select_split"):
        RunnerConfig.make(select_split=1.5)
    with pytest.raises(InputError, match="probe_kwargs"):
        RunnerConfig.make(probes=("masc",), probe_kwargs={"linear": {"epochs": 1}})
    assert RunnerConfig.make(controls="none").controls == ()


def _fitted(runner: ProbeRunner) -> list[dict]:
    x, yc, y = data(60, seed=1)
    xt, yct, yt = data(30, seed=2)
    runner.fit(tuples(x, yc, y, 16), num_classes=3)
    report = runner.evaluate(tuples(xt, yct, yt, 16))
    return [{k: v for k, v in r.items() if k != "fit_seconds"} for r in report.results]


def test_from_config_is_the_constructor_with_its_settings_in_one_object() -> None:
    settings = {"layers": ["1", "3"], "probes": ("masc", "ncm"), "labels": "true", "n_components": 0.9,
                "controls": ("init", "input"), "seed": 3, "progress": False, "select": "none"}
    built = ProbeRunner(mlp(seed=5), **settings)
    given = ProbeRunner.from_config(mlp(seed=5), RunnerConfig.make(**settings))
    assert given.config == built.config
    assert given.config.layers == ("input", "1", "3") and given.config.controls == ("init", "input")
    assert given.control_models["init"].source == "re-initialized copy"
    assert _fitted(given) == _fitted(built)


def test_from_config_takes_a_control_model_by_name() -> None:
    untrained = mlp(seed=9)
    config = RunnerConfig.make(layers=["3"], probes=("ncm",), controls=("init", "input"), progress=False)
    runner = ProbeRunner.from_config(mlp(seed=5), config, controls={"init": untrained, "input": None})
    assert runner.control_models["init"].model is untrained
    assert runner.control_models["init"].source == "user model"
    assert runner.config.controls == ("init", "input")
    with pytest.raises(UnknownNameError, match="control 'init' must have the probed layers"):
        ProbeRunner.from_config(mlp(seed=5), config, controls={"init": ControlModel(torch.nn.Linear(16, 3))})


def test_with_selection_validates_what_changes_and_keeps_the_rest() -> None:
    config = RunnerConfig.make(n_components=0.9, probes=("masc",))
    assert config.with_selection() is config
    clean = config.with_selection(select="clean", select_size=0.9)
    assert (clean.select, clean.select_size, clean.n_components, clean.probes) == ("clean", 0.9, 0.9, ("masc",))
    with pytest.raises(InputError, match="select_size must be a size of the fitted profile"):
        config.with_selection(select_size=0.123)
    with pytest.raises(UnknownNameError):
        config.with_selection(select="best")


@pytest.mark.parametrize("corrupted", [False, True])
def test_the_pipelines_probing_settings_are_one_runner_config(corrupted: bool) -> None:
    run_data = SimpleNamespace(corrupted=corrupted, seed=7)
    config = probe_config(run_data, labels="both", probes=("masc",), controls=("input",), select=None,
                          select_split=None, select_seed=None, select_size=None, select_crossfit=None)
    assert isinstance(config, RunnerConfig)
    # Clean data has one label set: "both" would fit the true labels twice.
    assert config.labels == ("both" if corrupted else "true")
    assert config.seed == 7 and config.controls == ("input",)
    assert (config.select, config.select_split, config.select_seed) == ("noisy", 0.5, 0)  # None: the runner's own
    if not corrupted:
        with pytest.raises(InputError, match="expected corrupted training labels"):
            probe_config(run_data, labels="corrupted")
    with pytest.raises(UnknownNameError, match="labels"):
        probe_config(run_data, labels="label")  # the runner's single set: not a pipeline choice
