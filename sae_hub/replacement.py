"""Splicing a transcoder set or a cross-layer transcoder (CLT) into a model: the replacement model.

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
* ``use_error_term=True``: the output at ``t`` becomes ``recon_t(edited features) + error_t`` with
  ``error_t = (y_t - recon_t(unedited features)).detach()``, where ``y_t`` is the model's own MLP output at ``t``
  in this pass. Without edits the pass is the unmodified pass (every written tensor equals the model's own, up to
  float rounding: logits unchanged), so ``error_t`` is exactly circuit-tracer's error vector, "MLP output minus
  reconstruction on the clean forward pass" (``ReplacementModel.setup_attribution``: ``mlp_out_cache -
  reconstruction``), and the features are circuit-tracer's activation matrix. With edits, layers after the first
  edited one see a changed input; the output there is the model's own MLP output on that input plus the decoded
  change of the features (``sum over i of (f_edit_i - f_i) @ W_dec[i -> t]``), which is exactly what
  circuit-tracer's unconstrained ``feature_intervention`` computes (it adds those decoder deltas at the output
  hook, with current activations recomputed in the same pass). A frozen error from a separate clean pass (its
  attribution's linearisation) is not what this does: it would need a second forward per call.
* The features stay on the autograd graph (``handle.features``), as with :func:`~sae_hub.splicing.splice`, so an
  attribution can differentiate against them; the error term is detached.

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
    from sae_hub.multilayer import MultiLayerDictionary

__all__ = ["ReplacementHandle", "run_with_dictionary", "splice_replacement"]

FeatureEdit = Callable[[torch.Tensor], torch.Tensor | None]


@dataclass
class ReplacementHandle:
    """What :func:`splice_replacement` yields.

    ``features[layer]`` is the ``[..., d_sae_layer]`` tensor decoded on the last forward pass (after any edit; on
    the autograd graph, not a copy). ``errors[layer]`` is the error term added at target ``layer`` on the last
    pass (``use_error_term`` only; detached). ``edits[layer]`` (model layer numbers), if set, is called with a copy
    of the clean features of that source layer and returns the features to decode instead (or ``None`` after
    editing the copy in place); entries can be changed between passes.
    """

    dictionary: MultiLayerDictionary
    use_error_term: bool = False
    features: dict[int, torch.Tensor] = field(default_factory=dict)
    errors: dict[int, torch.Tensor] = field(default_factory=dict)
    edits: dict[int, FeatureEdit] = field(default_factory=dict)


def _check_dictionary(dictionary: Any) -> MultiLayerDictionary:
    from sae_hub.multilayer import MultiLayerDictionary

    if not isinstance(dictionary, MultiLayerDictionary):
        raise ConfigError(f"expected a sae_hub.MultiLayerDictionary, got {type(dictionary).__name__}",
                          field="dictionary")
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
    """The dictionary's output at target position ``t`` in float32 (decoders of every writer, bias, skip)."""
    acc = d.b_dec[t].float()
    for i, j in writers:
        f = features[i]
        assert f is not None
        acc = acc + f.float() @ d.W_dec[i][:, j, :].float()
    if d.W_skip is not None:
        acc = acc + x_t.float() @ d.W_skip[t].float().T
    return acc


def _replacement_hooks(handle: ReplacementHandle) -> list[tuple[Any, Callable[..., Any]]]:
    """Two hooks per layer, in layer order: read the MLP input (encode, edit), write the MLP output."""
    d = handle.dictionary
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
            edit = handle.edits.get(layer)
            used = f
            if edit is not None:
                used = f.clone()
                result = edit(used)
                used = result if result is not None else used
                if not isinstance(used, torch.Tensor) or used.shape != f.shape:
                    got = list(used.shape) if isinstance(used, torch.Tensor) else type(used).__name__
                    raise ShapeMismatchError(f"the edit of layer {layer} returned {got}; the features are "
                                             f"{list(f.shape)}", field="edits")
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
            if handle.use_error_term:
                edited = any(state[s][2] is not state[s][1] for s, _ in writers[t])
                clean = _output(d, t, [state[s][1] if s in state else None for s in range(n)], writers[t],
                                x_t if x_t is not None else act) if edited else recon
                y = _read(act, outs[t], d_out, device)
                err = (y.float() - clean).detach()
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


