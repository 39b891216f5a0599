"""Logit lens on SAE features: what each feature's decoder direction does to the output logits.

For feature ``j`` the *logit weights* are the row ``d_j @ W_U'`` (``[d_vocab]``), where ``d_j`` is the
feature's decoder direction expressed in the residual stream and ``W_U'`` the unembedding with the final
norm's weight folded in. Conventions (stated because peers differ, see ``docs/training.md#logit-lens``):

* **Direction per unit of activation.** ``d_j = W_dec[j]``, divided by ``||W_dec[j]||`` for SAEs whose
  ``decode`` does so (``rescale_acts_by_decoder_norm``) and by ``norm_scaling_factor_out`` when set, so
  ``f_j * d_j`` is what the feature adds to the activation. Per-token normalisation scales (layer_norm,
  zscore, constant_norm_rescale SAEs) are positive per-token factors and are left out: they do not change a
  feature's ranking of tokens.
* **Non-residual hooks** are mapped into the residual stream through the weight that writes them there:
  ``attn.hook_z`` -> ``@ W_O`` (heads flattened; one head for ``hook_head_index``), ``mlp.hook_post`` ->
  ``@ W_out``; residual hooks (``hook_resid_*``, ``hook_attn_out``, ``hook_mlp_out``, block ``hook_in`` /
  ``hook_out``, embeddings) are the identity. Transcoders are read at their output hook (``hook_name_out``).
* **Final norm** (``fold_ln=True``): ``W_U' = diag(γ) W_U`` with ``γ`` the weight the model's ``ln_final``
  *currently* multiplies by (``1 + w`` for offset RMSNorms such as Gemma's). For a LayerNorm the mean over
  ``d_model`` is also removed (``W_U'`` centred over ``d_model``), because the norm subtracts it before
  ``W_U`` ever sees it. A model whose weights TransformerLens already processed (``HookedTransformer``
  defaults, or ``TransformerBridge.enable_compatibility_mode()``) has ``γ = 1`` and a centred ``W_U``: then
  nothing is changed and :class:`UnembedInfo` says the model did it. Folding cannot be undone, so
  ``fold_ln=False`` on such a model still sees a folded ``W_U`` (recorded). The per-token ``1/σ`` of the
  norm is not folded anywhere: it is a positive per-token scalar and does not change rankings. A plain
  ``transformers`` model (or nnsight's) is unprocessed: its output embedding (``lm_head.weight.T``) gets the
  final norm's weight folded in here exactly as above, so it gives TransformerLens's numbers (with
  ``center=True`` when comparing against a model TransformerLens loaded with ``center_unembed``).
* **Logit soft-capping** (Gemma 2's ``final_logit_softcapping``, TransformerLens's ``output_logits_soft_cap``):
  left out. The lens is linear in the decoder direction and the cap ``c * tanh(x / c)`` is not; it is monotone,
  so top/bottom tokens and enrichment are what the capped logits would give, while values and moments are
  pre-cap. :class:`UnembedInfo` notes it.
* **Centring** (``center=True``): ``W_U'`` minus its mean over the vocabulary, as TransformerLens's
  ``center_unembed``. It shifts each feature's row by a constant: rankings, std, skewness, kurtosis and
  enrichment are unchanged, only the mean moves (to 0).
* **Moments** of each row over the whole vocabulary: mean, population std (``ddof=0``), skewness
  ``m3 / m2^1.5`` and **excess** kurtosis ``m4 / m2^2 - 3`` (a normal distribution has 0), i.e.
  ``scipy.stats.skew`` / ``scipy.stats.kurtosis`` with their defaults; returned as float64. Computed as a
  stable float32 two-pass (centred on the mean first, then pairwise-summed powers, combined in float64):
  about 1e-6 relative error, at a third of the cost of float64 passes. High skew/kurtosis marks the
  "token-promoting" features.
* **Token-set enrichment** (TSEA, after GSEA): sort the vocabulary by the feature's logit weight
  (descending; ties by token id), walk down adding ``1/|S|`` for members of ``S`` and ``-1/(V-|S|)`` for the
  others; the score is the running sum at its largest absolute value (the first such rank), *signed*:
  positive means ``S`` is concentrated among the promoted tokens, negative among the suppressed ones.
  ``|score| <= 1``; NaN when ``S`` is empty or the whole vocabulary. The running sum is computed in exact
  integer arithmetic (``V * members_so_far - |S| * rank``), so ties and chunking cannot change it.

Memory: ``W_dec @ W_U`` for ``d_sae=65536, d_vocab=256000`` is 67 GB in float32, so it is computed in
feature chunks (``chunk_size`` rows at a time, default from ``memory_budget_mb``; the sort that
enrichment needs runs on sub-blocks of a chunk) and only top/bottom-k, moments and enrichment scores are
kept. The matmul runs in fixed 128-row blocks (a short last block is filled up with a repeated feature), so
a feature's row is computed by the same kernel at the same block position whatever the chunk size:
chunked and unchunked results are bit-identical for the same list of features (a different subset may
round differently in the last bit: BLAS picks kernels by matrix height).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Union

import torch

from sae_hub.errors import ConfigError, ShapeMismatchError

if TYPE_CHECKING:
    from sae_hub.sae import SAE

__all__ = [
    "BUILTIN_TOKEN_SETS",
    "FeatureLogits",
    "LogitLensResult",
    "TokenWeight",
    "UnembedInfo",
    "enrichment",
    "logit_lens",
    "logit_weights",
    "token_set_mask",
    "vocab_strings",
]

logger = logging.getLogger(__name__)

#: Rows per matmul block. Chunk sizes are rounded to a multiple of it (see the module docstring).
_MM_BLOCK = 128
#: Rows per moments pass (row reductions see the same block shapes whatever the chunking).
_STAT_BLOCK = 32

TokenSetSpec = Union[str, "re.Pattern[str]", Sequence[str], Sequence[int], Callable[[str], bool], torch.Tensor]


# ------------------------------------------------------------------------------------------- token sets


def _strip_one_space(s: str) -> str:
    return s[1:] if s.startswith(" ") else s


def _starts_with_space(s: str) -> bool:
    return s.startswith(" ")


def _capitalized(s: str) -> bool:
    return _strip_one_space(s)[:1].isupper()


def _all_digits(s: str) -> bool:
    t = _strip_one_space(s)
    return bool(t) and all("0" <= ch <= "9" for ch in t)


def _punctuation(s: str) -> bool:
    t = s.strip()
    return bool(t) and all(ch != "\ufffd" and unicodedata.category(ch)[0] in "PS" for ch in t)


def _single_character(s: str) -> bool:
    return len(_strip_one_space(s)) == 1


#: Built-in token sets, as predicates on the decoded token string (see :func:`vocab_strings`):
#:
#: * ``starts_with_space``: the string starts with ``" "`` (a word-initial token in BPE vocabularies);
#: * ``capitalized``: after one optional leading space, the first character is an uppercase letter;
#: * ``all_digits``: after one optional leading space, non-empty and only ASCII digits ``0-9``;
#: * ``punctuation``: stripped of whitespace, non-empty and only Unicode punctuation or symbol characters
#:   (categories ``P*``/``S*``: ``.,!?;:'"()[]{}#$%&*+-/<=>@^_|~`` ...), the replacement character excepted;
#: * ``single_character``: exactly one character after one optional leading space.
BUILTIN_TOKEN_SETS: dict[str, Callable[[str], bool]] = {
    "starts_with_space": _starts_with_space,
    "capitalized": _capitalized,
    "all_digits": _all_digits,
    "punctuation": _punctuation,
    "single_character": _single_character,
}


def vocab_strings(tokenizer: Any, d_vocab: int) -> list[str]:
    """The decoded string of every token id ``0..d_vocab-1`` (``""`` for ids the tokenizer does not have).

    Decoding one id at a time shows what the token contributes to text (``" the"``, not ``"Ġthe"``).
    SentencePiece decoders drop a word-initial ``▁`` when a token is decoded alone; it is put back as a
    space so ``starts_with_space`` means the same for every tokenizer.
    """
    n = min(len(tokenizer), d_vocab)
    strings = list(tokenizer.batch_decode([[i] for i in range(n)]))
    raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    for i, (s, r) in enumerate(zip(strings, raw, strict=True)):
        if isinstance(r, str) and r.startswith("\u2581") and not s.startswith(" "):
            strings[i] = " " + s
    return strings + [""] * (d_vocab - n)


def token_set_mask(spec: TokenSetSpec, d_vocab: int, strings: Sequence[str] | None = None,
                   *, name: str = "token set") -> torch.Tensor:
    """A ``[d_vocab]`` bool membership mask from a token-set spec.

    ``spec`` is one of: a regex (``str`` or compiled; ``re.search`` on each decoded token string), a
    predicate ``str -> bool``, a sequence of token strings (exact matches of decoded strings), a sequence
    of token ids, or a bool tensor ``[d_vocab]``. String-based specs need the vocabulary's ``strings``.
    """
    if isinstance(spec, torch.Tensor):
        if spec.dtype != torch.bool or tuple(spec.shape) != (d_vocab,):
            raise ShapeMismatchError(f"{name}: a mask must be a bool tensor of shape [{d_vocab}]", field=name)
        return spec.cpu()
    if isinstance(spec, (str, re.Pattern)) or callable(spec):
        if strings is None:
            raise ConfigError(f"{name}: a regex or predicate token set needs token strings (give a tokenizer)",
                              field=name)
        if isinstance(spec, (str, re.Pattern)):
            pattern = re.compile(spec) if isinstance(spec, str) else spec
            members = [bool(pattern.search(s)) for s in strings]
        else:
            members = [bool(spec(s)) for s in strings]
        return torch.tensor(members, dtype=torch.bool)
    items = list(spec)
    mask = torch.zeros(d_vocab, dtype=torch.bool)
    if not items:
        return mask
    if all(isinstance(x, str) for x in items):
        if strings is None:
            raise ConfigError(f"{name}: a list of token strings needs token strings (give a tokenizer)",
                              field=name)
        wanted = set(items)
        return torch.tensor([s in wanted for s in strings], dtype=torch.bool)
    if all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        ids = torch.tensor(items, dtype=torch.long)
        if ids.min() < 0 or ids.max() >= d_vocab:
            raise ConfigError(f"{name}: token ids must lie in [0, {d_vocab})", field=name)
        mask[ids] = True
        return mask
    kinds = sorted({type(x).__name__ for x in items})
    raise ConfigError(f"{name}: expected token strings or token ids, not a mix of {kinds}", field=name)


# ------------------------------------------------------------------------------------------- enrichment


def _pick(hi: torch.Tensor, hi_at: torch.Tensor, lo: torch.Tensor, lo_at: torch.Tensor, S: int, V: int
          ) -> torch.Tensor:
    """The signed extreme (the larger in absolute value; on a tie the earlier rank) as a float64 score."""
    take_hi = (hi.abs() > lo.abs()) | ((hi.abs() == lo.abs()) & (hi_at <= lo_at))
    return (torch.where(take_hi, hi, lo).double() / (S * (V - S))).cpu()


def _enrichment_cumsum(members_sorted: torch.Tensor, S: int) -> torch.Tensor:
    """Signed running-sum statistic from membership along each row's ranking (``[..., V]`` bool).

    The running sum at rank ``r`` (1-based) with ``c`` members seen is ``c/S - (r-c)/(V-S)``; times
    ``S (V - S)`` it is the integer ``c V - r S``, whose extremes are found exactly in int64. O(V) per row.
    """
    V = members_sorted.shape[-1]
    num = members_sorted.cumsum(-1, dtype=torch.int64)
    num.mul_(V)
    num.sub_(torch.arange(1, V + 1, dtype=torch.int64, device=num.device).mul_(S))
    hi, hi_at = num.max(-1)
    lo, lo_at = num.min(-1)
    return _pick(hi, hi_at, lo, lo_at, S, V)


def _enrichment_ranks(ranks: torch.Tensor, members: torch.Tensor, V: int) -> torch.Tensor:
    """The same statistic from the 1-based ranks of the ``S`` members only: O(S log S) per row.

    The running sum peaks right after a member and dips right before one (or is 0 at the end), so with
    ``r_i`` the sorted member ranks the candidates are ``i V - r_i S`` (at ``r_i``) and
    ``(i-1) V - (r_i - 1) S`` (at ``r_i - 1``, when that is a rank), and ``0`` at ``V``.
    """
    S = members.numel()
    pos = ranks[..., members].sort(dim=-1).values
    i = torch.arange(1, S + 1, dtype=torch.int64, device=pos.device)
    hi_v = i * V - pos * S
    lo_v = (i - 1) * V - (pos - 1) * S
    lo_v = torch.where(pos > 1, lo_v, torch.full_like(lo_v, 1 << 62))
    hi, hi_i = hi_v.max(-1)
    lo, lo_i = lo_v.min(-1)
    hi_at = pos.gather(-1, hi_i[..., None])[..., 0]
    lo_at = pos.gather(-1, lo_i[..., None])[..., 0] - 1
    end = lo > 0  # the dip is the end of the ranking, where the sum is back to 0
    lo_at = torch.where(end, torch.full_like(lo_at, V), lo_at)
    lo = torch.where(end, torch.zeros_like(lo), lo)
    return _pick(hi, hi_at, lo, lo_at, S, V)


def _use_ranks(S: int, V: int) -> bool:
    """Small sets go through member ranks (sort S) rather than a running sum over all V positions."""
    return S * max(1, S.bit_length()) <= V


def _enrichment_from_order(order: torch.Tensor, masks: Sequence[torch.Tensor], members: Sequence[torch.Tensor],
                           out: torch.Tensor) -> None:
    """Fill ``out [..., n_sets]`` with the enrichment of each set given each row's ranking ``order``."""
    V = order.shape[-1]
    ranks: torch.Tensor | None = None
    for c, (mask, ids) in enumerate(zip(masks, members, strict=True)):
        S = ids.numel()
        if S in (0, V):
            out[..., c] = math.nan
        elif _use_ranks(S, V):
            if ranks is None:
                ranks = torch.empty_like(order).scatter_(
                    -1, order, torch.arange(1, V + 1, dtype=order.dtype, device=order.device).expand_as(order))
            out[..., c] = _enrichment_ranks(ranks, ids, V)
        else:
            out[..., c] = _enrichment_cumsum(mask[order], S)


