"""In-process fake of the Hugging Face Hub HTTP API, for tests driving the *real* ``huggingface_hub`` client.

Why this exists
---------------
``sae_hub`` downloads and uploads SAE weights through ``huggingface_hub``. Mocking the client's functions
would test our mocks, not our integration with the client (cache layout, etags, retries, resumes, typed
errors). This module instead serves the HTTP endpoints the client really calls, so tests can point the client
at ``http://127.0.0.1:<port>`` without any network. It is stdlib only (``http.server`` + threads).

Endpoints served, and why: exactly those the client calls while our tests run (``sae_hub.hub``'s downloads,
uploads and config reads, the ``hf://`` registry fetch, the tutorials, and this module's own self-tests). The
list was taken by logging (method, route) in the router over every test that uses a Hub (tests/test_hub*.py,
test_releases, test_registry*, test_loader_registry, test_readme, test_tutorials, test_cli_train, test_trainer):

* ``HEAD``/``GET /[datasets/]{repo}/resolve/{rev}/{path}`` (with ``Range``): ``hf_hub_download``,
  ``snapshot_download``, and ``HfFileSystem`` range reads (``get_config`` reads only safetensors headers);
* ``GET /api/{type}s/{repo}`` and ``.../revision/{rev}`` (``?blobs=true``: file metadata): ``model_info``,
  ``repo_info``, ``snapshot_download``;
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``): ``list_repo_files``, ``list_repo_tree``;
* ``POST /api/{type}s/{repo}/paths-info/{rev}``: ``get_paths_info`` (hashes of cached files whose ETag is not
  one);
* ``POST /api/repos/create``: ``create_repo`` (409 when it exists, which ``exist_ok=True`` swallows);
* ``POST /api/{type}s/{repo}/preupload/{rev}`` and ``.../commit/{rev}`` (NDJSON ``file``, ``deletedFile``,
  ``deletedFolder`` operations): ``upload_file``, ``upload_folder``, ``create_commit``;
* ``POST /api/validate-yaml``: the client validates a ``README.md`` it uploads.

``{type}`` is ``model`` or ``dataset`` (``hf://datasets/...`` registry files). Anything else is a 404
(``Unknown API route``), and what the client could ask of a served route that no test needs is refused loudly
(400: ``create_pr``, ``lfsFile`` operations, ``expand=true`` listings, repo types other than models and
datasets), so a test that starts to rely on it fails with a message saying the fake lacks it instead of
passing against a silently wrong answer. Repo setup that the client never does through HTTP in our tests
(branches, tags) is done with the server-side helpers (:meth:`HubServer.create_branch`,
:meth:`HubServer.create_tag`).

What was checked against the installed client (huggingface_hub 2.4.0)
----------------------------------------------------------------------
* HTTP stack: the client uses ``httpx2`` (a fork of httpx), *not* ``requests``: one shared ``httpx2.Client``
  (``huggingface_hub.utils.get_session()``), keep-alive, ``follow_redirects=True``. So the server speaks
  HTTP/1.1 with exact ``Content-Length`` on every response, and never redirects (the client only follows
  same-origin redirects for HEAD anyway).
* Endpoint resolution is frozen at import time. ``huggingface_hub.constants`` reads ``HF_ENDPOINT``,
  ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET``, ``HF_HUB_DISABLE_TELEMETRY``,
  ``HF_TOKEN_PATH`` ... when first imported, and derives ``HUGGINGFACE_CO_URL_TEMPLATE`` (used by
  ``hf_hub_url``/``hf_hub_download``) from ``ENDPOINT`` at that moment. Other import-time copies:
  ``huggingface_hub.hf_api.api`` (the ``HfApi()`` instance behind top-level functions such as
  ``huggingface_hub.list_repo_files``) stores ``endpoint`` at construction, ``utils._cache_manager`` did
  ``from ..constants import HF_HUB_CACHE``, and ``HfFileSystem`` instances are cached by fsspec. ``HfApi()``
  objects created *later* read ``constants.ENDPOINT`` in their ``__init__``.
  Two ways to point the client here, both supported:

  1. Subprocess / fresh interpreter: export ``HF_ENDPOINT=<server.url>`` (and ``HF_HOME``,
     ``HF_HUB_DISABLE_XET=1``, ``HF_HUB_DISABLE_TELEMETRY=1``) *before* ``import huggingface_hub``.
  2. Same process (pytest): use :func:`hub_client_env`, which patches the already-imported constants and the
     copies listed above, and sets the env vars too (for subprocesses the test may spawn). The ``hub``
     fixture in ``tests/conftest.py`` does this. Setting only ``os.environ`` inside a pytest process is NOT
     enough once anything imported ``huggingface_hub.constants``.
* Telemetry side-channel: unless ``constants.HF_HUB_DISABLE_TELEMETRY`` is true, the first header build in the
  process fetches ``{ENDPOINT}/api/agent-harnesses`` (agent detection for the user-agent). That would hit the
  real Hub (or pollute request counts here), so :func:`hub_client_env` disables telemetry (the route is not
  served: a request to it is a 404 in the log, visible to a test that counts requests).
* Xet: ``hf_xet`` is installed, so the client would use xet for downloads if a HEAD response carried
  ``X-Xet-Hash`` (+ a refresh route), and for uploads of files the preupload endpoint marks ``"lfs"``. This
  server sends no xet headers and answers ``"regular"`` for every file, so downloads are plain HTTP GETs and
  commits carry base64 content in the NDJSON payload. Note ``upload_folder`` takes a different code path
  (``_upload_pipeline.pipelined_upload``, multi-commit, commit POST retried with backoff) whenever
  ``is_xet_available()`` is true, i.e. unless ``HF_HUB_DISABLE_XET`` is set; both paths work against this
  server. :func:`hub_client_env` disables xet by default (``disable_xet=False`` keeps it).
* Headers the client needs on ``HEAD/GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit`` (otherwise
  ``FileMetadataError``, surfaced as ``LocalEntryNotFoundError``), ``ETag`` (quoted; the client prefers
  ``X-Linked-Etag`` when present; the normalised etag names the blob in the cache), ``Content-Length`` (or
  ``X-Linked-Size``) for the expected size. Resumed downloads send ``Range: bytes=N-`` and accept ``206``.
* Error mapping (``utils._http.hf_raise_for_status``) is driven by the ``X-Error-Code`` header:
  ``RepoNotFound`` -> ``RepositoryNotFoundError`` (NB: not "RepositoryNotFound"), ``RevisionNotFound`` ->
  ``RevisionNotFoundError``, ``EntryNotFound`` -> ``RemoteEntryNotFoundError`` (subclass of
  ``EntryNotFoundError``), ``GatedRepo`` -> ``GatedRepoError``. A 404 EntryNotFound carrying
  ``X-Repo-Commit`` makes the client cache the non-existence under ``.no_exist/<commit>/``.

Fidelity notes (deliberate simplifications)
-------------------------------------------
* Repos start with one empty commit (the real Hub adds a ``.gitattributes``; we do not, so listings contain
  exactly what tests put in).
* "LFS" is a storage property decided by the server (size >= ``lfs_threshold`` or name matching
  ``lfs_patterns``): such files get the LFS-style ETag (``X-Linked-Etag`` = sha256) and ``lfs`` metadata in
  tree/info listings. Uploads are still "regular" (base64 in the commit payload).
* No auth: tokens are accepted and logged (see ``RequestRecord.headers``, which also holds each request's
  ``user-agent``), never checked.
* Pagination is not implemented (every listing is one page).

Fault injection
---------------
Faults are matched by a substring of the raw request target (path + query) and optionally the HTTP method,
are consumed one per matching request, and are thread-safe: ``fail`` (status code, before routing),
``slow`` (delay before responding, or mid-body with ``after_bytes``), ``reset_mid_body`` (send headers with
the full ``Content-Length``, part of the body, then drop the connection; only applied to 2xx responses with
a body, so a matching HEAD does not consume it), ``corrupt`` (same length, same ETag, different bytes: a broken
mirror or a bit-flipping proxy), ``wrong_etag`` (right bytes, an ETag that is not their hash), ``down`` (every
request answers a 5xx until ``clear_faults``). A dead endpoint is :meth:`HubServer.stop` (the port then refuses
connections). ``tests/test_hub_server.py`` documents what the client does under each.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import http.server
import json
import os
import re
import socket
import struct
import threading
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple
from unittest import mock
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "DEFAULT_LFS_PATTERNS",
    "HubServer",
    "RequestRecord",
    "git_blob_sha1",
    "hub_client_env",
]

#: File name patterns stored as "LFS" by default (subset of the Hub's default ``.gitattributes``).
DEFAULT_LFS_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.npy",
    "*.npz",
    "*.pkl",
    "*.onnx",
    "*.gguf",
    "*.msgpack",
    "*.zip",
    "*.tar.gz",
)

_REPO_TYPES: tuple[str, ...] = ("model", "dataset")  # the only types our tests (and sae_hub) use
# Path segments that follow a repo id in /api/{type}s/{repo_id}/... (mirrors the client's own URL parser).
_API_SUBPATHS = frozenset({"revision", "tree", "paths-info", "preupload", "commit"})
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX_PREFIX = re.compile(r"[0-9a-f]{7,40}")
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


def git_blob_sha1(content: bytes) -> str:
    """Git object id of ``content`` (``git hash-object``): the Hub's oid/ETag for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _iso(dt: datetime) -> str:
    """Hub-style timestamp, e.g. ``2024-01-02T03:04:05.678Z`` (what ``parse_datetime`` expects)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _url_prefix(repo_type: str) -> str:
    """Web URL prefix of a repo type: models have none, others are ``datasets/`` etc."""
    return "" if repo_type == "model" else f"{repo_type}s/"


class RequestRecord(NamedTuple):
    """One request seen by the server. ``headers`` keys are lower-case. ``status`` is 0 while in flight."""

    method: str
    path: str
    headers: dict[str, str]
    status: int


@dataclass
class _LogEntry:
    """Mutable log slot: appended when a request arrives, status filled in when the response starts.

    Appending on arrival (not on completion) keeps counts exact even for requests the client abandoned
    (timeouts) and guarantees the record exists before the client can observe the response.
    """

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0

    def snapshot(self) -> RequestRecord:
        return RequestRecord(self.method, self.path, dict(self.headers), self.status)


@dataclass
class _Fault:
    kind: Literal["fail", "slow", "reset", "corrupt", "etag"]
    path_contains: str
    method: str | None
    remaining: int
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    after_bytes: int | None = None
    hard: bool = False
    offset: int | None = None  # corrupt: first byte flipped (None: the middle of the body)
    n_bytes: int = 64  # corrupt: how many bytes are flipped
    etag: str | None = None  # wrong_etag: the value sent (None: a made-up hash of the right shape)

    def matches(self, method: str, path: str) -> bool:
        return self.path_contains in path and (self.method is None or self.method == method)


@dataclass(frozen=True)
class _Blob:
    """File content plus the identifiers the Hub exposes for it."""

    content: bytes
    is_lfs: bool
    sha256: str
    git_oid: str  # git oid of the content, or of the LFS pointer file for LFS blobs
    pointer_size: int

    @classmethod
    def build(cls, content: bytes, is_lfs: bool) -> _Blob:
        sha256 = hashlib.sha256(content).hexdigest()
        if is_lfs:
            pointer = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n"
            )
            pointer_bytes = pointer.encode()
            return cls(content, True, sha256, git_blob_sha1(pointer_bytes), len(pointer_bytes))
        return cls(content, False, sha256, git_blob_sha1(content), 0)

    @property
    def etag(self) -> str:
        """Value the client uses as cache blob name: sha256 for LFS (via X-Linked-Etag), git oid otherwise."""
        return self.sha256 if self.is_lfs else self.git_oid


@dataclass(frozen=True)
class _Commit:
    oid: str
    parent: str | None
    files: Mapping[str, _Blob]
    title: str
    message: str
    date: datetime


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class _HubError(Exception):
    """An error response in the Hub's format: ``X-Error-Code`` / ``X-Error-Message`` headers + JSON body."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200) -> _Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json; charset=utf-8"})

    @classmethod
    def error(cls, err: _HubError) -> _Response:
        resp = cls.json({"error": err.message}, status=err.status)
        resp.headers["X-Error-Message"] = err.message
        if err.code is not None:
            resp.headers["X-Error-Code"] = err.code
        resp.headers.update(err.headers)
        return resp


