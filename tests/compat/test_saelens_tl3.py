"""Compatibility with the peers themselves, run in a second environment that has SAELens 6.54 and
TransformerLens 3 installed (``python3 .ci/bootstrap.py test`` creates it as ``.venv-compat``).

- A folder written by ``SAE.save_pretrained`` loads in SAELens 6 and SAELens computes the same features and
  reconstructions as sae-hub (the native format really is SAELens's).
- ``splice`` / ``run_with_saes`` work on a real TransformerLens 3 ``HookedTransformer``.
"""

from __future__ import annotations

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="compat suite: run in the SAELens + TransformerLens 3 env")
pytest.importorskip("transformer_lens")

from sae_hub import SAE, SAEConfig, run_with_saes, splice  # noqa: E402


def random_sae(seed: int = 0, **kw) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(**kw))
    with torch.no_grad():
        for _name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        if hasattr(sae, "threshold"):
            sae.threshold.abs_()
    return sae


CASES = [
    {"architecture": "relu", "d_in": 16, "d_sae": 48, "apply_b_dec_to_input": True},
    {"architecture": "relu", "d_in": 16, "d_sae": 48, "normalize_activations": "layer_norm"},
    {"architecture": "jumprelu", "d_in": 16, "d_sae": 48},
    {"architecture": "topk", "d_in": 16, "d_sae": 48, "k": 5, "apply_b_dec_to_input": True},
    {"architecture": "topk", "d_in": 16, "d_sae": 48, "k": 5, "rescale_acts_by_decoder_norm": True},
    {"architecture": "gated", "d_in": 16, "d_sae": 48, "apply_b_dec_to_input": True},
    {"architecture": "relu", "d_in": 16, "d_sae": 48, "d_out": 12},
    {"architecture": "relu", "d_in": 16, "d_sae": 48, "d_out": 12, "has_skip": True},
    {"architecture": "jumprelu", "d_in": 16, "d_sae": 48, "d_out": 12},
    {"architecture": "jumprelu", "d_in": 16, "d_sae": 48, "d_out": 12, "has_skip": True},
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items() if k != "d_in"))
def test_saved_folder_loads_in_saelens_with_identical_outputs(kw, tmp_path):
    ours = random_sae(**kw, hook_name="blocks.1.hook_resid_post", model_name="tiny")
    ours.save_pretrained(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    assert theirs.cfg.architecture() == ours.cfg.saelens_architecture()
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(1)) * 2 + 1
    with torch.no_grad():
        f_theirs = theirs.encode(x)
        recon_theirs = theirs.decode(f_theirs)
        torch.testing.assert_close(ours.encode(x), f_theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(x)), recon_theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def hooked_transformer():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50,
                                  act_fn="gelu", normalization_type="LN")
    return HookedTransformer(cfg).eval()


def test_splice_error_term_keeps_logits_on_tl3(hooked_transformer):
    model = hooked_transformer
    tokens = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    sae = random_sae(architecture="topk", d_in=32, d_sae=64, k=6, hook_name="blocks.0.hook_resid_post")
    with torch.no_grad():
        clean = model(tokens)
        with splice(model, sae, use_error_term=True):
            same = model(tokens)
        torch.testing.assert_close(same, clean, atol=1e-5, rtol=1e-5)


def test_splice_replaces_activation_on_tl3(hooked_transformer):
    model = hooked_transformer
    tokens = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    sae = random_sae(architecture="relu", d_in=32, d_sae=64, apply_b_dec_to_input=True,
                     hook_name="blocks.1.hook_resid_pre")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_pre")
        x = cache["blocks.1.hook_resid_pre"]
        manual = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc) @ sae.W_dec + sae.b_dec
        expected = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, hook: manual)])
        with splice(model, sae):
            got = model(tokens)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        logits, feats = run_with_saes(model, tokens, [sae])
        assert logits is None
        torch.testing.assert_close(feats["blocks.1.hook_resid_pre"], sae.encode(x))
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())