def enrichment(scores_row: torch.Tensor, member_mask: torch.Tensor) -> torch.Tensor:
    """Token-set enrichment of ``member_mask`` in the ranking given by ``scores_row``.

    ``scores_row`` is ``[V]`` or ``[n, V]``; ``member_mask`` a bool ``[V]``. Returns the signed score (a 0-d
    or ``[n]`` float64 tensor): the running sum of ``+1/|S|`` (member) / ``-1/(V-|S|)`` (non-member) down
    the descending ranking (stable: ties by token id), taken where its absolute value is largest (first such
    rank). Positive: members are concentrated at the top; negative: at the bottom; NaN for ``|S|`` in
    ``{0, V}``.
    """
    if member_mask.dtype != torch.bool or member_mask.shape[-1] != scores_row.shape[-1]:
        raise ShapeMismatchError("member_mask must be a bool tensor with the scores' last dimension",
                                 field="member_mask")
    order = torch.sort(scores_row, dim=-1, descending=True, stable=True).indices
    mask = member_mask.to(order.device)
    out = torch.empty(*order.shape[:-1], 1, dtype=torch.float64)
    _enrichment_from_order(order, [mask], [mask.nonzero().flatten()], out)
    return out[..., 0]


# ------------------------------------------------------------------------------------------ unembedding


