"""What sae-hub writes for circuit-tracer, read by circuit-tracer 0.5.0's own loaders (``.venv-ct``, made by
``.ci/bootstrap.py test``): its features and outputs equal sae-hub's (<= 1e-5, fp32) for transcoder sets (relu;
jumprelu with skip connections and negative thresholds), CLTs (relu, jumprelu, sparse targets written as zero
decoders), folders of single-layer sae-hub transcoders (with the folds: norm scaling factor, input centering,
negative thresholds) and one transcoder; and the round trip circuit-tracer fixture -> sae-hub -> circuit-tracer
gives back the original parameters exactly.

Each written folder is read the ways circuit-tracer reads one: ``load_transcoders_from_cache`` (its config.yaml
reader: model_kind and hooks), ``load_transcoder_set`` / ``load_clt`` with lazy and eager weights, and the
sparse attribution path (``compute_attribution_components``), which slices the decoder files lazily.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytest.importorskip("circuit_tracer", reason="compat suite: run in the circuit-tracer 0.5.0 env (.venv-ct)")

from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
from circuit_tracer.transcoder.single_layer_transcoder import (
    load_relu_transcoder,
    load_transcoder_set,
)
from circuit_tracer.utils.caching import load_transcoders_from_cache

from sae_hub import SAE, SAEConfig, convert
from sae_hub.multilayer import MultiLayerConfig, MultiLayerDictionary

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "circuit_tracer"
CASES = ["transcoder_set_jumprelu_skip", "transcoder_set_relu", "clt_jumprelu", "clt_relu"]
TOL = {"atol": 1e-5, "rtol": 1e-5}
CPU = torch.device("cpu")
D, ROWS = 16, 12


def ct_config(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())


def ct_from_cache(folder: Path) -> tuple[torch.nn.Module, dict]:
    """circuit-tracer's reader of a local folder with config.yaml (what ``save_transcoders_to_cache`` leaves)."""
    return load_transcoders_from_cache(folder.name, cache_dir=folder.parent, device=CPU, dtype=torch.float32,
                                       lazy_encoder=False, lazy_decoder=True)


def ct_direct(folder: Path, *, lazy: bool) -> torch.nn.Module:
    cfg = ct_config(folder)
    hooks = {"feature_input_hook": cfg["feature_input_hook"], "feature_output_hook": cfg["feature_output_hook"]}
    if cfg["model_kind"] == "transcoder_set":
        n = len(list(folder.glob("layer_*.safetensors")))
        return load_transcoder_set({i: str(folder / f"layer_{i}.safetensors") for i in range(n)}, scan="t",
                                   device=CPU, dtype=torch.float32, lazy_encoder=lazy, lazy_decoder=lazy, **hooks)
    return load_clt(str(folder), scan="t", device=CPU, dtype=torch.float32, lazy_encoder=lazy, lazy_decoder=lazy,
                    **hooks)


