"""feature_stats, logit_lens, training.evaluate and ModelActivationSource on every model kind.

Reference: TransformerLens 4's bridge (compatibility mode) booted from the same tiny checkpoint as the plain
``transformers`` model, and an nnsight ``LanguageModel`` wrapping that HF model. Each quantity is computed on all
three kinds and compared: the HF model against the bridge (the sites reproduce TransformerLens's tensors, so
features, statistics and CE/KL agree to float rounding), nnsight against HF (the same module objects run, so
agreement is exact). Families: gpt2 (LayerNorm: centred residual, folded value bias, LayerNorm mean removal in
the lens), llama (RMSNorm), gemma2 (offset RMSNorm ``1 + w``, sub-layer post-norms, logit soft-capping).

Tolerances: features / activations / stats 1e-5 absolute; CE and KL 1e-5 absolute (log-softmax removes the
per-position constant the bridge's centred unembedding adds); logit-lens values 1e-4 relative to the row scale
(float32 matmuls of differently folded matrices), top-k ids identical.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_model import corpus, tiny_family

from sae_hub import SAE, SAEConfig
from sae_hub.adapters import adapt
from sae_hub.analysis.feature_stats import feature_stats
from sae_hub.analysis.logit_lens import logit_lens
from sae_hub.errors import ConfigError
from sae_hub.training import evaluate
from sae_hub.training.activations import ActivationCache, ModelActivationSource, cache_activations

pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")
nnsight = pytest.importorskip("nnsight")

FAMILIES = ["gpt2", "llama", "gemma2"]
KINDS = ["hf", "nnsight"]
MEASURED: dict[str, float] = {}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


def models(root: Path, family: str) -> dict[str, Any]:
    """``{"bridge", "hf", "nnsight", "tokenizer"}`` over the same weights."""
    fam = tiny_family(family, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnsight 0.8 marks LanguageModel deprecated
        lm = nnsight.LanguageModel(fam["hf"], tokenizer=fam["tokenizer"])
    return {"bridge": fam["bridge"], "hf": fam["hf"], "nnsight": lm, "tokenizer": fam["tokenizer"]}


def make_sae(hook: str, d_in: int, seed: int, **kw: Any) -> SAE:
    sae = SAE(SAEConfig(architecture="relu", d_in=d_in, d_sae=48, hook_name=hook, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            scale = d_in ** -0.5 if name == "W_enc" else 0.3
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
            if name == "b_enc":
                p.add_(0.05)
    return sae


def tokens_of(bridge: Any, n: int = 6, width: int = 24) -> torch.Tensor:
    """Packed token rows from the bridge's tokenizer (the HF tokenizer is the same file)."""
    ids = bridge.to_tokens(corpus()[: 4 * n], prepend_bos=False)
    flat = ids[ids != bridge.tokenizer.pad_token_id]
    rows = flat[: n * (width - 1)].reshape(n, width - 1)
    return torch.cat([torch.full((n, 1), int(bridge.tokenizer.bos_token_id)), rows], 1)


def record(name: str, err: float) -> float:
    MEASURED[name] = max(MEASURED.get(name, 0.0), err)
    return err


def kw_for(kind: str, m: dict[str, Any]) -> dict[str, Any]:
    return {"tokenizer": m["tokenizer"]} if kind == "hf" else {}