@dataclass(frozen=True)
class UnembedInfo:
    """What the ``W_U`` behind a logit-lens result is, so numbers can be compared across tools.

    ``*_by`` is ``"model"`` when the model's own weight processing had already done it (TransformerLens
    ``fold_ln`` / ``center_unembed``), ``"sae_hub"`` when this call did it, ``None`` when it is not done.
    """

    source: str  # "model" or "tensor"
    final_norm: str | None = None  # "LayerNorm", "RMSNorm" or None (no norm found / raw tensor)
    ln_weight_folded: bool = False
    ln_weight_folded_by: str | None = None
    d_model_centered: bool = False  # LayerNorm's mean removal folded in (W_U centred over d_model)
    d_model_centered_by: str | None = None
    vocab_centered: bool = False
    vocab_centered_by: str | None = None
    hook_name: str | None = None
    resid_map: str = "identity"  # "identity", "W_O", "W_O[head h]" or "W_out"
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def _centering(W: torch.Tensor, block: int = 4096) -> tuple[bool, bool]:
    """Is ``W [d_model, d_vocab]`` centred over d_model, and over the vocabulary, up to the rounding of its
    dtype (as TransformerLens leaves processed weights)? One pass of float64 column blocks, no full copy
    (float32 sums of 256k terms would not be accurate enough to tell)."""
    d_model, V = W.shape
    col = torch.empty(V, dtype=torch.float64, device=W.device)
    row = torch.zeros(d_model, dtype=torch.float64, device=W.device)
    abs_sum = 0.0
    for s in range(0, V, block):
        part = W[:, s:s + block].detach().double()
        col[s:s + block] = part.sum(0)
        row += part.sum(1)
        abs_sum += float(part.abs().sum())
    eps = torch.finfo(W.dtype).eps if W.dtype.is_floating_point else 0.0
    scale = 32 * eps * abs_sum / max(W.numel(), 1) + 1e-300

    def centred(sums: torch.Tensor, n: int) -> bool:
        return bool((sums / n).abs().max() <= scale / math.sqrt(n))

    return centred(col, d_model), centred(row, V)


