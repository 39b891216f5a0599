"""What from_pretrained / get_config do when the Hub (or an HF_ENDPOINT mirror) misbehaves.

Every case drives the real ``huggingface_hub`` client against ``tests/hub_server.py`` with one fault switched
on: bytes that differ from what the ETag promises, a wrong ETag, a file that hashes right but does not parse,
a dead or failing endpoint. Expected hashes are computed here with ``hashlib`` from the bytes the test put on
the Hub, never taken from sae-hub.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import git_blob_sha1
from safetensors.torch import load_file

import sae_hub
import sae_hub.hub as hub_module
from sae_hub import SAE
from sae_hub.errors import CorruptFileError, DownloadError, IntegrityError, MissingFileError

FIX = Path(__file__).parent / "fixtures" / "sae_lens"
REPO = "test-org/gpt2-saes"
WEIGHTS = "blocks.3/topk/sae_weights.safetensors"
CFG = "blocks.3/topk/cfg.json"


@pytest.fixture(autouse=True)
def fresh_registry():
    sae_hub.registry.reset()
    yield
    sae_hub.registry.reset()


def seed(hub) -> None:
    for name in ("cfg.json", "sae_weights.safetensors"):
        hub.add_file(REPO, f"blocks.3/topk/{name}", (FIX / "topk" / name).read_bytes())
    sae_hub.registry.add({"releases": [{
        "name": "test-gpt2-res", "model": "gpt2", "repo_id": REPO, "format": "saelens",
        "hook": "blocks.3.hook_resid_post", "saes": [{"id": "topk", "path": "blocks.3/topk"}]}]})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flipped(data: bytes, n_bytes: int = 64) -> bytes:
    """What ``hub.corrupt`` serves by default: ``n_bytes`` bytes from the middle XOR 0xFF."""
    out = bytearray(data)
    for i in range(len(out) // 2, min(len(out), len(out) // 2 + n_bytes)):
        out[i] ^= 0xFF
    return bytes(out)


def assert_correct_weights(sae: SAE) -> None:
    ref = load_file(FIX / "topk" / "reference.safetensors")
    torch.testing.assert_close(sae(ref["x"]), ref["recon"], atol=1e-5, rtol=1e-5)


def cached(hub_cache: Path, repo_path: str) -> tuple[list[Path], list[Path]]:
    """(snapshot links for repo_path that still point at a file, every blob in the repo's cache folder)."""
    folder = hub_cache / ("models--" + REPO.replace("/", "--"))
    links = [p for p in (folder / "snapshots").glob(f"*/{repo_path}") if p.exists()]
    blobs = [p for p in (folder / "blobs").iterdir() if p.is_file()] if (folder / "blobs").is_dir() else []
    return links, blobs


# ------------------------------------------------------------------------------------ defect 1: verification


def test_corrupted_bytes_with_right_etag_are_refused_evicted_then_recover(hub, hub_cache):
    seed(hub)
    good = (FIX / "topk" / "sae_weights.safetensors").read_bytes()
    hub.corrupt(WEIGHTS, times=1)
    with pytest.raises(IntegrityError) as e:
        SAE.from_pretrained("test-gpt2-res", "topk")
    msg = str(e.value)
    assert REPO in msg and WEIGHTS in msg and sha256(good) in msg and sha256(flipped(good)) in msg
    links, blobs = cached(hub_cache, WEIGHTS)
    assert links == [] and sha256(good) not in [b.name for b in blobs]  # blob AND snapshot link are gone
    sae = SAE.from_pretrained("test-gpt2-res", "topk")  # the server is fixed (the fault fired once)
    assert_correct_weights(sae)
    assert hub.count("GET", WEIGHTS) == 2


def test_offline_after_a_refused_download_does_not_load_the_wrong_weights(hub):
    seed(hub)
    hub.corrupt(WEIGHTS, times=1)
    with pytest.raises(IntegrityError):
        SAE.from_pretrained("test-gpt2-res", "topk")
    with pytest.raises(MissingFileError, match="sae_weights.safetensors"):
        SAE.from_pretrained("test-gpt2-res", "topk", local_files_only=True)


def test_bad_blob_cached_by_another_client_is_caught_offline(hub, hub_cache):
    """A blob that huggingface_hub cached under the right name with the wrong bytes (plain hf_hub_download, an
    older sae-hub): the first load, even offline, hashes it once and refuses it."""
    from huggingface_hub import hf_hub_download

    seed(hub)
    hf_hub_download(REPO, CFG)
    hf_hub_download(REPO, WEIGHTS)
    hub.corrupt(WEIGHTS, times=1)
    hf_hub_download(REPO, WEIGHTS, force_download=True)  # the client accepts the corrupted bytes
    with pytest.raises(IntegrityError, match="sha256"):
        SAE.from_pretrained("test-gpt2-res", "topk", local_files_only=True)
    assert cached(hub_cache, WEIGHTS)[0] == []
    assert_correct_weights(SAE.from_pretrained("test-gpt2-res", "topk"))


@pytest.mark.parametrize(("repo_path", "kind"), [(WEIGHTS, "sha256"), (CFG, "git-sha1")])
def test_wrong_etag_is_refused(hub, hub_cache, repo_path, kind):
    """Right bytes, wrong ETag: the cache would file them under a name they do not hash to."""
    seed(hub)
    bad = "ab" * (32 if kind == "sha256" else 20)
    hub.wrong_etag(repo_path, etag=bad, method="HEAD")
    with pytest.raises(IntegrityError) as e:
        SAE.from_pretrained("test-gpt2-res", "topk")
    data = hub.files(REPO)[repo_path]
    actual = sha256(data) if kind == "sha256" else git_blob_sha1(data)
    assert e.value.field == kind and bad in str(e.value) and actual in str(e.value) and repo_path in str(e.value)
    assert cached(hub_cache, repo_path)[0] == [] and bad not in [b.name for b in cached(hub_cache, repo_path)[1]]
    assert_correct_weights(SAE.from_pretrained("test-gpt2-res", "topk"))


def test_etag_that_is_not_a_hash_is_checked_against_the_repo_tree(hub):
    """A mirror whose ETags are not content hashes: the repo tree's lfs.sha256 is the reference instead."""
    seed(hub)
    hub.wrong_etag(WEIGHTS, etag="mirror-etag-1", method="HEAD")
    hub.corrupt(WEIGHTS)
    with pytest.raises(IntegrityError, match="repo tree"):
        SAE.from_pretrained("test-gpt2-res", "topk")
    hub.wrong_etag(WEIGHTS, etag="mirror-etag-2", method="HEAD")
    sae = SAE.from_pretrained("test-gpt2-res", "topk")  # right bytes, odd ETag: verified through the tree
    assert_correct_weights(sae)
    good = (FIX / "topk" / "sae_weights.safetensors").read_bytes()
    assert {f["name"].rsplit("/", 1)[-1]: f["sha256"] for f in sae.cfg.provenance.source_files}[
        "sae_weights.safetensors"] == sha256(good)


def test_unverifiable_offline_is_hashed_once_and_checked_online_without_rehash(hub, monkeypatch):
    """Offline, a blob whose name is not a hash (mirror ETag) cannot be checked: its sha256 is computed once and
    recorded. The next online load checks that recorded hash against the repo tree without hashing again."""
    from huggingface_hub import hf_hub_download

    seed(hub)
    hf_hub_download(REPO, CFG)
    hub.wrong_etag(WEIGHTS, etag="mirror-etag", method="HEAD")
    hf_hub_download(REPO, WEIGHTS)  # cached as blobs/mirror-etag
    hashed: list[str] = []
    real = hub_module._hash_file
    monkeypatch.setattr(hub_module, "_hash_file", lambda p, git_sha1: hashed.append(Path(p).name) or real(p, git_sha1))
    good = sha256((FIX / "topk" / "sae_weights.safetensors").read_bytes())
    for _ in range(2):
        sae = SAE.from_pretrained("test-gpt2-res", "topk", local_files_only=True)
        assert {f["name"].rsplit("/", 1)[-1]: f["sha256"] for f in sae.cfg.provenance.source_files}[
            "sae_weights.safetensors"] == good
    assert hashed.count("mirror-etag") == 1
    hub.reset_log()
    hub.wrong_etag(WEIGHTS, etag="mirror-etag", method="HEAD")
    assert_correct_weights(SAE.from_pretrained("test-gpt2-res", "topk"))
    assert hashed.count("mirror-etag") == 1 and hub.count("POST", "paths-info") == 1


def test_registry_pin_mismatch_names_both_hashes_and_evicts(hub, hub_cache):
    seed(hub)
    pin = "0" * 64
    good = sha256((FIX / "topk" / "sae_weights.safetensors").read_bytes())
    sae_hub.registry.add({"releases": [{"name": "pinned", "model": "gpt2", "repo_id": REPO, "format": "saelens",
                                        "saes": [{"id": "topk", "path": "blocks.3/topk", "sha256": pin}]}]})
    with pytest.raises(IntegrityError) as e:
        SAE.from_pretrained("pinned", "topk")
    assert pin in str(e.value) and good in str(e.value) and REPO in str(e.value) and WEIGHTS in str(e.value)
    assert cached(hub_cache, WEIGHTS)[0] == [] and good not in [b.name for b in cached(hub_cache, WEIGHTS)[1]]


def test_registry_pin_mismatch_never_deletes_a_local_release(tmp_path):
    import shutil

    shutil.copytree(FIX / "topk", tmp_path / "saes" / "L3")
    sae_hub.registry.add({"releases": [{"name": "lab", "model": "gpt2", "local_path": str(tmp_path / "saes"),
                                        "format": "saelens", "saes": [{"id": "l3", "path": "L3",
                                                                       "sha256": "0" * 64}]}]})
    with pytest.raises(IntegrityError, match="0" * 64):
        SAE.from_pretrained("lab", "l3")
    assert (tmp_path / "saes" / "L3" / "sae_weights.safetensors").is_file()  # the user's own file stays


def test_provenance_sha256_is_the_hash_of_the_bytes(hub):
    seed(hub)
    sae = SAE.from_pretrained("test-gpt2-res", "topk")
    files = hub.files(REPO)
    head = hub.head(REPO)
    got = {f["name"]: f.get("sha256") for f in sae.cfg.provenance.source_files}
    assert got == {f"hf://{REPO}@{head}/{p}": sha256(files[p]) for p in (CFG, WEIGHTS)}
    cached_again = SAE.from_pretrained("test-gpt2-res", "topk", local_files_only=True)
    assert {f["name"]: f.get("sha256") for f in cached_again.cfg.provenance.source_files} == got


def test_cached_verified_load_hashes_nothing_but_a_changed_blob_is_hashed_again(hub, hub_cache, monkeypatch):
    seed(hub)
    sae_hub.registry.add({"releases": [{"name": "pinned", "model": "gpt2", "repo_id": REPO, "format": "saelens",
                                        "saes": [{"id": "topk", "path": "blocks.3/topk", "sha256": sha256(
                                            (FIX / "topk" / "sae_weights.safetensors").read_bytes())}]}]})
    hashed: list[str] = []
    real = hub_module._hash_file

    def counting(path: Path, git_sha1: bool) -> tuple[str, str | None]:
        hashed.append(Path(path).name)
        return real(path, git_sha1)

    monkeypatch.setattr(hub_module, "_hash_file", counting)
    SAE.from_pretrained("pinned", "topk")
    assert len(hashed) == 2  # cfg.json (git sha1 + sha256 in one pass) and the weights, once each
    hashed.clear()
    SAE.from_pretrained("pinned", "topk")
    SAE.from_pretrained("pinned", "topk", local_files_only=True)
    assert hashed == []  # the registry pin is checked against the recorded hash too
    link = cached(hub_cache, WEIGHTS)[0][0]
    blob = link.resolve()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))  # damaged on disk after it was verified: new mtime, hashed again
    with pytest.raises(IntegrityError):
        SAE.from_pretrained("pinned", "topk", local_files_only=True)
    assert len(hashed) == 1 and not link.exists()


