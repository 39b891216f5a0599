"""Temporal SAEs (Lubana, Rager et al., "Priors in Time", arXiv 2511.01836; ``canrager/temporalSAEs`` on the Hub):
a dictionary that codes each token of a SEQUENCE partly from the earlier tokens, stated once.

Why a class of its own: ``sae_hub.SAE`` is per-token (each row of ``x`` is coded alone); a temporal SAE's code at
position ``t`` depends on positions ``0..t`` of the same sequence, through attention layers. Its inputs are
``[batch, seq, d_in]`` sequences (a ``[seq, d_in]`` tensor is one sequence); position 0 is the start of the
context, so coding a chunk of a sequence is not coding the whole sequence and keeping that chunk.

Canonical semantics (what the authors' ``sae/saeTemporal.py`` computes; checked against its outputs in
``tests/test_temporal.py``). With ``lam = 1 / (4 * d_in)``, ``eps = 1e-6``, ``s = cfg.scaling_factor`` and
``W_e = W_dec.T`` when ``tied_weights`` else ``W_enc``::

    r = s * x - b_dec                                      x: model activations [B, L, d_in]
    pred = 0                                               [B, L, d_sae]
    for each attention layer i (in order):
        u    = relu((lam * r) @ W_e)                       [B, L, d_sae]
        c_t  = u_{t-1} for t >= 1, c_0 = 0                 the context is the previous positions, shifted by one
        q = u @ W_q.i + b_q.i,  k = c @ W_k.i + b_k.i,  v = c @ W_v.i + b_v.i
        a    = causal softmax attention per head: position t attends to c_0..c_t, scores q.k / sqrt(head dim)
               (q, k split into n_heads heads of d_attn / n_heads, v into heads of d_sae / n_heads)
        p    = relu(concat_heads(a) @ W_o.i + b_o.i)       the code predicted from context
        g    = <p @ W_dec, r> / (||p @ W_dec|| + eps)^2    per position: project r onto the prediction
        pred = pred + g * p
        r    = r - g * (p @ W_dec)
    h     = (lam * r) @ W_e
    novel = relu(h)                                         relu
          = the k largest of relu(h) per position, rest 0   topk
          = relu(h) * (relu(h) > threshold)                 batchtopk in inference mode (threshold: a scalar)
          = 0                                               nullify
    recon = ((novel + pred) @ W_dec + b_dec) / s

``d_attn = d_sae // bottleneck_factor``. ``encode(x)`` returns both codes (:class:`TemporalCodes`: the sparse
``novel`` codes, the interpretable features, and the dense-ish ``pred`` codes); ``decode(novel, pred)`` maps
codes back to model space; ``forward(x)`` is the reconstruction. The scaling ``s`` is the constant the authors
multiplied activations by before training (``sae.scaling_factor`` in ``conf.yaml``); codes equal the original
code's codes on ``x * s`` and ``recon * s`` equals its reconstruction.

Shapes (``x @ W`` orientation throughout, as in :mod:`sae_hub.sae`): ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``,
``W_enc [d_in, d_sae]`` (untied only), ``threshold []`` (batchtopk only), and per layer ``i``:
``attn.i.W_q``/``attn.i.W_k [d_sae, d_attn]``, ``attn.i.b_q``/``attn.i.b_k [d_attn]``,
``attn.i.W_v``/``attn.i.W_o [d_sae, d_sae]``, ``attn.i.b_v``/``attn.i.b_o [d_sae]``.

Math runs in float32 (float64 for float64 weights) and results are cast to the weight dtype, as in
:mod:`sae_hub.sae`. Not represented: the original's ``batchtopk`` in TRAINING mode (the top ``k * B * L`` codes of
the whole batch, so one sequence's codes depend on the others, with a running threshold updated by every forward):
the loader refuses such a checkpoint and names the conf field that selects inference mode.

On a model: :meth:`TemporalSAE.hook` gives a hook function for the whole-sequence activations at
``cfg.hook_name`` (TransformerLens ``run_with_hooks`` / ``add_hook``). It is exact for full forward passes over
unpadded (or right-padded) sequences; a KV-cached generation step sees one new position without its context, so
it is not a valid place for it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sae_hub.config import Provenance
from sae_hub.errors import ConfigError, ShapeMismatchError, UnknownArchitectureError, UnsupportedSAEError
from sae_hub.files import dtype_to_str

if TYPE_CHECKING:
    from sae_hub.releases import Source

__all__ = ["DIFF_TYPES", "TemporalCodes", "TemporalConfig", "TemporalSAE", "temporal_param_shapes"]

#: How the novel (per-position) part is sparsified; ``batchtopk`` means its inference mode (a fixed threshold).
DIFF_TYPES = ("relu", "topk", "batchtopk", "nullify")
EPS = 1e-6


def _posint(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}", field=name)
    return value


@dataclass
class TemporalConfig:
    """Typed config of a :class:`TemporalSAE`: the math fields (``d_in`` to ``scaling_factor``) fully determine
    what it computes; ``model_name``/``hook_name``/``neuronpedia_id`` say where it reads, ``provenance`` where it
    came from, ``extra`` what else its files or release said (``l0``, the training dtype, ...)."""

    d_in: int
    d_sae: int
    n_heads: int
    n_attn_layers: int
    bottleneck_factor: int
    sae_diff_type: str
    k: int | None = None
    tied_weights: bool = True
    scaling_factor: float = 1.0
    dtype: str = "float32"
    device: str = "cpu"
    model_name: str | None = None
    hook_name: str | None = None
    neuronpedia_id: str | None = None
    provenance: Provenance = field(default_factory=Provenance)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae", "n_heads", "n_attn_layers", "bottleneck_factor"):
            _posint(getattr(self, name), name)
        if self.sae_diff_type not in DIFF_TYPES:
            raise UnknownArchitectureError(f"unknown sae_diff_type {self.sae_diff_type!r} for a temporal SAE; "
                                           f"expected one of {', '.join(DIFF_TYPES)}", field="sae_diff_type")
        if self.d_sae % (self.bottleneck_factor * self.n_heads):
            raise ConfigError(f"d_sae ({self.d_sae}) must be a multiple of bottleneck_factor * n_heads "
                              f"({self.bottleneck_factor} * {self.n_heads}): the attention splits d_sae / "
                              "bottleneck_factor into n_heads heads", field="bottleneck_factor")
        if self.sae_diff_type in ("topk", "batchtopk"):
            _posint(self.k, "k")
            if self.k is not None and self.k > self.d_sae:
                raise ConfigError(f"k ({self.k}) exceeds d_sae ({self.d_sae})", field="k")
        elif self.k is not None:
            raise ConfigError(f"k is only for topk/batchtopk, not sae_diff_type {self.sae_diff_type!r}", field="k")
        if not isinstance(self.tied_weights, bool):
            raise ConfigError(f"tied_weights must be a bool, got {self.tied_weights!r}", field="tied_weights")
        s = self.scaling_factor
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise ConfigError(f"scaling_factor must be a finite number > 0, got {s!r}", field="scaling_factor")
        self.scaling_factor = float(s)

    @property
    def d_attn(self) -> int:
        """Width of the queries and keys (all heads together): ``d_sae // bottleneck_factor``."""
        return self.d_sae // self.bottleneck_factor

    def record(self, conversion: str) -> None:
        """Note a transformation of the weights in the provenance (as ``SAEConfig`` does)."""
        self.provenance.conversions.append(conversion)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def temporal_param_shapes(cfg: TemporalConfig) -> dict[str, tuple[int, ...]]:
    """The canonical tensors of a temporal SAE and their shapes (see the module docstring)."""
    d, n, a = cfg.d_in, cfg.d_sae, cfg.d_attn
    out: dict[str, tuple[int, ...]] = {"W_dec": (n, d), "b_dec": (d,)}
    if not cfg.tied_weights:
        out["W_enc"] = (d, n)
    if cfg.sae_diff_type == "batchtopk":
        out["threshold"] = ()
    for i in range(cfg.n_attn_layers):
        out.update({f"attn.{i}.W_q": (n, a), f"attn.{i}.b_q": (a,), f"attn.{i}.W_k": (n, a), f"attn.{i}.b_k": (a,),
                    f"attn.{i}.W_v": (n, n), f"attn.{i}.b_v": (n,), f"attn.{i}.W_o": (n, n), f"attn.{i}.b_o": (n,)})
    return out


