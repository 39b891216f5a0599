"""Where an SAE's hook lives in a plain Hugging Face ``transformers`` model.

SAEs name their hook in TransformerLens's vocabulary (``blocks.6.hook_resid_post``, ``blocks.3.attn.hook_z``...);
a ``transformers`` model has modules (``model.layers.6``, ``model.layers.3.self_attn.o_proj``). This module maps one
to the other, per model family, as an :class:`HFSite`: a module path, the side of that module the tensor is on
(``"input"``: the first argument, read and replaced by a forward *pre*-hook; ``"output"``: the return value, or its
element 0 when the module returns a tuple, read and replaced by a forward hook), and how the tensor there maps to
TransformerLens's tensor and back.

Why "and back" matters: SAEs published with a TransformerLens hook name were trained on a ``HookedTransformer``
loaded with its default weight processing, and that processing changes some hook activations (not the model's
outputs). The site reproduces TransformerLens's tensor exactly, so such an SAE sees what it was trained on:

* ``center_writing_weights`` (LayerNorm families only: gpt2, gpt-neox): every weight writing to the residual
  stream is centred, so every residual-stream activation (``hook_resid_*``, ``hook_attn_out``, ``hook_mlp_out``,
  ``hook_embed``, ``hook_mlp_in``...) is TransformerLens's = Hugging Face's minus its mean over ``d_model``, as
  long as nothing was written. A write puts back what the read took away (every reader inside the model
  normalises the mean away, so the model computes exactly what TransformerLens would), and the adapter tracks,
  per forward pass, the mean TransformerLens's residual stream acquires from written tensors, so a later read on
  the residual stream (an SAE after a spliced one) sees what TransformerLens would see, mean included.
* ``fold_value_biases``: ``attn.hook_z`` is the value-weighted sum *without* the value bias (TransformerLens moves
  it into the output bias), i.e. Hugging Face's ``o_proj`` input minus the per-head value bias (plus, with
  ``fold_ln`` on a LayerNorm family, the LayerNorm bias pushed through ``W_V``).
* ``fold_ln``: ``lnX.hook_normalized`` is the normalised input *without* the norm's weight and bias (they are
  folded into the next layer); a write applies the weight and bias the model would have.

An SAE whose config records other processing (``model_from_pretrained_kwargs`` in its metadata, as SAELens keeps
it) gets that processing; an SAE with ``cfg.hf_hook_name`` (SAELens's field: a Hugging Face module path, whose
OUTPUT is meant unless the path ends in ``.input``; a trailing ``.output`` is accepted as Gemma Scope 2 writes it)
reads the raw tensor there, with no processing, which is what those SAEs were trained on.

Where a TransformerLens hook has no exact counterpart in a family (``hook_resid_mid`` in a parallel-residual
GPT-NeoX, attention ``hook_q`` after rotary embeddings...) :func:`resolve_hf_site` raises :class:`HookSiteError`
naming the hook, the model class and the module paths it considered: never an approximation.

Only ``torch`` is imported here; the model object brings its own ``transformers`` classes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from sae_hub.errors import ConfigError

__all__ = [
    "FAMILIES",
    "HFSite",
    "HookSiteError",
    "Processing",
    "family_of_model",
    "family_of_model_name",
    "hf_hook_rule",
    "resolve_hf_site",
]


class HookSiteError(ConfigError):
    """An SAE's hook cannot be placed exactly in this model; the message names the hook, the model class and
    the module paths that were considered."""


@dataclass(frozen=True)
class Processing:
    """TransformerLens's weight processing an SAE's hook names refer to (``HookedTransformer.from_pretrained``'s
    defaults unless the SAE's ``model_from_pretrained_kwargs`` say otherwise); ``raw`` means Hugging Face's own
    tensors (an SAE located by ``hf_hook_name``)."""

    fold_ln: bool = True
    center_writing_weights: bool = True
    fold_value_biases: bool = True

    @classmethod
    def raw(cls) -> Processing:
        return cls(fold_ln=False, center_writing_weights=False, fold_value_biases=False)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any] | None) -> Processing:
        """From SAELens's ``model_from_pretrained_kwargs`` (``from_pretrained_no_processing`` is recorded by
        SAELens as all three set to false)."""
        kw = dict(kwargs or {})
        return cls(
            fold_ln=bool(kw.get("fold_ln", True)),
            center_writing_weights=bool(kw.get("center_writing_weights", True)),
            fold_value_biases=bool(kw.get("fold_value_biases", True)),
        )


DEFAULT_PROCESSING = Processing()

NormKind = Literal["ln", "rms", "rms_offset"]


@dataclass(frozen=True)
class Family:
    """Module layout of one ``transformers`` family, paths relative to the ``*ForCausalLM`` model.

    ``ln2`` is the norm in front of the MLP (``ln_2``, ``post_attention_layernorm`` in Llama, but
    ``pre_feedforward_layernorm`` in Gemma 2/3, whose ``post_attention_layernorm`` / ``post_feedforward_layernorm``
    normalise the sublayer *outputs*: TransformerLens's ``hook_attn_out`` / ``hook_mlp_out`` are read after them).
    """

    name: str
    layers: str
    embed: str
    final_norm: str
    attn: str
    o_proj: str
    mlp: str
    down_proj: str
    ln1: str
    ln2: str
    norm: NormKind
    pos_embed: str | None = None
    attn_post_norm: str | None = None
    mlp_post_norm: str | None = None
    embed_scaled: bool = False  # gemma: hook_embed is the embedding times sqrt(d_model), as the model uses it
    mlp_in_proj: str | None = None  # mlp.hook_pre (the pre-activation): gate_proj / c_fc / dense_h_to_4h
    mlp_up_proj: str | None = None  # mlp.hook_pre_linear of a gated MLP
    qkv: str = "split"  # how the value bias is stored: "split" (v_proj), "gpt2" (c_attn), "neox" (query_key_value)
    gated_mlp: bool = True
    moe: bool = False
    default_prepend_bos: bool = True  # TransformerLens 4's default for the family (False: Pythia, Qwen 2/3)


def _llama_like(name: str, **kw: Any) -> Family:
    base: dict[str, Any] = dict(
        name=name, layers="model.layers", embed="model.embed_tokens", final_norm="model.norm",
        attn="self_attn", o_proj="self_attn.o_proj", mlp="mlp", down_proj="mlp.down_proj",
        ln1="input_layernorm", ln2="post_attention_layernorm", norm="rms", mlp_in_proj="mlp.gate_proj",
        mlp_up_proj="mlp.up_proj",
    )
    base.update(kw)
    return Family(**base)


_GEMMA2_NORMS = dict(ln2="pre_feedforward_layernorm", attn_post_norm="post_attention_layernorm",
                     mlp_post_norm="post_feedforward_layernorm", norm="rms_offset", embed_scaled=True)

#: model_type (``model.config.model_type``) -> layout.
FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        name="gpt2", layers="transformer.h", embed="transformer.wte", pos_embed="transformer.wpe",
        final_norm="transformer.ln_f", attn="attn", o_proj="attn.c_proj", mlp="mlp", down_proj="mlp.c_proj",
        ln1="ln_1", ln2="ln_2", norm="ln", mlp_in_proj="mlp.c_fc", qkv="gpt2", gated_mlp=False,
    ),
    "gpt_neox": Family(
        name="gpt_neox", layers="gpt_neox.layers", embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm",
        attn="attention", o_proj="attention.dense", mlp="mlp", down_proj="mlp.dense_4h_to_h",
        ln1="input_layernorm", ln2="post_attention_layernorm", norm="ln", mlp_in_proj="mlp.dense_h_to_4h",
        qkv="neox", gated_mlp=False, default_prepend_bos=False,
    ),
    "llama": _llama_like("llama"),
    "mistral": _llama_like("mistral"),
    "qwen2": _llama_like("qwen2", default_prepend_bos=False),
    "qwen3": _llama_like("qwen3", default_prepend_bos=False),
    "qwen3_moe": _llama_like("qwen3_moe", moe=True, mlp_in_proj=None, mlp_up_proj=None, default_prepend_bos=False),
    "gemma": _llama_like("gemma", norm="rms_offset", embed_scaled=True),
    "gemma2": _llama_like("gemma2", **_GEMMA2_NORMS),
    "gemma3_text": _llama_like("gemma3_text", **_GEMMA2_NORMS),
    # Gemma3ForConditionalGeneration (multimodal checkpoints): the text model sits one level deeper
    "gemma3": _llama_like("gemma3", layers="model.language_model.layers", embed="model.language_model.embed_tokens",
                          final_norm="model.language_model.norm", **_GEMMA2_NORMS),
}

_MODEL_NAME_FAMILIES: list[tuple[str, str | None]] = [
    (r"qwen3\.5|qwen3_5|qwen3-next", None),  # hybrid linear-attention layers: no rules here
    (r"gpt-oss|gpt_oss", None),
    (r"qwen3-\d+(\.\d+)?b-a\d+b|qwen3.*moe", "qwen3_moe"),
    (r"qwen3", "qwen3"),
    (r"qwen2", "qwen2"),
    (r"gemma-3|gemma3", "gemma3_text"),
    (r"gemma-2-|gemma2", "gemma2"),
    (r"gemma", "gemma"),
    (r"pythia|gpt-neox|neox", "gpt_neox"),
    (r"gpt2|gpt-2", "gpt2"),
    (r"mistral", "mistral"),
    (r"llama", "llama"),
]


def family_of_model_name(name: str | None) -> str | None:
    """The family (a :data:`FAMILIES` key) of a model *name* as release tables write it (``gemma-2-2b``,
    ``gpt2-small``, ``pythia-70m-deduped``, ``meta-llama/Llama-3.1-8B``, ``Qwen/Qwen2.5-7B-Instruct``), or None.

    Names are matched, never looked up online; Gemma 3 names map to the text-only layout
    (``Gemma3ForCausalLM``, as the 270m and 1b checkpoints are).
    """
    low = (name or "").lower()
    for pattern, family in _MODEL_NAME_FAMILIES:
        if re.search(pattern, low):
            return family
    return None


def family_of_model(model: Any) -> Family:
    """The layout of a ``transformers`` model, from ``model.config.model_type``; HookSiteError if unknown."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    fam = FAMILIES.get(str(model_type))
    if fam is None:
        raise HookSiteError(
            f"no hook-site rules for {type(model).__name__} (model_type={model_type!r}); known families: "
            f"{', '.join(sorted(FAMILIES))}. Set sae.cfg.hf_hook_name to a module path of this model to place the "
            "SAE by hand",
            field="hook_name",
        )
    return fam


# ------------------------------------------------------------------------------------------------ the rule table

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Rule:
    """A hook's place, before it is bound to a model: module path, side, and which TransformerLens transform
    applies (``center``: residual-stream tensor; ``zbias``: attention ``hook_z``; ``norm``: ``hook_normalized``
    of the norm at ``module``)."""

    module: str
    side: Literal["input", "output"]
    kind: Literal["resid", "z", "normalized", "plain"] = "plain"
    layer: int | None = None
    stream: bool = False  # the residual stream itself (resid_pre/mid/post, attn_in, mlp_in), not a component


def hf_hook_rule(family: Family, hook_name: str, *, parallel_residual: bool = False) -> Rule:
    """The module path and side of TransformerLens hook ``hook_name`` in ``family``; HookSiteError if none is exact.

    ``parallel_residual``: a GPT-NeoX block whose attention and MLP both read the block input (Pythia), where
    no ``hook_resid_mid`` exists.
    """
    f = family
    candidates: list[str] = []
    if hook_name in ("hook_embed", "hook_pos_embed"):
        if hook_name == "hook_pos_embed":
            if f.pos_embed is None:
                raise _no_site(hook_name, f, [], "this family has no learned positional embedding")
            return Rule(f.pos_embed, "output", "resid")
        if f.embed_scaled:
            # The model multiplies the embedding by sqrt(d_model) before the first layer (inside embed_tokens in
            # recent transformers, in the model's forward in older ones); TransformerLens's hook_embed is that
            # scaled tensor, which is exactly the first layer's input (there is no positional embedding).
            return Rule(f"{f.layers}.0", "input", "resid", 0, stream=True)
        return Rule(f.embed, "output", "resid")
    if hook_name in ("ln_final.hook_normalized", "ln_final.hook_scale"):
        if hook_name.endswith("hook_scale"):
            raise _no_site(hook_name, f, [f.final_norm], "the norm's scale is not a module boundary")
        return Rule(f.final_norm, "output", "normalized")
    m = _BLOCK.match(hook_name)
    if m is None:
        raise _no_site(hook_name, f, [], "not a TransformerLens hook name this mapping knows")
    layer, rest = int(m.group(1)), m.group(2)
    blk = f"{f.layers}.{layer}"

    def at(sub: str) -> str:
        return f"{blk}.{sub}"

    if rest == "hook_resid_pre":
        return Rule(blk, "input", "resid", layer, stream=True)
    if rest == "hook_resid_post":
        return Rule(blk, "output", "resid", layer, stream=True)
    if rest == "hook_resid_mid":
        if parallel_residual:
            raise _no_site(hook_name, f, [at(f.ln2)], "attention and MLP both read the block input (parallel "
                           "residual): there is no residual stream between them")
        return Rule(at(f.ln2), "input", "resid", layer, stream=True)
    if rest == "hook_mlp_in":  # TransformerLens: the pre-norm residual the MLP branch reads (resid_pre if parallel)
        return Rule(at(f.ln2), "input", "resid", layer, stream=True)
    if rest == "hook_attn_in":
        return Rule(at(f.ln1), "input", "resid", layer, stream=True)
    if rest == "hook_attn_out":
        return Rule(at(f.attn_post_norm or f.attn), "output", "resid", layer)
    if rest == "hook_mlp_out":
        return Rule(at(f.mlp_post_norm or f.mlp), "output", "resid", layer)
    if rest == "attn.hook_z":
        return Rule(at(f.o_proj), "input", "z", layer)
    if rest == "ln1.hook_normalized":
        return Rule(at(f.ln1), "output", "normalized", layer)
    if rest == "ln2.hook_normalized":
        return Rule(at(f.ln2), "output", "normalized", layer)
    if rest == "mlp.hook_in":  # circuit-tracer / TL4 bridge: what the MLP module is called with (after ln2's weights)
        return Rule(at(f.mlp), "input", "plain", layer)
    if rest == "mlp.hook_out":  # what the MLP module returns (before a post-feedforward norm, where a family has one)
        return Rule(at(f.mlp), "output", "plain", layer)
    if rest == "mlp.hook_post":
        if f.moe:
            raise _no_site(hook_name, f, [at(f.mlp)], "a mixture-of-experts MLP has no single hidden activation")
        return Rule(at(f.down_proj), "input", "plain", layer)
    if rest == "mlp.hook_pre" and f.mlp_in_proj is not None:
        return Rule(at(f.mlp_in_proj), "output", "plain", layer)
    if rest == "mlp.hook_pre_linear" and f.mlp_up_proj is not None:
        return Rule(at(f.mlp_up_proj), "output", "plain", layer)
    if rest.startswith("attn.hook_"):
        candidates = [at(f.attn), at(f.o_proj)]
        why = ("only attn.hook_z (the output projection's input) is a module boundary; queries, keys and patterns "
               "are computed inside the attention function")
    else:
        candidates = [blk]
        why = "no exact module boundary for it in this family"
    raise _no_site(hook_name, f, candidates, why)


def _no_site(hook: str, family: Family, candidates: list[str], why: str, model_cls: str | None = None
             ) -> HookSiteError:
    cls = model_cls or f"the {family.name} family"
    where = f"; candidate module paths: {', '.join(candidates)}" if candidates else ""
    return HookSiteError(f"cannot place hook {hook!r} in {cls}: {why}{where}", field="hook_name")


# ------------------------------------------------------------------------------------------------ bound sites


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a site's arithmetic runs in for tensors of ``dtype``: float32 for half precision (bf16/fp16 sums
    over ``d_model`` lose the mean and the norm, as the models' own norms know by upcasting), the dtype itself
    when it is wider: a float64 model must not be rounded through float32 (~1e-7 on its logits)."""
    return torch.promote_types(dtype, torch.float32)


@dataclass
class HFSite:
    """A hook bound to a module of a live model: where it is, and how to map the tensor there to
    TransformerLens's tensor (:meth:`to_tl`) and a replacement back (:meth:`from_tl`).

    ``width`` is the size of the flat activation (``d_model``, ``n_heads * d_head``, ``d_mlp``); ``heads`` the
    ``(n_heads, d_head)`` shape of a per-head site. ``center``, ``value_bias`` and ``norm`` are the transforms of
    the module docstring (``value_bias``: ``[n_heads, d_head]``).
    """

    hook_name: str
    module_path: str
    module: torch.nn.Module
    side: Literal["input", "output"]
    width: int | None = None
    heads: tuple[int, int] | None = None
    center: bool = False
    stream: bool = False
    value_bias: torch.Tensor | None = None
    norm: tuple[NormKind, float, torch.nn.Module] | None = None
    notes: list[str] = field(default_factory=list)

    def to_tl(self, t: torch.Tensor, module_input: torch.Tensor | None = None) -> torch.Tensor:
        """TransformerLens's activation from the tensor at the site (``module_input``: the norm's input, for a
        ``hook_normalized`` site)."""
        if self.norm is not None:
            kind, eps, _ = self.norm
            x = module_input if module_input is not None else t
            xf = x.to(compute_dtype(x.dtype))
            if kind == "ln":
                xf = xf - xf.mean(-1, keepdim=True)
            t = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
        if self.heads is not None:
            t = t.unflatten(-1, self.heads)
        if self.value_bias is not None:
            t = t - self.value_bias.to(t.dtype)
        if self.center:
            t = t - t.mean(-1, keepdim=True)
        return t

    def from_tl(self, new: torch.Tensor, orig: torch.Tensor, tl_before: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor to put at the site for TransformerLens activation ``new``; ``orig`` is what was there and
        ``tl_before`` TransformerLens's view of it (what :meth:`to_tl` gave, plus any tracked mean).

        With ``tl_before``, a ``hook_normalized`` site writes ``orig + (new - tl_before) * scale`` (``scale``: the
        norm's weight, ``1 + weight`` for an offset RMSNorm) and an ``attn.hook_z`` site ``orig + (new - tl_before)``
        (heads flattened): the same maps as ``new * scale + bias`` and ``new + value_bias`` wherever the model's
        tensor equals ours, but an unchanged tensor comes back bit for bit. Llama's and Gemma's RMSNorms
        compute in float32 even in a float64 model, so re-applying the weight to our float64 normalisation moved
        the logits of an unedited float64 Llama by ~1e-7, and in bf16 Gemma's (rounded once in float32) differs
        from ours rounded to bf16 and multiplied again.
        """
        if self.norm is not None:
            return self._norm_from_tl(new, orig, tl_before)
        if self.value_bias is not None and tl_before is not None and tl_before.shape == new.shape:
            # hook_z: orig is flatten(tl_before + value_bias), so this is flatten(new + value_bias) without
            # rounding the bias in and out again (in bf16 that alone moved an unedited GPT-2's logits by 0.03)
            work = compute_dtype(orig.dtype)
            delta = new.to(device=orig.device, dtype=work) - tl_before.to(device=orig.device, dtype=work)
            return (orig.to(work) + delta.reshape(orig.shape)).to(orig.dtype)
        new = new.to(device=orig.device, dtype=orig.dtype)
        if self.center:  # residual-stream sites only (never per-head): put back the mean the read took away
            before = tl_before.to(orig.dtype).mean(-1, keepdim=True) if tl_before is not None else 0.0
            new = new + (orig.mean(-1, keepdim=True) - before)
        if self.value_bias is not None:
            new = new + self.value_bias.to(new.dtype)
        if self.heads is not None:
            new = new.flatten(-2)
        return new.reshape(orig.shape)

    def _norm_from_tl(self, new: torch.Tensor, orig: torch.Tensor, tl_before: torch.Tensor | None) -> torch.Tensor:
        """:meth:`from_tl` at a ``hook_normalized`` site, in :func:`compute_dtype` of the model's dtype (float32
        for half precision, as the model's own norms compute; float64 stays float64)."""
        assert self.norm is not None
        kind, _, mod = self.norm
        work = compute_dtype(orig.dtype)
        w = getattr(mod, "weight", None)
        b = getattr(mod, "bias", None)
        scale = w.detach().to(device=orig.device, dtype=work) if isinstance(w, torch.Tensor) else None
        if kind == "rms_offset" and scale is not None:
            scale = 1.0 + scale
        new = new.to(device=orig.device, dtype=work)
        if tl_before is not None and tl_before.shape == new.shape:
            delta = new - tl_before.to(device=orig.device, dtype=work)
            out = orig.to(work) + (delta * scale if scale is not None else delta)
        else:
            out = new * scale if scale is not None else new
            if kind != "rms_offset" and isinstance(b, torch.Tensor):
                out = out + b.detach().to(device=orig.device, dtype=work)
        return out.to(orig.dtype).reshape(orig.shape)


