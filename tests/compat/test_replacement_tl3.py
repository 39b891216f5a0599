"""The replacement model (sae_hub.replacement) on a real TransformerLens 3 ``HookedTransformer``, in the compat
environment that has TransformerLens 3 (``.venv-compat``; the main environment has TransformerLens 4, where
``HookedTransformer`` is gone).

The HookedTransformer is built from the tiny GPT-2 of tests/tiny_model.py with TransformerLens 3's own weight
conversion (``convert_gpt2_weights``) and processing (``fold_ln``, ``center_writing_weights``, ``center_unembed``,
``fold_value_biases``: what ``HookedTransformer.from_pretrained`` does), so it runs the same weights as the plain
``transformers`` model. The same parity assertions as tests/test_replacement.py on the bridge: spliced
log-probabilities equal the hand-written replacement on the HF model (<= 1e-5), features equal, logits unchanged
with the error term (live and frozen), and the same edit gives the same output.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("transformer_lens", reason="TransformerLens 3 suite: run in the compat env (.venv-compat)")
try:
    from transformer_lens import HookedTransformerConfig  # noqa: F401
except ImportError:  # TransformerLens 4 raises ImportError for the removed name
    pytest.skip("TransformerLens 3 suite: this environment has TransformerLens 4 (no HookedTransformer); CI runs it "
                "in .venv-compat", allow_module_level=True)
pytest.importorskip("transformers")

from test_replacement import CASES, LAYERS, TEXT, lp, make_dict, manual_hf, n_hooks
from tiny_model import tiny_family

from sae_hub import run_with_saes
from sae_hub.replacement import splice_replacement

MEASURED: dict[str, float] = {}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    fam = tiny_family("gpt2", tmp_path_factory.mktemp("families"), bridge=False)
    hf, tok = fam["hf"], fam["tokenizer"]
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head, d_mlp=4 * c.n_embd,
        n_ctx=c.n_positions, d_vocab=c.vocab_size, act_fn="gelu_new", normalization_type="LN",
        eps=c.layer_norm_epsilon, original_architecture="GPT2LMHeadModel", positional_embedding_type="standard",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TL 3.9 announces its own removal in 4.0
        ht = HookedTransformer(cfg, tokenizer=tok)
    ht.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=True, center_writing_weights=True,
                                   center_unembed=True, fold_value_biases=True)
    ht.eval()
    tokens = ht.to_tokens(TEXT)
    with torch.no_grad():
        same = (lp(ht(tokens)) - lp(hf(input_ids=tokens).logits)).abs().max().item()
    assert same <= 1e-5, same  # the two run the same weights
    return {"hf": hf, "ht": ht, "tokens": tokens}


@pytest.mark.parametrize(("kind", "arch", "skip"), CASES)
def test_spliced_logits_on_tl3_equal_manual_replacement_on_hf(models, kind, arch, skip):
    hf, ht, tokens = models["hf"], models["ht"], models["tokens"]
    d = make_dict(kind, arch, skip, seed=len(kind) + len(arch))
    base = n_hooks(ht)
    with torch.no_grad():
        ref, ref_feats = manual_hf(hf, d, tokens)
        with splice_replacement(ht, d) as rp:
            got = ht(tokens)
    parity = (lp(got) - lp(ref)).abs().max().item()
    MEASURED[f"{kind}/{arch}/skip={skip}: tl3 vs manual hf logp"] = parity
    assert parity <= 1e-5, parity
    assert (lp(ref) - lp(hf(input_ids=tokens).logits)).abs().max() > 0.05  # the replacement does something
    for layer in LAYERS:
        torch.testing.assert_close(rp.features[layer], ref_feats[layer], atol=1e-5, rtol=0)
    assert n_hooks(ht) == base  # hooks gone on exit
    assert not any(hp.fwd_hooks for hp in ht.hook_dict.values())


@pytest.mark.parametrize(("kind", "arch", "skip"), CASES[:3])
def test_error_terms_on_tl3_leave_logits_unchanged_and_edits_match_hf(models, kind, arch, skip):
    hf, ht, tokens = models["hf"], models["ht"], models["tokens"]
    d = make_dict(kind, arch, skip, seed=3)
    with torch.no_grad():
        clean = ht(tokens)
        with splice_replacement(ht, d, use_error_term=True) as rp:
            live = ht(tokens)
        with splice_replacement(ht, d, errors="frozen", clean_input=tokens):
            frozen = ht(tokens)
        ref, _ = manual_hf(hf, d, tokens, edit_layer=0, error_term=True)
        with splice_replacement(ht, d, use_error_term=True, edits={0: lambda f: f.zero_()}):
            edited = ht(tokens)
        _, feats = run_with_saes(ht, tokens, d)
    e_live, e_frozen = (live - clean).abs().max().item(), (frozen - clean).abs().max().item()
    MEASURED[f"{kind}/{arch}/skip={skip}: tl3 live error term, logit change"] = e_live
    MEASURED[f"{kind}/{arch}/skip={skip}: tl3 frozen error term, logit change"] = e_frozen
    assert e_live <= 1e-5 and e_frozen <= 1e-5, (e_live, e_frozen)
    for layer in LAYERS:
        torch.testing.assert_close(rp.features[layer], feats[layer], atol=1e-5, rtol=0)
    edit = (lp(edited) - lp(ref)).abs().max().item()
    MEASURED[f"{kind}/{arch}/skip={skip}: tl3 edit vs manual hf logp"] = edit
    assert edit <= 1e-5, edit
    assert (lp(edited) - lp(clean)).abs().max() > 0.05


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_crosscoder_splice_on_tl3_equals_the_hand_patch_on_hf(models, arch):
    from test_crosscoder import make_cc, manual_cc

    hf, ht, tokens = models["hf"], models["ht"], models["tokens"]
    cc = make_cc(arch, seed=len(arch))
    ref, ref_feats, clean = manual_cc(hf, cc, tokens)
    with torch.no_grad():
        with splice_replacement(ht, cc, clean_input=tokens) as rp:
            got = ht(tokens)
        with splice_replacement(ht, cc, clean_input=tokens, use_error_term=True):
            same = ht(tokens)
    parity = (lp(got) - lp(ref)).abs().max().item()
    unchanged = (lp(same) - lp(clean)).abs().max().item()
    MEASURED[f"crosscoder {arch}: tl3 vs manual hf logp"] = parity
    MEASURED[f"crosscoder {arch}: tl3 error term, logp change"] = unchanged
    assert parity <= 1e-5 and unchanged <= 1e-5, (parity, unchanged)
    for h in range(2):
        torch.testing.assert_close(rp.features[h], ref_feats[h], atol=1e-5, rtol=0)


def test_zz_print_measured():
    print("\nTL3 replacement-model errors:", {k: f"{v:.1e}" for k, v in MEASURED.items()})
    assert MEASURED and all(v <= 1e-5 for v in MEASURED.values())
