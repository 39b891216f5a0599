"""Proves ``tests/hub_server.py`` against the real ``huggingface_hub`` client, and pins down what that client
(2.4.0, httpx2-based) does under each injected fault, so tests built on the fake can rely on it.

Observed client behaviour (asserted below):

* Cached file, second ``hf_hub_download``: exactly one ``HEAD /resolve`` (etag/commit check), no GET.
  ``local_files_only=True``: zero requests. Pinned commit sha already in the cache: zero requests.
* 5xx on the metadata HEAD: the first HEAD is made *without* retries (to fall back to the cache fast). If the
  file is cached -> the cached path is returned, no error. If not -> one more metadata attempt *with*
  ``http_backoff`` (up to 5 retries, sleeping 1, 2, 4, 8, 8 s). So a single 500 costs one extra HEAD and no
  sleep; a persistent 500 costs 7 HEADs and ends in ``LocalEntryNotFoundError`` (cause: ``HfHubHTTPError``).
* 5xx on the GET: not retried (``http_get`` only retries 408/429) -> ``HfHubHTTPError`` from
  ``hf_hub_download``; the temporary ``<etag>.<uuid>.incomplete`` file is deleted.
* Connection closed mid-body (FIN -> ``httpx2.RemoteProtocolError``) or stalled beyond the read timeout
  (``ReadTimeout``): ``http_get`` sleeps 1 s and retries (up to 5 times without progress). It resumes with
  ``Range: bytes=N-`` where N counts only bytes already *written*; the body is consumed in 10 MiB chunks
  (``constants.DOWNLOAD_CHUNK_SIZE``), so a cut before the first 10 MiB restarts at byte 0 without a Range
  header, and a cut after it resumes at a 10 MiB boundary (server answers 206). No partial file survives.
* Connection reset (RST -> ``httpx2.ReadError``): NOT retried; ``httpx2.ReadError`` escapes
  ``hf_hub_download`` and the temporary file is deleted; the next call downloads from scratch.
* Slow HEAD beyond ``etag_timeout``: the client gives up on it, then retries the HEAD with a 60 s timeout.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx2
import pytest
from hub_server import HubServer, git_blob_sha1, hub_client_env
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

REPO = "org/sae-demo"
MIB = 1024 * 1024


def _incomplete_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.endswith(".incomplete")]


# ---------------------------------------------------------------------------------------------- downloads


def test_download_then_cached_download_makes_only_head(hub: HubServer, hub_cache: Path) -> None:
    content = b'{"d_in": 768, "d_sae": 24576}'
    sha = hub.add_file(REPO, "layer_0/cfg.json", content)

    path = hf_hub_download(REPO, "layer_0/cfg.json")
    assert Path(path).read_bytes() == content
    # Cache layout: blob named by the (git-sha1) etag, snapshot folder named by the commit sha.
    assert Path(path).resolve() == hub_cache / "models--org--sae-demo" / "blobs" / git_blob_sha1(content)
    assert Path(path).parent.name == "layer_0" and Path(path).parent.parent.name == sha
    assert hub.count("HEAD", "/resolve/main/layer_0/cfg.json") == 1
    assert hub.count("GET", "/resolve/main/layer_0/cfg.json") == 1

    hub.reset_log()
    assert hf_hub_download(REPO, "layer_0/cfg.json") == path
    assert [(r.method, r.status) for r in hub.requests] == [("HEAD", 200)]

    hub.reset_log()
    assert hf_hub_download(REPO, "layer_0/cfg.json", local_files_only=True) == path
    assert hub.count() == 0


def test_lfs_style_file_uses_sha256_etag(hub: HubServer, hub_cache: Path) -> None:
    weights = os.urandom(4096)
    hub.add_file(REPO, "layer_0/sae_weights.safetensors", weights)

    path = hf_hub_download(REPO, "layer_0/sae_weights.safetensors")
    assert Path(path).read_bytes() == weights
    assert Path(path).resolve().name == hashlib.sha256(weights).hexdigest()
    assert [(r.method, r.status) for r in hub.requests] == [("HEAD", 200), ("GET", 200)]

    info = HfApi().model_info(REPO, files_metadata=True)
    (sibling,) = info.siblings or []
    assert sibling.lfs is not None and sibling.lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert sibling.size == len(weights)


def test_snapshot_download_and_dataset_repo(hub: HubServer, tmp_path: Path) -> None:
    hub.add_file(REPO, "a.txt", b"a")
    hub.add_file(REPO, "nested/b.txt", b"b")
    snap = Path(snapshot_download(REPO))
    assert (snap / "a.txt").read_bytes() == b"a" and (snap / "nested" / "b.txt").read_bytes() == b"b"
    assert hub.count("GET", "/api/models/org/sae-demo/revision/main") == 1
    assert hub.count("GET", "/tree/") == 1

    hub.add_file("org/acts", "data/shard0.bin", b"\x00\x01", repo_type="dataset")
    path = hf_hub_download("org/acts", "data/shard0.bin", repo_type="dataset", local_dir=tmp_path / "ds")
    assert Path(path).read_bytes() == b"\x00\x01"
    assert HfApi().list_repo_files("org/acts", repo_type="dataset") == ["data/shard0.bin"]
    assert HfApi().dataset_info("org/acts").sha == hub.head("org/acts", repo_type="dataset")


def test_revision_pinning_by_commit_sha_and_tag(hub: HubServer) -> None:
    sha_v1 = hub.add_file(REPO, "cfg.json", b"v1")
    hub.create_tag(REPO, "v1.0")
    sha_v2 = hub.add_file(REPO, "cfg.json", b"v2")
    assert sha_v1 != sha_v2 and hub.head(REPO) == sha_v2

    assert Path(hf_hub_download(REPO, "cfg.json")).read_bytes() == b"v2"
    assert Path(hf_hub_download(REPO, "cfg.json", revision=sha_v1)).read_bytes() == b"v1"
    assert Path(hf_hub_download(REPO, "cfg.json", revision="v1.0")).read_bytes() == b"v1"
    assert HfApi().model_info(REPO, revision=sha_v1).sha == sha_v1
    assert HfApi().model_info(REPO, revision=sha_v1[:10]).sha == sha_v1  # unique prefix resolves

    # A full commit sha already in the cache short-circuits every request.
    hub.reset_log()
    assert Path(hf_hub_download(REPO, "cfg.json", revision=sha_v1)).read_bytes() == b"v1"
    assert hub.count() == 0


def test_missing_entry_repo_and_revision_map_to_typed_errors(hub: HubServer, hub_cache: Path) -> None:
    sha = hub.add_file(REPO, "cfg.json", b"{}")
    api = HfApi()

    with pytest.raises(RemoteEntryNotFoundError) as entry_err:
        hf_hub_download(REPO, "missing.json")
    assert isinstance(entry_err.value, EntryNotFoundError)
    assert entry_err.value.response.status_code == 404
    # X-Repo-Commit on the 404 lets the client cache the non-existence of the file.
    assert (hub_cache / "models--org--sae-demo" / ".no_exist" / sha / "missing.json").exists()

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/nope", "cfg.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "cfg.json", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/nope")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        api.list_repo_files("org/nope")

    assert api.file_exists(REPO, "cfg.json")
    assert not api.file_exists(REPO, "missing.json")
    assert not api.file_exists("org/nope", "cfg.json")
    assert not api.file_exists(REPO, "cfg.json", revision="no-such-branch")
    assert api.repo_exists(REPO) and not api.repo_exists("org/nope")


# ---------------------------------------------------------------------------------------------- faults


def test_single_5xx_on_head_is_retried_once_without_sleep(
    hub: HubServer, no_backoff_sleep: list[float]
) -> None:
    hub.add_file(REPO, "cfg.json", b"{}")
    hub.fail("/resolve/main/cfg.json", status=500, method="HEAD")

    assert Path(hf_hub_download(REPO, "cfg.json")).read_bytes() == b"{}"
    assert [r.status for r in hub.find("HEAD")] == [500, 200]
    assert hub.count("GET") == 1
    assert no_backoff_sleep == []  # the retry is a second metadata call, not a back-off
    assert hub.pending_faults() == 0


def test_persistent_5xx_on_head_backs_off_then_raises(hub: HubServer, no_backoff_sleep: list[float]) -> None:
    hub.add_file(REPO, "cfg.json", b"{}")
    hub.fail("/resolve/", status=503, times=100, method="HEAD")

    with pytest.raises(LocalEntryNotFoundError) as err:
        hf_hub_download(REPO, "cfg.json")
    assert isinstance(err.value.__cause__, HfHubHTTPError)
    assert err.value.__cause__.response.status_code == 503
    assert hub.count("HEAD") == 7  # 1 fast attempt + 1 + 5 retries with back-off
    assert no_backoff_sleep == [1, 2, 4, 8, 8]
    assert hub.count("GET") == 0
    hub.clear_faults()


def test_5xx_on_head_with_cached_file_returns_cached_copy(hub: HubServer) -> None:
    hub.add_file(REPO, "cfg.json", b"{}")
    path = hf_hub_download(REPO, "cfg.json")
    hub.reset_log()
    hub.fail("/resolve/", status=500, method="HEAD")

    assert hf_hub_download(REPO, "cfg.json") == path
    assert [(r.method, r.status) for r in hub.requests] == [("HEAD", 500)]


def test_5xx_on_get_is_not_retried(hub: HubServer, hub_cache: Path, no_backoff_sleep: list[float]) -> None:
    hub.add_file(REPO, "cfg.json", b"{}")
    hub.fail("/resolve/main/cfg.json", status=500, method="GET")

    with pytest.raises(HfHubHTTPError) as err:
        hf_hub_download(REPO, "cfg.json")
    assert err.value.response.status_code == 500
    assert hub.count("GET") == 1 and no_backoff_sleep == []
    assert _incomplete_files(hub_cache) == []

    assert Path(hf_hub_download(REPO, "cfg.json")).read_bytes() == b"{}"


def test_429_on_get_is_retried_with_backoff(hub: HubServer, no_backoff_sleep: list[float]) -> None:
    hub.add_file(REPO, "cfg.json", b"{}")
    hub.fail("/resolve/main/cfg.json", status=429, method="GET", headers={"Retry-After": "3"})

    assert Path(hf_hub_download(REPO, "cfg.json")).read_bytes() == b"{}"
    assert [r.status for r in hub.find("GET")] == [429, 200]
    assert no_backoff_sleep == [4.0]  # Retry-After + 1 s


def test_corrupt_serves_other_bytes_under_the_right_etag(hub: HubServer, hub_cache: Path) -> None:
    """The client trusts headers: corrupted bytes land in the cache under the real sha256 (what sae-hub checks)."""
    data = os.urandom(4096)
    hub.add_file(REPO, "w.safetensors", data)
    hub.corrupt("w.safetensors", n_bytes=8, offset=-8)

    path = Path(hf_hub_download(REPO, "w.safetensors"))
    got = path.read_bytes()
    assert len(got) == len(data) and got[:-8] == data[:-8] and got[-8:] == bytes(b ^ 0xFF for b in data[-8:])
    assert path.resolve().name == hashlib.sha256(data).hexdigest()
    assert hub.pending_faults() == 0


def test_wrong_etag_names_the_blob_after_the_lie(hub: HubServer) -> None:
    data = os.urandom(4096)
    hub.add_file(REPO, "w.safetensors", data)
    hub.add_file(REPO, "cfg.json", b"{}")
    hub.wrong_etag("w.safetensors", method="HEAD")
    hub.wrong_etag("cfg.json", etag="not-a-hash", method="HEAD")

    lfs = Path(hf_hub_download(REPO, "w.safetensors"))
    regular = Path(hf_hub_download(REPO, "cfg.json"))
    assert lfs.read_bytes() == data and regular.read_bytes() == b"{}"
    name = lfs.resolve().name
    assert len(name) == 64 and name != hashlib.sha256(data).hexdigest()
    assert regular.resolve().name == "not-a-hash"


def test_down_answers_everything_then_clears(hub: HubServer, no_backoff_sleep: list[float]) -> None:
    hub.add_file(REPO, "cfg.json", b"{}")
    hub.down(503)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi().list_repo_files(REPO)
    assert err.value.response.status_code == 503
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "cfg.json")
    assert {r.status for r in hub.requests} == {503}
    hub.clear_faults()
    assert Path(hf_hub_download(REPO, "cfg.json")).read_bytes() == b"{}"


def test_stopped_server_refuses_connections(hub: HubServer, no_backoff_sleep: list[float]) -> None:
    hub.add_file(REPO, "cfg.json", b"{}")
    hub.stop()
    with pytest.raises(LocalEntryNotFoundError) as err:
        hf_hub_download(REPO, "cfg.json")
    assert isinstance(err.value.__cause__, httpx2.ConnectError)


def test_reset_mid_body_small_file_restarts_from_zero(
    hub: HubServer, hub_cache: Path, no_backoff_sleep: list[float]
) -> None:
    data = os.urandom(MIB)
    hub.add_file(REPO, "w.bin", data)
    hub.reset_mid_body("w.bin", after_bytes=300_000)

    assert Path(hf_hub_download(REPO, "w.bin")).read_bytes() == data
    gets = hub.find("GET")
    assert [(g.status, g.headers.get("range")) for g in gets] == [(200, None), (200, None)]
    assert no_backoff_sleep == [1]
    assert _incomplete_files(hub_cache) == []


def test_reset_mid_body_after_10mib_resumes_with_range(hub: HubServer, no_backoff_sleep: list[float]) -> None:
    chunk = hf_constants.DOWNLOAD_CHUNK_SIZE
    data = os.urandom(chunk + 2 * MIB)
    hub.add_file(REPO, "big.bin", data)
    hub.reset_mid_body("big.bin", after_bytes=chunk + MIB)

    assert Path(hf_hub_download(REPO, "big.bin")).read_bytes() == data
    gets = hub.find("GET")
    assert [(g.status, g.headers.get("range")) for g in gets] == [(200, None), (206, f"bytes={chunk}-")]
    assert no_backoff_sleep == [1]


def test_hard_reset_mid_body_surfaces_read_error(hub: HubServer, hub_cache: Path) -> None:
    data = os.urandom(MIB)
    hub.add_file(REPO, "w.bin", data)
    hub.reset_mid_body("w.bin", after_bytes=300_000, hard=True)

    with pytest.raises(httpx2.ReadError):
        hf_hub_download(REPO, "w.bin")
    assert hub.count("GET") == 1
    assert _incomplete_files(hub_cache) == []
    assert not list((hub_cache / "models--org--sae-demo" / "blobs").iterdir())

    assert Path(hf_hub_download(REPO, "w.bin")).read_bytes() == data


def test_stalled_body_times_out_and_download_resumes(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch, no_backoff_sleep: list[float]
) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.2)
    data = os.urandom(200_000)
    hub.add_file(REPO, "w.bin", data)
    hub.slow("w.bin", delay_s=2.0, method="GET", after_bytes=100_000)

    start = time.monotonic()
    assert Path(hf_hub_download(REPO, "w.bin")).read_bytes() == data
    assert time.monotonic() - start < 1.5
    assert hub.count("GET") == 2 and no_backoff_sleep == [1]


def test_slow_head_beyond_etag_timeout_is_retried(hub: HubServer) -> None:
    hub.add_file(REPO, "cfg.json", b"{}")
    hub.slow("/resolve/main/cfg.json", delay_s=2.0, method="HEAD")

    start = time.monotonic()
    assert Path(hf_hub_download(REPO, "cfg.json", etag_timeout=0.2)).read_bytes() == b"{}"
    assert time.monotonic() - start < 1.5
    assert hub.count("HEAD") == 2 and hub.count("GET") == 1


def test_concurrent_downloads_of_same_file(hub: HubServer) -> None:
    data = os.urandom(2 * MIB)
    hub.add_file(REPO, "w.bin", data)
    hub.slow("w.bin", delay_s=0.2, method="GET")  # keep the first download in flight while others arrive
    results: list[bytes] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        try:
            barrier.wait()
            content = Path(hf_hub_download(REPO, "w.bin")).read_bytes()
            with lock:
                results.append(content)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert errors == []
    assert len(results) == 8 and all(r == data for r in results)
    assert hub.count("HEAD") == 8
    assert hub.count("GET") == 1  # the client's per-blob file lock deduplicates in-process downloads


# ---------------------------------------------------------------------------------------------- uploads


def _make_folder(root: Path) -> dict[str, bytes]:
    files = {
        "README.md": b"# demo SAE\n",
        "cfg.json": json.dumps({"d_sae": 16}).encode(),
        "layer_0/sae_weights.safetensors": os.urandom(1000),
        "layer_0/sparsity.bin": os.urandom(64),
        "layer_1/cfg.json": b"{}",
        "empty.txt": b"",
    }
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return files


def test_upload_folder_round_trip_and_listings(hub: HubServer, tmp_path: Path) -> None:
    api = HfApi(token="hf_dummy")
    repo_url = api.create_repo("uploaded-sae")
    assert repo_url.repo_id == "test-user/uploaded-sae"
    assert api.create_repo("uploaded-sae", exist_ok=True).repo_id == repo_url.repo_id  # 409 swallowed
    with pytest.raises(HfHubHTTPError):
        api.create_repo("uploaded-sae")
    repo_id = repo_url.repo_id

    files = _make_folder(tmp_path / "src")
    hub.reset_log()
    info = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src", commit_message="add SAE")
    assert info.oid == hub.head(repo_id)
    assert hub.files(repo_id) == files
    assert hub.count("POST", "/preupload/main") == 1 and hub.count("POST", "/commit/main") == 1
    commit_req = hub.find("POST", "/commit/main")[0]
    assert commit_req.headers["authorization"] == "Bearer hf_dummy"
    assert commit_req.headers["content-type"] == "application/x-ndjson"

    for rel, content in files.items():
        assert Path(hf_hub_download(repo_id, rel)).read_bytes() == content
    snap = Path(snapshot_download(repo_id, revision=info.oid))
    assert {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()} == set(files)

    assert sorted(api.list_repo_files(repo_id)) == sorted(files)
    top = list(api.list_repo_tree(repo_id))
    assert {(type(e).__name__, e.path) for e in top} == {
        ("RepoFolder", "layer_0"),
        ("RepoFolder", "layer_1"),
        ("RepoFile", "README.md"),
        ("RepoFile", "cfg.json"),
        ("RepoFile", "empty.txt"),
    }
    sub = {e.path: e for e in api.list_repo_tree(repo_id, path_in_repo="layer_0")}
    weights = sub["layer_0/sae_weights.safetensors"]
    assert isinstance(weights, RepoFile) and weights.size == 1000 and weights.lfs is not None
    deep = list(api.list_repo_tree(repo_id, recursive=True))
    assert (
        sum(isinstance(e, RepoFolder) for e in deep) == 2 and sum(isinstance(e, RepoFile) for e in deep) == 6
    )
    assert {s.rfilename for s in api.model_info(repo_id).siblings or []} == set(files)


def test_upload_file_and_create_commit_keep_history(hub: HubServer) -> None:
    api = HfApi(token="hf_dummy")
    repo_id = api.create_repo("org/history").repo_id
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="cfg.json", repo_id=repo_id)
    second = api.create_commit(
        repo_id,
        operations=[
            CommitOperationAdd("cfg.json", b"v2"),
            CommitOperationAdd("extra/notes.txt", b"hi"),
        ],
        commit_message="v2",
    )
    third = api.create_commit(
        repo_id, operations=[CommitOperationDelete("extra/notes.txt")], commit_message="drop notes"
    )
    assert len({first.oid, second.oid, third.oid}) == 3
    assert hub.commit_shas(repo_id)[:3] == [third.oid, second.oid, first.oid]

    # Regular files travel base64-encoded inside the NDJSON commit payload.
    assert api.list_repo_files(repo_id) == ["cfg.json"]
    assert api.list_repo_files(repo_id, revision=second.oid) == ["cfg.json", "extra/notes.txt"]
    assert Path(hf_hub_download(repo_id, "cfg.json", revision=first.oid)).read_bytes() == b"v1"
    assert Path(hf_hub_download(repo_id, "cfg.json")).read_bytes() == b"v2"

    # Unchanged content: preupload returns the remote oid and the client skips the empty commit.
    hub.reset_log()
    same = api.upload_file(path_or_fileobj=b"v2", path_in_repo="cfg.json", repo_id=repo_id)
    assert same.oid == third.oid and hub.count("POST", "/commit/") == 0


def test_upload_folder_via_xet_pipeline_path(hub: HubServer, hub_home: Path, tmp_path: Path) -> None:
    """With hf_xet enabled, ``upload_folder`` uses ``pipelined_upload``; "regular" mode keeps xet idle."""
    files = _make_folder(tmp_path / "src")
    with hub_client_env(hub.url, hub_home, disable_xet=False):
        api = HfApi(token="hf_dummy")
        repo_id = api.create_repo("pipelined").repo_id
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src")
    assert info.oid == hub.head(repo_id) and hub.files(repo_id) == files
    assert [r.path for r in hub.find("POST")] == [
        "/api/repos/create",
        "/api/validate-yaml",  # README.md is being uploaded
        f"/api/models/{repo_id}/preupload/main",
        f"/api/models/{repo_id}/commit/main",
    ]


def test_top_level_functions_use_the_fake_endpoint(hub: HubServer) -> None:
    """``huggingface_hub.list_repo_files`` etc. are bound to an ``HfApi()`` built at import time."""
    import huggingface_hub

    hub.add_file(REPO, "cfg.json", b"{}")
    assert huggingface_hub.list_repo_files(REPO) == ["cfg.json"]
    assert huggingface_hub.model_info(REPO).sha == hub.head(REPO)


# ---------------------------------------------------------------------------------------------- server itself


def _raw(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_resolve_headers_ranges_and_fault_bookkeeping() -> None:
    with HubServer() as hub:
        sha = hub.add_file(REPO, "dir/f.txt", b"0123456789")
        url = f"{hub.url}/{REPO}/resolve/main/dir/f.txt"

        status, body, headers = _raw(url, "HEAD")
        assert status == 200 and body == b""
        assert headers["ETag"] == f'"{git_blob_sha1(b"0123456789")}"'
        assert headers["X-Repo-Commit"] == sha
        assert headers["Content-Length"] == "10" and headers["Accept-Ranges"] == "bytes"
        assert not any(h.lower().startswith("x-xet") for h in headers)

        assert _raw(url, headers={"Range": "bytes=7-"})[:2] == (206, b"789")
        assert _raw(url, headers={"Range": "bytes=-3"})[:2] == (206, b"789")
        assert _raw(url, headers={"Range": "bytes=2-4"})[:2] == (206, b"234")
        assert _raw(url, headers={"Range": "bytes=10-"})[0] == 416
        assert _raw(f"{hub.url}/{REPO}/resolve/{sha}/dir/f.txt")[:2] == (200, b"0123456789")

        status, _, headers = _raw(f"{hub.url}/org/none/resolve/main/x")
        assert (status, headers["X-Error-Code"]) == (404, "RepoNotFound")
        status, _, headers = _raw(f"{hub.url}/{REPO}/resolve/main/x")
        assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", sha)
        status, _, headers = _raw(f"{hub.url}/{REPO}/resolve/nope/dir/f.txt")
        assert (status, headers["X-Error-Code"]) == (404, "RevisionNotFound")

        hub.reset_log()
        hub.fail("f.txt", status=502, times=2, method="GET")
        hub.reset_mid_body("f.txt", after_bytes=4)
        assert hub.pending_faults() == 3
        assert _raw(url, "HEAD")[0] == 200  # method filter: HEAD does not consume the GET failures
        assert [_raw(url)[0] for _ in range(2)] == [502, 502]
        with pytest.raises(http.client.IncompleteRead):  # 4 of 10 bytes, then the connection drops
            _raw(url)
        assert hub.pending_faults() == 0
        assert _raw(url)[:2] == (200, b"0123456789")
        assert [r.status for r in hub.find("GET")] == [502, 502, 200, 200]
        assert hub.count(path_contains="f.txt") == 5
        assert hub.errors == []


def _post(url: str, payload: bytes, content_type: str) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, data=payload, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _ndjson(*ops: dict[str, object]) -> bytes:
    lines = [{"key": "header", "value": {"summary": "raw", "description": ""}}, *ops]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_commit_endpoint_accepts_raw_ndjson() -> None:
    """The wire format the client sends: a header line, then file/deletedFile/deletedFolder lines."""
    with HubServer() as hub:
        hub.commit(REPO, {"old.txt": b"old", "dir/a.txt": b"a", "dir/b/c.txt": b"c", "keep.txt": b"k"})
        payload = _ndjson(
            {"key": "file",
             "value": {"path": "new.txt", "encoding": "base64", "content": base64.b64encode(b"n").decode()}},
            {"key": "deletedFile", "value": {"path": "old.txt"}},
            {"key": "deletedFolder", "value": {"path": "dir"}},
        )
        status, out = _post(f"{hub.url}/api/models/{REPO}/commit/main", payload, "application/x-ndjson")
        assert status == 200 and out["commitOid"] == hub.head(REPO)
        assert str(out["commitUrl"]).endswith(f"/{REPO}/commit/{out['commitOid']}")
        assert hub.files(REPO) == {"new.txt": b"n", "keep.txt": b"k"}
        assert hub.errors == []


def test_what_no_test_needs_is_refused_loudly() -> None:
    """Routes and options the client never uses in our tests answer 404/400 saying so, never a made-up success."""
    with HubServer() as hub:
        sha = hub.add_file(REPO, "w.safetensors", b"x" * 100)
        lfs = {"key": "lfsFile", "value": {"path": "copy.safetensors", "algo": "sha256",
                                           "oid": hashlib.sha256(b"x" * 100).hexdigest(), "size": 100}}
        status, out = _post(f"{hub.url}/api/models/{REPO}/commit/main", _ndjson(lfs), "application/x-ndjson")
        assert status == 400 and "'lfsFile' is not supported by the fake hub" in str(out["error"])
        status, out = _post(f"{hub.url}/api/models/{REPO}/commit/main?create_pr=1", _ndjson(), "application/x-ndjson")
        assert status == 400 and "create_pr" in str(out["error"])
        status, out = _post(f"{hub.url}/api/repos/create", json.dumps({"name": "s", "type": "space"}).encode(),
                            "application/json")
        assert status == 400 and "'space'" in str(out["error"])
        status, out = _post(f"{hub.url}/api/models/{REPO}/paths-info/main", b"paths=w.safetensors&expand=True",
                            "application/x-www-form-urlencoded")
        assert status == 400 and "expand=true" in str(out["error"])
        assert _raw(f"{hub.url}/api/models/{REPO}/tree/main?expand=true")[0] == 400
        for path in ("whoami-v2", "agent-harnesses", f"models/{REPO}/refs", f"models/{REPO}/commits/main"):
            status, body, _ = _raw(f"{hub.url}/api/{path}")
            assert status == 404 and "Unknown" in json.loads(body)["error"], path
        assert hub.head(REPO) == sha and hub.files(REPO) == {"w.safetensors": b"x" * 100}  # nothing changed
        assert hub.errors == []


def test_env_vars_before_import_work_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """Documented alternative to patching: export HF_ENDPOINT & co. before huggingface_hub is imported."""
    with HubServer() as hub:
        hub.add_file(REPO, "cfg.json", b"from-subprocess")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(
            HF_ENDPOINT=hub.url,
            HF_HOME=str(tmp_path / "home"),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_XET="1",
        )
        code = (
            "from huggingface_hub import hf_hub_download;"
            f"print(open(hf_hub_download({REPO!r}, 'cfg.json'), 'rb').read().decode())"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "from-subprocess"
        assert [(r.method, r.status) for r in hub.requests] == [("HEAD", 200), ("GET", 200)]


def test_hub_client_env_restores_client_configuration(tmp_path: Path) -> None:
    from huggingface_hub import hf_api

    def client_config() -> tuple[str, str, str, str]:
        c = hf_constants
        return (c.ENDPOINT, c.HUGGINGFACE_CO_URL_TEMPLATE, c.HF_HUB_CACHE, hf_api.api.endpoint)

    before = client_config()
    env_before = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_DISABLE_XET")}
    with HubServer() as hub, hub_client_env(hub.url, tmp_path / "home") as env:
        endpoint, template, cache, api_endpoint = client_config()
        assert endpoint == api_endpoint == hub.url == env["HF_ENDPOINT"] == os.environ["HF_ENDPOINT"]
        assert template.startswith(hub.url + "/")
        assert cache == str(tmp_path / "home" / "hub")
        assert hf_constants.HF_HUB_DISABLE_XET and hf_constants.HF_HUB_DISABLE_TELEMETRY
        assert not hf_constants.HF_HUB_OFFLINE
    assert client_config() == before
    assert {k: os.environ.get(k) for k in env_before} == env_before