# ------------------------------------------------------------------------------------------------ feature_stats


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_feature_stats_parity(root, family, kind):
    m = models(root, family)
    tokens = tokens_of(m["bridge"])
    for i, hook in enumerate(["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]):
        sae = make_sae(hook, 64, 10 + i)
        kw = dict(n_tokens=tokens.numel(), batch_size=2, context_size=tokens.shape[1], top_n=3, window=2,
                  progress=False)
        ref = feature_stats(sae, m["bridge"] if kind == "hf" else m["hf"], tokens,
                            **kw, **({} if kind == "hf" else {"tokenizer": m["tokenizer"]}))
        got = feature_stats(sae, m[kind], tokens, **kw, **kw_for(kind, m))
        assert got.n_tokens == ref.n_tokens > 0
        assert int(ref.count.sum()) > 0
        for field in ("mean_activation_all", "max_activation", "top_acts", "top_token_acts"):
            a, b = getattr(got, field).double(), getattr(ref, field).double()
            err = record(f"feature_stats {kind} vs {'bridge' if kind == 'hf' else 'hf'}", float((a - b).abs().max()))
            assert err <= 1e-5, (field, err)
        # counts may differ only where a feature sits within rounding of 0
        assert torch.equal(got.top_seq, ref.top_seq) or (got.count - ref.count).abs().max() <= 1


# ------------------------------------------------------------------------------------------------- logit_lens


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_lens_parity(root, family):
    m = models(root, family)
    n_heads, d_head = m["bridge"].cfg.n_heads, m["bridge"].cfg.d_head
    d_mlp = m["bridge"].cfg.d_mlp
    saes = [make_sae("blocks.1.hook_resid_post", 64, 20),
            make_sae("blocks.0.attn.hook_z", n_heads * d_head, 21),
            make_sae("blocks.0.attn.hook_z", d_head, 22, hook_head_index=2),
            make_sae("blocks.1.mlp.hook_post", d_mlp, 23)]
    for sae in saes:
        ref = logit_lens(sae, m["bridge"], k=5, center=True, progress=False)
        for kind in KINDS:
            got = logit_lens(sae, m[kind], k=5, center=True, progress=False, **kw_for(kind, m))
            assert got.strings == ref.strings  # tokenizer= for HF; nnsight's own
            scale = float(ref.moments[:, 1].abs().max())
            err = float((got.top_values - ref.top_values).abs().max()) / scale
            err = max(err, float((got.moments - ref.moments).abs().max()) / max(scale, 1.0))
            record(f"logit_lens {kind} vs bridge (relative)", err)
            assert err <= 1e-4, (sae.cfg.hook_name, kind, err)
            assert torch.equal(got.top_ids, ref.top_ids)
            assert torch.equal(got.enrichment.isnan(), ref.enrichment.isnan())
            assert got.info.source == "model" and got.info.ln_weight_folded_by == "sae_hub"
            if family == "gemma2":  # the soft-cap is named, not silently dropped
                assert any("soft-caps" in n for n in got.info.notes)


def test_logit_lens_folds_the_hf_final_norm_by_hand(root):
    """Independent reference: W_U' = (gamma * lm_head.weight.T) centred over d_model (gpt2's LayerNorm)."""
    hf = models(root, "gpt2")["hf"]
    sae = make_sae("blocks.1.hook_resid_post", 64, 30)
    got = logit_lens(sae, hf, k=4, progress=False, builtin_sets=False)
    W = hf.lm_head.weight.detach().T * hf.transformer.ln_f.weight.detach()[:, None]
    W = W - W.mean(0, keepdim=True)
    want = (sae.W_dec.detach() @ W)
    torch.testing.assert_close(got.top_values, want.topk(4, dim=1).values, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="cannot run SAEs on a dict"):
        logit_lens(sae, {"W_U": W}, progress=False)


# --------------------------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluate_parity(root, family):
    m = models(root, family)
    tokens = tokens_of(m["bridge"], n=4, width=16)
    cases = [make_sae("blocks.0.hook_resid_post", 64, 40),
             make_sae("blocks.0.ln2.hook_normalized", 64, 41, hook_name_out="blocks.0.hook_mlp_out")]
    keys = ["fvu", "mse", "l0", "ce_loss_clean", "ce_loss_sae", "ce_loss_zero_ablation", "ce_loss_mean_ablation",
            "kl_sae", "kl_zero_ablation", "kl_mean_ablation"]
    for sae in cases:
        ref = evaluate(sae, model=m["bridge"], dataset=tokens, context_size=16, n_tokens=tokens.numel(),
                       model_batch_size=2)
        assert ref["ce_loss_zero_ablation"] != pytest.approx(ref["ce_loss_clean"], abs=1e-3)
        for kind in KINDS:
            got = evaluate(sae, model=m[kind], dataset=tokens, context_size=16, n_tokens=tokens.numel(),
                           model_batch_size=2, **kw_for(kind, m))
            for k in keys:
                err = record(f"evaluate {kind} vs bridge", abs(got[k] - ref[k]))
                assert err <= 1e-5 * max(1.0, abs(ref[k])), (sae.cfg.hook_name, kind, k, got[k], ref[k])


def test_evaluate_on_text_needs_the_hf_tokenizer(root):
    m = models(root, "llama")
    sae = make_sae("blocks.0.hook_resid_post", 64, 42)
    texts = corpus()
    ref = evaluate(sae, model=m["bridge"], dataset=texts, context_size=16, n_tokens=64, ce=False)
    got = evaluate(sae, model=m["hf"], dataset=texts, context_size=16, n_tokens=64, ce=False,
                   tokenizer=m["tokenizer"])
    assert abs(got["fvu"] - ref["fvu"]) <= 1e-5
    with pytest.raises(ConfigError, match="tokenizer"):
        evaluate(sae, model=m["hf"], dataset=texts, context_size=16, n_tokens=64, ce=False)


# ------------------------------------------------------------------------------------------ activation sources


@pytest.mark.parametrize("family", FAMILIES)
def test_model_activation_source_parity(root, family):
    m = models(root, family)
    texts = corpus()
    for hook in ["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"]:
        kw = dict(context_size=16, buffer_tokens=64, model_batch_size=3, prepend_bos=True)
        ref_src = ModelActivationSource(m["bridge"], texts, hook, **kw)
        ref = torch.cat(list(ref_src.batches(16, seed=3)))
        for kind in KINDS:
            src = ModelActivationSource(m[kind], texts, hook, **kw, **kw_for(kind, m))
            assert src.d_in == ref_src.d_in and src.context_size == ref_src.context_size
            got = torch.cat(list(src.batches(16, seed=3)))
            assert got.shape == ref.shape and got.shape[0] > 0
            err = record(f"ModelActivationSource {kind} vs bridge", float((got - ref).abs().max()))
            assert err <= 1e-5, (hook, kind, err)
            assert src.model_name  # recorded in the trained SAE's config


def test_activation_source_stops_after_the_hook_layer(root):
    hf = models(root, "llama")["hf"]
    fired: list[int] = []
    handle = hf.model.layers[1].register_forward_hook(lambda *a: fired.append(1))
    try:
        src = ModelActivationSource(hf, corpus(), "blocks.0.hook_resid_post", context_size=16, buffer_tokens=32,
                                    tokenizer=models(root, "llama")["tokenizer"])
        assert next(iter(src.batches(8, seed=0))).shape == (8, 64)
    finally:
        handle.remove()
    assert fired == []  # layer 1 never ran


def test_cache_activations_on_hf_equals_bridge(root, tmp_path):
    m = models(root, "gpt2")
    cache_activations(m["bridge"], corpus(), ["blocks.0.hook_resid_post"], tmp_path / "tl", n_tokens=60,
                          context_size=16, dtype="float32", progress=False)
    cache_activations(m["hf"], corpus(), ["blocks.0.hook_resid_post"], tmp_path / "hf", n_tokens=60,
                          context_size=16, dtype="float32", progress=False, tokenizer=m["tokenizer"])
    x = ActivationCache(tmp_path / "tl", "blocks.0.hook_resid_post").rows(0, 60)
    y = ActivationCache(tmp_path / "hf", "blocks.0.hook_resid_post").rows(0, 60)
    assert x.shape == y.shape == (60, 64)
    assert float((x - y).abs().max()) <= 1e-5


def test_adapter_reports_text_properties(root):
    m = models(root, "gpt2")
    hf, br, lm = adapt(m["hf"], m["tokenizer"]), adapt(m["bridge"]), adapt(m["nnsight"])
    assert hf.n_ctx == br.n_ctx == lm.n_ctx == m["bridge"].cfg.n_ctx
    assert hf.default_prepend_bos is True and lm.tokenizer is m["tokenizer"]
    assert adapt(models(root, "llama")["hf"]).tokenizer is None  # nothing guessed


def test_zz_print_measured():
    print("\nparity (max abs error unless said):", {k: f"{v:.1e}" for k, v in sorted(MEASURED.items())})
    assert all(v <= 1e-4 for v in MEASURED.values())


# ---------------------------------------------------------------------------------------------- dtype and device


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize(("model_dtype", "sae_dtype"), [(torch.bfloat16, torch.float32),
                                                        (torch.float32, torch.bfloat16),
                                                        (torch.float16, torch.bfloat16)])
def test_mixed_dtypes(root, family, model_dtype, sae_dtype):
    """A half-precision model with a float32 SAE and the reverse: features come in the SAE's dtype (its decisions
    in float32, as SAE.encode makes them), writes go back in the model's dtype, and the error term leaves a
    bf16/fp16 model's logits bit-identical (GPT-2 in bf16 moved by 0.02 before writes became differences)."""
    import copy

    from sae_hub import run_with_saes, splice

    hf32 = models(root, family)["hf"]
    hf = copy.deepcopy(hf32).to(model_dtype)
    tokens = tokens_of(models(root, family)["bridge"], n=2, width=12)
    hook = "blocks.0.hook_resid_post"
    sae32 = make_sae(hook, 64, 50)
    sae = copy.deepcopy(sae32).to(sae_dtype)
    with torch.no_grad():
        clean = hf(input_ids=tokens).logits
        _, feats = run_with_saes(hf, tokens, sae)
        _, ref = run_with_saes(hf32, tokens, sae32)
        with splice(hf, sae, use_error_term=True) as sp:
            err = hf(input_ids=tokens).logits
        with splice(hf, sae):
            spliced = hf(input_ids=tokens).logits
    f = feats[hook]
    assert f.dtype == sae_dtype and sp.features[hook].dtype == sae_dtype
    assert err.dtype == spliced.dtype == model_dtype
    # half-precision activations / weights: features agree with the all-float32 run to half-precision accuracy
    assert float((f.float() - ref[hook]).abs().max()) <= 0.05 * float(ref[hook].abs().max())
    change = float((err.float() - clean.float()).abs().max())
    record(f"error-term logit change, {model_dtype} model + {sae_dtype} SAE", change)
    assert change <= (0.0 if model_dtype != torch.float32 else 1e-5), change
    assert bool(spliced.isfinite().all()) and float((spliced.float() - clean.float()).abs().max()) > 0.05
