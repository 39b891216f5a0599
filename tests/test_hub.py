"""from_pretrained / get_config / push_to_hub through the real huggingface_hub client against a local Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sae_hub
from sae_hub import SAE, SAEConfig
from sae_hub.errors import (
    CorruptFileError,
    DownloadError,
    FormatDetectionError,
    IntegrityError,
    MissingFileError,
    RegistryError,
    UnknownReleaseError,
    UnknownSAEError,
)
from sae_hub.files import sha256_file

FIX = Path(__file__).parent / "fixtures" / "sae_lens"
REPO = "test-org/gpt2-saes"


@pytest.fixture(autouse=True)
def fresh_registry():
    sae_hub.registry.reset()
    yield
    sae_hub.registry.reset()


def seed(hub, repo: str = REPO) -> None:
    """A repo with two SAELens folders plus files a loader must not fetch."""
    for case, folder in (("topk", "blocks.3/topk"), ("jumprelu", "blocks.3/jumprelu")):
        for name in ("cfg.json", "sae_weights.safetensors"):
            hub.add_file(repo, f"{folder}/{name}", (FIX / case / name).read_bytes())
    hub.add_file(repo, "blocks.3/topk/reference.safetensors", (FIX / "topk" / "reference.safetensors").read_bytes())
    hub.add_file(repo, "blocks.3/topk/optimizer_state.pt", os.urandom(4096))
    hub.add_file(repo, "README.md", b"# saes\n")


def add_release(**over) -> None:
    rel = {"name": "test-gpt2-res", "model": "gpt2", "repo_id": REPO, "format": "saelens",
           "hook": "blocks.{layer}.hook_resid_post",
           "saes": [{"id": "layer_{layer}/{kind}", "path": "blocks.{layer}/{kind}", "l0": 6,
                     "neuronpedia": "gpt2/{layer}-test-{kind}",
                     "expand": [{"layer": 3, "kind": ["topk", "jumprelu"]}]}]}
    rel.update(over)
    sae_hub.registry.add({"releases": [rel]})


def gets(hub) -> list[str]:
    requests = hub.find(method="GET", path_contains="/resolve/")
    return sorted(r.path.split("/resolve/")[1].split("/", 1)[1] for r in requests)


def reference(case: str) -> dict[str, torch.Tensor]:
    return load_file(FIX / case / "reference.safetensors")


def test_from_pretrained_registry_release_fetches_only_needed_files(hub):
    seed(hub)
    add_release()
    sae = SAE.from_pretrained("test-gpt2-res", "layer_3/topk")
    ref = reference("topk")
    torch.testing.assert_close(sae.encode(ref["x"]), ref["codes"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(ref["x"]), ref["recon"], atol=1e-5, rtol=1e-5)
    assert gets(hub) == ["blocks.3/topk/cfg.json", "blocks.3/topk/sae_weights.safetensors"]
    c = sae.cfg
    assert c.hook_name == "blocks.3.hook_resid_post" and c.neuronpedia_id == "gpt2/3-test-topk"
    assert c.extra["release"] == {"name": "test-gpt2-res", "sae_id": "layer_3/topk"}
    assert all(f["name"].startswith(f"hf://{REPO}@") for f in c.provenance.source_files)


def test_cached_load_request_counts(hub):
    seed(hub)
    add_release()
    SAE.from_pretrained("test-gpt2-res", "layer_3/jumprelu")
    hub.reset_log()
    SAE.from_pretrained("test-gpt2-res", "layer_3/jumprelu")
    online = len(hub.requests)
    assert hub.count(method="GET") == 0 and online <= 3  # metadata HEADs only, no body re-download
    hub.reset_log()
    sae = SAE.from_pretrained("test-gpt2-res", "layer_3/jumprelu", local_files_only=True)
    assert len(hub.requests) == 0
    ref = reference("jumprelu")
    torch.testing.assert_close(sae.encode(ref["x"]), ref["codes"], atol=1e-5, rtol=1e-5)


def test_hf_hub_offline_makes_zero_requests_in_a_fresh_process(hub, tmp_path):
    seed(hub)
    SAE.from_pretrained(REPO, "blocks.3/topk")  # warm the cache (direct repo id, format detected)
    hub.reset_log()
    code = (f"from sae_hub import SAE; s = SAE.from_pretrained({REPO!r}, 'blocks.3/topk'); "
            "print(s.cfg.architecture)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "topk"
    assert hub.requests == []


def test_direct_repo_id_detects_format(hub):
    seed(hub)
    sae = SAE.from_pretrained(REPO, "blocks.3/jumprelu")
    assert sae.cfg.architecture == "jumprelu" and sae.cfg.provenance.source_format == "saelens"
    assert "blocks.3/topk/optimizer_state.pt" not in gets(hub)


def test_revision_pin(hub):
    seed(hub)
    first = hub.head(REPO)
    cfg = json.loads((FIX / "topk" / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.9.hook_resid_post"
    hub.add_file(REPO, "blocks.3/topk/cfg.json", json.dumps(cfg).encode())
    assert SAE.from_pretrained(REPO, "blocks.3/topk").cfg.hook_name == "blocks.9.hook_resid_post"
    assert SAE.from_pretrained(REPO, "blocks.3/topk", revision=first).cfg.hook_name == "blocks.3.hook_resid_post"


def test_get_config_fetches_no_weights(hub):
    seed(hub)
    add_release()
    cfg = SAE.get_config("test-gpt2-res", "layer_3/topk")
    assert cfg.architecture == "topk" and cfg.k == 6 and cfg.neuronpedia_id == "gpt2/3-test-topk"
    assert gets(hub) == ["blocks.3/topk/cfg.json"]


def test_local_folder_release(tmp_path):
    (tmp_path / "saes").mkdir()
    import shutil

    shutil.copytree(FIX / "gated", tmp_path / "saes" / "L3")
    yaml_file = tmp_path / "lab.yaml"
    yaml_file.write_text(
        "releases:\n"
        "  - name: lab-gated\n    model: gpt2\n    local_path: saes\n    format: saelens\n"
        "    saes:\n      - {id: layer3, path: L3, neuronpedia: gpt2/3-lab}\n")
    assert sae_hub.registry.add(yaml_file) == ["lab-gated"]
    sae = SAE.from_pretrained("lab-gated", "layer3")
    ref = reference("gated")
    torch.testing.assert_close(sae(ref["x"]), ref["recon"], atol=1e-5, rtol=1e-5)
    assert sae.cfg.neuronpedia_id == "gpt2/3-lab"


def test_unknown_names_list_closest_matches(hub):
    add_release()
    with pytest.raises(UnknownReleaseError, match="test-gpt2-res"):
        SAE.from_pretrained("test-gpt2-ress", "layer_3/topk")
    with pytest.raises(UnknownSAEError, match="layer_3/topk"):
        SAE.from_pretrained("test-gpt2-res", "layer_3/topkk")
    with pytest.raises(UnknownReleaseError, match="use SAE.from_pretrained\\('test-gpt2-res'"):
        SAE.from_pretrained(REPO, "blocks.3/topk")


def test_transient_5xx_is_retried(hub, no_backoff_sleep):
    seed(hub)
    add_release()
    hub.fail("sae_weights.safetensors", status=503, times=1, method="HEAD")
    sae = SAE.from_pretrained("test-gpt2-res", "layer_3/topk")
    assert sae.cfg.architecture == "topk"


def test_persistent_failure_names_repo_and_file_then_recovers(hub, no_backoff_sleep):
    seed(hub)
    add_release()
    hub.fail("sae_weights.safetensors", status=500, times=100, method="GET")
    with pytest.raises(DownloadError) as e:
        SAE.from_pretrained("test-gpt2-res", "layer_3/topk")
    assert REPO in str(e.value) and "blocks.3/topk/sae_weights.safetensors" in str(e.value)
    assert not list(Path(os.environ["HF_HUB_CACHE"]).rglob("*.incomplete"))
    hub.clear_faults()
    assert SAE.from_pretrained("test-gpt2-res", "layer_3/topk").cfg.k == 6


def test_connection_reset_mid_body_leaves_no_partial_file(hub, no_backoff_sleep):
    seed(hub)
    add_release()
    hub.reset_mid_body("sae_weights.safetensors", after_bytes=1000, times=1)
    sae = SAE.from_pretrained("test-gpt2-res", "layer_3/topk")  # the client retries the download
    ref = reference("topk")
    torch.testing.assert_close(sae(ref["x"]), ref["recon"], atol=1e-5, rtol=1e-5)
    assert not list(Path(os.environ["HF_HUB_CACHE"]).rglob("*.incomplete"))


def test_eight_processes_download_once(hub):
    seed(hub)
    code = (f"from sae_hub import SAE; s = SAE.from_pretrained({REPO!r}, 'blocks.3/topk', format='saelens'); "
            "print(int(s.cfg.k))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [o[1][-500:] for o in outs]
    assert [o[0].strip() for o in outs] == ["6"] * 8
    assert hub.count(method="GET", path_contains="blocks.3/topk/sae_weights.safetensors") == 1


def test_registry_entry_pointing_at_missing_path(hub):
    seed(hub)
    add_release(saes=[{"id": "ghost", "path": "blocks.7/none", "vars": {"layer": 7}}])
    with pytest.raises(MissingFileError, match="blocks.7/none"):
        SAE.from_pretrained("test-gpt2-res", "ghost")


def test_repo_without_recognisable_sae(hub):
    hub.add_file("test-org/misc", "stuff/notes.txt", b"hello")
    with pytest.raises(FormatDetectionError, match="notes.txt"):
        SAE.from_pretrained("test-org/misc", "stuff")


def test_malformed_cfg_json_on_the_hub(hub):
    seed(hub)
    hub.add_file(REPO, "blocks.3/topk/cfg.json", b"{not json")
    with pytest.raises(CorruptFileError, match="cfg.json"):
        SAE.from_pretrained(REPO, "blocks.3/topk")


def test_sha256_mismatch_is_refused_and_not_kept(hub):
    seed(hub)
    good = sha256_file(FIX / "topk" / "sae_weights.safetensors")
    add_release(saes=[{"id": "pinned", "path": "blocks.3/topk", "sha256": "0" * 64, "vars": {"layer": 3}}])
    with pytest.raises(IntegrityError, match="sha256"):
        SAE.from_pretrained("test-gpt2-res", "pinned")
    cached = [p for p in Path(os.environ["HF_HUB_CACHE"]).rglob("sae_weights.safetensors")]
    assert not [p for p in cached if p.exists()]
    sae_hub.registry.reset()
    add_release(saes=[{"id": "pinned", "path": "blocks.3/topk", "sha256": good, "vars": {"layer": 3}}])
    assert SAE.from_pretrained("test-gpt2-res", "pinned").cfg.k == 6


def test_push_to_hub_round_trip_with_model_card(hub):
    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(architecture="topk", d_in=16, d_sae=32, k=4, model_name="openai-community/gpt2",
                        hook_name="blocks.2.hook_resid_post", license="mit", extra={"metrics": {"fvu": 0.12}}))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    url = sae.push_to_hub("me/my-sae")
    assert url
    back = SAE.from_pretrained("me/my-sae", "")
    x = torch.randn(5, 16, generator=g)
    torch.testing.assert_close(back(x), sae(x))
    card = hub.files("me/my-sae")["README.md"].decode()
    assert "library_name: sae-hub" in card and "base_model: openai-community/gpt2" in card
    assert "fvu" in card and "blocks.2.hook_resid_post" in card
    sae.push_to_hub("me/my-sae", "layer2/topk")
    assert SAE.from_pretrained("me/my-sae", "layer2/topk").cfg.k == 4


def test_entry_for_returns_a_valid_entry_and_prints_nothing(capsys):
    text = sae_hub.registry.entry_for("me/my-sae", model="gpt2", saes=[{"id": "l2", "path": "layer2/topk"}])
    assert "repo_id: me/my-sae" in text
    assert capsys.readouterr().out == ""  # library code returns; the caller prints
    import yaml

    assert sae_hub.registry.add(yaml.safe_load(text)) == ["my-sae"]
    assert sae_hub.list_saes("my-sae") == ["l2"]


def _header_only_gets(hub, name: str) -> list[str]:
    return [r.headers.get("range", "FULL") for r in hub.find(method="GET", path_contains=name)]


def test_get_config_reads_only_safetensors_headers(hub, tmp_path):
    """Gemma Scope 2 has no config file to fetch: the header (shapes) and small tensors are read by range."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    d, n = 32, 4096
    folder = "resid_post/layer_5_width_4k_l0_small"
    save_file({"w_enc": torch.randn(d, n, generator=g), "w_dec": torch.randn(n, d, generator=g),
               "b_enc": torch.randn(n, generator=g), "b_dec": torch.randn(d, generator=g),
               "threshold": torch.rand(n, generator=g)}, tmp_path / "params.safetensors")
    hub.add_file("google/gs2-test", f"{folder}/params.safetensors", (tmp_path / "params.safetensors").read_bytes())
    sae_hub.registry.add({"releases": [{"name": "gs2-test", "model": "gemma-3-1b", "repo_id": "google/gs2-test",
                                        "format": "gemma-scope-2", "saes": [{"id": "l5", "path": folder}]}]})
    hub.reset_log()
    cfg = SAE.get_config("gs2-test", "l5")
    assert (cfg.architecture, cfg.d_in, cfg.d_sae) == ("jumprelu", d, n)
    ranges = _header_only_gets(hub, "params.safetensors")
    assert ranges and "FULL" not in ranges
    fetched = sum(int(r.split("-")[1]) - int(r.split("=")[1].split("-")[0]) + 1 for r in ranges)
    assert fetched < (tmp_path / "params.safetensors").stat().st_size / 4
    full = SAE.from_pretrained("gs2-test", "l5").cfg
    assert (full.architecture, full.d_in, full.d_sae, full.hook_name) == (cfg.architecture, cfg.d_in, cfg.d_sae,
                                                                          cfg.hook_name)


