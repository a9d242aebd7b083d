"""``masc-probe``: every subcommand on tiny real data, and one test per class of error (one line; exit 2 for usage
errors, 1 for the Hub)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from huggingface_hub import ModelCard

from _hub_server import FakeHub, patched_hub
from _pipeline_helpers import split_arrays
from masc_probe.cli import main
from masc_probe.layers import default_layers, list_layers
from masc_probe.models import load_model
from masc_probe.report import ProbeReport



def _main(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def first_run(digits_cli_run: tuple[Path, int, str, str]) -> tuple[Path, int, str, str]:
    """``masc-probe --max-epochs 1 …`` (``CLI_RUN_ARGV``), run once a session (conftest.py): its folder, exit code,
    stdout and stderr. The folder is shared: read it, or copy it (:func:`run_dir`)."""
    return digits_cli_run


@pytest.fixture
def run_dir(first_run: tuple[Path, int, str, str], tmp_path: Path) -> Path:
    """A copy of the CLI's run folder (without the resume state, which nothing here reads) to write into."""
    assert first_run[1] == 0, first_run[3]
    copy = tmp_path / "run"
    shutil.copytree(first_run[0], copy, ignore=shutil.ignore_patterns("resume"))
    return copy


# ----------------------------------------------------------------------------------------------- subcommands
def test_run_prints_the_layer_table_and_where_the_files_are(first_run: tuple[Path, int, str, str]) -> None:
    folder, code, out, err = first_run
    assert code == 0 and err == ""
    report = ProbeReport.from_json_file(folder / "report.json")
    assert f"Model's own test accuracy: {report.model_test_accuracy:.3f}" in out
    best = report.best_layer("masc", "true")
    assert f"| `{best['layer']}` |" in out and f"**{best['test_accuracy']:.3f}** ★" in out
    for name in ("report.json", "report.md", "accuracy_by_layer.png", "README.md"):
        assert str(folder / name) in out and (folder / name).is_file()
    assert "epoch 1:" in out  # training progress goes to stdout, keeping stderr for problems


def test_the_summary_is_the_headline_then_the_layer_table(first_run: tuple[Path, int, str, str]) -> None:
    folder, code, out, _ = first_run
    assert code == 0
    headline = ProbeReport.from_json_file(folder / "report.json").headline()
    assert headline and out.index(headline[0]) < out.index("| layer |")
    # The control table lives in report.md (and report.html), the internal plan only behind --verbose.
    assert "Controls at each layer" in (folder / "report.md").read_text() and "Controls at each layer" not in out
    assert "plan: stream" not in out


