"""Hook sites on plain ``transformers`` models (sae_hub.sites), checked against TransformerLens 4's own bridge.

For every family, one tiny random checkpoint is booted twice from the same directory: as the plain Hugging Face
model and as a ``TransformerBridge`` in compatibility mode (HookedTransformer's processing: LayerNorm folded,
writing weights centred, value biases folded). Features an SAE reads at the Hugging Face site must equal what it
reads at TransformerLens's hook, for every hook kind the family has. The reference side never goes through
sae_hub.sites: it is TransformerLens's own hook, read with ``run_with_hooks``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")

from tiny_model import FAMILY_CONFIGS, tiny_family

from sae_hub import SAE, SAEConfig, run_with_saes
from sae_hub.errors import ConfigError, ShapeMismatchError
from sae_hub.sites import (
    FAMILIES,
    HookSiteError,
    Processing,
    family_of_model_name,
    hf_hook_rule,
    resolve_hf_site,
)

FAMILIES_UNDER_TEST = list(FAMILY_CONFIGS)
TEXT = ["The quick brown Fox jumps over 13 lazy dogs!", "Paris, 14 July 1789: Hello World."]
HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post",
         "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.1.attn.hook_z", "blocks.0.mlp.hook_post",
         "blocks.0.ln2.hook_normalized", "blocks.1.ln1.hook_normalized", "hook_embed"]
PARITY: dict[tuple[str, str], float] = {}  # (family, hook) -> max |feature difference|, printed at the end


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


def make_sae(hook: str, d_in: int, seed: int = 0, **kw: Any) -> SAE:
    sae = SAE(SAEConfig(architecture="relu", d_in=d_in, d_sae=96, hook_name=hook, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            scale = d_in ** -0.5 if name == "W_enc" else 0.3  # features on the activations' own scale
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
            if name == "b_enc":
                p.add_(0.1)
    return sae


def tl_activation(bridge: Any, tokens: torch.Tensor, hook: str) -> torch.Tensor:
    store: dict[str, torch.Tensor] = {}

    def save(act: torch.Tensor, hook: Any) -> None:
        store["a"] = act.detach().clone()

    with torch.no_grad():
        bridge.run_with_hooks(tokens, fwd_hooks=[(hook, save)])
    return store["a"]


def width_of(act: torch.Tensor) -> int:
    return act.shape[-1] * (act.shape[-2] if act.dim() == 4 else 1)


@pytest.mark.parametrize("family", FAMILIES_UNDER_TEST)
def test_features_at_hf_site_equal_features_at_tl_hook(root, family):
    fam = tiny_family(family, root)
    hf, tok, bridge = fam["hf"], fam["tokenizer"], fam["bridge"]
    tokens = bridge.to_tokens(TEXT)
    from sae_hub.adapters import adapt

    torch.testing.assert_close(adapt(hf, tok).to_tokens(TEXT), tokens, atol=0, rtol=0)  # same BOS + padding
    parallel = family == "gpt_neox"
    checked = []
    for hook in HOOKS:
        if parallel and hook.endswith("hook_resid_mid"):
            with pytest.raises(HookSiteError, match=r"hook_resid_mid.*GPTNeoXForCausalLM.*parallel.*"
                                                    r"gpt_neox\.layers\.1\.post_attention_layernorm"):
                run_with_saes(hf, tokens, make_sae(hook, 64))
            continue
        ref = tl_activation(bridge, tokens, hook)
        sae = make_sae(hook, width_of(ref), seed=len(checked))
        expected = torch.relu((ref.flatten(2) if ref.dim() == 4 else ref) @ sae.W_enc + sae.b_enc)
        _, feats = run_with_saes(hf, tokens, sae)
        err = (feats[hook] - expected).abs().max().item()
        PARITY[(family, hook)] = err
        assert err <= 1e-5, (family, hook, err)
        assert expected.abs().max() > 0.1  # the features are not trivially zero
        checked.append(hook)
    assert len(checked) == len(HOOKS) - parallel


@pytest.mark.parametrize(("family", "hook"), [("gpt2", "blocks.1.hook_resid_post"), ("gpt2", "blocks.1.attn.hook_z"),
                                              ("gpt_neox", "blocks.1.attn.hook_z"), ("qwen2", "blocks.1.attn.hook_z"),
                                              ("llama", "blocks.0.ln2.hook_normalized")])
def test_processing_transforms_are_needed(root, family, hook):
    """Raw Hugging Face tensors differ from TransformerLens's at these hooks (centred residual, folded value bias,
    folded norm weights): the parity above would fail without the site's transform."""
    fam = tiny_family(family, root)
    tokens = fam["bridge"].to_tokens(TEXT)
    ref = tl_activation(fam["bridge"], tokens, hook)
    sae = make_sae(hook, width_of(ref), extra={"model_from_pretrained_kwargs": {
        "fold_ln": False, "center_writing_weights": False, "fold_value_biases": False}})
    _, feats = run_with_saes(fam["hf"], tokens, sae)
    expected = torch.relu((ref.flatten(2) if ref.dim() == 4 else ref) @ sae.W_enc + sae.b_enc)
    assert (feats[hook] - expected).abs().max() > 1e-2


