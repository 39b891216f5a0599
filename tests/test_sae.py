"""The SAE's math against formulas written out here independently, plus sparse paths, folds and dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from sae_hub import SAE, SAEConfig
from sae_hub.errors import ConfigError, ShapeMismatchError, UnsupportedSAEError


def make_sae(arch: str, d_in: int = 12, d_sae: int = 40, seed: int = 0, **kw) -> SAE:
    """An SAE with every parameter random and non-trivial (no zero biases, no unit decoder rows)."""
    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, **kw)
    sae = SAE(cfg)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if name != "threshold" else 0.3))
        if arch == "jumprelu":
            sae.threshold.abs_()
    return sae


def inputs(d_in: int = 12, n: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g) * 2 + torch.randn(d_in, generator=g)


def reference_codes(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """The canonical formulas, written without any of the SAE's helpers."""
    c = sae.cfg
    xc = x - sae.b_dec if c.apply_b_dec_to_input else x
    if c.architecture == "gated":
        gate = (xc @ sae.W_enc + sae.b_gate) > 0
        mag = torch.relu(xc @ (sae.W_enc * torch.exp(sae.r_mag)) + sae.b_mag)
        return gate * mag
    z = xc @ sae.W_enc + sae.b_enc
    if c.architecture == "relu":
        return torch.relu(z)
    if c.architecture == "jumprelu":
        return torch.relu(z) * (z > sae.threshold)
    out = torch.zeros_like(z)
    if c.rank_by_decoder_norm:  # ranked on z*n, reported as z
        idx = torch.relu(z * sae.W_dec.norm(dim=-1)).topk(c.k, dim=-1).indices
        return out.scatter(-1, idx, torch.relu(z).gather(-1, idx))
    if c.rescale_acts_by_decoder_norm:
        z = z * sae.W_dec.norm(dim=-1)
    vals, idx = torch.relu(z).topk(c.k, dim=-1)
    return out.scatter(-1, idx, vals)


def reference_recon(sae: SAE, f: torch.Tensor) -> torch.Tensor:
    if sae.cfg.rescale_acts_by_decoder_norm:
        f = f / sae.W_dec.norm(dim=-1)
    return f @ sae.W_dec + sae.b_dec


CASES = [
    ("relu", {}),
    ("relu", {"apply_b_dec_to_input": True}),
    ("jumprelu", {}),
    ("jumprelu", {"apply_b_dec_to_input": True}),
    ("topk", {"k": 5}),
    ("topk", {"k": 5, "apply_b_dec_to_input": True, "rescale_acts_by_decoder_norm": True}),
    ("topk", {"k": 5, "rank_by_decoder_norm": True}),
    ("gated", {"apply_b_dec_to_input": True}),
]


@pytest.mark.parametrize(("arch", "kw"), CASES)
def test_encode_decode_match_canonical_formulas(arch, kw):
    sae = make_sae(arch, **kw)
    x = inputs()
    with torch.no_grad():
        f = sae.encode(x)
        ref = reference_codes(sae, x)
        assert (f != 0).any() and (f == 0).any()
        torch.testing.assert_close(f, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(f), reference_recon(sae, ref), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x), reference_recon(sae, ref), atol=1e-5, rtol=1e-5)


def test_topk_keeps_exactly_k_and_leading_dims():
    sae = make_sae("topk", k=3)
    x = inputs(n=10).reshape(2, 5, 12)
    f = sae.encode(x)
    assert f.shape == (2, 5, 40)
    assert ((f > 0).sum(-1) <= 3).all()
    torch.testing.assert_close(f.reshape(10, 40), reference_codes(sae, x.reshape(10, 12)))


