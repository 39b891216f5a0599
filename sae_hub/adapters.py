"""One adapter per kind of model, detected once: everything model-facing in sae-hub goes through it.

:func:`adapt` recognises four kinds of model and returns a :class:`ModelAdapter` that provides exactly the
operations splicing, training and analysis need, so that no other code branches on the kind:

* ``hooks(pairs)`` — a context manager attaching ``(site, fn)`` pairs, where ``site`` is a TransformerLens hook
  name or a :class:`~sae_hub.splicing.Site`; ``fn(act, hook)`` sees TransformerLens's activation at that hook and
  may return a replacement. Exactly these hooks are removed on exit, also when the block raised; hooks the user
  attached are left alone.
* ``check(site, width, head)`` — place a site before running, so a hook that cannot be placed or an SAE of the
  wrong width fails before any forward pass;
* ``to_tokens(text, prepend_bos)``, ``forward(tokens)`` (logits; a hook may end it early with
  :class:`StopForward`), ``device``;
* ``unembed()`` (``W_U [d_model, d_vocab]``, ``b_U``), ``final_norm(resid)``, ``final_norm_info()`` (the kind of
  the final norm and the scale it multiplies by now), ``resid_map(kind, layer)`` (``W_O`` / ``W_out`` as
  ``[d_site, d_model]``) and ``logit_softcap`` for the logit lens;
* ``tokenizer``, ``n_ctx``, ``model_name`` and ``default_prepend_bos`` for packing text (training, evaluation,
  feature statistics).

Kinds:

* TransformerLens 4 ``TransformerBridge`` (in compatibility mode) and TransformerLens 3 ``HookedTransformer``
  (anything with a ``hook_dict`` of ``HookPoint``\\ s): :class:`TransformerLensAdapter`. Hooks go straight onto
  the HookPoints under a private context level (``HookPoint.add_hook(..., level=L)`` / ``remove_hooks(level=L)``;
  the bridge's ``hooks()`` may call a hook once per alias name, which would apply a replacement twice).
* A ``transformers`` ``PreTrainedModel`` (+ a tokenizer when text is given): :class:`HuggingFaceAdapter`. Sites
  are placed by :mod:`sae_hub.sites`; hooks are torch forward (pre-)hooks whose handles are kept and removed.
* An ``nnsight`` ``LanguageModel`` (or any nnsight ``Envoy`` over a ``transformers`` model):
  :class:`NNsightAdapter`, a :class:`HuggingFaceAdapter` over the torch module nnsight wraps (``lm._module``;
  ``lm._model`` in nnsight < 0.5) with ``lm.tokenizer``. Chosen because it is faithful (the same module objects
  run inside ``lm.trace(...)`` and ``lm.generate(...)``, so a splice is in effect there too) and the torch hook
  handles are removable; going through nnsight's tracing would need its interventions to be re-entered per
  forward and cannot be cut short by an exception.

Nothing here imports ``transformer_lens``, ``transformers`` or ``nnsight``: the kind is recognised from the
object's classes.
"""

from __future__ import annotations

import difflib
import itertools
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from sae_hub.errors import ConfigError, ShapeMismatchError
from sae_hub.sites import (
    DEFAULT_PROCESSING,
    HFSite,
    HookSiteError,
    Processing,
    compute_dtype,
    family_of_model,
    resolve_hf_site,
)

__all__ = [
    "HuggingFaceAdapter",
    "ModelAdapter",
    "NNsightAdapter",
    "StopForward",
    "TransformerLensAdapter",
    "adapt",
    "model_tokenizer",
]

HookFn = Callable[..., Any]
SiteLike = Any  # str | Site


class StopForward(Exception):
    """Raised from a hook to end a forward pass once every needed activation has been read.

    The caller suppresses it around the forward; raising is the one way to cut a pass short that works on every
    model kind, and it costs only the layers up to the deepest hook.
    """


def _site_parts(site: SiteLike) -> tuple[str, int | None, str | None, Processing]:
    """``(hook_name, head, hf_hook_name, processing)`` of a hook name or a Site."""
    if isinstance(site, str):
        return site, None, None, DEFAULT_PROCESSING
    return (str(site.hook_name), site.head, getattr(site, "hf_hook_name", None),
            getattr(site, "processing", None) or DEFAULT_PROCESSING)