def test_quiet_prints_only_the_output_folder(capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    code, out, err = _main(capsys, "probe", run_dir, "--layers", "input", "--probes", "ncm", "--quiet",
                           "--output-dir", run_dir / "again")
    assert code == 0 and err == "" and out == f"{run_dir / 'again'}\n"


def test_train_then_probe_then_dry_run_push(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "trained"
    code, out, _ = _main(capsys, "train", "--max-epochs", "1", "--seed", "3", "--output-dir", folder)
    assert code == 0 and f"run folder: {folder}" in out
    assert (folder / "model.safetensors").is_file() and not (folder / "report.json").exists()
    saved = json.loads((folder / "config.json").read_text())["masc_probe"]
    assert saved["corruption"]["seed"] == 3 and saved["dataset"] == "digits"
    # The CLI's default checkpoint policy keeps the final epoch only: not epoch 0, which "dense" and "all" keep too.
    assert saved["training"]["keep_checkpoints"] == "final" and saved["training"]["protocol"] == "clean"
    assert os.listdir(folder / "checkpoints") == ["epoch-0001"]

    code, out, _ = _main(capsys, "probe", folder, "--layers", "fc1", "--probes", "ncm", "--labels", "true")
    assert code == 0
    report = ProbeReport.from_json_file(folder / "report.json")  # its own data: the report lands in the run folder
    assert report.series == [("ncm", "true")] and report.corruption["seed"] == 3
    realized = split_arrays("train", corrupt=0.8, seed=3)
    assert report.corruption["realized_rate"] == pytest.approx((realized["label"] != realized["true_label"]).mean())

    dry = tmp_path / "dry"
    code, out, _ = _main(capsys, "push", folder, "--repo", "me/mlp-digits", "--dry-run", dry)
    assert code == 0 and str(dry) in out
    assert (dry / "masc" / "report.json").read_bytes() == (folder / "report.json").read_bytes()
    assert (dry / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert not (dry / "resume").exists()
    card = ModelCard.load(dry / "README.md")  # model-index metadata parses back
    assert any(r.metric_value == pytest.approx(report.model_test_accuracy) for r in card.data.eval_results)


def test_probe_all_checkpoints(capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    code, out, _ = _main(capsys, "probe", run_dir, "--all-checkpoints", "--layers", "input", "--probes", "ncm")
    assert code == 0
    report = ProbeReport.from_json_file(run_dir / "dynamics" / "report.json")
    assert report.epochs == sorted(int(p.name[6:]) for p in (run_dir / "checkpoints").iterdir()) == [0, 1]
    assert (run_dir / "dynamics" / "accuracy_over_epochs.png").is_file()
    assert ProbeReport.from_json_file(run_dir / "report.json").epochs == []  # the run's own report is left alone


def test_layers_lists_every_layer_and_marks_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(capsys, "layers", "--model", "cnn", "--input-size", "28", "--all")
    assert code == 0
    # The paper's CNN, written out from its definition (models._paper.PaperCNN): three conv blocks (conv, ReLU, conv,
    # ReLU, max-pool, then the block's output), a flatten, three dense blocks (linear, ReLU, output), the head; the
    # paper probes the input, the flattened features and the three dense outputs.
    names = ["input", *[f"block{b}{part}" for b in (1, 2, 3) for part in (".0", ".1", ".2", ".3", ".4", "")],
             "flatten", *[f"fc{i}{part}" for i in (1, 2, 3) for part in (".linear", ".act", "")], "head"]
    probed = {"input", "flatten", "fc1", "fc2", "fc3"}
    expected = [f"{'*' if n in probed else ' '} {n}" for n in names]
    assert len(expected) == 30
    assert out.splitlines()[:-1] == expected
    assert out.splitlines()[-1].startswith("(* probed by default: 5 of 30")


def test_layers_shows_module_names_unless_asked_for_all(capsys: pytest.CaptureFixture[str]) -> None:
    import timm
    from torch import nn

    code, out, _ = _main(capsys, "layers", "--model", "timm/vit_tiny_patch16_224")
    assert code == 0
    shown = [line[2:] for line in out.splitlines()[:-1]]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    modules = dict(model.named_modules())
    everything = list_layers(model)
    # What a person types: the input, the modules that compute something, and the probed defaults, in forward
    # order; no getattr/getitem/_assert nodes, no Identity or dropout module (other than a default layer).
    defaults = default_layers(model)
    assert shown == [n for n in everything if n in set(defaults) | {"input"} or
                     (n in modules and not isinstance(modules[n], (nn.Identity, nn.Dropout)))]
    assert {"blocks.0", "blocks.0.attn.qkv", "blocks.11.mlp.fc2", "patch_embed.proj"} <= set(shown)
    assert not any("getattr" in n or "getitem" in n or "_assert" in n for n in shown)
    assert len(shown) < len(everything) / 3
    code, out, _ = _main(capsys, "layers", "--model", "timm/vit_tiny_patch16_224", "--all")
    assert [line[2:] for line in out.splitlines()[:-1]] == everything
    assert any("getitem" in n for n in everything)


def test_run_push_to_hub_then_probe_the_published_model(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        first_run: tuple[Path, int, str, str]) -> None:
    token = "hf_testCLItoken0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", token)
    # The same command again on a copy of the CLI's finished one-epoch run: rerunning resumes, so nothing is trained
    # (no epoch line); it probes, writes the report and pushes, as a first run would.
    folder = tmp_path / "pushed"
    shutil.copytree(first_run[0], folder)
    with FakeHub(token=token) as hub, patched_hub(hub.url, str(tmp_path / "cache")):
        code, out, err = _main(capsys, "--max-epochs", "1", "--layers", "input", "--probes", "ncm",
                               "--output-dir", folder, "--push-to-hub", "me/mlp")
        assert code == 0 and "pushed to " in out and token not in out + err
        assert f"resuming {folder} after epoch 1" in out and "epoch 1:" not in out
        assert ProbeReport.from_json_file(folder / "report.json").layers == ["input"]  # this command's report
        files = hub.files("me/mlp")
        assert files["masc/report.json"] == (folder / "report.json").read_bytes()
        assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
        assert hub.commit_requests == 1

        code, out, _ = _main(capsys, "probe", "hf-hub:me/mlp", "--layers", "input", "--probes", "ncm",
                             "--output-dir", tmp_path / "pulled")
        assert code == 0
    pulled = ProbeReport.from_json_file(tmp_path / "pulled" / "report.json")
    original = ProbeReport.from_json_file(folder / "report.json")
    assert pulled.dataset == "digits" and pulled.corruption == original.corruption  # taken from the hub config
    assert pulled.model_test_accuracy == original.model_test_accuracy
    assert pulled.results[0]["test_accuracy"] == original.results[0]["test_accuracy"]


# ----------------------------------------------------------------------------------------------- errors
def _one_line_error(code: int, out: str, err: str, *, exit_code: int = 2) -> str:
    assert code == exit_code, (out, err)
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("masc-probe: error: ")
    return err


@pytest.mark.parametrize(("argv", "needle"), [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--corrupt", "1.5"], "expected a rate in [0, 1], got '1.5'"),
    (["--n-components", "0"], "n_components must be a float in (0, 1) or an int >= 1; got int 0"),
    (["--max-memory", "lots"], "max_memory must be a positive number of bytes or a size such as 4GB"),
    (["--labels", "noisy"], "invalid choice: 'noisy'"),
    (["--model", "mlpp"], "did you mean: mlp?"),
    (["--model", "timm/resnet1888"], "did you mean: resnet18"),
    (["--dataset", "digitz"], "did you mean: digits?"),
    (["--layers", "fc9"], "unknown layer 'fc9'"),
    (["--probes", "masc,nope"], "probe must be one of masc, ncm, linear, velpic, knn, lda, qda; got 'nope'"),
    (["--batch-size", "5000"], "at most the 1438 training samples"),
    (["--push-to-hub", "not a repo"], "repo_id must look like 'user/name', got 'not a repo'"),
    (["probe", "mlp"], "expected a dataset"),
    (["layers"], "the following arguments are required: --model"),
    (["--protocol", "author"], "invalid choice: 'author'"),
    (["train", "--keep-checkpoints", "sparse"], "invalid choice: 'sparse'"),
])
def test_bad_flags_and_values_give_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       argv: list[str], needle: str) -> None:
    folder = tmp_path / "never"
    err = _one_line_error(*_main(capsys, *argv, *(["--output-dir", folder] if argv[0] != "layers" else [])))
    assert needle in err
    assert not folder.exists()  # nothing half-written


@pytest.mark.parametrize(("argv", "check", "value"), [
    (["probe", "x", "--max-memory", "inf"], "check_max_memory", "inf"),  # was a raw OverflowError
    (["probe", "x", "--max-memory", "nan"], "check_max_memory", "nan"),
    (["probe", "x", "--max-memory", "4XB"], "check_max_memory", "4XB"),
    (["probe", "x", "--n-components", "1.5"], "check_n_components", 1.5),
    (["probe", "x", "--probes", "masc,nope"], "check_probes", ("masc", "nope")),
    (["label-issues", "x", "--folds", "1"], "check_folds", 1),
    (["label-issues", "x", "--folds", "2.5"], "check_folds", 2.5),
])
def test_flags_are_checked_by_the_librarys_own_validator(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                         check: str, value: Any) -> None:
    """One validator per parameter: the flag's one-line error is the library's InputError for the same value."""
    from masc_probe import _params
    from masc_probe.errors import InputError

    with pytest.raises(InputError) as library:
        getattr(_params, check)(value)
    err = _one_line_error(*_main(capsys, *argv))
    assert err.rstrip("\n").endswith(str(library.value)), (err, str(library.value))


@pytest.mark.parametrize("command", [["probe"], ["relabel"], ["push", "--repo", "me/x"]])
def test_missing_run_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]) -> None:
    err = _one_line_error(*_main(capsys, command[0], tmp_path / "absent", *command[1:]))
    assert str(tmp_path / "absent") in err