@pytest.mark.parametrize("flag", [None, "rescale_acts_by_decoder_norm", "rank_by_decoder_norm"])
def test_sparse_topk_path_equals_dense(flag):
    sae = make_sae("topk", k=6, apply_b_dec_to_input=True, **({flag: True} if flag else {}))
    x = inputs(n=16).reshape(4, 4, 12)
    with torch.no_grad():
        vals, idx = sae.encode_topk(x)
        assert vals.shape == idx.shape == (4, 4, 6)
        dense = sae.encode(x)
        torch.testing.assert_close(torch.zeros_like(dense).scatter(-1, idx, vals), dense)
        torch.testing.assert_close(sae.decode_sparse(vals, idx), sae.decode(dense), atol=1e-5, rtol=1e-5)


def test_sparse_topk_needs_topk():
    with pytest.raises(ConfigError, match="topk"):
        make_sae("relu").encode_topk(inputs())


def test_sparse_decode_backpropagates_like_dense():
    sae = make_sae("topk", k=4)
    x = inputs(n=8)
    vals, idx = sae.encode_topk(x)
    sae.decode_sparse(vals, idx).pow(2).sum().backward()
    g_sparse = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    sae.decode(sae.encode(x)).pow(2).sum().backward()
    for n, p in sae.named_parameters():
        torch.testing.assert_close(g_sparse[n], p.grad, atol=1e-4, rtol=1e-4, msg=n)


def test_skip_transcoder_uses_raw_input():
    g = torch.Generator().manual_seed(3)
    sae = make_sae("jumprelu", d_in=12, d_out=7, has_skip=True, hook_name="blocks.0.ln2.hook_normalized",
                   hook_name_out="blocks.0.hook_mlp_out")
    assert sae.cfg.is_transcoder and sae.W_dec.shape == (40, 7) and sae.W_skip.shape == (7, 12)
    x = torch.randn(5, 12, generator=g)
    expected = reference_recon(sae, reference_codes(sae, x)) + x @ sae.W_skip.T
    torch.testing.assert_close(sae(x), expected, atol=1e-5, rtol=1e-5)


def test_layer_norm_and_zscore_are_applied_per_token():
    x = inputs(n=6)
    for mode, ddof in (("layer_norm", 1), ("zscore", 0)):
        sae = make_sae("relu", apply_b_dec_to_input=True, normalize_activations=mode)
        mu = x.mean(-1, keepdim=True)
        sd = (x - mu).pow(2).sum(-1, keepdim=True).div(x.shape[-1] - ddof).sqrt()
        xn = (x - mu) / (sd + 1e-5)
        f = reference_codes(sae, xn)
        out_scale = sd if mode == "layer_norm" else sd + 1e-5
        torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x), reference_recon(sae, f) * out_scale + mu, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x))


def test_per_token_norm_decode_without_matching_encode_is_an_error():
    sae = make_sae("relu", normalize_activations="constant_norm_rescale")
    sae.encode(inputs(n=4))
    with pytest.raises(ConfigError, match="statistics"):
        sae.decode(torch.zeros(7, 40))


def test_constant_norm_rescale():
    sae = make_sae("topk", k=4, normalize_activations="constant_norm_rescale")
    x = inputs(n=5)
    coeff = math.sqrt(12) / x.norm(dim=-1, keepdim=True)
    f = reference_codes(sae, x * coeff)
    torch.testing.assert_close(sae.encode(x), f)
    torch.testing.assert_close(sae(x), reference_recon(sae, f) / coeff, atol=1e-5, rtol=1e-5)


def test_runtime_scaling_factor_and_its_fold():
    sae = make_sae("jumprelu", apply_b_dec_to_input=True, normalize_activations="expected_average_only_in",
                   norm_scaling_factor=3.5)
    x = inputs()
    f = reference_codes(sae, x * 3.5)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
        recon = sae(x)
        torch.testing.assert_close(recon, reference_recon(sae, f) / 3.5, atol=1e-5, rtol=1e-5)
        sae.fold_activation_norm_scaling_factor()
        assert sae.cfg.norm_scaling_factor is None and sae.cfg.normalize_activations == "none"
        assert sae.cfg.provenance.conversions == ["fold_activation_norm_scaling_factor(s_in=3.5, s_out=3.5)"]
        torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x), recon, atol=1e-5, rtol=1e-5)