def test_hf_hook_name_wins_and_its_spellings(root):
    fam = tiny_family("llama", root)
    hf, tokens = fam["hf"], fam["bridge"].to_tokens(TEXT)
    with torch.no_grad():  # hidden_states[1] is the output of layers.0 (the last entry has the final norm applied)
        layer0_out = hf(input_ids=tokens, output_hidden_states=True).hidden_states[1]
    # the rule for blocks.1.hook_resid_post would be the output of layers.1: hf_hook_name wins, raw (no processing)
    for hf_name in ("model.layers.0", "model.layers.0.output", "layers.0", "model.language_model.layers.0",
                    "model.layers.1.input"):
        sae = make_sae("blocks.1.hook_resid_post", 64, hf_hook_name=hf_name)
        _, feats = run_with_saes(hf, tokens, sae)
        torch.testing.assert_close(feats["blocks.1.hook_resid_post"], sae.encode(layer0_out), atol=1e-6, rtol=1e-5)
    with pytest.raises(HookSiteError, match=r"blocks\.1\.hook_resid_post.*LlamaForCausalLM.*'model\.layers\.7'.*"
                                            r"model\.layers\.7, model\.language_model\.layers\.7"):
        run_with_saes(hf, tokens, make_sae("blocks.1.hook_resid_post", 64, hf_hook_name="model.layers.7"))


def test_bad_sites_are_typed_errors_naming_hook_class_and_candidates(root):
    fam = tiny_family("gpt2", root, bridge=False)
    hf, tok = fam["hf"], fam["tokenizer"]
    tokens = torch.tensor([[0, 5, 6, 7]])
    with pytest.raises(HookSiteError, match=r"'blocks\.0\.attn\.hook_q'.*GPT2LMHeadModel.*candidate module paths: "
                                            r"transformer\.h\.0\.attn, transformer\.h\.0\.attn\.c_proj"):
        run_with_saes(hf, tokens, make_sae("blocks.0.attn.hook_q", 64))
    with pytest.raises(HookSiteError, match=r"blocks\.5\.hook_resid_post.*GPT2LMHeadModel.*transformer\.h\.5"):
        run_with_saes(hf, tokens, make_sae("blocks.5.hook_resid_post", 64))
    with pytest.raises(HookSiteError, match="not a TransformerLens hook name"):
        run_with_saes(hf, tokens, make_sae("resid_post_12", 64))
    # d_in mismatch: both numbers, before any forward
    with pytest.raises(ShapeMismatchError, match=r"d_in=48 .*'blocks\.0\.hook_resid_post'.*GPT2LMHeadModel.*64 wide"):
        run_with_saes(hf, tokens, make_sae("blocks.0.hook_resid_post", 48))
    with pytest.raises(ShapeMismatchError, match=r"d_in=64 .*mlp\.hook_post.*256 wide"):
        run_with_saes(hf, tokens, make_sae("blocks.0.mlp.hook_post", 64))
    # a single-head SAE on hook_z fits d_head
    _, feats = run_with_saes(hf, tokens, make_sae("blocks.0.attn.hook_z", 16, hook_head_index=2))
    assert feats["blocks.0.attn.hook_z"].shape == (1, 4, 96)
    with pytest.raises(ShapeMismatchError, match=r"d_in=12 .*d_head=16 per head"):
        run_with_saes(hf, tokens, make_sae("blocks.0.attn.hook_z", 12, hook_head_index=2))
    # text without a tokenizer
    with pytest.raises(ConfigError, match="tokenizer="):
        run_with_saes(hf, "some text", make_sae("blocks.0.hook_resid_post", 64))
    _, feats = run_with_saes(hf, "some text", make_sae("blocks.0.hook_resid_post", 64), tokenizer=tok)
    assert feats["blocks.0.hook_resid_post"].shape[:2] == (1, 1 + len(tok("some text")["input_ids"]))