def test_get_config_lm_saes_uses_real_norm_constants(hub):
    """lm-saes keeps its dataset norms as tiny tensors in the weights file: they are fetched, the rest is not."""
    case = Path(__file__).parent / "fixtures" / "llamascopium" / "jumprelu_dataset_wise"
    for name in ("config.json", "sae_weights.safetensors"):
        hub.add_file("org/lms", f"L6R/{name}", (case / name).read_bytes())
    sae_hub.registry.add({"releases": [{"name": "lms-test", "model": "m", "repo_id": "org/lms", "format": "lm-saes",
                                        "saes": [{"id": "L6R", "path": "L6R"}]}]})
    cfg = SAE.get_config("lms-test", "L6R")
    full = SAE.from_pretrained("lms-test", "L6R").cfg
    assert cfg.norm_scaling_factor == pytest.approx(full.norm_scaling_factor)
    assert (cfg.architecture, cfg.d_in, cfg.d_sae, cfg.hook_name) == (full.architecture, full.d_in, full.d_sae,
                                                                      full.hook_name)


def _override_release(tmp_path: Path, sae_id: str, kind: str, config: str) -> Path:
    """A registry YAML file whose one SAE carries ``config:`` overrides (issue 11)."""
    path = tmp_path / "overrides.yaml"
    path.write_text(
        "releases:\n"
        f"  - name: test-gpt2-res\n    model: gpt2\n    repo_id: {REPO}\n    format: saelens\n"
        f"    saes:\n      - {{id: {sae_id}, path: blocks.3/{kind}, config: {config}}}\n")
    assert sae_hub.registry.add(path) == ["test-gpt2-res"]
    return path


