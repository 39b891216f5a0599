"""A tiny GPT-2 built entirely offline, booted as a TransformerLens 4 ``TransformerBridge``.

Why: tests that splice SAEs into a model, or analyse features over tokens, need a *real* TransformerLens
model (real hook names, real hook shapes), but CI has no network access and no Hugging Face cache. So we
build one from nothing, in about a second:

* a byte-level BPE tokenizer, trained in-process with ``tokenizers`` on a small built-in corpus that mixes
  capitalised words, digits and punctuation (so analysis tests see varied token kinds), wrapped as a
  ``GPT2TokenizerFast`` with ``<|endoftext|>`` as bos/eos/unk/pad;
* a ``GPT2LMHeadModel`` (2 layers, d_model 64, 4 heads, n_ctx 128) with seeded random weights;
* both written with ``save_pretrained`` into one directory, which ``TransformerBridge.boot_transformers``
  then loads like any local checkpoint (``AutoConfig`` / ``from_pretrained`` / ``AutoTokenizer`` on a path
  never touch the network).

TransformerLens 4.3 quirks found while writing this (relied on by ``sae_hub.splice`` and its tests):

* Import: ``from transformer_lens.model_bridge import TransformerBridge``. ``boot_transformers`` is not
  defined in the class body: ``transformer_lens.model_bridge.sources.transformers`` attaches it with
  ``setattr`` (importing ``transformer_lens.model_bridge`` does that).
* Signature: ``boot_transformers(model_name, hf_config_overrides=None, device=None, dtype=torch.float32,
  tokenizer=None, load_weights=True, ..., hf_model=None, n_ctx=None, ...)``. There is no
  ``local_files_only``; a local directory path as ``model_name`` just works offline. ``device=None``
  auto-picks CUDA/MPS when present, so we pass ``device="cpu"`` for determinism. Attention is forced to
  ``"eager"``.
* Without ``enable_compatibility_mode()`` the bridge runs raw HF weights and exposes canonical hook names
  (``blocks.0.hook_in``, ``blocks.0.mlp.hook_out``, ...). ``enable_compatibility_mode()`` (a) folds layer
  norms and centres weights exactly like ``HookedTransformer`` (logits change by a constant per position,
  so the argmax / loss do not), (b) registers HookedTransformer names as *aliases* of the same
  ``HookPoint`` objects (``blocks.0.hook_resid_pre``, ``blocks.0.hook_resid_post``, ``blocks.0.attn.hook_z``,
  ``blocks.0.hook_mlp_out``, ``blocks.0.ln2.hook_normalized``, ...), visible in ``model.hook_dict``, and
  (c) makes ``attn.hook_z`` fire as ``[batch, pos, n_heads, d_head]`` via a ``hook_conversion`` that
  reshapes before the user hook and flattens the returned tensor back.
* ``model.hooks(fwd_hooks=...)``, ``run_with_hooks``, ``run_with_cache``, ``to_tokens``, ``to_str_tokens``,
  ``reset_hooks`` and ``forward(..., stop_at_layer=...)`` all exist on the bridge with HookedTransformer's
  signatures. ``hooks()`` / ``run_with_hooks`` resolve an alias to its canonical HookPoint and call the hook
  once per firing (checked for every ``blocks.0.*`` name); they have a code path that calls a hook once per
  alias name (``alias_names=[...]``) when the resolved name differs from ``HookPoint.name``, which would
  apply an activation-replacing hook twice, so ``sae_hub.splice`` bypasses them and uses
  ``HookPoint.add_hook(fn, dir="fwd", level=...)`` / ``remove_hooks("fwd", level=...)`` on
  ``model.hook_dict[name]``: same signatures in TL 3's ``hook_points.HookPoint``, exactly one call.
* ``HookPoint.name`` may differ from the key it was looked up by:
  ``hook_dict["blocks.0.hook_resid_pre"].name == "blocks.0.hook_in"`` but
  ``hook_dict["blocks.0.mlp.hook_out"].name == "blocks.0.hook_mlp_out"``; a hook function must not key on
  ``hook.name``. Aliases share one HookPoint (``ln2.hook_in`` is ``hook_resid_mid``).
* ``model.hook_dict`` is a property that copies the registry and adds aliases on every access (fetch once).
* Gated points (``hook_mlp_in``, ``hook_attn_in``, ``hook_q_input``..., ``attn.hook_result``) are listed in
  ``hook_dict`` but ``check_hooks_to_add`` raises ``ValueError`` until ``set_use_*(True)``; some listed points
  never fire on GPT-2 (``attn.qkv.hook_in`` / ``hook_out``: the bridge splits q/k/v).
* Raising an exception from a hook aborts the forward cleanly; the bridge runs normally afterwards.
* ``model.cfg.n_layers / d_model / n_heads / d_head`` are set as in TL 3.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

N_LAYERS = 2
D_MODEL = 64
N_HEADS = 4
D_HEAD = D_MODEL // N_HEADS
N_CTX = 128
VOCAB_SIZE = 384
SEED = 0
SPECIAL = "<|endoftext|>"

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Alice met Bob in Paris on 14 July 1789, and they talked until 11:30 PM!",
    "In 2023, OpenAI, Google and Anthropic released new models; prices fell by 40%.",
    "Is it raining in London? Yes, it rains 156 days a year (on average).",
    "Maria Curie won 2 Nobel Prizes: Physics in 1903 and Chemistry in 1911.",
    "def add(a, b): return a + b  # returns 3 for add(1, 2)",
    "Call +1-555-0100 or email info@example.com before Friday, March 3rd.",
    "The Amazon River is 6,400 km long; the Nile is about 6,650 km.",
    "She said: \"Hello, World!\" and then counted 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
    "New York, Tokyo, Berlin, Sydney and Cairo are large cities.",
    "Version 3.14.15 fixes bugs #271 and #828 [see CHANGELOG].",
    "Once upon a time, a small Dragon lived in the Blue Mountains of Norway.",
    "Temperatures ranged from -5 to 37 degrees Celsius in the year 2024.",
    "Q: What is 12 * 12? A: It is 144, and 13 * 13 is 169.",
    "John's cat, Whiskers, sleeps 16 hours a day... lucky cat!",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday.",
    "January February March April May June July August September October November December",
    "The Python library NumPy uses arrays; PyTorch uses tensors (e.g. torch.zeros(3, 4)).",
]


def corpus() -> list[str]:
    """The built-in training text: the sentences above, repeated so BPE finds frequent merges."""
    return _SENTENCES * 4


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return GPT2TokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL, unk_token=SPECIAL, pad_token=SPECIAL,
        model_max_length=N_CTX,
    )


def build_tiny_gpt2_dir(path: str | os.PathLike[str]) -> Path:
    """Write a seeded tiny GPT-2 checkpoint (config, safetensors weights, tokenizer) into ``path``.

    Deterministic: the same seed and corpus give the same tokenizer and weights on every run.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    vocab = len(tokenizer)
    config = GPT2Config(
        vocab_size=vocab, n_positions=N_CTX, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():  # seed locally, leave the caller's RNG stream alone
        torch.manual_seed(SEED)
        model = GPT2LMHeadModel(config)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def boot_tiny_model(path: str | os.PathLike[str], *, compatibility_mode: bool = True) -> Any:
    """Boot the checkpoint at ``path`` as a ``TransformerBridge`` on CPU in float32, in eval mode.

    With ``compatibility_mode`` (the default) HookedTransformer hook names and shapes are available.
    """
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32)
    if compatibility_mode:
        model.enable_compatibility_mode(disable_warnings=True)
    model.eval()
    return model


