"""Malformed registry YAML (issue 11: what a fuzzer found): each input is refused with a RegistryError that names the
file and the entry path, within a time and memory bound, never a hang or a bare exception from deep inside.

Every case goes through the public entry points (``registry.add(path)``, ``registry.add(dict)``,
``SAE_HUB_REGISTRY``). The references are independent of sae_hub: PyYAML's ``safe_load`` for what valid YAML means,
``tracemalloc`` for memory, a SIGALRM watchdog for time.
"""

from __future__ import annotations

import math
import signal
import tracemalloc
from pathlib import Path

import pytest
import yaml

import sae_hub
from sae_hub import registry_schema, releases
from sae_hub.errors import RegistryError

HEAD = "releases:\n  - name: lab\n    model: gpt2\n    repo_id: lab/saes\n    format: saelens\n"


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch, tmp_path):
    monkeypatch.delenv("SAE_HUB_REGISTRY", raising=False)
    monkeypatch.setenv("SAE_HUB_CACHE", str(tmp_path / "cache"))  # a fresh cache: every file is parsed here
    sae_hub.registry.reset()
    yield
    sae_hub.registry.reset()


@pytest.fixture(scope="module", autouse=True)
def loaders_imported():
    """Import the loaders (and torch) once, outside the time bound and tracemalloc: add() checks formats."""
    sae_hub.list_loaders()


class _Timeout(Exception):
    pass


@pytest.fixture(autouse=True)
def time_bound():
    """Every case must finish in 10 s (they take milliseconds); a hang fails the test instead of the run."""
    def expire(signum, frame):
        raise _Timeout("took more than 10 s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def refused(tmp_path: Path, text: str | bytes, field: str | None, match: str, name: str = "bad.yaml",
            max_mib: float = 64, expanded: bool = False) -> RegistryError:
    """add(file) raises a RegistryError naming the file and ``field``, using under ``max_mib`` of Python memory.

    A file refused while parsing is never cached; one refused only once expanded (``expanded``) may be: the cache
    holds parsed-and-checked documents, and expansion runs (and fails the same way) on every read.
    """
    f = tmp_path / name
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    tracemalloc.start()
    try:
        with pytest.raises(RegistryError, match=match) as e:
            sae_hub.registry.add(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.path == str(f), e.value
    assert e.value.field == field, e.value
    assert peak < max_mib * 2**20, f"peak {peak / 2**20:.0f} MiB"
    cache = tmp_path / "cache" / "registry"
    assert expanded or not cache.exists() or not list(cache.iterdir()), "a file refused while parsing was cached"
    return e.value


def sae_entry(**fields: str) -> str:
    lines = [f"{k}: {v}" for k, v in {"id": "a", **fields}.items()]
    return HEAD + "    saes:\n      - " + "\n        ".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ parsing limits


def test_billion_laughs_is_refused_while_parsing(tmp_path):
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    e = refused(tmp_path, "\n".join(lines) + "\nreleases: []\n", "l6[0]", "alias bomb")
    assert "line 7" in str(e)


def test_deep_anchor_chain_is_refused_not_a_recursion_error(tmp_path):
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 10_000)]
    e = refused(tmp_path, "\n".join(lines) + "\nreleases: []\n", "a31[0]", "more than 32 levels deep")
    assert "alias *a30" in str(e)


def test_deeply_nested_flow_collections_are_refused(tmp_path):
    refused(tmp_path, "releases: " + "[" * 40 + "]" * 40 + "\n", "releases" + "[0]" * 31,
            "nested more than 32 levels deep")
    refused(tmp_path, "releases: " + "[" * 10_000 + "]" * 10_000 + "\n", None, "maximum nesting depth|nested more")


def test_recursive_alias_is_refused(tmp_path):
    refused(tmp_path, "a: &a [1, *a]\nreleases: []\n", "a[1]", "recursive structure")