def _check_width(hook_name: str, width: int | None, d_in: int, head: int | None, heads: tuple[int, int] | None,
                 model_cls: str) -> None:
    """ShapeMismatchError naming both numbers when an SAE of width ``d_in`` cannot read a site of ``width``."""
    if width is None:
        return
    fits = d_in == width or (head is not None and heads is not None and d_in == heads[1])
    if not fits:
        what = f"d_head={heads[1]} per head, " if heads is not None else ""
        raise ShapeMismatchError(
            f"the SAE's d_in={d_in} does not fit {hook_name!r} in {model_cls}, which is {what}{width} wide",
            field="d_in",
        )


class ModelAdapter:
    """The operations sae-hub needs from a model (see the module docstring); subclasses implement them."""

    kind: str = "?"

    def __init__(self, model: Any) -> None:
        self.model = model

    # -- placing and hooking
    def check(self, site: SiteLike, d_in: int | None = None) -> None:
        """Raise now (ConfigError/HookSiteError/ShapeMismatchError) if ``site`` cannot be hooked or read by an SAE
        of width ``d_in``."""
        raise NotImplementedError

    @contextmanager
    def hooks(self, pairs: Sequence[tuple[SiteLike, HookFn]]) -> Iterator[None]:
        raise NotImplementedError
        yield

    # -- running
    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab]`` of ``tokens`` (moved to the model's device)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where input tokens go: the device of the first parameter (CPU for a model without any)."""
        try:
            return next(self.torch_module.parameters()).device
        except (StopIteration, AttributeError, TypeError):
            return torch.device(getattr(getattr(self.model, "cfg", None), "device", None) or "cpu")

    @property
    def torch_module(self) -> torch.nn.Module:
        return self.model

    # -- text
    #: the Hugging Face tokenizer used for text (None: token ids only)
    tokenizer: Any = None

    @property
    def n_ctx(self) -> int | None:
        """The longest context the model takes (None when it does not say)."""
        return None

    @property
    def model_name(self) -> str | None:
        """The model's name or path, recorded in what is trained from it (None when it has none)."""
        return None

    @property
    def default_prepend_bos(self) -> bool:
        """Whether text gets a BOS token first by default (TransformerLens's per-model default)."""
        return True

    # -- logit lens
    def unembed(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W_U [d_model, d_vocab], b_U [d_vocab] or None)``."""
        raise NotImplementedError

    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's final normalisation applied to residual-stream vectors ``[..., d_model]``."""
        raise NotImplementedError

    def final_norm_info(self) -> tuple[str | None, torch.Tensor | None, bool]:
        """``(kind, gamma, processed)``: ``"LayerNorm"`` / ``"RMSNorm"`` / None (no final norm), the per-dimension
        scale it multiplies by now (``1 + w`` for offset RMSNorms), and whether TransformerLens weight processing
        already folded it into ``W_U`` (and centred ``W_U`` over ``d_model`` for a LayerNorm)."""
        raise NotImplementedError

    def resid_map(self, kind: str, layer: int) -> torch.Tensor:
        """The weight through which a non-residual hook of block ``layer`` writes into the residual stream, as
        ``[d_site, d_model]``: ``kind="W_O"`` for ``attn.hook_z`` (heads flattened, head-major), ``"W_out"`` for
        ``mlp.hook_post``."""
        raise NotImplementedError

    @property
    def logit_softcap(self) -> float | None:
        """The final logit soft-capping constant (Gemma 2: ``cap * tanh(logits / cap)``), None when there is
        none. The logit lens is linear and does not apply it (it is monotone per token, so rankings hold)."""
        return None


# ------------------------------------------------------------------------------------------- TransformerLens

# Context levels for our hooks: far above the small integers TransformerLens's own ``hooks()`` contexts use,
# and unique per block, so ``remove_hooks(level=...)`` removes ours and nothing else.
_LEVELS = itertools.count(1 << 40)


class TransformerLensAdapter(ModelAdapter):
    """TransformerLens 4 ``TransformerBridge`` (compatibility mode) or TransformerLens 3 ``HookedTransformer``.

    Only the API both share is used: ``model.hook_dict`` (name -> HookPoint; on the bridge a property that also
    lists alias names, so it is fetched once per block), ``HookPoint.add_hook(fn, dir="fwd", level=L)`` /
    ``remove_hooks("fwd", level=L)``, ``model.check_hooks_to_add`` (when present: a gated hook point such as
    ``hook_mlp_in`` is refused instead of silently never firing), ``model.to_tokens`` and ``model(tokens)``.
    """

    kind = "transformer_lens"

    def _hook_point(self, hook_dict: Any, name: str) -> Any:
        hp = hook_dict.get(name)
        if hp is None:
            close = difflib.get_close_matches(name, list(hook_dict), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else (
                f"; no close match among its {len(hook_dict)} hook points (see model.hook_dict)"
            )
            raise ConfigError(f"hook {name!r} is not a hook point of this model{hint}", field="hook_name")
        return hp

    def _attach(self, hp: Any, name: str, fn: HookFn, level: int) -> None:
        check = getattr(self.model, "check_hooks_to_add", None)
        if check is not None:
            try:
                check(hp, name, fn, dir="fwd")
            except (ValueError, AssertionError) as e:  # TransformerLens 4 raises ValueError, 3 AssertionError
                raise ConfigError(f"cannot hook {name!r}: {e}", field="hook_name") from e
            except TypeError:
                pass  # a wrapper model with its own, differently shaped check: nothing we can ask it
        hp.add_hook(fn, dir="fwd", level=level)

    def check(self, site: SiteLike, d_in: int | None = None) -> None:
        self._hook_point(self.model.hook_dict, _site_parts(site)[0])

    @contextmanager
    def hooks(self, pairs: Sequence[tuple[SiteLike, HookFn]]) -> Iterator[None]:
        level = next(_LEVELS)
        hook_dict = self.model.hook_dict
        points = [(name, self._hook_point(hook_dict, name), fn) for name, fn in
                  ((_site_parts(s)[0], fn) for s, fn in pairs)]
        touched: list[Any] = []
        try:
            for name, hp, fn in points:
                touched.append(hp)
                self._attach(hp, name, fn, level)
            yield
        finally:
            for hp in {id(h): h for h in touched}.values():
                hp.remove_hooks("fwd", level=level)

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool | None = None) -> torch.Tensor:
        kwargs = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
        return self.model.to_tokens(text if isinstance(text, str) else list(text), **kwargs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens.to(self.device))

    @property
    def tokenizer(self) -> Any:
        return getattr(self.model, "tokenizer", None)

    @property
    def n_ctx(self) -> int | None:
        n = getattr(getattr(self.model, "cfg", None), "n_ctx", None)
        return n if isinstance(n, int) else None

    @property
    def model_name(self) -> str | None:
        name = getattr(getattr(self.model, "cfg", None), "model_name", None)
        return str(name) if name is not None else None

    @property
    def default_prepend_bos(self) -> bool:
        return bool(getattr(getattr(self.model, "cfg", None), "default_prepend_bos", True))

    def unembed(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.W_U, getattr(self.model, "b_U", None)

    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        return self.model.ln_final(resid)

    def final_norm_info(self) -> tuple[str | None, torch.Tensor | None, bool]:
        """``processed`` is True when TransformerLens weight processing ran (``_weights_processed`` on the
        bridge, or a ``*Pre`` normalisation type on ``HookedTransformer``)."""
        model = self.model
        cfg = getattr(model, "cfg", None)
        norm_type = str(getattr(cfg, "normalization_type", None) or "")
        processed = bool(getattr(model, "_weights_processed", False)) or norm_type.endswith("Pre")
        ln = getattr(model, "ln_final", None)
        if ln is None:
            return None, None, processed
        rms = getattr(ln, "uses_rms_norm", None)
        if rms is None:
            rms = norm_type.startswith("RMS")
        kind = "RMSNorm" if rms else ("LayerNorm" if norm_type.startswith("LN") or hasattr(ln, "weight")
                                      or hasattr(ln, "w") else None)
        if hasattr(ln, "uses_weight_offset"):  # TransformerBridge NormalizationBridge
            w = getattr(ln, "weight", None)
            if isinstance(w, torch.Tensor) and ln.uses_weight_offset:
                w = 1.0 + w
        else:  # HookedTransformer LayerNorm / RMSNorm (w already includes any offset); *Pre has none
            w = getattr(ln, "w", None)
        gamma = w.detach() if isinstance(w, torch.Tensor) else None
        return kind, gamma, processed

    def resid_map(self, kind: str, layer: int) -> torch.Tensor:
        block = self.model.blocks[layer]
        if kind == "W_O":
            W_O = block.attn.W_O.detach()  # [n_heads, d_head, d_model]
            return W_O.reshape(-1, W_O.shape[-1])
        return block.mlp.W_out.detach()  # [d_mlp, d_model]

    @property
    def logit_softcap(self) -> float | None:
        cap = getattr(getattr(self.model, "cfg", None), "output_logits_soft_cap", None)
        return float(cap) if isinstance(cap, (int, float)) and cap > 0 else None


# ------------------------------------------------------------------------------------------ Hugging Face

# What our own hooks wrote, so that a later hook of ours on the same site reads TransformerLens's tensor as the
# earlier one left it (a chain of SAEs on one hook, evaluate's save/splice/restore) instead of re-deriving it
# from the written tensor (which would, e.g., re-centre it): id(hf tensor) -> (weakref, site key, tl tensor).
_WRITTEN: dict[int, tuple[weakref.ref[torch.Tensor], tuple[Any, ...], torch.Tensor]] = {}


def _remember(hf: torch.Tensor, key: tuple[Any, ...], tl: torch.Tensor) -> None:
    ident = id(hf)

    def forget(_ref: weakref.ref[torch.Tensor]) -> None:
        _WRITTEN.pop(ident, None)

    _WRITTEN[ident] = (weakref.ref(hf, forget), key, tl)


# Per model, per forward pass: the mean (over d_model, [batch, pos, 1]) that TransformerLens's residual stream has
# acquired from tensors our hooks wrote, for centred (LayerNorm-family) sites. TransformerLens's residual stream
# has mean 0 until something with a non-zero mean is written (centred weights); our reads centre the Hugging Face
# tensor, so this mean is added back to every later residual-stream read. Reset when the model's forward starts.
_STREAM_MEAN: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, torch.Tensor | None]] = (
    weakref.WeakKeyDictionary())


