"""Issue 15 loaders: one source layer of a circuit-tracer CLT (clt-source-layer), Kissane et al.'s hook_z SAEs
(connor-rob-hook-z), qresearch's DeepSeek-R1 SAE (deepseek-r1), temporal SAEs (SAE names TemporalSAE), and the Hub side:
one layer of a CLT release fetches that layer's files alone, and multi-layer releases load through their own class.

References are formulas written here (float64) from the files' raw tensors, never sae-hub's own code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import sae_hub
from sae_hub import SAE, MultiLayerDictionary
from sae_hub.errors import ConfigError, MissingFileError, ShapeMismatchError, UnsupportedSAEError

CT = Path(__file__).parent / "fixtures" / "circuit_tracer"


@pytest.fixture(autouse=True)
def fresh_registry():
    sae_hub.registry.reset()
    yield
    sae_hub.registry.reset()


def _clt_layer_ref(folder: Path, L: int, x: torch.Tensor, choice: str | int) -> tuple[torch.Tensor, torch.Tensor]:
    te = load_file(folder / f"W_enc_{L}.safetensors")
    W_dec = load_file(folder / f"W_dec_{L}.safetensors")[f"W_dec_{L}"].double()
    z = x.double() @ te[f"W_enc_{L}"].double().T + te[f"b_enc_{L}"].double()
    th = te.get(f"threshold_{L}")
    f = z * (z > th.double().reshape(-1)) if th is not None else z.clamp(min=0)
    dec = W_dec.sum(1) if choice == "sum" else W_dec[:, int(choice), :]
    return f, f @ dec + te[f"b_dec_{L}"].double()


@pytest.mark.parametrize("case", ["clt_relu", "clt_jumprelu"])
def test_clt_source_layer_features_exact_decoder_by_option(case: str, tmp_path: Path):
    folder = CT / case
    n = len(list(folder.glob("W_enc_*.safetensors")))
    for L in range(n):
        x = torch.randn(7, load_file(folder / f"W_enc_{L}.safetensors")[f"W_enc_{L}"].shape[1],
                        generator=torch.Generator().manual_seed(L))
        for choice in ["sum", *range(n - L)]:
            sae = SAE.load_from_disk(folder, format="clt-source-layer", layer=L, clt_decoder=choice)
            f_ref, out_ref = _clt_layer_ref(folder, L, x, choice)
            assert (sae.encode(x).double() - f_ref).abs().max() <= 1e-5
            assert (sae.decode(sae.encode(x)).double() - out_ref).abs().max() <= 1e-5
            assert any("LOSSY" in c for c in sae.cfg.provenance.conversions)
        # the features equal the whole CLT's features at that layer (the exact object)
        whole = MultiLayerDictionary.load_from_disk(folder)
        torch.testing.assert_close(sae.encode(x), whole.encode(L, x), atol=1e-6, rtol=1e-6)


def test_clt_source_layer_refusals(tmp_path: Path):
    folder = CT / "clt_relu"
    with pytest.raises(UnsupportedSAEError, match="MultiLayerDictionary") as e:
        SAE.load_from_disk(folder, format="clt-source-layer", layer=0)
    assert e.value.field == "W_dec_0"
    with pytest.raises(ConfigError, match="pass layer"):
        SAE.load_from_disk(folder, format="clt-source-layer", clt_decoder="sum")
    with pytest.raises(ConfigError, match="clt_decoder"):
        SAE.load_from_disk(folder, format="clt-source-layer", layer=1, clt_decoder=1)  # layer 1 of 2: 1 target
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(folder / "W_enc_1.safetensors", one)
    with pytest.raises(MissingFileError) as e:
        SAE.load_from_disk(one, format="clt-source-layer", clt_decoder="sum")
    assert e.value.field == "W_dec_1" and str(e.value.path).endswith("W_dec_1.safetensors")
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(folder / "W_enc_0.safetensors", bad)
    w = load_file(folder / "W_dec_0.safetensors")["W_dec_0"]
    save_file({"W_dec_0": w[:-1].contiguous()}, bad / "W_dec_0.safetensors")  # d_sae disagrees with W_enc_0
    with pytest.raises(ShapeMismatchError) as e:
        SAE.load_from_disk(bad, format="clt-source-layer", clt_decoder="sum")
    assert e.value.field == "W_dec_0" and str(e.value.path).endswith("W_dec_0.safetensors")


def _hook_z_case(folder: Path, name: str, d_in: int, d_sae: int, dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
          "b_enc": torch.randn(d_sae, generator=g), "b_dec": torch.randn(d_in, generator=g)}
    sd = {k: v.to(dtype) for k, v in sd.items()}
    torch.save(sd, folder / f"{name}.pt")
    (folder / f"{name}_cfg.json").write_text(json.dumps({"act_size": d_in, "dict_size": d_sae, "seed": seed,
                                                         "act_name": "blocks.2.attn.hook_z", "l1_coeff": 1.0}))
    return sd


@pytest.mark.parametrize(("d_in", "d_sae", "dtype"), [(16, 40, torch.float32), (12, 24, torch.bfloat16)])
def test_connor_rob_hook_z(tmp_path: Path, d_in: int, d_sae: int, dtype: torch.dtype):
    name = "gpt2-small_L2_Hcat_z_lr1.20e-03_v9"
    sd = _hook_z_case(tmp_path, name, d_in, d_sae, dtype, 3)
    sae = SAE.load_from_disk(tmp_path / f"{name}.pt")  # no format hint
    assert sae.cfg.provenance.source_format == "connor-rob-hook-z"
    assert sae.cfg.hook_name == "blocks.2.attn.hook_z" and sae.cfg.reshape_activations == "hook_z"
    x = torch.randn(9, d_in).to(dtype)
    s = {k: v.double() for k, v in sd.items()}
    f = ((x.double() - s["b_dec"]) @ s["W_enc"] + s["b_enc"]).clamp(min=0)  # SAELens standard, b_dec centring
    tol = 1e-5 if dtype == torch.float32 else 0.05 * f.abs().max().item()
    assert (sae.encode(x).double() - f).abs().max() <= tol
    # a [.., n_heads, d_head] hook_z activation is flattened first
    xz = x.reshape(9, 2, d_in // 2)
    torch.testing.assert_close(sae.encode(xz), sae.encode(x))


def test_connor_rob_hook_z_errors(tmp_path: Path):
    name = "L0"
    _hook_z_case(tmp_path, name, 8, 16, torch.float32, 1)
    (tmp_path / f"{name}_cfg.json").write_text(json.dumps({"act_size": 8, "dict_size": 17, "act_name": "x.hook_z"}))
    with pytest.raises(ShapeMismatchError) as e:
        SAE.load_from_disk(tmp_path / f"{name}.pt", format="connor-rob-hook-z")
    assert e.value.field == "W_enc"
    (tmp_path / f"{name}_cfg.json").unlink()
    with pytest.raises(MissingFileError):
        SAE.load_from_disk(tmp_path / f"{name}.pt", format="connor-rob-hook-z")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_deepseek_r1_state_dict(tmp_path: Path, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    enc, dec = torch.nn.Linear(16, 48), torch.nn.Linear(48, 16)
    with torch.no_grad():
        for p in (*enc.parameters(), *dec.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    sd = {f"encoder.{k}": v.to(dtype) for k, v in enc.state_dict().items()}
    sd |= {f"decoder.{k}": v.to(dtype) for k, v in dec.state_dict().items()}
    p = tmp_path / "DeepSeek-R1-Distill-Llama-8B-SAE-l19.pt"
    torch.save(sd, p)
    sae = SAE.load_from_disk(p, format="deepseek-r1")
    assert sae.cfg.hook_name == "blocks.19.hook_resid_post" and sae.dtype == dtype
    x = torch.randn(5, 16).to(dtype)
    with torch.no_grad():  # the reference is torch's own nn.Linear, in float64
        f = torch.relu(enc.double()(x.double()))
        r = dec.double()(f)
    tol = 1e-5 if dtype == torch.float32 else 0.05 * f.abs().max().item()
    assert (sae.encode(x).double() - f).abs().max() <= tol
    assert (sae(x).double() - r).abs().max() <= (1e-4 if dtype == torch.float32 else 0.05 * r.abs().max().item())
    del sd["decoder.bias"]
    torch.save(sd, p)
    with pytest.raises(ShapeMismatchError) as e:
        SAE.load_from_disk(p, format="deepseek-r1")
    assert e.value.field == "decoder.bias"


def test_temporal_sae_is_refused_by_sae_naming_its_class(tmp_path: Path):
    # temporal SAEs load exactly into sae_hub.TemporalSAE (tests/test_temporal.py); SAE refuses them by name
    (tmp_path / "conf.yaml").write_text("sae: {n_heads: 4, n_attn_layers: 1, sae_diff_type: topk, kval_topk: 192}\n"
                                        "llm: {dimin: 8}\n")
    save_file({"D": torch.zeros(16, 8), "b": torch.zeros(8)}, tmp_path / "latest_ckpt.safetensors")
    with pytest.raises(UnsupportedSAEError, match=r"earlier tokens.*TemporalSAE\.load_from_disk") as e:
        SAE.load_from_disk(tmp_path)  # detected, then refused before the files are read
    assert e.value.field == "format"


# ------------------------------------------------------------------------------------------------ Hub side


def _seed_clt(hub, repo: str, case: str = "clt_jumprelu") -> None:
    for f in sorted((CT / case).iterdir()):
        if f.name.startswith("W_") or f.name == "config.yaml":
            hub.add_file(repo, f.name, f.read_bytes())
    hub.add_file(repo, "README.md", b"# clt\n")


def _resolved(hub) -> list[str]:
    gets = hub.find(method="GET", path_contains="/resolve/")
    return sorted(r.path.split("/resolve/")[1].split("/", 1)[1] for r in gets)


def test_one_layer_of_a_clt_release_fetches_only_its_files(hub):
    repo = "test-org/clt"
    _seed_clt(hub, repo)
    sae_hub.registry.add({"releases": [
        {"name": "t-clt-per-layer", "model": "m", "repo_id": repo, "format": "clt-source-layer", "kind": "clt",
         "saes": [{"id": "layer_{layer}", "path": "{layer}", "options": {"layer": "{layer}"},
                   "files": ["W_enc_{layer}.safetensors", "W_dec_{layer}.safetensors", "config.yaml"],
                   "expand": [{"layer": "0..2"}]}]},
        {"name": "t-clt", "model": "m", "repo_id": repo, "format": "circuit-tracer-clt", "kind": "clt",
         "saes": [{"id": "all", "path": "."}]}]})
    sae = SAE.from_pretrained("t-clt-per-layer", "layer_1", clt_decoder="sum")
    assert _resolved(hub) == ["W_dec_1.safetensors", "W_enc_1.safetensors", "config.yaml"]
    x = torch.randn(4, sae.cfg.d_in)
    f_ref, _ = _clt_layer_ref(CT / "clt_jumprelu", 1, x, "sum")
    assert (sae.encode(x).double() - f_ref).abs().max() <= 1e-5
    hub.reset_log()
    with pytest.raises(UnsupportedSAEError, match=r"MultiLayerDictionary\.from_pretrained\('t-clt', 'all'\)"):
        SAE.from_pretrained("t-clt", "all")
    assert hub.requests == []  # refused before any request
    whole = MultiLayerDictionary.from_pretrained("t-clt", "all")
    assert whole.cfg.kind == "clt" and whole.cfg.extra["release"] == {"name": "t-clt", "sae_id": "all"}
    assert "README.md" not in _resolved(hub)
    ref = load_file(CT / "clt_jumprelu" / "reference.safetensors")
    assert set(ref)  # the library's own outputs are checked against the whole CLT in test_loader_circuit_tracer
    torch.testing.assert_close(whole.encode(1, x), sae.encode(x), atol=1e-6, rtol=1e-6)


def test_one_file_of_a_transcoder_set_release_fetches_only_it(hub):
    repo = "test-org/plt"
    src = CT / "transcoder_set_relu"
    for f in sorted(src.iterdir()):
        if f.suffix in (".safetensors", ".yaml") and f.name != "reference.safetensors":
            hub.add_file(repo, f.name, f.read_bytes())
    sae_hub.registry.add({"releases": [
        {"name": "t-plt", "model": "m", "repo_id": repo, "format": "circuit-tracer-transcoder",
         "kind": "transcoder_set",
         "hook": "blocks.{layer}.mlp.hook_in", "hook_out": "blocks.{layer}.hook_mlp_out",
         "saes": [{"id": "layer_{layer}", "path": "layer_{layer}.safetensors", "expand": [{"layer": "0..1"}]}]}]})
    sae = SAE.from_pretrained("t-plt", "layer_1")
    assert _resolved(hub) == ["layer_1.safetensors"]
    assert sae.cfg.hook_name == "blocks.1.mlp.hook_in" and sae.cfg.hook_name_out == "blocks.1.hook_mlp_out"


def test_top_level_from_pretrained_returns_the_class_the_release_holds(hub):
    """sae_hub.from_pretrained(release, id): the multi-layer object for a CLT release, an SAE for one layer."""
    repo = "test-org/clt-top"
    _seed_clt(hub, repo)
    sae_hub.registry.add({"releases": [
        {"name": "t-top-clt", "model": "m", "repo_id": repo, "format": "circuit-tracer-clt", "kind": "clt",
         "saes": [{"id": "all", "path": "."}]},
        {"name": "t-top-layer", "model": "m", "repo_id": repo, "format": "clt-source-layer", "kind": "clt",
         "saes": [{"id": "layer_1", "path": "1", "options": {"layer": 1},
                   "files": ["W_enc_1.safetensors", "W_dec_1.safetensors", "config.yaml"]}]}]})
    whole = sae_hub.from_pretrained("t-top-clt", "all")
    assert isinstance(whole, MultiLayerDictionary) and whole.cfg.kind == "clt"
    one = sae_hub.from_pretrained("t-top-layer", "layer_1", clt_decoder="sum")
    assert isinstance(one, SAE)
    x = torch.randn(4, one.cfg.d_in)
    torch.testing.assert_close(whole.encode(1, x), one.encode(x), atol=1e-6, rtol=1e-6)
