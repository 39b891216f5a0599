"""The shipped release table (registry/*.yaml): every file validates, every release expands, ids are unique, and
a handful of (release, sae id) pairs resolve exactly as in SAELens 6.54.12's pretrained_saes.yaml.

Offline and fast: only the YAML is read. Formats whose loader is not registered yet get a throwaway stub for the
duration of this module (removed afterwards).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml

import sae_hub.loading as loading
from sae_hub import releases
from sae_hub.errors import RegistryError

REGISTRY = Path(releases.__file__).resolve().parent.parent / "registry"
FORMATS = {"saelens", "gemma-scope", "gemma-scope-2", "gemma-scope-2-clt", "lm-saes", "dictionary-learning",
           "qwen-scope", "goodfire"}
# The files ported from SAELens's table (other registry files may be added next to them).
SAELENS_FILES = ("dictionary-learning", "gemma-scope", "gemma-scope-2", "goodfire", "llama-scope", "qwen-scope",
                 "saelens-native")
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*$")


def _shipped_files() -> list[Path]:
    import sae_hub.registry as shipped

    return sorted(p for d in shipped.__path__ for p in Path(d).glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def _stub_missing_loaders():
    added = []
    for name in sorted(FORMATS):
        if name not in loading.list_loaders():
            loading.register_loader(name, files=["*"], detect=lambda p: False)(lambda p, o: None)
            added.append(name)
    releases.reset()
    yield
    for name in added:
        loading._LOADERS.pop(name, None)
    releases.reset()


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _n_expanded(raw: dict) -> int:
    """How many SAEs an entry stands for, counted independently of sae_hub.releases."""
    rows = raw.get("expand")
    if rows is None:
        return 1
    total = 0
    for row in rows:
        n = 1
        for value in row.values():
            if isinstance(value, str) and (m := _RANGE.match(value)):
                n *= int(m.group(2)) - int(m.group(1)) + 1
            elif isinstance(value, list):
                n *= len(value)
        total += n
    return total


def test_shipped_files_are_the_registry_folder():
    files = _shipped_files()
    assert {p.parent.resolve() for p in files} == {REGISTRY}
    assert {p.stem for p in files} >= set(SAELENS_FILES)


@pytest.mark.parametrize("family", SAELENS_FILES)
def test_file_validates_and_expands(family: str):
    path = REGISTRY / f"{family}.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#") and "SAELens" in text.split("releases:", 1)[0], "header comment naming the source"
    rels = releases._read_file(path)
    assert rels
    raw = _load(path)
    assert raw["family"] == path.stem
    for rel, raw_rel in zip(rels, raw["releases"], strict=True):
        assert rel.format in FORMATS
        assert rel.repo_id and not rel.local_path
        saes = rel.saes  # expands and validates; a duplicate id raises RegistryError
        expected = sum(_n_expanded(r) for r in raw_rel["saes"])
        assert len(saes) == expected, f"{rel.name}: {expected} rows expand to {len(saes)} unique ids"
        for entry in saes.values():
            assert entry.id and entry.path and "{" not in entry.id + entry.path
            # SAELens-native folders carry their hook in cfg.json; a whole CLT names its hooks per layer (options)
            if rel.format != "saelens" and rel.kind != "clt":
                assert entry.hook and "{" not in entry.hook, f"{rel.name}/{entry.id}: no hook"


def test_whole_table():
    names = releases.list_releases()
    assert len(names) == len(set(names)) >= 159
    total = sum(len(releases.get_release(n).saes) for n in names)
    assert total >= 13_857
    # the five families that once were left out (issue 15) are in, each with its own format
    for name, fmt in (("gpt2-small-hook-z-kk", "connor-rob-hook-z"),
                      ("mwhanna-qwen3-4b-transcoders", "circuit-tracer-transcoder"),
                      ("mntss-gemma-2-2b-2.5m-clt-as-per-layer", "clt-source-layer"),
                      ("temporal-sae-gemma-2-2b", "temporal-sae"),
                      ("deepseek-r1-distill-llama-8b-qresearch", "deepseek-r1")):
        assert releases.get_release(name).format == fmt


SAELENS_TABLE = Path(__file__).parent / "fixtures" / "saelens_registry" / "pretrained_saes-6.54.12.yaml.gz"


def test_every_saelens_release_resolves_identically():
    """SAELens 6.54.12's published table (a gzipped copy of its pretrained_saes.yaml, kept as a fixture): every one
    of its 13,857 (release, sae id) pairs locates to the same repo and path here, offline, with the same facts."""
    import gzip

    table = yaml.load(gzip.decompress(SAELENS_TABLE.read_bytes()), Loader=getattr(yaml, "CSafeLoader",
                                                                                   yaml.SafeLoader))
    total = same = 0
    wrong = []
    for name, rel in table.items():
        for sae in rel["saes"]:
            total += 1
            src = releases.locate(name, sae["id"])
            want = str(sae["path"])
            if src.repo_id == rel["repo_id"] and src.release.saes[sae["id"]].path == want:
                same += 1
            else:
                wrong.append((name, sae["id"], src.repo_id, src.path, want))
            entry = src.entry
            assert entry.neuronpedia == sae.get("neuronpedia"), (name, sae["id"])
            for fact in ("l0", "variance_explained", "norm_scaling_factor"):
                want_f = sae.get(fact)
                assert getattr(entry, fact) == (None if want_f is None else float(want_f)), (name, sae["id"], fact)
    assert (same, total) == (13_857, 13_857), wrong[:5]


@pytest.mark.parametrize(("release", "kind"), [
    ("gemma-scope-2b-pt-res-canonical", "sae"), ("gemma-scope-2b-pt-transcoders", "transcoder"),
    ("mwhanna-qwen3-4b-transcoders", "transcoder_set"), ("mntss-gemma-2-2b-2.5m-clt-as-per-layer", "clt"),
    ("mntss-clt-gemma-2-2b-426k", "clt"), ("temporal-sae-gemma-2-2b", "temporal"),
])
def test_release_kind(release: str, kind: str):
    assert releases.get_release(release).kind == kind


def test_clt_layer_entries_name_only_their_files():
    """One source layer of a CLT release lists exactly its own two weight files and the config (so only those are
    fetched), with the layer as a loader option; SAELens's path (the layer number) is kept."""
    src = releases.locate("mntss-gemma-2-2b-2.5m-clt-as-per-layer", "layer_7")
    assert src.path == "7"
    assert src.files == ("W_enc_7.safetensors", "W_dec_7.safetensors", "config.yaml")
    assert src.options == {"layer": "7"}
    hz = releases.locate("gpt2-small-hook-z-kk", "blocks.3.hook_z")
    assert hz.files is not None and hz.files[0] == hz.path and hz.files[1] == hz.path[:-3] + "_cfg.json"


