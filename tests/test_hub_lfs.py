"""The LFS path of a push and a pull, step by step, against tests/_hub_server.py.

Each step of an upload (LFS batch, PUT to storage, verify) fails in turn: the run folder must stay untouched, the
repo unchanged, a retry must succeed, and the error must be one line (HubError) with the token scrubbed. The last
tests hold the fake Hub itself to the protocol, so that "travelled as LFS" in test_hub.py cannot pass by accident.
"""

from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from _hub_server import FakeHub, git_blob_oid, sha256_hex
from masc_probe import hub as mhub
from masc_probe.errors import HubError
from test_hub import LFS, PUSHED, TOKEN, _sha256, _snapshot, cnn_run, hub  # noqa: F401 - fixtures by name

_STEP_FAILURES = [
    ("lfs-batch", 403, f"token {TOKEN} may not write to this repo"),
    ("lfs-upload", 403, "AccessDenied: Request has expired"),
    ("lfs-verify", 403, f"token {TOKEN} may not write to this repo"),
]
_IDS = ["batch-403", "put-403", "verify-403"]


# ------------------------------------------------------------------------------------------------- failing steps
@pytest.mark.parametrize(("endpoint", "status", "message"), _STEP_FAILURES, ids=_IDS)
def test_failed_lfs_step_changes_nothing_and_a_retry_succeeds(hub: FakeHub, cnn_run: Path, endpoint: str,
                                                              status: int, message: str) -> None:
    before = _snapshot(cnn_run)
    hub.fail_next(endpoint, status, message)
    with pytest.raises(HubError):
        mhub.push_run(cnn_run, "me/lfs")
    assert hub.hits(endpoint)[0].status == status  # it failed at the planned step
    assert _snapshot(cnn_run) == before
    assert hub.commit_requests == 0 and hub.history("me/lfs") == ["initial commit"]

    mhub.push_run(cnn_run, "me/lfs")
    assert hub.commit_requests == 1
    assert hub.committed == [{p: "lfsFile" if p in LFS else "file" for p in PUSHED}]
    files = hub.files("me/lfs")
    assert files["model.safetensors"] == (cnn_run / "model.safetensors").read_bytes()
    assert files["masc/accuracy_by_layer.png"] == (cnn_run / "accuracy_by_layer.png").read_bytes()
    assert _snapshot(cnn_run) == before


# huggingface_hub wraps a failed PUT or verify in RuntimeError("Error while uploading '<path>' to the Hub.") with the
# HfHubHTTPError as __cause__ (_commit_api._upload_lfs_files); _hub_errors maps that cause like any other HTTP error.
@pytest.mark.parametrize(("endpoint", "status", "message"), _STEP_FAILURES, ids=_IDS)
def test_failed_lfs_step_is_one_line_with_the_token_scrubbed(hub: FakeHub, cnn_run: Path, endpoint: str,
                                                            status: int, message: str) -> None:
    hub.fail_next(endpoint, status, message)
    with pytest.raises(HubError) as err:
        mhub.push_run(cnn_run, "me/lfs")
    text = str(err.value)
    assert "me/lfs" in text and str(status) in text, text
    assert "\n" not in text and TOKEN not in text, text


def test_lfs_batch_refusing_an_object_is_one_line_and_uploads_nothing(hub: FakeHub, cnn_run: Path) -> None:
    before = _snapshot(cnn_run)
    weights = cnn_run / "model.safetensors"
    assert (cnn_run / "accuracy_by_layer.png").stat().st_size < 200_000 < weights.stat().st_size
    hub.lfs_max_size = 200_000  # the plot fits, the weights do not: the batch answers a per-object error
    with pytest.raises(HubError) as err:
        mhub.push_run(cnn_run, "me/lfs")
    text = str(err.value)
    assert "me/lfs" in text and _sha256(weights) in text and "exceeds the limit" in text and "\n" not in text
    assert hub.hits("lfs-upload") == [] and hub.commit_requests == 0
    assert _snapshot(cnn_run) == before