# ------------------------------------------------------------------------- defect 2: unparseable cached files


def _damage_in_place(path: Path, offset: int, data: bytes) -> None:
    """Overwrite bytes of a cached blob keeping its size, mtime and inode: damage the marker cannot see."""
    blob = path.resolve()
    st = blob.stat()
    blob.chmod(0o644)
    with open(blob, "r+b") as f:
        f.seek(offset)
        f.write(data)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_cached_file_failing_header_parse_is_evicted_then_refetched(hub, hub_cache):
    seed(hub)
    SAE.from_pretrained("test-gpt2-res", "topk")
    link = cached(hub_cache, WEIGHTS)[0][0]
    _damage_in_place(link, 0, (1 << 40).to_bytes(8, "little"))  # header length now absurd
    with pytest.raises(CorruptFileError, match="evicted") as e:
        SAE.from_pretrained("test-gpt2-res", "topk")
    assert "sae_weights.safetensors" in str(e.value)
    assert cached(hub_cache, WEIGHTS)[0] == []
    hub.reset_log()
    assert_correct_weights(SAE.from_pretrained("test-gpt2-res", "topk"))
    assert hub.count("GET", WEIGHTS) == 1  # fetched again, without force_download


def test_cached_npz_failing_crc_is_evicted_then_refetched(hub, hub_cache):
    rng = np.random.default_rng(0)
    d, n = 8, 32
    params = {"W_enc": rng.normal(size=(d, n)).astype(np.float32), "W_dec": rng.normal(size=(n, d)).astype(np.float32),
              "b_enc": rng.normal(size=n).astype(np.float32), "b_dec": rng.normal(size=d).astype(np.float32),
              "threshold": np.abs(rng.normal(size=n)).astype(np.float32)}
    buf = io.BytesIO()
    np.savez(buf, **params)
    repo, path = "google/gemma-scope-test", "layer_5/width_32/average_l0_6/params.npz"
    hub.add_file(repo, path, buf.getvalue())
    SAE.from_pretrained(repo, "layer_5/width_32/average_l0_6")
    link = next((hub_cache / "models--google--gemma-scope-test" / "snapshots").glob(f"*/{path}"))
    raw = link.read_bytes()
    at = raw.index(params["W_dec"].tobytes()[:32])
    _damage_in_place(link, at, bytes(b ^ 0xFF for b in raw[at:at + 4]))  # inside W_dec: its CRC-32 fails
    with pytest.raises(CorruptFileError, match="CRC.*evicted"):
        SAE.from_pretrained(repo, "layer_5/width_32/average_l0_6")
    assert not link.exists()
    sae = SAE.from_pretrained(repo, "layer_5/width_32/average_l0_6")
    torch.testing.assert_close(sae.W_dec.detach(), torch.from_numpy(params["W_dec"]))


