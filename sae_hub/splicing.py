"""Splicing SAEs into models, and reading their features off a forward pass.

Two entry points:

* :func:`splice` — a context manager under which the model's activation at each SAE's hook is replaced by the
  SAE's reconstruction (transcoders: the output hook gets the prediction made from the input hook). The
  yielded :class:`SpliceHandle` holds the features of the last forward pass and lets a callback edit them
  before they are decoded (steering, ablation).
* :func:`run_with_saes` — one forward pass that returns the features of one or several SAEs at once, dense
  or sparse, stopping the model right after the last hook it needs unless asked to splice.

Works on every model kind :func:`sae_hub.adapters.adapt` recognises: TransformerLens 4's ``TransformerBridge``
(after ``enable_compatibility_mode()``, which provides the HookedTransformer hook names and the
``[batch, pos, n_heads, d_head]`` shape of ``attn.hook_z``), TransformerLens 3's ``HookedTransformer``, a plain
``transformers`` ``PreTrainedModel`` (SAE hooks placed by :mod:`sae_hub.sites`; pass ``tokenizer=`` for text) and
an ``nnsight`` ``LanguageModel``. This module never branches on the kind: it talks to the model only through the
adapter (attach hooks for a block, tokenize, run a forward pass). Hooks are removed on exit, even when the body
raised, and hooks the user attached are left alone.

transformer_lens, transformers and nnsight are never imported here: the model object brings its own classes, so
``import sae_hub`` stays free of them.

The seams, public so that :mod:`sae_hub.training` (activation sources, ``evaluate``) reads and writes models
through this module alone, and so that another kind of model (plain Hugging Face, say) can slot in by
providing the same few operations:

* :class:`Site` — *where* an SAE reads from and writes to: a hook point name and an optional head (plus, for
  Hugging Face models, ``hf_hook_name`` and the TransformerLens weight processing the name refers to), and how a
  hook activation maps to the SAE's ``[..., width]`` space and back;
* :func:`hooks_attached` — attach ``(hook_name, fn)`` pairs for a block, removing exactly them afterwards;
* :class:`StopForward` and :func:`run_to_hooks` — one forward pass cut as soon as the needed hooks fired;
* :func:`model_device` — where a model's inputs go;
* :func:`reconstruct` — an SAE's output for features it encoded (decode plus skip connection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import torch

from sae_hub.adapters import ModelAdapter, StopForward, adapt
from sae_hub.errors import ConfigError, ShapeMismatchError
from sae_hub.sites import DEFAULT_PROCESSING, Processing

if TYPE_CHECKING:
    from sae_hub.sae import SAE

__all__ = [
    "ModelAdapter",
    "Site",
    "SpliceHandle",
    "StopForward",
    "adapt",
    "hooks_attached",
    "model_device",
    "reconstruct",
    "run_to_hooks",
    "run_with_saes",
    "splice",
]

SAEs = Union["SAE", Sequence["SAE"], Mapping[str, "SAE"]]
FeatureEdit = Callable[[torch.Tensor], torch.Tensor | None]
SparseFeatures = tuple[torch.Tensor, torch.Tensor] | torch.Tensor

@dataclass
class SpliceHandle:
    """What :func:`splice` yields: the spliced SAEs, their features of the last forward pass, optional edits.

    ``features[key]`` is the dense ``[..., d_sae]`` tensor that was decoded on the last forward (after any
    edit), not detached, so under autograd it can be differentiated against (``retain_grad()``) — it is a
    tensor of the graph, not a copy. ``edits[key]``, if set, is called with a copy of the clean features and
    returns the features to decode instead (or ``None`` after editing that copy in place). Keys are the SAE's
    ``hook_name``, or the names given when SAEs were passed as a dict. Entries can be changed between passes.
    """

    saes: dict[str, SAE]
    use_error_term: bool = False
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    edits: dict[str, FeatureEdit] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- helpers


def _named_saes(saes: SAEs) -> dict[str, SAE]:
    """Normalise one SAE, a sequence, or a ``{name: sae}`` mapping to ``{key: sae}``; check hook names."""
    from sae_hub.sae import SAE

    if isinstance(saes, SAE):
        items: list[tuple[str | None, SAE]] = [(None, saes)]
    elif isinstance(saes, Mapping):
        items = [(str(k), v) for k, v in saes.items()]
    else:
        items = [(None, s) for s in saes]
    if not items:
        raise ConfigError("no SAEs given")
    out: dict[str, SAE] = {}
    for name, sae in items:
        if not isinstance(sae, SAE):
            raise ConfigError(f"expected sae_hub.SAE objects, got {type(sae).__name__}")
        if not sae.cfg.hook_name:
            raise ConfigError(
                f"SAE {name or sae!r} has no hook_name, so there is no place in the model to read it from; "
                "set sae.cfg.hook_name",
                field="hook_name",
            )
        if sae.cfg.is_transcoder and sae.cfg.output_hook_name == sae.cfg.hook_name:
            raise ConfigError(
                f"transcoder on {sae.cfg.hook_name!r} writes d_out={sae.cfg.d_out} != d_in={sae.cfg.d_in} "
                "but has no hook_name_out: set where its output belongs",
                field="hook_name_out",
            )
        key = name if name is not None else sae.cfg.hook_name
        if key in out:
            raise ConfigError(
                f"two SAEs would both be called {key!r}; pass a dict {{name: sae}} to name them",
                field="hook_name",
            )
        out[key] = sae
    return out


# ------------------------------------------------------------- seams (public: training, evaluate, model kinds)


@contextmanager
def hooks_attached(model: Any, hooks: Sequence[tuple[str | Site, Callable[..., Any]]]) -> Iterator[None]:
    """Attach ``(hook, fn)`` pairs for the duration of the block; always removes exactly them.

    ``hook`` is a TransformerLens hook name or a :class:`Site`; ``model`` any model kind (or a
    :class:`~sae_hub.adapters.ModelAdapter`). ``fn(act, hook)`` is called once per firing with TransformerLens's
    activation at that hook and may return a replacement (TransformerLens's hook signature, on every kind). An
    unknown hook name is a :class:`~sae_hub.errors.ConfigError` listing the closest names (TransformerLens) or
    a :class:`~sae_hub.sites.HookSiteError` naming the module paths considered (Hugging Face); a gated hook point
    the model would never fire is refused. Hooks are removed on exit, also when the block raises, and hooks the
    user attached are left alone.
    """
    with adapt(model).hooks(list(hooks)):
        yield


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (where its input tokens go); ``model.cfg.device``, else CPU,
    for a model without parameters."""
    return adapt(model).device


def run_to_hooks(model: Any, tokens: torch.Tensor, hook_names: Sequence[str | Site]) -> dict[str, torch.Tensor]:
    """One forward pass of ``tokens``, cut as soon as every hook in ``hook_names`` has fired.

    The cut raises :class:`StopForward` from the last hook to fire (as :func:`run_with_saes` does), which works
    on every model kind and costs only the layers up to the deepest hook. Returns the hook activations by hook
    name (``[batch, pos, ...]``, still inference tensors when called under ``inference_mode``). A hook that never
    fires is a :class:`~sae_hub.errors.ConfigError`.
    """
    adapter = adapt(model)
    sites = list({(h if isinstance(h, str) else h.hook_name): h for h in hook_names}.items())
    acts: dict[str, torch.Tensor] = {}
    waiting = {name for name, _ in sites}

    def capture(name: str) -> Any:
        def hook(act: torch.Tensor, hook: Any) -> None:
            acts[name] = act
            waiting.discard(name)
            if not waiting:
                raise StopForward

        return hook

    with adapter.hooks([(site, capture(name)) for name, site in sites]), suppress(StopForward):
        adapter.forward(tokens)
    if waiting:
        raise ConfigError(
            f"hook(s) {sorted(waiting)} never fired during the forward pass: this model does not call them",
            field="hook_name",
        )
    return acts


@dataclass(frozen=True)
class Site:
    """Where an SAE reads from (and writes to) a model: the hook point ``hook_name`` and, for a single-head SAE,
    the head ``head`` (an index on axis ``-2``).

    Handles the three layouts an SAE meets: a flat ``[..., d]`` activation; a per-head one
    ``[..., n_heads, d_head]`` (``attn.hook_z``) that a whole-layer SAE reads flattened; and a single head
    ``hook_head_index`` of a per-head activation (the head axis is ``-2``, as in TransformerLens's
    ``hook_z``/``hook_q``/``hook_k``/``hook_v``). A transcoder uses its input site's layout for its output hook
    too. Errors name ``hook_name``.

    On a Hugging Face model, ``hf_hook_name`` (SAELens's field: a module path) places the SAE instead of the rule
    for ``hook_name``, and ``processing`` says which TransformerLens weight processing ``hook_name``'s tensor
    assumes (see :mod:`sae_hub.sites`); TransformerLens models ignore both.
    """

    hook_name: str
    head: int | None = None
    hf_hook_name: str | None = None
    processing: Processing = DEFAULT_PROCESSING

    @classmethod
    def of(cls, sae: SAE, *, output: bool = False) -> Site:
        """The site of ``sae``: its ``cfg.hook_name`` (``output=True``: where a transcoder writes,
        ``hook_name_out``), ``cfg.hook_head_index``, ``hf_hook_name`` / ``hf_hook_name_out`` and the processing its
        ``model_from_pretrained_kwargs`` record."""
        cfg = sae.cfg
        kwargs = (cfg.extra or {}).get("model_from_pretrained_kwargs")
        processing = Processing.from_kwargs(kwargs if isinstance(kwargs, dict) else None)
        if output:
            hf = cfg.hf_hook_name_out if cfg.hook_name_out and cfg.hook_name_out != cfg.hook_name else cfg.hf_hook_name
            return cls(str(cfg.output_hook_name), cfg.hook_head_index, hf, processing)
        return cls(str(cfg.hook_name), cfg.hook_head_index, cfg.hf_hook_name, processing)

    def read(self, act: torch.Tensor, width: int, device: torch.device | None = None) -> torch.Tensor:
        """The ``[..., width]`` SAE-space view of a hook activation, moved to ``device`` (the SAE's) if given."""
        x = act
        if self.head is not None:
            if x.dim() < 2 or not -x.shape[-2] <= self.head < x.shape[-2]:
                raise ConfigError(
                    f"hook_head_index={self.head} needs a per-head activation [..., n_heads, d_head]; "
                    f"{self.hook_name!r} has shape {list(act.shape)}",
                    field="hook_head_index",
                )
            x = x[..., self.head, :]
        elif x.shape[-1] != width and x.dim() >= 2 and x.shape[-2] * x.shape[-1] == width:
            x = x.flatten(-2)  # [..., n_heads, d_head] -> [..., n_heads * d_head]
        if x.shape[-1] != width:
            raise ShapeMismatchError(
                f"the activation at {self.hook_name!r} has shape {list(act.shape)}: {x.shape[-1]} wide, which does "
                f"not fit this SAE's width {width}",
                field="d_in",
            )
        return x.to(device) if device is not None else x

    def write(self, act: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``act`` with the SAE-space tensor ``new`` put back in its place, in ``act``'s dtype and device."""
        new = new.to(device=act.device, dtype=act.dtype)
        if self.head is not None:
            out = act.clone()
            out[..., self.head, :] = new
            return out
        return new.reshape(act.shape)


def reconstruct(sae: SAE, x: torch.Tensor, f: torch.Tensor, state: Any) -> torch.Tensor:
    """``decode(f)`` plus the skip connection: equals ``sae(x)`` when ``f == sae.encode(x)``.

    ``state`` is what the ``encode`` call that produced ``f`` recorded (per-token normalisation statistics),
    passed explicitly so an edit callback that runs the SAE in between cannot swap it.
    """
    out = sae.decode(f, input_state=state)
    if sae.cfg.has_skip:
        out = out + (x.to(sae.dtype) @ sae.W_skip.T).reshape(out.shape)
    return out


# ----------------------------------------------------------------------------------------------- splice hooks


def _splice_hooks(handle: SpliceHandle) -> list[tuple[Site, Callable[..., Any]]]:
    """The hooks that implement a splice: one per SAE, two for a transcoder (read input, write output)."""
    hooks: list[tuple[Site, Callable[..., Any]]] = []
    for key, sae in handle.saes.items():
        site = Site.of(sae)

        def encode_decode(act: torch.Tensor, key: str = key, sae: SAE = sae,
                          site: Site = site) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """SAE input, reconstruction from the (possibly edited) features, clean reconstruction."""
            x = site.read(act, sae.cfg.d_in, sae.device)
            f = sae.encode(x)
            state = sae._last_input_state
            edit = handle.edits.get(key)
            if edit is None:
                handle.features[key] = f
                recon = reconstruct(sae, x, f, state)
                return x, recon, recon
            f_edit = f.clone()
            result = edit(f_edit)
            f_edit = result if result is not None else f_edit
            handle.features[key] = f_edit
            recon = reconstruct(sae, x, f_edit, state)
            clean = reconstruct(sae, x, f, state) if handle.use_error_term else recon
            return x, recon, clean

        if not sae.cfg.is_transcoder:

            def replace(act: torch.Tensor, hook: Any, encode_decode: Callable[..., Any] = encode_decode,
                        site: Site = site) -> torch.Tensor:
                x, recon, clean = encode_decode(act)
                if handle.use_error_term:
                    # The error is measured against the *clean* reconstruction, so edits still move the
                    # output and no edit gives back the model's own activation (up to float rounding).
                    recon = recon.float() + (x.float() - clean.float()).detach()
                return site.write(act, recon)

            hooks.append((site, replace))
            continue

        pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def read_input(act: torch.Tensor, hook: Any, encode_decode: Callable[..., Any] = encode_decode,
                       pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = pending) -> None:
            _, recon, clean = encode_decode(act)
            pending["out"] = (recon, clean)

        out_site = Site.of(sae, output=True)

        def write_output(act: torch.Tensor, hook: Any,
                         pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = pending,
                         site: Site = out_site, sae: SAE = sae) -> torch.Tensor:
            if "out" not in pending:
                raise ConfigError(
                    f"the transcoder's output hook {sae.cfg.hook_name_out!r} fired before its input hook "
                    f"{sae.cfg.hook_name!r} (or the input hook never fired)",
                    field="hook_name_out",
                )
            recon, clean = pending.pop("out")
            if handle.use_error_term:
                y = site.read(act, int(sae.cfg.d_out or sae.cfg.d_in), sae.device)
                recon = recon.float() + (y.float() - clean.float()).detach()
            return site.write(act, recon)

        hooks.append((site, read_input))
        hooks.append((out_site, write_output))
    return hooks


# ------------------------------------------------------------------------------------------------ public API


@contextmanager
def splice(model: Any, saes: SAEs, *, use_error_term: bool = False,
           edits: Mapping[str, FeatureEdit] | None = None) -> Iterator[SpliceHandle]:
    """Within the block, the model runs with each SAE's reconstruction in place of its activation.

    ``saes`` is one SAE, a list, or ``{name: sae}``; handle keys are the names, else each ``cfg.hook_name``.
    For a transcoder (``hook_name_out`` differs from ``hook_name``) the input is read at ``hook_name`` and the
    activation at ``hook_name_out`` is replaced by the prediction. Several SAEs on one hook are applied in the
    order given, each reading what the previous one wrote.

    ``use_error_term=True`` adds back the SAE's error, ``(x - sae(x)).detach()``, so the model's outputs are
    unchanged (up to float rounding) while the features sit on the forward path: they can be read, edited
    (``edits``) and differentiated, which is what attribution and steering experiments need.

    Reconstructions are cast to the activation's dtype and device (the SAE may live elsewhere, e.g. fp32
    SAE on a bf16 model). ``model`` is any kind :func:`~sae_hub.adapters.adapt` accepts (TransformerLens 3/4,
    a ``transformers`` model, an nnsight ``LanguageModel``); every site is placed, and its width checked against
    the SAE's (:class:`~sae_hub.errors.ShapeMismatchError` naming both), before anything is attached. The hooks
    are removed on exit, also when the block raises; hooks the user attached are untouched.

    Example::

        with splice(model, [sae_a, sae_b], use_error_term=True) as sp:
            sp.edits[sae_a.cfg.hook_name] = lambda f: f.index_fill_(-1, torch.tensor([12]), 0.0)
            logits = model(tokens)
        sp.features[sae_b.cfg.hook_name]   # [batch, pos, d_sae] of the last forward
    """
    named = _named_saes(saes)
    handle = SpliceHandle(saes=named, use_error_term=use_error_term, edits=dict(edits or {}))
    unknown = set(handle.edits) - set(named)
    if unknown:
        raise ConfigError(f"edits for unknown SAE key(s) {sorted(unknown)}; keys are {sorted(named)}")
    adapter = adapt(model)
    _check_sites(adapter, named)
    with adapter.hooks(_splice_hooks(handle)):
        yield handle


def _check_sites(adapter: ModelAdapter, named: Mapping[str, SAE]) -> None:
    """Place every SAE's site(s) and check widths before any hook is attached or any forward runs."""
    for sae in named.values():
        adapter.check(Site.of(sae), sae.cfg.d_in)
        if sae.cfg.is_transcoder:
            adapter.check(Site.of(sae, output=True), int(sae.cfg.d_out or sae.cfg.d_in))


_splice = splice  # run_with_saes has a parameter called ``splice``


def run_with_saes(
    model: Any,
    tokens_or_text: str | Sequence[str] | torch.Tensor,
    saes: SAEs,
    *,
    sparse: bool = False,
    splice: bool = False,
    use_error_term: bool = False,
    stop_early: bool = True,
    prepend_bos: bool | None = None,
    tokenizer: Any = None,
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Run the model once and return ``(logits or None, {key: features})`` for one or several SAEs.

    Features are dense ``[batch, pos, d_sae]``, or with ``sparse=True``: ``(values, indices)`` of shape
    ``[batch, pos, k]`` for topk SAEs (from ``encode_topk``, never materialising the dense tensor when not
    splicing), and a coalesced ``torch.sparse_coo`` tensor ``[batch, pos, d_sae]`` for the others (their
    sparsity is data-dependent, so there is no fixed-width form). Keys as in :func:`splice`.

    Without ``splice`` the model is only read, and with ``stop_early`` (default) the forward pass is cut as
    soon as every SAE's input hook has fired (reading a layer-3 SAE on a 40-layer model costs 4 layers);
    the logits are then ``None``. With ``splice=True`` the reconstructions replace the activations (see
    :func:`splice`, ``use_error_term``) and the full pass runs, returning logits.

    ``model`` is any kind :func:`~sae_hub.adapters.adapt` accepts. Text (a string or list of strings) is
    tokenised as TransformerLens's ``to_tokens`` does (BOS first unless ``prepend_bos=False``; a ``transformers``
    model needs ``tokenizer=``, an nnsight model brings its own); a token tensor is used as is. Runs under
    ``torch.no_grad()``; use :func:`splice` for gradients.
    A hook that never fires during the pass (TransformerLens lists a few that a given architecture never
    calls) raises :class:`~sae_hub.errors.ConfigError` rather than returning nothing.

    A :class:`~sae_hub.multilayer.MultiLayerDictionary` (transcoder set, CLT) as ``saes`` returns
    ``{model layer: features}``, a :class:`~sae_hub.multilayer.CrossCoder` ``{site position: features}`` (see
    :func:`sae_hub.replacement.run_with_dictionary`; splicing runs the replacement model).
    """
    # --- multi-layer dictionaries: the replacement model (sae_hub.replacement) ---
    from sae_hub.multilayer import CrossCoder, MultiLayerDictionary

    if isinstance(saes, (MultiLayerDictionary, CrossCoder)):
        from sae_hub.replacement import run_with_dictionary

        # keys are model layers (int) here, not SAE names: the declared dict[str, Any] is for SAEs
        return run_with_dictionary(model, tokens_or_text, saes, sparse=sparse, splice=splice,  # type: ignore[return-value]
                                   use_error_term=use_error_term, stop_early=stop_early, prepend_bos=prepend_bos,
                                   tokenizer=tokenizer)
    # ---
    named = _named_saes(saes)
    adapter = adapt(model, tokenizer)
    if isinstance(tokens_or_text, torch.Tensor):
        tokens = tokens_or_text
    else:
        tokens = adapter.to_tokens(tokens_or_text, prepend_bos)

    with torch.no_grad():
        if splice:
            with _splice(adapter, named, use_error_term=use_error_term) as handle:
                spliced_logits = adapter.forward(tokens)
            missing = [k for k in named if k not in handle.features]
            _check_fired(named, missing)
            feats: dict[str, Any] = {}
            for key, sae in named.items():
                f = handle.features[key].detach()
                feats[key] = _to_sparse(sae, f) if sparse else f
            return spliced_logits, feats

        _check_sites(adapter, named)
        feats = {}
        waiting = set(named)
        hooks: list[tuple[Site, Callable[..., Any]]] = []
        for key, sae in named.items():
            site = Site.of(sae)
            use_topk = sparse and sae.cfg.architecture == "topk"

            def read(act: torch.Tensor, hook: Any, key: str = key, sae: SAE = sae, site: Site = site,
                     use_topk: bool = use_topk) -> None:
                x = site.read(act, sae.cfg.d_in, sae.device)
                if use_topk:
                    feats[key] = sae.encode_topk(x)
                else:
                    f = sae.encode(x)
                    feats[key] = f.to_sparse().coalesce() if sparse else f
                waiting.discard(key)
                if stop_early and not waiting:
                    raise StopForward

            hooks.append((site, read))

        logits: torch.Tensor | None = None
        with adapter.hooks(hooks):
            try:
                out = adapter.forward(tokens)
                logits = None if stop_early else out
            except StopForward:
                pass
        _check_fired(named, sorted(waiting))
        return logits, feats


def _to_sparse(sae: SAE, f: torch.Tensor) -> SparseFeatures:
    """Dense features -> the sparse form :func:`run_with_saes` documents for this SAE."""
    if sae.cfg.architecture == "topk":
        vals, idx = f.topk(int(sae.cfg.k or 0), dim=-1, sorted=False)
        return vals, idx
    return f.to_sparse().coalesce()


def _check_fired(named: Mapping[str, SAE], missing: Sequence[str]) -> None:
    if missing:
        hooks = sorted({str(named[k].cfg.hook_name) for k in missing})
        raise ConfigError(
            f"hook(s) {hooks} never fired during the forward pass: this model does not call them (some "
            "TransformerLens hook points exist for other architectures only)",
            field="hook_name",
        )
