"""The release-table schema: expansion, validation errors, user registries, listing."""

from __future__ import annotations

import pytest

import sae_hub
from sae_hub import releases
from sae_hub.errors import MissingFileError, RegistryError, SaeHubError, UnknownReleaseError
from sae_hub.releases import resolve


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.delenv("SAE_HUB_REGISTRY", raising=False)
    sae_hub.registry.reset()
    yield
    sae_hub.registry.reset()


def rel(**over):
    base = {"name": "lab-res", "model": "gpt2", "repo_id": "lab/saes", "format": "saelens",
            "saes": [{"id": "l{layer}", "path": "layer_{layer}", "expand": [{"layer": "0..11"}]}]}
    base.update(over)
    return {"releases": [base]}


def test_compact_entry_expands_with_ranges_and_crossed_lists():
    sae_hub.registry.add(rel(hook="blocks.{layer}.hook_{site}", saes=[{
        "id": "L{layer}{site_code}-{width}", "path": "L{layer}{site_code}/{width}",
        "l0": "{l0}", "neuronpedia": "gpt2/{layer}-{site_code}-{width}",
        "expand": [{"layer": "0..2", "site": "resid_post", "site_code": "R", "width": ["8x", "32x"], "l0": 50},
                   {"layer": 5, "site": "mlp_out", "site_code": "M", "width": "8x", "l0": 70.5}],
    }]))
    ids = sae_hub.list_saes("lab-res")
    assert ids == ["L0R-8x", "L0R-32x", "L1R-8x", "L1R-32x", "L2R-8x", "L2R-32x", "L5M-8x"]
    _, e = resolve("lab-res", "L5M-8x")
    assert (e.path, e.l0, e.hook, e.neuronpedia) == ("L5M/8x", 70.5, "blocks.5.hook_mlp_out", "gpt2/5-M-8x")
    assert isinstance(resolve("lab-res", "L1R-32x")[1].l0, float)


@pytest.mark.parametrize(("doc", "message"), [
    (rel(colour="red"), "unknown key"),
    (rel(saes=[{"id": "a", "wat": 1}]), "unknown key"),
    (rel(model=None), "missing required field 'model'"),
    (rel(format="no-such-format"), "not provided by any loader"),
    (rel(repo_id=None), "exactly one of repo_id or local_path"),
    (rel(local_path="/x"), "exactly one of repo_id or local_path"),
    (rel(saes=[{"path": "x"}]), "missing required field 'id'"),
    (rel(saes=[{"id": "a"}, {"id": "a"}]), "duplicate sae id 'a'"),
    (rel(saes=[{"id": "l{layer}", "expand": [{"layer": "0..3"}, {"layer": 2}]}]), "duplicate sae id 'l2'"),
    (rel(saes=[{"id": "l{layr}", "expand": [{"layer": 1}]}]), "template variable 'layr'"),
    (rel(saes=[{"id": "a", "l0": "many"}]), "l0 must be a finite number"),
    ({"releases": [rel()["releases"][0], rel()["releases"][0]]}, "duplicate release name"),
    ({"release": []}, "'releases' list"),
])
def test_schema_errors_name_the_entry(doc, message):
    with pytest.raises(RegistryError, match=message) as e:
        sae_hub.registry.add(doc)
    assert e.value.path == "<dict>"


def test_errors_in_a_file_name_the_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("releases:\n  - name: x\n    model: gpt2\n    repo_id: a/b\n    format: saelens\n"
                 "    saes: [{idd: 1}]\n")
    with pytest.raises(RegistryError, match="unknown key") as e:
        sae_hub.registry.add(f)
    assert e.value.path == str(f)
    f.write_text("releases: [\n")
    with pytest.raises(RegistryError, match="not valid YAML"):
        sae_hub.registry.add(f)


def test_collision_with_existing_release_needs_replace():
    sae_hub.registry.add(rel())
    with pytest.raises(RegistryError, match="duplicate release name 'lab-res'"):
        sae_hub.registry.add(rel(repo_id="lab/other"))
    sae_hub.registry.add(rel(repo_id="lab/other"), replace=True)
    assert sae_hub.registry.get_release("lab-res").repo_id == "lab/other"