def _prepare_unembed(model_or_W_U: Any, *, fold_ln: bool, center: bool, d_in: int | None = None
                     ) -> tuple[torch.Tensor, UnembedInfo, Any]:
    """The float32 ``W_U' [d_model, d_vocab]`` used for the lens, its description, and the model (or None)."""
    notes: list[str] = []
    if isinstance(model_or_W_U, torch.Tensor):
        W = model_or_W_U.detach()
        if W.dim() != 2:
            raise ShapeMismatchError(f"W_U must be 2-D [d_model, d_vocab], got shape {list(W.shape)}", field="W_U")
        if d_in is not None and W.shape[0] != d_in and W.shape[1] == d_in:
            raise ShapeMismatchError(
                f"W_U has shape {list(W.shape)}; expected [d_model={d_in}, d_vocab] (TransformerLens "
                "orientation). An HF lm_head.weight is [d_vocab, d_model]: pass its .T",
                field="W_U",
            )
        W = W.float()
        info: dict[str, Any] = {"source": "tensor"}
        if fold_ln:
            notes.append("raw W_U given: no final-norm weight folded (nothing is assumed about it)")
        model = None
    else:
        from sae_hub.adapters import adapt

        model = adapt(model_or_W_U)  # ConfigError naming the class for anything that is no model
        W = model.unembed()[0].detach()
        kind, gamma, processed = model.final_norm_info()
        info = {"source": "model", "final_norm": kind}
        cap = model.logit_softcap
        if cap is not None:
            notes.append(f"the model soft-caps its logits ({cap:g} * tanh(logits / {cap:g})); the lens is linear "
                         "and leaves the cap out (monotone per token: rankings are unchanged, values are pre-cap)")
        if W.dtype != torch.float32:
            W = W.float()
        if kind is None:
            notes.append("model has no ln_final: nothing to fold")
        else:
            identity = gamma is None or bool(torch.all(gamma == 1))
            if identity and processed:
                info.update(ln_weight_folded=True, ln_weight_folded_by="model")
            elif fold_ln:
                if gamma is not None and not identity:
                    W = W * gamma.to(W.device, torch.float32)[:, None]
                info.update(ln_weight_folded=True, ln_weight_folded_by="sae_hub")
                if identity:
                    notes.append("final-norm weight is all ones: folding it changes nothing")
            if not fold_ln and info.get("ln_weight_folded_by") == "model":
                notes.append("fold_ln=False, but the model's weights were processed with fold_ln: W_U has the "
                             "final-norm weight in it and cannot be unfolded")
        by_d_model, by_vocab = _centering(W)
        if kind == "LayerNorm":
            if by_d_model:
                info.update(d_model_centered=True, d_model_centered_by="model")
            elif fold_ln:
                W = W - W.mean(0, keepdim=True)  # leaves vocab-centredness as it was
                info.update(d_model_centered=True, d_model_centered_by="sae_hub")
        if by_vocab:
            info.update(vocab_centered=True, vocab_centered_by="model")
    if center and not info.get("vocab_centered"):
        W = W - W.mean(1, keepdim=True)
        info.update(vocab_centered=True, vocab_centered_by="sae_hub")
    info["notes"] = tuple(notes)
    return W.contiguous(), UnembedInfo(**info), model


# ------------------------------------------------------------------------------------ decoder directions