def test_non_utf8_is_a_registry_error(tmp_path):
    e = refused(tmp_path, HEAD.encode() + b"    description: caf\xe9\n    saes: [{id: a}]\n", None, "not UTF-8")
    assert "byte 0xe9 at line 6" in str(e)


def test_oversized_file_is_refused_before_parsing(tmp_path):
    refused(tmp_path, HEAD + "    description: '" + "x" * releases.MAX_FILE_BYTES + "'\n", None,
            "a registry file may hold at most", max_mib=1)  # refused from its size, before reading it


@pytest.mark.parametrize(("text", "field", "match"), [
    (HEAD + "    name: lab2\n    saes: [{id: a}]\n", "releases[0].name", "duplicate key 'name'"),
    (sae_entry(l0="5", path="x") + "        path: y\n", "releases[0].saes[0].path", "duplicate key 'path'"),
    ("releases: []\nreleases: []\n", "releases", "duplicate key 'releases'"),
    (HEAD + "    saes: [{id: a, expand: [{layer: 1, layer: 2}]}]\n", "releases[0].saes[0].expand[0].layer",
     "duplicate key 'layer'"),
])
def test_duplicate_keys_are_refused(tmp_path, text, field, match):
    refused(tmp_path, text, field, match)


@pytest.mark.parametrize(("text", "field", "match"), [
    (sae_entry(path="!!python/object/apply:os.system ['echo pwned']"), "releases[0].saes[0].path", "tag"),
    (sae_entry(path="!!binary aGVsbG8="), "releases[0].saes[0].path", "tag"),
    (HEAD + "    links: !!set {a, b}\n    saes: [{id: a}]\n", "releases[0].links", "tag"),
    (HEAD + "    saes: [{id: a}]\n---\nreleases: []\n", None, "one YAML document"),
    (sae_entry(l0="1" * 5000), "releases[0].saes[0].l0", "cannot read"),
    (HEAD + "    saes: [{id: a}]\n    description: *nowhere\n", "releases[0].description", "undefined anchor"),
    (HEAD + "    saes: [{id: a}\n", None, "not valid YAML"),
])
def test_unsafe_or_broken_yaml(tmp_path, text, field, match):
    refused(tmp_path, text, field, match)


# ------------------------------------------------------------------------------------------ expansion caps


def test_huge_range_is_refused_before_expanding(tmp_path):
    e = refused(tmp_path, sae_entry(id="'l{layer}'", expand="[{layer: '0..300000000'}]"),
                "releases[0].saes[0].expand", "expands to 300,000,001 SAEs")
    assert f"{releases.MAX_SAES_PER_RELEASE:,}" in str(e)


def test_crossed_ranges_are_counted_before_expanding(tmp_path):
    refused(tmp_path, sae_entry(id="'{a}-{b}-{c}'", expand="[{a: '0..2000', b: '0..2000', c: '0..2000'}]"),
            "releases[0].saes[0].expand", "expands to 8,012,006,001 SAEs")


def test_many_entries_add_up_per_release_and_per_file(tmp_path):
    entry = "      - {id: 'e%d-{i}', expand: [{i: '1..30000'}]}\n"
    refused(tmp_path, HEAD + "    saes:\n" + entry % 0 + entry % 1, "releases[0].saes", "expands to 60,000 SAEs")
    rel = "  - {name: r%d, model: m, repo_id: a/b, format: saelens, saes: [{id: '{i}', expand: [{i: '1..40000'}]}]}\n"
    refused(tmp_path, "releases:\n" + "".join(rel % i for i in range(3)), "releases[2]", "one registry file may hold")


@pytest.mark.parametrize(("value", "match"), [("'5..3'", "is empty"), ("'0..9999999999999'", "at most 12 digits")])
def test_bad_ranges(tmp_path, value, match):
    refused(tmp_path, sae_entry(id="'l{layer}'", expand=f"[{{layer: {value}}}]"),
            "releases[0].saes[0].expand[0].layer", match)


# ------------------------------------------------------------------------------------------ types and values