# ------------------------------------------------------------------------ defect 3: dead or failing Hub


def test_dead_server_is_a_download_error_naming_repo_and_file(hub, no_backoff_sleep):
    seed(hub)
    hub.add_file("test-org/bare", "blocks.3/topk/cfg.json", (FIX / "topk" / "cfg.json").read_bytes())
    hub.stop()
    with pytest.raises(DownloadError) as e:
        SAE.from_pretrained("test-gpt2-res", "topk")
    assert not isinstance(e.value, MissingFileError)
    assert REPO in str(e.value) and "blocks.3/topk/cfg.json" in str(e.value) and "Connect" in str(e.value)
    with pytest.raises(DownloadError, match="test-org/bare/blocks.3/topk") as e:  # a repo id: the listing fails
        SAE.from_pretrained("test-org/bare", "blocks.3/topk")
    assert not isinstance(e.value, MissingFileError)


def test_persistent_503_is_a_download_error(hub, no_backoff_sleep):
    seed(hub)
    hub.down(503)
    with pytest.raises(DownloadError, match="503") as e:
        SAE.from_pretrained("test-gpt2-res", "topk")
    assert REPO in str(e.value) and "blocks.3/topk/cfg.json" in str(e.value)
    hub.clear_faults()
    assert_correct_weights(SAE.from_pretrained("test-gpt2-res", "topk"))