def _config_get(cfg: Any, *names: str) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return None


def _value_bias(model: Any, family: Family, layer: int, n_heads: int, d_head: int, processing: Processing
                ) -> torch.Tensor | None:
    """TransformerLens's folded value bias of ``layer`` as ``[n_heads, d_head]``, or None when there is none.

    ``b_V`` (from ``v_proj`` / GPT-2's ``c_attn`` / NeoX's interleaved ``query_key_value``), repeated over the
    query heads of a grouped-query model, plus ``ln1.bias @ W_V`` when ``fold_ln`` folds a LayerNorm bias in.
    """
    if not processing.fold_value_biases:
        return None
    blk = model.get_submodule(f"{family.layers}.{layer}")
    d_model = n_heads * d_head
    w_v: torch.Tensor | None  # [n_heads * d_head, d_model] (nn.Linear orientation)
    if family.qkv == "gpt2":
        c_attn = blk.get_submodule("attn.c_attn")  # Conv1D: weight [d_model, 3 * d_model]
        w_v = c_attn.weight[:, 2 * d_model:].T
        b_v = c_attn.bias[2 * d_model:] if c_attn.bias is not None else None
    elif family.qkv == "neox":
        qkv = blk.get_submodule("attention.query_key_value")  # Linear: out = per head [q | k | v]
        w_v = qkv.weight.view(n_heads, 3 * d_head, -1)[:, 2 * d_head:, :].reshape(d_model, -1)
        b_v = qkv.bias.view(n_heads, 3 * d_head)[:, 2 * d_head:].reshape(-1) if qkv.bias is not None else None
    else:
        v_proj = blk.get_submodule(f"{family.attn}.v_proj")
        n_kv = v_proj.weight.shape[0] // d_head
        rep = n_heads // n_kv
        w_v = v_proj.weight.view(n_kv, d_head, -1).repeat_interleave(rep, 0).reshape(d_model, -1)
        b_v = v_proj.bias.view(n_kv, d_head).repeat_interleave(rep, 0).reshape(-1) if v_proj.bias is not None \
            else None
    total: torch.Tensor | None = b_v.detach().clone() if b_v is not None else None
    if processing.fold_ln and family.norm == "ln":
        ln_b = getattr(blk.get_submodule(family.ln1), "bias", None)
        if ln_b is not None:
            work = compute_dtype(w_v.dtype)
            extra = (w_v.detach().to(work) @ ln_b.detach().to(work)).to(w_v.dtype)
            total = extra if total is None else total + extra
    return None if total is None else total.view(n_heads, d_head)