def test_fold_scaling_factor_refuses_to_scale_twice():
    sae = make_sae("relu", normalize_activations="expected_average_only_in", norm_scaling_factor=2.0)
    with pytest.raises(ConfigError, match="twice"):
        sae.fold_activation_norm_scaling_factor(3.0)


def test_fold_scaling_factor_for_transcoder_with_different_in_out_scales():
    sae = make_sae("relu", d_out=9, has_skip=True)
    x = inputs(n=10)
    s_in, s_out = 1.7, 0.4
    with torch.no_grad():
        y_scaled = sae(x * s_in)
        f = sae.encode(x * s_in)
        sae.fold_activation_norm_scaling_factor(s_in, s_out)
        torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae(x), y_scaled / s_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("arch", "kw"), [
    ("relu", {"apply_b_dec_to_input": True}),
    ("jumprelu", {}),
    ("gated", {"apply_b_dec_to_input": True}),
    ("topk", {"k": 5, "rescale_acts_by_decoder_norm": True}),
    ("topk", {"k": 5, "rank_by_decoder_norm": True}),
])
def test_fold_W_dec_norm_is_exact(arch, kw):
    sae = make_sae(arch, **kw)
    x = inputs()
    with torch.no_grad():
        n = sae.W_dec.norm(dim=-1)
        f, recon = sae.encode(x), sae(x)
        sae.fold_W_dec_norm()
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(40), atol=1e-5, rtol=0)
        torch.testing.assert_close(sae(x), recon, atol=1e-5, rtol=1e-5)
        expected_f = f if kw.get("rescale_acts_by_decoder_norm") else f * n
        torch.testing.assert_close(sae.encode(x), expected_f, atol=1e-5, rtol=1e-5)
    assert sae.cfg.provenance.conversions == ["fold_W_dec_norm"]
    assert not sae.cfg.rescale_acts_by_decoder_norm and not sae.cfg.rank_by_decoder_norm


def test_fold_W_dec_norm_refused_when_it_would_change_topk_selection():
    with pytest.raises(UnsupportedSAEError, match="selection"):
        make_sae("topk", k=5).fold_W_dec_norm()