def test_dead_server_with_a_cached_sae_still_loads(hub, no_backoff_sleep):
    seed(hub)
    SAE.from_pretrained("test-gpt2-res", "topk")
    hub.stop()
    assert_correct_weights(SAE.from_pretrained("test-gpt2-res", "topk"))


def test_offline_with_nothing_cached_stays_missing_with_the_offline_hint(hub):
    seed(hub)
    with pytest.raises(MissingFileError, match="offline"):
        SAE.from_pretrained("test-gpt2-res", "topk", local_files_only=True)
    assert hub.requests == []


def test_get_config_dead_or_failing_hub_is_a_download_error(hub, tmp_path, no_backoff_sleep):
    """Both get_config paths: config files only (saelens) and remote safetensors headers (Gemma Scope 2)."""
    from safetensors.torch import save_file

    seed(hub)
    save_file({"w_enc": torch.zeros(4, 8), "w_dec": torch.zeros(8, 4), "b_enc": torch.zeros(8),
               "b_dec": torch.zeros(4), "threshold": torch.zeros(8)}, tmp_path / "params.safetensors")
    hub.add_file("google/gs2-test", "l5/params.safetensors", (tmp_path / "params.safetensors").read_bytes())
    sae_hub.registry.add({"releases": [{"name": "gs2-test", "model": "gemma-3-1b", "repo_id": "google/gs2-test",
                                        "format": "gemma-scope-2", "saes": [{"id": "l5", "path": "l5"}]}]})
    hub.down(500)
    for release, sae_id, repo in (("test-gpt2-res", "topk", REPO), ("gs2-test", "l5", "google/gs2-test")):
        with pytest.raises(DownloadError, match="500") as e:
            SAE.get_config(release, sae_id)
        assert repo in str(e.value) and not isinstance(e.value, MissingFileError)
    hub.clear_faults()
    hub.fail("params.safetensors", status=503, times=1000)  # listing works, the header read does not
    with pytest.raises(DownloadError, match="params.safetensors"):
        SAE.get_config("gs2-test", "l5")
    hub.clear_faults()
    hub.stop()
    with pytest.raises(DownloadError, match="Connect"):
        SAE.get_config("test-gpt2-res", "topk")