def test_a_transient_storage_error_is_retried_by_the_client(hub: FakeHub, cnn_run: Path) -> None:
    hub.fail_next("lfs-upload", 503, "SlowDown: Please reduce your request rate.")
    mhub.push_run(cnn_run, "me/lfs")
    assert sorted(h.status for h in hub.hits("lfs-upload")) == [200, 200, 503]  # one PUT sent again after the 503
    assert hub.commit_requests == 1
    assert hub.files("me/lfs")["model.safetensors"] == (cnn_run / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------------- the fake Hub
def _call(url: str, method: str, body: bytes | dict | list | None = None, *, token: str | None = TOKEN,
          ndjson: bool = False) -> tuple[int, http.client.HTTPResponse, bytes]:
    """One raw request (no client library, no redirect following); returns status, response and body."""
    if isinstance(body, list) and ndjson:
        body = b"".join(json.dumps(item).encode() + b"\n" for item in body)
    elif isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    split = urlsplit(url)
    connection = http.client.HTTPConnection(split.hostname, split.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connection.request(method, split.path + (f"?{split.query}" if split.query else ""), body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, response, data


def _commit(hub: FakeHub, *entries: dict) -> int:
    header = {"key": "header", "value": {"summary": "raw commit", "description": ""}}
    return _call(f"{hub.url}/api/models/me/p/commit/main", "POST", [header, *entries], ndjson=True)[0]


def test_the_test_hub_holds_uploads_to_the_lfs_protocol(hub: FakeHub) -> None:
    hub.create("me/p")
    data = b"\x00\x01weights" * 100
    oid, size = sha256_hex(data), len(data)
    lfs_entry = {"key": "lfsFile", "value": {"path": "model.safetensors", "algo": "sha256", "oid": oid, "size": size}}

    def sample(content: bytes) -> dict:
        return {"sample": base64.b64encode(content[:512]).decode(), "size": len(content)}

    files = [{"path": "model.safetensors", **sample(b"{}")}, {"path": "masc/plot.png", **sample(b"png")},
             {"path": "README.md", **sample(b"# hello")}, {"path": "weights.dat", **sample(data)}]
    status, _, body = _call(f"{hub.url}/api/models/me/p/preupload/main", "POST", {"files": files})
    assert status == 200
    assert {f["path"]: f["uploadMode"] for f in json.loads(body)["files"]} == {
        "model.safetensors": "lfs", "masc/plot.png": "lfs", "README.md": "regular", "weights.dat": "lfs"}

    # A commit may neither reference an object never uploaded nor carry an LFS file as base64 content.
    assert _commit(hub, lfs_entry) == 422
    assert _commit(hub, {"key": "file", "value": {"path": "model.safetensors", "encoding": "base64",
                                                  "content": base64.b64encode(data).decode()}}) == 400

    batch_url = f"{hub.url}/me/p.git/info/lfs/objects/batch"
    batch = {"operation": "upload", "transfers": ["basic", "multipart"], "hash_algo": "sha256",
             "objects": [{"oid": oid, "size": size}]}
    assert _call(batch_url, "POST", batch, token="hf_wrong")[0] == 401
    status, _, body = _call(batch_url, "POST", batch)
    answer = json.loads(body)
    assert status == 200 and answer["transfer"] == "basic"
    actions = answer["objects"][0]["actions"]
    upload, verify = actions["upload"]["href"], actions["verify"]["href"]
    assert upload.startswith(hub.storage_url + "/") and verify.startswith(hub.url + "/")

    assert _call(upload, "PUT", data[:-1], token=None)[0] == 400  # not the announced bytes
    assert _call(upload.replace("Signature=", "Signature=0"), "PUT", data, token=None)[0] == 403  # unsigned
    assert _call(verify, "POST", {"oid": oid, "size": size})[0] == 404  # nothing arrived yet
    assert _call(upload, "PUT", data, token=None)[0] == 200
    assert _commit(hub, lfs_entry) == 422  # uploaded but not verified
    assert _call(verify, "POST", {"oid": oid, "size": size})[0] == 200
    assert _commit(hub, lfs_entry) == 200
    assert hub.files("me/p")["model.safetensors"] == data and hub.lfs_files("me/p") == {"model.safetensors"}

    status, _, body = _call(batch_url, "POST", batch)
    assert status == 200 and "actions" not in json.loads(body)["objects"][0]  # already stored: nothing to send


def test_the_test_hub_redirects_lfs_downloads_like_the_hub(hub: FakeHub) -> None:
    data = b"\x00\x01weights" * 100
    commit = hub.put_files("me/d", {"model.safetensors": data, "config.json": b"{}"})

    status, response, _ = _call(f"{hub.url}/me/d/resolve/main/model.safetensors", "HEAD")
    assert status == 302
    assert response.getheader("X-Linked-Etag") == f'"{sha256_hex(data)}"'
    assert response.getheader("X-Linked-Size") == str(len(data))
    assert response.getheader("X-Repo-Commit") == commit
    assert response.getheader("ETag") not in (None, response.getheader("X-Linked-Etag"))  # the pointer's oid
    location = response.getheader("Location")
    assert location.startswith(hub.storage_url + "/")
    status, response, body = _call(location, "GET", token=None)
    assert status == 200 and body == data and response.getheader("X-Repo-Commit") is None  # storage is not the Hub
    assert _call(location.replace("Signature=", "Signature=0"), "GET", token=None)[0] == 403

    status, response, body = _call(f"{hub.url}/me/d/resolve/main/config.json", "GET")
    assert status == 200 and body == b"{}" and response.getheader("ETag") == f'"{git_blob_oid(b"{}")}"'