def _tl_view(site: HFSite, key: tuple[Any, ...], t: torch.Tensor, module_input: torch.Tensor | None,
             state: dict[str, torch.Tensor | None]) -> torch.Tensor:
    hit = _WRITTEN.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == key:
        return hit[2]
    tl = site.to_tl(t, module_input)
    mean = state.get("mean")
    if site.center and site.stream and mean is not None and _broadcasts(mean.shape, tl.shape):
        tl = tl + mean.to(tl.dtype)
    return tl


def _broadcasts(small: torch.Size, big: torch.Size) -> bool:
    """Whether a tracked mean of shape ``small`` broadcasts onto ``big`` without growing it. ``hook_pos_embed`` is
    ``[1, pos, d_model]`` in Hugging Face models (one row for the whole batch), so a mean it contributes must
    still reach ``[batch, pos, d_model]`` reads; a mean of another batch or length (a different forward) must not.
    """
    try:
        return tuple(torch.broadcast_shapes(small, big)) == tuple(big)
    except RuntimeError:
        return False


def _track_write(site: HFSite, new: torch.Tensor, before: torch.Tensor, state: dict[str, torch.Tensor | None]
                 ) -> None:
    """Update the tracked residual-stream mean after ``new`` replaced ``before`` (TransformerLens's views), in
    :func:`~sae_hub.sites.compute_dtype` (float64 for a float64 model: a float32 mean put ~1e-9 on later reads)."""
    if not site.center:
        return
    work = compute_dtype(torch.promote_types(new.dtype, before.dtype))
    new_mean = new.detach().to(work).mean(-1, keepdim=True)
    if site.stream:
        state["mean"] = new_mean
        return
    delta = new_mean - before.detach().to(work).mean(-1, keepdim=True)
    mean = state.get("mean")
    if mean is None:
        state["mean"] = delta
    elif _broadcasts(mean.shape, delta.shape) or _broadcasts(delta.shape, mean.shape):
        state["mean"] = mean.to(work) + delta  # e.g. hook_pos_embed's [1, pos, 1] with a [batch, pos, 1] write
    else:
        state["mean"] = delta


