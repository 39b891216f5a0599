"""The release-table schema: expansion, validation errors, user registries, listing."""

from __future__ import annotations

import pytest

import sae_hub
from sae_hub.errors import RegistryError, UnknownReleaseError
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