# (release, sae id) -> expected fields, copied from SAELens 6.54.12's pretrained_saes.yaml (hooks: its loaders).
KNOWN = [
    ("gemma-scope-2b-pt-res-canonical", "layer_0/width_16k/canonical",
     dict(repo_id="google/gemma-scope-2b-pt-res", path="layer_0/width_16k/average_l0_105",
          neuronpedia="gemma-2-2b/0-gemmascope-res-16k", hook="blocks.0.hook_resid_post", l0=None)),
    ("gemma-scope-9b-pt-res-canonical", "layer_20/width_524k/canonical",
     dict(repo_id="google/gemma-scope-9b-pt-res", path="layer_20/width_524k/average_l0_48", l0=78.0,
          neuronpedia="gemma-2-9b/20-gemmascope-res-524k")),
    ("gemma-scope-2b-pt-res", "embedding/width_4k/average_l0_6",
     dict(path="embedding/width_4k/average_l0_6", hook="hook_embed", l0=None)),
    ("gemma-scope-2b-pt-res", "layer_12/width_262k/average_l0_121",
     dict(path="layer_12/width_262k/average_l0_121", l0=121.0, hook="blocks.12.hook_resid_post")),
    ("gemma-scope-2b-pt-att", "layer_0/width_16k/average_l0_104",
     dict(repo_id="google/gemma-scope-2b-pt-att", l0=104.0, hook="blocks.0.attn.hook_z")),
    ("gemma-scope-9b-pt-mlp-canonical", "layer_41/width_131k/canonical",
     dict(path="layer_41/width_131k/average_l0_99", hook="blocks.41.hook_mlp_out")),
    ("gemma-scope-2b-pt-transcoders", "layer_0/width_16k/average_l0_76",
     dict(repo_id="google/gemma-scope-2b-pt-transcoders", path="layer_0/width_16k/average_l0_76", l0=76.0,
          neuronpedia="gemma-2-2b/0-gemmascope-transcoder-16k", hook="blocks.0.ln2.hook_normalized",
          hook_out="blocks.0.hook_mlp_out")),
    ("gemma-scope-2-4b-pt-transcoders-all", "layer_0_width_16k_l0_big_affine",
     dict(repo_id="google/gemma-scope-2-4b-pt", path="transcoder_all/layer_0_width_16k_l0_big_affine", l0=60.0,
          hook="blocks.0.hook_mlp_in", hook_out="blocks.0.hook_mlp_out")),
    ("gemma-scope-2-4b-pt-transcoders", "transcoder/layer_17_width_16k_l0_big",
     dict(path="transcoder/layer_17_width_16k_l0_big", l0=150.0, hook="blocks.17.hook_mlp_in")),
    ("gemma-scope-2-4b-pt-res", "layer_17_width_262k_l0_medium_seed_1",
     dict(path="resid_post/layer_17_width_262k_l0_medium_seed_1", l0=60.0, neuronpedia=None,
          hook="blocks.17.hook_resid_post", hook_out=None)),
    ("gemma-scope-2-4b-it-transcoders-all", "layer_0_width_262k_l0_small_affine",
     dict(path="transcoder_all/layer_0_width_262k_l0_small_affine", l0=10.0,
          neuronpedia="gemma-3-4b-it/0-gemmascope-2-transcoder-262k")),
    ("gemma-scope-2-270m-pt-att", "layer_12_width_16k_l0_big",
     dict(repo_id="google/gemma-scope-2-270m-pt", path="attn_out/layer_12_width_16k_l0_big",
          hook="blocks.12.attn.hook_z")),
    ("llama_scope_lxa_32x", "l0a_32x",
     dict(repo_id="fnlp/Llama3_1-8B-Base-LXA-32x", path="Llama3_1-8B-Base-L0A-32x", l0=50.0,
          norm_scaling_factor=112.21917808219177, neuronpedia="llama3.1-8b/0-llamascope-att-131k",
          hook="blocks.0.hook_attn_out")),
    ("llama_scope_lxm_8x", "l31m_8x", dict(path="Llama3_1-8B-Base-L31M-8x", hook="blocks.31.hook_mlp_out")),
    ("llama_scope_r1_distill", "l0r_800m_slimpajama",
     dict(repo_id="fnlp/Llama-Scope-R1-Distill", path="800M-Slimpajama-0-OpenR1-Math-220k/L0R",
          norm_scaling_factor=53.52995401997436, hook="blocks.0.hook_resid_post")),
    ("sae_bench_gemma-2-2b_topk_width-2pow14_date-1109", "blocks.5.hook_resid_post__trainer_5_step_46322",
     dict(repo_id="canrager/saebench_gemma-2-2b_width-2pow14_date-1109",
          path="gemma-2-2b_topk_width-2pow14_date-1109/resid_post_layer_5_checkpoints/trainer_5_step_46322",
          neuronpedia="gemma-2-2b/5-sae_bench-topk-res-16k__trainer_5_step_46322", hook="blocks.5.hook_resid_post")),
    ("llama-3.1-8b-instruct-andyrdt", "resid_post_layer_3_trainer_1",
     dict(repo_id="andyrdt/saes-llama-3.1-8b-instruct", path="resid_post_layer_3/trainer_1")),
    ("qwen-scope-3-1.7b-base-w32k-l50", "layer0",
     dict(repo_id="Qwen/SAE-Res-Qwen3-1.7B-Base-W32K-L0_50", path="layer0.sae.pt", l0=50.0,
          hook="blocks.0.hook_resid_post", config={"k": 50})),
    ("goodfire-llama-3.1-8b-instruct", "layer_19",
     dict(repo_id="Goodfire/Llama-3.1-8B-Instruct-SAE-l19", path="Llama-3.1-8B-Instruct-SAE-l19.pth", l0=91.0,
          neuronpedia="llama3.1-8b-it/19-resid-post-gf", hook="blocks.19.hook_resid_post")),
    ("gpt2-small-res-jb", "blocks.11.hook_resid_post",
     dict(repo_id="jbloom/GPT2-Small-SAEs-Reformatted", path="blocks.11.hook_resid_post",
          neuronpedia="gpt2-small/12-res-jb", l0=70.0, variance_explained=0.77)),
    ("gpt2-small-resid-post-v5-32k", "blocks.0.hook_resid_post",
     dict(path="v5_32k_layer_0.pt", config={"dataset_path": "Skylion007/openwebtext"})),
    ("gpt2-small-mlp-tm", "blocks.11.hook_mlp_out",
     dict(path="sae_group_gpt2_blocks.11.hook_mlp_out_24576:v2", norm_scaling_factor=0.2851548652550073)),
    ("pythia-70m-deduped-res-sm", "blocks.0.hook_resid_pre",
     dict(repo_id="ctigges/pythia-70m-deduped__res-sm_processed", path="e-res-sm",
          neuronpedia="pythia-70m-deduped/e-att-sm")),
    ("mistral-7b-res-wg", "blocks.16.hook_resid_pre",
     dict(path="mistral_7b_layer_16", config={"normalize_activations": "constant_norm_rescale"})),
    ("gemma-2-9b-res-matryoshka-dc", "blocks.20.hook_resid_post",
     dict(path="blocks.20.hook_resid_post", neuronpedia="gemma-2-9b/20-res-matryoshka-dc", l0=60.0)),
]


