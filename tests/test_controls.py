"""Controls (issue 18): the init control is a run's exact epoch 0, the paired interval is exact McNemar's, and what
people read (report.md, the card, the CLI summary) says what the comparisons say, in both directions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from _runner_helpers import data, mlp, tuples
from masc_probe import ProbeReport, ProbeRunner, load_model
from masc_probe.errors import InputError
from masc_probe.report._compare import paired_difference
from masc_probe.runner import ControlModel
from masc_probe.runner._reinit import reinitialized
from masc_probe.training._init import run_initial_model, state_sha256

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a shared 2-core machine
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run(digits_run: Any) -> Any:
    """The session's small real run (conftest.py: the paper's MLP, digits, p = 0.8, two epochs, layers input and fc2,
    probes masc, ncm and linear) that kept its epoch-0 checkpoint; copied before anything writes into it."""
    return digits_run


def _digits(split: str, **kwargs: Any) -> Any:
    from torch.utils.data import DataLoader

    from masc_probe.data import load_data

    return DataLoader(load_data("digits", split=split, **kwargs), batch_size=256)


def _rows(report: ProbeReport, control: str | None) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["layer"], r["probe"], r["labels"]): r for r in report.results if r.get("control") == control}


# ------------------------------------------------------------------------------- the init control is epoch 0
def test_a_run_folders_init_control_is_its_epoch_0_and_scores_as_an_untrained_copy_probed_directly(run: Any) -> None:
    from accelerate.utils import set_seed

    folder = run.output_dir
    record = json.loads((folder / "config.json").read_text())["masc_probe"]["init"]
    epoch0 = load_model(folder / "checkpoints" / "epoch-0000")
    assert record["seed"] == 0 and state_sha256(epoch0) == record["init_sha256"]  # the weights epoch 0 kept
    init = run.report.controls["init"]
    assert init["source"] == "run epoch 0" and init["seed"] == 0 and init["init_sha256"] == record["init_sha256"]
    assert run.report.controls["input"] == {"source": "raw input"}

    # An untrained copy built by hand, probed on its own with the same probes and data: the same numbers.
    set_seed(0)
    hand = load_model("mlp", num_classes=10, in_chans=1, input_size=(1, 8, 8))
    assert state_sha256(hand) == record["init_sha256"]
    # The init control probes every layer but the raw input (the same for every model): fc2 only.
    direct = ProbeRunner(hand, layers=["fc2"], probes=("masc", "ncm", "linear"), progress=False, controls=()).fit(
        _digits("train", corrupt=0.8, seed=0)).evaluate(_digits("test"))
    got, want = _rows(run.report, "init"), _rows(direct, None)
    assert got.keys() == want.keys() and len(got) == 6
    for key, r in want.items():
        assert got[key]["test_accuracy"] == r["test_accuracy"], key
        assert got[key]["train_accuracy"] == r["train_accuracy"], key
        assert got[key].get("n_components") == r.get("n_components"), key
    assert init["model_test_accuracy"] == direct.model_test_accuracy


def test_the_initial_weights_are_rebuilt_from_the_seed_and_refused_when_the_record_does_not_verify(
        run: Any, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run.output_dir, copy, ignore=shutil.ignore_patterns("resume"))
    shutil.rmtree(copy / "checkpoints" / "epoch-0000")  # the CLI's default keeps only the final checkpoint
    model, record = run_initial_model(copy)
    assert state_sha256(model) == record["init_sha256"] == run.report.controls["init"]["init_sha256"]

    config = json.loads((copy / "config.json").read_text())
    config["masc_probe"]["init"]["init_sha256"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="initial weights") as err:
        run_initial_model(copy)
    assert "\n" not in str(err.value) and "controls" in str(err.value)

    from masc_probe.pipeline import probe_source

    # The pipeline still compares, with a copy re-initialized from the seed, and the report says it is not epoch 0.
    report = probe_source(copy, layers=["fc2"], probes=("masc",), output_dir=tmp_path / "out", progress=False).report
    init = report.controls["init"]
    assert init["source"] == "re-initialized copy" and "not the run's own epoch 0" in init["note"]
    del config["masc_probe"]["init"]  # a run from before the record: the runner's re-initialized copy
    (copy / "config.json").write_text(json.dumps(config))
    assert run_initial_model(copy) is None


def test_all_checkpoints_draws_the_init_control_as_the_epoch_0_reference(run: Any, tmp_path: Path) -> None:
    from masc_probe.pipeline import probe_source

    result = probe_source(run.output_dir, all_checkpoints=True, layers=["fc2"], probes=("masc",),
                          output_dir=tmp_path / "dyn", progress=False)
    report = result.report
    assert report.epochs == [0, 2]
    init = {(r["layer"], r["labels"]): r for r in report.results if r.get("control") == "init"}
    assert {r["epoch"] for r in init.values()} == {2}  # probed once, beside the last checkpoint
    at_zero = {(r["layer"], r["labels"]): r for r in report.results if r.get("epoch") == 0 and not r.get("control")}
    for key, r in init.items():  # the init control is the epoch-0 network: the same numbers
        assert at_zero[key]["test_accuracy"] == r["test_accuracy"], key
    assert report.controls["init"]["source"] == "run epoch 0"
    assert "init (control)" in report.to_markdown()
    assert (tmp_path / "dyn" / "accuracy_over_epochs.png").stat().st_size > 0


# ----------------------------------------------------------------------------- CLI: controls shown, or none
def test_the_cli_shows_the_controls_and_controls_none_gives_the_report_without_them(
        run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from masc_probe.cli import main

    with_controls, without = tmp_path / "with", tmp_path / "without"
    common = ["probe", str(run.output_dir), "--layers", "fc2", "--probes", "masc"]
    assert main([*common, "--output-dir", str(with_controls)]) == 0
    out = capsys.readouterr().out
    report = ProbeReport.from_json_file(with_controls / "report.json")
    headline = report.headline()
    assert len(headline) == 2 and all(line in out for line in headline)
    lines = out.splitlines()  # the summary leads with them, before the layer table
    assert max(lines.index(f"- {line}") for line in headline) < next(
        i for i, line in enumerate(lines) if line.startswith("| layer"))
    assert {c["control"] for c in report.comparisons} == {"init", "input"}
    assert main([*common, "--output-dir", str(without), "--controls", "none", "--quiet"]) == 0
    plain = json.loads((without / "report.json").read_text())
    assert "controls" not in plain and "comparisons" not in plain
    assert all("control" not in r for r in plain["results"]) and {r["layer"] for r in plain["results"]} == {"fc2"}
    # The trained network's numbers do not depend on the controls run beside it.
    assert {(r["layer"], r["labels"]): r["test_accuracy"] for r in plain["results"]} == {
        (r["layer"], r["labels"]): r["test_accuracy"] for r in report.results
        if r.get("control") is None and r["layer"] != "input"}
    assert "What the controls show" not in (without / "report.md").read_text()
    assert main([*common, "--controls", "clean"]) == 2
    assert "expected controls among init,input or none" in capsys.readouterr().err


# The paired interval, its p-value and verdicts are tested in tests/test_paired_interval.py.


def test_bad_counts_are_one_line() -> None:
    with pytest.raises(InputError, match="b=5, c=6, n=10"):
        paired_difference(5, 6, 10)


# --------------------------------------------------------------- what people read follows the comparison
def _broken(model: nn.Module) -> nn.Module:
    """*model* with its first layer zeroed: layer "2" (its ReLU) reads nothing at all."""
    import copy

    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken[1].weight.zero_()
        broken[1].bias.zero_()
    return broken


def _compared(trained: nn.Module, init: nn.Module) -> ProbeReport:
    x, yc, y = data(150)
    xt, _, yt = data(90, seed=1)
    runner = ProbeRunner(trained, ["2"], probes=("masc",), progress=False,
                         controls={"init": init, "input": None}).fit(tuples(x, yc, y, 50))
    return runner.evaluate([(xt, yt)], model_name="toy", dataset="blobs")


def _what_people_read(report: ProbeReport, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    from masc_probe._cli._summary import show_report as _show_report
    from masc_probe.hub._card import build_card
    from masc_probe.pipeline import RunResult

    _show_report(RunResult(output_dir=tmp_path, report=report), quiet=False)
    card = str(build_card(report, {}, [], repo_id=None, files={}, has_plot=False))
    return {"report.md": report.to_markdown(), "card": card, "cli": capsys.readouterr().out}


@pytest.mark.parametrize("direction", ["init beats trained", "training adds"])
def test_report_card_and_cli_say_what_the_comparison_says(direction: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    good = mlp()
    trained, init = (_broken(good), good) if direction == "init beats trained" else (good, _broken(good))
    report = _compared(trained, init)
    comp = report.comparison("2", "masc", "true", "init")
    assert comp["verdict"] == ("removed" if direction == "init beats trained" else "added")
    assert (comp["control_accuracy"] > comp["trained"]) == (direction == "init beats trained")
    words = ("training removed what MASC reads at this layer" if direction == "init beats trained"
             else "training added to what MASC reads at this layer")
    opposite = "training added" if direction == "init beats trained" else "training removed"
    numbers = [f"{comp['trained']:.3f}", f"{comp['control_accuracy']:.3f}"]
    # The CLI summary shows the headline and the trained network's table; the per-layer controls are in report.md
    # and the card, and the CLI's control numbers are those of the readout chosen without the evaluation images.
    chosen = [c for c in (report.extra.get("selection") or {}).get("comparisons", [])
              if (c["labels"], c["control"]) == ("true", "init")]
    shown = {"cli": [f"{c[k]:.3f}" for c in chosen for k in ("trained", "control_accuracy")] or numbers}
    for name, text in _what_people_read(report, tmp_path, capsys).items():
        assert words in text, name
        assert opposite not in text, name
        assert all(number in text for number in shown.get(name, numbers)), name

    # The counts behind it are the test images' own: each side's predictions, compared image by image.
    x, yc, y = data(150)
    xt, _, yt = data(90, seed=1)
    alone = {name: ProbeRunner(net, ["2"], probes=("masc",), progress=False, controls=()).fit(tuples(x, yc, y, 50))
             for name, net in (("trained", trained), ("init", init))}
    right = {name: (r.predict(xt)[("2", "masc", "true")] == yt).numpy() for name, r in alone.items()}
    assert comp["discordant"] == [int((right["trained"] & ~right["init"]).sum()),
                                  int((~right["trained"] & right["init"]).sum())]
    assert comp["trained"] == right["trained"].mean() and comp["control_accuracy"] == right["init"].mean()


def test_the_card_lists_the_init_control_and_names_true_label_masc_a_probe_not_a_metric(run: Any) -> None:
    from masc_probe.hub import build_card

    card = build_card(run.output_dir)
    # Each MASC entry holds the number it names: the best hidden layer's test accuracy (ties to the earliest, the
    # raw input left out) of its label set and model, read here straight from report.json's rows.
    rows = json.loads((run.output_dir / "report.json").read_text())["results"]
    expected = {}
    for labels in ("corrupted", "true"):
        for control in (None, "init"):
            hidden = [r for r in rows if (r["probe"], r["labels"], r.get("control")) == ("masc", labels, control)
                      and r["layer"] != "input"]
            top = max(r["test_accuracy"] for r in hidden)
            expected[(labels, control)] = (top, next(r["layer"] for r in hidden if r["test_accuracy"] == top))
    selection = json.loads((run.output_dir / "report.json").read_text()).get("selection")
    if selection:  # with a selection the card reports the readout chosen without the evaluation images, scored on them
        expected = {(c["labels"], None if c["network"] == "trained" else c["network"]): (c["evaluation_accuracy"],
                                                                                         c["layer"])
                    for c in selection["choices"] if c["network"] in ("trained", "init")}
    assert expected[("corrupted", None)][0] != expected[("true", None)][0]  # so a swapped label set shows
    masc = {(r.metric_args["labels"], r.metric_args.get("control")): r for r in card.data.eval_results
            if (r.metric_args or {}).get("probe") == "masc"}
    assert {key: (r.metric_value, r.metric_args["layer"]) for key, r in masc.items()} == expected
    # The model's own accuracy, trained and at init, is the report's; true-label MASC is named a probe, not a metric.
    model = {(r.metric_args or {}).get("control"): r.metric_value for r in card.data.eval_results
             if r.metric_name.startswith(("Test accuracy (model output)", "Init control: test accuracy"))}
    assert model == {None: run.report.model_test_accuracy, "init": run.report.controls["init"]["model_test_accuracy"]}
    assert "not a metric of the model" in masc[("true", None)].metric_name
    assert "not a metric of the model" not in masc[("corrupted", None)].metric_name
    text = str(card)
    assert all(line in text for line in run.report.headline())
    reproduce = text.split("## Reproduce", 1)[1].split("```", 2)[1]
    assert "--push-to-hub" not in reproduce
    for flag in ("--preset fast", "--max-epochs 2", "--protocol clean", "--batch-size 128"):
        assert flag in reproduce, flag
    # The run probed with the default probes (masc, ncm, linear), which the command leaves out; other probes it names.
    from masc_probe.hub._card import reproduce_command

    assert "--probes" not in reproduce
    mp = json.loads((run.output_dir / "config.json").read_text())["masc_probe"]
    assert run.report.extra["probes"] == ["masc", "ncm", "linear"]
    report = ProbeReport.from_dict({**run.report.to_dict(), "probes": ["masc", "ncm"]})
    assert reproduce_command(report, mp) == reproduce.strip().splitlines()[-1] + " --probes masc,ncm"


# ----------------------------------------------------------------------------------- re-initialized copies
def test_a_paper_model_is_reinitialized_as_load_model_builds_it_and_the_global_rng_is_left_alone() -> None:
    from accelerate.utils import set_seed

    set_seed(3)
    want = load_model("mlp", num_classes=10, in_chans=1, input_size=(1, 8, 8))
    trained = load_model("mlp", num_classes=10, in_chans=1, input_size=(1, 8, 8))
    with torch.no_grad():
        trained.fc1.linear.weight.add_(1.0)
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    fresh = reinitialized(trained, seed=3)
    assert torch.equal(torch.rand(3), expected_next)
    assert state_sha256(fresh) == state_sha256(want) != state_sha256(trained)


def test_plain_torch_timm_and_transformers_models_reinitialize_their_own_way() -> None:
    import timm
    from transformers import ViTConfig, ViTForImageClassification

    assert state_sha256(reinitialized(mlp(seed=5), seed=5)) == state_sha256(mlp(seed=5))  # reset_parameters()
    assert state_sha256(reinitialized(mlp(seed=5), seed=6)) != state_sha256(mlp(seed=5))
    net = timm.create_model("resnet18", num_classes=3, in_chans=1)
    fresh = reinitialized(net, seed=0)
    torch.manual_seed(0)
    assert state_sha256(fresh) == state_sha256(timm.create_model("resnet18", num_classes=3, in_chans=1))
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=2, img_size=32)  # other model args
    again = reinitialized(vit, seed=0)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in vit.state_dict().items()}
    assert not torch.equal(again.cls_token, vit.cls_token) or not torch.equal(again.pos_embed, vit.pos_embed)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(1)
    hf = ViTForImageClassification(config)
    torch.manual_seed(4)
    assert state_sha256(reinitialized(hf, seed=4)) == state_sha256(ViTForImageClassification(config))


def test_a_module_that_cannot_be_reinitialized_is_one_line_naming_it() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) * self.gain

    model = nn.Sequential(Scale(), nn.Linear(16, 3))
    with pytest.raises(InputError, match=r"cannot re-initialize 0 \(Scale\)") as err:
        reinitialized(model, seed=0)
    assert "\n" not in str(err.value) and "controls={'init': untrained_model" in str(err.value)
    # The default runner skips the init control instead, and says why (tests/test_any_module.py: the report).
    assert ProbeRunner(model, progress=False).controls_skipped_["init"].count("0.gain") == 1
    ProbeRunner(model, progress=False, controls={"init": nn.Sequential(Scale(), nn.Linear(16, 3)), "input": None})
    with pytest.raises(InputError, match="needs its model"):
        ProbeRunner(mlp(), controls=("init", "clean"))


# --------------------------------------------------------------------------------- the report with controls
def test_saved_probes_are_the_trained_networks_and_reports_aggregate(tmp_path: Path) -> None:
    x, yc, y = data(120)
    xt, _, yt = data(60, seed=1)
    runner = ProbeRunner(mlp(), ["2"], probes=("masc", "ncm"), progress=False).fit(tuples(x, yc, y, 40))
    assert runner.layers == ["input", "2"]  # the raw input is probed beside the layers, as a control
    report = runner.evaluate([(xt, yt)])
    runner.save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "runner.json").read_text())
    assert {e["layer"] for e in saved["estimators"]} == {"input", "2"} and saved["config"]["controls"] == ["input"]
    loaded = ProbeRunner.load(tmp_path / "saved", mlp()).evaluate([(xt, yt)])
    assert _rows(loaded, None) == _rows(report, None) and not _rows(loaded, "init")
    assert loaded.controls == {"input": {"source": "raw input"}}

    other = ProbeRunner(mlp(seed=1), ["2"], probes=("masc", "ncm"), progress=False, seed=1).fit(tuples(x, yc, y, 40))
    reports = [ProbeReport.from_dict({**r.to_dict(), "corruption": {"seed": s}})
               for s, r in ((0, report), (1, other.evaluate([(xt, yt)])))]
    mean = ProbeReport.aggregate(reports)
    assert "comparisons" not in mean.to_dict() and mean.controls["init"] == {"source": "re-initialized copy"}
    assert mean.best_layer("masc", "true", control="init")["n_runs"] == 2


def test_best_layer_takes_hidden_layers_and_the_input_view_is_one_argument_away() -> None:
    rows = [{"layer": "input", "probe": "masc", "labels": "true", "test_accuracy": 0.97},
            {"layer": "fc1", "probe": "masc", "labels": "true", "test_accuracy": 0.79},
            {"layer": "fc2", "probe": "masc", "labels": "true", "test_accuracy": 0.81},
            {"layer": "fc1", "probe": "masc", "labels": "true", "test_accuracy": 0.86, "control": "init"}]
    report = ProbeReport(rows, n_test=100)
    assert report.best_layer()["layer"] == "fc2" and report.best()["masc/true"]["layer"] == "fc2"
    assert report.best_layer(include_input=True)["layer"] == "input"
    assert report.best_layer(control="init")["test_accuracy"] == 0.86
    with pytest.raises(InputError, match="unique"):
        ProbeReport([rows[3], rows[3]])
    assert ControlModel(mlp()).record() == {"source": "user model", "seed": None, "init_sha256": None}


def test_layer_keys_are_spelled_control_colon_colon_layer_outside_the_runner_and_read_back() -> None:
    from masc_probe.runner._keys import LayerKey, public_key

    assert [str(LayerKey("fc1")), str(LayerKey("blocks.0.mlp", "init"))] == ["fc1", "init::blocks.0.mlp"]
    assert LayerKey.parse("init::blocks.0.mlp") == LayerKey("blocks.0.mlp", "init") != LayerKey("blocks.0.mlp")
    assert LayerKey.parse("input") == LayerKey("input") and LayerKey.parse("clean::x").control == "clean"
    assert public_key((LayerKey("2", "clean"), "masc", "true")) == ("clean::2", "masc", "true")


def test_a_control_models_probes_are_keyed_init_colon_colon_layer_and_fit_on_its_own_rows() -> None:
    from masc_probe.layers import FeatureTap
    from masc_probe.probes import MinimumAngleSubspaceClassifier

    x, yc, y = data(120)
    xt, _, _ = data(40, seed=1)
    runner = ProbeRunner(mlp(), ["2"], probes=("masc",), labels="true", progress=False, train_accuracy=True)
    runner.fit(tuples(x, yc, y, 40))
    assert list(runner.estimators_) == [("input", "masc", "true"), ("2", "masc", "true"), ("init::2", "masc", "true")]
    assert set(runner.train_accuracy_) == set(runner.estimators_) and set(runner.predict(xt)) == {
        ("input", "masc", "true"), ("2", "masc", "true")}  # predict: the trained network's probes
    assert runner.plan_.stream == ["input", "2", "init::2"] and runner.plan_.to_dict()["stream"] == runner.plan_.stream
    init = runner.control_models["init"].model
    with FeatureTap(init, ["2"]) as tap:
        train_rows, test_rows = (tap(v)["2"].reshape(len(v), -1).float().numpy() for v in (x, xt))
    direct = MinimumAngleSubspaceClassifier(0.99).fit(train_rows, y.numpy())
    est = runner.estimators_[("init::2", "masc", "true")]
    np.testing.assert_array_equal(est.n_components_, direct.n_components_)
    np.testing.assert_array_equal(np.asarray(est.predict(torch.from_numpy(test_rows))), direct.predict(test_rows))
    assert runner.train_accuracy_[("init::2", "masc", "true")]["true"] == pytest.approx(
        float((direct.predict(train_rows) == y.numpy()).mean()))


def test_control_probes_spilled_to_disk_score_as_those_kept_in_memory(tmp_path: Path) -> None:
    x, yc, y = data(120)
    xt, _, yt = data(40, seed=1)
    roomy = ProbeRunner(mlp(), ["2"], probes=("masc",), progress=False).fit(tuples(x, yc, y, 40))
    tiny = ProbeRunner(mlp(), ["2"], probes=("masc",), max_memory=2048, cache_dir=tmp_path, progress=False)
    tiny.fit(tuples(x, yc, y, 40))
    assert ("init::2", "masc", "true") in tiny.estimators_.spilled and not roomy.estimators_.spilled
    got, want = (_rows(r.evaluate([(xt, yt)]), "init") for r in (tiny, roomy))  # scatter and Gram forms: same picks
    assert {k: r["test_accuracy"] for k, r in got.items()} == {k: r["test_accuracy"] for k, r in want.items()} != {}
    tiny.close()
