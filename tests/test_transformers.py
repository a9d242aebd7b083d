"""Hugging Face ``transformers`` image classifiers: loading from folders and the Hub (safetensors only, never remote
code), saving with the run's metadata, probing and training through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi
from transformers import ViTConfig, ViTForImageClassification  # the test extra has it: no skip

from _hub_server import FakeHub, patched_hub
from masc_probe.cli import main
from masc_probe.errors import HubError, InputError, UnsafeCheckpointError
from masc_probe.models import load_model, model_spec, read_config, save_model

TOKEN = "hf_testSECRETtoken0123456789abcdef"


def tiny_vit(seed: int = 0, *, num_labels: int = 10) -> ViTForImageClassification:
    """A ViT for 8×8 one-channel images (digits): 4 patches + CLS, width 16, two layers."""
    torch.manual_seed(seed)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, num_labels=num_labels)
    return ViTForImageClassification(config).eval()


def _x(n: int = 12) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.fixture
def vit_folder(tmp_path: Path) -> tuple[ViTForImageClassification, Path]:
    model = tiny_vit()
    folder = tmp_path / "vit"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub(token=TOKEN) as server, patched_hub(server.url, str(tmp_path / "hf-cache")):
        yield server


def _push_folder(folder: Path, repo_id: str) -> None:
    """One commit of every file in *folder*, as a user's upload would make it (the real client, real HTTP)."""
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.create_commit(repo_id, operations=[CommitOperationAdd(p.name, str(p)) for p in sorted(folder.iterdir())],
                      commit_message="upload")