@pytest.mark.parametrize(("text", "field", "match"), [
    (HEAD + "    links: str\n    saes: [{id: a}]\n", "releases[0].links", "Expected `object | null`, got `str`"),
    (HEAD + "    config: [1]\n    saes: [{id: a}]\n", "releases[0].config", "got `array`"),
    (sae_entry(config="[1]"), "releases[0].saes[0].config", "got `array`"),
    (sae_entry(vars="oops"), "releases[0].saes[0].vars", "got `str`"),
    (sae_entry(expand="{layer: 1}"), "releases[0].saes[0].expand", "got `object`"),
    (sae_entry(vars="{layer: [1, 2]}"), "releases[0].saes[0].vars.layer", "got `array`"),
    (sae_entry(expand="[{layer: {x: 1}}]"), "releases[0].saes[0].expand[0].layer", "got `object`"),
    (HEAD + "    hook: 5\n    saes: [{id: a}]\n", "releases[0].hook", "Expected `str | null`, got `int`"),
    (HEAD + "    revision: 123\n    saes: [{id: a}]\n", "releases[0].revision", "got `int`"),
    (sae_entry(hook="[a]"), "releases[0].saes[0].hook", "got `array`"),
    (sae_entry(id="5"), "releases[0].saes[0].id", "got `int`"),
    (sae_entry(l0="true"), "releases[0].saes[0].l0", "l0 must be a finite number >= 0"),
    (sae_entry(sha256="12345"), "releases[0].saes[0].sha256", "sha256 must be a 64-digit hex string"),
    (sae_entry(sha256="abc"), "releases[0].saes[0].sha256", "sha256 must be a 64-digit hex string"),
    (sae_entry(norm_scaling_factor=".nan"), "releases[0].saes[0].norm_scaling_factor", "finite positive"),
    (sae_entry(norm_scaling_factor=".inf"), "releases[0].saes[0].norm_scaling_factor", "finite positive"),
    (sae_entry(norm_scaling_factor="-2"), "releases[0].saes[0].norm_scaling_factor", "finite positive"),
    (sae_entry(norm_scaling_factor="0"), "releases[0].saes[0].norm_scaling_factor", "finite positive"),
    (sae_entry(l0="-1"), "releases[0].saes[0].l0", "l0 must be a finite number >= 0"),
    (sae_entry(variance_explained=".nan"), "releases[0].saes[0].variance_explained", "finite number"),
    (HEAD.replace("repo_id: lab/saes", "repo_id: datasets/lab/saes") + "    saes: [{id: a}]\n", "releases[0].repo_id",
     "a Hub repo id"),
    (HEAD + "    saes: []\n", "releases[0].saes", "length >= 1"),
    (HEAD + "    saes: [{id: a, wat: 1}]\n", "releases[0].saes[0].wat", "unknown key 'wat'; allowed: config, expand"),
    (HEAD + "    name2: x\n    saes: [{id: a}]\n", "releases[0].name2", "unknown key 'name2'"),
    (HEAD + "    model: ~\n    saes: [{id: a}]\n", "releases[0].model", "duplicate key 'model'"),
    (HEAD.replace("    model: gpt2\n", "    model: ~\n") + "    saes: [{id: a}]\n", "releases[0].model",
     "missing required field 'model'"),
    (sae_entry(revision="x"), "releases[0].saes[0].revision", "unknown key 'revision'"),
    (HEAD + "    saes: [{id: a, expand: [{1: x}]}]\n", "releases[0].saes[0].expand[0]", "a key: Expected `str`"),
    (HEAD + "    description: 2024-01-02\n    saes: [{id: a}]\n", "releases[0].description", "got `date`"),
])
def test_wrong_types_and_values_name_the_entry(tmp_path, text, field, match):
    refused(tmp_path, text, field, match)


