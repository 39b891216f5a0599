"""SAEs on an ``nnsight.LanguageModel``: the same checks as on the plain Hugging Face model, through nnsight.

The nnsight model wraps one tiny GPT-2 (a LayerNorm family: centred residual, folded value bias, the most
transforms) and one tiny Llama; the reference is TransformerLens 4's bridge booted from the same directory.
sae-hub hooks the torch module nnsight wraps, so the splice is also in effect inside ``lm.trace(...)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_model import tiny_family

from sae_hub import SAE, SAEConfig, run_with_saes, splice
from sae_hub.adapters import NNsightAdapter, adapt
from sae_hub.errors import ShapeMismatchError
from sae_hub.sites import HookSiteError

pytest.importorskip("transformer_lens")
nnsight = pytest.importorskip("nnsight")

TEXT = ["The quick brown Fox jumps over 13 lazy dogs!", "Paris, 14 July 1789: Hello World."]
HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.1.attn.hook_z"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


def wrap(fam: dict[str, Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnsight 0.8 marks LanguageModel deprecated in favour of TransformersModel
        return nnsight.LanguageModel(fam["hf"], tokenizer=fam["tokenizer"])


def make_sae(hook: str, seed: int, **kw: Any) -> SAE:
    sae = SAE(SAEConfig(architecture="relu", d_in=64, d_sae=96, hook_name=hook, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * (0.125 if name == "W_enc"
                                                                                          else 0.3))
            if name == "b_enc":
                p.add_(0.1)
    return sae


def n_hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_nnsight_features_and_splice_match_the_bridge(root, family):
    fam = tiny_family(family, root)
    lm, bridge = wrap(fam), fam["bridge"]
    baseline = n_hooks(fam["hf"])  # nnsight's own output-capturing hooks stay; ours must all go
    adapter = adapt(lm)
    assert isinstance(adapter, NNsightAdapter) and adapter.hf_model is fam["hf"]
    tokens = bridge.to_tokens(TEXT)
    torch.testing.assert_close(adapter.to_tokens(TEXT), tokens, atol=0, rtol=0)  # lm.tokenizer, TL's BOS rule
    saes = [make_sae(h, i) for i, h in enumerate(HOOKS)]
    # features: text in, through nnsight's own tokenizer
    _, feats = run_with_saes(lm, TEXT, saes)
    _, ref = run_with_saes(bridge, tokens, saes)
    for h in HOOKS:
        assert (feats[h] - ref[h]).abs().max() <= 1e-5, h
    # splicing changes log-probs as on the bridge; the error term leaves the logits alone
    with torch.no_grad():
        clean = adapter.forward(tokens)
        spliced, _ = run_with_saes(lm, tokens, saes, splice=True)
        spliced_tl, _ = run_with_saes(bridge, tokens, saes, splice=True)
        with_error, _ = run_with_saes(lm, tokens, saes, splice=True, use_error_term=True)
    assert (spliced.log_softmax(-1) - clean.log_softmax(-1)).abs().max() > 0.05
    assert (spliced.log_softmax(-1) - spliced_tl.log_softmax(-1)).abs().max() <= 1e-5
    assert (with_error - clean).abs().max() <= 1e-5
    assert n_hooks(fam["hf"]) == baseline


def test_splice_is_in_effect_inside_an_nnsight_trace(root):
    fam = tiny_family("gpt2", root, bridge=False)
    lm = wrap(fam)
    sae = make_sae("blocks.0.hook_resid_post", 7)
    tokens = adapt(lm).to_tokens(TEXT[0])
    with torch.no_grad():
        clean = fam["hf"](input_ids=tokens).logits
        with splice(lm, sae) as sp:
            expected = fam["hf"](input_ids=tokens).logits
            with lm.trace(tokens):
                traced = lm.output.logits.save()
    assert (expected - clean).abs().max() > 0.05
    torch.testing.assert_close(traced, expected, atol=1e-6, rtol=0)
    assert sp.features["blocks.0.hook_resid_post"].shape == (1, tokens.shape[1], 96)
    with torch.no_grad(), lm.trace(tokens):  # after the block: the clean model again
        after = lm.output.logits.save()
    torch.testing.assert_close(after, clean, atol=0, rtol=0)


def test_nnsight_bad_input_is_typed(root):
    lm = wrap(tiny_family("gpt2", root, bridge=False))
    with pytest.raises(HookSiteError, match=r"blocks\.0\.hook_resid_mid_x.*GPT2LMHeadModel"):
        run_with_saes(lm, TEXT, make_sae("blocks.0.hook_resid_mid_x", 0))
    with pytest.raises(ShapeMismatchError, match="d_in=32"):
        run_with_saes(lm, TEXT, SAE(SAEConfig(architecture="relu", d_in=32, d_sae=8,
                                              hook_name="blocks.0.hook_resid_post")))
