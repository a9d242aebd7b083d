"""A small in-memory Hugging Face Hub for tests: real HTTP on 127.0.0.1, the API subset huggingface_hub uses.

The real ``huggingface_hub`` client talks to it (no mocking of the client); ``patched_hub`` points the client's
constants at it for the duration of a ``with`` block. Endpoints (see ../shared/DESIGN.md "Environment facts"):

- ``POST /api/repos/create`` (409 when the repo exists), ``POST /api/validate-yaml``, ``GET /api/whoami-v2``;
- ``POST /api/{models|datasets|spaces}/{repo}/preupload/{rev}`` answering ``uploadMode: "regular"`` with the git
  blob oid of files already there (so the client skips unchanged files, as on the real Hub);
- ``POST /api/{type}s/{repo}/commit/{rev}`` (ndjson: header, file with base64 content, deletedFile, deletedFolder);
- ``POST /api/{type}s/{repo}/branch/{branch}``;
- ``GET /api/{type}s/{repo}[/revision/{rev}]`` (info with ``sha`` and ``siblings``), ``GET …/tree/{rev}[/{path}]``;
- ``GET``/``HEAD /[{type}s/]{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``, ``Content-Length``.

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) as the Hub's do, so the
client raises its own typed errors. ``FakeHub.fail_next_commits`` makes the next commits answer 500.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "masc-tester"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of *data* (what the Hub calls a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, bytes]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, _Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid

    def resolve(self, revision: str) -> _Commit | None:
        oid = self.refs.get(revision, revision)
        return self.commits.get(oid)


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class FakeHub:
    """In-memory repos with commit history, served over HTTP by ``start()``.

    Attributes:
        url: the endpoint, e.g. ``http://127.0.0.1:40123`` (set by ``start``).
        token: when set, writes need ``Authorization: Bearer <token>`` and private repos need it to be read.
        fail_next_commits: how many of the next commit requests answer 500 without changing anything.
        commit_requests: commit requests that succeeded (one push should add exactly one).
        requests: ``(method, path)`` of every request, in order.
        auth_headers: every ``Authorization`` header received (to check which token the client sent).
    """

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.url = ""
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.fail_next_commits = 0
        self.commit_requests = 0
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str] = []
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- state helpers usable from tests -----------------------------------------------------------------------
    def create(self, repo_id: str, *, repo_type: str = "model", private: bool = False) -> _Repo:
        """Create a repo with the Hub's initial commit (a ``.gitattributes``)."""
        with self._lock:
            repo = _Repo(repo_type, repo_id, private)
            self.repos[(repo_type, repo_id)] = repo
            self._commit(repo, "main", "initial commit", {".gitattributes": b"*.safetensors filter=lfs\n"}, [])
            return repo

    def put_files(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model") -> str:
        """Commit *files* straight into the repo's main branch (creating the repo); returns the commit oid."""
        with self._lock:
            repo = self.repos.get((repo_type, repo_id)) or self.create(repo_id, repo_type=repo_type)
            return self._commit(repo, "main", "seed", files, [])

    def files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict[str, bytes]:
        """The files at *revision* (a copy)."""
        with self._lock:
            commit = self.repos[(repo_type, repo_id)].resolve(revision)
            assert commit is not None, f"no revision {revision}"
            return dict(commit.files)

    def history(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[str]:
        """Commit titles from the newest back to the first."""
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            commit, out = repo.resolve(revision), []
            while commit is not None:
                out.append(commit.title)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return out

    def _commit(self, repo: _Repo, ref: str, title: str, add: dict[str, bytes], delete: list[str]) -> str:
        parent = repo.refs.get(ref)
        files = dict(repo.commits[parent].files) if parent else {}
        for path in delete:
            for existing in [p for p in files if p == path or p.startswith(path.rstrip("/") + "/")]:
                del files[existing]
        files.update(add)
        self._counter += 1
        digest = hashlib.sha1(f"{repo.repo_id}:{self._counter}:{parent}:{title}".encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_oid(files[path]).encode())
        oid = digest.hexdigest()
        repo.commits[oid] = _Commit(oid, parent, title, files)
        repo.refs[ref] = oid
        return oid

    # ----- server lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- request handling ----------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes):
        """Route one request; returns ``(status, headers, body bytes)``."""
        with self._lock:
            self.requests.append((method, path))
            auth = headers.get("Authorization")
            if auth:
                self.auth_headers.append(auth)
            authed = self.token is None or auth == f"Bearer {self.token}"
            parts = [unquote(p) for p in path.strip("/").split("/")]
            try:
                return self._route(method, parts, query, body, authed)
            except _HttpError as err:
                extra = {"X-Error-Message": err.message}
                if err.code:
                    extra["X-Error-Code"] = err.code
                if err.commit:
                    extra["X-Repo-Commit"] = err.commit
                return err.status, extra, json.dumps({"error": err.message}).encode()

    def _repo(self, repo_type: str, repo_id: str, authed: bool) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authed):
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _rev(self, repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _need_write(self, authed: bool) -> None:
        if not authed:
            raise _HttpError(401, "Invalid credentials in Authorization header")

    def _route(self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes, authed: bool):
        if parts[:2] == ["api", "whoami-v2"]:
            if self.token is not None and not authed:
                raise _HttpError(401, "Invalid credentials in Authorization header")
            return _json({"type": "user", "name": USER, "orgs": [], "auth": {"type": "access_token"}})
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body))
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            self._need_write(authed)
            payload = json.loads(body)
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            repo_type = payload.get("type") or "model"
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            answer = {"url": f"{self.url}/{prefix}{repo_id}", "name": repo_id}
            if (repo_type, repo_id) in self.repos:  # the Hub answers 409 with the url, which exist_ok uses
                return _json({**answer, "error": "You already created this model repo"}, 409)
            self.create(repo_id, repo_type=repo_type, private=payload.get("visibility") == "private")
            return _json(answer)
        if parts[0] == "api" and len(parts) >= 4 and parts[1] in _TYPES:
            repo_type, repo_id, rest = _TYPES[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:]
            return self._api_repo(method, repo_type, repo_id, rest, query, body, authed)
        # /{repo}/resolve/{rev}/{path} or /{type}s/{repo}/resolve/{rev}/{path}
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = _TYPES[parts[0]], parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo = self._repo(repo_type, f"{parts[0]}/{parts[1]}", authed)
            commit = self._rev(repo, parts[3])
            filename = "/".join(parts[4:])
            if filename not in commit.files:
                raise _HttpError(404, "Entry not found", "EntryNotFound", commit=commit.oid)
            data = commit.files[filename]
            headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(data)}"',
                       "Content-Type": "application/octet-stream"}
            return 200, headers, data
        raise _HttpError(404, f"no route for {method} /{'/'.join(parts)}")

    def _api_repo(self, method, repo_type, repo_id, rest, query, body, authed):
        repo = self._repo(repo_type, repo_id, authed)
        if method == "GET" and (not rest or rest[0] == "revision"):
            commit = self._rev(repo, "/".join(rest[1:]) if rest else "main")
            return _json(self._info(repo, commit))
        if method == "GET" and rest and rest[0] == "tree":
            commit = self._rev(repo, rest[1])
            return _json(self._tree(commit, "/".join(rest[2:]), query.get("recursive", ["false"])[0] == "true"))
        if method == "POST" and rest and rest[0] == "preupload":
            commit = self._rev(repo, rest[1])
            files = json.loads(body)["files"]
            return _json({"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_blob_oid(commit.files[f["path"]]) if f["path"] in commit.files else None}
                for f in files
            ], "commitOid": commit.oid})
        if method == "POST" and rest and rest[0] == "branch":
            self._need_write(authed)
            branch = "/".join(rest[1:])
            if branch in repo.refs:
                raise _HttpError(409, f"Reference already exists: {branch}")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.refs[branch] = self._rev(repo, start).oid
            return _json({})
        if method == "POST" and rest and rest[0] == "commit":
            self._need_write(authed)
            return self._commit_request(repo, "/".join(rest[1:]), query, body)
        raise _HttpError(404, f"no route for {method} {repo_id}/{'/'.join(rest)}")

    def _commit_request(self, repo: _Repo, revision: str, query, body: bytes):
        if self.fail_next_commits > 0:
            self.fail_next_commits -= 1
            raise _HttpError(500, "Internal Error - simulated by the test Hub")
        base = self._rev(repo, revision)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        if header.get("parentCommit") and header["parentCommit"] != base.oid:
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
        add, delete = {}, []
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise _HttpError(400, f"unsupported encoding {value.get('encoding')}")
                add[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                delete.append(value["path"])
            elif key != "header":
                raise _HttpError(400, f"this test Hub takes regular files only, got {key}")
        ref = revision
        pr_url = None
        if query.get("create_pr") == ["1"]:
            ref = f"refs/pr/{sum(r.startswith('refs/pr/') for r in repo.refs) + 1}"
            repo.refs[ref] = base.oid
            pr_url = f"{self.url}/{repo.repo_id}/discussions/{ref.rsplit('/', 1)[1]}"
        elif revision not in repo.refs:
            raise _HttpError(400, f"Invalid rev id: {revision} is not a branch")
        oid = self._commit(repo, ref, header["summary"], add, delete)
        self.commit_requests += 1
        return _json({"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{repo.repo_id}/commit/{oid}",
                      "pullRequestUrl": pr_url, "hookOutput": ""})

    def _info(self, repo: _Repo, commit: _Commit) -> dict[str, Any]:
        card = _front_matter(commit.files.get("README.md", b""))
        info = {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
                "disabled": False, "gated": False, "tags": card.get("tags", []),
                "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p, "size": len(d), "blobId": git_blob_oid(d)}
                             for p, d in sorted(commit.files.items())]}
        if repo.repo_type == "model":
            info.update(modelId=repo.repo_id, cardData=card, library_name=card.get("library_name"))
        return info

    def _tree(self, commit: _Commit, folder: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for path, data in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):].split("/")
            for depth in range(1, len(rel)):
                if depth > 1 and not recursive:
                    break
                sub = prefix + "/".join(rel[:depth])
                entries.setdefault(sub, {"type": "directory", "oid": "0" * 40, "size": 0, "path": sub})
            if recursive or len(rel) == 1:
                entries[path] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
        if prefix and not entries:
            raise _HttpError(404, f"{folder} does not exist", "EntryNotFound", commit=commit.oid)
        return list(entries.values())

    @staticmethod
    def _validate_yaml(payload: dict[str, Any]):
        meta = _front_matter(payload.get("content", "").encode())
        errors = []
        for entry in meta.get("model-index", []) or []:
            for result in entry.get("results", []):
                if "type" not in (result.get("task") or {}) or "metrics" not in result:
                    errors.append({"message": "model-index result needs task.type and metrics"})
                for metric in result.get("metrics", []):
                    if not {"type", "value"} <= set(metric):
                        errors.append({"message": "model-index metric needs type and value"})
        status = 400 if errors else 200
        return status, {"Content-Type": "application/json"}, json.dumps({"errors": errors, "warnings": []}).encode()