@pytest.mark.parametrize(("config", "field", "match"), [
    ("{kk: 1}", "releases[0].saes[0].config.kk", "unknown key 'kk'; allowed: .*apply_b_dec_to_input"),
    ("{provenance: {}}", "releases[0].saes[0].config.provenance", "unknown key 'provenance'"),
    ("{k: fifty}", "releases[0].saes[0].config.k",
     "k must be an integer \\(or null\\) or a {var} template, got 'fifty'"),
    ("{k: 0}", "releases[0].saes[0].config.k", "Expected `int` >= 1"),
    ("{k: 2.5}", "releases[0].saes[0].config.k", "got `float`"),
    ("{apply_b_dec_to_input: 'yes'}", "releases[0].saes[0].config.apply_b_dec_to_input", "true or false"),
    ("{normalize_activations: bogus}", "releases[0].saes[0].config.normalize_activations", "Invalid enum value"),
    ("{architecture: lstm}", "releases[0].saes[0].config.architecture", "Invalid enum value 'lstm'"),
    ("{norm_scaling_factor: .nan}", "releases[0].saes[0].config.norm_scaling_factor", "finite positive number"),
    ("{d_in: -4}", "releases[0].saes[0].config.d_in", ">= 1"),
    ("{hook_name: 5}", "releases[0].saes[0].config.hook_name", "got `int`"),
])
def test_bad_config_overrides_are_refused_at_parse_time(tmp_path, config, field, match):
    refused(tmp_path, sae_entry(config=config), field, match)


def test_bad_release_level_config_override(tmp_path):
    refused(tmp_path, HEAD + "    config: {k: -1}\n    saes: [{id: a}]\n", "releases[0].config.k", ">= 1")


def test_templated_values_are_checked_after_filling(tmp_path):
    """Values that only exist after template filling are checked when the entry expands (at once in add())."""
    base = HEAD + "    saes:\n      - {expand: [{i: [1, 2], v: [%s]}], %s}\n"
    cases = [
        ("3, 'nan'", "id: 'l{i}{v}', norm_scaling_factor: '{v}'", "norm_scaling_factor",
         "norm_scaling_factor must be a finite positive number, got 'nan'"),
        ("a", "id: 'l{i}', l0: '{v}'", "l0", "l0 must be a finite number >= 0"),
        ("xyz", "id: 'l{i}', sha256: '{v}'", "sha256", "64 hex digits"),
        ("abc", "id: 'l{i}', config: {k: '{v}'}", "config.k", "config k = 'abc'"),
        ("0", "id: 'l{i}', config: {k: '{v}'}", "config.k", ">= 1"),
        ("1", "id: x", "id", "duplicate sae id 'x'"),
        ("'" + "y" * 500 + "'", "id: 'l{i}', path: '{v}{v}'", "path", "at most 512"),
    ]
    for values, fields, field, match in cases:
        refused(tmp_path, base % (values, fields), f"releases[0].saes[0].{field}", match, expanded=True)


def test_template_variables_must_be_defined_by_every_row(tmp_path):
    saes = "    saes: [{id: 'a{w}', expand: [{w: 1, layer: 2}, {w: 3}]}]\n"
    refused(tmp_path, HEAD + "    hook: 'blocks.{layer}.x'\n" + saes,
            "releases[0].hook", "template variable 'layer' is not defined \\(defined here: w\\)")
    refused(tmp_path, sae_entry(id="'{x}'", config="{dataset_path: 'd/{y}'}", vars="{x: 1}"),
            "releases[0].saes[0].config.dataset_path", "template variable 'y'")


def test_cross_field_rules(tmp_path):
    refused(tmp_path, HEAD + "    local_path: here\n    saes: [{id: a}]\n", "releases[0]", "exactly one of repo_id")
    two = "releases:\n" + "  - {name: x, model: m, repo_id: a/b, format: saelens, saes: [{id: a}]}\n" * 2
    refused(tmp_path, two, "releases[1].name", "duplicate release name 'x' \\(also releases\\[0\\]\\)")


# ------------------------------------------------------------------------------------------ other entry points