@pytest.mark.parametrize(("kind", "config", "key"), [
    ("topk", "{k: 100000}", "k"),  # a valid int, but above this SAE's d_sae=64: only known once it is loaded
    ("jumprelu", "{rescale_acts_by_decoder_norm: true}", "rescale_acts_by_decoder_norm"),  # topk-only flag
])
def test_registry_override_invalid_for_this_sae_names_the_yaml_file_and_entry(hub, tmp_path, kind, config, key):
    seed(hub)
    path = _override_release(tmp_path, "bad", kind, config)
    for call in (SAE.from_pretrained, SAE.get_config):
        with pytest.raises(RegistryError) as e:
            call("test-gpt2-res", "bad")
        assert e.value.path == str(path) and e.value.field is not None and e.value.field.endswith(f"config.{key}")
        assert "'bad'" in str(e.value) and "test-gpt2-res" in str(e.value) and key in str(e.value)


def test_registry_override_contradicting_the_weights_names_the_yaml_file(hub, tmp_path):
    seed(hub)
    path = _override_release(tmp_path, "narrow", "topk", "{d_sae: 32}")  # the weights are [16, 64]
    with pytest.raises(RegistryError, match="d_sae=32.*W_enc") as e:
        SAE.from_pretrained("test-gpt2-res", "narrow")
    assert e.value.path == str(path) and e.value.field is not None and e.value.field.endswith(".config")