@torch.no_grad()
def ct_outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, reconstruction, sparse-path reconstruction) as circuit-tracer computes them; x [n_layers, rows, d]."""
    codes = model.encode(x)
    if hasattr(model, "transcoders"):
        recon = model.decode(codes, x)
    else:
        recon = model.decode(codes.to_sparse(), x)
    sparse = model.compute_attribution_components(x, zero_positions=slice(0, 0))["reconstruction"]
    return codes, recon, sparse


@torch.no_grad()
def hub_outputs(d: MultiLayerDictionary, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    f, out = d.encode_all(x), d.forward(x)
    return torch.stack([f[layer] for layer in d.cfg.layers]), torch.stack([out[layer] for layer in d.cfg.layers])


def assert_same(model: torch.nn.Module, d: MultiLayerDictionary, x: torch.Tensor) -> float:
    codes, recon, sparse = ct_outputs(model, x)
    f, out = hub_outputs(d, x)
    torch.testing.assert_close(codes, f, **TOL)
    torch.testing.assert_close(recon, out, **TOL)
    torch.testing.assert_close(sparse, out, **TOL)
    assert (f != 0).any() and (f == 0).any(), "degenerate case: every feature on, or none"
    return max((codes - f).abs().max().item(), (recon - out).abs().max().item())


# ---------------------------------------------------------------------- circuit-tracer fixtures, round trip


@pytest.mark.parametrize("case", CASES)
def test_fixture_round_trip_loads_in_circuit_tracer_as_the_original(case, tmp_path):
    """circuit-tracer files -> sae-hub -> convert(to='circuit-tracer') -> circuit-tracer: the same parameters
    bit for bit, the same hooks and model kind, and the library's own recorded outputs."""
    src = FIX / case
    (out,) = convert(src, tmp_path / "ct", to="circuit-tracer")
    orig, conv = ct_direct(src, lazy=False), ct_direct(out, lazy=False)
    a, b = orig.state_dict(), conv.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (conv.feature_input_hook, conv.feature_output_hook) == (orig.feature_input_hook, orig.feature_output_hook)
    cfg_o, cfg_c = ct_config(src), ct_config(out)
    assert {k: cfg_c[k] for k in cfg_o} == cfg_o
    ref = load_file(src / "reference.safetensors")
    cached, config = ct_from_cache(out)
    assert config["model_kind"] == cfg_o["model_kind"]
    codes, recon, sparse = ct_outputs(cached, ref["x"])
    torch.testing.assert_close(codes, ref["codes"], **TOL)
    torch.testing.assert_close(recon, ref["recon"], **TOL)
    torch.testing.assert_close(sparse, ref["recon"], **TOL)
    assert_same(cached, MultiLayerDictionary.load_from_disk(src), ref["x"])


# ---------------------------------------------------------------------- generated dictionaries


def _inputs(g: torch.Generator, n: int) -> torch.Tensor:
    return torch.randn(n, ROWS, D, generator=g) * 2 + torch.randn(n, 1, D, generator=g)


