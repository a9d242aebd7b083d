"""Publishing and pulling runs over real HTTP: the real huggingface_hub client against tests/_hub_server.py.

Nothing here mocks the client; the fake Hub runs on 127.0.0.1 and huggingface_hub's constants point at it for the
duration of each test (CI runs with HF_HUB_OFFLINE=1, which would block 127.0.0.1 too). Xet is off (conftest.py and
``patched_hub``), so ``model.safetensors`` and the plot take the LFS path both ways: preupload -> LFS batch -> PUT to
the storage server -> verify -> ``lfsFile`` commit entry, and resolve -> 302 with X-Linked-Etag/X-Linked-Size ->
storage. tests/test_hub_lfs.py fails each step of that path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download

from _hub_server import FakeHub, patched_hub
from masc_probe import hub as mhub
from masc_probe.errors import HubError, InputError, UnsafeCheckpointError
from masc_probe.models import load_model, save_model
from masc_probe.report import ProbeReport

TOKEN = "hf_testSECRETtoken0123456789abcdef"
CORRUPTION = {"mode": "random", "rate": 0.8, "seed": 3, "realized_rate": 0.7213}
PUSHED = {"model.safetensors", "config.json", "masc/report.json", "masc/report.md", "masc/accuracy_by_layer.png",
          "masc/report.html", "metrics.jsonl", "README.md"}
LFS = {"model.safetensors", "masc/accuracy_by_layer.png"}  # what the Hub's .gitattributes sends through LFS
LFS_LOCAL = ("model.safetensors", "accuracy_by_layer.png")  # their names in the run folder


# ----------------------------------------------------------------------------------------------------- fixtures
def _report(model: str, seed: int) -> ProbeReport:
    rng = np.random.default_rng(seed)
    rows = []
    for layer in ("input", "flatten", "fc1", "fc2", "fc3"):
        for probe, label_sets in (("masc", ("corrupted", "true")), ("ncm", ("corrupted", "true"))):
            for labels in label_sets:
                rows.append({"layer": layer, "probe": probe, "labels": labels,
                             "test_accuracy": float(rng.uniform(0.1, 0.99)),
                             "train_accuracy": {"corrupted": float(rng.uniform()), "true": float(rng.uniform())},
                             **({"n_components": rng.integers(1, 20, 10).tolist()} if probe == "masc" else {})})
    return ProbeReport(rows, model=model, dataset="digits", corruption=CORRUPTION, model_test_accuracy=0.3712,
                       n_test=360, provenance={"masc_probe": "0.1.0", "solver": "scatter"})


def _make_run(folder: Path, spec: str, *, seed: int = 0, in_chans: int = 1) -> Path:
    """A run folder as training.py writes it: model, config, report, plot, metrics, and a resume/ with a pickle."""
    torch.manual_seed(seed)
    model = load_model(spec, num_classes=10, in_chans=in_chans, input_size=8)
    with torch.no_grad():  # no all-zero layers (timm zero-inits some): outputs must depend on every weight
        for p in model.parameters():
            p.normal_(0, 0.2)
    save_model(model, folder, masc_config={
        "dataset": "digits", "in_chans": in_chans, "input_size": [in_chans, 8, 8], "corruption": CORRUPTION,
        "preprocessing": {"mean": [0.5], "std": [0.5]}, "epoch": 34,
        "training": {"optimizer": "adam", "lr": 1e-3, "batch_size": 128, "stop_at": 0.999}})
    report = _report(spec, seed)
    report.to_json(folder / "report.json")
    (folder / "report.md").write_text(report.to_markdown())
    report.plot(folder / "accuracy_by_layer.png")
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "loss": 2.0 / e, "train_accuracy_corrupted": min(1.0, e / 34),
                    "train_accuracy_true": 0.3, "test_accuracy": 0.37}) + "\n" for e in range(1, 35)))
    (folder / "resume").mkdir()
    (folder / "resume" / "optimizer.pkl").write_bytes(pickle.dumps({"step": 34}))
    (folder / "checkpoints" / "epoch-0034").mkdir(parents=True)
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's sha256 and mtime (ns) under *folder*: equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()} | {"<dirs>": (str(sorted(
                str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir())), 0)}


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_run(tmp_path_factory.mktemp("runs") / "cnn-digits", "cnn")


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh fake Hub that wants TOKEN for writes; the client finds the token in HF_TOKEN, its usual source."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub(token=TOKEN) as server, patched_hub(server.url, str(tmp_path / "hf-cache")):
        yield server


def _inputs() -> torch.Tensor:
    return torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(7))


# ----------------------------------------------------------------------------------------------------- pushing
def test_push_then_pull_gives_the_same_model_and_report(hub: FakeHub, cnn_run: Path, tmp_path: Path) -> None:
    before = _snapshot(cnn_run)
    url = mhub.push_run(cnn_run, "me/cnn-digits")

    assert hub.commit_requests == 1  # one push, one commit
    assert hub.history("me/cnn-digits") == ["masc-probe: cnn on digits, p=0.8 random", "initial commit"]
    oid = hub.repos[("model", "me/cnn-digits")].refs["main"]
    assert url.endswith(f"/me/cnn-digits/commit/{oid}")
    files = hub.files("me/cnn-digits")
    assert set(files) == PUSHED | {".gitattributes"}  # no resume/, no checkpoints/, no pickle
    for local, remote in [("model.safetensors", "model.safetensors"), ("config.json", "config.json"),
                          ("report.json", "masc/report.json"), ("metrics.jsonl", "metrics.jsonl"),
                          ("accuracy_by_layer.png", "masc/accuracy_by_layer.png"), ("report.md", "masc/report.md")]:
        assert files[remote] == (cnn_run / local).read_bytes(), remote
    assert _snapshot(cnn_run) == before
    # The binaries took the LFS path (batch -> PUT to storage -> verify -> lfsFile entry); the text is in the commit.
    assert hub.committed == [{p: "lfsFile" if p in LFS else "file" for p in PUSHED}]
    assert hub.lfs_files("me/cnn-digits") == LFS
    assert len(hub.hits("lfs-batch")) == 1
    uploads = hub.hits("lfs-upload")
    assert sorted(h.path.rsplit("/", 1)[1] for h in uploads) == sorted(_sha256(cnn_run / f) for f in LFS_LOCAL)
    assert all(h.status == 200 and h.authorization is None for h in uploads)  # the token stays on the Hub
    assert [h.status for h in hub.hits("lfs-verify")] == [200, 200]

    original = load_model(cnn_run)
    pulled = load_model("hf-hub:me/cnn-digits")
    assert type(pulled) is type(original)
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(pulled(x), original(x))
    assert mhub.load_report("me/cnn-digits") == ProbeReport.from_json_file(cnn_run / "report.json")
    # The weights came back the LFS way: a 302 off the Hub, then storage, which never saw the token.
    weights_sha = _sha256(cnn_run / "model.safetensors")
    assert {h.status for h in hub.hits("resolve") if h.path.endswith("/model.safetensors")} == {302}
    assert [(h.path.rsplit("/", 1)[1], h.status, h.authorization) for h in hub.hits("lfs-download")] == [
        (weights_sha, 200, None)]
    # The cache names a blob by the etag the client took: X-Linked-Etag (the sha256), not the pointer's ETag.
    blob = tmp_path / "hf-cache" / "models--me--cnn-digits" / "blobs" / weights_sha
    assert blob.read_bytes() == (cnn_run / "model.safetensors").read_bytes()


def test_second_push_is_one_more_commit_and_drops_stale_report_files(hub: FakeHub, cnn_run: Path,
                                                                     tmp_path: Path) -> None:
    mhub.push_run(cnn_run, "me/r")
    hub.put_files("me/r", {"masc/old_plot.png": b"stale"})  # e.g. left by an older masc-probe
    other = _make_run(tmp_path / "run2", "cnn", seed=1)
    before = hub.commit_requests
    mhub.push_run(other, "me/r", commit_message="second run")
    assert hub.commit_requests == before + 1
    assert hub.history("me/r")[0] == "second run"
    files = hub.files("me/r")
    assert "masc/old_plot.png" not in files
    assert files["model.safetensors"] == (other / "model.safetensors").read_bytes()
    assert mhub.load_report("me/r") == ProbeReport.from_json_file(other / "report.json")


def test_failed_commit_leaves_the_run_untouched_and_a_retry_succeeds(hub: FakeHub, cnn_run: Path) -> None:
    before = _snapshot(cnn_run)
    hub.fail_next("commit", 500)
    with pytest.raises(HubError) as err:
        mhub.push_run(cnn_run, "me/flaky")
    message = str(err.value)
    assert "500" in message and "me/flaky" in message and "\n" not in message
    assert _snapshot(cnn_run) == before
    assert hub.commit_requests == 0 and hub.history("me/flaky") == ["initial commit"]
    assert [h.status for h in hub.hits("lfs-verify")] == [200, 200]  # the objects were stored before the commit
    uploads = len(hub.hits("lfs-upload"))

    mhub.push_run(cnn_run, "me/flaky")
    assert hub.commit_requests == 1
    assert len(hub.hits("lfs-upload")) == uploads  # the batch answered "already stored": nothing sent twice
    assert hub.committed == [{p: "lfsFile" if p in LFS else "file" for p in PUSHED}]
    files = hub.files("me/flaky")
    assert set(files) == PUSHED | {".gitattributes"}
    assert files["model.safetensors"] == (cnn_run / "model.safetensors").read_bytes()
    assert _snapshot(cnn_run) == before


def test_failed_lfs_download_leaves_nothing_half_written_and_a_retry_succeeds(hub: FakeHub, cnn_run: Path,
                                                                              tmp_path: Path) -> None:
    mhub.push_run(cnn_run, "me/dl")
    hub.fail_next("lfs-download", 403, "AccessDenied: Request has expired")
    with pytest.raises(HubError) as err:
        load_model("hf-hub:me/dl")
    message = str(err.value)
    assert "me/dl" in message and "403" in message and "\n" not in message and TOKEN not in message
    assert [h.status for h in hub.hits("lfs-download")] == [403]  # it failed where planned, after the redirect
    cache = tmp_path / "hf-cache" / "models--me--dl"
    assert {p.relative_to(cache).parts[0] for p in cache.rglob("*") if p.is_file()} <= {"refs"}  # no blob, no file

    x = _inputs()
    with torch.no_grad():
        assert torch.equal(load_model("hf-hub:me/dl")(x), load_model(cnn_run)(x))


def test_branch_and_pull_request_leave_main_alone(hub: FakeHub, cnn_run: Path, tmp_path: Path) -> None:
    mhub.push_run(cnn_run, "me/b")
    main_before = hub.files("me/b")
    other = _make_run(tmp_path / "run2", "cnn", seed=2)
    mhub.push_run(other, "me/b", revision="p0.8-seed2")
    assert hub.files("me/b") == main_before
    assert mhub.load_report("me/b", revision="p0.8-seed2") == ProbeReport.from_json_file(other / "report.json")
    pr = mhub.push_run(other, "me/b", create_pr=True)
    assert pr.endswith("/me/b/discussions/1")
    assert hub.files("me/b", "refs/pr/1")["model.safetensors"] == (other / "model.safetensors").read_bytes()
    assert hub.files("me/b") == main_before


def test_dry_run_writes_exactly_what_a_push_uploads(hub: FakeHub, cnn_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    assert mhub.push_run(cnn_run, "me/dry", dry_run_dir=out) == str(out)
    assert hub.requests == []  # nothing went over the wire
    written = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    mhub.push_run(cnn_run, "me/dry")
    pushed = hub.files("me/dry")
    pushed.pop(".gitattributes")
    assert written == pushed
    with pytest.raises(InputError):
        mhub.write_dry_run(cnn_run, cnn_run)


def test_report_only_run_is_published_without_writing_into_it(hub: FakeHub, tmp_path: Path) -> None:
    run = tmp_path / "report-only"
    run.mkdir()
    report = _report("mlp", 5)
    report.to_json(run / "report.json")
    before = _snapshot(run)
    mhub.push_run(run, "me/report-only")
    files = hub.files("me/report-only")
    assert set(files) == {".gitattributes", "README.md", "masc/report.json", "masc/report.md",
                          "masc/accuracy_by_layer.png", "masc/report.html"}  # the page drawn aside, as the plot
    assert files["masc/report.md"].decode() == report.to_markdown()
    assert files["masc/accuracy_by_layer.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert _snapshot(run) == before


def test_push_refuses_bad_input_before_any_request(hub: FakeHub, cnn_run: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="report.json"):
        mhub.push_run(tmp_path, "me/x")
    with pytest.raises(InputError, match="repo_id"):
        mhub.push_run(cnn_run, "not a repo id")
    fake = tmp_path / "renamed-pickle"
    fake.mkdir()
    for name in ("config.json", "report.json"):
        (fake / name).write_bytes((cnn_run / name).read_bytes())
    (fake / "model.safetensors").write_bytes(pickle.dumps({"w": [1.0]}))
    with pytest.raises(InputError, match="safetensors"):
        mhub.push_run(fake, "me/x")
    assert hub.requests == []


# ----------------------------------------------------------------------------------------------------- pulling
def test_missing_repo_revision_and_file_give_one_line_errors(hub: FakeHub, cnn_run: Path) -> None:
    hub.put_files("me/no-report", {"README.md": b"hello"})
    mhub.push_run(cnn_run, "me/ok")
    cases = [
        (lambda: mhub.load_report("me/does-not-exist"), "me/does-not-exist"),
        (lambda: mhub.load_report("me/no-report"), "masc/report.json"),
        (lambda: mhub.load_report("me/ok", revision="no-such-branch"), "no-such-branch"),
        (lambda: load_model("hf-hub:me/does-not-exist"), "me/does-not-exist"),
        (lambda: load_model("hf-hub:me/no-report"), "model.safetensors"),
    ]
    for call, needle in cases:
        with pytest.raises(HubError) as err:
            call()
        assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_unreachable_hub_is_a_one_line_error(cnn_run: Path, tmp_path: Path) -> None:
    with FakeHub() as server:
        endpoint = server.url  # a port nobody listens on once the server stops
    with patched_hub(endpoint, str(tmp_path / "cache")):
        with pytest.raises(HubError, match="cannot reach the Hub") as err:
            mhub.push_run(cnn_run, "me/x", token=TOKEN)
        assert "\n" not in str(err.value)
    # (A download from a dead endpoint is left out: huggingface_hub retries it with backoff for ~25 s.)


class _Trap:
    """Unpickling this creates a marker file: the test's witness that nothing was ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_only_repo_is_refused_without_unpickling(hub: FakeHub, cnn_run: Path, tmp_path: Path) -> None:
    probe_marker = tmp_path / "trap-works"
    pickle.loads(pickle.dumps(_Trap(probe_marker)))
    assert probe_marker.exists()  # the trap does fire when unpickled

    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"state_dict": _Trap(marker)})
    hub.put_files("me/pickled", {"config.json": (cnn_run / "config.json").read_bytes(),
                                 "pytorch_model.bin": payload, "model.pt": payload})
    with pytest.raises(UnsafeCheckpointError) as err:
        load_model("hf-hub:me/pickled")
    assert "pytorch_model.bin" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    assert not any(path.endswith((".bin", ".pt")) for _, path in hub.requests)  # never even downloaded
    assert hub.lfs_files("me/pickled") == {"pytorch_model.bin", "model.pt"} and hub.hits("lfs-download") == []


