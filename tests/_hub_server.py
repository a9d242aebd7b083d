"""A small in-memory Hugging Face Hub for tests: real HTTP on 127.0.0.1, the API subset huggingface_hub uses.

The real ``huggingface_hub`` client talks to it (no mocking of the client); ``patched_hub`` points the client's
constants at it for the duration of a ``with`` block. Endpoints (see ../shared/DESIGN.md "Environment facts"), with
the ``Hit.endpoint`` name each is logged under:

- ``create-repo`` ``POST /api/repos/create`` (409 when the repo exists), ``validate-yaml``, ``whoami``;
- ``preupload`` ``POST /api/{models|datasets|spaces}/{repo}/preupload/{rev}``: ``uploadMode: "lfs"`` where the
  repo's ``.gitattributes`` says ``filter=lfs`` (``*.safetensors``, ``*.png``, ...), for binary samples and for files
  over 10 MB, ``"regular"`` otherwise; with the oid of the file already there (sha256 of an LFS file, git blob sha1
  of a regular one), so the client skips unchanged files as on the real Hub;
- ``lfs-batch`` ``POST /[{type}s/]{repo}.git/info/lfs/objects/batch`` (git-lfs batch API; operation upload, transfer
  basic): per object ``actions.upload`` (a signed URL on the storage server) and ``actions.verify`` (back on the
  Hub), or no ``actions`` when the object is already stored;
- ``lfs-upload`` ``PUT`` to the signed URL (sha256 and size checked against the oid); ``lfs-verify`` ``POST
  …/info/lfs/objects/verify`` (the object must have arrived; only then may a commit reference it);
- ``commit`` ``POST /api/{type}s/{repo}/commit/{rev}`` (ndjson: header, ``file`` with base64 content, ``lfsFile``
  with path/algo/oid/size, deletedFile, deletedFolder); refuses an lfsFile whose object was never uploaded and
  verified, and a base64 ``file`` that belongs in LFS (as the Hub refuses binary files outside LFS);
- ``branch`` ``POST /api/{type}s/{repo}/branch/{branch}``;
- ``info`` ``GET /api/{type}s/{repo}[/revision/{rev}]`` (``sha``, ``siblings``), ``tree``
  ``GET …/tree/{rev}[/{path}]`` (LFS files carry ``lfs``);
- ``resolve`` ``GET``/``HEAD /[{type}s/]{repo}/resolve/{rev}/{path}``: a regular file answers 200 with
  ``X-Repo-Commit`` and ``ETag``; an LFS file answers 302 to a signed URL on the storage server, carrying
  ``X-Repo-Commit``, ``ETag`` (the git oid of the LFS pointer), ``X-Linked-Etag`` (the content's sha256) and
  ``X-Linked-Size``, as the real Hub does; ``lfs-download`` is the GET on that URL.

The storage server is a second port of the same FakeHub, i.e. another origin, as the real Hub's CDN/S3 is: the
client stops at a redirect that leaves the Hub's origin, reads the file's metadata off the 302 itself and sends the
storage no Authorization header. (A same-origin redirect would be followed on HEAD, and the client would then look
for X-Repo-Commit on the storage's answer.) Storage answers look like S3's: XML errors, an md5 ETag, no Hub headers.

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) as the Hub's do, so the
client raises its own typed errors. ``FakeHub.fail_next`` makes the next requests to an endpoint fail without
changing anything; ``FakeHub.log`` records every request with the endpoint it hit and the status it got.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

USER = "masc-tester"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# The first lines of the .gitattributes the Hub writes into every new repo (the real one lists ~35 patterns).
GITATTRIBUTES = b"".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n".encode() for pattern in (
    "*.safetensors", "*.png", "*.bin", "*.pt", "*.pth", "*.pkl", "*.npy", "*.parquet"))
_LFS_ABOVE = 10 * 1024 * 1024  # the Hub routes any file over 10 MB to LFS, whatever .gitattributes says
_STORAGE = "lfs-storage"  # first path segment of every storage URL


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of *data* (what the Hub calls a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_hex(data: bytes) -> str:
    """The sha256 of *data*: an LFS object's oid."""
    return hashlib.sha256(data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file git stores in place of *data*."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256_hex(data)}\nsize {len(data)}\n".encode()


@dataclass
class Hit:
    """One request as the server saw it."""

    origin: str  # "hub" or "storage"
    method: str
    path: str
    endpoint: str = "unknown"  # the names in the module docstring
    status: int = 0
    authorization: str | None = None


@dataclass
class _Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, bytes]
    lfs: frozenset[str] = frozenset()  # paths stored as LFS objects (served by redirect)


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, _Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    lfs_announced: dict[str, int] = field(default_factory=dict)  # oid -> size a batch request promised
    lfs_uploaded: dict[str, bytes] = field(default_factory=dict)  # PUT to storage, not verified yet
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # verified: what lfsFile entries may reference

    def resolve(self, revision: str) -> _Commit | None:
        oid = self.refs.get(revision, revision)
        return self.commits.get(oid)

    @property
    def url_path(self) -> str:
        return ("" if self.repo_type == "model" else f"{self.repo_type}s/") + self.repo_id


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class FakeHub:
    """In-memory repos with commit history and LFS storage, served over HTTP by ``start()``.

    Attributes:
        url: the Hub endpoint, e.g. ``http://127.0.0.1:40123`` (set by ``start``).
        storage_url: the storage server (another port) that LFS uploads and downloads go to.
        token: when set, writes need ``Authorization: Bearer <token>`` and private repos need it to be read.
        lfs_max_size: when set, the batch endpoint answers a per-object error for larger objects (as for a quota).
        commit_requests: commit requests that succeeded (one push should add exactly one).
        committed: per accepted commit, path -> the ndjson key it came as (``file``, ``lfsFile``, ``deletedFile``).
        log: every request (``Hit``), in order; ``hits(endpoint)`` filters it.
        requests: ``(method, path)`` of every request, in order (storage paths start with ``/lfs-storage/``).
        auth_headers: every ``Authorization`` header received, on either server.
    """

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.url = self.storage_url = ""
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.lfs_max_size: int | None = None
        self.commit_requests = 0
        self.committed: list[dict[str, str]] = []
        self.log: list[Hit] = []
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str] = []
        self._failures: dict[str, list[tuple[int, str]]] = {}
        self._secret = hashlib.sha256(str(id(self)).encode()).digest()  # signs storage URLs
        self._lock = threading.RLock()
        self._counter = 0
        self._servers: list[ThreadingHTTPServer] = []

    # ----- state helpers usable from tests --------------------------------------------------------------------------
    def create(self, repo_id: str, *, repo_type: str = "model", private: bool = False) -> _Repo:
        """Create a repo with the Hub's initial commit (a ``.gitattributes``)."""
        with self._lock:
            repo = _Repo(repo_type, repo_id, private)
            self.repos[(repo_type, repo_id)] = repo
            self._commit(repo, "main", "initial commit", {".gitattributes": GITATTRIBUTES}, [])
            return repo

    def put_files(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model") -> str:
        """Commit *files* straight into the main branch (creating the repo), LFS where .gitattributes says so."""
        with self._lock:
            repo = self.repos.get((repo_type, repo_id)) or self.create(repo_id, repo_type=repo_type)
            head = repo.resolve("main")
            assert head is not None
            lfs = {path for path, data in files.items() if _wants_lfs(head, path, data[:512], len(data))}
            repo.lfs_objects.update({sha256_hex(files[path]): files[path] for path in lfs})
            return self._commit(repo, "main", "seed", files, [], lfs)

    def files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict[str, bytes]:
        """The files at *revision* (a copy)."""
        return dict(self._commit_at(repo_id, revision, repo_type).files)

    def lfs_files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> set[str]:
        """The paths stored as LFS objects at *revision*."""
        return set(self._commit_at(repo_id, revision, repo_type).lfs)

    def history(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[str]:
        """Commit titles from the newest back to the first."""
        with self._lock:
            repo = self.repos[(repo_type, repo_id)]
            commit, out = repo.resolve(revision), []
            while commit is not None:
                out.append(commit.title)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return out

    def hits(self, endpoint: str) -> list[Hit]:
        """The logged requests to *endpoint* (a name from the module docstring)."""
        with self._lock:
            return [hit for hit in self.log if hit.endpoint == endpoint]

    def fail_next(self, endpoint: str, status: int, message: str | None = None, *, times: int = 1) -> None:
        """Make the next *times* requests to *endpoint* answer *status* (with *message*) and change nothing."""
        with self._lock:
            self._failures.setdefault(endpoint, []).extend(
                [(status, message or f"simulated failure of {endpoint} by the test Hub")] * times)

    def _commit_at(self, repo_id: str, revision: str, repo_type: str) -> _Commit:
        with self._lock:
            commit = self.repos[(repo_type, repo_id)].resolve(revision)
            assert commit is not None, f"no revision {revision}"
            return commit

    def _commit(self, repo: _Repo, ref: str, title: str, add: dict[str, bytes], delete: list[str],
                lfs: set[str] | frozenset[str] = frozenset()) -> str:
        parent = repo.refs.get(ref)
        files = dict(repo.commits[parent].files) if parent else {}
        kept_lfs = set(repo.commits[parent].lfs) if parent else set()
        for path in delete:
            for existing in [p for p in files if p == path or p.startswith(path.rstrip("/") + "/")]:
                del files[existing]
        files.update(add)
        self._counter += 1
        digest = hashlib.sha1(f"{repo.repo_id}:{self._counter}:{parent}:{title}".encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_oid(files[path]).encode())
        oid = digest.hexdigest()
        lfs_paths = {p for p in kept_lfs if p in files and p not in add} | set(lfs)
        repo.commits[oid] = _Commit(oid, parent, title, files, frozenset(lfs_paths))
        repo.refs[ref] = oid
        return oid

    # ----- server lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        for origin in ("hub", "storage"):
            handler = type(f"{origin.title()}Handler", (_Handler,), {"hub": self, "origin": origin})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            # A short poll: shutdown() waits for the loop to look, 0.5 s by default, twice per test otherwise.
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, name=f"fake-{origin}",
                             daemon=True).start()
            self._servers.append(server)
        self.url, self.storage_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- request handling -----------------------------------------------------------------------------------------
    def handle(self, origin: str, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes):
        """Route one request; returns ``(status, headers, body bytes)``."""
        with self._lock:
            auth = headers.get("Authorization")
            hit = Hit(origin, method, path, authorization=auth)
            self.log.append(hit)
            self.requests.append((method, path))
            if auth:
                self.auth_headers.append(auth)
            authed = self.token is None or auth == f"Bearer {self.token}"
            parts = [unquote(p) for p in path.strip("/").split("/")]
            try:
                if origin == "storage":
                    status, out_headers, data = self._storage(hit, method, parts, query, headers, body)
                else:
                    status, out_headers, data = self._route(hit, method, parts, query, body, authed)
            except _HttpError as err:
                status, out_headers, data = _error_answer(origin, err)
            hit.status = status
            return status, out_headers, data

    def _enter(self, hit: Hit, endpoint: str) -> None:
        """Name the endpoint *hit* reached; raise the failure queued for it, if any."""
        hit.endpoint = endpoint
        if self._failures.get(endpoint):
            status, message = self._failures[endpoint].pop(0)
            raise _HttpError(status, message)

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

    def _route(self, hit: Hit, method: str, parts: list[str], query: dict[str, list[str]], body: bytes,
               authed: bool):
        if parts[:2] == ["api", "whoami-v2"]:
            self._enter(hit, "whoami")
            if self.token is not None and not authed:
                raise _HttpError(401, "Invalid credentials in Authorization header")
            return _json({"type": "user", "name": USER, "orgs": [], "auth": {"type": "access_token"}})
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            self._enter(hit, "validate-yaml")
            return self._validate_yaml(json.loads(body))
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            self._enter(hit, "create-repo")
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
            return self._api_repo(hit, method, repo_type, repo_id, rest, query, body, authed)
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = _TYPES[parts[0]], parts[1:]
        # /{repo}.git/info/lfs/objects/{batch|verify}
        if (len(parts) == 6 and parts[1].endswith(".git") and parts[2:5] == ["info", "lfs", "objects"]
                and parts[5] in ("batch", "verify") and method == "POST"):
            self._enter(hit, f"lfs-{parts[5]}")
            self._need_write(authed)
            repo = self._repo(repo_type, f"{parts[0]}/{parts[1][:-4]}", authed)
            return self._lfs_batch(repo, json.loads(body)) if parts[5] == "batch" else self._lfs_verify(
                repo, json.loads(body))
        # /{repo}/resolve/{rev}/{path}
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            self._enter(hit, "resolve")
            return self._resolve(self._repo(repo_type, f"{parts[0]}/{parts[1]}", authed), parts[3],
                                 "/".join(parts[4:]))
        raise _HttpError(404, f"no route for {method} /{'/'.join(parts)}")

    def _api_repo(self, hit, method, repo_type, repo_id, rest, query, body, authed):
        if method == "GET" and (not rest or rest[0] == "revision"):
            self._enter(hit, "info")
            repo = self._repo(repo_type, repo_id, authed)
            commit = self._rev(repo, "/".join(rest[1:]) if rest else "main")
            return _json(self._info(repo, commit))
        if method == "GET" and rest and rest[0] == "tree":
            self._enter(hit, "tree")
            commit = self._rev(self._repo(repo_type, repo_id, authed), rest[1])
            return _json(self._tree(commit, "/".join(rest[2:]), query.get("recursive", ["false"])[0] == "true"))
        if method == "POST" and rest and rest[0] == "preupload":
            self._enter(hit, "preupload")
            commit = self._rev(self._repo(repo_type, repo_id, authed), rest[1])
            return _json({"files": [self._preupload(commit, f) for f in json.loads(body)["files"]],
                          "commitOid": commit.oid})
        if method == "POST" and rest and rest[0] == "branch":
            self._enter(hit, "branch")
            self._need_write(authed)
            repo = self._repo(repo_type, repo_id, authed)
            branch = "/".join(rest[1:])
            if branch in repo.refs:
                raise _HttpError(409, f"Reference already exists: {branch}")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.refs[branch] = self._rev(repo, start).oid
            return _json({})
        if method == "POST" and rest and rest[0] == "commit":
            self._enter(hit, "commit")
            self._need_write(authed)
            return self._commit_request(self._repo(repo_type, repo_id, authed), "/".join(rest[1:]), query, body)
        raise _HttpError(404, f"no route for {method} {repo_id}/{'/'.join(rest)}")

    # ----- uploads --------------------------------------------------------------------------------------------------
    @staticmethod
    def _preupload(commit: _Commit, entry: dict[str, Any]) -> dict[str, Any]:
        path, size = entry["path"], entry["size"]
        lfs = _wants_lfs(commit, path, base64.b64decode(entry.get("sample", "")), size)
        existing = commit.files.get(path)
        oid = None
        if existing is not None:  # what the client compares with its own hash of the file to skip unchanged ones
            oid = sha256_hex(existing) if path in commit.lfs else git_blob_oid(existing)
        return {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}

    def _lfs_batch(self, repo: _Repo, payload: dict[str, Any]):
        if payload.get("operation") != "upload":
            raise _HttpError(400, f"this test Hub takes LFS uploads only, got operation {payload.get('operation')!r}")
        if "basic" not in payload.get("transfers", ["basic"]) or payload.get("hash_algo", "sha256") != "sha256":
            raise _HttpError(400, f"expected transfer basic and hash_algo sha256, got {payload}")
        ref = (payload.get("ref") or {}).get("name")
        if ref is not None:
            self._rev(repo, ref.removeprefix("refs/heads/"))
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int)
                    and size >= 0):
                raise _HttpError(422, f"expected objects with a sha256 oid and a size, got {obj}")
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if self.lfs_max_size is not None and size > self.lfs_max_size:
                answer["error"] = {"code": 422, "message": f"object of {size} bytes exceeds the limit of "
                                                           f"{self.lfs_max_size} bytes"}
            elif oid not in repo.lfs_objects:  # an object already stored gets no actions: nothing to send
                repo.lfs_announced[oid] = size
                answer["actions"] = {
                    "upload": {"href": self._signed_url("PUT", repo, oid), "expires_in": 900},
                    "verify": {"href": f"{self.url}/{repo.url_path}.git/info/lfs/objects/verify"}}
            objects.append(answer)
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, json.dumps(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()

    @staticmethod
    def _lfs_verify(repo: _Repo, payload: dict[str, Any]):
        oid, size = payload.get("oid"), payload.get("size")
        data = repo.lfs_uploaded.get(oid)  # type: ignore[arg-type]
        if data is None or len(data) != size:
            raise _HttpError(404, f"LFS object {oid} of {size} bytes was not uploaded")
        repo.lfs_objects[oid] = repo.lfs_uploaded.pop(oid)  # type: ignore[arg-type]
        return _json({"success": True})

    def _commit_request(self, repo: _Repo, revision: str, query, body: bytes):
        base = self._rev(repo, revision)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        if header.get("parentCommit") and header["parentCommit"] != base.oid:
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
        add, delete, lfs, entries = {}, [], set(), {}
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "header":
                continue
            path = value.get("path", "")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise _HttpError(400, f"unsupported encoding {value.get('encoding')}")
                data = base64.b64decode(value["content"])
                if data and _wants_lfs(base, path, data[:512], len(data)):
                    raise _HttpError(400, f"{path!r} must be stored with Git LFS (.gitattributes, binary or over "
                                          "10 MB), got it as a base64 file entry")
                add[path] = data
            elif key == "lfsFile":
                data = repo.lfs_objects.get(value.get("oid"))
                if value.get("algo") != "sha256" or data is None or value.get("size", len(data)) != len(data):
                    raise _HttpError(422, f"lfsFile {path!r} references LFS object {value.get('oid')} "
                                          f"({value.get('algo')}, {value.get('size')} bytes), which was never "
                                          "uploaded and verified")
                add[path] = data
                lfs.add(path)
            elif key in ("deletedFile", "deletedFolder"):
                delete.append(path)
            else:
                raise _HttpError(400, f"this test Hub does not take {key} entries")
            entries[path] = key
        ref = revision
        pr_url = None
        if query.get("create_pr") == ["1"]:
            ref = f"refs/pr/{sum(r.startswith('refs/pr/') for r in repo.refs) + 1}"
            repo.refs[ref] = base.oid
            pr_url = f"{self.url}/{repo.repo_id}/discussions/{ref.rsplit('/', 1)[1]}"
        elif revision not in repo.refs:
            raise _HttpError(400, f"Invalid rev id: {revision} is not a branch")
        oid = self._commit(repo, ref, header["summary"], add, delete, lfs)
        self.commit_requests += 1
        self.committed.append(entries)
        return _json({"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{repo.repo_id}/commit/{oid}",
                      "pullRequestUrl": pr_url, "hookOutput": ""})

    # ----- downloads and storage ------------------------------------------------------------------------------------
    def _resolve(self, repo: _Repo, revision: str, filename: str):
        commit = self._rev(repo, revision)
        if filename not in commit.files:
            raise _HttpError(404, "Entry not found", "EntryNotFound", commit=commit.oid)
        data = commit.files[filename]
        if filename not in commit.lfs:
            return 200, {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(data)}"',
                         "Content-Type": "application/octet-stream"}, data
        location = self._signed_url("GET", repo, sha256_hex(data))
        return 302, {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(lfs_pointer(data))}"',
                     "X-Linked-Etag": f'"{sha256_hex(data)}"', "X-Linked-Size": str(len(data)),
                     "Location": location, "Content-Type": "text/plain; charset=utf-8"
                     }, f"Found. Redirecting to {location}".encode()

    def _signed_url(self, method: str, repo: _Repo, oid: str) -> str:
        path = f"/{_STORAGE}/{repo.repo_type}/{repo.repo_id}/{oid}"
        return f"{self.storage_url}{quote(path)}?X-Amz-Expires=900&X-Amz-Signature={self._sign(method, path)}"

    def _sign(self, method: str, path: str) -> str:
        return hmac.new(self._secret, f"{method} {path}".encode(), hashlib.sha256).hexdigest()

    def _storage(self, hit: Hit, method: str, parts: list[str], query: dict[str, list[str]], headers: Any,
                 body: bytes):
        self._enter(hit, "lfs-upload" if method == "PUT" else "lfs-download")
        if len(parts) != 5 or parts[0] != _STORAGE or method not in ("PUT", "GET", "HEAD"):
            raise _HttpError(404, "NoSuchKey: The specified key does not exist.")
        signed_for = "GET" if method == "HEAD" else method
        signature = self._sign(signed_for, "/" + "/".join(parts))
        if not hmac.compare_digest(query.get("X-Amz-Signature", [""])[0], signature):
            raise _HttpError(403, "SignatureDoesNotMatch: The request signature we calculated does not match.")
        repo, oid = self.repos.get((parts[1], f"{parts[2]}/{parts[3]}")), parts[4]
        if repo is None:
            raise _HttpError(404, "NoSuchBucket: The specified bucket does not exist.")
        if method == "PUT":
            if sha256_hex(body) != oid or len(body) != repo.lfs_announced.get(oid):
                raise _HttpError(400, f"BadDigest: got {len(body)} bytes with sha256 {sha256_hex(body)} for "
                                      f"object {oid} announced as {repo.lfs_announced.get(oid)} bytes")
            repo.lfs_uploaded[oid] = body
            return 200, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, b""
        data = repo.lfs_objects.get(oid)
        if data is None:
            raise _HttpError(404, "NoSuchKey: The specified key does not exist.")
        answer = {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "Content-Type": "application/octet-stream",
                  "Accept-Ranges": "bytes"}
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range") or "")
        if wanted and int(wanted[1]) < len(data):
            start, end = int(wanted[1]), min(int(wanted[2] or len(data) - 1), len(data) - 1)
            return 206, {**answer, "Content-Range": f"bytes {start}-{end}/{len(data)}"}, data[start:end + 1]
        return 200, answer, data

    # ----- listings -------------------------------------------------------------------------------------------------
    def _info(self, repo: _Repo, commit: _Commit) -> dict[str, Any]:
        card = _front_matter(commit.files.get("README.md", b""))
        siblings = []
        for path, data in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path, "size": len(data), "blobId": git_blob_oid(data)}
            if path in commit.lfs:
                pointer = lfs_pointer(data)
                sibling.update(blobId=git_blob_oid(pointer),
                               lfs={"sha256": sha256_hex(data), "size": len(data), "pointerSize": len(pointer)})
            siblings.append(sibling)
        info = {"_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
                "disabled": False, "gated": False, "tags": card.get("tags", []),
                "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
                "siblings": siblings}
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
                entry: dict[str, Any] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
                if path in commit.lfs:
                    pointer = lfs_pointer(data)
                    entry.update(oid=git_blob_oid(pointer),
                                 lfs={"oid": sha256_hex(data), "size": len(data), "pointerSize": len(pointer)})
                entries[path] = entry
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