def _parse_hf_path(model: Any, hf_hook_name: str) -> tuple[list[str], Literal["input", "output"]]:
    """Candidate module paths and side for a ``cfg.hf_hook_name``.

    SAELens stores a module path whose output is meant (``model.layers.12``); Gemma Scope 2 appends ``.output``
    (``model.layers.7.output``), and ``.input`` names the module's input. The path may be written for another
    wrapping of the same network: relative to the base model (sparsify's ``layers.5``), or with the multimodal
    Gemma 3 prefix ``model.language_model.`` on a text-only model (and the reverse); all are tried, in order.
    """
    side: Literal["input", "output"] = "output"
    path = hf_hook_name
    for suffix, s in ((".output", "output"), (".input", "input")):
        if path.endswith(suffix):
            path, side = path[: -len(suffix)], s  # type: ignore[assignment]
            break
    cands = [path]
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and not path.startswith(prefix + "."):
        cands.append(f"{prefix}.{path}")
    if path.startswith("model.language_model."):
        cands.append("model." + path[len("model.language_model."):])
    elif path.startswith("model.") and not path.startswith("model.language_model."):
        cands.append("model.language_model." + path[len("model."):])
    return list(dict.fromkeys(cands)), side


def resolve_hf_site(model: Any, hook_name: str, *, hf_hook_name: str | None = None,
                    processing: Processing = DEFAULT_PROCESSING) -> HFSite:
    """Bind ``hook_name`` (or ``hf_hook_name``, which wins) to a module of the ``transformers`` model ``model``.

    HookSiteError (a ConfigError) names the hook, the model class and the module paths tried when there is no
    exact place.
    """
    cls = type(model).__name__
    cfg = getattr(model, "config", None)
    text_cfg = getattr(cfg, "text_config", None) or cfg
    if hf_hook_name:
        cands, side = _parse_hf_path(model, hf_hook_name)
        for path in cands:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                continue
            return HFSite(hook_name=hook_name, module_path=path, module=module, side=side,
                          notes=[f"hf_hook_name {hf_hook_name!r}"])
        raise HookSiteError(
            f"cannot place hook {hook_name!r} in {cls}: its hf_hook_name {hf_hook_name!r} is not a module of this "
            f"model; candidate module paths tried: {', '.join(cands)}",
            field="hf_hook_name",
        )
    family = family_of_model(model)
    parallel = bool(getattr(text_cfg, "use_parallel_residual", False)) and family.name == "gpt_neox"
    try:
        rule = hf_hook_rule(family, hook_name, parallel_residual=parallel)
    except HookSiteError as e:
        raise HookSiteError(e.message.replace(f"the {family.name} family", f"{cls} ({family.name} family)"),
                            field="hook_name") from None
    try:
        module = model.get_submodule(rule.module)
    except AttributeError:
        raise HookSiteError(
            f"cannot place hook {hook_name!r} in {cls}: module {rule.module!r} does not exist (the model has "
            f"{_config_get(text_cfg, 'num_hidden_layers', 'n_layer')} layers); candidate module paths: "
            f"{rule.module}",
            field="hook_name",
        ) from None
    d_model = int(_config_get(text_cfg, "hidden_size", "n_embd"))
    n_heads = int(_config_get(text_cfg, "num_attention_heads", "n_head"))
    d_head = int(_config_get(text_cfg, "head_dim") or d_model // n_heads)
    ln_family = family.norm == "ln"
    site = HFSite(hook_name=hook_name, module_path=rule.module, module=module, side=rule.side)
    if rule.kind == "resid":
        site.width = d_model
        site.center = ln_family and processing.center_writing_weights
        site.stream = rule.stream
    elif rule.kind == "z":
        site.width = n_heads * d_head
        site.heads = (n_heads, d_head)
        assert rule.layer is not None
        site.value_bias = _value_bias(model, family, rule.layer, n_heads, d_head, processing)
    elif rule.kind == "normalized":
        site.width = d_model
        if processing.fold_ln:
            eps = float(_config_get(module, "eps", "variance_epsilon", "epsilon")
                        or _config_get(text_cfg, "layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps") or 1e-5)
            site.norm = (family.norm, eps, module)
    elif rule.side == "input":  # mlp.hook_post: the down projection's input
        site.width = getattr(module, "in_features", None) or getattr(module, "nx", None)
    else:  # mlp.hook_pre / hook_pre_linear: an up projection's output
        site.width = getattr(module, "out_features", None) or getattr(module, "nf", None)
    return site