def test_model_downloads_take_the_one_hub_error_mapping(hub: FakeHub, cnn_run: Path) -> None:
    """load_model's downloads fail as every other Hub call does: one line, the token scrubbed, the file listing
    that follows a missing model.safetensors guarded too, and a malformed repo id refused before any request."""
    mhub.push_run(cnn_run, "me/denied")
    hub.fail_next("resolve", 403, f"token {TOKEN} may not read me/denied")
    with pytest.raises(HubError) as err:
        load_model("hf-hub:me/denied")
    assert "HTTP 403" in str(err.value) and TOKEN not in str(err.value) and "***" in str(err.value)

    hub.put_files("me/no-weights", {"config.json": (cnn_run / "config.json").read_bytes()})
    hub.fail_next("tree", 403, f"listing refused for {TOKEN}")
    with pytest.raises(HubError) as err:
        load_model("hf-hub:me/no-weights")
    assert "me/no-weights" in str(err.value) and TOKEN not in str(err.value) and "\n" not in str(err.value)

    requests = len(hub.log)
    with pytest.raises(InputError, match="user/name"):
        load_model("hf-hub:not a repo")
    assert len(hub.log) == requests


# ----------------------------------------------------------------------------------------------------- card
def test_card_carries_model_index_that_huggingface_hub_parses(hub: FakeHub, cnn_run: Path) -> None:
    mhub.push_run(cnn_run, "me/card")
    assert ("POST", "/api/validate-yaml") in hub.requests  # the client validated the metadata before committing
    card = ModelCard.load(hf_hub_download("me/card", "README.md"))
    report = json.loads((cnn_run / "report.json").read_text())

    def best(labels: str) -> tuple[str, float]:  # computed here from the raw rows, first layer wins ties
        rows = [r for r in report["results"] if r["probe"] == "masc" and r["labels"] == labels]
        top = max(r["test_accuracy"] for r in rows)
        return next((r["layer"], r["test_accuracy"]) for r in rows if r["test_accuracy"] == top)

    results = card.data.eval_results
    assert [r.metric_type for r in results] == ["accuracy"] * 3
    assert results[0].metric_value == pytest.approx(0.3712)
    for result, labels in zip(results[1:], ("corrupted", "true")):
        layer, accuracy = best(labels)
        assert result.metric_value == pytest.approx(accuracy)
        assert result.metric_args == {"probe": "masc", "labels": labels, "layer": layer}
    for result in results:
        assert result.dataset_type == "digits" and result.dataset_split == "test"
        assert result.task_type == "image-classification"
        assert result.dataset_args == {"corruption_rate": 0.8, "corruption_mode": "random", "corruption_seed": 3,
                                       "corruption_realized_rate": 0.7213}
    assert card.data.model_name == "card"
    assert {"masc-probe", "memorization", "label-noise"} <= set(card.data.tags)
    text = card.text
    for section in ("## Training setup", "## Label corruption", "## Probe accuracy by layer", "## Method",
                    "## Reproduce", "![Test accuracy of each probe by layer](masc/accuracy_by_layer.png)",
                    "cos θ<sub>c</sub>(x) = ‖B<sub>c</sub>x‖ / ‖x‖",
                    "masc-probe --model cnn --dataset digits --corrupt 0.8 --seed 3",
                    'load_model("hf-hub:me/card")'):
        assert section in text, section
    assert ProbeReport.from_json_file(cnn_run / "report.json").to_markdown().split("\n", 1)[1].strip() in text
    assert str(mhub.build_card(cnn_run, repo_id="me/card")) == str(card)