def test_fold_input_centering_is_exact():
    for arch, kw in (("relu", {}), ("gated", {}), ("topk", {"k": 4})):
        sae = make_sae(arch, apply_b_dec_to_input=True, **kw)
        x = inputs()
        with torch.no_grad():
            f, recon = sae.encode(x), sae(x)
            sae.fold_input_centering()
            assert not sae.cfg.apply_b_dec_to_input
            torch.testing.assert_close(sae.encode(x), f, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(sae(x), recon, atol=1e-5, rtol=1e-5)


def test_threshold_is_compared_in_float32_for_bf16_weights():
    """z = x@W + b = 1 + 2^-9 exceeds the threshold 1.0, but 1 + 2^-9 rounds to 1.0 in bfloat16."""
    cfg = SAEConfig(architecture="jumprelu", d_in=1, d_sae=1, dtype="bfloat16")
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.fill_(2.0**-9)
        sae.b_enc.fill_(1.0)
        sae.threshold.fill_(1.0)
        assert (sae.b_enc + sae.W_enc[0]).item() == 1.0  # what a bf16 computation would compare
        f = sae.encode(torch.ones(1, 1))
    assert f.dtype == torch.bfloat16
    assert f.item() > 0


def test_hook_z_input_is_flattened_and_output_restored():
    sae = make_sae("relu", d_in=12, reshape_activations="hook_z", hook_name="blocks.0.attn.hook_z")
    x = inputs(n=6).reshape(2, 3, 4, 3)  # [batch, pos, n_heads, d_head]
    out = sae(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.flatten(-2), sae(x.flatten(-2)))


def test_wrong_input_width_is_a_typed_error():
    with pytest.raises(ShapeMismatchError, match="d_in=12"):
        make_sae("relu").encode(torch.zeros(3, 11))
    with pytest.raises(ShapeMismatchError, match="d_sae=40"):
        make_sae("relu").decode(torch.zeros(3, 41))


@pytest.mark.parametrize(("kw", "field"), [
    ({"architecture": "bogus", "d_in": 4, "d_sae": 8}, "architecture"),
    ({"architecture": "topk", "d_in": 4, "d_sae": 8}, "k"),
    ({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 9}, "k"),
    ({"architecture": "relu", "d_in": 0, "d_sae": 8}, "d_in"),
    ({"architecture": "relu", "d_in": 4, "d_sae": 8, "normalize_activations": "whiten"}, "normalize_activations"),
    ({"architecture": "relu", "d_in": 4, "d_sae": 8, "d_out": 3, "apply_b_dec_to_input": True},
     "apply_b_dec_to_input"),
    ({"architecture": "relu", "d_in": 4, "d_sae": 8, "norm_scaling_factor": -1.0}, "norm_scaling_factor"),
])
def test_invalid_configs_name_the_field(kw, field):
    with pytest.raises(ConfigError) as e:
        SAEConfig(**kw)
    assert e.value.field == field


def test_config_dict_round_trip_keeps_metadata_and_provenance():
    cfg = SAEConfig(architecture="topk", d_in=8, d_sae=32, k=4, apply_b_dec_to_input=True,
                    rescale_acts_by_decoder_norm=True, model_name="gpt2", hook_name="blocks.3.hook_resid_post",
                    hf_hook_name="transformer.h.3", hook_head_index=None, prepend_bos=True, context_size=128,
                    dataset_path="org/data", neuronpedia_id="gpt2/3-res", license="mit",
                    norm_scaling_factor=2.5, normalize_activations="expected_average_only_in",
                    extra={"training_steps": 10})
    cfg.provenance.source_format = "overcomplete"
    cfg.provenance.source_files.append({"name": "module.pt", "sha256": "ab" * 32})
    cfg.record("fold_W_dec_norm")
    d = cfg.to_dict()
    assert d["architecture"] == "topk" and d["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert d["metadata"]["sae_lens_version"] == "6.0.0"  # without it SAELens reads the file as pre-6
    back = SAEConfig.from_dict(d)
    assert back.extra.pop("sae_lens_version") == "6.0.0"
    assert back == cfg
    assert SAEConfig.from_dict(back.to_dict()).to_dict() == d


def test_saelens_architecture_names():
    assert SAEConfig(architecture="relu", d_in=4, d_sae=8).to_dict()["architecture"] == "standard"
    tc = SAEConfig(architecture="jumprelu", d_in=4, d_sae=8, d_out=6, has_skip=True)
    assert tc.to_dict()["architecture"] == "jumprelu_skip_transcoder"
    back = SAEConfig.from_dict(tc.to_dict())
    assert back.d_out == 6 and back.has_skip and back.architecture == "jumprelu"
    ranked = SAEConfig(architecture="topk", d_in=4, d_sae=8, k=2, rank_by_decoder_norm=True, d_out=3)
    assert ranked.saelens_architecture() == "topk_rank_by_decoder_norm_transcoder"  # SAELens refuses it
    assert SAEConfig.from_dict(ranked.to_dict()) == ranked.replace(extra={"sae_lens_version": "6.0.0"})


def test_neuronpedia_url():
    sae = make_sae("relu", neuronpedia_id="gpt2-small/8-res-jb")
    assert sae.neuronpedia_url(7) == "https://www.neuronpedia.org/gpt2-small/8-res-jb/7"
    with pytest.raises(ConfigError, match="out of range"):
        sae.neuronpedia_url(40)
    with pytest.raises(ConfigError, match="neuronpedia_id"):
        make_sae("relu").neuronpedia_url(0)
