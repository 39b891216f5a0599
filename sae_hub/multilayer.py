"""Multi-layer dictionaries: per-layer transcoder sets and cross-layer transcoders (CLTs), stated once.

A :class:`MultiLayerDictionary` reads the model at ``n`` source layers ``cfg.layers`` (model layer numbers, in
order; position ``i`` in every list below is ``cfg.layers[i]``) and writes at the same layers. Canonical semantics
(every multi-layer loader converts into exactly this; see ``docs/formats.md#multi-layer``):

    z_i  = x_i @ W_enc.i + b_enc.i                    x_i: the activation at hook_names_in[i]
    f_i  = relu(z_i)                                            relu
         = z_i * (z_i > threshold.i)                            jumprelu
         = the k largest of relu(z_i) per row, rest 0           topk
    out_t = b_dec.t + sum over sources i with t in targets[i] of f_i @ W_dec.i[:, targets[i].index(t), :]
            [+ x_t @ W_skip.t.T  when has_skip]       out_t: the prediction of the activation at hook_names_out[t]

Shapes (``d_sae`` may differ per source): ``W_enc.i [d_in, d_sae_i]``, ``b_enc.i [d_sae_i]``,
``threshold.i [d_sae_i]``, ``W_dec.i [d_sae_i, len(targets[i]), d_out]``, ``b_dec.t [d_out]``,
``W_skip.t [d_out, d_in]``; tensor keys use the position ``i``/``t``, not the model layer. ``targets[i]`` lists
target positions in ascending order, none before ``i`` (a feature writes only at or after the layer it reads):
a per-layer transcoder set has ``targets[i] == [i]``, a CLT ``targets[i] == [i, ..., n-1]``. The skip term
reads the TARGET layer's own input (circuit-tracer's convention for both kinds).

Why JumpReLU is ``z * (z > threshold)`` here and ``relu(z) * (z > threshold)`` in :mod:`sae_hub.sae`: it is what
circuit-tracer computes, and the two agree whenever the threshold is >= 0; with a negative threshold, a
pre-activation between the threshold and 0 passes through negative here. So a per-layer view as an ``SAE``
(:meth:`MultiLayerDictionary.layer_sae`) is refused for a layer with a negative threshold rather than changed.

Features and outputs go in and out as ``{model_layer: tensor}`` dicts (a stacked tensor or a sequence in
``cfg.layers`` order is accepted as input too), because ``d_sae`` may differ per layer. Math runs in float32
(float64 for float64 weights: :func:`compute_dtype`) and results are cast to the weight dtype, as in
:mod:`sae_hub.sae`. Loading memory-maps: tensors read through :func:`sae_hub.files.read_safetensors` become the
parameters without a copy.

A per-layer view is exact, and :meth:`~MultiLayerDictionary.layer_sae` returns an ``SAE`` transcoder, only when
source ``i`` writes to its own layer alone and no other source writes there (always so for a transcoder set;
for a CLT only in the degenerate case where every decoder but the diagonal is absent).

Crosscoders (:class:`CrossCoder`, the sibling with the same conventions): ONE latent space read from ``n`` sites
(layers, or the same hook in several models) and decoded back to each site ``h``::

    s    = sum over sites h of (x_h @ W_enc.h + b_enc.h)          the shared pre-activation [..., d_sae]
    f_h  = relu(s)                                                relu (the same for every site)
         = s * (s > threshold.h)                                  jumprelu (a threshold per site and feature)
    out_h = f_h @ W_dec.h + b_dec.h

Why a threshold per site: lm-saes gates ``s * ||W_D[h, j]||`` against one threshold ``theta_j`` and divides the
codes back by that norm, which is exactly ``s * (s > theta_j / ||W_D[h, j]||)``; its codes differ per site.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sae_hub.config import Provenance
from sae_hub.errors import (
    ConfigError,
    IncompatibleSaveError,
    ShapeMismatchError,
    UnknownArchitectureError,
    UnsupportedSAEError,
)
from sae_hub.files import dtype_from_str, dtype_to_str

if TYPE_CHECKING:
    from sae_hub.sae import SAE

__all__ = ["KINDS", "MULTILAYER_ARCHITECTURES", "CrossCoder", "CrossCoderConfig", "MultiLayerConfig",
           "MultiLayerDictionary", "circuit_tracer_files", "compute_dtype", "crosscoder_param_shapes", "layer_of",
           "multilayer_param_shapes", "save_circuit_tracer"]

KINDS = ("transcoder_set", "clt")
MULTILAYER_ARCHITECTURES = ("relu", "jumprelu", "topk")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """What multi-layer dictionaries and crosscoders compute in for weights of ``dtype``: float32, or float64 for
    float64 weights (half-precision weights are upcast: thresholds and sums decided in bf16 would flip)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _posint(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}", field=name)
    return value