def test_unknown_model_kinds_are_refused():
    from sae_hub.adapters import adapt

    with pytest.raises(ConfigError, match=r"cannot run SAEs on a Linear"):
        adapt(torch.nn.Linear(2, 2))

    class Odd(torch.nn.Module):
        config = type("C", (), {"model_type": "bert"})()

    with pytest.raises(HookSiteError, match=r"Odd \(model_type='bert'\).*known families"):
        resolve_hf_site(Odd(), "blocks.0.hook_resid_post")


# ------------------------------------------------------------------------------------------- the release table


def test_release_table_sites_resolve():
    """Every SAE of the release table whose model family is covered gets an exact HF site from its hook name."""
    from sae_hub import list_releases
    from sae_hub.releases import get_release

    total = with_hook = covered = resolved = 0
    unresolved: dict[str, int] = {}
    for name in list_releases():
        rel = get_release(name)
        family = family_of_model_name(rel.model)
        for entry in rel.saes.values():
            total += 1
            hooks = [h for h in (entry.hook or rel.hook, entry.hook_out or rel.hook_out) if h]
            if not hooks:
                continue  # the hook is in the SAE's cfg.json on the Hub, not in the table
            with_hook += 1
            if family is None:
                continue
            covered += 1
            try:
                for h in hooks:
                    hf_hook_rule(FAMILIES[family], h, parallel_residual=(family == "gpt_neox"))
            except HookSiteError:
                key = f"{family}:{re.sub(r'[0-9]+', 'L', hooks[0])}"
                unresolved[key] = unresolved.get(key, 0) + 1
                continue
            resolved += 1
    print(f"\nrelease table: {total} SAEs, {with_hook} with a hook in the table, {covered} of a covered family, "
          f"{resolved} resolve to an HF site; unresolved: {unresolved}")
    assert total > 10_000 and with_hook > 13_000
    assert resolved == covered, unresolved
    assert resolved >= 12_900


def test_model_name_families():
    cases = {"gemma-2-2b": "gemma2", "gpt2-small": "gpt2", "pythia-70m-deduped": "gpt_neox",
             "meta-llama/Llama-3.1-8B": "llama", "Qwen/Qwen2.5-7B-Instruct": "qwen2",
             "google/gemma-3-1b-pt": "gemma3_text",
             "gemma-2b": "gemma", "mistral-7b": "mistral", "Qwen/Qwen3-8B-Base": "qwen3",
             "Qwen/Qwen3-30B-A3B-Base": "qwen3_moe", "Qwen/Qwen3.5-27B": None, "openai/gpt-oss-20b": None,
             "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": "llama"}
    assert {k: family_of_model_name(k) for k in cases} == cases


def test_processing_from_saelens_kwargs():
    assert Processing.from_kwargs(None) == Processing()
    assert Processing.from_kwargs({"center_writing_weights": False}) == Processing(center_writing_weights=False)


def test_zz_print_parity():
    """Prints the measured parity per family (for the report); runs last in this file."""
    worst: dict[str, float] = {}
    for (family, _), err in PARITY.items():
        worst[family] = max(worst.get(family, 0.0), err)
    print("\nmax |HF site - TL hook| feature error per family:", {k: f"{v:.1e}" for k, v in worst.items()})
    assert all(v <= 1e-5 for v in worst.values())


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_mlp_module_input_and_output_sites(root, family):
    """circuit-tracer's transcoder hooks ``blocks.L.mlp.hook_in`` / ``mlp.hook_out`` are the MLP module's own input
    (after the second norm's weights) and output (before any post-feedforward norm): read here with plain torch
    hooks on the module, independently of sae_hub.sites."""
    fam = tiny_family(family, root)
    hf, tokens = fam["hf"], fam["bridge"].to_tokens(TEXT)
    mlp = dict(hf.named_modules())[next(n for n, _ in hf.named_modules() if re.search(r"(h|layers)\.1\.mlp$", n))]
    seen: dict[str, torch.Tensor] = {}
    h1 = mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0].detach().clone()))
    h2 = mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o.detach().clone()))
    try:
        with torch.no_grad():
            hf(input_ids=tokens)
    finally:
        h1.remove()
        h2.remove()
    d = seen["in"].shape[-1]
    for hook, ref in (("blocks.1.mlp.hook_in", seen["in"]), ("blocks.1.mlp.hook_out", seen["out"])):
        sae = make_sae(hook, d)
        _, feats = run_with_saes(hf, tokens, sae)
        torch.testing.assert_close(feats[hook], sae.encode(ref), atol=1e-6, rtol=1e-5)
