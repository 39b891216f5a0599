"""splice / run_with_saes on plain ``transformers`` models, against TransformerLens 4 running the same weights.

Per family (one tiny checkpoint booted as the HF model and as a ``TransformerBridge`` in compatibility mode):
splicing SAEs without the error term changes the log-probabilities identically on both (compatibility mode
centres the unembedding, so raw logits differ by a per-position constant: log-softmax removes it); with the error
term the HF logits are unchanged; feature edits act identically; hooks are removed on exit, even when the body
raised, and hooks the user put on the modules stay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")

from tiny_model import FAMILY_CONFIGS, tiny_family

from sae_hub import SAE, SAEConfig, run_with_saes, splice
from sae_hub.adapters import adapt

TEXT = ["The quick brown Fox jumps over 13 lazy dogs!", "Paris, 14 July 1789: Hello World."]
MEASURED: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


def make_sae(hook: str, d_in: int, seed: int, arch: str = "relu", **kw: Any) -> SAE:
    if arch == "topk":
        kw.setdefault("k", 8)
    sae = SAE(SAEConfig(architecture=arch, d_in=d_in, d_sae=96, hook_name=hook, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            scale = d_in ** -0.5 if name == "W_enc" else 0.3
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
            if name == "b_enc":
                p.add_(0.1)
    return sae


def saes_for(family: str) -> list[SAE]:
    return [
        make_sae("blocks.0.hook_resid_post", 64, 1),
        make_sae("blocks.1.attn.hook_z", 64, 2, arch="topk"),
        make_sae("blocks.1.hook_mlp_out", 64, 3),
        # a transcoder: reads the normalised MLP input, writes the MLP output (folded-norm transform both ways)
        make_sae("blocks.0.ln2.hook_normalized", 64, 4, hook_name_out="blocks.0.hook_mlp_out"),
    ]


def n_hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_splice_changes_logits_as_on_the_bridge(root, family):
    fam = tiny_family(family, root)
    hf, bridge = fam["hf"], fam["bridge"]
    tokens = bridge.to_tokens(TEXT)
    saes = saes_for(family)
    before = n_hooks(hf)
    with torch.no_grad():
        clean_hf = adapt(hf).forward(tokens)
        clean_tl = bridge(tokens)
        with splice(hf, saes) as sp_hf:
            spliced_hf = hf(input_ids=tokens).logits
        with splice(bridge, saes) as sp_tl:
            spliced_tl = bridge(tokens)
        # with the error term: the HF model's logits are unchanged
        with splice(hf, saes, use_error_term=True) as sp_err:
            err_hf = hf(input_ids=tokens).logits
    assert n_hooks(hf) == before
    lp = {k: v.log_softmax(-1) for k, v in
          {"clean_hf": clean_hf, "clean_tl": clean_tl, "hf": spliced_hf, "tl": spliced_tl}.items()}
    change = (lp["hf"] - lp["clean_hf"]).abs().max().item()
    parity = (lp["hf"] - lp["tl"]).abs().max().item()
    clean_parity = (lp["clean_hf"] - lp["clean_tl"]).abs().max().item()
    error_term = (err_hf - clean_hf).abs().max().item()
    MEASURED[family] = {"splice_logp_parity": parity, "clean_logp_parity": clean_parity,
                        "error_term_logit_change": error_term, "splice_change": change}
    assert change > 0.05  # the splice does something
    assert parity <= 1e-5, parity
    assert error_term <= 1e-5, error_term
    for sae in saes:
        key = str(sae.cfg.hook_name)
        torch.testing.assert_close(sp_hf.features[key], sp_tl.features[key], atol=1e-4, rtol=1e-4)
        # with the error term every SAE reads the clean model: the bridge's clean features, to <= 1e-5
        torch.testing.assert_close(sp_err.features[key], run_with_saes(bridge, tokens, sae)[1][key], atol=1e-5,
                                   rtol=0)
    # features of the first SAE (nothing spliced before it) equal the bridge's to <= 1e-5
    torch.testing.assert_close(sp_hf.features["blocks.0.hook_resid_post"],
                               sp_tl.features["blocks.0.hook_resid_post"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "qwen2"])
def test_feature_edit_acts_as_on_the_bridge(root, family):
    fam = tiny_family(family, root)
    hf, bridge = fam["hf"], fam["bridge"]
    tokens = bridge.to_tokens(TEXT)
    sae = make_sae("blocks.0.hook_resid_post", 64, 7)
    _, feats = run_with_saes(bridge, tokens, sae)
    busiest = int(feats["blocks.0.hook_resid_post"].sum((0, 1)).argmax())

    def clamp(f: torch.Tensor) -> None:
        f[..., busiest] = 5.0

    with torch.no_grad():
        outs = []
        for model, fwd in ((hf, lambda: hf(input_ids=tokens).logits), (bridge, lambda: bridge(tokens))):
            with splice(model, {"s": sae}, use_error_term=True, edits={"s": clamp}):
                outs.append(fwd().log_softmax(-1))
        clean = adapt(hf).forward(tokens).log_softmax(-1)
    assert (outs[0] - clean).abs().max() > 0.05
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


def test_run_with_saes_on_hf_stops_early_and_leaves_user_hooks(root):
    fam = tiny_family("llama", root)
    hf, tok, bridge = fam["hf"], fam["tokenizer"], fam["bridge"]
    tokens = bridge.to_tokens(TEXT)
    a = make_sae("blocks.0.hook_resid_post", 64, 11)
    b = make_sae("blocks.0.attn.hook_z", 64, 12, arch="topk")
    fired: list[int] = []
    baseline = n_hooks(hf)  # hooks others left on the shared model (nnsight installs its own when wrapping it)
    user = hf.model.layers[1].register_forward_hook(lambda m, i, o: fired.append(1))
    try:
        logits, feats = run_with_saes(hf, TEXT, [a, b], tokenizer=tok)
        assert logits is None and fired == []  # cut after layer 0
        _, ref = run_with_saes(bridge, TEXT, [a, b])
        for k in feats:
            torch.testing.assert_close(feats[k], ref[k], atol=1e-5, rtol=0)
        _, sparse = run_with_saes(hf, tokens, [a, b], sparse=True)
        vals, idx = sparse["blocks.0.attn.hook_z"]
        torch.testing.assert_close(torch.zeros_like(feats["blocks.0.attn.hook_z"]).scatter(-1, idx, vals),
                                   feats["blocks.0.attn.hook_z"])
        logits, _ = run_with_saes(hf, tokens, a, stop_early=False)
        assert fired == [1]
        torch.testing.assert_close(logits, hf(input_ids=tokens).logits, atol=0, rtol=0)
        logits, _ = run_with_saes(hf, tokens, a, splice=True, use_error_term=True)
        torch.testing.assert_close(logits, hf(input_ids=tokens).logits, atol=1e-5, rtol=0)
        assert n_hooks(hf) == baseline + 1  # the user's hook is still there, ours are gone
    finally:
        user.remove()
    assert n_hooks(hf) == baseline


def test_hooks_removed_on_exception_and_on_failed_placement(root):
    fam = tiny_family("gpt2", root, bridge=False)
    hf = fam["hf"]
    tokens = torch.tensor([[0, 5, 6, 7, 8]])
    base = n_hooks(hf)  # hooks others left on the shared model (nnsight installs its own when wrapping it)
    saes = [make_sae("blocks.0.hook_resid_post", 64, 1),
            make_sae("blocks.0.ln2.hook_normalized", 64, 2, hook_name_out="blocks.0.hook_mlp_out")]
    user = hf.transformer.h[1].register_forward_pre_hook(lambda m, a: None)
    try:
        with splice(hf, saes):
            assert n_hooks(hf) == base + 5  # the user's, 3 site hooks, and the per-forward reset of the tracked mean
        assert n_hooks(hf) == base + 1
        with pytest.raises(RuntimeError, match="boom"), splice(hf, saes):
            raise RuntimeError("boom")
        assert n_hooks(hf) == base + 1

        def explode(f: torch.Tensor) -> None:
            raise RuntimeError("inside the forward")

        with pytest.raises(RuntimeError, match="inside the forward"), splice(
                hf, saes, edits={"blocks.0.hook_resid_post": explode}):
            hf(input_ids=tokens)
        assert n_hooks(hf) == base + 1
        from sae_hub.sites import HookSiteError

        with pytest.raises(HookSiteError), splice(hf, [saes[0], make_sae("blocks.0.attn.hook_pattern", 64, 3)]):
            pass
        assert n_hooks(hf) == base + 1
    finally:
        user.remove()


def test_zz_print_measured():
    print("\nsplice parity per family:", {f: {k: f"{v:.1e}" for k, v in m.items()} for f, m in MEASURED.items()})
    assert all(m["error_term_logit_change"] <= 1e-5 for m in MEASURED.values())