def test_every_hub_request_names_sae_hub_in_the_user_agent(hub, tmp_path):
    """The Hub counts downloads and attributes traffic by the ``<library>/<version>`` User-Agent prefix; every
    request sae-hub makes (downloads, listings, tree hashes, header range reads, registry files, uploads) carries
    ``sae-hub/<version>``, not huggingface_hub's ``unknown/None``."""
    from safetensors.torch import save_file

    seed(hub)
    seed(hub, "org/direct")
    add_release()
    g = torch.Generator().manual_seed(0)
    save_file({"w_enc": torch.randn(8, 32, generator=g), "w_dec": torch.randn(32, 8, generator=g),
               "b_enc": torch.zeros(32), "b_dec": torch.zeros(8), "threshold": torch.rand(32, generator=g)},
              tmp_path / "params.safetensors")
    hub.add_file("google/gs2-ua", "l5/params.safetensors", (tmp_path / "params.safetensors").read_bytes())
    sae_hub.registry.add({"releases": [{"name": "gs2-ua", "model": "gemma-3-1b", "repo_id": "google/gs2-ua",
                                        "format": "gemma-scope-2", "saes": [{"id": "l5", "path": "l5"}]}]})
    torch.save({"encoder_linear.weight": torch.randn(32, 8), "encoder_linear.bias": torch.zeros(32),
                "decoder_linear.weight": torch.randn(8, 32), "decoder_linear.bias": torch.zeros(8)},
               tmp_path / "gf.pth")
    hub.add_file("org/gf", "sae/gf.pth", (tmp_path / "gf.pth").read_bytes())
    hub.add_file("lab/registry", "registry.yaml",
                 b"releases:\n  - {name: hub-rel, model: gpt2, repo_id: lab/saes, format: saelens, saes: [{id: a}]}\n")
    hub.reset_log()

    SAE.from_pretrained("test-gpt2-res", "layer_3/topk")                     # hf_hub_download
    SAE.from_pretrained("org/direct", "blocks.3/jumprelu")                  # listing + detection
    SAE.get_config("test-gpt2-res", "layer_3/jumprelu")                     # config files only
    SAE.get_config("gs2-ua", "l5")                                          # HfFileSystem range reads
    SAE.from_pretrained("org/gf", "sae", format="goodfire")                 # snapshot_download (glob patterns)
    hub.wrong_etag("blocks.3/topk/cfg.json", etag="mirror-etag", method="HEAD")
    SAE.from_pretrained("org/direct", "blocks.3/topk", force_download=True) # hash from the repo tree
    assert sae_hub.registry.add("hf://lab/registry/registry.yaml") == ["hub-rel"]  # hub.fetch_hub_file
    sae = SAE(SAEConfig(architecture="topk", d_in=8, d_sae=16, k=2, model_name="gpt2", hook_name="h"))
    sae.push_to_hub("me/ua-sae")                                             # create_repo, preupload, commit
    sae.push_to_hub("me/ua-sae", "layer/x")                                  # + the root card merge

    requests = hub.requests
    kinds = {(r.method, "range" if "range" in r.headers else "") for r in requests if "/resolve/" in r.path}
    assert kinds >= {("HEAD", ""), ("GET", ""), ("GET", "range")}
    for needed in ("/tree/", "/paths-info/", "/preupload/", "/commit/", "/api/repos/create", "/revision/"):
        assert any(needed in r.path for r in requests), needed
    agents = {r.headers.get("user-agent", "") for r in requests}
    assert all(a.startswith(f"sae-hub/{sae_hub.__version__};") for a in agents), agents
    assert not hub.errors