def test_get_config_records_verified_config_hash_and_no_weights_hash(hub, tmp_path):
    """The header-only path: config.json is fetched through the cache and checked (git sha1); the weights are
    read by byte ranges, so no hash of them is claimed."""
    from safetensors.torch import save_file

    save_file({"w_enc": torch.zeros(4, 8), "w_dec": torch.zeros(8, 4), "b_enc": torch.zeros(8),
               "b_dec": torch.zeros(4), "threshold": torch.zeros(8)}, tmp_path / "params.safetensors")
    cfg_json = json.dumps({"model_name": "gemma-3-1b"}).encode()
    hub.commit("google/gs2-test", {"l5/params.safetensors": (tmp_path / "params.safetensors").read_bytes(),
                                   "l5/config.json": cfg_json})
    sae_hub.registry.add({"releases": [{"name": "gs2-test", "model": "gemma-3-1b", "repo_id": "google/gs2-test",
                                        "format": "gemma-scope-2", "saes": [{"id": "l5", "path": "l5"}]}]})
    cfg = SAE.get_config("gs2-test", "l5")
    got = {f["name"].rsplit("/", 1)[-1]: f.get("sha256") for f in cfg.provenance.source_files}
    assert got == {"config.json": sha256(cfg_json), "params.safetensors": None}
    hub.wrong_etag("l5/config.json", method="HEAD")
    hub.add_file("google/gs2-test", "l5/config.json", json.dumps({"model_name": "gemma-3-4b"}).encode())
    with pytest.raises(IntegrityError, match="config.json"):
        SAE.get_config("gs2-test", "l5")


def _pointer_oid(data: bytes) -> str:
    """The git oid of ``data``'s LFS pointer file (the Hub's plain ``ETag`` of an LFS file)."""
    return git_blob_sha1(f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(data)}\nsize {len(data)}\n"
                         .encode())