def _thresholds(z: torch.Tensor, g: torch.Generator, *, negative: bool) -> torch.Tensor:
    """A threshold per feature at a random quantile of its pre-activations, kept >= 1e-3 from every value (a
    rounding difference between the two libraries must not flip z > t); some negative when asked."""
    q = torch.rand(z.shape[-1], generator=g) * 0.6 + 0.3
    th = torch.quantile(z.reshape(-1, z.shape[-1]), q, dim=0).diagonal().clone()
    if negative:
        th[: z.shape[-1] // 3] = -th[: z.shape[-1] // 3].abs() - 0.05
    for _ in range(100):
        close = ((z.reshape(-1, z.shape[-1]) - th).abs() < 1e-3).any(0)
        if not close.any():
            return th
        th[close] += 2.5e-3
    raise AssertionError("no threshold with a margin")


def make_dictionary(kind: str, arch: str, *, skip: bool = False, targets: list[list[int]] | None = None,
                    n: int = 3, d_sae: int = 24, seed: int = 0, negative: bool = False
                    ) -> tuple[MultiLayerDictionary, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = MultiLayerConfig(kind=kind, layers=list(range(n)), d_in=D, d_sae=d_sae, architecture=arch, has_skip=skip,
                           targets=targets, model_name="gpt2",
                           hook_names_in=[f"blocks.{i}.ln2.hook_normalized" for i in range(n)],
                           hook_names_out=[f"blocks.{i}.hook_mlp_out" for i in range(n)])
    x = _inputs(g, n)
    t: dict[str, torch.Tensor] = {}
    for i in range(n):
        t[f"W_enc.{i}"] = torch.randn(D, d_sae, generator=g) / D**0.5
        t[f"b_enc.{i}"] = torch.randn(d_sae, generator=g) * 0.3
        t[f"W_dec.{i}"] = torch.randn(d_sae, len(cfg.targets[i]), D, generator=g) / d_sae**0.5
        t[f"b_dec.{i}"] = torch.randn(D, generator=g) * 0.5
        if arch == "jumprelu":
            z = x[i] @ t[f"W_enc.{i}"] + t[f"b_enc.{i}"]
            t[f"threshold.{i}"] = _thresholds(z, g, negative=negative)
        if skip:
            t[f"W_skip.{i}"] = torch.randn(D, D, generator=g) * 0.1
    return MultiLayerDictionary.from_state_dict(cfg, t), x


GENERATED = {
    "set-jumprelu-skip-negative": dict(kind="transcoder_set", arch="jumprelu", skip=True, negative=True, seed=1),
    "set-relu-skip": dict(kind="transcoder_set", arch="relu", skip=True, seed=2),
    "set-relu": dict(kind="transcoder_set", arch="relu", n=2, seed=3),
    "clt-relu": dict(kind="clt", arch="relu", seed=4),
    "clt-jumprelu-negative": dict(kind="clt", arch="jumprelu", n=4, negative=True, seed=5),
    "clt-sparse-targets": dict(kind="clt", arch="jumprelu", n=4, targets=[[0, 2], [1, 2, 3], [2], [3]], seed=6),
}


@pytest.mark.parametrize("name", list(GENERATED))
def test_generated_dictionary_loads_in_circuit_tracer(name, tmp_path):
    d, x = make_dictionary(**GENERATED[name])
    out = d.save_circuit_tracer(tmp_path / name)
    cached, config = ct_from_cache(out)
    assert (config["feature_input_hook"], config["feature_output_hook"]) == ("ln2.hook_normalized", "hook_mlp_out")
    assert config["model_name"] == "gpt2"
    assert_same(cached, d, x)
    assert_same(ct_direct(out, lazy=True), d, x)
    assert_same(ct_direct(out, lazy=False), d, x)
    # sae-hub reads back its own output as the same dictionary
    back = MultiLayerDictionary.load_from_disk(out)
    f0, o0 = hub_outputs(d, x)
    f1, o1 = hub_outputs(back, x)
    assert torch.equal(f0, f1) and torch.equal(o0, o1)
    if name == "clt-sparse-targets":
        conv = yaml.safe_load((out / "config.yaml").read_text())["sae_hub"]["provenance"]["conversions"]
        assert any("written as zeros" in c for c in conv)


def test_bfloat16_files_keep_their_dtype(tmp_path):
    d, _ = make_dictionary("clt", "jumprelu", seed=7)
    d = MultiLayerDictionary.from_state_dict(d.cfg, d.canonical_state_dict(), dtype="bfloat16")
    out = d.save_circuit_tracer(tmp_path / "bf16")
    assert load_file(out / "W_dec_1.safetensors")["W_dec_1"].dtype == torch.bfloat16
    clt = load_clt(str(out), scan="t", device=CPU, dtype=torch.bfloat16, lazy_decoder=False)
    for i in range(d.cfg.n_layers):
        assert torch.equal(clt.W_enc[i], d.W_enc[i].T) and torch.equal(clt.W_dec[i], d.W_dec[i])


# ---------------------------------------------------------------------- single-layer sae-hub transcoders


def make_sae(layer: int, *, arch: str, seed: int, skip: bool = False, transcoder: bool = True,
             **cfg_kw: object) -> tuple[SAE, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, D, generator=g) * 2 + torch.randn(1, D, generator=g)
    cfg = SAEConfig(architecture=arch, d_in=D, d_sae=24, has_skip=skip, model_name="gpt2",
                    hook_name=f"blocks.{layer}.hook_resid_mid",
                    hook_name_out=f"blocks.{layer}.hook_mlp_out" if transcoder else None, **cfg_kw)
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, 24, generator=g) / D**0.5)
        sae.b_enc.copy_(torch.randn(24, generator=g) * 0.3)
        sae.W_dec.copy_(torch.randn(24, D, generator=g) / 24**0.5)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.5)
        if skip:
            sae.W_skip.copy_(torch.randn(D, D, generator=g) * 0.1)
        if arch == "jumprelu":
            xs = x * (cfg.norm_scaling_factor or 1.0) - (sae.b_dec if cfg.apply_b_dec_to_input else 0)
            z = xs @ sae.W_enc + sae.b_enc
            sae.threshold.copy_(_thresholds(z, g, negative=True))
    return sae, x