_RESID_SUFFIXES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
_RESID_EXACT = {"hook_in", "hook_out", "attn.hook_out", "mlp.hook_out", "ln1.hook_in", "ln2.hook_in"}
_TOP_RESID = {"hook_embed", "hook_pos_embed", "embed.hook_out", "pos_embed.hook_out", "ln_final.hook_in"}
_BLOCK_HOOK = re.compile(r"blocks\.(\d+)\.(.+)")


def _resid_map(hook: str | None) -> tuple[str, int | None]:
    """How activations at ``hook`` enter the residual stream: ``("identity"|"W_O"|"W_out", layer)``."""
    if hook is None:
        return "identity", None
    if hook in _TOP_RESID:
        return "identity", None
    m = _BLOCK_HOOK.fullmatch(hook)
    if m is None:
        return "unknown", None
    layer, rest = int(m.group(1)), m.group(2)
    if rest.endswith(_RESID_SUFFIXES) or rest in _RESID_EXACT:
        return "identity", layer
    if rest in ("attn.hook_z", "attn.o.hook_in"):
        return "W_O", layer
    if rest in ("mlp.hook_post", "mlp.out.hook_in"):
        return "W_out", layer
    return "unknown", layer


class _Directions:
    """Decoder directions of chosen features in the residual stream, per unit of feature activation."""

    def __init__(self, sae: SAE, model: Any, device: torch.device, d_model: int) -> None:
        cfg = sae.cfg
        self.sae = sae
        self.device = device
        hook = cfg.output_hook_name
        kind, layer = _resid_map(hook)
        d_out = int(cfg.d_out or cfg.d_in)
        self.map: torch.Tensor | None = None
        self.label = kind
        if model is None:
            if kind in ("W_O", "W_out"):
                raise ConfigError(
                    f"the SAE writes {hook!r}, which is not the residual stream; with a raw W_U there is no "
                    f"{kind} to map it through: pass the model, or pass (W_map @ W_U) yourself",
                    field="hook_name",
                )
            self.label = "identity"
        elif kind == "unknown":
            raise ConfigError(
                f"do not know how {hook!r} maps into the residual stream (supported: resid/attn_out/mlp_out/"
                "block hook_in/hook_out hooks, attn.hook_z via W_O, mlp.hook_post via W_out); pass a W_U "
                "tensor to use the decoder directions as they are",
                field="hook_name",
            )
        elif kind == "W_O":
            W_O = model.resid_map("W_O", layer)  # [n_heads * d_head, d_model], head-major
            head = cfg.hook_head_index
            if head is not None:
                n_heads = W_O.shape[0] // d_out if d_out and W_O.shape[0] % d_out == 0 else 0
                if not 0 <= head < n_heads:
                    raise ConfigError(f"hook_head_index={head} with d_out={d_out} does not pick a head of W_O "
                                      f"{list(W_O.shape)}", field="hook_head_index")
                self.map = W_O[head * d_out:(head + 1) * d_out]
                self.label = f"W_O[head {head}]"
            else:
                self.map = W_O
        elif kind == "W_out":
            self.map = model.resid_map("W_out", layer)  # [d_mlp, d_model]
        if self.map is not None:
            self.map = self.map.to(device, torch.float32)
            if self.map.shape[0] != d_out:
                raise ShapeMismatchError(
                    f"the SAE writes d_out={d_out} at {hook!r}, the model's {kind} reads {self.map.shape[0]}",
                    field="d_out",
                )
        width = self.map.shape[1] if self.map is not None else d_out
        if width != d_model:
            raise ShapeMismatchError(
                f"decoder directions have width {width}, W_U has d_model={d_model}", field="d_out"
            )
        scale = None
        if cfg.rescale_acts_by_decoder_norm:
            scale = 1.0 / sae.W_dec_norm
        self.row_scale = scale
        self.out_scale = cfg.norm_scaling_factor_out or cfg.norm_scaling_factor

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        W = self.sae.W_dec.detach()
        d = W[ids.to(W.device)].to(self.device, torch.float32)
        if self.row_scale is not None:
            d = d * self.row_scale[ids.to(self.row_scale.device)].to(self.device)[:, None]
        if self.out_scale is not None:
            d = d / self.out_scale
        if self.map is not None:
            d = d @ self.map
        return d


def _blocked_logits(ids: torch.Tensor, dirs: _Directions, W: torch.Tensor, *, pad: bool) -> torch.Tensor:
    """Logit rows ``[len(ids), V]`` (float32), computed in ``_MM_BLOCK``-row blocks.

    With ``pad`` (the request spans more than one block) a short last block is filled up to ``_MM_BLOCK``
    rows with a repeated id, so every row goes through matmuls of one shape at a fixed block position:
    the bits of a feature's row do not depend on the chunking (BLAS picks kernels by shape).
    """
    c = ids.numel()
    out = torch.empty(c, W.shape[1], dtype=torch.float32, device=W.device)
    for s in range(0, c, _MM_BLOCK):
        block = ids[s:s + _MM_BLOCK]
        m = block.numel()
        if pad and m < _MM_BLOCK:
            block = torch.cat([block, block[-1:].expand(_MM_BLOCK - m)])
            out[s:] = (dirs(block) @ W)[:m]
        else:
            torch.matmul(dirs(block), W, out=out[s:s + m])
    return out