def _wants_lfs(commit: _Commit, path: str, sample: bytes, size: int) -> bool:
    """Whether the Hub stores *path* with LFS: a ``filter=lfs`` pattern of the commit's .gitattributes, a binary
    sample (a NUL byte in the first 512 bytes) or a size over 10 MB."""
    patterns = [line.split()[0] for line in commit.files.get(".gitattributes", b"").decode().splitlines()
                if "filter=lfs" in line.split()[1:]]
    name = path.rsplit("/", 1)[-1]
    return (size > _LFS_ABOVE or b"\0" in sample
            or any(fnmatch.fnmatchcase(path, p) or ("/" not in p and fnmatch.fnmatchcase(name, p)) for p in patterns))


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


def _error_answer(origin: str, err: _HttpError):
    if origin == "storage":  # S3 speaks XML and knows nothing of the Hub's headers
        code, _, message = err.message.partition(": ")
        xml = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return err.status, {"Content-Type": "application/xml"}, xml.encode()
    headers = {"X-Error-Message": err.message, "Content-Type": "application/json"}
    if err.code:
        headers["X-Error-Code"] = err.code
    if err.commit:
        headers["X-Repo-Commit"] = err.commit
    return err.status, headers, json.dumps({"error": err.message}).encode()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    origin: str
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
        status, headers, data = self.hub.handle(self.origin, self.command, split.path, parse_qs(split.query),
                                                self.headers, body)
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
    Xet is switched off (as conftest.py's HF_HUB_DISABLE_XET=1 does at import), so uploads take the LFS path.
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
