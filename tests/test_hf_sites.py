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


# ------------------------------------------------------------------------------------------- float64 models
#
# A float64 model must get float64 sites: TransformerLens's tensor at every site, and what a hook writes back,
# computed without a float32 round trip. The references below are written by hand from the model's own modules
# (their inputs and outputs, captured with plain torch hooks), never through sae_hub.sites.

#: family -> hook -> (module path, "input"/"output", transform); "{L}" is the layer. Transforms: "resid" (centred
#: over d_model on LayerNorm families: TransformerLens's centred writing weights), "z" (per head, minus the folded
#: value bias), "norm" (normalised without the norm's weight/bias, from the norm's input), "plain".
_F64_GPT2 = {
    "hook_embed": ("transformer.wte", "output", "resid"),
    "hook_pos_embed": ("transformer.wpe", "output", "resid"),
    "ln_final.hook_normalized": ("transformer.ln_f", "output", "norm"),
    "blocks.{L}.hook_resid_pre": ("transformer.h.{L}", "input", "resid"),
    "blocks.{L}.hook_attn_in": ("transformer.h.{L}.ln_1", "input", "resid"),
    "blocks.{L}.hook_resid_mid": ("transformer.h.{L}.ln_2", "input", "resid"),
    "blocks.{L}.hook_mlp_in": ("transformer.h.{L}.ln_2", "input", "resid"),
    "blocks.{L}.hook_resid_post": ("transformer.h.{L}", "output", "resid"),
    "blocks.{L}.hook_attn_out": ("transformer.h.{L}.attn", "output", "resid"),
    "blocks.{L}.hook_mlp_out": ("transformer.h.{L}.mlp", "output", "resid"),
    "blocks.{L}.attn.hook_z": ("transformer.h.{L}.attn.c_proj", "input", "z"),
    "blocks.{L}.ln1.hook_normalized": ("transformer.h.{L}.ln_1", "output", "norm"),
    "blocks.{L}.ln2.hook_normalized": ("transformer.h.{L}.ln_2", "output", "norm"),
    "blocks.{L}.mlp.hook_in": ("transformer.h.{L}.mlp", "input", "plain"),
    "blocks.{L}.mlp.hook_out": ("transformer.h.{L}.mlp", "output", "plain"),
    "blocks.{L}.mlp.hook_pre": ("transformer.h.{L}.mlp.c_fc", "output", "plain"),
    "blocks.{L}.mlp.hook_post": ("transformer.h.{L}.mlp.c_proj", "input", "plain"),
}
_F64_LLAMA = {
    "hook_embed": ("model.embed_tokens", "output", "resid"),
    "ln_final.hook_normalized": ("model.norm", "output", "norm"),
    "blocks.{L}.hook_resid_pre": ("model.layers.{L}", "input", "resid"),
    "blocks.{L}.hook_attn_in": ("model.layers.{L}.input_layernorm", "input", "resid"),
    "blocks.{L}.hook_resid_mid": ("model.layers.{L}.post_attention_layernorm", "input", "resid"),
    "blocks.{L}.hook_mlp_in": ("model.layers.{L}.post_attention_layernorm", "input", "resid"),
    "blocks.{L}.hook_resid_post": ("model.layers.{L}", "output", "resid"),
    "blocks.{L}.hook_attn_out": ("model.layers.{L}.self_attn", "output", "resid"),
    "blocks.{L}.hook_mlp_out": ("model.layers.{L}.mlp", "output", "resid"),
    "blocks.{L}.attn.hook_z": ("model.layers.{L}.self_attn.o_proj", "input", "z"),
    "blocks.{L}.ln1.hook_normalized": ("model.layers.{L}.input_layernorm", "output", "norm"),
    "blocks.{L}.ln2.hook_normalized": ("model.layers.{L}.post_attention_layernorm", "output", "norm"),
    "blocks.{L}.mlp.hook_in": ("model.layers.{L}.mlp", "input", "plain"),
    "blocks.{L}.mlp.hook_out": ("model.layers.{L}.mlp", "output", "plain"),
    "blocks.{L}.mlp.hook_pre": ("model.layers.{L}.mlp.gate_proj", "output", "plain"),
    "blocks.{L}.mlp.hook_pre_linear": ("model.layers.{L}.mlp.up_proj", "output", "plain"),
    "blocks.{L}.mlp.hook_post": ("model.layers.{L}.mlp.down_proj", "input", "plain"),
}
# Gemma 2: offset RMSNorms (scale 1 + w), the embedding scaled by sqrt(d_model) (read where layer 0 takes it), the
# MLP's norm is pre_feedforward_layernorm and the sublayer outputs are read after their post-norms.
_F64_GEMMA2 = {
    **_F64_LLAMA,
    "hook_embed": ("model.layers.0", "input", "resid"),
    "blocks.{L}.hook_resid_mid": ("model.layers.{L}.pre_feedforward_layernorm", "input", "resid"),
    "blocks.{L}.hook_mlp_in": ("model.layers.{L}.pre_feedforward_layernorm", "input", "resid"),
    "blocks.{L}.ln2.hook_normalized": ("model.layers.{L}.pre_feedforward_layernorm", "output", "norm"),
    "blocks.{L}.hook_attn_out": ("model.layers.{L}.post_attention_layernorm", "output", "resid"),
    "blocks.{L}.hook_mlp_out": ("model.layers.{L}.post_feedforward_layernorm", "output", "resid"),
}
F64_SITES = {"gpt2": _F64_GPT2, "llama": _F64_LLAMA, "gemma2": _F64_GEMMA2}
#: every hook name the families could map, tried on each family: the ones that resolve must all be in F64_SITES
ALL_HOOKS = ["hook_embed", "hook_pos_embed", "ln_final.hook_normalized", "ln_final.hook_scale",
             *(f"blocks.{{L}}.{h}" for h in (
                 "hook_resid_pre", "hook_attn_in", "hook_resid_mid", "hook_mlp_in", "hook_resid_post",
                 "hook_attn_out", "hook_mlp_out", "attn.hook_z", "attn.hook_q", "ln1.hook_normalized",
                 "ln2.hook_normalized", "ln1.hook_scale", "mlp.hook_in", "mlp.hook_out", "mlp.hook_pre",
                 "mlp.hook_pre_linear", "mlp.hook_post"))]