def _moments_(x: torch.Tensor) -> torch.Tensor:
    """``[c, 4]`` float64 (mean, std, skewness, excess kurtosis) of each row of ``x``, which is overwritten.

    Stable float32 two-pass in ``_STAT_BLOCK``-row blocks: centre on the float32 mean, then power sums of
    the deviations with torch's pairwise (cascade) summation (relative error ~1e-7 of the sum of absolute
    terms), combined in float64 with the exact correction for the small residual mean.
    """
    V = x.shape[1]
    out = torch.empty(x.shape[0], 4, dtype=torch.float64)
    for s in range(0, x.shape[0], _STAT_BLOCK):
        d = x[s:s + _STAT_BLOCK]
        mu = d.mean(1, keepdim=True)
        d.sub_(mu)
        e1 = d.sum(1).double() / V
        p = d * d
        e2 = p.sum(1).double() / V
        p.mul_(d)
        e3 = p.sum(1).double() / V
        p.mul_(d)
        e4 = p.sum(1).double() / V
        del p
        m2 = e2 - e1 * e1
        m3 = e3 - 3 * e1 * e2 + 2 * e1**3
        m4 = e4 - 4 * e1 * e3 + 6 * e1 * e1 * e2 - 3 * e1**4
        ok = m2 > 0
        safe = torch.where(ok, m2, torch.ones_like(m2))
        nan = torch.full_like(m2, math.nan)
        skew = torch.where(ok, m3 / safe.pow(1.5), nan)
        kurt = torch.where(ok, m4 / (safe * safe) - 3.0, nan)
        mean = mu[:, 0].double() + e1
        out[s:s + _STAT_BLOCK] = torch.stack([mean, m2.clamp_min(0).sqrt(), skew, kurt], 1).cpu()
    return out


# -------------------------------------------------------------------------------------------- results


class TokenWeight(NamedTuple):
    """One token of a feature's top or bottom list."""

    id: int
    token: str | None
    weight: float


@dataclass
class FeatureLogits:
    """The logit lens of one feature, as plain Python values."""

    feature: int
    top: list[TokenWeight]
    bottom: list[TokenWeight]  # most negative first
    mean: float
    std: float
    skewness: float
    kurtosis: float  # excess
    enrichment: dict[str, float] = field(default_factory=dict)


class _FeatureView:
    """``result.features[j]`` is feature ``j`` (by id, also when only some features were computed);
    iteration follows ``feature_ids``."""

    def __init__(self, result: LogitLensResult) -> None:
        self._r = result

    def __len__(self) -> int:
        return len(self._r.feature_ids)

    def __getitem__(self, j: int) -> FeatureLogits:
        return self._r._feature_at(self._r._position(int(j)))

    def __iter__(self) -> Iterator[FeatureLogits]:
        for pos in range(len(self)):
            yield self._r._feature_at(pos)

    def __contains__(self, j: object) -> bool:
        return isinstance(j, int) and j in self._r._pos


