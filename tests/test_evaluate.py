"""``evaluate``: each metric against a direct computation written here, and the model-side CE numbers against
plain TransformerLens runs (``return_type="loss"`` with hand-written ablation hooks).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_model import corpus

from sae_hub import SAE, SAEConfig
from sae_hub.errors import ConfigError
from sae_hub.training import evaluate
from sae_hub.training.activations import ModelActivationSource, pack_tokens

CTX = 32
DOCS = corpus()[:12]
RESID1 = "blocks.1.hook_resid_pre"


def random_sae(d_in: int = 16, d_sae: int = 48, seed: int = 0, **cfg: Any) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(architecture=cfg.pop("architecture", "relu"), d_in=d_in, d_sae=d_sae, **cfg))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.1)
    return sae


def exact_sae(d_in: int, hook_name: str) -> SAE:
    """relu(x) - relu(-x) = x: W_enc = [I, -I], W_dec = [I; -I], no biases. Reconstructs x exactly."""
    sae = SAE(SAEConfig(architecture="relu", d_in=d_in, d_sae=2 * d_in, hook_name=hook_name))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_metrics_equal_direct_computation() -> None:
    sae = random_sae()
    with torch.no_grad():
        sae.b_enc[:5] = -1e3  # five latents that never fire
    torch.manual_seed(1)
    x = torch.randn(1000, 16) * 2 + 3  # a large mean: the global-mean FVU differs from ||x||^2 versions
    with torch.no_grad():
        f = torch.relu((x - 0) @ sae.W_enc + sae.b_enc)
        x_hat = f @ sae.W_dec + sae.b_dec
    r2 = (x - x_hat).pow(2).sum(-1)
    out = evaluate(sae, x, batch_size=256)

    fvu = r2.sum() / (x - x.mean(0)).pow(2).sum()
    assert out["n_tokens"] == 1000
    assert out["fvu"] == pytest.approx(float(fvu), rel=1e-5)
    assert out["explained_variance"] == pytest.approx(1 - float(fvu), rel=1e-5)
    assert out["l0"] == pytest.approx(float((f > 0).sum(-1).float().mean()), rel=1e-6)
    assert out["l1"] == pytest.approx(float(f.sum(-1).mean()), rel=1e-5)
    assert out["mse"] == pytest.approx(float(r2.mean()), rel=1e-5)
    assert out["mse_per_dim"] == pytest.approx(float(torch.nn.functional.mse_loss(x_hat, x)), rel=1e-5)
    cos = (x * x_hat).sum(-1) / (x.norm(dim=-1) * x_hat.norm(dim=-1))
    assert out["cossim"] == pytest.approx(float(cos.mean()), rel=1e-5)
    assert out["l2_ratio"] == pytest.approx(float((x_hat.norm(dim=-1) / x.norm(dim=-1)).mean()), rel=1e-5)
    rrb = x_hat.pow(2).sum(-1).mean() / (x * x_hat).sum(-1).mean()
    assert out["relative_reconstruction_bias"] == pytest.approx(float(rrb), rel=1e-5)
    # legacy: per-token ratio against the mean of its batch of 256, then the mean over tokens
    legacy = torch.cat([1 - r2[i:i + 256] / (x[i:i + 256] - x[i:i + 256].mean(0)).pow(2).sum(-1)
                        for i in range(0, 1000, 256)])
    assert out["explained_variance_legacy"] == pytest.approx(float(legacy.mean()), rel=1e-5)
    fired = (f > 0).sum(0)
    assert out["dead_fraction"] == pytest.approx(float((fired == 0).float().mean()))
    assert out["dense_fraction"] == pytest.approx(float((fired / 1000 > 0.1).float().mean()))
    assert out["window_tokens"] == 1000 and out["dense_threshold"] == 0.1
    torch.testing.assert_close(out["feature_log10_density"], torch.log10(fired / 1000 + 1e-10))
    assert 0 < out["dead_fraction"] < 1 and 0 < out["dense_fraction"] < 1  # the checks above are not vacuous


def test_input_forms_agree() -> None:
    sae = random_sae(architecture="topk", k=5)
    x = torch.randn(600, 16) + 1
    ref = evaluate(sae, x, batch_size=100)
    as_iterable = evaluate(sae, list(x.split(100)), batch_size=100)
    as_loader = evaluate(sae, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=100))
    for other in (as_iterable, as_loader):
        for key in ("fvu", "l0", "mse", "cossim", "explained_variance_legacy", "dead_fraction"):
            assert other[key] == pytest.approx(ref[key], rel=1e-6), key
    assert ref["l0"] == pytest.approx(5.0)
    # n_tokens caps what is evaluated; the global-mean FVU is not the mean of per-batch FVUs
    capped = evaluate(sae, x, n_tokens=250, batch_size=100)
    assert capped["n_tokens"] == 250 and capped["fvu"] == pytest.approx(evaluate(sae, x[:250])["fvu"], rel=1e-6)


def test_exact_sae_scores_perfectly_on_tensors() -> None:
    x = torch.randn(300, 8) * 3
    out = evaluate(exact_sae(8, "h"), x)
    assert out["fvu"] == pytest.approx(0.0, abs=1e-10) and out["cossim"] == pytest.approx(1.0)
    assert out["l2_ratio"] == pytest.approx(1.0) and out["l0"] == pytest.approx(8.0)


def _contexts(model: Any, n: int) -> torch.Tensor:
    return torch.stack(list(pack_tokens(model, DOCS, CTX)))[:n]


def _manual_loss(model: Any, tokens: torch.Tensor, hook: str, value: torch.Tensor | None,
                 keep_bos: bool) -> float:
    """CE of the model with the activation at ``hook`` set to ``value`` (zeros if None), by a plain TL hook."""

    def ablate(act: torch.Tensor, hook: Any) -> torch.Tensor:
        new = torch.zeros_like(act) if value is None else value.expand_as(act).clone()
        if keep_bos:
            new[:, 0] = act[:, 0]
        return new

    with torch.no_grad():
        return float(model.run_with_hooks(tokens, fwd_hooks=[(hook, ablate)], return_type="loss"))


@pytest.mark.parametrize("exclude_bos", [True, False])
def test_model_ce_metrics_against_manual_runs(tiny_model: Any, exclude_bos: bool) -> None:
    n_ctx = 6
    tokens = _contexts(tiny_model, n_ctx)
    sae = exact_sae(64, RESID1)
    per_ctx = CTX - 1 if exclude_bos else CTX
    out = evaluate(sae, model=tiny_model, dataset=DOCS, n_tokens=n_ctx * per_ctx, context_size=CTX,
                   model_batch_size=4, exclude_bos=exclude_bos)
    assert out["n_contexts"] == n_ctx and out["n_tokens"] == n_ctx * per_ctx
    with torch.no_grad():
        clean = float(tiny_model(tokens, return_type="loss"))
    assert out["ce_loss_clean"] == pytest.approx(clean, rel=1e-5)
    # the exact SAE changes nothing
    assert out["ce_loss_sae"] == pytest.approx(clean, rel=1e-5)
    assert out["delta_lm_loss"] == pytest.approx(0.0, abs=1e-4)
    assert out["kl_sae"] == pytest.approx(0.0, abs=1e-5)
    assert out["ce_loss_recovered_zero"] == pytest.approx(1.0, abs=1e-4)
    assert out["ce_loss_recovered_mean"] == pytest.approx(1.0, abs=1e-3)
    assert out["fvu"] == pytest.approx(0.0, abs=1e-8)
    # baselines equal hand-written ablations
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[RESID1])
    act = cache[RESID1]
    mean = (act[:, 1:] if exclude_bos else act).reshape(-1, 64).mean(0)
    zero = _manual_loss(tiny_model, tokens, RESID1, None, exclude_bos)
    mean_abl = _manual_loss(tiny_model, tokens, RESID1, mean, exclude_bos)
    assert out["ce_loss_zero_ablation"] == pytest.approx(zero, rel=1e-5)
    assert out["ce_loss_mean_ablation"] == pytest.approx(mean_abl, rel=1e-5)
    # not vacuous (the random tiny model is near-uniform, so ablations move CE only a little)
    assert abs(out["ce_loss_zero_ablation"] - clean) > 1e-3 and out["kl_zero_ablation"] > 1e-3
    assert out["kl_score_zero"] == pytest.approx(1.0, abs=1e-4)


def test_model_metrics_for_a_lossy_sae(tiny_model: Any) -> None:
    """A random SAE on hook_z (flattened heads): CE recovered is a proper ratio of the measured CEs, and
    the reconstruction metrics equal those computed on the same activations by the tensor path."""
    hook = "blocks.0.attn.hook_z"
    sae = random_sae(d_in=64, d_sae=128, hook_name=hook)
    n_ctx = 5
    out = evaluate(sae, model=tiny_model, dataset=DOCS, n_tokens=n_ctx * (CTX - 1), context_size=CTX)
    ce_sae, ce_clean, ce_zero = out["ce_loss_sae"], out["ce_loss_clean"], out["ce_loss_zero_ablation"]
    assert out["ce_loss_recovered_zero"] == pytest.approx((ce_zero - ce_sae) / (ce_zero - ce_clean))
    assert out["delta_lm_loss"] == pytest.approx(ce_sae - ce_clean) and out["kl_sae"] > 0
    # CE with the SAE equals a hand-written replacement hook (BOS at position 0 left clean, as evaluated)
    for exclude_bos in (True, False):

        def replace(act: torch.Tensor, hook: Any, keep: bool = exclude_bos) -> torch.Tensor:
            flat = act.flatten(-2)
            new = sae(flat)
            if keep:
                new[:, 0] = flat[:, 0]
            return new.reshape(act.shape)

        with torch.no_grad():
            manual = float(tiny_model.run_with_hooks(_contexts(tiny_model, n_ctx), fwd_hooks=[(hook, replace)],
                                                     return_type="loss"))
        got = evaluate(sae, model=tiny_model, dataset=DOCS, n_tokens=n_ctx * (CTX - 1), context_size=CTX,
                       exclude_bos=exclude_bos)["ce_loss_sae"] if not exclude_bos else ce_sae
        assert got == pytest.approx(manual, rel=2e-6), exclude_bos  # the two differ by ~6e-5
    _, cache = tiny_model.run_with_cache(_contexts(tiny_model, n_ctx), names_filter=[hook])
    x = cache[hook][:, 1:]  # [ctx, pos, heads, d_head], BOS excluded
    ref = evaluate(sae, x, batch_size=10_000)
    for key in ("fvu", "l0", "mse", "cossim", "dead_fraction"):
        assert out[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key
    # a source gives the same numbers as the tensor (same tokens, shuffled)
    src = ModelActivationSource(tiny_model, DOCS[:4], hook, context_size=CTX)
    tokens = torch.stack(list(pack_tokens(tiny_model, DOCS[:4], CTX)))
    n = tokens.shape[0] * (CTX - 1)
    via_source = evaluate(sae, src, n_tokens=n)  # batch_size (4096) is capped at n_tokens
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[hook])
    assert via_source["fvu"] == pytest.approx(evaluate(sae, cache[hook][:, 1:])["fvu"], rel=1e-5)
    no_ce = evaluate(sae, model=tiny_model, dataset=DOCS, n_tokens=n_ctx * (CTX - 1), context_size=CTX, ce=False)
    assert "ce_loss_sae" not in no_ce and no_ce["fvu"] == pytest.approx(out["fvu"])


def test_evaluate_refuses_bad_calls(tiny_model: Any) -> None:
    sae = random_sae()
    with pytest.raises(ConfigError, match="either"):
        evaluate(sae)
    with pytest.raises(ConfigError, match="either"):
        evaluate(sae, torch.zeros(3, 16), model=tiny_model, dataset=DOCS)
    with pytest.raises(ConfigError, match="hook_name"):
        evaluate(sae, model=tiny_model, dataset=DOCS)
    with pytest.raises(ConfigError, match="last dimension"):
        evaluate(sae, torch.zeros(3, 15))
    with pytest.raises(ConfigError, match="empty"):
        evaluate(sae, [])