def _arrays(data: object) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as (images, given labels) tensors."""
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=len(data))))  # type: ignore[arg-type]
    return batch["image"], batch["label"]


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------------- local folders
def test_save_pretrained_folder_loads_with_the_same_outputs(vit_folder: tuple[ViTForImageClassification, Path]):
    model, folder = vit_folder
    loaded = load_model(folder)
    assert type(loaded) is ViTForImageClassification and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(_x()).logits, model(_x()).logits)
    assert model_spec(loaded) == "transformers/ViTForImageClassification"
    with pytest.raises(InputError) as err:
        load_model(folder, num_classes=3)
    assert "num_classes=10" in _one_line(err)


def test_save_model_keeps_the_runs_metadata_beside_transformers_config(tmp_path: Path) -> None:
    model = tiny_vit(1)
    save_model(model, tmp_path / "run", masc_config={"dataset": "digits", "epoch": 3})
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model_type"] == "vit" and config["masc_probe"]["epoch"] == 3
    assert read_config(tmp_path / "run")["model"] == "transformers/ViTForImageClassification"
    assert read_config(tmp_path / "run")["num_classes"] == 10
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "run")(_x()).logits, model(_x()).logits)


def test_remote_code_is_refused_before_any_of_it_runs(vit_folder: tuple[ViTForImageClassification, Path],
                                                      tmp_path: Path) -> None:
    _, folder = vit_folder
    marker = tmp_path / "remote-code-ran"
    (folder / "modeling_evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig",
                          "AutoModelForImageClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError) as err:
        load_model(folder)
    assert "remote code" in _one_line(err) and "auto_map" in str(err.value)
    (folder / "model.safetensors").unlink()  # an architecture folder: the same refusal when building it new
    with pytest.raises(InputError, match="remote code"):
        load_model(folder, num_classes=10)
    assert not marker.exists()


def test_folder_without_safetensors_is_refused(vit_folder: tuple[ViTForImageClassification, Path]) -> None:
    model, folder = vit_folder
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(InputError) as err:
        load_model(folder)
    assert "expected model.safetensors" in _one_line(err) and "pytorch_model.bin" in str(err.value)


def test_config_only_folder_is_an_architecture_built_for_the_data(tmp_path: Path) -> None:
    tiny_vit().config.save_pretrained(tmp_path / "arch")
    with pytest.raises(InputError, match="expected model.safetensors"):
        load_model(tmp_path / "arch")  # never a silent random model where trained weights were meant
    model = load_model(tmp_path / "arch", num_classes=3, in_chans=3, input_size=(3, 16, 16))
    assert (model.config.num_labels, model.config.num_channels, model.config.image_size) == (3, 3, 16)
    assert model(torch.zeros(2, 3, 16, 16)).logits.shape == (2, 3)


# ----------------------------------------------------------------------------------------------------------- Hub
def test_pushed_vit_is_pulled_and_probed_by_layer_name_through_the_cli(
        vit_folder: tuple[ViTForImageClassification, Path], hub: FakeHub, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from masc_probe import load_data
    from masc_probe.report import ProbeReport

    model, folder = vit_folder
    _push_folder(folder, "me/tiny-vit")
    assert "model.safetensors" in hub.lfs_files("me/tiny-vit")
    pulled = load_model("hf-hub:me/tiny-vit")
    with torch.no_grad():
        assert torch.equal(pulled(_x()).logits, model(_x()).logits)

    out = tmp_path / "probe"
    code = main(["probe", "hf-hub:me/tiny-vit", "--dataset", "digits", "--layers", "vit.layers.0,vit.layers.1",
                 "--reducer", "cls", "--probes", "masc,ncm", "--output-dir", str(out), "--quiet", "--controls", "none"])
    assert code == 0, capsys.readouterr().err
    report = ProbeReport.from_json_file(out / "report.json")
    assert {r["layer"] for r in report.results} == {"vit.layers.0", "vit.layers.1"}
    assert report.to_dict()["reducer"] == {"vit.layers.0": "cls", "vit.layers.1": "cls"}
    # The model's own accuracy, by hand: the same test split through the model, argmax of its logits.
    x, y = _arrays(load_data("digits", split="test"))
    with torch.no_grad():
        pred = model(pixel_values=x).logits.argmax(1)
    assert report.model_test_accuracy == pytest.approx(float((pred == y).double().mean()))


def test_hub_repos_without_safetensors_get_one_line(hub: FakeHub,
                                                    vit_folder: tuple[ViTForImageClassification, Path]) -> None:
    model, folder = vit_folder
    config = (folder / "config.json").read_bytes()
    hub.put_files("me/config-only", {"config.json": config})
    with pytest.raises(HubError) as err:
        load_model("hf-hub:me/config-only")
    assert "has no model.safetensors" in _one_line(err)
    hub.put_files("me/pickled-vit", {"config.json": config, "pytorch_model.bin": b"not read"})
    with pytest.raises(UnsafeCheckpointError) as err:
        load_model("hf-hub:me/pickled-vit")
    assert "pytorch_model.bin" in _one_line(err)


# ------------------------------------------------------------------------------------------------------ training
def test_cli_trains_a_transformers_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_vit().config.save_pretrained(tmp_path / "arch")
    out = tmp_path / "run"
    code = main(["train", "--model", str(tmp_path / "arch"), "--dataset", "digits", "--max-epochs", "2",
                 "--output-dir", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    trained = load_model(out)
    assert isinstance(trained, ViTForImageClassification) and trained.config.num_labels == 10
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert read_config(out)["epoch"] == 2
    # The saved weights are the trained ones: the recorded accuracy is the loaded model's on the same data.
    from masc_probe import load_data

    x, y = _arrays(load_data("digits", split="train", corrupt=0.8, seed=0))
    with torch.no_grad():
        pred = trained(x).logits.argmax(1)
    assert metrics[-1]["train_accuracy_corrupted"] == pytest.approx(float((pred == y).double().mean()))



def test_runner_reads_the_models_own_accuracy_from_its_model_output() -> None:
    from masc_probe import ProbeRunner

    model = tiny_vit(2, num_labels=3)
    x, y = _x(30), torch.arange(30) % 3
    with torch.no_grad():
        expected = float((model(x).logits.argmax(1) == y).double().mean())
    for layers in (["input"], ["vit.layers.1"]):  # the raw input alone still runs the model for its logits
        runner = ProbeRunner(model, layers, probes=("ncm",), progress=False).fit([(x, y)])
        assert runner.evaluate([(x, y)]).model_test_accuracy == pytest.approx(expected)


def test_cli_reducer_flag_takes_a_name_or_a_per_layer_map(capsys: pytest.CaptureFixture[str]) -> None:
    from masc_probe._cli._values import reducer as _reducer

    assert _reducer("cls") == "cls" and _reducer("random:8") == "random:8"
    assert _reducer("blocks.0=cls,blocks.3=mean") == {"blocks.0": "cls", "blocks.3": "mean"}
    for bad in ("token", "=cls", "blocks.0=random:8"):
        assert main(["probe", "mlp", "--dataset", "digits", "--reducer", bad]) == 2
        err = capsys.readouterr().err
        assert "expected flatten|cls|mean|gap|auto or LAYER=NAME" in err and err.count("\n") == 1


def test_cli_run_names_the_architecture_not_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from masc_probe.report import ProbeReport

    tiny_vit().config.save_pretrained(tmp_path / "arch")
    code = main(["--model", str(tmp_path / "arch"), "--dataset", "digits", "--max-epochs", "1", "--probes", "ncm",
                 "--reducer", "auto", "--output-dir", str(tmp_path / "run"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = ProbeReport.from_json_file(tmp_path / "run" / "report.json")
    assert report.model == "transformers/ViTForImageClassification"
    assert report.to_dict()["reducer"] == {"input": "flatten", "vit.layers.0": "cls", "vit.layers.1": "cls"}
    assert read_config(tmp_path / "run")["model"] == "transformers/ViTForImageClassification"