def _f64_model(root: Path, family: str) -> tuple[Any, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    fam = tiny_family(family, root, bridge=False)
    model = AutoModelForCausalLM.from_pretrained(str(fam["dir"]), dtype=torch.float64, attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.float64
    tokens = fam["tokenizer"](TEXT, padding=True, return_tensors="pt")["input_ids"]
    return model.eval(), tokens


def _f64_sites(family: str, n_layers: int = 2) -> dict[str, tuple[str, str, str]]:
    """hook -> (module path, side, transform) for every layer (the test checks that these are exactly the hooks
    resolve_hf_site places in this family, so no mapped site goes untested)."""
    table = F64_SITES[family]
    out: dict[str, tuple[str, str, str]] = {}
    for hook in ALL_HOOKS:
        for layer in range(n_layers) if "{L}" in hook else [None]:
            name = hook.format(L=layer)
            row = table.get(hook)
            if row is not None:
                out[name] = (row[0].format(L=layer), row[1], row[2])
    return out


def _capture_all(model: Any, tokens: torch.Tensor) -> tuple[dict[tuple[str, str], torch.Tensor], torch.Tensor]:
    """Every module's first input and (first) output in one float64 forward, by plain torch hooks; and logits."""
    seen: dict[tuple[str, str], torch.Tensor] = {}
    handles = []
    for path, mod in model.named_modules():
        def pre(m: Any, args: Any, kwargs: Any, path: str = path) -> None:
            t = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
            if isinstance(t, torch.Tensor):
                seen[(path, "input")] = t.detach().clone()

        def post(m: Any, args: Any, out: Any, path: str = path) -> None:
            t = out[0] if isinstance(out, tuple) else out
            if isinstance(t, torch.Tensor):
                seen[(path, "output")] = t.detach().clone()

        handles += [mod.register_forward_pre_hook(pre, with_kwargs=True), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            logits = model(input_ids=tokens, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def _hand_reference(model: Any, family: str, path: str, side: str, kind: str,
                    seen: dict[tuple[str, str], torch.Tensor]) -> torch.Tensor:
    """TransformerLens's float64 tensor at a site, from the captured module tensors (TransformerLens's default
    processing: fold_ln, center_writing_weights on LayerNorm families, fold_value_biases)."""
    n_heads, d_model = 4, 64
    if kind == "norm":
        x = seen[(path, "input")]
        mod = model.get_submodule(path)
        if family == "gpt2":
            x = x - x.mean(-1, keepdim=True)
            eps = mod.eps
        else:
            eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    t = seen[(path, side)]
    if kind == "resid" and family == "gpt2":
        return t - t.mean(-1, keepdim=True)
    if kind == "z":
        t = t.unflatten(-1, (n_heads, d_model // n_heads))
        if family == "gpt2":  # b_V plus ln_1's bias through W_V (Conv1D weight [in, out], V last third)
            layer = int(path.split(".")[2])
            blk = model.transformer.h[layer]
            w_v = blk.attn.c_attn.weight[:, 2 * d_model:]
            b_v = blk.attn.c_attn.bias[2 * d_model:] + blk.ln_1.bias @ w_v
            t = t - b_v.detach().view(n_heads, -1)
        return t
    return t


def _hand_write(model: Any, family: str, path: str, side: str, kind: str, v: torch.Tensor) -> Any:
    """A plain torch hook adding what TransformerLens's ``+ v`` at the site is in the Hugging Face model: ``v``
    itself (``[.., n_heads, d_head]`` flattened at hook_z), or ``v`` times the norm's scale at hook_normalized."""
    mod = model.get_submodule(path)
    if kind == "norm":
        w = mod.weight.detach()
        delta = v * ((1.0 + w) if family == "gemma2" else w)
    else:
        delta = v.flatten(-2) if kind == "z" else v
    if side == "output":
        def post(m: Any, args: Any, out: Any) -> Any:
            return (out[0] + delta, *out[1:]) if isinstance(out, tuple) else out + delta
        return mod.register_forward_hook(post)

    def pre(m: Any, args: Any, kwargs: Any) -> Any:
        if args:
            return (args[0] + delta, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + delta}
    return mod.register_forward_pre_hook(pre, with_kwargs=True)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_float64_model_sites_are_float64(root, family):
    """On a float64 model, every mapped site reads TransformerLens's tensor to <= 1e-12 of a float64 reference
    written by hand from the modules; an identity edit (a new tensor equal to the read one) leaves the logits
    unchanged to <= 1e-12; and ``+ v`` at the site equals the hand-mapped edit (logits and, for a write on the
    residual stream, the next read, which carries v's mean on LayerNorm families) to <= 1e-12.

    Before the fix the sites computed hook_normalized and residual-stream writes in float32: ~1e-7 off."""
    from sae_hub.adapters import adapt

    model, tokens = _f64_model(root, family)
    adapter = adapt(model)
    sites = _f64_sites(family)
    placed = []  # every hook the library places must be in the hand table, and the other way round
    for hook in ALL_HOOKS:
        for layer in range(2) if "{L}" in hook else [None]:
            name = hook.format(L=layer)
            try:
                resolve_hf_site(model, name)
            except HookSiteError:
                continue
            placed.append(name)
    assert sorted(placed) == sorted(sites), set(placed) ^ set(sites)
    assert len(sites) == (31 if family == "gpt2" else 32)

    seen, logits = _capture_all(model, tokens)
    # 1. reads: all sites in one forward
    got: dict[str, torch.Tensor] = {}

    def saver(name: str) -> Any:
        def fn(act: torch.Tensor, hook: Any) -> None:
            got[name] = act.detach().clone()
        return fn

    with torch.no_grad(), adapter.hooks([(name, saver(name)) for name in sites]):
        adapter.forward(tokens)
    read_err = {}
    for name, (path, side, kind) in sites.items():
        ref = _hand_reference(model, family, path, side, kind, seen)
        assert got[name].dtype == torch.float64, name
        assert got[name].shape == ref.shape, name
        read_err[name] = (got[name] - ref).abs().max().item()
    assert max(read_err.values()) <= 1e-12, {k: f"{e:.1e}" for k, e in read_err.items() if e > 1e-12}

    # 2. identity-like writes, one site at a time
    ident_err = {}
    for name in sites:
        with torch.no_grad(), adapter.hooks([(name, lambda act, hook: act.clone())]):
            ident_err[name] = (adapter.forward(tokens) - logits).abs().max().item()
    assert max(ident_err.values()) <= 1e-12, {k: f"{e:.1e}" for k, e in ident_err.items() if e > 1e-12}

    # 3. + v at the site (float64 values no float32 holds); on a stream-changing site the next read too
    g = torch.Generator().manual_seed(3)
    edit_err = {}
    probe = "blocks.1.hook_resid_post"
    for name, (path, side, kind) in sites.items():
        shape = got[name].shape[2:]
        v = (0.3 + torch.randn(shape, generator=g, dtype=torch.float64)) * (1 + 1e-9)
        store: dict[str, torch.Tensor] = {}
        pairs = [(name, lambda act, hook, v=v: act + v)]
        if name not in (probe, "ln_final.hook_normalized"):  # the probe is read after the write
            pairs.append((probe, lambda act, hook, store=store: store.__setitem__("probe", act.detach().clone())))
        with torch.no_grad(), adapter.hooks(pairs):
            out = adapter.forward(tokens)
        h = _hand_write(model, family, path, side, kind, v)
        try:
            seen2, ref_logits = _capture_all(model, tokens)
        finally:
            h.remove()
        err = (out - ref_logits).abs().max().item()
        if "probe" in store:
            ppath, pside, pkind = sites[probe]
            ref = _hand_reference(model, family, ppath, pside, pkind, seen2)
            if family == "gpt2" and kind == "resid":  # TransformerLens's stream acquired v's mean from the write
                ref = ref + v.mean(-1, keepdim=True)
            err = max(err, (store["probe"] - ref).abs().max().item())
        edit_err[name] = err
    assert max(edit_err.values()) <= 1e-12, {k: f"{e:.1e}" for k, e in edit_err.items() if e > 1e-12}
    print(f"\n{family} float64: {len(sites)} sites; max read error {max(read_err.values()):.1e}, identity "
          f"write {max(ident_err.values()):.1e}, + v write {max(edit_err.values()):.1e}")


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_bf16_identity_write_leaves_logits_bit_identical_at_every_site(root, family):
    """bf16: a hook returning a copy of what it read changes nothing at any mapped site (writes add the change to
    the model's own tensor). Before, GPT-2's attn.hook_z rounded the value bias out and back in bf16 (0.03 on the
    logits)."""
    from transformers import AutoModelForCausalLM

    from sae_hub.adapters import adapt

    fam = tiny_family(family, root, bridge=False)
    model = AutoModelForCausalLM.from_pretrained(str(fam["dir"]), dtype=torch.bfloat16,
                                                 attn_implementation="eager").eval()
    tokens = fam["tokenizer"](TEXT, padding=True, return_tensors="pt")["input_ids"]
    adapter = adapt(model)
    changed = {}
    with torch.no_grad():
        base = adapter.forward(tokens)
        for name in _f64_sites(family):
            with adapter.hooks([(name, lambda act, hook: act.clone())]):
                out = adapter.forward(tokens)
            if not torch.equal(out, base):
                changed[name] = (out.float() - base.float()).abs().max().item()
    assert len(_f64_sites(family)) >= 31
    assert not changed, changed