@torch.no_grad()
def test_folder_of_sae_hub_transcoders_with_skip_and_folds(tmp_path):
    """A transcoder set from per-layer sae-hub transcoders (skip, jumprelu with negative thresholds, one with a
    constant norm scaling factor): circuit-tracer computes what each SAE computes."""
    saes, xs = [], []
    for layer in range(3):
        extra = {"norm_scaling_factor": 0.5, "norm_scaling_factor_out": 2.0} if layer == 1 else {}
        sae, x = make_sae(layer, arch="jumprelu", seed=10 + layer, skip=True, **extra)
        sae.save_pretrained(tmp_path / "src" / f"layer_{layer}_tc", saelens_compatible=False)
        saes.append(SAE.load_from_disk(tmp_path / "src" / f"layer_{layer}_tc"))
        xs.append(x)
    (out,) = convert(tmp_path / "src", tmp_path / "ct", to="circuit-tracer")
    cached, config = ct_from_cache(out)
    assert (config["feature_input_hook"], config["feature_output_hook"]) == ("hook_resid_mid", "hook_mlp_out")
    x = torch.stack(xs)
    codes, recon, sparse = ct_outputs(cached, x)
    for layer, sae in enumerate(saes):
        torch.testing.assert_close(codes[layer], sae.encode(x[layer]), **TOL)
        torch.testing.assert_close(recon[layer], sae(x[layer]), **TOL)
        torch.testing.assert_close(sparse[layer], sae(x[layer]), **TOL)
    conv = config["sae_hub"]["provenance"]["conversions"]
    assert any(c.startswith("layer 1: fold_activation_norm_scaling_factor") for c in conv), conv
    assert sum("negative JumpReLU threshold(s) set to 0" in c for c in conv) == 3, conv


@torch.no_grad()
@pytest.mark.parametrize("variant", ["relu-transcoder", "centred-sae"])
def test_one_transcoder(variant, tmp_path):
    """One SAE: at layer 0 it is a whole set for circuit-tracer's config reader; any layer loads with
    load_relu_transcoder. An SAE that subtracts b_dec from its input is folded (fold_input_centering)."""
    if variant == "relu-transcoder":
        sae, x = make_sae(0, arch="relu", seed=20, skip=True)
    else:
        sae, x = make_sae(0, arch="jumprelu", seed=21, transcoder=False, apply_b_dec_to_input=True)
    sae.save_pretrained(tmp_path / "src", saelens_compatible=False)
    (out,) = convert(tmp_path / "src", tmp_path / "ct", to="circuit-tracer")
    cached, _ = ct_from_cache(out)
    codes, recon, _ = ct_outputs(cached, x[None])
    torch.testing.assert_close(codes[0], sae.encode(x), **TOL)
    torch.testing.assert_close(recon[0], sae(x), **TOL)
    tc = load_relu_transcoder(str(out / "layer_0.safetensors"), 0, device=CPU, lazy_encoder=False,
                              lazy_decoder=False)
    torch.testing.assert_close(tc(x), sae(x), **TOL)


@torch.no_grad()
def test_one_transcoder_at_a_later_layer(tmp_path):
    sae, x = make_sae(5, arch="jumprelu", seed=22)
    sae.save_pretrained(tmp_path / "src")
    (out,) = convert(tmp_path / "src", tmp_path / "ct", to="circuit-tracer")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "layer_5.safetensors"]
    tc = load_relu_transcoder(str(out / "layer_5.safetensors"), 5, device=CPU, lazy_encoder=True, lazy_decoder=True)
    torch.testing.assert_close(tc(x), sae(x), **TOL)
    torch.testing.assert_close(tc.encode(x), sae.encode(x), **TOL)