@dataclass
class LogitLensResult:
    """Top/bottom-k tokens, moments and enrichment scores of each computed feature.

    Tensors (CPU, row ``i`` is feature ``feature_ids[i]``): ``top_ids``/``top_values`` ``[n, k]``
    (descending), ``bottom_ids``/``bottom_values`` ``[n, k]`` (ascending: most negative first),
    ``moments`` ``[n, 4]`` float64 (mean, std, skewness, excess kurtosis), ``enrichment`` ``[n, n_sets]``
    float64 (columns named by ``set_names``). ``info`` says which ``W_U`` was used.
    """

    feature_ids: list[int]
    top_ids: torch.Tensor
    top_values: torch.Tensor
    bottom_ids: torch.Tensor
    bottom_values: torch.Tensor
    moments: torch.Tensor
    enrichment: torch.Tensor
    set_names: list[str]
    set_sizes: list[int]
    info: UnembedInfo
    strings: list[str] | None = None
    _pos: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._pos = {f: i for i, f in enumerate(self.feature_ids)}

    @property
    def features(self) -> _FeatureView:
        """``features[j]``: a :class:`FeatureLogits` for feature ``j``; iterates in ``feature_ids`` order."""
        return _FeatureView(self)

    @property
    def mean(self) -> torch.Tensor:
        return self.moments[:, 0]

    @property
    def std(self) -> torch.Tensor:
        return self.moments[:, 1]

    @property
    def skewness(self) -> torch.Tensor:
        return self.moments[:, 2]

    @property
    def kurtosis(self) -> torch.Tensor:
        """Excess kurtosis (0 for a normal distribution)."""
        return self.moments[:, 3]

    def enrichment_of(self, set_name: str) -> torch.Tensor:
        """The ``[n]`` enrichment scores of one token set."""
        if set_name not in self.set_names:
            raise ConfigError(f"no token set {set_name!r}; computed: {self.set_names}", field="set_name")
        return self.enrichment[:, self.set_names.index(set_name)]

    def top_features(self, by: str, n: int = 10, *, descending: bool = True) -> list[int]:
        """Feature ids ranked by a token set's enrichment score, or by ``"skewness"``/``"kurtosis"``/
        ``"mean"``/``"std"`` (NaNs last)."""
        stats = {"mean": 0, "std": 1, "skewness": 2, "kurtosis": 3}
        values = self.moments[:, stats[by]] if by in stats else self.enrichment_of(by)
        key = values.clone()
        key[torch.isnan(key)] = -math.inf if descending else math.inf
        order = torch.argsort(key, descending=descending, stable=True)[:n]
        return [self.feature_ids[i] for i in order.tolist()]

    def _position(self, j: int) -> int:
        pos = self._pos.get(j)
        if pos is None:
            raise KeyError(f"feature {j} was not computed (features: {len(self.feature_ids)} of them)")
        return pos

    def _token(self, i: int) -> str | None:
        return self.strings[i] if self.strings is not None else None

    def _feature_at(self, pos: int) -> FeatureLogits:
        def tokens(ids: torch.Tensor, vals: torch.Tensor) -> list[TokenWeight]:
            return [TokenWeight(i, self._token(i), v) for i, v in zip(ids.tolist(), vals.tolist(), strict=True)]

        m = self.moments[pos].tolist()
        return FeatureLogits(
            feature=self.feature_ids[pos],
            top=tokens(self.top_ids[pos], self.top_values[pos]),
            bottom=tokens(self.bottom_ids[pos], self.bottom_values[pos]),
            mean=m[0], std=m[1], skewness=m[2], kurtosis=m[3],
            enrichment=dict(zip(self.set_names, self.enrichment[pos].tolist(), strict=True)),
        )

    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per feature: ids, token strings and weights of the top/bottom lists, the four
        moments, and one ``enrichment_<set>`` column per token set (a shape pandas/JSON take as is)."""
        records = []
        for f in self.features:
            rec: dict[str, Any] = {
                "feature": f.feature,
                "top_ids": [t.id for t in f.top],
                "top_tokens": [t.token for t in f.top],
                "top_values": [t.weight for t in f.top],
                "bottom_ids": [t.id for t in f.bottom],
                "bottom_tokens": [t.token for t in f.bottom],
                "bottom_values": [t.weight for t in f.bottom],
                "mean": f.mean, "std": f.std, "skewness": f.skewness, "kurtosis": f.kurtosis,
            }
            rec.update({f"enrichment_{k}": v for k, v in f.enrichment.items()})
            records.append(rec)
        return records

    def to_pandas(self) -> Any:
        """:meth:`to_records` as a ``pandas.DataFrame`` indexed by feature (needs pandas installed)."""
        from sae_hub.analysis.feature_stats import records_frame

        return records_frame(self.to_records())


# ---------------------------------------------------------------------------------------------- public


def _resolve_features(sae: SAE, features: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    d_sae = sae.cfg.d_sae
    if features is None:
        return torch.arange(d_sae)
    ids = torch.as_tensor(list(features) if not isinstance(features, torch.Tensor) else features,
                          dtype=torch.long).reshape(-1)
    if ids.numel() and (ids.min() < 0 or ids.max() >= d_sae):
        raise ConfigError(f"feature ids must lie in [0, {d_sae})", field="features")
    return ids


def logit_weights(sae: SAE, model_or_W_U: Any, features: Sequence[int] | torch.Tensor, *,
                  fold_ln: bool = True, center: bool = False) -> tuple[torch.Tensor, UnembedInfo]:
    """The full logit-weight rows ``[len(features), d_vocab]`` (float32) of a few features, and the
    :class:`UnembedInfo` of the ``W_U`` used. Same conventions as :func:`logit_lens`; for plotting a row."""
    W, info, model = _prepare_unembed(model_or_W_U, fold_ln=fold_ln, center=center,
                                      d_in=int(sae.cfg.d_out or sae.cfg.d_in))
    ids = _resolve_features(sae, features)
    dirs = _Directions(sae, model, W.device, W.shape[0])
    info = _with_map(info, sae, dirs)
    with torch.no_grad():
        return _blocked_logits(ids, dirs, W, pad=ids.numel() > _MM_BLOCK).cpu(), info


def _with_map(info: UnembedInfo, sae: SAE, dirs: _Directions) -> UnembedInfo:
    d = info.to_dict()
    d.update(hook_name=sae.cfg.output_hook_name, resid_map=dirs.label)
    if sae.cfg.output_hook_name is None and info.source == "model":
        d["notes"] = (*d["notes"], "the SAE has no hook_name: its decoder rows are taken as residual directions")
    return UnembedInfo(**d)


def _chunk_rows(budget_mb: float, d_vocab: int, with_sort: bool) -> tuple[int, int]:
    """``(rows per chunk, rows per sort pass)`` for a working set near ``budget_mb``.

    A chunk holds its float32 logits (4 B each, plus 4 B for one ``_STAT_BLOCK`` of moment temporaries);
    with enrichment, half the budget goes to the chunk and half to the sort pass: per logit 8 B (order) +
    4 B (sorted values) + 1 B (membership) + 8 B (int64 running sum) + reductions, ~29 B.
    """
    budget = budget_mb * 2**20 / (2 if with_sort else 1)
    rows = int(budget // (4 * max(d_vocab, 1)))
    rows = max(_MM_BLOCK, rows // _MM_BLOCK * _MM_BLOCK)
    sort_rows = max(1, int(budget // (29 * max(d_vocab, 1))))
    return rows, sort_rows


def logit_lens(
    sae: SAE,
    model_or_W_U: Any,
    *,
    tokenizer: Any = None,
    k: int = 10,
    fold_ln: bool = True,
    center: bool = False,
    chunk_size: int | None = None,
    token_sets: Mapping[str, TokenSetSpec] | None = None,
    builtin_sets: bool = True,
    features: Sequence[int] | torch.Tensor | None = None,
    memory_budget_mb: float = 512,
    progress: bool = True,
) -> LogitLensResult:
    """Per feature: the top-k / bottom-k tokens of ``W_dec @ W_U'``, the moments of the row, and
    token-set enrichment scores (conventions in the module docstring).

    ``model_or_W_U`` is a model of any kind :func:`sae_hub.adapters.adapt` accepts (TransformerLens
    ``HookedTransformer`` / ``TransformerBridge``, a ``transformers`` ``*ForCausalLM`` whose output embedding is
    ``W_U``, an nnsight ``LanguageModel``): ``W_U``, the final norm and the tokenizer come from it, and
    non-residual hooks are mapped through ``W_O`` / ``W_out`` (the output projection / MLP down projection of a
    Hugging Face model). Or a raw ``W_U [d_model, d_vocab]`` tensor (with ``tokenizer`` for strings and string-based
    token sets): used as given, nothing folded, decoder directions taken as they are.

    ``token_sets`` maps names to specs (regex, predicate, token strings, token ids or a bool mask; see
    :func:`token_set_mask`) and is added to :data:`BUILTIN_TOKEN_SETS` (``builtin_sets=False`` drops those;
    built-ins are skipped without a tokenizer). With no sets at all no sort is needed and top/bottom-k use
    ``topk`` (faster). ``features`` restricts the computation to some feature ids. ``chunk_size`` features
    are processed at a time (rounded up to a multiple of 128); by default as many as fit ``memory_budget_mb``
    of working memory on top of ``W_U'`` (one chunk is at least 128 features). ``progress`` shows a tqdm bar of
    the features done when there is more than one chunk (a 65k-feature lens over a 256k vocabulary takes minutes).
    """
    from tqdm.auto import tqdm

    W, info, model = _prepare_unembed(model_or_W_U, fold_ln=fold_ln, center=center,
                                      d_in=int(sae.cfg.d_out or sae.cfg.d_in))
    d_model, V = W.shape
    device = W.device
    if tokenizer is None and model is not None:
        tokenizer = model.tokenizer
    strings = vocab_strings(tokenizer, V) if tokenizer is not None else None
    specs: dict[str, TokenSetSpec] = {}
    if builtin_sets and strings is not None:
        specs.update(BUILTIN_TOKEN_SETS)
    specs.update(token_sets or {})
    masks = {name: token_set_mask(spec, V, strings, name=name) for name, spec in specs.items()}
    set_names = list(masks)
    set_sizes = [int(m.sum()) for m in masks.values()]
    dev_masks = [m.to(device) for m in masks.values()]
    dev_members = [m.nonzero().flatten() for m in dev_masks]

    ids = _resolve_features(sae, features)
    n = int(ids.numel())
    k = max(0, min(int(k), V))
    dirs = _Directions(sae, model, device, d_model)
    info = _with_map(info, sae, dirs)
    with_sort = bool(set_names)
    rows, sort_rows = _chunk_rows(memory_budget_mb, V, with_sort)
    if chunk_size is not None:
        if chunk_size <= 0:
            raise ConfigError("chunk_size must be positive", field="chunk_size")
        rows = -(-int(chunk_size) // _MM_BLOCK) * _MM_BLOCK
    pad = n > _MM_BLOCK

    top_ids = torch.empty(n, k, dtype=torch.long)
    top_vals = torch.empty(n, k, dtype=torch.float32)
    bot_ids = torch.empty(n, k, dtype=torch.long)
    bot_vals = torch.empty(n, k, dtype=torch.float32)
    moments = torch.empty(n, 4, dtype=torch.float64)
    enrich = torch.empty(n, len(set_names), dtype=torch.float64)
    logger.debug("logit_lens: %d features x %d tokens in chunks of %d rows (sort passes of %d)", n, V, rows,
                 sort_rows)
    with torch.no_grad(), tqdm(total=n, desc="logit lens", unit="feature", disable=not progress or n <= rows) as bar:
        for s in range(0, n, rows):
            chunk = ids[s:s + rows]
            e = s + chunk.numel()
            logits = _blocked_logits(chunk, dirs, W, pad=pad)
            if with_sort:
                t_ids = torch.empty(chunk.numel(), k, dtype=torch.long, device=device)
                b_ids = torch.empty_like(t_ids)
                for a in range(0, chunk.numel(), sort_rows):
                    b = a + sort_rows
                    order = torch.sort(logits[a:b], dim=1, descending=True, stable=True).indices
                    t_ids[a:b], b_ids[a:b] = order[:, :k], order[:, V - k:].flip(1)
                    _enrichment_from_order(order, dev_masks, dev_members, enrich[s + a:s + a + order.shape[0]])
                    del order
            else:
                t_ids = logits.topk(k, dim=1).indices
                b_ids = logits.topk(k, dim=1, largest=False).indices
            top_ids[s:e], top_vals[s:e] = t_ids.cpu(), logits.gather(1, t_ids).cpu()
            bot_ids[s:e], bot_vals[s:e] = b_ids.cpu(), logits.gather(1, b_ids).cpu()
            moments[s:e] = _moments_(logits)  # overwrites logits
            del logits
            bar.update(e - s)
    return LogitLensResult(
        feature_ids=ids.tolist(), top_ids=top_ids, top_values=top_vals, bottom_ids=bot_ids,
        bottom_values=bot_vals, moments=moments, enrichment=enrich, set_names=set_names, set_sizes=set_sizes,
        info=info, strings=strings,
    )