def _front_matter(readme: bytes) -> dict[str, Any]:
    text = readme.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError as err:
        raise _HttpError(400, f"invalid YAML: {err}") from err
    return meta if isinstance(meta, dict) else {}


def _json(obj: Any, status: int = 200):
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer carries Content-Length

    def _serve(self) -> None:
        body = b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        elif length := int(self.headers.get("Content-Length") or 0):
            body = self.rfile.read(length)
        split = urlsplit(self.path)
        status, headers, data = self.hub.handle(self.command, split.path, parse_qs(split.query), self.headers, body)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet: pytest would show every request otherwise


@contextlib.contextmanager
def patched_hub(endpoint: str | None, cache_dir: str, *, offline: bool = False) -> Iterator[None]:
    """Point huggingface_hub at *endpoint* (or keep it offline) with its cache in *cache_dir*, then restore.

    huggingface_hub reads its environment once at import, into ``huggingface_hub.constants``; the endpoint is also
    frozen into the module-level ``HfApi`` behind ``huggingface_hub.model_info`` and friends (which timm calls).
    """
    import huggingface_hub.constants as c
    from huggingface_hub import hf_api

    saved = {name: getattr(c, name) for name in (
        "ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_URL_HOSTS", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET",
        "HF_HUB_CACHE", "HF_HUB_DISABLE_TELEMETRY")}
    saved_api = hf_api.api.endpoint
    try:
        if endpoint is not None:
            c.ENDPOINT = endpoint
            c.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
            c.HF_URL_HOSTS = frozenset(saved["HF_URL_HOSTS"] | {urlsplit(endpoint).hostname})
            hf_api.api.endpoint = endpoint
        c.HF_HUB_OFFLINE = offline
        c.HF_HUB_DISABLE_XET = True
        c.HF_HUB_DISABLE_TELEMETRY = True
        c.HF_HUB_CACHE = cache_dir
        yield
    finally:
        for name, value in saved.items():
            setattr(c, name, value)
        hf_api.api.endpoint = saved_api