def test_environment_variable_registries(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text(
        "releases:\n  - {name: env-a, model: gpt2, repo_id: lab/a, format: saelens, saes: [{id: x}]}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text(
        "releases:\n  - {name: env-b, model: pythia-70m, repo_id: lab/b, format: saelens, saes: [{id: y}]}\n")
    monkeypatch.setenv("SAE_HUB_REGISTRY", f"{tmp_path / 'a.yaml'}:{tmp_path / 'sub'}")
    sae_hub.registry.reset()
    assert {"env-a", "env-b"} <= set(sae_hub.list_releases())
    assert sae_hub.list_releases("env-*", model="pythia*") == ["env-b"]


def test_listing_is_naturally_sorted_and_filtered():
    sae_hub.registry.add({"releases": [
        {"name": n, "model": m, "repo_id": f"lab/{n}", "format": "saelens", "saes": [{"id": "x"}]}
        for n, m in (("lab-l10", "gpt2"), ("lab-l2", "gpt2"), ("lab-l1", "gemma-2-2b"))]})
    assert sae_hub.list_releases("lab-l*") == ["lab-l1", "lab-l2", "lab-l10"]
    assert sae_hub.list_releases("lab-*", model="gemma*") == ["lab-l1"]


def test_unknown_release_suggests_close_names():
    sae_hub.registry.add(rel())
    with pytest.raises(UnknownReleaseError, match="closest: lab-res"):
        sae_hub.registry.get_release("lab-ress")


def test_registry_yaml_stored_in_a_hub_repo(hub):
    hub.add_file("lab/registry", "registry.yaml",
                 b"releases:\n  - {name: hub-rel, model: gpt2, repo_id: lab/saes, format: saelens, saes: [{id: a}]}\n")
    assert sae_hub.registry.add("hf://lab/registry/registry.yaml") == ["hub-rel"]
    assert sae_hub.registry.get_release("hub-rel").source == "hf://lab/registry/registry.yaml"


def _reg(name: str) -> bytes:
    entry = f"{{name: {name}, model: gpt2, repo_id: lab/saes, format: saelens, saes: [{{id: a}}]}}"
    return f"releases:\n  - {entry}\n".encode()


def test_registry_yaml_in_a_dataset_repo(hub):
    """hf://datasets/org/repo/file: the type prefix is not part of the repo id (it was read as repo 'datasets/org')."""
    hub.add_file("lab/registries", "sub/reg.yaml", _reg("from-dataset"), repo_type="dataset")
    hub.add_file("lab/registries", "sub/reg.yaml", _reg("from-model"))  # a model repo of the same name
    assert sae_hub.registry.add("hf://datasets/lab/registries/sub/reg.yaml") == ["from-dataset"]
    assert sae_hub.registry.add("hf://lab/registries/sub/reg.yaml") == ["from-model"]
    assert sae_hub.registry.get_release("from-dataset").source == "hf://datasets/lab/registries/sub/reg.yaml"


def test_registry_yaml_at_a_pull_request_revision(hub):
    """hf://org/repo@refs/pr/1/file: the revision is refs/pr/1 (it was parsed as revision 'refs', file 'pr/1/...')."""
    hub.add_file("lab/registry", "registry.yaml", _reg("on-main"))
    hub.create_branch("lab/registry", "refs/pr/1")
    hub.add_file("lab/registry", "registry.yaml", _reg("in-pr"), revision="refs/pr/1")
    hub.create_tag("lab/registry", "v1", revision="main")
    assert sae_hub.registry.add("hf://lab/registry@refs/pr/1/registry.yaml") == ["in-pr"]
    assert sae_hub.registry.add("hf://lab/registry@v1/registry.yaml") == ["on-main"]
    assert hub.find(path_contains="/resolve/refs%2Fpr%2F1/registry.yaml")
    assert not hub.find(path_contains="/resolve/refs/")


@pytest.mark.parametrize(("uri", "want"), [
    ("hf://datasets/lab/registries/sub/reg.yaml", ("dataset", "lab/registries", None, "sub/reg.yaml")),
    ("hf://lab/registry@refs/pr/1/registry.yaml", ("model", "lab/registry", "refs/pr/1", "registry.yaml")),
    ("hf://lab/registry@v1/registry.yaml", ("model", "lab/registry", "v1", "registry.yaml")),
])
def test_both_uri_parsers_agree(hub, uri, want):
    """parse_hf_uri (recent huggingface_hub) and HfFileSystem.resolve_path (older ones) read URIs the same way."""
    hub.add_file("lab/registries", "sub/reg.yaml", _reg("d"), repo_type="dataset")
    hub.add_file("lab/registry", "registry.yaml", _reg("m"))
    hub.create_branch("lab/registry", "refs/pr/1")
    hub.create_tag("lab/registry", "v1")
    assert releases._split_hf_uri(uri) == want
    repo_type, repo_id, revision, path = releases._split_hf_uri_fs(uri)
    assert (repo_type, repo_id, revision, path) == (want[0], want[1], want[2] or "main", want[3])


@pytest.mark.parametrize(("uri", "match"), [
    ("hf://lab", "not a valid hf:// URI"),
    ("hf://lab/registry", "no file named"),
    ("hf://buckets/lab/b/reg.yaml", "not buckets"),
    ("hf://lab/registry/missing.yaml", "could not fetch registry file"),
])
def test_bad_hf_uris(hub, uri, match):
    hub.add_file("lab/registry", "registry.yaml", _reg("m"))
    with pytest.raises(SaeHubError, match=match) as e:
        sae_hub.registry.add(uri)
    assert e.value.path == uri
    assert isinstance(e.value, MissingFileError if "missing" in uri else RegistryError)