@pytest.mark.parametrize(("sae", "field"), [
    ({"id": "a", "norm_scaling_factor": math.nan}, "releases[0].saes[0].norm_scaling_factor"),
    ({"id": "a", "norm_scaling_factor": math.inf}, "releases[0].saes[0].norm_scaling_factor"),
    ({"id": "a", "sha256": 12345}, "releases[0].saes[0].sha256"),
    ({"id": "a", "config": {"k": "50"}}, "releases[0].saes[0].config.k"),
    ({"id": "a", "expand": [{"x": "0..300000000"}]}, "releases[0].saes[0].expand"),
])
def test_dicts_get_the_same_checks(sae, field):
    doc = {"releases": [{"name": "d", "model": "m", "repo_id": "a/b", "format": "saelens", "saes": [sae]}]}
    with pytest.raises(RegistryError) as e:
        sae_hub.registry.add(doc)
    assert (e.value.path, e.value.field) == ("<dict>", field)


def test_environment_registry_with_a_bad_file_names_it(tmp_path, monkeypatch):
    f = tmp_path / "env.yaml"
    f.write_text(sae_entry(hook="5"))
    monkeypatch.setenv("SAE_HUB_REGISTRY", str(f))
    sae_hub.registry.reset()
    with pytest.raises(RegistryError, match="got `int`") as e:
        sae_hub.list_releases()
    assert (e.value.path, e.value.field) == (str(f), "releases[0].saes[0].hook")


# ------------------------------------------------------------------------------------------ what still works


def test_anchors_merge_keys_and_tags_mean_what_pyyaml_says(tmp_path):
    """Aliases (bounded), merge keys and YAML 1.1 scalars keep working, with PyYAML's meaning."""
    text = """\
releases:
  - &base
    name: lab-a
    model: gpt2
    format: saelens
    repo_id: lab/saes
    saes: [&s {id: a, path: here, l0: !!float 3}, {<<: *s, id: '007', path: !!str 123}]
  - <<: [*base, {model: other, license: mit}]
    name: lab-b
    model: pythia
    saes: [{id: b, vars: {x: 0x1F, y: 1_000, z: yes, w: '0o7'}}]
"""
    assert registry_schema.load_yaml(text.encode(), "x") == yaml.safe_load(text)
    f = tmp_path / "anchors.yaml"
    f.write_text(text)
    assert sae_hub.registry.add(f) == ["lab-a", "lab-b"]
    a = sae_hub.registry.get_release("lab-a")
    assert (a.model, a.repo_id, a.saes["007"].path, a.saes["a"].l0) == ("gpt2", "lab/saes", "123", 3.0)
    b = sae_hub.registry.get_release("lab-b")
    assert (b.model, b.license, b.repo_id) == ("pythia", "mit", "lab/saes")
    assert b.raw_saes[0]["vars"] == {"x": 31, "y": 1000, "z": True, "w": "0o7"}


def test_parser_matches_pyyaml_on_every_shipped_file():
    for path in releases._shipped_files():
        data = path.read_bytes()
        assert registry_schema.load_yaml(data, str(path)) == yaml.safe_load(data), path.name


def test_cache_serves_the_validated_document_and_follows_edits(tmp_path):
    f = tmp_path / "lab.yaml"
    f.write_text(sae_entry(l0="5"))
    first = [r.raw_saes for r in releases._read_file(f, check_formats=False)]
    (cached,) = (tmp_path / "cache" / "registry").glob("lab-*.json")
    assert [r.raw_saes for r in releases._read_file(f, check_formats=False)] == first
    for junk in ("{not json", "[]", '{"releases": [{"name": 1}]}'):  # a corrupt cache is ignored and rewritten
        cached.write_text(junk)
        assert [r.raw_saes for r in releases._read_file(f, check_formats=False)] == first
        assert cached.read_text() != junk
    f.write_text(sae_entry(l0="-5"))  # an edited file is parsed again
    with pytest.raises(RegistryError, match="l0 must be"):
        releases._read_file(f, check_formats=False)