class TemporalCodes(NamedTuple):
    """The two codes of a temporal SAE, each ``[batch, seq, d_sae]``: ``novel`` (sparse, what the context did
    not predict: the features) and ``pred`` (predicted from the earlier positions by the attention layers)."""

    novel: torch.Tensor
    pred: torch.Tensor


class TemporalSAE(nn.Module):
    """A temporal SAE (see the module docstring for exactly what it computes). Build it from files
    (:meth:`load_from_disk`), a release (:meth:`from_pretrained`) or tensors (:meth:`from_state_dict`)."""

    def __init__(self, cfg: TemporalConfig, *, _tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.cfg = cfg
        # "attn.0.W_q" is not a valid parameter name (dots), so parameters live in a dict under "attn__0__W_q"
        self._params = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v, requires_grad=False)
                                         for k, v in _tensors.items()})

    def param(self, key: str) -> torch.Tensor:
        """A canonical tensor by its key (``W_dec``, ``attn.0.W_q``, ...)."""
        return self._params[key.replace(".", "__")]

    def canonical_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors under their canonical keys, as loaders produce them."""
        return {k.replace("__", "."): p.data for k, p in self._params.items()}

    @property
    def dtype(self) -> torch.dtype:
        return self.param("W_dec").dtype

    def _compute_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def _w(self, key: str) -> torch.Tensor:
        return self.param(key).to(self._compute_dtype())

    def _check_input(self, x: torch.Tensor, what: str = "x") -> tuple[torch.Tensor, bool]:
        """``x`` as ``[batch, seq, width]`` and whether it was one ``[seq, width]`` sequence."""
        width = self.cfg.d_in if what == "x" else self.cfg.d_sae
        if not isinstance(x, torch.Tensor):
            raise ShapeMismatchError(f"{what} must be a tensor, got {type(x).__name__}", field=what)
        if x.dim() not in (2, 3) or x.shape[-1] != width or x.shape[-2] == 0:
            raise ShapeMismatchError(
                f"{what} has shape {list(x.shape)}; a temporal SAE takes sequences [batch, seq, {width}] (or one "
                f"sequence [seq, {width}]), because each position is coded from the earlier ones", field=what)
        if not x.is_floating_point():
            raise ShapeMismatchError(f"{what} has dtype {dtype_to_str(x.dtype)}; it must be floating point",
                                     field=what)
        return (x.unsqueeze(0), True) if x.dim() == 2 else (x, False)

    def encode(self, x: torch.Tensor, *, k: int | None = None) -> TemporalCodes:
        """``(novel, pred)`` codes of ``x`` ([batch, seq, d_in] model activations, or one [seq, d_in] sequence).

        ``k`` overrides the top-k of a topk SAE at inference (the original's ``inf_k``)."""
        x3, single = self._check_input(x)
        cfg = self.cfg
        if k is not None:
            if cfg.sae_diff_type != "topk":
                raise ConfigError(f"k= applies to a topk temporal SAE, this one is {cfg.sae_diff_type!r}", field="k")
            _posint(k, "k")
            if k > cfg.d_sae:
                raise ConfigError(f"k ({k}) exceeds d_sae ({cfg.d_sae})", field="k")
        cd = self._compute_dtype()
        lam = 1.0 / (4 * cfg.d_in)
        W_dec = self._w("W_dec")
        W_e = W_dec.T if cfg.tied_weights else self._w("W_enc")
        r = x3.to(device=W_dec.device, dtype=cd) * cfg.scaling_factor - self._w("b_dec")
        B, L, _ = r.shape
        pred = torch.zeros(B, L, cfg.d_sae, device=r.device, dtype=cd)
        H = cfg.n_heads
        for i in range(cfg.n_attn_layers):
            u = F.relu((r * lam) @ W_e)
            ctx = torch.cat((torch.zeros_like(u[:, :1]), u[:, :-1]), dim=1)
            q = (u @ self._w(f"attn.{i}.W_q") + self._w(f"attn.{i}.b_q")).view(B, L, H, -1).transpose(1, 2)
            kk = (ctx @ self._w(f"attn.{i}.W_k") + self._w(f"attn.{i}.b_k")).view(B, L, H, -1).transpose(1, 2)
            v = (ctx @ self._w(f"attn.{i}.W_v") + self._w(f"attn.{i}.b_v")).view(B, L, H, -1).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, kk, v, is_causal=True)  # scale 1/sqrt(head dim of q)
            a = a.transpose(1, 2).reshape(B, L, cfg.d_sae)
            p = F.relu(a @ self._w(f"attn.{i}.W_o") + self._w(f"attn.{i}.b_o"))
            Dp = p @ W_dec
            g = (Dp * r).sum(-1, keepdim=True) / (Dp.norm(dim=-1, keepdim=True) + EPS).pow(2)
            pred = pred + g * p
            r = r - g * Dp
        f = F.relu((r * lam) @ W_e)
        if cfg.sae_diff_type == "topk":
            kval = k if k is not None else cfg.k
            assert kval is not None  # TemporalConfig checks it
            idx = torch.topk(f, kval, dim=-1).indices
            f = torch.zeros_like(f).scatter_(-1, idx, f.gather(-1, idx))
        elif cfg.sae_diff_type == "batchtopk":
            f = f * (f > self._w("threshold"))
        elif cfg.sae_diff_type == "nullify":
            f = torch.zeros_like(f)
        novel, pred = f.to(self.dtype), pred.to(self.dtype)
        return TemporalCodes(novel[0], pred[0]) if single else TemporalCodes(novel, pred)

    def decode(self, novel: torch.Tensor, pred: torch.Tensor | None = None) -> torch.Tensor:
        """``((novel + pred) @ W_dec + b_dec) / scaling_factor``: model-space activations.

        Why ``pred`` is separate and optional: the full reconstruction needs both codes; ``decode(novel)`` alone
        is the reconstruction from the novel part only (plus ``b_dec``), the quantity the paper compares."""
        n3, single = self._check_input(novel, "novel")
        z = n3.to(self._compute_dtype())
        if pred is not None:
            p3, _ = self._check_input(pred, "pred")
            if p3.shape != n3.shape:
                raise ShapeMismatchError(f"pred has shape {list(pred.shape)}, novel {list(novel.shape)}",
                                         field="pred")
            z = z + p3.to(z.dtype)
        out = ((z @ self._w("W_dec") + self._w("b_dec")) / self.cfg.scaling_factor).to(self.dtype)
        return out[0] if single else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x`` (same shape): ``decode(*encode(x))``."""
        return self.decode(*self.encode(x))

    def hook(self, *, store: dict[str, torch.Tensor] | None = None, replace: bool = True
             ) -> Callable[..., torch.Tensor]:
        """A hook function ``fn(activations, hook=None)`` for a model's hook at ``cfg.hook_name`` over whole
        sequences ``[batch, seq, d_in]`` (TransformerLens: ``model.run_with_hooks(tokens, fwd_hooks=[(name, fn)])``).

        It returns the reconstruction (``replace=True``) or the activations unchanged (``replace=False``, to read
        features without changing the model), and puts the codes in ``store["novel"]`` / ``store["pred"]`` when
        ``store`` is given. Exact for full forward passes; not for KV-cached generation (see the module docstring).
        """

        def fn(activations: torch.Tensor, hook: Any = None) -> torch.Tensor:
            codes = self.encode(activations)
            if store is not None:
                store["novel"], store["pred"] = codes.novel, codes.pred
            if not replace:
                return activations
            return self.decode(*codes).to(activations.dtype)

        return fn

    @classmethod
    def from_state_dict(cls, cfg: TemporalConfig, state_dict: Mapping[str, torch.Tensor], *,
                        device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                        source: str | os.PathLike[str] | None = None) -> TemporalSAE:
        """Build around existing (e.g. memory-mapped) canonical tensors: no copy unless ``dtype``/``device``
        differ. Missing, unexpected, misshapen or non-float tensors are a :class:`ShapeMismatchError` naming the
        tensor (and ``source``)."""
        from sae_hub.sae import check_state_dict, place_state_dict

        check_state_dict(temporal_param_shapes(cfg), state_dict, "this temporal SAE", source)
        return cls(cfg, _tensors=place_state_dict(state_dict, cfg, "a temporal SAE", device=device, dtype=dtype,
                                                  source=source))

    @classmethod
    def load_from_disk(cls, path: str | os.PathLike[str], *, format: str | None = None,
                       device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                       **options: Any) -> TemporalSAE:
        """Load a temporal SAE from a local folder (``conf.yaml`` + ``latest_ckpt.safetensors``), its format
        detected unless ``format`` names a ``kind="temporal"`` loader. Weights stay memory-mapped unless
        ``dtype``/``device`` differ."""
        from sae_hub.loading import load_local

        cfg, state_dict, source = load_local(Path(path), format=format, options=options, kind="temporal")
        if not isinstance(cfg, TemporalConfig):
            raise UnsupportedSAEError("this is not a temporal SAE", path=source, field="format")
        return cls.from_state_dict(cfg, state_dict, device=device, dtype=dtype, source=source)

    @classmethod
    def from_pretrained(cls, release: str, sae_id: str, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, revision: str | None = None,
                        force_download: bool = False, local_files_only: bool | None = None,
                        format: str | None = None, **options: Any) -> TemporalSAE:
        """Load temporal SAE ``sae_id`` of a release (SAELens's names, e.g. ``temporal-sae-gemma-2-2b``) or of a
        Hub repo id (``sae_id`` then being the folder in it): the same locate -> fetch -> load steps as
        ``SAE.from_pretrained``, building this class. The release table's hook, model, Neuronpedia id and ``l0``
        are recorded; its ``norm_scaling_factor`` is checked against ``conf.yaml``'s ``scaling_factor`` (the
        constant the SAE was trained with, which is what is used)."""
        from sae_hub import hub
        from sae_hub.releases import locate

        src = locate(release, sae_id, revision=revision, format=format)
        cfg, state_dict, source = hub.load_located(src, kind="temporal", options=options, offline=local_files_only,
                                                   force=force_download)
        if not isinstance(cfg, TemporalConfig):
            raise UnsupportedSAEError("this is not a temporal SAE", path=source, field="format")
        _apply_release(cfg, src)
        return cls.from_state_dict(cfg, state_dict, device=device, dtype=dtype, source=source)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"d_in={c.d_in}, d_sae={c.d_sae}, n_attn_layers={c.n_attn_layers}, n_heads={c.n_heads}, "
                f"d_attn={c.d_attn}, sae_diff_type={c.sae_diff_type}, k={c.k}, tied_weights={c.tied_weights}, "
                f"scaling_factor={c.scaling_factor}")


def _apply_release(cfg: TemporalConfig, src: Source) -> None:
    """What a release table says about the SAE: its hook and Neuronpedia id win (the table is the authority on
    them), the files' model name wins where they have one, ``l0`` and the release are recorded in ``extra``. A
    ``norm_scaling_factor`` differing from ``conf.yaml``'s is recorded, not applied: the conf's is the one the
    weights were trained with."""
    facts = src.facts
    if facts is None:
        return
    if facts.hook:
        cfg.hook_name = facts.hook
    cfg.model_name = cfg.model_name or facts.model
    if facts.neuronpedia:
        cfg.neuronpedia_id = facts.neuronpedia
    if facts.l0 is not None:
        cfg.extra.setdefault("l0", facts.l0)
    nsf = facts.norm_scaling_factor
    if nsf is not None and not math.isclose(nsf, cfg.scaling_factor, rel_tol=1e-6):
        cfg.extra["release_norm_scaling_factor"] = nsf
        import logging

        logging.getLogger(__name__).warning(
            "%s: the release table's norm_scaling_factor %r differs from conf.yaml's scaling_factor %r; using "
            "conf.yaml's (what the SAE was trained with)", facts.label, nsf, cfg.scaling_factor)
    cfg.extra.setdefault("release", {"name": facts.release, "sae_id": facts.sae_id})