@pytest.mark.parametrize(("release", "sae_id", "want"), KNOWN, ids=[f"{r}:{s}" for r, s, _ in KNOWN])
def test_known_resolutions(release: str, sae_id: str, want: dict):
    rel, entry = releases.resolve(release, sae_id)
    for key, value in want.items():
        got = getattr(rel, key) if key == "repo_id" else getattr(entry, key)
        if key == "config":
            got = dict(got)
        assert got == value, f"{release}/{sae_id}: {key} = {got!r}, SAELens says {value!r}"


def test_release_and_sae_counts_per_family():
    counts = {}
    for name in releases.list_releases():
        rel = releases.get_release(name)
        if Path(rel.source).stem not in SAELENS_FILES:
            continue
        n_rel, n_sae = counts.get(rel.format, (0, 0))
        counts[rel.format] = (n_rel + 1, n_sae + len(rel.saes))
    assert counts == {
        "saelens": (28, 292), "gemma-scope": (17, 2859), "gemma-scope-2": (75, 8784), "lm-saes": (7, 288),
        "dictionary-learning": (16, 838), "qwen-scope": (14, 544), "goodfire": (2, 2),
        "gemma-scope-2-clt": (4, 8),  # not in SAELens: Gemma Scope 2 CLTs, whole (270m/1b x pt/it x affine or not)
    }