def test_read_config_reads_the_revision_named_in_the_spec(hub: FakeHub, cnn_run: Path) -> None:
    from masc_probe.models import read_config

    mhub.push_run(cnn_run, "me/rev")
    first = hub.repos[("model", "me/rev")].refs["main"]
    config = json.loads((cnn_run / "config.json").read_text())
    config["masc_probe"] = {**config["masc_probe"], "dataset": "mnist", "corruption": {**CORRUPTION, "seed": 9}}
    hub.put_files("me/rev", {"config.json": json.dumps(config).encode()})  # main moves on; `first` keeps the old one

    assert read_config("hf-hub:me/rev")["corruption"]["seed"] == 9
    old = read_config(f"hf-hub:me/rev@{first}")
    assert (old["dataset"], old["corruption"]) == ("digits", CORRUPTION)
    assert read_config("hf-hub:me/rev", revision=first) == old
    with pytest.raises(InputError, match="two revisions"):
        read_config(f"hf-hub:me/rev@{first}", revision="main")


def test_load_model_takes_token_cache_dir_and_local_files_only(hub: FakeHub, cnn_run: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    mhub.push_run(cnn_run, "me/opts", private=True)
    monkeypatch.delenv("HF_TOKEN")  # from here on only token= can open the private repo
    with pytest.raises(HubError, match="me/opts"):
        load_model("hf-hub:me/opts")
    mine = tmp_path / "my-cache"
    model = load_model("hf-hub:me/opts", token=TOKEN, cache_dir=mine)
    assert {p.name for p in (mine / "models--me--opts").rglob("*") if p.is_file() and "snapshots" in p.parts} == {
        "model.safetensors", "config.json"}  # in the cache asked for, not the default one
    assert not (tmp_path / "hf-cache" / "models--me--opts").exists()

    requests = len(hub.log)
    cached = load_model("hf-hub:me/opts", cache_dir=mine, local_files_only=True)  # no token, no request
    assert len(hub.log) == requests
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(cached(x), model(x)) and torch.equal(model(x), load_model(cnn_run)(x))
    with pytest.raises(HubError) as err:
        load_model("hf-hub:me/opts", cache_dir=tmp_path / "empty", local_files_only=True)
    assert "me/opts" in str(err.value) and "\n" not in str(err.value) and len(hub.log) == requests


# ----------------------------------------------------------------------------------------------------- timm, offline
def test_timm_layout_loads_with_timm_create_model(hub: FakeHub, tmp_path: Path) -> None:
    import timm

    run = _make_run(tmp_path / "timm-run", "timm/test_resnet", in_chans=1)
    mhub.push_run(run, "me/timm-digits")
    card = ModelCard.load(hf_hub_download("me/timm-digits", "README.md"))
    assert card.data.library_name == "timm"
    assert 'timm.create_model("hf-hub:me/timm-digits", pretrained=True)' in card.text

    original = load_model(run)
    by_timm = timm.create_model("hf-hub:me/timm-digits", pretrained=True).eval()
    ours = load_model("hf-hub:me/timm-digits")
    x = _inputs()
    with torch.no_grad():
        expected = original(x)
        assert torch.equal(by_timm(x), expected)
        assert torch.equal(ours(x), expected)


def test_offline_prefilled_cache_loads_the_pushed_model(cnn_run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    cache = str(tmp_path / "cache")
    with FakeHub(token=TOKEN) as server, patched_hub(server.url, cache):
        mhub.push_run(cnn_run, "me/offline")
        load_model("hf-hub:me/offline")
        mhub.load_report("me/offline")
    # The server is gone; offline mode, the cache filled above.
    with patched_hub(None, cache, offline=True):
        model = load_model("hf-hub:me/offline")
        report = mhub.load_report("me/offline")
        with pytest.raises(HubError, match="cache"):
            mhub.load_report("me/never-downloaded")
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x), load_model(cnn_run)(x))
    assert report == ProbeReport.from_json_file(cnn_run / "report.json")
    with patched_hub(None, str(tmp_path / "empty-cache"), offline=True), pytest.raises(HubError) as err:
        load_model("hf-hub:me/offline")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------- token
def test_token_is_used_but_never_logged_or_printed(hub: FakeHub, cnn_run: Path, caplog: pytest.LogCaptureFixture,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)  # everything: ours, huggingface_hub's, httpx's
    messages = []
    mhub.push_run(cnn_run, "me/private", private=True)
    assert hub.repos[("model", "me/private")].private
    assert set(hub.auth_headers) == {f"Bearer {TOKEN}"}  # taken from HF_TOKEN, the usual source
    mhub.load_report("me/private")
    load_model("hf-hub:me/private")
    hub.create("me/private-b", private=True)
    hub.put_files("me/private-b", {"masc/report.json": (cnn_run / "report.json").read_bytes()})
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError) as err:  # a private repo without a token looks missing, as on the Hub
        mhub.load_report("me/private-b")
    messages.append(str(err.value))
    with pytest.raises(HubError) as err:
        mhub.push_run(cnn_run, "me/private2", token="hf_wrong_token_abc")
    messages.append(str(err.value))
    assert "401" in messages[-1]
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err, *messages):
        assert TOKEN not in text and "hf_wrong_token_abc" not in text
    assert "me/private" in caplog.text  # the logs were captured at all