# ----------------------------------------------------------------------------- one tiny model per HF family

#: family -> (transformers config class name, its kwargs beyond the shared tiny sizes). Gemma 2's soft-capping is
#: kept on (a family trait); GPT-NeoX keeps its parallel residual (Pythia's), so it has no hook_resid_mid.
FAMILY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", {"n_embd": D_MODEL, "n_layer": N_LAYERS, "n_head": N_HEADS, "n_positions": N_CTX}),
    "gpt_neox": ("GPTNeoXConfig", {"hidden_size": D_MODEL, "num_hidden_layers": N_LAYERS,
                                   "num_attention_heads": N_HEADS, "intermediate_size": 4 * D_MODEL,
                                   "rotary_pct": 0.25, "use_parallel_residual": True,
                                   "max_position_embeddings": N_CTX}),
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "gemma": ("GemmaConfig", {"head_dim": D_HEAD}),
    "gemma2": ("Gemma2Config", {"head_dim": D_HEAD, "query_pre_attn_scalar": D_HEAD, "sliding_window": 64}),
    "gemma3_text": ("Gemma3TextConfig", {"head_dim": D_HEAD, "query_pre_attn_scalar": D_HEAD,
                                         "sliding_window": 64}),
    "qwen2": ("Qwen2Config", {}),  # q/k/v biases on: TransformerLens folds the value bias out of hook_z
    "qwen3": ("Qwen3Config", {"head_dim": D_HEAD}),
}