def _to_hf(site: HFSite, new: torch.Tensor, t: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """The tensor to write at ``site`` for TransformerLens tensor ``new``; ``t`` is the tensor there and ``act``
    TransformerLens's view of it.

    A residual-stream site (centring only) writes ``t + (new - act)`` in
    :func:`~sae_hub.sites.compute_dtype` (float32 for half precision, float64 for float64): the same map as
    :meth:`HFSite.from_tl` (``act`` is ``t`` minus its mean plus a per-token constant, so both put back the mean
    the read removed), but an unchanged tensor comes back bit for bit. ``from_tl`` re-adds the mean to a centred
    tensor that was rounded to the model's dtype: in bf16 that alone moved a GPT-2's logits by 0.02 under a splice
    with the error term, where nothing should change.
    """
    if site.center and site.heads is None and site.value_bias is None and site.norm is None \
            and new.shape == act.shape:
        work = compute_dtype(t.dtype)
        delta = new.to(device=t.device, dtype=work) - act.to(device=t.device, dtype=work)
        return (t.to(work) + delta).to(t.dtype)
    return site.from_tl(new, t, act)


class HuggingFaceAdapter(ModelAdapter):
    """A ``transformers`` ``PreTrainedModel`` (``*ForCausalLM``), with ``tokenizer`` for text input.

    Sites come from :func:`sae_hub.sites.resolve_hf_site` (TransformerLens hook name -> module, side, transform;
    ``hf_hook_name`` wins). A hook function sees TransformerLens's tensor there and what it returns is mapped
    back into the model. The forward pass is ``model(input_ids=tokens, use_cache=False).logits``.
    """

    kind = "transformers"

    def __init__(self, model: Any, tokenizer: Any = None) -> None:
        super().__init__(model)
        self.tokenizer = tokenizer
        self._sites: dict[tuple[str, str | None, Processing], HFSite] = {}

    @property
    def hf_model(self) -> Any:
        return self.model

    @property
    def torch_module(self) -> torch.nn.Module:
        return self.hf_model

    def site(self, site: SiteLike) -> HFSite:
        """The bound :class:`~sae_hub.sites.HFSite` of a hook name or Site (cached per adapter)."""
        name, _, hf_name, processing = _site_parts(site)
        key = (name, hf_name, processing)
        found = self._sites.get(key)
        if found is None:
            found = self._sites[key] = resolve_hf_site(self.hf_model, name, hf_hook_name=hf_name,
                                                       processing=processing)
        return found

    def check(self, site: SiteLike, d_in: int | None = None) -> None:
        hf = self.site(site)
        if d_in is not None:
            _check_width(hf.hook_name, hf.width, d_in, _site_parts(site)[1], hf.heads, type(self.hf_model).__name__)

    @contextmanager
    def hooks(self, pairs: Sequence[tuple[SiteLike, HookFn]]) -> Iterator[None]:
        bound = [(self.site(s), s, fn) for s, fn in pairs]  # place everything before attaching anything
        handles: list[Any] = []
        try:
            if any(hf.center for hf, _, _ in bound):
                state = _STREAM_MEAN.setdefault(self.hf_model, {"mean": None})

                def reset(module: torch.nn.Module, args: Any) -> None:
                    state["mean"] = None

                handles.append(self.hf_model.register_forward_pre_hook(reset, prepend=True))
            for hf, s, fn in bound:
                handles.append(self._register(hf, s, fn))
            yield
        finally:
            for h in handles:
                h.remove()

    def _register(self, hf: HFSite, site: SiteLike, fn: HookFn) -> Any:
        hook_arg = site if not isinstance(site, str) else hf
        key = (hf.module_path, hf.side, hf.center, hf.heads, hf.value_bias is not None, hf.norm is not None)
        model_cls = type(self.hf_model).__name__
        fresh: dict[str, torch.Tensor | None] = {"mean": None}
        state = _STREAM_MEAN.setdefault(self.hf_model, fresh) if hf.center else fresh

        if hf.side == "output":
            def fwd_hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
                is_tuple = isinstance(output, tuple)
                t = output[0] if is_tuple else output
                if not isinstance(t, torch.Tensor):
                    raise HookSiteError(f"{hf.module_path} ({model_cls}) returned {type(output).__name__}, not a "
                                        f"tensor, so {hf.hook_name!r} cannot be read there", field="hook_name")
                act = _tl_view(hf, key, t, args[0] if args else None, state)
                new = fn(act, hook_arg)
                if new is None:
                    return None
                new_hf = _to_hf(hf, new, t, act)
                _track_write(hf, new, act, state)
                _remember(new_hf, key, new)
                return (new_hf, *output[1:]) if is_tuple else new_hf

            return hf.module.register_forward_hook(fwd_hook)

        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                t = args[0]
            else:
                t = kwargs.get("hidden_states", kwargs.get("input"))
            if not isinstance(t, torch.Tensor):
                raise HookSiteError(f"{hf.module_path} ({model_cls}) was called without a tensor first argument, "
                                    f"so {hf.hook_name!r} cannot be read there", field="hook_name")
            act = _tl_view(hf, key, t, None, state)
            new = fn(act, hook_arg)
            if new is None:
                return None
            new_hf = _to_hf(hf, new, t, act)
            _track_write(hf, new, act, state)
            _remember(new_hf, key, new)
            if args:
                return (new_hf, *args[1:]), kwargs
            name = "hidden_states" if "hidden_states" in kwargs else "input"
            return args, {**kwargs, name: new_hf}

        return hf.module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool | None = None) -> torch.Tensor:
        """Token ids ``[batch, pos]`` as TransformerLens 4's ``to_tokens`` makes them: BOS first unless
        ``prepend_bos=False`` (whether or not the tokenizer adds one itself; ``None``: the family's default, as in
        TransformerLens, which is no BOS for GPT-NeoX and Qwen), right padding."""
        tok = self.tokenizer
        if tok is None:
            raise ConfigError(
                f"text was given for a {type(self.hf_model).__name__}, which has no tokenizer: pass tokenizer= "
                "(e.g. AutoTokenizer.from_pretrained(the same path)) or token ids",
                field="tokenizer",
            )
        texts = [text] if isinstance(text, str) else list(text)
        rows = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        bos = getattr(tok, "bos_token_id", None)
        if prepend_bos is None:
            try:
                prepend_bos = family_of_model(self.hf_model).default_prepend_bos
            except HookSiteError:
                prepend_bos = True
        if prepend_bos and bos is not None:
            rows = [[bos, *r] for r in rows]
        pad = getattr(tok, "pad_token_id", None)
        pad = pad if pad is not None else (getattr(tok, "eos_token_id", None) or 0)
        width = max((len(r) for r in rows), default=0)
        out = torch.full((len(rows), width), int(pad), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf_model(input_ids=tokens.to(self.device), use_cache=False).logits

    @property
    def _config(self) -> Any:
        return getattr(self.hf_model, "config", None)

    def _text_config(self) -> Any:
        cfg = self._config
        get = getattr(cfg, "get_text_config", None)
        return get() if callable(get) else cfg

    @property
    def n_ctx(self) -> int | None:
        cfg = self._text_config()
        for name in ("n_positions", "max_position_embeddings"):
            n = getattr(cfg, name, None)
            if isinstance(n, int) and n > 0:
                return n
        return None

    @property
    def model_name(self) -> str | None:
        name = getattr(self._config, "_name_or_path", None) or getattr(self._config, "name_or_path", None)
        return str(name) if name else None

    @property
    def default_prepend_bos(self) -> bool:
        try:
            return family_of_model(self.hf_model).default_prepend_bos
        except HookSiteError:
            return True

    def unembed(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        head = self.hf_model.get_output_embeddings()
        return head.weight.T, getattr(head, "bias", None)

    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        return self.hf_model.get_submodule(family_of_model(self.hf_model).final_norm)(resid)

    def final_norm_info(self) -> tuple[str | None, torch.Tensor | None, bool]:
        """From the family's final norm module: raw Hugging Face weights are never processed."""
        family = family_of_model(self.hf_model)
        ln = self.hf_model.get_submodule(family.final_norm)
        w = getattr(ln, "weight", None)
        gamma = w.detach() if isinstance(w, torch.Tensor) else None
        if gamma is not None and family.norm == "rms_offset":
            gamma = 1.0 + gamma.to(compute_dtype(gamma.dtype))  # Gemma's RMSNorm multiplies by (1 + weight)
        return ("LayerNorm" if family.norm == "ln" else "RMSNorm"), gamma, False

    def resid_map(self, kind: str, layer: int) -> torch.Tensor:
        hook = f"blocks.{layer}.attn.hook_z" if kind == "W_O" else f"blocks.{layer}.mlp.hook_post"
        site = self.site(hook)
        w = getattr(site.module, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 2:
            raise HookSiteError(f"{site.module_path} of {type(self.hf_model).__name__} has no 2-D weight to map "
                                f"{hook!r} into the residual stream", field="hook_name")
        # torch Linear stores [out, in]; GPT-2's Conv1D stores [in, out]
        return (w if type(site.module).__name__ == "Conv1D" else w.T).detach()

    @property
    def logit_softcap(self) -> float | None:
        cap = getattr(self._text_config(), "final_logit_softcapping", None)
        return float(cap) if isinstance(cap, (int, float)) and cap > 0 else None


class NNsightAdapter(HuggingFaceAdapter):
    """An ``nnsight`` ``LanguageModel``: a :class:`HuggingFaceAdapter` over the torch module it wraps."""

    kind = "nnsight"

    def __init__(self, model: Any, tokenizer: Any = None) -> None:
        inner = None
        for attr in ("_module", "_model"):  # nnsight >= 0.5 / older
            try:
                inner = object.__getattribute__(model, attr)
                break
            except AttributeError:
                continue
        if not isinstance(inner, torch.nn.Module):
            raise ConfigError(f"cannot find the torch module inside {type(model).__name__} (looked for ._module "
                              "and ._model)", field="model")
        if tokenizer is None:
            try:
                tokenizer = object.__getattribute__(model, "tokenizer")
            except AttributeError:
                tokenizer = None
        super().__init__(inner, tokenizer)
        self.model = model
        self._inner = inner

    @property
    def hf_model(self) -> Any:
        return self._inner


# ------------------------------------------------------------------------------------------------- detection


def _class_names(obj: Any) -> list[tuple[str, str]]:
    return [(c.__module__, c.__name__) for c in type(obj).__mro__]


def adapt(model: Any, tokenizer: Any = None) -> ModelAdapter:
    """The :class:`ModelAdapter` for ``model`` (returned as is when it already is one).

    ``tokenizer`` is used by a ``transformers`` model for text input (an nnsight model brings its own). An object
    of no known kind is a :class:`~sae_hub.errors.ConfigError` naming its class and the kinds accepted.
    """
    if isinstance(model, ModelAdapter):
        if tokenizer is not None and isinstance(model, HuggingFaceAdapter):
            model.tokenizer = tokenizer
        return model
    names = _class_names(model)
    if any(mod.startswith("nnsight") for mod, _ in names):
        return NNsightAdapter(model, tokenizer)
    if any(mod.startswith("transformers") and n == "PreTrainedModel" for mod, n in names):
        return HuggingFaceAdapter(model, tokenizer)
    if hasattr(type(model), "hook_dict") or "hook_dict" in getattr(model, "__dict__", {}):
        return TransformerLensAdapter(model)
    raise ConfigError(
        f"cannot run SAEs on a {type(model).__name__}: expected a TransformerLens HookedTransformer / "
        "TransformerBridge, a transformers PreTrainedModel or an nnsight LanguageModel",
        field="model",
    )


def model_tokenizer(model: Any) -> Any:
    """The tokenizer of a model of any kind (None if it has none); for an object that is no model,
    its ``tokenizer`` attribute (a stand-in that only carries a tokenizer)."""
    try:
        return adapt(model).tokenizer
    except ConfigError:
        return getattr(model, "tokenizer", None)