def test_push_to_hub_saelens_compatible_false_uploads_a_variant_saelens_cannot_compute(hub):
    """A zscore SAE cannot be saved SAELens-compatibly: the default push refuses before sending anything (naming
    the destination), and saelens_compatible=False uploads the sae-hub-only folder, which loads back exactly."""
    from sae_hub.errors import IncompatibleSaveError

    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(architecture="relu", d_in=16, d_sae=32, normalize_activations="zscore", model_name="gpt2",
                        hook_name="blocks.1.hook_resid_post"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    with pytest.raises(IncompatibleSaveError, match="saelens_compatible=False") as e:
        sae.push_to_hub("me/zscore", "layer1")
    assert e.value.path == "hf://me/zscore/layer1" and e.value.field == "normalize_activations"
    assert hub.requests == []  # refused before the repo was even created
    assert sae.push_to_hub("me/zscore", "layer1", saelens_compatible=False)
    cfg = json.loads(hub.files("me/zscore")["layer1/cfg.json"])
    assert cfg["architecture"].startswith("sae_hub_only:")
    back = SAE.from_pretrained("me/zscore", "layer1")
    x = torch.randn(5, 16, generator=g)
    torch.testing.assert_close(back(x), sae(x))
    assert back.cfg.normalize_activations == "zscore"


@pytest.mark.parametrize("spelling", ["", ".", "/", "./", "//"])
def test_source_path_is_normalised_once(spelling):
    """Every spelling of "the repo root" is the root, decided where the source is resolved (``Source.path``)."""
    from sae_hub.releases import locate

    src = locate(REPO, spelling)
    assert src.path == "" and src.is_root and src.label == REPO
    assert src.join("cfg.json") == "cfg.json" and src.under(Path("/snap")) == Path("/snap")
    inner = locate(REPO, "/blocks.3/topk/")
    assert inner.path == "blocks.3/topk" and not inner.is_root and inner.label == f"{REPO}/blocks.3/topk"
    assert inner.join("cfg.json") == "blocks.3/topk/cfg.json"
    assert inner.under(Path("/snap")) == Path("/snap/blocks.3/topk")
    assert src.facts is None and src.format is None


def test_release_facts_reach_the_loader_as_options_without_a_warning(tmp_path):
    """A release's norm_scaling_factor for a SAELens folder that needs one is the loader's own option: nothing
    warns that the factor is unknown (the hub used to silence that warning and patch the config afterwards)."""
    import shutil
    import warnings

    folder = tmp_path / "saes" / "L3"
    shutil.copytree(FIX / "topk", folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["normalize_activations"] = "expected_average_only_in"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae_hub.registry.add({"releases": [{"name": "lab-scaled", "model": "gpt2", "local_path": str(tmp_path / "saes"),
                                        "format": "saelens",
                                        "saes": [{"id": "l3", "path": "L3", "norm_scaling_factor": 2.5}]}]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the load
        sae = SAE.from_pretrained("lab-scaled", "l3")
        got = SAE.get_config("lab-scaled", "l3")
    assert sae.cfg.norm_scaling_factor == 2.5 and got.norm_scaling_factor == 2.5
    from sae_hub.loading import load_local
    from sae_hub.releases import locate

    with warnings.catch_warnings():  # the loader itself, with no filter anywhere on the way
        warnings.simplefilter("error")
        cfg, _, _ = load_local(folder, format="saelens", facts=locate("lab-scaled", "l3").facts)
    assert cfg.norm_scaling_factor == 2.5 and cfg.extra["release"] == {"name": "lab-scaled", "sae_id": "l3"}
    with pytest.warns(UserWarning, match="norm_scaling_factor"):  # the folder alone: the loader does warn
        SAE.load_from_disk(folder)