def test_hub_data_offline_is_one_line_and_exit_1_not_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    argv = ["--model", "timm/resnet18", "--dataset", "cifar10", "--corrupt", "0.8", "--output-dir", tmp_path / "x"]
    assert "point at a local copy" in _one_line_error(*_main(capsys, *argv), exit_code=1)
    assert not (tmp_path / "x").exists()


def test_offline_push_is_one_line_and_leaves_the_run_alone(capsys: pytest.CaptureFixture[str],
                                                           run_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    err = _one_line_error(*_main(capsys, "push", run_dir, "--repo", "me/x"), exit_code=1)  # the Hub, not usage
    assert "me/x" in err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_console_script_in_a_real_process(tmp_path: Path, processes: ModuleType) -> None:
    script = Path(sys.executable).with_name("masc-probe")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = processes.run([str(script), "--dataset", "digitz", "--output-dir", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("masc-probe: error: unknown dataset 'digitz'")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------- slow
def test_relabel_writes_the_suggested_labels(capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    code, out, _ = _main(capsys, "relabel", run_dir, "--layers", "input,fc1", "--max-epochs", "1")
    assert code == 0 and "MASC relabeling: layer" in out
    rows = (run_dir / "relabel" / "relabel.csv").read_text().splitlines()
    assert rows[0] == "index,given_label,suggested_label,margin" and len(rows) == 1 + 1438
    given = [int(r.split(",")[1]) for r in rows[1:]]
    assert given == split_arrays("train", corrupt=0.8, seed=0)["label"].tolist()  # the run's own corrupted labels
    result = json.loads((run_dir / "relabel" / "relabel.json").read_text())
    assert result["labels"] == "corrupted" and not result["oracle"] and result["layer"] in ("input", "fc1")


@pytest.mark.usefixtures("long_training")  # the demo: memorizes all 1,438 digits
def test_embedded_default_shows_latent_generalization(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _main(capsys, "--output-dir", tmp_path / "demo")
    assert code == 0
    report = ProbeReport.from_json_file(tmp_path / "demo" / "report.json")
    metrics = (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["train_accuracy_corrupted"] >= 0.999  # memorized the corrupted labels
    # What the raw input does not give: subspaces fitted on the *corrupted* labels at a hidden layer decode the true
    # labels well above the model's own accuracy and above the same probe on the input (README: 0.540 at fc1,
    # against 0.292 and 0.306; 0.15 is six standard errors at n_test = 359).
    acc = {(r["layer"], r["probe"], r["labels"]): r["test_accuracy"] for r in report.results}
    hidden = max(v for (layer, probe, labels), v in acc.items()
                 if layer != "input" and (probe, labels) == ("masc", "corrupted"))
    assert hidden > report.model_test_accuracy + 0.15
    assert hidden > acc[("input", "masc", "corrupted")] + 0.15
    assert report.best_layer("masc", "true")["test_accuracy"] > report.model_test_accuracy + 0.3  # hidden layers


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file as MNIST ships them: zero, zero, dtype 0x08 (ubyte), ndim, big-endian sizes, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(shape)).reshape(shape)


def test_cnn_on_a_local_mnist_idx_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         shared_mnist: Path) -> None:
    # The first 400/100 images of the real MNIST, in an idx folder of their own: the full 60,000 take an epoch of
    # minutes on 2 CPU cores (the same command on ../shared/data/mnist is what the README shows).
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, n in (("train-images.idx3-ubyte.gz", 400), ("train-labels.idx1-ubyte.gz", 400),
                    ("t10k-images.idx3-ubyte.gz", 100), ("t10k-labels.idx1-ubyte.gz", 100)):
        _write_idx(folder / name, _read_idx(shared_mnist / name)[:n])
    code, out, err = _main(capsys, "--model", "cnn", "--dataset", folder, "--corrupt", "0.8", "--max-epochs", "1",
                           "--layers", "flatten,fc3", "--probes", "ncm", "--output-dir", tmp_path / "cnn")
    assert code == 0, err
    report = ProbeReport.from_json_file(tmp_path / "cnn" / "report.json")
    # the two requested layers, and the raw input beside them as the default input control
    assert report.n_test == 100 and report.corruption["rate"] == 0.8 and report.layers == ["input", "flatten", "fc3"]
    assert set(report.to_dict()["controls"]) == {"init", "input"}
    saved = json.loads((tmp_path / "cnn" / "config.json").read_text())["masc_probe"]
    assert saved["input_size"] == [1, 28, 28] and saved["training"]["lr"] == 2e-4  # the paper's CNN preset
    assert saved["training"]["target_accuracy"] == 0.999  # a folder named mnist stops at the paper's MNIST target


def test_the_internal_plan_is_printed_only_with_verbose(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["probe", "mlp", "--dataset", "digits", "--layers", "fc1", "--probes", "ncm", "--controls", "none"]
    code, out, _ = _main(capsys, *argv, "--output-dir", tmp_path / "a")
    assert code == 0 and "plan: stream" not in out
    code, out, _ = _main(capsys, *argv, "--output-dir", tmp_path / "b", "--verbose")
    assert code == 0 and "plan: stream ['fc1']" in out
