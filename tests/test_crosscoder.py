"""Crosscoders by release: ``CrossCoder.from_pretrained`` and ``sae_hub.from_pretrained`` through the release table
and the Hub (the local test Hub of tests/hub_server.py, driven by the real huggingface_hub client), and the typed
refusals of the classes that do not load a crosscoder.

No public crosscoder release in a format sae-hub reads is documented (llamascopium/lm-saes lists none; SAELens
has no crosscoder release; Gemma Scope 2's crosscoders have no loader here), so the release is written by the test,
in the layout llamascopium 2.0.0b34 saves (its own fixture files, tests/fixtures/llamascopium_clt). The reference is
the library's codes and reconstructions stored with the fixture, never sae-hub's output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

import sae_hub
from sae_hub import SAE, CrossCoder, MultiLayerDictionary
from sae_hub.errors import UnsupportedSAEError

LS = Path(__file__).parent / "fixtures" / "llamascopium_clt"
REPO = "test-org/crosscoders"


@pytest.fixture(autouse=True)
def fresh_registry():
    sae_hub.registry.reset()
    yield
    sae_hub.registry.reset()


def _seed(hub) -> None:
    """Two crosscoders in one repo (each folder with the library's files and its reference outputs), a CLT beside
    them, and a release table naming them."""
    for case in ("crosscoder_jumprelu", "crosscoder_relu", "clt_relu"):
        for f in sorted((LS / case).iterdir()):
            hub.add_file(REPO, f"{case}/{f.name}", f.read_bytes())
    sae_hub.registry.add({"releases": [
        {"name": "t-cc", "model": "test/model", "repo_id": REPO, "format": "llamascopium-crosscoder",
         "kind": "crosscoder", "saes": [{"id": "{act}", "path": "crosscoder_{act}", "expand": [{"act": ["jumprelu",
                                                                                                         "relu"]}]}]},
        {"name": "t-cc-clt", "model": "test/model", "repo_id": REPO, "format": "llamascopium-clt", "kind": "clt",
         "saes": [{"id": "relu", "path": "clt_relu"}]}]})


def _fetched(hub) -> list[str]:
    gets = hub.find(method="GET", path_contains="/resolve/")
    return sorted(r.path.split("/resolve/")[1].split("/", 1)[1] for r in gets)


def _check_against_library(cc: CrossCoder, case: str) -> float:
    ref = load_file(LS / case / "reference.safetensors")
    n = cc.cfg.n_sites
    xs = [ref[f"x.{h}"] for h in range(n)]
    feats, outs = cc.encode(xs), cc(xs)
    err = 0.0
    for h in range(n):
        err = max(err, (feats[h] - ref["codes"][:, h]).abs().max().item(),
                  (outs[h] - ref["recon"][:, h]).abs().max().item())
    return err


def test_crosscoder_from_pretrained_fetches_its_folder_and_matches_the_library(hub):
    _seed(hub)
    cc = CrossCoder.from_pretrained("t-cc", "jumprelu")
    got = _fetched(hub)
    # only what the loader reads, from its own folder: not the other crosscoder, the CLT, or the reference files
    assert got and all(p.startswith("crosscoder_jumprelu/") for p in got), got
    assert "crosscoder_jumprelu/sae_weights.safetensors" in got
    assert not any(p.endswith(("reference.safetensors", "case.json")) for p in got), got
    assert _check_against_library(cc, "crosscoder_jumprelu") <= 1e-5
    assert cc.cfg.model_names == ["test/model"] * cc.cfg.n_sites  # the release's model fills what files omit
    assert cc.cfg.extra["release"] == {"name": "t-cc", "sae_id": "jumprelu"}
    assert cc.cfg.hook_names == ["blocks.2.hook_resid_post", "blocks.4.hook_resid_post", "blocks.6.hook_resid_post"]
    assert any(f.get("sha256") for f in cc.cfg.provenance.source_files)  # the hub verified what it fetched


def test_top_level_from_pretrained_returns_a_crosscoder(hub):
    _seed(hub)
    cc = sae_hub.from_pretrained("t-cc", "relu")
    assert isinstance(cc, CrossCoder)
    assert _check_against_library(cc, "crosscoder_relu") <= 1e-5
    clt = sae_hub.from_pretrained("t-cc-clt", "relu")
    assert isinstance(clt, MultiLayerDictionary) and clt.cfg.kind == "clt"


def test_wrong_class_is_refused_before_any_request_naming_the_call_to_use(hub):
    _seed(hub)
    hub.reset_log()
    with pytest.raises(UnsupportedSAEError, match=r"sae_hub\.CrossCoder\.from_pretrained\('t-cc', 'relu'\)") as e:
        SAE.from_pretrained("t-cc", "relu")
    assert e.value.field == "format" and "test-org/crosscoders" in str(e.value.path)
    with pytest.raises(UnsupportedSAEError, match=r"CrossCoder\.from_pretrained\('t-cc', 'relu'\)"):
        MultiLayerDictionary.from_pretrained("t-cc", "relu")
    with pytest.raises(UnsupportedSAEError, match=r"MultiLayerDictionary\.from_pretrained\('t-cc-clt', 'relu'\)"):
        CrossCoder.from_pretrained("t-cc-clt", "relu")
    assert hub.requests == []  # refused from the release table alone: nothing fetched