def test_compact_entries_reproduce_plain_ones():
    """A spot check of the expand semantics the files rely on: ranges and lists cross within a row."""
    rel = releases.get_release("gemma-scope-2-4b-pt-mlp-all")
    ids = set(rel.saes)
    for layer, width, size in itertools.product(range(34), ("16k", "262k"), ("big", "small")):
        assert f"layer_{layer}_width_{width}_l0_{size}" in ids
    assert len(ids) == 34 * 2 * 2


# ------------------------------------------------------------------------------------------ declared schema


def test_shipped_json_schema_is_the_generated_one():
    """registry/schema.json is regenerated from sae_hub.registry_schema (python -m sae_hub.registry_schema)."""
    from sae_hub import registry_schema

    shipped = (REGISTRY / "schema.json").read_text(encoding="utf-8")
    regenerate = "python -m sae_hub.registry_schema > registry/schema.json"
    assert shipped == registry_schema.json_schema_text(), f"stale; regenerate: {regenerate}"


def _validator():
    import json

    import jsonschema

    schema = json.loads((REGISTRY / "schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("family", SAELENS_FILES)
def test_shipped_files_validate_against_the_json_schema(family: str):
    """An independent validator (jsonschema) accepts every shipped file as PyYAML reads it."""
    errors = list(_validator().iter_errors(_load(REGISTRY / f"{family}.yaml")))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]]


@pytest.mark.parametrize(("sae", "where"), [
    ({"id": "a", "sha256": 12345}, "sha256"),
    ({"id": "a", "sha256": "abc"}, "sha256"),
    ({"id": "a", "norm_scaling_factor": -2}, "norm_scaling_factor"),
    ({"id": "a", "config": {"k": 0}}, "config"),
    ({"id": "a", "config": {"not_a_field": 1}}, "config"),
    ({"id": "a", "vars": "oops"}, "vars"),
    ({"id": "a", "wat": 1}, ""),
])
def test_json_schema_refuses_what_sae_hub_refuses(sae: dict, where: str):
    doc = {"releases": [{"name": "x", "model": "m", "repo_id": "a/b", "format": "saelens", "saes": [sae]}]}
    errors = list(_validator().iter_errors(doc))
    assert errors, "the JSON Schema accepted it"
    with pytest.raises(RegistryError) as e:
        releases._parse(doc, "<dict>", check_formats=False)
    assert e.value.field.startswith(f"releases[0].saes[0].{where}".rstrip("."))
