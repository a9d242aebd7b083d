"""Fitted probes as artifacts: ProbeRunner.save_pretrained / from_pretrained / push_to_hub, and a run pushed with
its probes (``masc-probe push RUN --with-probes``), over real HTTP against tests/_hub_server.py.

What comes back must score exactly as what was fitted: the same predictions and decision values on new data as the
runner in memory, and the report's own numbers (compared with ``==``) when the pulled probes evaluate the run's test
split again. Every bad input is one line.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from _hub_server import FakeHub
from _pipeline_helpers import SHARED_RUN_KWARGS
from _runner_helpers import N_CLASSES, cnn, data, mlp, tuples
from masc_probe import ProbeRunner
from masc_probe import hub as mhub
from masc_probe.cli import main
from masc_probe.errors import HubError, InputError, MascProbeError, UnknownNameError
from masc_probe.models import load_model
from masc_probe.runner._config import RunnerConfig
from test_hub import TOKEN, hub  # noqa: F401 - the fake Hub fixture, by name

PROBES = ("masc", "ncm", "velpic", "linear", "lda")
RUNTIME = {"device", "cache_dir", "progress"}


@pytest.fixture(scope="module")
def fitted() -> ProbeRunner:
    x, yc, y = data(120)
    return ProbeRunner(mlp(), ["2", "4"], probes=PROBES, n_components=0.9, progress=False, controls=(),
                       probe_kwargs={"linear": {"epochs": 3}}).fit(tuples(x, yc, y, 40))


def _new_inputs() -> torch.Tensor:
    return data(50, seed=11)[0]


def _scores(est: Any, rows: torch.Tensor) -> np.ndarray:
    return np.asarray(est.decision_function(rows.numpy()))  # numpy in, numpy out for every probe


def _assert_scores_equal(a: ProbeRunner, b: ProbeRunner, x: torch.Tensor) -> None:
    """The same predictions and the same decision values, bit for bit, for every (layer, probe, label set)."""
    pa, pb = a.predict(x), b.predict(x)
    assert pa.keys() == pb.keys() and len(pa) == 2 * len(a.probes) * 2
    rows = a.features(x)
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key
        sa, sb = _scores(a.estimators_[key], rows[key[0]]), _scores(b.estimators_[key], rows[key[0]])
        assert sa.shape == (len(x), len(a.classes_)) and np.array_equal(sa, sb), key


# ------------------------------------------------------------------------------------------------ local folders
def test_save_pretrained_round_trip_scores_identically(fitted: ProbeRunner, tmp_path: Path) -> None:
    folder = fitted.save_pretrained(tmp_path / "saved")
    assert {p.suffix for p in folder.rglob("*") if p.is_file()} == {".json", ".safetensors"}  # nothing pickled
    loaded = ProbeRunner.from_pretrained(folder, model=mlp())
    _assert_scores_equal(fitted, loaded, _new_inputs())
    xt, _, yt = data(60, seed=1)
    assert loaded.evaluate([(xt, yt)]).to_dict() == fitted.evaluate([(xt, yt)]).to_dict()
    rows_only = ProbeRunner.from_pretrained(str(folder))  # no model: scores rows
    feats = fitted.features(xt)
    assert torch.equal(rows_only.predict(feats)[("4", "masc", "true")], fitted.predict(xt)[("4", "masc", "true")])


def test_save_and_load_are_the_pretrained_methods_under_other_names(fitted: ProbeRunner, tmp_path: Path) -> None:
    """One implementation, one set of defaults: the aliases are the very same functions, they write the same bytes,
    and what they load predicts alike and sits where a fitted runner keeps its probes (the model's device)."""
    assert ProbeRunner.__dict__["save"] is ProbeRunner.__dict__["save_pretrained"]
    assert ProbeRunner.__dict__["load"] is ProbeRunner.__dict__["from_pretrained"]
    a, b = fitted.save(tmp_path / "a"), fitted.save_pretrained(tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and len(files) > 1
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    model = mlp()
    one, two = ProbeRunner.load(a, model), ProbeRunner.from_pretrained(b, model)
    _assert_scores_equal(one, two, _new_inputs())
    device = next(model.parameters()).device
    assert one.estimators_.device == two.estimators_.device == fitted.estimators_.device == device
    assert ProbeRunner.load(a).estimators_.device == torch.device("cpu")  # no model: the CPU
    assert ProbeRunner.load(a, model, device="cpu").estimators_.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the model's device must differ from the CPU")
def test_probes_load_onto_the_models_device_by_default(fitted: ProbeRunner, tmp_path: Path) -> None:
    folder = fitted.save(tmp_path / "saved")
    model = mlp().to("cuda")
    for load in (ProbeRunner.load, ProbeRunner.from_pretrained):
        loaded = load(folder, model)
        assert loaded.estimators_.device == next(model.parameters()).device
        assert torch.equal(loaded.predict(_new_inputs())[("4", "masc", "true")].cpu(),
                           fitted.predict(_new_inputs())[("4", "masc", "true")].cpu())


def test_saved_metadata_is_the_whole_config_classes_and_widths(fitted: ProbeRunner, tmp_path: Path) -> None:
    saved = json.loads((fitted.save_pretrained(tmp_path / "s") / "runner.json").read_text())
    # Every RunnerConfig field but where/how a process runs: a field added later is saved without touching _persist.
    assert set(saved["config"]) == {f.name for f in dataclasses.fields(RunnerConfig)} - RUNTIME
    assert saved["config"]["n_components"] == 0.9 and saved["config"]["probe_kwargs"] == {"linear": {"epochs": 3}}
    assert saved["classes"] == [0, 1, 2] and saved["layers"] == ["2", "4"]
    assert saved["widths"] == {"2": 32, "4": 24}  # the two hidden widths of _runner_helpers.mlp
    loaded = ProbeRunner.from_pretrained(tmp_path / "s", model=mlp())
    for f in dataclasses.fields(RunnerConfig):
        if f.name not in RUNTIME:
            assert getattr(loaded.config, f.name) == getattr(fitted.config, f.name), f.name


def test_reducer_is_saved_and_applied(tmp_path: Path) -> None:
    x, yc, y = data(90)
    runner = ProbeRunner(cnn(), ["1", "4"], probes=("masc", "ncm"), reducer="gap", progress=False, controls=())
    runner.fit(tuples(x, yc, y, 30))
    saved = json.loads((runner.save_pretrained(tmp_path / "gap") / "runner.json").read_text())
    assert saved["widths"] == {"1": 4, "4": 6}  # channels after global average pooling, not 4*4*4 and 6*2*2
    assert saved["config"]["reducer"] == "gap"
    loaded = ProbeRunner.from_pretrained(tmp_path / "gap", model=cnn())
    _assert_scores_equal(runner, loaded, _new_inputs())


# ------------------------------------------------------------------------------------------------ one-line errors
def _edit_settings(folder: Path, change: Any) -> None:
    path = folder / "runner.json"
    saved = json.loads(path.read_text())
    change(saved)
    path.write_text(json.dumps(saved))


def _wider_components(folder: Path) -> None:
    entry = next(e for e in json.loads((folder / "runner.json").read_text())["estimators"] if e["probe"] == "masc")
    arrays = load_file(folder / entry["file"])
    arrays["components"] = torch.cat([arrays["components"], torch.ones(len(arrays["components"]), 1)], dim=1)
    save_file(arrays, str(folder / entry["file"]))


_BROKEN = {
    "newer-format": (lambda f: _edit_settings(f, lambda s: s.update(format_version=99)), "version 99"),
    "unknown-setting": (lambda f: _edit_settings(f, lambda s: s["config"].update(pooling="cls")), "'pooling'"),
    "not-a-runner": (lambda f: _edit_settings(f, lambda s: s.update(format="something-else")), "format"),
    "missing-key": (lambda f: _edit_settings(f, lambda s: s.pop("estimators")), "estimators"),
    "missing-file": (lambda f: (f / "probes" / "e0003.safetensors").unlink(), "e0003.safetensors, which is missing"),
    "outside": (lambda f: _edit_settings(f, lambda s: s["estimators"][0].update(file="../x.safetensors")), "inside"),
    "pickle-name": (lambda f: _edit_settings(f, lambda s: s["estimators"][0].update(file="probes/e.bin")),
                    ".safetensors"),
    "not-safetensors": (lambda f: (f / "probes" / "e0000.safetensors").write_bytes(b"\x80\x04garbage"),
                        "safetensors"),
    "wrong-shape": (_wider_components, "fit its metadata"),
    "not-json": (lambda f: (f / "runner.json").write_text("{runner"), "JSON"),
}


@pytest.mark.parametrize("case", list(_BROKEN))
def test_broken_folder_is_one_line(fitted: ProbeRunner, tmp_path: Path, case: str) -> None:
    folder = fitted.save_pretrained(tmp_path / "saved")
    breaks, expected = _BROKEN[case]
    breaks(folder)
    with pytest.raises(InputError) as err:
        ProbeRunner.from_pretrained(folder, model=mlp())
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_model_that_does_not_fit_the_probes_is_one_line(fitted: ProbeRunner, tmp_path: Path) -> None:
    folder = fitted.save_pretrained(tmp_path / "saved")
    with pytest.raises(UnknownNameError) as err:  # no layer "4"
        ProbeRunner.from_pretrained(folder, model=nn.Sequential(nn.Flatten(), nn.Linear(16, N_CLASSES)))
    assert "'4'" in str(err.value) and "fitted on" in str(err.value) and "\n" not in str(err.value)

    torch.manual_seed(0)  # the same layer names, another width at "2"
    wider = nn.Sequential(nn.Flatten(), nn.Linear(16, 30), nn.ReLU(), nn.Linear(30, 24), nn.ReLU(),
                          nn.Linear(24, N_CLASSES))
    loaded = ProbeRunner.from_pretrained(folder, model=wider)
    xt, _, yt = data(20, seed=1)
    for call in (lambda: loaded.predict(xt), lambda: loaded.evaluate([(xt, yt)])):
        with pytest.raises(InputError) as err:
            call()
        assert "layer '2'" in str(err.value) and "width 32" in str(err.value) and "got width 30" in str(err.value)
        assert "\n" not in str(err.value)

    with pytest.raises(InputError, match="a folder or a Hub repo id"):
        ProbeRunner.from_pretrained(folder / "runner.json")
    with pytest.raises(InputError, match="runner.json"):
        ProbeRunner.from_pretrained(tmp_path)
    with pytest.raises(InputError, match="which is neither"):
        ProbeRunner.from_pretrained(tmp_path / "no-such-folder")
    with pytest.raises(InputError, match="not fitted"):
        ProbeRunner(mlp(), ["2"], progress=False).push_to_hub("me/x")


# ------------------------------------------------------------------------------------------------ the Hub
def _safetensors(files: dict[str, Any], prefix: str = "masc/probes/") -> set[str]:
    return {p for p in files if p.startswith(prefix) and p.endswith(".safetensors")}


def test_push_to_hub_and_back_scores_identically(hub: FakeHub, fitted: ProbeRunner, tmp_path: Path) -> None:
    url = fitted.push_to_hub("me/probes")
    assert hub.commit_requests == 1 and url.endswith(hub.repos[("model", "me/probes")].refs["main"])
    files = hub.files("me/probes")
    weights = _safetensors(files)
    assert len(weights) == len(fitted.estimators_) and set(files) == weights | {"masc/probes/runner.json",
                                                                                ".gitattributes"}
    # Every safetensors file travelled as LFS (batch -> PUT -> verify -> lfsFile); runner.json as a regular file.
    assert hub.lfs_files("me/probes") == weights
    assert hub.committed == [{**{p: "lfsFile" for p in weights}, "masc/probes/runner.json": "file"}]
    assert len(hub.hits("lfs-batch")) == 1 and len(hub.hits("lfs-verify")) == len(weights)

    pulled = ProbeRunner.from_pretrained("hf-hub:me/probes", model=mlp())
    _assert_scores_equal(fitted, pulled, _new_inputs())
    # Only runner.json and the safetensors files it names were fetched, LFS files by redirect to storage.
    fetched = {h.path.split("/resolve/", 1)[1].split("/", 1)[1] for h in hub.hits("resolve")}
    assert fetched == weights | {"masc/probes/runner.json"}
    assert len(hub.hits("lfs-download")) == len(weights)

    # Offline, the cache alone serves the same commit (no request reaches the Hub).
    import huggingface_hub.constants as hf_constants

    requests = len(hub.requests)
    with pytest.MonkeyPatch.context() as offline:
        offline.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        cached = ProbeRunner.from_pretrained("me/probes", model=mlp())
    assert len(hub.requests) == requests
    _assert_scores_equal(fitted, cached, _new_inputs())

    again = fitted.push_to_hub("me/probes", path_in_repo="elsewhere", commit_message="copy")
    assert hub.history("me/probes")[0] == "copy" and again.endswith(hub.repos[("model", "me/probes")].refs["main"])
    copy = ProbeRunner.from_pretrained("me/probes", model=mlp(), subfolder="elsewhere")
    _assert_scores_equal(fitted, copy, _new_inputs())


def test_hub_failures_are_one_line(hub: FakeHub, fitted: ProbeRunner, tmp_path: Path) -> None:
    with pytest.raises(HubError) as err:
        ProbeRunner.from_pretrained("me/nothing-here")
    assert "me/nothing-here" in str(err.value) and "\n" not in str(err.value)
    hub.put_files("me/model-only", {"config.json": b"{}"})
    with pytest.raises(HubError) as err:
        ProbeRunner.from_pretrained("me/model-only")
    assert "masc/probes/runner.json" in str(err.value) and "\n" not in str(err.value)

    folder = fitted.save_pretrained(tmp_path / "saved")
    files = {f"masc/probes/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in folder.rglob("*")
             if p.is_file() and p.name != "e0002.safetensors"}
    hub.put_files("me/half", files)
    with pytest.raises(InputError) as err:
        ProbeRunner.from_pretrained("me/half")
    assert "masc/probes/probes/e0002.safetensors" in str(err.value) and "\n" not in str(err.value)

    hub.fail_next("lfs-upload", 403, f"token {TOKEN} may not write")
    with pytest.raises(HubError) as err:
        fitted.push_to_hub("me/refused")
    assert "403" in str(err.value) and TOKEN not in str(err.value) and "\n" not in str(err.value)
    assert hub.commit_requests == 0
    with pytest.raises(InputError, match="user/name"):
        fitted.push_to_hub("not a repo")


# ------------------------------------------------------------------------------------------------ a run with probes
@pytest.fixture
def run_with_probes(digits_run: Any) -> Path:
    """The session's shared run (conftest.py), run with ``save_probes=True`` and probes masc, ncm and linear on the
    layers input and fc2; read here, copied before anything writes into it."""
    assert SHARED_RUN_KWARGS["save_probes"] and SHARED_RUN_KWARGS["probes"] == ("masc", "ncm", "linear")
    return digits_run.output_dir


def _run_test_data(source: str) -> Any:
    """The run's test split as the pipeline feeds it (the run's own dataset and preprocessing, from its config)."""
    from torch.utils.data import DataLoader

    from masc_probe.pipeline._inputs import load_run_data, resolve_source

    src = resolve_source(source, dataset=None, corrupt=None, corrupt_mode=None, seed=None, revision=None,
                         all_checkpoints=False)
    run_data = load_run_data(src.dataset, corrupt=src.corrupt, mode=src.mode, seed=src.seed, normalize=src.normalize,
                             input_size=src.input_size, in_chans=src.in_chans)
    return DataLoader(run_data.test, batch_size=256, shuffle=False)


def test_run_pushed_with_probes_gives_the_report_back(hub: FakeHub, run_with_probes: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    run = run_with_probes
    assert (run / "probes" / "runner.json").is_file()
    assert main(["push", str(run), "--repo", "me/run", "--with-probes", "--quiet"]) == 0
    assert hub.commit_requests == 1  # checkpoint, report, card and probes in one commit
    files = hub.files("me/run")
    weights = _safetensors(files)
    assert len(weights) == len(json.loads((run / "probes" / "runner.json").read_text())["estimators"]) == 2 * 3 * 2
    assert {"model.safetensors", "masc/report.json", "README.md", "masc/probes/runner.json"} <= set(files)
    # The binaries go by LFS: the weights, the fitted probes and the run folder's two plots (the profile's too).
    assert hub.lfs_files("me/run") == weights | {"model.safetensors", "masc/accuracy_by_layer.png",
                                                 "masc/profile.png"}
    assert {p for p, kind in hub.committed[0].items() if kind == "lfsFile"} == hub.lfs_files("me/run")
    assert "ProbeRunner.from_pretrained" in files["README.md"].decode()

    report = json.loads((run / "report.json").read_text())
    model = load_model("hf-hub:me/run")
    pulled = ProbeRunner.from_pretrained("hf-hub:me/run", model=model)
    again = pulled.evaluate(_run_test_data("hf-hub:me/run")).to_dict()
    assert again["model_test_accuracy"] == report["model_test_accuracy"]
    expected = {(r["layer"], r["probe"], r["labels"]): r for r in report["results"] if r.get("control") is None}
    got = {(r["layer"], r["probe"], r["labels"]): r for r in again["results"]}
    assert got.keys() == expected.keys() and len(got) == 12
    for key, r in expected.items():
        assert got[key]["test_accuracy"] == r["test_accuracy"], key
        assert got[key]["train_accuracy"] == r["train_accuracy"], key
        assert got[key].get("n_components") == r.get("n_components"), key
    # New data: the pulled probes score exactly as the run folder's own.
    local = ProbeRunner.from_pretrained(run, model=load_model(run))
    x = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    _assert_scores_equal(local, pulled, x)

    # A push without the probes drops the stale ones in the same single commit.
    assert main(["push", str(run), "--repo", "me/run", "--quiet"]) == 0
    assert hub.commit_requests == 2 and _safetensors(hub.files("me/run")) == set()


def test_push_with_probes_refuses_a_run_without_matching_probes(hub: FakeHub, run_with_probes: Path,
                                                                tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(run_with_probes, bare, ignore=shutil.ignore_patterns("resume"))  # 62 MB a push never reads
    shutil.rmtree(bare / "probes")
    with pytest.raises(InputError, match="--save-probes") as err:
        mhub.push_run(bare, "me/r", with_probes=True)
    assert "\n" not in str(err.value)

    stale = tmp_path / "stale"
    shutil.copytree(run_with_probes, stale, ignore=shutil.ignore_patterns("resume"))
    report = json.loads((stale / "report.json").read_text())
    report["results"][0]["train_accuracy"] = {k: v / 2 for k, v in report["results"][0]["train_accuracy"].items()}
    (stale / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match="another report") as err:
        mhub.push_run(stale, "me/r", with_probes=True)
    assert "\n" not in str(err.value)
    assert hub.commit_requests == 0 and not hub.hits("preupload")

    # Probing the run again through the CLI with --save-probes swaps in probes that belong to its new report.
    assert main(["probe", str(stale), "--probes", "masc,ncm,linear", "--layers", "input,fc2", "--save-probes",
                 "--quiet"]) == 0
    assert sorted(p.name for p in stale.iterdir() if p.name.startswith(".tmp")) == []
    assert mhub.push_run(stale, "me/r", with_probes=True).endswith(hub.repos[("model", "me/r")].refs["main"])
    assert len(_safetensors(hub.files("me/r"))) == 12

    dry = mhub.write_dry_run(run_with_probes, tmp_path / "dry", with_probes=True)
    assert {p.relative_to(tmp_path / "dry").as_posix() for p in dry} >= {"masc/probes/runner.json",
                                                                          "masc/probes/probes/e0000.safetensors"}


def test_save_probes_refuses_all_checkpoints(tmp_path: Path) -> None:
    from masc_probe.pipeline import probe_source

    with pytest.raises(MascProbeError, match="one checkpoint"):
        probe_source(tmp_path, all_checkpoints=True, save_probes=True)