class _Handler(http.server.BaseHTTPRequestHandler):
    """Thin adapter: every method is dispatched to :meth:`HubServer._handle`."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub; httpx2 pools connections
    timeout = 30  # idle keep-alive connections give their thread back eventually
    # Headers and body are separate small writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms/request.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self.server.hub._handle(self)

    do_HEAD = do_GET
    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET
    do_PATCH = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log (the server keeps its own request log)."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of parallel connects (snapshot_download's thread
    # pool, concurrency tests) overflows it, the kernel drops SYNs and the client waits ~1 s to retransmit.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], hub: HubServer) -> None:
        self.hub = hub
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        with self.connections_lock:
            self.connections.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)


class HubServer:
    """A fake Hugging Face Hub on ``127.0.0.1:<ephemeral port>``, served from a background thread.

    Usage::

        with HubServer() as hub, hub_client_env(hub.url, tmp_path / "hf_home"):
            hub.add_file("org/sae", "cfg.json", b"{}")
            path = hf_hub_download("org/sae", "cfg.json")

    State is in memory: repos keyed by ``(repo_type, repo_id)``, each with immutable commits (full file
    snapshots), branches and tags. Every commit creates a new 40-hex sha; the branch moves, old shas stay
    resolvable (also by unique prefix of >= 7 chars).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        user: str = "test-user",
        lfs_threshold: int = 10 * 1024 * 1024,
        lfs_patterns: tuple[str, ...] = DEFAULT_LFS_PATTERNS,
        chunk_size: int = 64 * 1024,
    ) -> None:
        self.user = user
        self.lfs_threshold = lfs_threshold
        self.lfs_patterns = lfs_patterns
        self.chunk_size = chunk_size
        #: Tracebacks of unexpected exceptions raised while handling requests (server bugs -> HTTP 500).
        self.errors: list[str] = []
        self._host = host
        self._port = port
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._commit_counter = 0
        self._state_lock = threading.RLock()
        self._log: list[_LogEntry] = []
        self._log_lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._fault_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HubServer:
        """Bind (ephemeral port by default) and serve in a daemon thread. Sets :attr:`url`."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server((self._host, self._port), self)
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="HubServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open (keep-alive) connections so the client cannot reuse them."""
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()  # wakes up handlers sleeping in `slow` faults
        httpd.shutdown()
        httpd.server_close()
        with httpd.connections_lock:
            connections = list(httpd.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ seeding / inspection

    def create_repo(
        self, repo_id: str, *, repo_type: str = "model", private: bool = False, exist_ok: bool = True
    ) -> str:
        """Create a repo with one empty initial commit on ``main``; returns the head sha of ``main``."""
        with self._state_lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                if not exist_ok:
                    raise ValueError(f"{repo_type} repo {repo_id!r} already exists")
                return self._repos[key].branches["main"]
            if repo_type not in _REPO_TYPES:
                raise ValueError(f"unknown repo type {repo_type!r}")
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            initial = self._new_commit(None, {}, "initial commit", "")
            repo.commits[initial.oid] = initial
            repo.branches["main"] = initial.oid
            self._repos[key] = repo
            return initial.oid

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | None],
        *,
        revision: str = "main",
        repo_type: str = "model",
        message: str = "Update files",
    ) -> str:
        """Seed a commit on branch ``revision``: ``None`` values delete paths. Creates repo/branch if needed.

        A new branch starts from the head of ``main``. Returns the new commit sha.
        """
        with self._state_lock:
            self.create_repo(repo_id, repo_type=repo_type)
            repo = self._repos[(repo_type, repo_id)]
            if revision not in repo.branches:
                repo.branches[revision] = repo.branches["main"]
            head = repo.commits[repo.branches[revision]]
            new_files = dict(head.files)
            for path, content in files.items():
                path = path.strip("/")
                if content is None:
                    new_files.pop(path, None)
                else:
                    new_files[path] = self._store_blob(path, bytes(content))
            new = self._new_commit(head.oid, new_files, message, "")
            repo.commits[new.oid] = new
            repo.branches[revision] = new.oid
            return new.oid

    def add_file(
        self,
        repo_id: str,
        path: str,
        content: bytes,
        revision: str = "main",
        *,
        repo_type: str = "model",
        message: str | None = None,
    ) -> str:
        """Commit one file on branch ``revision`` (repo/branch created on demand); returns the commit sha."""
        return self.commit(
            repo_id, {path: content}, revision=revision, repo_type=repo_type, message=message or f"Add {path}"
        )

    def add_folder(
        self,
        repo_id: str,
        local_dir: str | os.PathLike[str],
        path_in_repo: str = "",
        *,
        revision: str = "main",
        repo_type: str = "model",
        message: str | None = None,
    ) -> str:
        """Commit every file under ``local_dir`` (recursively) in a single commit; returns the commit sha."""
        root = Path(local_dir)
        prefix = path_in_repo.strip("/")
        files: dict[str, bytes | None] = {}
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = file.relative_to(root).as_posix()
            files[f"{prefix}/{rel}" if prefix else rel] = file.read_bytes()
        return self.commit(
            repo_id,
            files,
            revision=revision,
            repo_type=repo_type,
            message=message or f"Add folder {root.name}",
        )

    def create_branch(
        self, repo_id: str, branch: str, *, revision: str = "main", repo_type: str = "model"
    ) -> str:
        """Point a (new or existing) branch at ``revision``; returns the target sha."""
        with self._state_lock:
            repo = self._require_repo(repo_type, repo_id)
            target = self._resolve(repo, revision).oid
            repo.branches[branch] = target
            return target

    def create_tag(self, repo_id: str, tag: str, *, revision: str = "main", repo_type: str = "model") -> str:
        """Point a tag at ``revision``; returns the target sha."""
        with self._state_lock:
            repo = self._require_repo(repo_type, repo_id)
            target = self._resolve(repo, revision).oid
            repo.tags[tag] = target
            return target

    def head(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """Commit sha that ``revision`` (branch, tag, sha or sha prefix) resolves to."""
        with self._state_lock:
            return self._resolve(self._require_repo(repo_type, repo_id), revision).oid

    def files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict[str, bytes]:
        """Snapshot ``{path: content}`` of a revision (e.g. to assert what an upload committed)."""
        with self._state_lock:
            commit = self._resolve(self._require_repo(repo_type, repo_id), revision)
            return {path: blob.content for path, blob in commit.files.items()}

    def commit_shas(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[str]:
        """History of ``revision``, newest first (including the initial empty commit)."""
        with self._state_lock:
            repo = self._require_repo(repo_type, repo_id)
            return [c.oid for c in self._history(repo, self._resolve(repo, revision))]

    def repo_exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        with self._state_lock:
            return (repo_type, repo_id) in self._repos

    # ------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[RequestRecord]:
        """Copy of the request log (oldest first)."""
        with self._log_lock:
            return [entry.snapshot() for entry in self._log]

    def find(self, method: str | None = None, path_contains: str | None = None) -> list[RequestRecord]:
        """Logged requests filtered by exact method and/or substring of the raw target (path + query)."""
        return [
            rec
            for rec in self.requests
            if (method is None or rec.method == method.upper())
            and (path_contains is None or path_contains in rec.path)
        ]

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        """Number of logged requests matching :meth:`find`'s filters."""
        return len(self.find(method, path_contains))

    def reset_log(self) -> None:
        with self._log_lock:
            self._log = []

    # ------------------------------------------------------------------ fault injection

    def fail(
        self,
        path_contains: str,
        status: int = 500,
        times: int = 1,
        *,
        method: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (JSON error body), skipping routing."""
        self._add_fault(
            _Fault("fail", path_contains, _upper(method), times, status=status, headers=dict(headers or {}))
        )

    def reset_mid_body(
        self,
        path_contains: str,
        after_bytes: int = 0,
        times: int = 1,
        *,
        method: str | None = None,
        hard: bool = False,
    ) -> None:
        """Send headers (full ``Content-Length``) + ``after_bytes`` of body, then drop the connection.

        ``after_bytes`` is clamped to ``len(body) - 1`` so the body is always truncated. ``hard=False``
        closes with a FIN (client sees a premature EOF: ``httpx2.RemoteProtocolError``); ``hard=True`` sends
        a TCP RST (SO_LINGER 0; client sees ``httpx2.ReadError``). Only 2xx responses with a body consume
        the fault.
        """
        self._add_fault(
            _Fault("reset", path_contains, _upper(method), times, after_bytes=after_bytes, hard=hard)
        )

    def slow(
        self,
        path_contains: str,
        delay_s: float,
        times: int = 1,
        *,
        method: str | None = None,
        after_bytes: int | None = None,
    ) -> None:
        """Delay the next ``times`` matching requests by ``delay_s``.

        Without ``after_bytes`` the delay happens before anything is sent (exercises connect/read timeouts on
        HEAD/API calls); with ``after_bytes`` it happens mid-body (stalled download), and only 2xx responses
        with a body consume it.
        """
        self._add_fault(
            _Fault("slow", path_contains, _upper(method), times, delay_s=delay_s, after_bytes=after_bytes)
        )

    def corrupt(
        self,
        path_contains: str,
        times: int = 1,
        *,
        offset: int | None = None,
        n_bytes: int = 64,
        method: str | None = "GET",
    ) -> None:
        """Serve the next ``times`` matching file bodies with ``n_bytes`` bytes flipped (XOR 0xFF) from ``offset``
        (default: the middle of the body; negative counts from the end).

        Length, ``ETag``, ``X-Linked-Etag`` and ``X-Repo-Commit`` are those of the real file, so a client that
        trusts headers caches the wrong bytes under the right name. A ranged (206) body is corrupted the same
        way, relative to the slice. Only 2xx file responses with a body consume it.
        """
        if n_bytes < 1:
            raise ValueError("n_bytes must be >= 1")
        self._add_fault(
            _Fault("corrupt", path_contains, _upper(method), times, offset=offset, n_bytes=n_bytes)
        )

    def wrong_etag(
        self, path_contains: str, etag: str | None = None, times: int = 1, *, method: str | None = None
    ) -> None:
        """Answer the next ``times`` matching file requests (HEAD or GET) with the right bytes but a wrong ETag.

        For an LFS file ``X-Linked-Etag`` (what the client prefers; the Hub's sha256) is replaced, otherwise
        ``ETag`` (the git blob oid). ``etag=None`` sends a made-up value of the same shape (64 or 40 hex digits),
        which the client cannot tell from a real one.
        """
        self._add_fault(_Fault("etag", path_contains, _upper(method), times, etag=etag))

    def down(self, status: int = 503) -> None:
        """Answer every request with ``status`` until :meth:`clear_faults` (a Hub outage, not a blip)."""
        self.fail("", status=status, times=1 << 62)

    def clear_faults(self) -> None:
        with self._fault_lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        """Total remaining fault activations (0 once every injected fault fired)."""
        with self._fault_lock:
            return sum(f.remaining for f in self._faults)

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("times must be >= 1")
        with self._fault_lock:
            self._faults.append(fault)

    def _take_fault(
        self, kinds: set[str], method: str, path: str, *, mid_body: bool | None = None
    ) -> _Fault | None:
        """Consume one activation of the first matching fault (registration order)."""
        with self._fault_lock:
            for fault in self._faults:
                if fault.kind not in kinds or not fault.matches(method, path):
                    continue
                if (
                    mid_body is not None
                    and fault.kind == "slow"
                    and (fault.after_bytes is not None) != mid_body
                ):
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # ------------------------------------------------------------------ HTTP plumbing

    def _handle(self, handler: _Handler) -> None:
        method = handler.command.upper()
        target = handler.path
        entry = _LogEntry(method, target, {k.lower(): v for k, v in handler.headers.items()})
        with self._log_lock:
            self._log.append(entry)
        try:
            body = self._read_body(handler)
            slow = self._take_fault({"slow"}, method, target, mid_body=False)
            if slow is not None:
                self._stopping.wait(slow.delay_s)
            failure = self._take_fault({"fail"}, method, target)
            if failure is not None:
                resp = _Response.json(
                    {"error": f"injected failure ({failure.status})"}, status=failure.status
                )
                resp.headers.update(failure.headers)
            else:
                try:
                    resp = self._route(method, target, body, entry.headers)
                except _HubError as err:
                    resp = _Response.error(err)
                if 200 <= resp.status < 300 and "ETag" in resp.headers and "X-Repo-Commit" in resp.headers:
                    self._tamper_file_response(method, target, resp)
            self._send(handler, method, target, resp, entry)
        except (TimeoutError, BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            handler.close_connection = True  # client went away (e.g. it timed out first)
        except Exception:
            self.errors.append(traceback.format_exc())
            handler.close_connection = True
            with contextlib.suppress(Exception):
                self._send(handler, method, target, _Response.json({"error": "fake hub bug"}, 500), entry)

    def _tamper_file_response(self, method: str, target: str, resp: _Response) -> None:
        """Apply ``wrong_etag`` / ``corrupt`` faults to a file response (HEAD/GET on ``/resolve/``) in place."""
        bad_etag = self._take_fault({"etag"}, method, target)
        if bad_etag is not None:
            header = "X-Linked-Etag" if "X-Linked-Etag" in resp.headers else "ETag"
            real = resp.headers[header].strip('"')
            fake = bad_etag.etag
            if fake is None:
                algo = hashlib.sha256 if len(real) == 64 else hashlib.sha1
                fake = algo(b"wrong etag for " + real.encode()).hexdigest()
            resp.headers[header] = f'"{fake}"'
        if method != "HEAD" and resp.body:
            damage = self._take_fault({"corrupt"}, method, target)
            if damage is not None:
                data = bytearray(resp.body)
                start = len(data) // 2 if damage.offset is None else damage.offset % len(data)
                for i in range(start, min(len(data), start + damage.n_bytes)):
                    data[i] ^= 0xFF
                resp.body = bytes(data)

    @staticmethod
    def _read_body(handler: _Handler) -> bytes:
        """Read the request body (Content-Length or chunked) so keep-alive connections stay in sync."""
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(handler.rfile.read(size))
                handler.rfile.readline()
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length > 0 else b""

    def _send(self, handler: _Handler, method: str, target: str, resp: _Response, entry: _LogEntry) -> None:
        entry.status = resp.status  # logged before sending: visible as soon as the client sees the response
        handler.send_response(resp.status)
        headers = {"X-Request-Id": str(uuid.uuid4()), **resp.headers, "Content-Length": str(len(resp.body))}
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if method == "HEAD" or not resp.body:
            return
        body = resp.body
        if 200 <= resp.status < 300:
            stall = self._take_fault({"slow"}, method, target, mid_body=True)
            reset = self._take_fault({"reset"}, method, target)
        else:
            stall = reset = None
        stop_at = len(body)
        if reset is not None:
            stop_at = max(0, min(reset.after_bytes or 0, len(body) - 1))
        pos = 0
        if stall is not None:
            pos = min(stall.after_bytes or 0, stop_at)
            self._write(handler, body[:pos])
            handler.wfile.flush()
            self._stopping.wait(stall.delay_s)
        self._write(handler, body[pos:stop_at])
        handler.wfile.flush()
        if reset is not None:
            self._abort_connection(handler, hard=reset.hard)

    def _write(self, handler: _Handler, data: bytes) -> None:
        for start in range(0, len(data), self.chunk_size):
            handler.wfile.write(data[start : start + self.chunk_size])

    @staticmethod
    def _abort_connection(handler: _Handler, *, hard: bool) -> None:
        """Drop the connection mid-response: FIN (premature EOF) or RST (connection reset)."""
        handler.close_connection = True
        conn = handler.connection
        if hard:
            # Linger 0 => the kernel sends RST when the fd is finally closed (after rfile/wfile are closed).
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        else:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ routing

    def _route(self, method: str, target: str, body: bytes, headers: Mapping[str, str]) -> _Response:
        split = urlsplit(target)
        query = parse_qs(split.query, keep_blank_values=True)
        segs = split.path.split("/")[1:]  # still percent-encoded: revisions may contain %2F
        if segs and segs[0] == "api":
            return self._route_api(method, segs[1:], query, body, headers)
        resolved = self._split_resolve(segs)
        if resolved is not None and method in ("GET", "HEAD"):
            repo_type, repo_id, revision, path = resolved
            return self._serve_file(repo_type, repo_id, revision, path, headers, method)
        raise _HubError(404, f"Not found: {method} {split.path}")

    @staticmethod
    def _split_resolve(segs: list[str]) -> tuple[str, str, str, str] | None:
        """``[{type}s/]{ns}/{name}/resolve/{rev}/{path}`` -> (repo_type, repo_id, revision, path)."""
        repo_type = "model"
        rest = segs
        if len(segs) > 3 and segs[0] == "datasets" and "resolve" in segs[2:4]:
            repo_type, rest = segs[0][:-1], segs[1:]
        for idx in (1, 2):
            if len(rest) > idx + 2 and rest[idx] == "resolve":
                repo_id = "/".join(unquote(s) for s in rest[:idx])
                return repo_type, repo_id, unquote(rest[idx + 1]), unquote("/".join(rest[idx + 2 :]))
        return None

    def _route_api(
        self,
        method: str,
        segs: list[str],
        query: dict[str, list[str]],
        body: bytes,
        headers: Mapping[str, str],
    ) -> _Response:
        if segs == ["validate-yaml"] and method == "POST":
            return _Response.json({"errors": [], "warnings": []})
        if segs == ["repos", "create"] and method == "POST":
            return self._api_create_repo(_json_body(body))
        if len(segs) >= 2 and segs[0] in ("models", "datasets"):
            repo_type = segs[0][:-1]
            rest = segs[1:]
            if len(rest) >= 2 and rest[1] not in _API_SUBPATHS:
                repo_id, sub = f"{unquote(rest[0])}/{unquote(rest[1])}", rest[2:]
            else:
                repo_id, sub = unquote(rest[0]), rest[1:]
            return self._route_repo_api(method, repo_type, repo_id, sub, query, body)
        raise _HubError(404, f"Unknown API route: /api/{'/'.join(segs)}")

    def _route_repo_api(
        self,
        method: str,
        repo_type: str,
        repo_id: str,
        sub: list[str],
        query: dict[str, list[str]],
        body: bytes,
    ) -> _Response:
        with self._state_lock:
            repo = self._require_repo(repo_type, repo_id)
            action = sub[0] if sub else ""
            arg = unquote("/".join(sub[1:2]))  # revision/branch/tag: quoted with safe="" by the client
            if method == "GET" and action == "":
                return _Response.json(self._repo_info(repo, "main", query))
            if method == "GET" and action == "revision" and len(sub) >= 2:
                return _Response.json(self._repo_info(repo, unquote("/".join(sub[1:])), query))
            if method == "GET" and action == "tree" and len(sub) >= 2:
                _refuse_flag(query, "expand", "tree listings with expand=true (lastCommit, security) are")
                path = unquote("/".join(sub[2:]))
                recursive = _truthy(query.get("recursive", ["false"])[-1])
                return _Response.json(self._tree(repo, arg, path, recursive=recursive))
            if method == "POST" and action == "paths-info" and len(sub) == 2:
                return _Response.json(self._paths_info(repo, arg, body))
            if method == "POST" and action == "preupload" and len(sub) == 2:
                return _Response.json(self._preupload(repo, arg, _json_body(body)))
            if method == "POST" and action == "commit" and len(sub) == 2:
                _refuse_flag(query, "create_pr", "commits opening a pull request (create_pr) are")
                return _Response.json(self._commit(repo, arg, body))
        raise _HubError(404, f"Unknown repo API route: {method} {'/'.join(sub)}")

    # ------------------------------------------------------------------ endpoints

    def _serve_file(
        self, repo_type: str, repo_id: str, revision: str, path: str, headers: Mapping[str, str], method: str
    ) -> _Response:
        with self._state_lock:
            repo = self._require_repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            blob = commit.files.get(path)
        if blob is None:
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        size = len(blob.content)
        name = path.rsplit("/", 1)[-1]
        ascii_name = name.encode("ascii", "replace").decode().replace('"', "_")
        out_headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{blob.git_oid}"',
            "X-Repo-Commit": commit.oid,
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}; filename=\"{ascii_name}\";",
        }
        if blob.is_lfs:
            out_headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            out_headers["X-Linked-Size"] = str(size)
        range_header = headers.get("range")
        if range_header and "," not in range_header:
            match = _RANGE.fullmatch(range_header)
            if match is not None:
                start_s, end_s = match.groups()
                if start_s:
                    start, end = int(start_s), min(int(end_s), size - 1) if end_s else size - 1
                elif end_s:
                    start, end = max(0, size - int(end_s)), size - 1
                else:
                    start, end = 0, -1
                if start > end or start >= size:
                    raise _HubError(
                        416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"}
                    )
                out_headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                return _Response(206, blob.content[start : end + 1], out_headers)
        return _Response(200, blob.content, out_headers)

    def _repo_info(self, repo: _Repo, revision: str, query: dict[str, list[str]]) -> dict[str, Any]:
        commit = self._resolve(repo, revision)
        with_blobs = _truthy(query.get("blobs", ["false"])[-1])
        siblings: list[dict[str, Any]] = []
        for path in sorted(commit.files):
            blob = commit.files[path]
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=len(blob.content), blobId=blob.git_oid)
                if blob.is_lfs:
                    sibling["lfs"] = {
                        "size": len(blob.content),
                        "sha256": blob.sha256,
                        "pointerSize": blob.pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else self.user,
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(b.content) for b in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return info

    @staticmethod
    def _file_entry(commit: _Commit, path: str) -> dict[str, Any]:
        blob = commit.files[path]
        entry: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": len(blob.content), "path": path}
        if blob.is_lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": len(blob.content), "pointerSize": blob.pointer_size}
        return entry

    @staticmethod
    def _dir_entry(commit: _Commit, path: str) -> dict[str, Any]:
        prefix = path + "/"
        listing = "\n".join(
            f"{p} {b.git_oid}" for p, b in sorted(commit.files.items()) if p.startswith(prefix)
        )
        oid = hashlib.sha1(f"tree {path}\n{listing}".encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    def _tree(self, repo: _Repo, revision: str, path: str, *, recursive: bool) -> list[dict[str, Any]]:
        commit = self._resolve(repo, revision)
        base = path.strip("/")
        prefix = f"{base}/" if base else ""
        if base and base in commit.files:
            raise _HubError(400, f"{base} is a file, not a directory")
        files = [p for p in sorted(commit.files) if p.startswith(prefix)]
        if base and not files:
            raise _HubError(404, f"Entry not found: {base}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        dirs: set[str] = set()
        listed_files: list[str] = []
        for p in files:
            rel_parts = p[len(prefix) :].split("/")
            if recursive:
                dirs.update(prefix + "/".join(rel_parts[:i]) for i in range(1, len(rel_parts)))
                listed_files.append(p)
            elif len(rel_parts) == 1:
                listed_files.append(p)
            else:
                dirs.add(prefix + rel_parts[0])
        entries = [self._dir_entry(commit, d) for d in sorted(dirs)]
        entries += [self._file_entry(commit, p) for p in listed_files]
        return entries

    def _paths_info(self, repo: _Repo, revision: str, body: bytes) -> list[dict[str, Any]]:
        commit = self._resolve(repo, revision)
        form = parse_qs(body.decode(), keep_blank_values=True)
        _refuse_flag(form, "expand", "paths-info with expand=true (lastCommit, security) is")
        out: list[dict[str, Any]] = []
        for raw in form.get("paths", []):
            path = raw.strip("/")
            if path in commit.files:
                out.append(self._file_entry(commit, path))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append(self._dir_entry(commit, path))
        return out

    def _preupload(self, repo: _Repo, revision: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Every file is "regular" (no LFS/xet upload step); ``oid`` lets the client skip unchanged files."""
        commit = self._resolve_for_write(repo, revision)
        files = []
        for item in payload.get("files", []):
            path = str(item["path"])
            existing = commit.files.get(path) if commit is not None else None
            files.append(
                {
                    "path": path,
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": existing.git_oid if existing is not None and not existing.is_lfs else None,
                }
            )
        return {"files": files, "commitOid": commit.oid if commit is not None else None}

    def _commit(self, repo: _Repo, revision: str, body: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "Commit payload must start with a header line")
        header = lines[0]["value"]
        if revision not in repo.branches:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        parent_commit = header.get("parentCommit")
        if parent_commit and parent_commit != head.oid:
            raise _HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = str(value.get("path", "")).strip("/")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                files[path] = self._store_blob(path, base64.b64decode(value["content"]))
            elif key == "deletedFile":
                if path not in files:
                    raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                for p in [p for p in files if p.startswith(path + "/")]:
                    del files[p]
            else:  # "lfsFile" too: preupload answers "regular" for every file, so the client never sends one
                raise _HubError(400, f"Commit operation {key!r} is not supported by the fake hub")
        new = self._new_commit(
            head.oid, files, str(header.get("summary", "")), str(header.get("description", ""))
        )
        repo.commits[new.oid] = new
        repo.branches[revision] = new.oid
        return {
            "success": True,
            "commitOid": new.oid,
            "commitUrl": f"{self.url}/{_url_prefix(repo.repo_type)}{repo.repo_id}/commit/{new.oid}",
            "commitMessage": new.title,
            "hookOutput": "",
            "pullRequestUrl": None,
        }

    def _api_create_repo(self, payload: dict[str, Any]) -> _Response:
        repo_type = payload.get("type") or "model"
        name, org = payload.get("name"), payload.get("organization")
        if not name:
            raise _HubError(400, "Missing repo name")
        if repo_type not in _REPO_TYPES:
            raise _HubError(400, f"The fake hub serves only {' and '.join(_REPO_TYPES)} repos, not {repo_type!r}")
        repo_id = f"{org or self.user}/{name}"
        url = f"{self.url}/{_url_prefix(repo_type)}{repo_id}"
        with self._state_lock:
            if (repo_type, repo_id) in self._repos:
                return _Response.json(
                    {"error": f"You already created this {repo_type} repo", "url": url}, 409
                )
            self.create_repo(repo_id, repo_type=repo_type, private=payload.get("visibility") == "private")
        return _Response.json({"url": url, "name": repo_id, "id": repo_id})

    # ------------------------------------------------------------------ state helpers (hold _state_lock)

    def _require_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> _Commit:
        """Branch, tag, PR ref, full sha or unique sha prefix -> commit (404 RevisionNotFound otherwise)."""
        oid = repo.branches.get(revision) or repo.tags.get(revision)
        if oid is None and _HEX40.fullmatch(revision) and revision in repo.commits:
            oid = revision
        if oid is None and _HEX_PREFIX.fullmatch(revision):
            candidates = [c for c in repo.commits if c.startswith(revision)]
            oid = candidates[0] if len(candidates) == 1 else None
        if oid is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _resolve_for_write(self, repo: _Repo, revision: str) -> _Commit | None:
        try:
            return self._resolve(repo, revision)
        except _HubError:
            return None

    @staticmethod
    def _history(repo: _Repo, commit: _Commit) -> list[_Commit]:
        out = [commit]
        while out[-1].parent is not None:
            out.append(repo.commits[out[-1].parent])
        return out

    def _is_lfs(self, path: str, size: int) -> bool:
        name = path.rsplit("/", 1)[-1]
        return size >= self.lfs_threshold or any(fnmatch.fnmatch(name, pat) for pat in self.lfs_patterns)

    def _store_blob(self, path: str, content: bytes) -> _Blob:
        return _Blob.build(content, self._is_lfs(path, len(content)))

    def _new_commit(
        self, parent: str | None, files: Mapping[str, _Blob], title: str, message: str
    ) -> _Commit:
        with self._state_lock:
            self._commit_counter += 1
            tree = "\n".join(f"{p} {b.git_oid}" for p, b in sorted(files.items()))
            seed = f"{parent}\n{tree}\n{title}\n{message}\n{self._commit_counter}\n{time.time_ns()}"
            oid = hashlib.sha1(seed.encode()).hexdigest()
        return _Commit(oid=oid, parent=parent, files=dict(files), title=title, message=message, date=_now())


def _upper(method: str | None) -> str | None:
    return method.upper() if method is not None else None


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _refuse_flag(params: Mapping[str, list[str]], name: str, what: str) -> None:
    """400 for a client option no test needs, rather than an answer that silently ignores it."""
    if _truthy(params.get(name, ["false"])[-1]):
        raise _HubError(400, f"{what} not supported by the fake hub (tests/hub_server.py)")


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"{}")
    except json.JSONDecodeError as err:
        raise _HubError(400, f"Invalid JSON body: {err}") from err
    if not isinstance(payload, dict):
        raise _HubError(400, "JSON body must be an object")
    return payload


# ---------------------------------------------------------------------- client configuration

#: Env vars removed while pointing the client at the fake hub (they would redirect or disable it).
_ENV_REMOVED: tuple[str, ...] = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_CO_STAGING",
    "HUGGINGFACE_HUB_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
    "HF_HUB_ETAG_TIMEOUT",
    "HF_HUB_DOWNLOAD_TIMEOUT",
    "HF_TOKEN_PATH",
    "HF_HUB_ENABLE_HF_TRANSFER",
)


@contextlib.contextmanager
def hub_client_env(
    endpoint: str, hf_home: str | os.PathLike[str], *, disable_xet: bool = True
) -> Iterator[dict[str, str]]:
    """Point an already-imported ``huggingface_hub`` (and spawned subprocesses) at ``endpoint``.

    Sets env vars (``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_DISABLE_TELEMETRY=1``,
    ``HF_HUB_DISABLE_XET=1`` unless ``disable_xet=False`` ...), and patches the import-time copies in the
    client: ``constants.ENDPOINT``/``HUGGINGFACE_CO_URL_TEMPLATE``/``HF_URL_HOSTS``, cache/token paths
    derived from ``HF_HOME``, ``HF_HUB_OFFLINE=False``, telemetry/xet flags, default timeouts,
    ``hf_api.api.endpoint``, ``utils._cache_manager.HF_HUB_CACHE``. Closes the shared ``httpx2`` client
    on entry and exit (no pooled connection survives to another server) and clears fsspec's
    ``HfFileSystem`` instance cache. Everything is restored on exit. Yields the env vars it set.
    """
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_api
    from huggingface_hub.utils import _cache_manager, _http

    home = Path(hf_home)
    hub_cache = home / "hub"
    hub_cache.mkdir(parents=True, exist_ok=True)
    endpoint = endpoint.rstrip("/")
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_SYMLINKS_WARNING": "1",
    }
    if disable_xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    attrs: dict[str, Any] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": frozenset(constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname or ""}),
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": disable_xet,
        "HF_HUB_ETAG_TIMEOUT": constants.DEFAULT_ETAG_TIMEOUT,
        "HF_HUB_DOWNLOAD_TIMEOUT": constants.DEFAULT_DOWNLOAD_TIMEOUT,
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, env))  # restores the whole environ on exit
        for name in _ENV_REMOVED:
            os.environ.pop(name, None)
        for name, value in attrs.items():
            if hasattr(constants, name):
                stack.enter_context(mock.patch.object(constants, name, value))
        stack.enter_context(mock.patch.object(hf_api.api, "endpoint", endpoint))
        if hasattr(_cache_manager, "HF_HUB_CACHE"):
            stack.enter_context(mock.patch.object(_cache_manager, "HF_HUB_CACHE", str(hub_cache)))
        _http.close_session()
        stack.callback(_http.close_session)
        _clear_hf_filesystem_cache()
        stack.callback(_clear_hf_filesystem_cache)
        yield env


def _clear_hf_filesystem_cache() -> None:
    """fsspec caches ``HfFileSystem()`` instances, which captured the endpoint at construction."""
    import sys

    module = sys.modules.get("huggingface_hub.hf_file_system")
    if module is not None:
        module.HfFileSystem.clear_instance_cache()