@dataclass
class MultiLayerConfig:
    """Typed config of a :class:`MultiLayerDictionary`: the math fields (``kind`` to ``has_skip``) fully determine
    what it computes; hooks, ``model_name`` and ``provenance`` say where it reads and writes and where it came from.

    ``d_sae`` is one int per source (an int is expanded), ``targets`` defaults from ``kind`` (``[i]`` for a
    transcoder set, ``[i..n-1]`` for a CLT), ``d_out`` defaults to ``d_in``. Hook lists hold full hook names
    (``blocks.3.mlp.hook_in``) or None where unknown.
    """

    kind: str
    layers: list[int]
    d_in: int
    d_sae: list[int] | int
    d_out: int | None = None
    architecture: str = "relu"
    k: int | None = None
    targets: list[list[int]] | None = None
    has_skip: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    model_name: str | None = None
    hook_names_in: list[str | None] | None = None
    hook_names_out: list[str | None] | None = None
    provenance: Provenance = field(default_factory=Provenance)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown multi-layer kind {self.kind!r}; expected one of {', '.join(KINDS)}",
                              field="kind")
        if self.architecture not in MULTILAYER_ARCHITECTURES:
            raise UnknownArchitectureError(
                f"unknown architecture {self.architecture!r} for a multi-layer dictionary; expected one of "
                f"{', '.join(MULTILAYER_ARCHITECTURES)}", field="architecture")
        if not isinstance(self.layers, (list, tuple)) or not self.layers:
            raise ConfigError(f"layers must be a non-empty list of model layer numbers, got {self.layers!r}",
                              field="layers")
        self.layers = [int(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in self.layers]
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in self.layers) or \
                any(a >= b for a, b in itertools.pairwise(self.layers)):
            raise ConfigError(f"layers must be ascending, distinct, non-negative integers, got {self.layers}",
                              field="layers")
        n = len(self.layers)
        _posint(self.d_in, "d_in")
        self.d_out = self.d_in if self.d_out is None else _posint(self.d_out, "d_out")
        if isinstance(self.d_sae, int) and not isinstance(self.d_sae, bool):
            self.d_sae = [self.d_sae] * n
        if not isinstance(self.d_sae, (list, tuple)) or len(self.d_sae) != n:
            raise ConfigError(f"d_sae must be one positive integer per source layer ({n}), got {self.d_sae!r}",
                              field="d_sae")
        self.d_sae = [_posint(d, "d_sae") for d in self.d_sae]
        if self.targets is None:
            self.targets = [[i] for i in range(n)] if self.kind == "transcoder_set" else \
                [list(range(i, n)) for i in range(n)]
        if not isinstance(self.targets, (list, tuple)) or len(self.targets) != n:
            raise ConfigError(f"targets must list the target positions of each of the {n} sources, got "
                              f"{self.targets!r}", field="targets")
        self.targets = [list(t) for t in self.targets]
        for i, t in enumerate(self.targets):
            if not t or any(not isinstance(x, int) or isinstance(x, bool) or not i <= x < n for x in t) or \
                    any(a >= b for a, b in itertools.pairwise(t)):
                raise ConfigError(f"targets[{i}] must be ascending positions in [{i}, {n}) (a feature writes at or "
                                  f"after the layer it reads), got {t!r}", field="targets")
        if self.kind == "transcoder_set" and any(t != [i] for i, t in enumerate(self.targets)):
            raise ConfigError("a transcoder set decodes each layer to itself only (targets[i] == [i])",
                              field="targets")
        if self.architecture == "topk":
            if self.k is None or not isinstance(self.k, int) or isinstance(self.k, bool) or \
                    not 1 <= self.k <= min(self.d_sae):
                raise ConfigError(f"a topk dictionary needs an integer k in [1, {min(self.d_sae)}], got {self.k!r}",
                                  field="k")
        elif self.k is not None:
            raise ConfigError(f"k is defined for topk only (architecture {self.architecture})", field="k")
        if not isinstance(self.has_skip, bool):
            raise ConfigError(f"has_skip must be true or false, got {self.has_skip!r}", field="has_skip")
        for name in ("hook_names_in", "hook_names_out"):
            hooks = getattr(self, name)
            if hooks is None:
                setattr(self, name, [None] * n)
            elif not isinstance(hooks, (list, tuple)) or len(hooks) != n or \
                    any(h is not None and not isinstance(h, str) for h in hooks):
                raise ConfigError(f"{name} must hold one hook name (or null) per layer ({n}), got {hooks!r}",
                                  field=name)
            else:
                setattr(self, name, list(hooks))
        if self.model_name is not None and not isinstance(self.model_name, str):
            raise ConfigError(f"model_name must be a string or null, got {self.model_name!r}", field="model_name")

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def position(self, layer: int) -> int:
        """The position of model layer ``layer`` in :attr:`layers`; a layer not covered is a ConfigError."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise ConfigError(f"layer {layer!r} is not one of this dictionary's layers {self.layers}",
                              field="layer") from None

    def record(self, conversion: str) -> None:
        """Note an exact transformation applied on load (kept in provenance)."""
        self.provenance.conversions.append(conversion)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["provenance"] = self.provenance.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultiLayerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown multi-layer config field(s) {unknown}", field=unknown[0])
        kw = dict(d)
        kw["provenance"] = Provenance.from_dict(kw.get("provenance"))
        return cls(**kw)


def multilayer_param_shapes(cfg: MultiLayerConfig) -> dict[str, tuple[int, ...]]:
    """The canonical tensors a dictionary with this config owns, and their shapes (the one source loaders and
    :meth:`MultiLayerDictionary.from_state_dict` validate against)."""
    d_out = int(cfg.d_out or cfg.d_in)
    shapes: dict[str, tuple[int, ...]] = {}
    assert isinstance(cfg.d_sae, list) and cfg.targets is not None
    for i, d_sae in enumerate(cfg.d_sae):
        shapes[f"W_enc.{i}"] = (cfg.d_in, d_sae)
        shapes[f"b_enc.{i}"] = (d_sae,)
        if cfg.architecture == "jumprelu":
            shapes[f"threshold.{i}"] = (d_sae,)
        shapes[f"W_dec.{i}"] = (d_sae, len(cfg.targets[i]), d_out)
    for t in range(cfg.n_layers):
        shapes[f"b_dec.{t}"] = (d_out,)
        if cfg.has_skip:
            shapes[f"W_skip.{t}"] = (d_out, cfg.d_in)
    return shapes


class _Dictionary(nn.Module):
    """What the multi-site classes share: per-site parameter lists (``b_dec[t]``) and the dtype they compute in."""

    b_dec: nn.ParameterList

    @property
    def dtype(self) -> torch.dtype:
        return self.b_dec[0].dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """float32, or float64 for float64 weights (a float64 dictionary is for exact references, e.g. finite
        differences, which float32 rounding would swamp)."""
        return compute_dtype(self.dtype)


class MultiLayerDictionary(_Dictionary):
    """A per-layer transcoder set or a cross-layer transcoder (see the module docstring for what it computes).

    Build one from a config (``MultiLayerDictionary(cfg)``, zero-initialised), from canonical tensors
    (:meth:`from_state_dict`), from files (:meth:`load_from_disk`) or from single-layer SAE transcoders
    (:meth:`from_saes`). Parameters live in ``nn.ParameterList`` s indexed by position; :meth:`canonical_state_dict`
    gives the ``W_enc.i`` keys.
    """

    def __init__(self, cfg: MultiLayerConfig, *, _tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        shapes = multilayer_param_shapes(cfg)
        if _tensors is None:
            dt = dtype_from_str(cfg.dtype)
            _tensors = {k: torch.zeros(s, dtype=dt) for k, s in shapes.items()}
        n = cfg.n_layers

        def plist(prefix: str) -> nn.ParameterList:
            return nn.ParameterList([nn.Parameter(_tensors[f"{prefix}.{i}"]) for i in range(n)])

        self.W_enc = plist("W_enc")
        self.b_enc = plist("b_enc")
        self.W_dec = plist("W_dec")
        self.b_dec = plist("b_dec")
        self.threshold = plist("threshold") if cfg.architecture == "jumprelu" else None
        self.W_skip = plist("W_skip") if cfg.has_skip else None
        # which sources write to each target, and at which slot of their W_dec: the decode plan
        assert cfg.targets is not None
        self._writers: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for i, ts in enumerate(cfg.targets):
            for j, t in enumerate(ts):
                self._writers[t].append((i, j))

    # ------------------------------------------------------------------ compute

    def _pos(self, layer: int) -> int:
        return self.cfg.position(layer)

    def _check_input(self, x: torch.Tensor, layer: int) -> None:
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"the input for layer {layer} is a {type(x).__name__}, not a tensor", field="x")
        if x.shape[-1:] != (self.cfg.d_in,):
            raise ShapeMismatchError(f"the input for layer {layer} has shape {list(x.shape)}; the last dimension "
                                     f"must be d_in={self.cfg.d_in}", field="x")

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Features ``[..., d_sae_l]`` of model layer ``layer`` for its input activations ``x [..., d_in]``."""
        i = self._pos(layer)
        self._check_input(x, layer)
        ct = self.compute_dtype
        z = x.to(ct) @ self.W_enc[i].to(ct) + self.b_enc[i].to(ct)
        arch = self.cfg.architecture
        if arch == "relu":
            f = F.relu(z)
        elif arch == "jumprelu":
            assert self.threshold is not None
            f = z * (z > self.threshold[i].to(ct))
        else:
            vals, idx = F.relu(z).topk(int(self.cfg.k or 0), dim=-1, sorted=False)
            f = torch.zeros_like(z).scatter_(-1, idx, vals)
        return f.to(self.dtype)

    def _by_layer(self, values: Mapping[int, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor,
                  what: str) -> list[torch.Tensor]:
        """``values`` in position order: a dict keyed by model layer (every layer exactly once), or a stacked
        tensor / sequence in ``cfg.layers`` order."""
        n = self.cfg.n_layers
        if isinstance(values, Mapping):
            keys = sorted(values)
            if keys != sorted(self.cfg.layers):
                raise ConfigError(f"{what} must be given for exactly the layers {self.cfg.layers}, got {keys}",
                                  field=what)
            return [values[layer] for layer in self.cfg.layers]
        if isinstance(values, (torch.Tensor, Sequence)):
            if len(values) != n:
                raise ShapeMismatchError(f"{what} has {len(values)} entries along its first axis; this dictionary "
                                         f"has {n} layers {self.cfg.layers}", field=what)
            return list(values)
        raise ConfigError(f"{what} must be a dict {{layer: tensor}}, a sequence or a stacked tensor, got "
                          f"{type(values).__name__}", field=what)

    def encode_all(self, inputs: Mapping[int, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor
                   ) -> dict[int, torch.Tensor]:
        """Features of every layer: ``{layer: encode(layer, inputs[layer])}``."""
        xs = self._by_layer(inputs, "inputs")
        return {layer: self.encode(layer, x) for layer, x in zip(self.cfg.layers, xs, strict=True)}

    def decode(self, features: Mapping[int, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor
               ) -> dict[int, torch.Tensor]:
        """Outputs by target layer, ``{layer: [..., d_out]}``, from the features of every source layer (all are
        needed: a target's output sums the decoders of every source that writes to it). No skip term: that
        needs the inputs (:meth:`forward`)."""
        fs = self._by_layer(features, "features")
        for i, f in enumerate(fs):
            want = self.cfg.d_sae[i]  # type: ignore[index]
            if not isinstance(f, torch.Tensor) or f.shape[-1:] != (want,):
                got = list(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ShapeMismatchError(f"features of layer {self.cfg.layers[i]} have shape {got}; the last "
                                         f"dimension must be d_sae={want}", field="features")
        lead = {tuple(f.shape[:-1]) for f in fs}
        if len(lead) != 1:
            raise ShapeMismatchError(f"features of different layers have different leading shapes {sorted(lead)}",
                                     field="features")
        out: dict[int, torch.Tensor] = {}
        ct = self.compute_dtype
        for t, writers in enumerate(self._writers):
            acc = self.b_dec[t].to(ct).expand(*fs[0].shape[:-1], -1).clone()
            for i, j in writers:
                acc = acc + fs[i].to(ct) @ self.W_dec[i][:, j, :].to(ct)
            out[self.cfg.layers[t]] = acc.to(self.dtype)
        return out

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The skip term ``x @ W_skip.T`` of target ``layer`` (its own input ``x``)."""
        if self.W_skip is None:
            raise ConfigError("this dictionary has no skip connection", field="has_skip")
        t = self._pos(layer)
        self._check_input(x, layer)
        ct = self.compute_dtype
        return (x.to(ct) @ self.W_skip[t].to(ct).T).to(self.dtype)

    def forward(self, inputs: Mapping[int, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor
                ) -> dict[int, torch.Tensor]:
        """Predicted outputs of every target layer from the inputs of every layer (skip terms included)."""
        xs = self._by_layer(inputs, "inputs")
        out = self.decode(self.encode_all(xs))
        if self.W_skip is not None:
            for t, layer in enumerate(self.cfg.layers):
                ct = self.compute_dtype
                out[layer] = (out[layer].to(ct) + xs[t].to(ct) @ self.W_skip[t].to(ct).T).to(self.dtype)
        return out

    # ------------------------------------------------------------------ views

    def decoder(self, source: int, target: int) -> torch.Tensor:
        """``W_dec[source -> target]`` ``[d_sae_source, d_out]`` (model layers); a pair with no decoder is an error."""
        i, t = self._pos(source), self._pos(target)
        assert self.cfg.targets is not None
        if t not in self.cfg.targets[i]:
            raise ConfigError(f"layer {source} has no decoder to layer {target}", field="target")
        return self.W_dec[i][:, self.cfg.targets[i].index(t), :]

    def layer_sae(self, layer: int) -> SAE:
        """Layer ``layer`` as an ``SAE`` transcoder (sharing this dictionary's tensors), where that is exact.

        Exact means: this source decodes only to its own layer, no other source writes there, and (jumprelu)
        no threshold is negative (see the module docstring). Anything else is an :class:`UnsupportedSAEError`
        saying which condition fails, never a lossy view.
        """
        from sae_hub.config import SAEConfig
        from sae_hub.sae import SAE

        cfg = self.cfg
        i = self._pos(layer)
        assert cfg.targets is not None and isinstance(cfg.d_sae, list)
        if cfg.targets[i] != [i]:
            others = [cfg.layers[t] for t in cfg.targets[i] if t != i]
            raise UnsupportedSAEError(f"layer {layer} also decodes to layers {others}: a single-layer SAE cannot "
                                      "hold those decoders", field="targets")
        writers = [cfg.layers[s] for s, _ in self._writers[i] if s != i]
        if writers:
            raise UnsupportedSAEError(f"layers {writers} also write to layer {layer}: its output is not this "
                                      "layer's reconstruction alone", field="targets")
        tensors = {"W_enc": self.W_enc[i].data, "b_enc": self.b_enc[i].data,
                   "W_dec": self.W_dec[i].data[:, 0, :], "b_dec": self.b_dec[i].data}
        if self.threshold is not None:
            th = self.threshold[i].data
            if bool((th < 0).any()):
                raise UnsupportedSAEError(
                    f"layer {layer} has {int((th < 0).sum())} negative threshold(s): here z*(z>threshold) passes "
                    "negative values that an SAE's relu(z)*(z>threshold) zeroes", field=f"threshold.{i}")
            tensors["threshold"] = th
        if self.W_skip is not None:
            tensors["W_skip"] = self.W_skip[i].data
        sae_cfg = SAEConfig(
            architecture=cfg.architecture, d_in=cfg.d_in, d_sae=cfg.d_sae[i], d_out=cfg.d_out, k=cfg.k,
            has_skip=cfg.has_skip, dtype=dtype_to_str(self.dtype), model_name=cfg.model_name,
            hook_name=cfg.hook_names_in[i] if cfg.hook_names_in else None,
            hook_name_out=cfg.hook_names_out[i] if cfg.hook_names_out else None,
            provenance=Provenance(source_format=cfg.provenance.source_format,
                                  source_files=[dict(f) for f in cfg.provenance.source_files],
                                  conversions=[*cfg.provenance.conversions, f"layer {layer} of a {cfg.kind}"]),
        )
        return SAE.from_state_dict(sae_cfg, tensors, device=self.b_dec[i].device)

    def saes(self) -> list[SAE]:
        """Every layer as an ``SAE`` transcoder (:meth:`layer_sae`), in ``cfg.layers`` order."""
        return [self.layer_sae(layer) for layer in self.cfg.layers]

    @classmethod
    def from_saes(cls, saes: Sequence[SAE], layers: Sequence[int] | None = None) -> MultiLayerDictionary:
        """A transcoder set from single-layer SAE transcoders, one per layer (``layers`` defaults to each SAE's
        ``blocks.L.`` hook, else 0..n-1). Refuses SAEs whose computation the set cannot state exactly:
        normalisation, input centering, gated, decoder-norm top-k, or mismatched shapes/architectures."""
        if not saes:
            raise ConfigError("from_saes needs at least one SAE", field="saes")
        first = saes[0].cfg
        for n, sae in enumerate(saes):
            c = sae.cfg
            bad = [name for name, ok in (
                ("architecture", c.architecture == first.architecture and c.architecture in MULTILAYER_ARCHITECTURES),
                ("d_in", c.d_in == first.d_in), ("d_out", c.d_out == first.d_out), ("k", c.k == first.k),
                ("has_skip", c.has_skip == first.has_skip),
                ("apply_b_dec_to_input", not c.apply_b_dec_to_input),
                ("normalize_activations", c.normalize_activations == "none" and c.norm_scaling_factor is None
                 and c.norm_scaling_factor_out is None),
                ("rescale_acts_by_decoder_norm", not (c.rescale_acts_by_decoder_norm or c.rank_by_decoder_norm)),
                ("reshape_activations", c.reshape_activations == "none"),
            ) if not ok]
            if bad:
                raise UnsupportedSAEError(f"SAE {n} cannot join this transcoder set exactly ({bad[0]} is "
                                          f"{getattr(c, bad[0])!r}; the first SAE has {getattr(first, bad[0])!r})",
                                          field=bad[0])
            if c.architecture == "jumprelu" and bool((sae.get_parameter("threshold") < 0).any()):
                raise UnsupportedSAEError(f"SAE {n} has a negative threshold (relu(z)*(z>t) differs from z*(z>t))",
                                          field="threshold")
        found = [layer_of(s.cfg.hook_name) for s in saes]
        if layers is not None:
            at = [int(x) for x in layers]
        elif all(x is not None for x in found) and len(set(found)) == len(found):
            at = [int(x) for x in found if x is not None]
        else:
            at = list(range(len(saes)))
        if len(at) != len(saes):
            raise ConfigError(f"layers has {len(at)} entries for {len(saes)} SAEs", field="layers")
        order = sorted(range(len(saes)), key=lambda n: at[n])
        dts = {s.W_enc.dtype for s in saes}
        if len(dts) != 1:
            raise ConfigError(f"the SAEs have different dtypes {sorted(map(str, dts))}; cast them first",
                              field="dtype")
        cfg = MultiLayerConfig(
            kind="transcoder_set", layers=[at[n] for n in order], d_in=first.d_in,
            d_sae=[saes[n].cfg.d_sae for n in order], d_out=first.d_out, architecture=first.architecture,
            k=first.k, has_skip=first.has_skip, dtype=dtype_to_str(dts.pop()), model_name=first.model_name,
            hook_names_in=[saes[n].cfg.hook_name for n in order],
            hook_names_out=[saes[n].cfg.hook_name_out for n in order],
        )
        tensors: dict[str, torch.Tensor] = {}
        for i, n in enumerate(order):
            s = saes[n]
            tensors.update({f"W_enc.{i}": s.W_enc.data, f"b_enc.{i}": s.get_parameter("b_enc").data,
                            f"W_dec.{i}": s.W_dec.data[:, None, :], f"b_dec.{i}": s.b_dec.data})
            if first.architecture == "jumprelu":
                tensors[f"threshold.{i}"] = s.get_parameter("threshold").data
            if first.has_skip:
                tensors[f"W_skip.{i}"] = s.get_parameter("W_skip").data
        return cls.from_state_dict(cfg, tensors, device=saes[0].W_enc.device)

    # ------------------------------------------------------------------ construction and disk

    def canonical_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors under their canonical keys (``W_enc.i``, ...), as loaders produce them."""
        out: dict[str, torch.Tensor] = {}
        groups = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec,
                  "threshold": self.threshold, "W_skip": self.W_skip}
        for prefix, plist in groups.items():
            if plist is not None:
                out.update({f"{prefix}.{i}": p.data for i, p in enumerate(plist)})
        return out

    @classmethod
    def from_state_dict(cls, cfg: MultiLayerConfig, state_dict: Mapping[str, torch.Tensor], *,
                        device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                        source: str | os.PathLike[str] | None = None) -> MultiLayerDictionary:
        """Build around existing (e.g. memory-mapped) tensors: no init and no copy unless ``dtype``/``device``
        differ. Missing, unexpected, misshapen or non-float tensors are a :class:`ShapeMismatchError` naming
        the tensor (and ``source``)."""
        tensors = _checked(multilayer_param_shapes(cfg), state_dict, f"a {cfg.kind} over layers {cfg.layers}",
                           cfg, device=device, dtype=dtype, source=source)
        return cls(cfg, _tensors=tensors)

    @classmethod
    def load_from_disk(cls, path: str | os.PathLike[str], *, format: str | None = None,
                       device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                       **options: Any) -> MultiLayerDictionary:
        """Load a transcoder set or CLT from a local folder, detecting its format unless ``format`` names a
        loader; ``options`` go to the loader. Weights stay memory-mapped unless ``dtype``/``device`` differ."""
        from sae_hub.loading import load_local

        cfg, state_dict, source = load_local(Path(path), format=format, options=options, kind="multilayer")
        if not isinstance(cfg, MultiLayerConfig):
            raise UnsupportedSAEError("this is a single-layer SAE; load it with sae_hub.SAE.load_from_disk",
                                      path=source, field="format")
        return cls.from_state_dict(cfg, state_dict, device=device, dtype=dtype, source=source)

    @classmethod
    def from_pretrained(cls, release: str, sae_id: str, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, revision: str | None = None,
                        force_download: bool = False, local_files_only: bool | None = None,
                        format: str | None = None, **options: Any) -> MultiLayerDictionary:
        """Load transcoder set / CLT ``sae_id`` of a release (or of a Hub repo id ``org/name``, ``sae_id`` then
        being the folder in it): the same locate -> fetch -> load steps as ``SAE.from_pretrained``, building this
        class. Only the files the format reads are fetched; weights stay memory-mapped. The release table's
        model name and release are recorded (its hook facts are per-SAE and do not apply to a multi-layer set)."""
        from sae_hub import hub
        from sae_hub.releases import locate

        src = locate(release, sae_id, revision=revision, format=format)
        cfg, state_dict, source = hub.load_located(src, kind="multilayer", options=options,
                                                   offline=local_files_only, force=force_download)
        if not isinstance(cfg, MultiLayerConfig):
            raise UnsupportedSAEError("this is a single-layer SAE; load it with sae_hub.SAE.from_pretrained",
                                      path=source, field="format")
        if src.release is not None and src.entry is not None:
            cfg.model_name = cfg.model_name or src.release.model
            cfg.extra.setdefault("release", {"name": src.release.name, "sae_id": src.entry.id})
        return cls.from_state_dict(cfg, state_dict, device=device, dtype=dtype, source=source)

    def save_circuit_tracer(self, path: str | os.PathLike[str], *, feature_input_hook: str | None = None,
                            feature_output_hook: str | None = None, scan: str | None = None) -> Path:
        """Write circuit-tracer 0.5.0 files that its own loaders read as this dictionary (see
        :func:`save_circuit_tracer`); what it cannot hold is an IncompatibleSaveError naming the field."""
        return save_circuit_tracer(self, path, feature_input_hook=feature_input_hook,
                                   feature_output_hook=feature_output_hook, scan=scan)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"kind={c.kind}, layers={c.layers}, architecture={c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, "
                f"d_out={c.d_out}, has_skip={c.has_skip}")


@dataclass
class CrossCoderConfig:
    """Typed config of a :class:`CrossCoder`: ``n_sites`` inputs (hooks ``hook_names[h]``, in models
    ``model_names[h]`` where they differ) sharing one latent space of ``d_sae`` features."""

    n_sites: int
    d_in: int
    d_sae: int
    d_out: int | None = None
    architecture: str = "relu"
    dtype: str = "float32"
    device: str = "cpu"
    hook_names: list[str | None] | None = None
    model_names: list[str | None] | None = None
    provenance: Provenance = field(default_factory=Provenance)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("n_sites", "d_in", "d_sae"):
            _posint(getattr(self, name), name)
        self.d_out = self.d_in if self.d_out is None else _posint(self.d_out, "d_out")
        if self.architecture not in ("relu", "jumprelu"):
            raise UnknownArchitectureError(f"a crosscoder here is relu or jumprelu, got {self.architecture!r}",
                                           field="architecture")
        for name in ("hook_names", "model_names"):
            v = getattr(self, name)
            if v is None:
                setattr(self, name, [None] * self.n_sites)
            elif not isinstance(v, (list, tuple)) or len(v) != self.n_sites or \
                    any(h is not None and not isinstance(h, str) for h in v):
                raise ConfigError(f"{name} must hold one string (or null) per site ({self.n_sites}), got {v!r}",
                                  field=name)
            else:
                setattr(self, name, list(v))

    def record(self, conversion: str) -> None:
        self.provenance.conversions.append(conversion)


def crosscoder_param_shapes(cfg: CrossCoderConfig) -> dict[str, tuple[int, ...]]:
    """The canonical tensors of a crosscoder and their shapes (keys by site position ``h``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for h in range(cfg.n_sites):
        shapes[f"W_enc.{h}"] = (cfg.d_in, cfg.d_sae)
        shapes[f"b_enc.{h}"] = (cfg.d_sae,)
        shapes[f"W_dec.{h}"] = (cfg.d_sae, int(cfg.d_out or cfg.d_in))
        shapes[f"b_dec.{h}"] = (int(cfg.d_out or cfg.d_in),)
        if cfg.architecture == "jumprelu":
            shapes[f"threshold.{h}"] = (cfg.d_sae,)
    return shapes


class CrossCoder(_Dictionary):
    """One latent space read from several sites and decoded to each (see the module docstring). Inputs, features
    and outputs are sequences (or stacked tensors) in site order."""

    def __init__(self, cfg: CrossCoderConfig, *, _tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.n_sites

        def plist(prefix: str) -> nn.ParameterList:
            return nn.ParameterList([nn.Parameter(_tensors[f"{prefix}.{h}"]) for h in range(n)])

        self.W_enc, self.b_enc = plist("W_enc"), plist("b_enc")
        self.W_dec, self.b_dec = plist("W_dec"), plist("b_dec")
        self.threshold = plist("threshold") if cfg.architecture == "jumprelu" else None

    def _sites(self, values: Sequence[torch.Tensor] | torch.Tensor, what: str, width: int) -> list[torch.Tensor]:
        if not isinstance(values, (torch.Tensor, Sequence)) or len(values) != self.cfg.n_sites:
            raise ShapeMismatchError(f"{what} must hold one tensor per site ({self.cfg.n_sites})", field=what)
        out = list(values)
        shapes = {tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in out}
        if None in shapes or len(shapes) != 1 or next(iter(shapes))[-1:] != (width,):  # type: ignore[index]
            raise ShapeMismatchError(f"{what} must be tensors of one shape [..., {width}], got "
                                     f"{sorted(map(str, shapes))}", field=what)
        return out

    def encode(self, inputs: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        """Features of each site ``[..., d_sae]`` from the inputs of every site."""
        xs = self._sites(inputs, "inputs", self.cfg.d_in)
        ct = self.compute_dtype
        s = sum(x.to(ct) @ self.W_enc[h].to(ct) + self.b_enc[h].to(ct) for h, x in enumerate(xs))
        assert isinstance(s, torch.Tensor)
        if self.threshold is None:
            f = F.relu(s).to(self.dtype)
            return [f] * self.cfg.n_sites
        return [(s * (s > th.to(ct))).to(self.dtype) for th in self.threshold]

    def decode(self, features: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        """Outputs ``[..., d_out]`` of each site from its features."""
        fs = self._sites(features, "features", self.cfg.d_sae)
        ct = self.compute_dtype
        return [(f.to(ct) @ self.W_dec[h].to(ct) + self.b_dec[h].to(ct)).to(self.dtype) for h, f in enumerate(fs)]

    def forward(self, inputs: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        return self.decode(self.encode(inputs))

    @classmethod
    def from_state_dict(cls, cfg: CrossCoderConfig, state_dict: Mapping[str, torch.Tensor], *,
                        device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                        source: str | os.PathLike[str] | None = None) -> CrossCoder:
        """Build around existing tensors (validated like :meth:`MultiLayerDictionary.from_state_dict`)."""
        tensors = _checked(crosscoder_param_shapes(cfg), state_dict, f"a crosscoder over {cfg.n_sites} sites",
                           cfg, device=device, dtype=dtype, source=source)
        return cls(cfg, _tensors=tensors)

    @classmethod
    def load_from_disk(cls, path: str | os.PathLike[str], *, format: str | None = None,
                       device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                       **options: Any) -> CrossCoder:
        """Load a crosscoder from a local folder (format detected unless ``format`` names a ``kind="crosscoder"``
        loader, e.g. ``llamascopium-crosscoder``); ``options`` go to the loader."""
        from sae_hub.loading import load_local

        cfg, state_dict, source = load_local(Path(path), format=format, options=options, kind="crosscoder")
        if not isinstance(cfg, CrossCoderConfig):
            raise UnsupportedSAEError("this is not a crosscoder", path=source, field="format")
        return cls.from_state_dict(cfg, state_dict, device=device, dtype=dtype, source=source)

    @classmethod
    def from_pretrained(cls, release: str, sae_id: str, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, revision: str | None = None,
                        force_download: bool = False, local_files_only: bool | None = None,
                        format: str | None = None, **options: Any) -> CrossCoder:
        """Load crosscoder ``sae_id`` of a release (or of a Hub repo id ``org/name``, ``sae_id`` then being the
        folder in it) through the same locate -> fetch -> load steps as ``SAE.from_pretrained`` and
        :meth:`MultiLayerDictionary.from_pretrained`: only the files the format reads are fetched, and verified;
        weights stay memory-mapped. A release of another kind is refused before anything is fetched, naming the
        class that loads it (so a wrong call costs no download). The release's model fills the per-site model
        names the files leave unknown, and the release and id are recorded in ``cfg.extra["release"]``."""
        from sae_hub import hub
        from sae_hub.releases import locate

        src = locate(release, sae_id, revision=revision, format=format)
        cfg, state_dict, source = hub.load_located(src, kind="crosscoder", options=options,
                                                   offline=local_files_only, force=force_download)
        if not isinstance(cfg, CrossCoderConfig):
            raise UnsupportedSAEError("this is not a crosscoder", path=source, field="format")
        if src.release is not None and src.entry is not None:
            model = src.release.model
            cfg.model_names = [m if m is not None else model for m in (cfg.model_names or [None] * cfg.n_sites)]
            cfg.extra.setdefault("release", {"name": src.release.name, "sae_id": src.entry.id})
        return cls.from_state_dict(cfg, state_dict, device=device, dtype=dtype, source=source)


def _checked(expected: dict[str, tuple[int, ...]], state_dict: Mapping[str, torch.Tensor], what: str,
             cfg: MultiLayerConfig | CrossCoderConfig, *, device: str | torch.device, dtype: torch.dtype | str | None,
             source: str | os.PathLike[str] | None) -> dict[str, torch.Tensor]:
    """The SAE's own checks (missing, unexpected, shape, float), then the tensors placed in the compute dtype."""
    from sae_hub.sae import check_state_dict, place_state_dict

    check_state_dict(expected, state_dict, what, source)
    return place_state_dict(state_dict, cfg, what, device=device, dtype=dtype, source=source)


def layer_of(hook: str | None) -> int | None:
    """The block index in a TransformerLens hook name (``blocks.3.mlp.hook_in`` -> 3), or None."""
    if hook and hook.startswith("blocks."):
        head = hook.split(".")[1]
        if head.isdigit():
            return int(head)
    return None


# ---------------------------------------------------------------------- writing circuit-tracer files

CIRCUIT_TRACER_CONFIG = "config.yaml"
# Files a circuit-tracer folder may hold besides the weights: a stale one would be read with the new weights.
_CT_STALE = re.compile(r"(layer_\d+|W_enc_\d+|W_dec_\d+)\.safetensors|config\.yaml|wandb-config\.yaml|"
                       r"wanb-config\.yaml")


def _ct_refuse(message: str, path: str | os.PathLike[str], field: str) -> IncompatibleSaveError:
    return IncompatibleSaveError(f"circuit-tracer 0.5.0 cannot hold this: {message}", path=path, field=field)


def _ct_relative_hook(d: MultiLayerDictionary, name: str, option: str | None, option_name: str,
                      path: str | os.PathLike[str]) -> str:
    """The hook circuit-tracer's config names relative to a block (``mlp.hook_in`` for ``blocks.L.mlp.hook_in``):
    one for every layer, from the dictionary's hook names (or what its circuit-tracer config said), checked
    against ``option`` when both are known; unknown and not given is a refusal (circuit-tracer's loaders need it)."""
    cfg = d.cfg
    hooks: list[str | None] = getattr(cfg, name) or [None] * cfg.n_layers
    found: set[str] = set()
    for layer, hook in zip(cfg.layers, hooks, strict=True):
        if hook is None:
            continue
        prefix = f"blocks.{layer}."
        if not hook.startswith(prefix) or len(hook) == len(prefix):
            raise _ct_refuse(f"{name} has {hook!r} for layer {layer}; circuit-tracer names hooks relative to "
                             f"blocks.{{layer}} (blocks.{layer}.<hook>)", path, name)
        found.add(hook[len(prefix):])
    unknown = [layer for layer, hook in zip(cfg.layers, hooks, strict=True) if hook is None]
    if unknown and found:
        raise _ct_refuse(f"{name} is unknown for layers {unknown} and {sorted(found)[0]!r} for the others", path,
                         name)
    known = cfg.extra.get(option_name)
    if isinstance(known, str) and known:
        found.add(known)
    if len(found) > 1:
        raise _ct_refuse(f"{name} names different hooks per layer {sorted(found)}; circuit-tracer's config holds "
                         f"one {option_name} for every layer", path, name)
    if option is not None:
        if not isinstance(option, str) or not option or option.startswith("blocks."):
            raise ConfigError(f"{option_name} must be a hook name relative to a block (e.g. 'mlp.hook_in'), got "
                              f"{option!r}", path=path, field=option_name)
        if found and option not in found:
            raise ConfigError(f"{option_name}={option!r} disagrees with this dictionary's {name} "
                              f"({sorted(found)[0]!r}); change the dictionary's config instead", path=path,
                              field=option_name)
        return option
    if not found:
        raise _ct_refuse(f"the hooks are unknown ({name} is null) and circuit-tracer's config.yaml needs "
                         f"{option_name}; pass {option_name}=...", path, option_name)
    return found.pop()


def circuit_tracer_files(d: MultiLayerDictionary, path: str | os.PathLike[str] = "<dictionary>", *,
                         feature_input_hook: str | None = None, feature_output_hook: str | None = None,
                         scan: str | None = None) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """What :func:`save_circuit_tracer` writes, without writing: ``({file name: tensors}, config.yaml dict)``.

    Refusals (:class:`~sae_hub.errors.IncompatibleSaveError` naming the field) are everything circuit-tracer 0.5.0
    would load as something else or not at all: topk (its loaders build ReLU or JumpReLU only), ``d_out != d_in``
    (its transcoders are square), per-layer ``d_sae`` (one ``d_transcoder``), layers other than ``0..n-1`` (its
    ``TranscoderSet``/CLT index layers from 0 without gaps; a single transcoder may sit at any layer), a CLT
    skip connection (its ``to_safetensors``/``load_clt`` store none), and unknown or per-layer hooks. One exact
    fold: a CLT decoder that is absent here (sparse ``targets``) is written as zeros, which adds exactly nothing,
    and recorded in the provenance the config carries.
    """
    cfg = d.cfg
    n = cfg.n_layers
    assert isinstance(cfg.d_sae, list) and cfg.targets is not None
    if cfg.architecture not in ("relu", "jumprelu"):
        raise _ct_refuse(f"architecture {cfg.architecture!r}: its loaders build ReLU, or JumpReLU when a threshold "
                         "is stored", path, "architecture")
    if cfg.d_out != cfg.d_in:
        raise _ct_refuse(f"d_out={cfg.d_out} differs from d_in={cfg.d_in}: its transcoders read and write d_model",
                         path, "d_out")
    if len(set(cfg.d_sae)) != 1:
        raise _ct_refuse(f"d_sae differs per layer {cfg.d_sae}: one d_transcoder covers every layer", path, "d_sae")
    single = cfg.kind == "transcoder_set" and n == 1
    if cfg.layers != list(range(n)) and not single:
        raise _ct_refuse(f"layers {cfg.layers}: its {'TranscoderSet' if cfg.kind == 'transcoder_set' else 'CLT'} "
                         f"covers layers 0..n-1 without a gap", path, "layers")
    if cfg.kind == "clt" and cfg.has_skip:
        raise _ct_refuse("a CLT skip connection: CrossLayerTranscoder.to_safetensors and load_clt store no W_skip",
                         path, "has_skip")
    hin = _ct_relative_hook(d, "hook_names_in", feature_input_hook, "feature_input_hook", path)
    hout = _ct_relative_hook(d, "hook_names_out", feature_output_hook, "feature_output_hook", path)
    conversions = list(cfg.provenance.conversions)
    files: dict[str, dict[str, torch.Tensor]] = {}
    for i, layer in enumerate(cfg.layers):
        W_enc = d.W_enc[i].detach().T  # circuit-tracer: [d_sae, d_in], z = F.linear(x, W_enc, b_enc); made
        # contiguous file by file as it is written
        if cfg.kind == "transcoder_set":
            t = {"W_enc": W_enc, "W_dec": d.W_dec[i].detach()[:, 0, :], "b_enc": d.b_enc[i].detach(),
                 "b_dec": d.b_dec[i].detach()}
            if d.threshold is not None:
                t["activation_function.threshold"] = d.threshold[i].detach()
            if d.W_skip is not None:
                t["W_skip"] = d.W_skip[i].detach()
            files[f"layer_{layer}.safetensors"] = t
            continue
        t = {f"W_enc_{i}": W_enc, f"b_enc_{i}": d.b_enc[i].detach(), f"b_dec_{i}": d.b_dec[i].detach()}
        if d.threshold is not None:
            t[f"threshold_{i}"] = d.threshold[i].detach()
        files[f"W_enc_{i}.safetensors"] = t
        W_dec = d.W_dec[i].detach()
        if cfg.targets[i] != list(range(i, n)):
            full = W_dec.new_zeros((cfg.d_sae[i], n - i, int(cfg.d_out or cfg.d_in)))
            full[:, [tg - i for tg in cfg.targets[i]], :] = W_dec
            absent = [cfg.layers[tg] for tg in range(i, n) if tg not in cfg.targets[i]]
            conversions.append(f"layer {layer}: absent decoders to layers {absent} written as zeros (exact)")
            W_dec = full
        files[f"W_dec_{i}.safetensors"] = {f"W_dec_{i}": W_dec}
    from sae_hub import __version__

    conversions.append(f"written as circuit-tracer 0.5.0 {cfg.kind} files by sae-hub {__version__}")
    config: dict[str, Any] = {"model_kind": "transcoder_set" if cfg.kind == "transcoder_set"
                              else "cross_layer_transcoder"}
    if cfg.model_name is not None:
        config["model_name"] = cfg.model_name
    config["feature_input_hook"] = hin
    config["feature_output_hook"] = hout
    scan = scan if scan is not None else cfg.extra.get("scan")
    if scan is not None:
        config["scan"] = scan
    prov = cfg.provenance.to_dict()
    prov["conversions"] = conversions
    config["sae_hub"] = {"version": __version__, "provenance": prov}
    return files, config


def save_circuit_tracer(d: MultiLayerDictionary, path: str | os.PathLike[str], *,
                        feature_input_hook: str | None = None, feature_output_hook: str | None = None,
                        scan: str | None = None) -> Path:
    """Write ``d`` as circuit-tracer 0.5.0 files: what its ``to_safetensors`` writes, plus the ``config.yaml`` its
    Hub repos carry and ``load_transcoders_from_cache`` reads (``model_kind``, ``model_name``,
    ``feature_input_hook``/``feature_output_hook`` relative to a block, ``scan`` when known; sae-hub's provenance
    under ``sae_hub``, which circuit-tracer ignores).

    Transcoder set: ``layer_{i}.safetensors`` with ``W_enc [d_sae, d_in]``, ``W_dec [d_sae, d_out]``, ``b_enc``,
    ``b_dec``, ``activation_function.threshold`` (JumpReLU) and ``W_skip [d_out, d_in]`` (skip). CLT:
    ``W_enc_{i}.safetensors`` (``W_enc_{i}``, ``b_enc_{i}``, ``b_dec_{i}``, ``threshold_{i}``) and
    ``W_dec_{i}.safetensors`` (``W_dec_{i} [d_sae, n - i, d_out]``). Tensors keep their dtype. Why no fold for
    thresholds: circuit-tracer computes ``z * (z > threshold)``, exactly this class's JumpReLU, negative
    thresholds included. What it cannot hold is refused before anything is written (:func:`circuit_tracer_files`).

    The folder is built whole and swapped into place (:func:`sae_hub.files.atomic_folder`); circuit-tracer files
    already there (another set's ``layer_{i}`` or ``W_enc_{i}``, a config) are replaced, never mixed in.
    """
    import yaml

    from sae_hub.files import atomic_folder, write_safetensors_atomic

    files, config = circuit_tracer_files(d, path, feature_input_hook=feature_input_hook,
                                         feature_output_hook=feature_output_hook, scan=scan)
    dst = Path(path)
    stale = {p.name for p in dst.iterdir() if _CT_STALE.fullmatch(p.name)} if dst.is_dir() else set()
    with atomic_folder(dst, replaces={*files, CIRCUIT_TRACER_CONFIG, *stale}) as tmp:
        for name, tensors in files.items():
            write_safetensors_atomic(tmp / name, tensors, metadata={"format": "pt"})
        (tmp / CIRCUIT_TRACER_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return dst