@contextmanager
def splice_replacement(model: Any, dictionary: MultiLayerDictionary, *, use_error_term: bool = False,
                       edits: Mapping[int, FeatureEdit] | None = None, tokenizer: Any = None
                       ) -> Iterator[ReplacementHandle]:
    """Within the block, ``model`` runs as the replacement model: every layer the dictionary covers has its
    output (``hook_names_out``) replaced by the dictionary's reconstruction, computed from the features encoded
    at the input hooks of the same pass (see the module docstring for the exact CLT and error-term semantics).

    ``use_error_term=True`` adds ``(model output - unedited reconstruction).detach()`` per layer: logits are
    unchanged (up to float rounding) while the features sit on the forward path to be read, edited
    (``edits={layer: fn}``) and differentiated. ``model`` is any kind :func:`~sae_hub.adapters.adapt` accepts
    (``tokenizer`` goes to it); every site is placed and width-checked before anything is attached; the hooks are
    removed on exit, also when the block raised.

    Example::

        with splice_replacement(model, clt, use_error_term=True, edits={3: lambda f: f.mul_(0)}) as rp:
            logits = model(tokens)
        rp.features[5]      # [batch, pos, d_sae] of layer 5 on that pass
    """
    from sae_hub.adapters import adapt

    d = _check_dictionary(dictionary)
    handle = ReplacementHandle(dictionary=d, use_error_term=bool(use_error_term), edits=dict(edits or {}))
    unknown = sorted(set(handle.edits) - set(d.cfg.layers))
    if unknown:
        raise ConfigError(f"edits for layer(s) {unknown} the dictionary does not cover; its layers are "
                          f"{d.cfg.layers}", field="edits")
    adapter = adapt(model, tokenizer)
    _place(adapter, d, outputs=True)
    with adapter.hooks(_replacement_hooks(handle)):
        yield handle


def _sparse(d: MultiLayerDictionary, f: torch.Tensor) -> Any:
    if d.cfg.architecture == "topk":
        vals, idx = f.topk(int(d.cfg.k or 0), dim=-1, sorted=False)
        return vals, idx
    return f.to_sparse().coalesce()


def run_with_dictionary(model: Any, tokens_or_text: str | Sequence[str] | torch.Tensor,
                        dictionary: MultiLayerDictionary, *, sparse: bool = False, splice: bool = False,
                        use_error_term: bool = False, stop_early: bool = True, prepend_bos: bool | None = None,
                        tokenizer: Any = None) -> tuple[torch.Tensor | None, dict[int, Any]]:
    """:func:`~sae_hub.splicing.run_with_saes` for a multi-layer dictionary: ``(logits or None, {layer: features})``.

    Without ``splice`` the model is only read: features of every layer encoded from its input hook on the
    model's own pass, cut after the last input hook when ``stop_early`` (logits ``None``). With ``splice=True``
    the replacement model runs (:func:`splice_replacement`, ``use_error_term``) and the features are those of
    that pass. ``sparse``: ``(values, indices)`` for topk, a coalesced sparse COO tensor otherwise. Runs under
    ``torch.no_grad()``. An input hook that never fires is a ConfigError.
    """
    from sae_hub.adapters import StopForward, adapt

    d = _check_dictionary(dictionary)
    adapter = adapt(model, tokenizer)
    tokens = tokens_or_text if isinstance(tokens_or_text, torch.Tensor) else \
        adapter.to_tokens(tokens_or_text, prepend_bos)
    feats: dict[int, torch.Tensor] = {}
    logits: torch.Tensor | None = None
    with torch.no_grad():
        if splice:
            with splice_replacement(adapter, d, use_error_term=use_error_term) as handle:
                logits = adapter.forward(tokens)
            feats = {layer: f.detach() for layer, f in handle.features.items()}
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
    missing = [layer for layer in d.cfg.layers if layer not in feats]
    if missing:
        raise ConfigError(f"the input hook(s) of layer(s) {missing} never fired during the forward pass: this model "
                          "does not call them", field="hook_names_in")
    out_feats: dict[int, Any] = {layer: _sparse(d, feats[layer]) if sparse else feats[layer]
                                 for layer in d.cfg.layers}
    return logits, out_feats
