"""Splicing a transcoder set, a cross-layer transcoder (CLT) or a crosscoder into a model: the replacement model.

:func:`splice_replacement` is :func:`sae_hub.splicing.splice` for a :class:`~sae_hub.multilayer.MultiLayerDictionary`:
within the block, every covered layer's output activation (``cfg.hook_names_out[t]``, the MLP output) is replaced,
all at once, by the dictionary's reconstruction. :func:`run_with_dictionary` is what
:func:`sae_hub.splicing.run_with_saes` does when handed a dictionary: one forward pass, per-layer features.

Semantics (one forward pass; ``x_i`` is the activation at ``hook_names_in[i]``, the MLP input, of THIS pass):

* Features of source layer ``i`` are encoded from ``x_i`` when that hook fires, i.e. from the MLP input of the
  replacement model itself: the outputs already replaced at layers before ``i`` have changed it. An edit
  (``edits[layer]``) then maps them to the features that are decoded.
* The output at target layer ``t`` is ``b_dec.t + sum over every source i <= t that writes to t of
  f_i @ W_dec[i -> t]`` (+ ``x_t @ W_skip.t.T`` when the dictionary has a skip connection). So for a CLT the
  features of EVERY earlier source must be known before layer ``t``'s MLP output is replaced: they were encoded
  at their own layer's MLP input earlier in the same pass (the input hook of a layer fires before its output
  hook, and an output hook of layer ``t`` that fires before the input hooks of all its sources is a ConfigError).
  This is why a CLT cannot be spliced as a list of per-layer SAEs: layer ``t``'s output needs features that only
  earlier layers' inputs provide.
* Error terms, ``errors=`` (``use_error_term=True`` is ``errors="live"``):

  - ``"live"``: the output at ``t`` becomes ``recon_t(edited features) + error_t`` with
    ``error_t = (y_t - recon_t(unedited features)).detach()``, where ``y_t`` is the model's own MLP output at
    ``t`` in this pass. Without edits the pass is the unmodified pass (every written tensor equals the model's
    own, up to float rounding: logits unchanged), so ``error_t`` is exactly circuit-tracer's error vector, "MLP
    output minus reconstruction on the clean forward pass" (``ReplacementModel.setup_attribution``:
    ``mlp_out_cache - reconstruction``), and the features are circuit-tracer's activation matrix. With edits,
    layers after the first edited one see a changed input; the output there is the model's own MLP output on
    that input plus the decoded change of the features (``sum over i of (f_edit_i - f_i) @ W_dec[i -> t]``),
    which is exactly what circuit-tracer's unconstrained ``feature_intervention`` computes. The error's value
    follows the input, but autograd does not see that dependence (it is detached), so gradients of a live-error
    model are not its derivatives.
  - ``"frozen"``: the attribution linearisation. On entering the block, one clean pass of the unmodified model on
    ``clean_input`` records ``x_i`` and ``y_t``; ``error_t = (y_t - recon_t(f(x_t)))`` from that pass is then a
    CONSTANT (detached) for every pass in the block, while the features stay live (encoded from this pass's
    inputs, edited, decoded). The output at ``t`` is ``recon_t(features of this pass) + error_t``: on
    ``clean_input`` without edits it equals the clean MLP output (logits unchanged), and the model is a
    function of the features alone along the MLP paths, so ``d logit / d feature`` from autograd IS the
    derivative of the frozen-error model (a finite difference of it agrees). A pass on an input of another
    shape is a ShapeMismatchError: the errors belong to ``clean_input``.
* The features stay on the autograd graph (``handle.features``), as with :func:`~sae_hub.splicing.splice`, so an
  attribution can differentiate against them; error terms are detached.

Crosscoders (:class:`~sae_hub.multilayer.CrossCoder`: one latent code ``s = sum over sites h of x_h @ W_enc.h +
b_enc.h`` read from every site, decoded to each). The causal rule: in one forward pass the sites come at
different depths and the code needs ALL of them, so no site but the last could be replaced from this pass's own
code. The rule chosen instead is the acausal crosscoder's "encode from a clean run, then patch": entering the
block runs the unmodified model once on ``clean_input`` (cut after the deepest site), encodes the code from the
sites of that run, and every pass in the block writes, at EACH site ``h``, ``f_h @ W_dec.h + b_dec.h`` from those
clean features (after ``edits[h]``), plus with ``use_error_term`` the constant ``x_h - recon_h(clean features)``
of the clean run (so without edits every site gets its clean activation back: logits unchanged; with an edit the
site gets its clean activation plus the decoded change). What a site would have held in the patched pass is
overwritten, also when an earlier site's patch changed it: the patch is the reconstruction, site by site, as the
crosscoder defines it. Features and errors are keyed by site position ``h``; ``handle.features[h]`` is a fresh
leaf per pass (requires grad when grad is enabled), so ``d logit / d feature`` at each site is available.

Every model kind :func:`sae_hub.adapters.adapt` accepts works (TransformerLens 4 bridge / 3 ``HookedTransformer``,
``transformers``, nnsight): sites are the dictionary's TransformerLens hook names, placed by the adapter, checked
(width and placement) before anything is attached, and the hooks are removed on exit even when the body raised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sae_hub.errors import ConfigError, ShapeMismatchError

if TYPE_CHECKING:
    from sae_hub.adapters import ModelAdapter
    from sae_hub.multilayer import CrossCoder, MultiLayerDictionary

__all__ = ["ERROR_MODES", "ReplacementHandle", "run_with_dictionary", "splice_replacement"]

FeatureEdit = Callable[[torch.Tensor], torch.Tensor | None]
#: ``errors=`` of :func:`splice_replacement`: no error term, one computed in each pass, or one frozen from a clean pass
ERROR_MODES = ("none", "live", "frozen")
TokensOrText = str | Sequence[str] | torch.Tensor


@dataclass
class ReplacementHandle:
    """What :func:`splice_replacement` yields.

    ``features[key]`` is the ``[..., d_sae]`` tensor decoded on the last forward pass (after any edit; on the
    autograd graph, not a copy). ``errors[key]`` is the error term added there (detached): the last pass's with
    ``error_mode == "live"``, the clean pass's (fixed for the whole block) with ``"frozen"`` and for a crosscoder.
    ``edits[key]``, if set, is called with a copy of the clean features and returns the features to decode
    instead (or ``None`` after editing the copy in place); entries can be changed between passes. ``key`` is the
    model layer for a transcoder set / CLT and the site position ``h`` (``cfg.hook_names[h]``) for a crosscoder.
    """

    dictionary: MultiLayerDictionary | CrossCoder
    use_error_term: bool = False
    error_mode: str = "none"
    features: dict[int, torch.Tensor] = field(default_factory=dict)
    errors: dict[int, torch.Tensor] = field(default_factory=dict)
    edits: dict[int, FeatureEdit] = field(default_factory=dict)


def _check_dictionary(dictionary: Any) -> MultiLayerDictionary | CrossCoder:
    from sae_hub.multilayer import CrossCoder, MultiLayerDictionary

    if isinstance(dictionary, CrossCoder):
        _crosscoder_sites(dictionary)
        return dictionary
    if not isinstance(dictionary, MultiLayerDictionary):
        raise ConfigError(f"expected a sae_hub.MultiLayerDictionary or sae_hub.CrossCoder, got "
                          f"{type(dictionary).__name__}", field="dictionary")
    cfg = dictionary.cfg
    for name in ("hook_names_in", "hook_names_out"):
        hooks = getattr(cfg, name) or [None] * cfg.n_layers
        unknown = [layer for layer, h in zip(cfg.layers, hooks, strict=True) if not h]
        if unknown:
            raise ConfigError(
                f"the dictionary's {name} is unknown for layers {unknown}, so there is no place in the model to "
                f"{'read' if name == 'hook_names_in' else 'write'} them; set cfg.{name} (full TransformerLens hook "
                "names, e.g. blocks.L.ln2.hook_normalized -> blocks.L.hook_mlp_out)", field=name)
    return dictionary


def _crosscoder_sites(cc: CrossCoder) -> list[str]:
    """The crosscoder's sites in one model: every hook known, all distinct, one model, ``d_out == d_in`` (a site
    is read and written)."""
    cfg = cc.cfg
    hooks = cfg.hook_names or [None] * cfg.n_sites
    if any(not h for h in hooks):
        raise ConfigError(f"the crosscoder's hook_names {hooks} leave sites unknown, so there is no place in the "
                          "model to read and write them; set cfg.hook_names (full TransformerLens hook names)",
                          field="hook_names")
    if len(set(hooks)) != len(hooks):
        raise ConfigError(f"the crosscoder's sites {hooks} repeat a hook: its sites lie in different models (model "
                          "diffing), which one model cannot splice", field="hook_names")
    models = {m for m in cfg.model_names or [] if m is not None}
    if len(models) > 1:
        raise ConfigError(f"the crosscoder reads several models {sorted(models)}; splicing runs one model",
                          field="model_names")
    if cfg.d_out != cfg.d_in:
        raise ConfigError(f"the crosscoder decodes to d_out={cfg.d_out} but reads d_in={cfg.d_in}: its "
                          "reconstruction cannot replace the site it read", field="d_out")
    return [str(h) for h in hooks]


def _error_mode(use_error_term: bool, errors: str | None) -> str:
    """``errors`` if given (checked against ``use_error_term``), else what ``use_error_term`` means."""
    if errors is None:
        return "live" if use_error_term else "none"
    if errors not in ERROR_MODES:
        raise ConfigError(f"errors must be one of {', '.join(map(repr, ERROR_MODES))}, got {errors!r}",
                          field="errors")
    if use_error_term and errors == "none":
        raise ConfigError("use_error_term=True contradicts errors='none'", field="errors")
    return errors


def _sites(d: MultiLayerDictionary) -> tuple[list[str], list[str]]:
    """The input and output hook names by position (plain names: the adapter places them; MLP activations are
    flat ``[..., d]``, so none of :class:`~sae_hub.splicing.Site`'s per-head handling applies)."""
    cfg = d.cfg
    return [str(h) for h in cfg.hook_names_in or []], [str(h) for h in cfg.hook_names_out or []]


def _read(act: torch.Tensor, hook_name: str, width: int, device: torch.device) -> torch.Tensor:
    if act.shape[-1:] != (width,):
        raise ShapeMismatchError(f"the activation at {hook_name!r} has shape {list(act.shape)}, which does not fit "
                                 f"the dictionary's width {width}", field="d_in")
    return act.to(device)


def _write(act: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``new`` in ``act``'s place, dtype and device."""
    return new.to(device=act.device, dtype=act.dtype).reshape(act.shape)


def _place(adapter: ModelAdapter, d: MultiLayerDictionary, *, outputs: bool) -> None:
    """Place every site and check its width before any hook is attached or any forward runs."""
    ins, outs = _sites(d)
    for s in ins:
        adapter.check(s, d.cfg.d_in)
    if outputs:
        for s in outs:
            adapter.check(s, int(d.cfg.d_out or d.cfg.d_in))


def _writers(d: MultiLayerDictionary) -> list[list[tuple[int, int]]]:
    """For each target position: ``(source position, slot in its W_dec)`` of every source that writes there."""
    assert d.cfg.targets is not None
    out: list[list[tuple[int, int]]] = [[] for _ in range(d.cfg.n_layers)]
    for i, ts in enumerate(d.cfg.targets):
        for j, t in enumerate(ts):
            out[t].append((i, j))
    return out


def _output(d: MultiLayerDictionary, t: int, features: Sequence[torch.Tensor | None],
            writers: Sequence[tuple[int, int]], x_t: torch.Tensor) -> torch.Tensor:
    """The dictionary's output at target position ``t`` in its compute dtype (decoders of every writer, bias,
    skip)."""
    ct = d.compute_dtype
    acc = d.b_dec[t].to(ct)
    for i, j in writers:
        f = features[i]
        assert f is not None
        acc = acc + f.to(ct) @ d.W_dec[i][:, j, :].to(ct)
    if d.W_skip is not None:
        acc = acc + x_t.to(ct) @ d.W_skip[t].to(ct).T
    return acc


def _tokens(adapter: ModelAdapter, tokens_or_text: TokensOrText, prepend_bos: bool | None) -> torch.Tensor:
    if isinstance(tokens_or_text, torch.Tensor):
        return tokens_or_text
    return adapter.to_tokens(tokens_or_text, prepend_bos)


def _clean_pass(adapter: ModelAdapter, names: Sequence[str], tokens: torch.Tensor, *, stop_early: bool = True
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One pass of the unmodified model, under ``torch.no_grad()``: ``({hook name: activation}, logits)``, the
    pass cut once every hook has fired when ``stop_early`` (logits ``None`` then). A hook that never fires is a
    ConfigError (the errors or features it should give would silently be missing)."""
    from sae_hub.adapters import StopForward

    wanted = list(dict.fromkeys(names))
    got: dict[str, torch.Tensor] = {}
    hooks = []
    for name in wanted:

        def read(act: torch.Tensor, hook: Any, name: str = name) -> None:
            got[name] = act.detach()
            if stop_early and len(got) == len(wanted):
                raise StopForward

        hooks.append((name, read))
    logits: torch.Tensor | None = None
    with torch.no_grad(), adapter.hooks(hooks):
        try:
            out = adapter.forward(tokens)
            logits = None if stop_early else out
        except StopForward:
            pass
    missing = [n for n in wanted if n not in got]
    if missing:
        raise ConfigError(f"the hook(s) {missing} never fired during the clean forward pass: this model does not "
                          "call them", field="hook_names")
    return got, logits


def _frozen_errors(adapter: ModelAdapter, d: MultiLayerDictionary, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per target position: ``y_t - recon_t(features of x_t)`` on a clean pass of the unmodified model (detached,
    in the dictionary's compute dtype): circuit-tracer's error vectors, to be held constant."""
    ins, outs = _sites(d)
    acts, _ = _clean_pass(adapter, [*ins, *outs], tokens)
    device = d.b_dec[0].device
    d_out = int(d.cfg.d_out or d.cfg.d_in)
    xs = [_read(acts[ins[i]], ins[i], d.cfg.d_in, device) for i in range(d.cfg.n_layers)]
    with torch.no_grad():
        feats: list[torch.Tensor | None] = [d.encode(layer, xs[i]) for i, layer in enumerate(d.cfg.layers)]
        writers = _writers(d)
        return [(_read(acts[outs[t]], outs[t], d_out, device).to(d.compute_dtype)
                 - _output(d, t, feats, writers[t], xs[t])).detach() for t in range(d.cfg.n_layers)]


def _edited(handle: ReplacementHandle, key: int, f: torch.Tensor, what: str) -> torch.Tensor:
    """The features to decode: ``f`` itself, or what ``edits[key]`` makes of a copy of it (shape checked)."""
    edit = handle.edits.get(key)
    if edit is None:
        return f
    used = f.clone()
    result = edit(used)
    used = result if result is not None else used
    if not isinstance(used, torch.Tensor) or used.shape != f.shape:
        got = list(used.shape) if isinstance(used, torch.Tensor) else type(used).__name__
        raise ShapeMismatchError(f"the edit of {what} returned {got}; the features are {list(f.shape)}",
                                 field="edits")
    return used


def _replacement_hooks(handle: ReplacementHandle, frozen: Sequence[torch.Tensor] | None = None
                       ) -> list[tuple[Any, Callable[..., Any]]]:
    """Two hooks per layer, in layer order: read the MLP input (encode, edit), write the MLP output. ``frozen``:
    the error terms by target position (``errors="frozen"``)."""
    d = handle.dictionary
    from sae_hub.multilayer import MultiLayerDictionary

    assert isinstance(d, MultiLayerDictionary)
    cfg = d.cfg
    n = cfg.n_layers
    d_out = int(cfg.d_out or cfg.d_in)
    device = d.b_dec[0].device
    ins, outs = _sites(d)
    writers = _writers(d)
    # this pass's inputs and (clean, decoded) features by position; an entry from an earlier pass is dropped when
    # its layer's input hook fires again (a new pass, also after a pass that was cut short)
    state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    hooks: list[tuple[Any, Callable[..., Any]]] = []

    for i, layer in enumerate(cfg.layers):

        def read(act: torch.Tensor, hook: Any, i: int = i, layer: int = layer) -> None:
            for k in [k for k in state if k >= i]:
                del state[k]
            x = _read(act, ins[i], cfg.d_in, device)
            f = d.encode(layer, x)
            used = _edited(handle, layer, f, f"layer {layer}")
            handle.features[layer] = used
            state[i] = (x, f, used)

        def write(act: torch.Tensor, hook: Any, t: int = i, layer: int = layer) -> torch.Tensor:
            missing = [cfg.layers[s] for s, _ in writers[t] if s not in state]
            if missing:
                raise ConfigError(
                    f"the output hook {outs[t]!r} of layer {layer} fired before the input hook(s) of "
                    f"layer(s) {missing} that write to it (or they never fired)", field="hook_names_out")
            x_t = state[t][0] if t in state else None
            if d.W_skip is not None and x_t is None:
                raise ConfigError(f"the skip term of layer {layer} needs its input hook, which has not fired",
                                  field="hook_names_in")
            lead = {tuple(state[s][1].shape[:-1]) for s, _ in writers[t]}
            if len(lead) != 1:
                raise ShapeMismatchError(f"the sources writing to layer {layer} saw inputs of different shapes "
                                         f"{sorted(lead)} in one pass", field="hook_names_in")
            feats_used = [state[s][2] if s in state else None for s in range(n)]
            recon = _output(d, t, feats_used, writers[t], x_t if x_t is not None else act)
            if frozen is not None:
                err = frozen[t]
                if tuple(err.shape) != tuple(act.shape):
                    raise ShapeMismatchError(
                        f"the frozen error of layer {layer} was computed on clean_input with shape "
                        f"{list(err.shape)}; this pass has {list(act.shape)} at {outs[t]!r} (a frozen error "
                        "belongs to one input: enter splice_replacement again with the new clean_input)",
                        field="clean_input")
                recon = recon + err
            elif handle.use_error_term:
                edited = any(state[s][2] is not state[s][1] for s, _ in writers[t])
                clean = _output(d, t, [state[s][1] if s in state else None for s in range(n)], writers[t],
                                x_t if x_t is not None else act) if edited else recon
                y = _read(act, outs[t], d_out, device)
                err = (y.to(d.compute_dtype) - clean).detach()
                handle.errors[layer] = err
                recon = recon + err
            else:
                recon = recon.to(d.dtype)
            if t == n - 1:
                state.clear()
            return _write(act, recon)

        hooks.append((ins[i], read))
        hooks.append((outs[i], write))
    return hooks


def _crosscoder_hooks(handle: ReplacementHandle, sites: Sequence[str], clean: Sequence[torch.Tensor],
                      feats: Sequence[torch.Tensor], errors: Sequence[torch.Tensor] | None
                      ) -> list[tuple[Any, Callable[..., Any]]]:
    """One hook per site: write ``recon_h(edited clean features)`` (+ the clean run's error) in the site's place."""
    cc = handle.dictionary
    from sae_hub.multilayer import CrossCoder

    assert isinstance(cc, CrossCoder)
    ct = cc.compute_dtype
    hooks: list[tuple[Any, Callable[..., Any]]] = []
    for h, site in enumerate(sites):

        def write(act: torch.Tensor, hook: Any, h: int = h, site: str = site) -> torch.Tensor:
            if tuple(act.shape) != tuple(clean[h].shape):
                raise ShapeMismatchError(
                    f"the crosscoder's features were encoded from clean_input, where {site!r} had shape "
                    f"{list(clean[h].shape)}; this pass has {list(act.shape)} (enter splice_replacement again with "
                    "the new clean_input)", field="clean_input")
            base = feats[h].detach()
            if torch.is_grad_enabled():
                base = base.clone().requires_grad_(True)  # a leaf per pass and site: d logit / d f_h
            used = _edited(handle, h, base, f"site {h} ({site!r})")
            handle.features[h] = used
            recon = used.to(ct) @ cc.W_dec[h].to(ct) + cc.b_dec[h].to(ct)
            if errors is not None:
                recon = recon + errors[h]
            return _write(act, recon)

        hooks.append((site, write))
    return hooks


@contextmanager
def splice_replacement(model: Any, dictionary: MultiLayerDictionary | CrossCoder, *, use_error_term: bool = False,
                       errors: str | None = None, clean_input: TokensOrText | None = None,
                       edits: Mapping[int, FeatureEdit] | None = None, tokenizer: Any = None,
                       prepend_bos: bool | None = None) -> Iterator[ReplacementHandle]:
    """Within the block, ``model`` runs as the replacement model (see the module docstring for the exact CLT,
    error-term and crosscoder semantics).

    Transcoder set / CLT: every layer the dictionary covers has its output (``hook_names_out``) replaced by the
    dictionary's reconstruction, computed from the features encoded at the input hooks of the same pass.
    ``use_error_term=True`` (``errors="live"``) adds ``(model output - unedited reconstruction).detach()`` per
    layer: logits are unchanged (up to float rounding) while the features sit on the forward path to be read,
    edited (``edits={layer: fn}``) and differentiated. ``errors="frozen"`` takes the error terms from one clean
    pass on ``clean_input`` (run on entering the block) and holds them constant, so gradients flow through the
    features alone and are the derivatives of that frozen-error model (circuit-tracer's linearisation).

    Crosscoder: ``clean_input`` is required; its clean pass gives the features, and every site is patched with
    its reconstruction (+ the clean run's error with ``use_error_term``); ``edits={site position: fn}`` edit the
    code decoded at that site only (give every site the edit to change a latent everywhere: a patch at a later
    residual-stream site overwrites what an edit at an earlier one changed).

    ``model`` is any kind :func:`~sae_hub.adapters.adapt` accepts (``tokenizer`` goes to it; ``clean_input`` may
    be text, tokenised with ``prepend_bos``); every site is placed and width-checked before anything is attached
    or run; the hooks are removed on exit, also when the block raised.

    Example::

        with splice_replacement(model, clt, use_error_term=True, edits={3: lambda f: f.mul_(0)}) as rp:
            logits = model(tokens)
        rp.features[5]      # [batch, pos, d_sae] of layer 5 on that pass
    """
    from sae_hub.adapters import adapt
    from sae_hub.multilayer import CrossCoder

    d = _check_dictionary(dictionary)
    mode = _error_mode(bool(use_error_term), errors)
    if isinstance(d, CrossCoder):
        if errors == "live":
            raise ConfigError("a crosscoder's error term comes from its clean pass (the features do too): use "
                              "use_error_term=True or errors='frozen', not errors='live'", field="errors")
        mode = "frozen" if mode == "live" else mode
    handle = ReplacementHandle(dictionary=d, use_error_term=mode != "none", error_mode=mode, edits=dict(edits or {}))
    adapter = adapt(model, tokenizer)
    if isinstance(d, CrossCoder):
        sites = _crosscoder_sites(d)
        unknown = sorted(set(handle.edits) - set(range(d.cfg.n_sites)))
        if unknown:
            raise ConfigError(f"edits for site(s) {unknown}; a crosscoder's edits are keyed by site position "
                              f"0..{d.cfg.n_sites - 1} ({sites})", field="edits")
        if clean_input is None:
            raise ConfigError("splicing a crosscoder needs clean_input=: its features are encoded from a clean "
                              "pass over every site (see sae_hub.replacement)", field="clean_input")
        for s in sites:
            adapter.check(s, d.cfg.d_in)
        acts, _ = _clean_pass(adapter, sites, _tokens(adapter, clean_input, prepend_bos))
        device = d.b_dec[0].device
        clean = [_read(acts[s], s, d.cfg.d_in, device) for s in sites]
        with torch.no_grad():
            feats = d.encode(clean)
            errs = [(x.to(d.compute_dtype) - r.to(d.compute_dtype)).detach() for x, r in
                    zip(clean, d.decode(feats), strict=True)] if mode != "none" else None
        if errs is not None:
            handle.errors = dict(enumerate(errs))
        with adapter.hooks(_crosscoder_hooks(handle, sites, clean, feats, errs)):
            yield handle
        return
    unknown = sorted(set(handle.edits) - set(d.cfg.layers))
    if unknown:
        raise ConfigError(f"edits for layer(s) {unknown} the dictionary does not cover; its layers are "
                          f"{d.cfg.layers}", field="edits")
    _place(adapter, d, outputs=True)
    frozen: list[torch.Tensor] | None = None
    if mode == "frozen":
        if clean_input is None:
            raise ConfigError("errors='frozen' needs clean_input=: the error terms are computed on a clean pass "
                              "of it and then held constant", field="clean_input")
        frozen = _frozen_errors(adapter, d, _tokens(adapter, clean_input, prepend_bos))
        handle.errors = dict(zip(d.cfg.layers, frozen, strict=True))
    elif clean_input is not None:
        raise ConfigError(f"clean_input is used by errors='frozen' (and crosscoders) only; errors is {mode!r}",
                          field="clean_input")
    with adapter.hooks(_replacement_hooks(handle, frozen)):
        yield handle


def _sparse(d: MultiLayerDictionary | CrossCoder, f: torch.Tensor) -> Any:
    from sae_hub.multilayer import MultiLayerDictionary

    if isinstance(d, MultiLayerDictionary) and d.cfg.architecture == "topk":
        vals, idx = f.topk(int(d.cfg.k or 0), dim=-1, sorted=False)
        return vals, idx
    return f.to_sparse().coalesce()


def run_with_dictionary(model: Any, tokens_or_text: TokensOrText, dictionary: MultiLayerDictionary | CrossCoder, *,
                        sparse: bool = False, splice: bool = False, use_error_term: bool = False,
                        stop_early: bool = True, prepend_bos: bool | None = None,
                        tokenizer: Any = None) -> tuple[torch.Tensor | None, dict[int, Any]]:
    """:func:`~sae_hub.splicing.run_with_saes` for a multi-layer dictionary or a crosscoder: ``(logits or None,
    {layer (crosscoder: site position): features})``.

    Without ``splice`` the model is only read: features of every layer encoded from its input hook (a
    crosscoder: from all its sites) on the model's own pass, cut after the last hook needed when ``stop_early``
    (logits ``None``). With ``splice=True`` the replacement model runs (:func:`splice_replacement`,
    ``use_error_term``; a crosscoder's clean pass is on the same tokens) and the features are those of that pass.
    ``sparse``: ``(values, indices)`` for topk, a coalesced sparse COO tensor otherwise. Runs under
    ``torch.no_grad()``. A hook that never fires is a ConfigError.
    """
    from sae_hub.adapters import StopForward, adapt
    from sae_hub.multilayer import CrossCoder

    d = _check_dictionary(dictionary)
    adapter = adapt(model, tokenizer)
    tokens = _tokens(adapter, tokens_or_text, prepend_bos)
    feats: dict[int, torch.Tensor] = {}
    logits: torch.Tensor | None = None
    keys: list[int] = list(range(d.cfg.n_sites)) if isinstance(d, CrossCoder) else list(d.cfg.layers)
    with torch.no_grad():
        if splice:
            kw: dict[str, Any] = {"clean_input": tokens} if isinstance(d, CrossCoder) else {}
            with splice_replacement(adapter, d, use_error_term=use_error_term, **kw) as handle:
                logits = adapter.forward(tokens)
            feats = {k: f.detach() for k, f in handle.features.items()}
        elif isinstance(d, CrossCoder):
            sites = _crosscoder_sites(d)
            for s in sites:
                adapter.check(s, d.cfg.d_in)
            acts, logits = _clean_pass(adapter, sites, tokens, stop_early=stop_early)
            device = d.b_dec[0].device
            feats = dict(enumerate(d.encode([_read(acts[s], s, d.cfg.d_in, device) for s in sites])))
        else:
            _place(adapter, d, outputs=False)
            ins, _ = _sites(d)
            waiting = set(d.cfg.layers)
            device = d.b_dec[0].device
            hooks = []
            for i, layer in enumerate(d.cfg.layers):

                def read(act: torch.Tensor, hook: Any, i: int = i, layer: int = layer) -> None:
                    feats[layer] = d.encode(layer, _read(act, ins[i], d.cfg.d_in, device))
                    waiting.discard(layer)
                    if stop_early and not waiting:
                        raise StopForward

                hooks.append((ins[i], read))
            with adapter.hooks(hooks):
                try:
                    out = adapter.forward(tokens)
                    logits = None if stop_early else out
                except StopForward:
                    pass
    missing = [k for k in keys if k not in feats]
    if missing:
        raise ConfigError(f"the input hook(s) of layer(s) {missing} never fired during the forward pass: this model "
                          "does not call them", field="hook_names_in")
    out_feats: dict[int, Any] = {k: _sparse(d, feats[k]) if sparse else feats[k] for k in keys}
    return logits, out_feats