def test_lfs_file_named_by_its_pointer_oid_is_checked_not_refused(hub, hub_cache):
    """A mirror or proxy that drops ``X-Linked-Etag`` leaves the client the pointer's git oid as the ETag: the right
    bytes must load (the oid is derived from their sha256), wrong bytes must still be refused."""
    seed(hub)
    good = (FIX / "topk" / "sae_weights.safetensors").read_bytes()
    hub.wrong_etag(WEIGHTS, etag=_pointer_oid(good), method="HEAD")
    sae = SAE.from_pretrained("test-gpt2-res", "topk")
    assert_correct_weights(sae)
    got = {f["name"].rsplit("/", 1)[-1]: f["sha256"] for f in sae.cfg.provenance.source_files}
    assert got["sae_weights.safetensors"] == sha256(good)
    hub.wrong_etag(WEIGHTS, etag=_pointer_oid(good), method="HEAD")
    hub.corrupt(WEIGHTS, times=1)
    with pytest.raises(IntegrityError, match="git-sha1"):
        SAE.from_pretrained("test-gpt2-res", "topk", force_download=True)
    assert cached(hub_cache, WEIGHTS)[0] == []


def test_registry_pin_is_not_checked_against_the_config_when_the_weights_are_absent(hub, hub_cache):
    """Offline after a refused download only cfg.json is cached: the answer is "weights missing", not a pin mismatch
    blamed on (and evicting) the good cfg.json."""
    seed(hub)
    good = sha256((FIX / "topk" / "sae_weights.safetensors").read_bytes())
    sae_hub.registry.add({"releases": [{"name": "pinned", "model": "gpt2", "repo_id": REPO, "format": "saelens",
                                        "saes": [{"id": "topk", "path": "blocks.3/topk", "sha256": good}]}]})
    hub.corrupt(WEIGHTS, times=1)
    with pytest.raises(IntegrityError, match="sae_weights.safetensors"):
        SAE.from_pretrained("pinned", "topk")
    with pytest.raises(MissingFileError, match="sae_weights.safetensors"):
        SAE.from_pretrained("pinned", "topk", local_files_only=True)
    assert len(cached(hub_cache, CFG)[0]) == 1  # the good cfg.json stays cached
    assert_correct_weights(SAE.from_pretrained("pinned", "topk"))


# ------------------------------------------------------------------- item 4: an hf:// registry YAML fetch


def test_hf_registry_yaml_fetch_failures_are_typed_and_name_the_cause(hub, hub_cache, no_backoff_sleep):
    """``registry.add("hf://...")`` used to turn every failure into a RegistryError ("the YAML is wrong") carrying
    huggingface_hub's "cannot find the requested files" text, the refused connection or 503 nowhere in it."""
    url = "hf://lab/registry/registry.yaml"
    text = b"releases:\n  - {name: hub-rel, model: gpt2, repo_id: lab/saes, format: saelens, saes: [{id: a}]}\n"
    hub.add_file("lab/registry", "registry.yaml", text)
    with pytest.raises(MissingFileError, match="could not fetch registry file") as e:
        sae_hub.registry.add("hf://lab/registry/other.yaml")
    assert e.value.path == "hf://lab/registry/other.yaml"
    hub.wrong_etag("registry.yaml", method="HEAD")  # the YAML's bytes are checked like an SAE's
    with pytest.raises(IntegrityError, match="git-sha1"):
        sae_hub.registry.add(url)
    assert [p for p in (hub_cache / "models--lab--registry" / "snapshots").glob("*/registry.yaml") if p.exists()] == []
    hub.down(503)
    with pytest.raises(DownloadError, match="503") as e:
        sae_hub.registry.add(url)
    assert e.value.path == url and not isinstance(e.value, MissingFileError)
    hub.clear_faults()
    assert sae_hub.registry.add(url) == ["hub-rel"]  # recovered: fetched again, checked, parsed
    hub.stop()
    with pytest.raises(DownloadError, match="Connect") as e:
        sae_hub.registry.add("hf://lab/registry/not-cached.yaml")
    assert e.value.path == "hf://lab/registry/not-cached.yaml"