_LLAMA_LIKE = {"hidden_size": D_MODEL, "num_hidden_layers": N_LAYERS, "num_attention_heads": N_HEADS,
               "num_key_value_heads": N_HEADS // 2, "intermediate_size": 2 * D_MODEL,
               "max_position_embeddings": N_CTX, "tie_word_embeddings": False}


def _randomise(model: Any, seed: int) -> None:
    """Weights at scales where every transform matters: unit-ish activations, norm gains away from 1, non-zero
    biases (a zero LayerNorm or value bias would hide a wrong fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if "norm" in name or ".ln" in name or name.endswith(("ln_f.weight", "ln_f.bias")):
                is_offset = type(model).__name__.startswith("Gemma")  # Gemma norms scale by (1 + w)
                base = 0.0 if (name.endswith("bias") or is_offset) else 1.0
                p.copy_(base + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                if "c_attn" in name or "c_fc" in name or "c_proj" in name:  # GPT-2 Conv1D: [in, out]
                    fan_in = p.shape[0]
                p.copy_(noise / fan_in ** 0.5)


def build_tiny_family_dir(family: str, path: str | os.PathLike[str]) -> Path:
    """Write a seeded tiny ``family`` checkpoint (2 layers, d_model 64, 4 heads, the in-process tokenizer) into
    ``path``: what ``AutoModelForCausalLM.from_pretrained(path)`` and ``TransformerBridge.boot_transformers(path)``
    load offline."""
    import transformers

    cls_name, extra = FAMILY_CONFIGS[family]
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    kwargs = dict(_LLAMA_LIKE) if cls_name not in ("GPT2Config", "GPTNeoXConfig") else {}
    kwargs.update(extra)
    config = getattr(transformers, cls_name)(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **kwargs,
    )
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    _randomise(model, SEED + 1)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def load_hf(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a tiny checkpoint, float32, eval mode, eager attention, on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    return model.eval(), AutoTokenizer.from_pretrained(str(path))


_FAMILY_CACHE: dict[str, dict[str, Any]] = {}


def tiny_family(family: str, root: str | os.PathLike[str], *, bridge: bool = True) -> dict[str, Any]:
    """``{"dir", "hf", "tokenizer", "bridge"}`` for ``family``, built once per process under ``root``.

    The bridge (TransformerLens 4, compatibility mode) is booted from the same directory, so both run the SAME
    weights; it is None when ``bridge=False`` was asked first and booted on a later call that wants it.
    """
    entry = _FAMILY_CACHE.get(family)
    if entry is None:
        path = build_tiny_family_dir(family, Path(root) / family)
        hf, tok = load_hf(path)
        entry = _FAMILY_CACHE[family] = {"dir": path, "hf": hf, "tokenizer": tok, "bridge": None}
    if bridge and entry["bridge"] is None:
        import logging

        logging.getLogger().setLevel(logging.ERROR)  # TL warns that Gemma 2's softcap disables center_unembed
        entry["bridge"] = boot_tiny_model(entry["dir"])
    return entry
