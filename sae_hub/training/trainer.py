"""Train sparse autoencoders: ``train_sae(TrainConfig(...), activations) -> SAE``.

Architectures and their losses (x is scaled to E‖x‖ = √d_in, the constant folded into the weights at save):

- **topk**: keep the k largest of relu(z) per token; L = ‖x − x̂‖²/σ² + α·AuxK, σ² the data variance measured at
  init (OpenAI's normalised MSE, ≈ FVU; a constant denominator keeps the loss a per-token mean, so data-parallel
  ranks average to the single-process gradient). Unit-norm decoder rows, gradient's parallel component removed.
  AuxK (Gao et al. 2024): the top ``k_aux`` *dead* latents reconstruct the residual, scaled by
  min(#dead / k_aux, 1).
- **batchtopk** (Bussmann et al. 2024): the k·B largest relu(z) over the whole batch, same loss; saved either as
  a jumprelu SAE with one global threshold calibrated on held-out tokens, or as a plain topk SAE.
- **relu**: Anthropic's April 2024 recipe: L = ‖x − x̂‖² + λ·Σ_j f_j‖W_dec_j‖, no decoder-norm constraint, λ warmed
  up, lr warmed up and decayed, gradient clipping at 1; decoder norms are folded into the encoder at save.
- **jumprelu** (Rajamanoharan et al. 2024): f = z·H(z − θ) with θ = exp(log θ) learned through a straight-through
  estimator with a rectangle kernel of width ``jumprelu_bandwidth``; L = ‖x − x̂‖² + λ·Σ_j H(z_j − θ_j).

The topk/batchtopk step never materialises a [B, d_sae] gradient: the encoder forward is one dense GEMM
(optionally bf16), selection keeps the (token, latent) pairs, the decoder is ``F.embedding_bag``, and the
backward (``_SparseEncode``, ``_SparseDecode``) touches only the selected latents. On CPU, value gradients are
a sampled dense-dense product and weight gradients one CSR × dense GEMM each, written into buffers reused across
steps (fresh tens-of-MB buffers cost page faults); on GPUs torch's embedding_bag backward kernels do the same.
Nothing in a step reads a value back to the host; scalars are pulled only every ``log_every`` steps and when the
dead-latent mask is refreshed (every ``dead_window_tokens / 10`` tokens).
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import math
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError
from sae_hub.metrics import FiringTracker, FVUAccumulator
from sae_hub.sae import SAE

__all__ = ["TensorSource", "TrainConfig", "Trainer", "latest_checkpoint", "sparse_decode", "sparse_encode",
           "train_sae"]

ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu")
_CKPT_RE = re.compile(r"^step_(\d+)$")


# ====================================================================== configuration


@dataclass
class TrainConfig:
    """Everything a training run needs; ``None`` fields get the per-architecture defaults of :meth:`resolved`.

    ``batch_size`` is the *global* batch (tokens per optimiser step); with ``world_size`` data-parallel ranks each
    reads ``batch_size / world_size`` of them. Length is ``steps``, or ``total_tokens / batch_size``, or for a
    tensor (or a DataLoader over a sized dataset) one pass over it.
    """

    architecture: str = "topk"
    d_in: int | None = None  # None: from the activations (tensor width, source.d_in)
    d_sae: int = 16384
    k: int | None = 32  # topk / batchtopk: latents per token (batchtopk: on average)
    l1_coefficient: float = 5.0  # relu: λ of Σ f_j·‖W_dec_j‖ (Anthropic's scale for E‖x‖ = √d_in)
    l0_coefficient: float = 1.0  # jumprelu: λ of the L0 penalty (against the summed squared error)
    # optimisation
    lr: float | None = None  # None: topk/batchtopk 2e-4/√(d_sae/2¹⁴) (Gao et al.), relu 5e-5, jumprelu 7e-5
    lr_warmup_steps: int | None = None  # None: min(1000, steps // 10)
    lr_decay_fraction: float = 0.2  # linear decay to 0 over this final fraction of the steps
    sparsity_warmup_steps: int | None = None  # relu/jumprelu λ ramps up linearly; None: 5% of the steps
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = None  # None: 1.0 for relu (Anthropic), no clipping otherwise
    batch_size: int = 4096
    steps: int | None = None
    total_tokens: int | None = None
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available (cuda:LOCAL_RANK under torchrun), else cpu
    dtype: str = "float32"  # master weights and optimiser state
    encoder_bf16: bool = False  # topk/batchtopk: encoder GEMM in bf16 (fp32 master weights, fp32 everything else)
    # initialisation
    decoder_init_norm: float | None = None  # None: 0.1 for relu (Anthropic), 1.0 (unit rows) otherwise
    b_dec_init: str = "mean"  # "mean" | "geometric_median" | "zeros", of the init sample
    init_tokens: int = 32768  # sample for b_dec, the input-norm constant and the loss's variance
    normalize_activations: bool = True  # scale inputs by a constant to E‖x‖ = √d_in; folded at save
    apply_b_dec_to_input: bool = True  # encoder reads x − b_dec (OpenAI/sparsify/SAELens)
    # dead latents (topk / batchtopk)
    auxk_alpha: float = 1 / 32
    k_aux: int | None = None  # None: d_in // 2
    dead_window_tokens: int = 10_000_000  # dead = no firing in this many tokens (also reported)
    # batchtopk
    batchtopk_max_per_token: int | None = None  # selection cap per token per step; None: 4k (0: exact, slow on CPU)
    batchtopk_save_as: str = "jumprelu"  # "jumprelu" (threshold calibrated on held-out tokens) | "topk"
    calibration_tokens: int = 16384
    # jumprelu
    # jumprelu, in units of the pre-activations of normalised inputs (E‖x‖ = √d_in); the paper's 0.001 is for
    # inputs on another scale. Tuned on the synthetic benchmark.
    jumprelu_bandwidth: float = 0.1
    jumprelu_init_threshold: float = 0.5
    # bookkeeping
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0  # steps; 0: no periodic checkpoints
    keep_checkpoints: int = 2
    output_dir: str | None = None  # final SAE (native format); None: <checkpoint_dir>/final if checkpointing
    log_every: int = 100
    distributed: bool = False  # also on automatically under torchrun (RANK / WORLD_SIZE set)
    # Metadata recorded in the SAE's config, for data that does not carry it (tensors, iterables); None: from the
    # activation source when it knows it, else left unknown. A value contradicting the source's is refused, except
    # model_name / dataset_path, which may rename (say, a Hub id for a model booted from a local folder).
    model_name: str | None = None
    hook_name: str | None = None
    dataset_path: str | None = None
    context_size: int | None = None  # tokens per context the activations were computed in
    prepend_bos: bool | None = None  # whether each context started with BOS

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}",
                              field="architecture")
        if self.architecture in ("topk", "batchtopk") and (self.k is None or not 0 < self.k <= self.d_sae):
            raise ConfigError(f"{self.architecture} needs 0 < k <= d_sae, got k={self.k}", field="k")
        for name in ("d_sae", "batch_size", "init_tokens", "calibration_tokens", "dead_window_tokens"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive", field=name)
        if self.b_dec_init not in ("mean", "geometric_median", "zeros"):
            raise ConfigError(f"unknown b_dec_init {self.b_dec_init!r}", field="b_dec_init")
        if self.batchtopk_save_as not in ("jumprelu", "topk"):
            raise ConfigError(f"batchtopk_save_as must be 'jumprelu' or 'topk', got {self.batchtopk_save_as!r}",
                              field="batchtopk_save_as")
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))

    def resolved(self, **known: Any) -> TrainConfig:
        """A copy with every ``None`` default filled in (``known`` supplies d_in / steps from the data)."""
        c = dataclasses.replace(self, **{k: v for k, v in known.items() if getattr(self, k) is None})
        if c.d_in is None:
            raise ConfigError("set d_in: the width of a one-shot iterable cannot be read without consuming it",
                              field="d_in")
        if c.steps is None:
            raise ConfigError("the run length is unknown: give steps or total_tokens", field="steps")
        if c.lr is None:
            c.lr = {"relu": 5e-5, "jumprelu": 7e-5}.get(c.architecture, 2e-4 / math.sqrt(c.d_sae / 2**14))
        if c.lr_warmup_steps is None:
            c.lr_warmup_steps = min(1000, c.steps // 10)
        if c.sparsity_warmup_steps is None:
            c.sparsity_warmup_steps = c.steps // 20
        if c.max_grad_norm is None and c.architecture == "relu":
            c.max_grad_norm = 1.0
        if c.decoder_init_norm is None:
            c.decoder_init_norm = 0.1 if c.architecture == "relu" else 1.0
        if c.k_aux is None:
            c.k_aux = max(1, c.d_in // 2)
        if c.batchtopk_max_per_token is None:
            c.batchtopk_max_per_token = 4 * (c.k or 1)
        return c

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-serialisable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise (a typo must not silently use a default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s) {unknown}", field=unknown[0])
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)


# ====================================================================== activation sources


def _as_tensor(batch: Any) -> torch.Tensor:
    """A batch as a [rows, d] tensor: tuple/list -> first element; dict -> "activations" or "x"."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    elif isinstance(batch, dict):
        batch = batch["activations"] if "activations" in batch else batch["x"]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"expected batches of tensors, got {type(batch).__name__}")
    return batch.reshape(-1, batch.shape[-1])


class TensorSource:
    """An in-memory ``[N, d_in]`` tensor as an activation source: reshuffled every epoch from ``seed``.

    Global batch ``j`` is rows ``[j·G, (j+1)·G)`` of epoch ``j // (N // G)``'s permutation (G = the global
    batch); rank ``r`` of ``world_size`` takes its ``r``-th slice. So the ranks' batches are disjoint, their union
    is the single-process batch, and ``start`` (batches already consumed) resumes exactly. A final partial batch
    of an epoch is dropped.
    """

    def __init__(self, data: torch.Tensor, *, hook_name: str | None = None, model_name: str | None = None,
                 context_size: int | None = None, prepend_bos: bool | None = None, skip_bos: bool | None = None,
                 dataset_path: str | None = None) -> None:
        self.data = data.reshape(-1, data.shape[-1])
        self.d_in = int(self.data.shape[1])
        # what the rows are, if the caller knows: recorded in the trained SAE's config (see ActivationSource)
        self.hook_name = hook_name
        self.model_name = model_name
        self.context_size = context_size
        self.prepend_bos = prepend_bos
        self.skip_bos = skip_bos
        self.dataset_path = dataset_path

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                start: int = 0) -> Iterator[torch.Tensor]:
        per_epoch = len(self) // (batch_size * world_size)
        if per_epoch == 0:
            raise ValueError(f"{len(self)} rows cannot fill one global batch of {batch_size * world_size}")
        j, perm_epoch, perm = start, -1, torch.empty(0, dtype=torch.long)
        while True:
            epoch, within = divmod(j, per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(len(self), generator=g).to(self.data.device), epoch
            lo = (within * world_size + rank) * batch_size
            yield self.data[perm[lo:lo + batch_size]]
            j += 1


class _IterableSource:
    """Any iterable of batches (a DataLoader, a generator) as a source.

    Read in order, never shuffled; batches are re-cut to the requested size. ``start`` re-reads and drops the
    batches already consumed (so resuming re-skips them), and with several ranks every rank reads the whole
    iterable and keeps its own slice of each global batch: prefer a real source for data-parallel runs.
    """

    def __init__(self, iterable: Iterable[Any], d_in: int | None = None) -> None:
        self.iterable = iterable
        self.d_in = d_in

    def batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                start: int = 0) -> Iterator[torch.Tensor]:
        del seed  # in order, by definition
        for i, xb in enumerate(_rebatch(map(_as_tensor, self.iterable), batch_size * world_size)):
            if i >= start:
                yield xb[rank * batch_size:(rank + 1) * batch_size]


def _rebatch(chunks: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Concatenate/split a stream of [rows, d] chunks into [size, d] batches (a chunk of the right size passes
    through untouched); a final partial batch is dropped."""
    pending: list[torch.Tensor] = []
    have = 0
    for chunk in chunks:
        if not pending and chunk.shape[0] == size:
            yield chunk
            continue
        pending.append(chunk)
        have += chunk.shape[0]
        while have >= size:
            cat = torch.cat(pending) if len(pending) > 1 else pending[0]
            yield cat[:size]
            rest = cat[size:]
            pending, have = ([rest] if rest.shape[0] else []), rest.shape[0]


def _as_source(activations: Any, d_in: int | None) -> Any:
    if isinstance(activations, torch.Tensor):
        return TensorSource(activations)
    if callable(getattr(activations, "batches", None)):
        return activations
    if isinstance(activations, Iterable):
        return _IterableSource(activations, d_in)
    raise TypeError(f"cannot train on {type(activations).__name__}: give a tensor, an iterable of batches, "
                    "or an activation source with .batches(batch_size, seed=, rank=, world_size=, start=)")


def _infer_length(source: Any, cfg: TrainConfig) -> int | None:
    if cfg.steps is not None:
        return cfg.steps
    if cfg.total_tokens is not None:
        return math.ceil(cfg.total_tokens / cfg.batch_size)
    if isinstance(source, TensorSource):
        return len(source) // cfg.batch_size
    dataset = getattr(getattr(source, "iterable", None), "dataset", None)  # a DataLoader over a sized dataset
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset) // cfg.batch_size
    return None


_RECORDED = ("model_name", "hook_name", "dataset_path", "context_size", "prepend_bos")
_RENAMEABLE = ("model_name", "dataset_path")


def _recorded_metadata(cfg: TrainConfig, source: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SAEConfig fields, extra metadata) saying where the activations came from: ``cfg``'s value, else the
    source's, else ``None`` (unknown stays unknown).

    Checked before training starts: a type error, or a ``cfg`` value contradicting what the source knows about
    its own data (hook, context size, BOS), is a :class:`ConfigError` rather than an SAE that records the wrong
    distribution. ``skip_bos`` becomes SAELens's ``seqpos_slice = [1, None]`` (position 0 was never trained on).
    """
    types: dict[str, type] = {"model_name": str, "hook_name": str, "dataset_path": str, "context_size": int,
                              "prepend_bos": bool}
    meta: dict[str, Any] = {}
    for name in _RECORDED:
        mine, theirs = getattr(cfg, name), getattr(source, name, None)
        for who, value in (("TrainConfig", mine), (type(source).__name__, theirs)):
            kind = types[name]
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                raise ConfigError(f"{who}.{name} must be a {kind.__name__} or None, got {value!r}", field=name)
        if mine is not None and theirs is not None and mine != theirs and name not in _RENAMEABLE:
            raise ConfigError(f"TrainConfig.{name}={mine!r} contradicts the activation source, whose data has "
                              f"{name}={theirs!r}; leave it None to record the source's", field=name)
        meta[name] = mine if mine is not None else theirs
    extra: dict[str, Any] = {}
    if getattr(source, "skip_bos", None) is True and meta["prepend_bos"] is not False:
        extra["seqpos_slice"] = [1, None]
    return meta, extra


def _infer_d_in(source: Any) -> int | None:
    if getattr(source, "d_in", None):
        return int(source.d_in)
    it = getattr(source, "iterable", None)
    if it is not None and iter(it) is not it:  # re-iterable: peeking does not consume anything
        return int(_as_tensor(next(iter(it))).shape[-1])
    return None


# ====================================================================== the sparse topk path


@dataclass
class _Selection:
    """Which latents fire: per token (topk) or per batch (batchtopk), plus the AuxK choice among dead latents."""

    k: int
    batch_level: bool = False
    max_per_token: int = 0  # batchtopk candidate cap per token (0: exact flat top-k over the batch)
    bf16: bool = False
    dead_idx: torch.Tensor | None = None  # latents that are dead now; None: no AuxK
    k_aux: int = 0
    # Buffers reused across steps (pre-activations, bf16 weights, weight gradients). Tensors of tens of MB are
    # mmap'd fresh at every allocation and the kernel zeroes their pages: ~30% of a CPU step otherwise.
    workspace: dict[str, torch.Tensor] | None = None


def _buffer(ws: dict[str, torch.Tensor] | None, name: str, shape: tuple[int, ...], like: torch.Tensor,
            dtype: torch.dtype) -> torch.Tensor | None:
    """A reusable buffer kept in the workspace (None without one: the caller lets torch allocate)."""
    if ws is None:
        return None
    buf = ws.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != like.device:
        buf = ws[name] = torch.empty(shape, dtype=dtype, device=like.device)
    return buf


def _take_grad_buffer(ws: dict[str, torch.Tensor] | None, name: str, like: torch.Tensor) -> torch.Tensor:
    """A gradient buffer shaped like ``like``, *removed* from the workspace so that autograd adopts it as the
    parameter's ``.grad`` without a copy; :meth:`Trainer.step` puts it back after the optimiser step."""
    buf = ws.pop(name, None) if ws is not None else None
    if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = torch.empty_like(like, memory_format=torch.contiguous_format)
    return buf


class _Pairs:
    """The (token, latent) pairs a step selected, and the backward of bags over them.

    Layout: ``F.embedding_bag``'s, ``latents [M]`` grouped by token, token b's group starting at ``offsets[b]``;
    values (one per pair) always come in this order. :meth:`bag_backward` differentiates
    ``y[b] = Σ_{pairs (b, j)} value·W[j]``: on CPU with one CSR × dense GEMM (MKL) written into a reused buffer
    plus a sampled dense-dense product (SDDMM) for the value gradients; on GPUs with torch's embedding_bag
    backward kernels (cuSPARSE's per-call setup costs more than the arithmetic at these sizes).
    """

    def __init__(self, latents: torch.Tensor, offsets: torch.Tensor, n_latents: int) -> None:
        self.latents, self.offsets, self.n_latents = latents, offsets, n_latents
        self.crow = torch.cat([offsets, offsets.new_full((1,), latents.numel())])  # by-token CSR rows
        self._transposed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _by_latent(self, values: torch.Tensor) -> torch.Tensor:
        """The pairs as a CSR [d_sae, B] matrix holding ``values``."""
        if self._transposed is None:
            B, M = self.offsets.numel(), self.latents.numel()
            arange = torch.arange(max(B, self.n_latents + 1), device=self.latents.device)
            tokens = torch.repeat_interleave(arange[:B], self.crow.diff(), output_size=M)
            order = torch.argsort(self.latents, stable=True)  # stable: tokens stay sorted within each latent
            crow = torch.searchsorted(self.latents[order], arange[:self.n_latents + 1])
            self._transposed = (order, crow, tokens[order])
        order, crow, tokens = self._transposed
        return _csr(crow, tokens, values[order], (self.n_latents, self.offsets.numel()))

    def bag_backward(self, weight: torch.Tensor, values: torch.Tensor, grad_out: torch.Tensor, out: torch.Tensor,
                     accumulate: bool, value_grads: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(∂/∂W, ∂/∂values) of Σ_b ⟨grad_out[b], y[b]⟩; the W gradient goes into ``out`` (added to it if
        ``accumulate``), the value gradients only if ``value_grads``."""
        grad_out = grad_out.contiguous()
        if weight.device.type == "cpu":
            torch.addmm(out, self._by_latent(values), grad_out, beta=1 if accumulate else 0, out=out)
            if not value_grads:
                return out, None
            pattern = _csr(self.crow, self.latents, values, (self.offsets.numel(), self.n_latents))
            return out, torch.sparse.sampled_addmm(pattern, grad_out, weight.t(), beta=0).values()
        with torch.enable_grad():
            w, v = weight.detach().requires_grad_(True), values.detach().requires_grad_(value_grads)
            y = F.embedding_bag(self.latents, w, self.offsets, mode="sum", per_sample_weights=v)
            grads = torch.autograd.grad(y, (w, v) if value_grads else (w,), grad_out)
        return (out.add_(grads[0]) if accumulate else grads[0]), (grads[1] if value_grads else None)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta" (a one-time notice)
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _select(pre: torch.Tensor, sel: _Selection) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values [M], latents [M], offsets [B]) of the selected pre-activations, grouped by token."""
    B, n = pre.shape
    if not sel.batch_level:
        vals, cols = pre.topk(sel.k, dim=-1, sorted=False)
        return vals.reshape(-1), cols.reshape(-1), torch.arange(0, B * sel.k, sel.k, device=pre.device)
    # BatchTopK: the k·B largest over the batch. Candidates are each token's top `max_per_token` (one row-wise
    # topk is far cheaper than a flat topk over B·n on CPU); exact unless a token would take more than that.
    m = n if sel.max_per_token <= 0 else min(n, sel.max_per_token)
    cand_v, cand_i = pre.topk(m, dim=-1, sorted=False) if m < n else (pre, None)
    flat = cand_v.reshape(-1).topk(sel.k * B, sorted=False).indices.sort().values  # sorted = grouped by token
    rows = torch.div(flat, m, rounding_mode="floor")
    cols = cand_i.reshape(-1)[flat] if cand_i is not None else flat - rows * n
    offsets = torch.searchsorted(rows, torch.arange(B, device=pre.device))
    return cand_v.reshape(-1)[flat], cols, offsets


class _SparseEncode(torch.autograd.Function):
    """relu(x′·W_encᵀ + b_enc) at the selected latents only (x′ = x − b_dec): dense GEMM forward, sparse backward.

    Returns the values of the selected pairs and the AuxK pairs, with their :class:`_Pairs`. The [B, d_sae]
    pre-activations die with the forward; the backward touches only the selected latents: b_enc's gradient is
    an index_add, the encoder rows' gradient a bag backward (Σ_pairs g·x′ into each latent's row), and
    b_dec's (through x′) is −grad_b_enc·W_encT instead of a per-token input gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, W_encT: torch.Tensor, b_enc: torch.Tensor,
                b_dec: torch.Tensor | None, sel: _Selection) -> tuple[Any, ...]:
        xc = x - b_dec if b_dec is not None else x
        dt, w = (torch.bfloat16 if sel.bf16 else W_encT.dtype), W_encT
        if sel.bf16:
            w16 = _buffer(sel.workspace, "W_encT_bf16", tuple(W_encT.shape), W_encT, dt)
            w = w16.copy_(W_encT) if w16 is not None else W_encT.to(dt)
        out = _buffer(sel.workspace, "pre", (x.shape[0], W_encT.shape[0]), x, dt)
        pre = torch.addmm(b_enc.to(dt), xc.to(dt), w.t(), **({"out": out} if out is not None else {}))
        vals, lat, offs = _select(pre, sel)
        vals = vals.to(x.dtype).clamp_min(0)
        pairs, avals, apairs = _Pairs(lat, offs, W_encT.shape[0]), vals.new_zeros(0), None
        if sel.dead_idx is not None and sel.k_aux > 0:
            av, ai = pre.index_select(1, sel.dead_idx).topk(sel.k_aux, dim=-1, sorted=False)
            avals = av.reshape(-1).to(x.dtype).clamp_min(0)
            aoffs = torch.arange(0, x.shape[0] * sel.k_aux, sel.k_aux, device=x.device)
            apairs = _Pairs(sel.dead_idx[ai.reshape(-1)], aoffs, W_encT.shape[0])
        ctx.save_for_backward(xc, W_encT, vals, avals)
        ctx.pairs, ctx.apairs, ctx.ws, ctx.has_b_dec = pairs, apairs, sel.workspace, b_dec is not None
        return vals, avals, pairs, apairs

    @staticmethod
    def backward(ctx: Any, g_vals: torch.Tensor, g_avals: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        xc, W_encT, vals, avals = ctx.saved_tensors
        grad_W = _take_grad_buffer(ctx.ws, "grad_W_encT", W_encT)
        grad_b_enc = torch.zeros(W_encT.shape[0], dtype=xc.dtype, device=xc.device)
        for pairs, v, g, accumulate in ((ctx.pairs, vals, g_vals, False), (ctx.apairs, avals, g_avals, True)):
            if pairs is None:
                continue
            g = g * (v > 0)  # relu: clamped (zero) selections pass no gradient
            grad_b_enc.index_add_(0, pairs.latents, g)
            grad_W, _ = pairs.bag_backward(W_encT, g, xc, grad_W, accumulate, value_grads=False)
        grad_b_dec = -(grad_b_enc @ W_encT) if ctx.has_b_dec else None
        return None, grad_W, grad_b_enc.to(W_encT.dtype), grad_b_dec, None


class _SparseDecode(torch.autograd.Function):
    """Σ_{pairs of token b} value·W_dec[latent] for the main and the AuxK pairs (no bias).

    Forward: ``F.embedding_bag``; backward: :meth:`_Pairs.bag_backward` per pair set, W_dec's gradient written
    into a buffer reused across steps.
    """

    @staticmethod
    def forward(ctx: Any, W_dec: torch.Tensor, vals: torch.Tensor, pairs: _Pairs, avals: torch.Tensor,
                apairs: _Pairs | None, ws: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        def bag(p: _Pairs, v: torch.Tensor) -> torch.Tensor:
            return F.embedding_bag(p.latents, W_dec, p.offsets, mode="sum", per_sample_weights=v)

        ctx.save_for_backward(W_dec, vals, avals)
        ctx.pairs, ctx.apairs, ctx.ws = pairs, apairs, ws
        return bag(pairs, vals), (bag(apairs, avals) if apairs is not None else vals.new_zeros(0))

    @staticmethod
    def backward(ctx: Any, g_out: torch.Tensor, g_aout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        W_dec, vals, avals = ctx.saved_tensors
        grad_W = _take_grad_buffer(ctx.ws, "grad_W_dec", W_dec)
        grads: list[torch.Tensor | None] = []
        for pairs, v, g, accumulate in ((ctx.pairs, vals, g_out, False), (ctx.apairs, avals, g_aout, True)):
            if pairs is None:
                grads.append(None)
                continue
            grad_W, grad_v = pairs.bag_backward(W_dec, v, g, grad_W, accumulate, value_grads=True)
            grads.append(grad_v)
        return grad_W, grads[0], None, grads[1], None, None


def sparse_encode(x: torch.Tensor, W_encT: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor | None, *,
                  k: int, batch_level: bool = False, max_per_token: int = 0, bf16: bool = False,
                  dead_idx: torch.Tensor | None = None, k_aux: int = 0) -> tuple[Any, ...]:
    """The trainer's TopK/BatchTopK encoder on its own (what the tests and benchmarks exercise). ``W_encT`` is
    ``[d_sae, d_in]`` (the SAE's ``W_enc.T``). Returns ``(values, pairs, aux_values, aux_pairs)``; decode them
    with :func:`sparse_decode`."""
    sel = _Selection(k=k, batch_level=batch_level, max_per_token=max_per_token, bf16=bf16, dead_idx=dead_idx,
                     k_aux=k_aux)
    return _SparseEncode.apply(x, W_encT, b_enc, b_dec, sel)


def sparse_decode(W_dec: torch.Tensor, vals: torch.Tensor, pairs: _Pairs, aux_vals: torch.Tensor | None = None,
                  aux_pairs: _Pairs | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction without b_dec, AuxK reconstruction) from :func:`sparse_encode`'s output."""
    avals = aux_vals if aux_vals is not None else vals.new_zeros(0)
    return _SparseDecode.apply(W_dec, vals, pairs, avals, aux_pairs, None)


def _remove_parallel_component(W_dec: nn.Parameter) -> None:
    """Project each unit-norm decoder row's gradient onto the row's tangent space (OpenAI's
    ``unit_norm_decoder_grad_adjustment_``): the step cannot waste itself changing norms we reset anyway."""
    if W_dec.grad is not None:  # g -= (g·w) w without [d_sae, d] temporaries (a batched dot, then addcmul_)
        g, w = W_dec.grad, W_dec.detach()
        g.addcmul_(torch.bmm(g.unsqueeze(1), w.unsqueeze(2)).view(-1, 1), w, value=-1)


@torch.no_grad()
def _normalise_rows_(W: torch.Tensor) -> None:
    W /= W.norm(dim=-1, keepdim=True).clamp_min(1e-8)


# ====================================================================== JumpReLU straight-through estimators


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """f = z·H(z − θ). ∂f/∂z = H(z − θ); ∂f/∂θ = −(θ/ε)·K((z − θ)/ε) (Rajamanoharan et al. 2024, eq. 11)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(theta / eps) * _rectangle((z - theta) / eps) * g).sum(0)
        return g * (z > theta), grad_theta, None


class _Step(torch.autograd.Function):
    """H(z − θ) for the L0 penalty. ∂/∂z = 0; ∂/∂θ = −(1/ε)·K((z − θ)/ε) (ibid., eq. 12)."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        return None, (-(1.0 / eps) * _rectangle((z - theta) / eps) * g).sum(0), None


# ====================================================================== parameters and init


class _Params(nn.Module):
    """Training-time parameters. The encoder is stored as rows ``W_encT = W_enc.T [d_sae, d_in]`` so encoder and
    decoder gradients are both row scatters (embedding_bag layout); :meth:`Trainer.to_sae` transposes back."""

    def __init__(self, cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        n, d = cfg.d_sae, int(cfg.d_in or 0)
        g = torch.Generator().manual_seed(cfg.seed)  # CPU draw: the same init on every device and rank
        w = torch.randn(n, d, generator=g, dtype=torch.float64)
        w = w / w.norm(dim=-1, keepdim=True) * float(cfg.decoder_init_norm or 1.0)
        self.W_dec = nn.Parameter(w.to(device, dtype))
        self.W_encT = nn.Parameter(w.to(device, dtype).clone())  # tied init: W_enc = W_dec.T
        self.b_enc = nn.Parameter(torch.zeros(n, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d, device=device, dtype=dtype))
        if cfg.architecture == "jumprelu":
            init = math.log(cfg.jumprelu_init_threshold)
            self.log_threshold = nn.Parameter(torch.full((n,), init, device=device, dtype=dtype))


@torch.no_grad()
def geometric_median(x: torch.Tensor, *, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """The point minimising Σ‖x_i − y‖ (Weiszfeld's iteration, started at the mean): a b_dec robust to outliers."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(1e-12)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if float((y_new - y).norm()) <= tol * max(1.0, float(y.norm())):
            return y_new.float()
        y = y_new
    return y.float()


class _StepOut(NamedTuple):
    x_hat: torch.Tensor
    loss: torch.Tensor
    recon: torch.Tensor
    aux: torch.Tensor
    sparsity: torch.Tensor
    l0: torch.Tensor


# ====================================================================== the trainer


class Trainer:
    """One training run. :func:`train_sae` is the usual entry point; use this class to step by hand (benchmarks)
    or to inspect ``log`` (a list of metric dicts, one per ``log_every`` steps)."""

    def __init__(self, cfg: TrainConfig, activations: Any, *, callbacks: Sequence[Callable[[dict], Any]] = (),
                 progress: bool = True, calibration: Any = None) -> None:
        self.rank, self.world_size = _init_distributed(cfg)
        self.source = _as_source(activations, cfg.d_in)
        self.calibration = calibration
        self.cfg = cfg.resolved(d_in=_infer_d_in(self.source), steps=_infer_length(self.source, cfg))
        cfg = self.cfg
        self.metadata, self._extra_metadata = _recorded_metadata(cfg, self.source)
        if cfg.batch_size % self.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is the global batch; it must divide by world_size "
                              f"{self.world_size}", field="batch_size")
        self.local_batch = cfg.batch_size // self.world_size
        self.device = _resolve_device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype.removeprefix("torch."))
        self.callbacks, self.progress = tuple(callbacks), progress
        self.params = _Params(cfg, self.device, self.dtype)
        self.opt = torch.optim.Adam(self.params.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                    **_fused_kwargs(self.device))
        self.sparse = cfg.architecture in ("topk", "batchtopk")
        self.unit_norm_decoder = cfg.architecture != "relu"
        self.sel = _Selection(k=int(cfg.k or 0), batch_level=cfg.architecture == "batchtopk",
                              max_per_token=int(cfg.batchtopk_max_per_token or 0), bf16=cfg.encoder_bf16,
                              workspace={})
        self.aux_scale = 0.0
        # per-rank window: the ranks' windows together span dead_window_tokens, in lockstep with one process
        self.tracker = FiringTracker(cfg.d_sae, window=cfg.dead_window_tokens // self.world_size, device=self.device)
        self.step_no, self.tokens = 0, 0
        self.scale, self.var = 1.0, 1.0  # input-norm constant; data variance (the topk loss's denominator)
        self.log: list[dict[str, Any]] = []
        self._acc = torch.zeros(6, device=self.device, dtype=torch.float64)
        self._fvu = FVUAccumulator()
        self._t_log, self._tokens_log = time.perf_counter(), 0

    # ------------------------------------------------------------------ the training step

    def step(self, x: torch.Tensor) -> None:
        """One optimiser step on a batch of raw activations ``x [b, d_in]``; no value leaves the device."""
        cfg, p = self.cfg, self.params
        x = x.to(self.device, self.dtype, non_blocking=True) * self.scale
        lr, sparsity_coef = self.schedule(self.step_no)
        for group in self.opt.param_groups:
            group["lr"] = lr
        out = self._forward(x, sparsity_coef)
        out.loss.backward()
        if self.world_size > 1:
            for q in p.parameters():  # mean of per-rank means = the global mean: losses are per-token means
                dist.all_reduce(q.grad)
                q.grad /= self.world_size
        if self.unit_norm_decoder:
            _remove_parallel_component(p.W_dec)
        if cfg.max_grad_norm:
            nn.utils.clip_grad_norm_(p.parameters(), cfg.max_grad_norm)
        self.opt.step()
        if self.sparse:  # hand the weight-gradient buffers back for the next step's backward to fill
            self.sel.workspace.update(grad_W_encT=p.W_encT.grad, grad_W_dec=p.W_dec.grad)  # type: ignore[union-attr]
        self.opt.zero_grad(set_to_none=True)
        if self.unit_norm_decoder:
            _normalise_rows_(p.W_dec)
        self._acc += torch.stack([t.detach().double() for t in out[1:]] + [self._acc.new_ones(())])
        self._fvu.update(x, out.x_hat.detach())
        self.step_no += 1
        self.tokens += x.shape[0] * self.world_size
        if self.sparse and self.tracker.current_tokens == 0:  # a tracker block just closed
            self._refresh_dead()

    def _forward(self, x: torch.Tensor, coef: float) -> _StepOut:
        p, cfg = self.params, self.cfg
        if self.sparse:  # topk / batchtopk: only the selected latents are touched after the encoder GEMM
            b_in = p.b_dec if cfg.apply_b_dec_to_input else None
            vals, avals, pairs, apairs = _SparseEncode.apply(x, p.W_encT, p.b_enc, b_in, self.sel)
            dec, e_hat = _SparseDecode.apply(p.W_dec, vals, pairs, avals, apairs, self.sel.workspace)
            x_hat = dec + p.b_dec
            err = x - x_hat
            recon = err.pow(2).sum(-1).mean() / self.var
            aux = recon.new_zeros(())
            if apairs is not None:  # AuxK: dead latents predict what the live ones missed
                aux = self.aux_scale * (e_hat - err.detach()).pow(2).sum(-1).mean() / self.var
            self.tracker.update(indices=pairs.latents.view(x.shape[0], -1), values=vals.detach())
            l0 = (vals > 0).sum() / x.shape[0]
            return _StepOut(x_hat, recon + cfg.auxk_alpha * aux, recon, aux, aux.new_zeros(()), l0)
        pre = F.linear(x - p.b_dec if cfg.apply_b_dec_to_input else x, p.W_encT, p.b_enc)
        if cfg.architecture == "relu":  # Anthropic April 2024: L1 on f·‖W_dec_j‖
            f = F.relu(pre)
            sparsity = (f * p.W_dec.norm(dim=-1)).sum(-1).mean()
        else:  # jumprelu: straight-through L0
            theta = p.log_threshold.exp()
            f = _JumpReLU.apply(pre, theta, cfg.jumprelu_bandwidth)
            sparsity = _Step.apply(pre, theta, cfg.jumprelu_bandwidth).sum(-1).mean()
        x_hat = f @ p.W_dec + p.b_dec
        recon = (x - x_hat).pow(2).sum(-1).mean()
        self.tracker.update(f.detach())
        l0 = (f.detach() != 0).sum() / x.shape[0]
        return _StepOut(x_hat, recon + coef * sparsity, recon, sparsity.new_zeros(()), sparsity, l0)

    def schedule(self, step: int) -> tuple[float, float]:
        """(lr, sparsity coefficient) at ``step``: a pure function of the step, so the step is its whole state.
        lr: linear warmup, constant, linear decay to 0 over the last ``lr_decay_fraction``; λ: linear warmup."""
        cfg = self.cfg
        steps = int(cfg.steps or 1)
        warm = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
        decay_steps = int(cfg.lr_decay_fraction * steps)
        decay = min(1.0, (steps - step) / decay_steps) if decay_steps else 1.0
        coef = cfg.l1_coefficient if cfg.architecture == "relu" else cfg.l0_coefficient
        sw = cfg.sparsity_warmup_steps
        return float(cfg.lr) * warm * decay, coef * (min(1.0, (step + 1) / sw) if sw else 1.0)

    def _refresh_dead(self) -> None:
        """Recompute the AuxK dead set (one host read, every ``dead_window_tokens / 10`` tokens)."""
        _, counts = self.tracker.window_counts()
        if self.world_size > 1:
            dist.all_reduce(counts)
        dead = (counts == 0).nonzero().flatten()
        n_dead = int(dead.numel())
        k_aux = min(int(self.cfg.k_aux or 0), n_dead)
        self.sel.dead_idx, self.sel.k_aux = (dead, k_aux) if k_aux > 0 else (None, 0)
        self.aux_scale = min(n_dead / max(int(self.cfg.k_aux or 1), 1), 1.0)

    # ------------------------------------------------------------------ init

    @torch.no_grad()
    def initialise(self, batches: list[torch.Tensor]) -> None:
        """Input-norm constant, data variance and b_dec from the first batches (gathered over ranks, so every
        rank, and a single process, compute them from the same tokens)."""
        cfg = self.cfg
        sample = torch.cat([b.to(self.device, torch.float32) for b in batches])
        if self.world_size > 1:
            parts = [torch.empty_like(sample) for _ in range(self.world_size)]
            dist.all_gather(parts, sample)
            sample = torch.cat(parts)
        if cfg.normalize_activations:
            self.scale = float(math.sqrt(int(cfg.d_in or 1)) / sample.norm(dim=-1).mean().clamp_min(1e-12))
        xs = sample * self.scale
        mean = xs.mean(0)
        self.var = float((xs - mean).pow(2).sum(-1).mean().clamp_min(1e-12))
        if cfg.b_dec_init == "geometric_median":
            self.params.b_dec.copy_(geometric_median(xs).to(self.dtype))
        elif cfg.b_dec_init == "mean":
            self.params.b_dec.copy_(mean.to(self.dtype))
        if self.world_size > 1:
            for q in self.params.parameters():
                dist.broadcast(q.data, 0)

    # ------------------------------------------------------------------ running

    def run(self, resume: str | os.PathLike[str] | bool | None = None) -> SAE:
        """Train to ``cfg.steps`` (continuing from a checkpoint with ``resume``), save, return the SAE."""
        cfg = self.cfg
        ckpt = self._resume_path(resume)
        if ckpt is not None:
            self.load_checkpoint(ckpt)
        it = self.source.batches(self.local_batch, seed=cfg.seed, rank=self.rank, world_size=self.world_size,
                                 start=self.step_no)
        if ckpt is None:
            first = list(itertools.islice(it, max(1, math.ceil(cfg.init_tokens / cfg.batch_size))))
            if not first:
                raise ValueError("the activations are empty")
            self.initialise(first)
            it = itertools.chain(first, it)
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step_no, unit="step", disable=not self.progress or self.rank != 0,
                   desc=f"train {cfg.architecture}")
        self._t_log, self._tokens_log = time.perf_counter(), self.tokens
        # Adam moments of latents that rarely fire decay geometrically into the subnormal range, where x86 CPUs
        # run ~20x slower; flush them to zero while training (process-wide, so restored after).
        flush = self.device.type == "cpu" and torch.set_flush_denormal(True)
        try:
            while self.step_no < int(cfg.steps or 0):
                x = next(it, None)
                if x is None:
                    warnings.warn(f"activations ran out after {self.step_no} of {cfg.steps} steps", stacklevel=2)
                    break
                self.step(x)
                bar.update(1)
                if cfg.log_every and self.step_no % cfg.log_every == 0:
                    self._log_metrics(bar)
                if cfg.checkpoint_dir and cfg.checkpoint_every and self.step_no % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
            if int(self._acc[-1]) > 0 or not self.log:
                self._log_metrics(bar)
        finally:
            bar.close()
            if flush:
                torch.set_flush_denormal(False)
        sae = self.to_sae(it)
        out = cfg.output_dir or (str(Path(cfg.checkpoint_dir) / "final") if cfg.checkpoint_dir else None)
        sparsity = self.log10_density()
        if out and self.rank == 0:
            sae.save_pretrained(out, sparsity=sparsity)
        sae.training_log = self.log  # type: ignore[attr-defined]  # the scalar log, also in cfg.extra["metrics"]
        return sae

    def _log_metrics(self, bar: Any) -> None:
        """Pull the interval's device-side sums to the host (the only per-interval sync) and report them."""
        acc, fvu = self._acc.clone(), self._fvu
        tokens, counts = self.tracker.window_counts()
        if self.world_size > 1:  # every rank calls this at the same steps: sum the ranks' interval statistics
            for t in (acc, counts, fvu.sum_x, fvu.sum_x2, fvu.sum_r2):
                if t is not None:
                    dist.all_reduce(t)
            fvu.n *= self.world_size
            tokens *= self.world_size
        fvu_val = fvu.compute()
        loss, recon, aux, sparsity, l0, n = acc.tolist()
        n = max(n, 1.0)
        now = time.perf_counter()
        window_ok = tokens >= self.tracker.block_size * self.world_size
        entry = {
            "step": self.step_no, "tokens": self.tokens, "lr": self.schedule(max(self.step_no - 1, 0))[0],
            "loss": loss / n, "recon": recon / n, "aux": aux / n, "sparsity": sparsity / n, "l0": l0 / n,
            "fvu": fvu_val,
            "dead_fraction": float((counts == 0).float().mean()) if window_ok else 0.0,
            "dense_fraction": float((counts.float() / max(tokens, 1) > 0.1).float().mean()),
            "dead_window_tokens": self.cfg.dead_window_tokens,
            "tokens_per_s": (self.tokens - self._tokens_log) / max(now - self._t_log, 1e-9),
        }
        self._acc.zero_()
        self._fvu = FVUAccumulator()
        self._t_log, self._tokens_log = now, self.tokens
        self.log.append(entry)
        if self.rank == 0:
            bar.set_postfix({k: f"{entry[k]:.4g}" for k in ("loss", "l0", "fvu", "dead_fraction")}, refresh=False)
            for cb in self.callbacks:
                cb(dict(entry))

    def log10_density(self) -> torch.Tensor:
        """log10 firing frequency of every latent over all training tokens (``sparsity.safetensors``)."""
        counts = self.tracker.total_counts.clone()
        if self.world_size > 1:
            dist.all_reduce(counts)
        return torch.log10(counts.float().cpu() / max(self.tokens, 1) + 1e-10)

    # ------------------------------------------------------------------ the result

    @torch.no_grad()
    def to_sae(self, held_out: Iterator[torch.Tensor] | None = None) -> SAE:
        """The trained SAE taking *raw* activations: normalisation constant folded (and recorded in provenance),
        batchtopk saved as jumprelu (threshold calibrated on ``held_out`` or ``calibration``) or topk."""
        cfg, p = self.cfg, self.params
        tensors = {"W_enc": p.W_encT.t().contiguous().clone(), "b_enc": p.b_enc.clone(),
                   "W_dec": p.W_dec.clone(), "b_dec": p.b_dec.clone()}
        arch = cfg.architecture
        if arch == "batchtopk":
            arch = cfg.batchtopk_save_as
        if arch == "jumprelu":
            if cfg.architecture == "jumprelu":
                tensors["threshold"] = p.log_threshold.exp().clone()
            else:
                theta = self.calibrate_threshold(held_out)
                tensors["threshold"] = torch.full_like(p.b_enc, theta)
        scfg = SAEConfig(
            architecture=arch, d_in=int(cfg.d_in or 0), d_sae=cfg.d_sae,
            k=cfg.k if arch == "topk" else None, apply_b_dec_to_input=cfg.apply_b_dec_to_input,
            normalize_activations="expected_average_only_in" if self.scale != 1.0 else "none",
            norm_scaling_factor=self.scale if self.scale != 1.0 else None,
            dtype=cfg.dtype, extra={**self._extra_metadata, "training": cfg.to_dict(),
                                    "metrics": _json_safe(self.log[-1] if self.log else {})},
            **self.metadata,
        )
        scfg.record(f"trained: sae_hub.training.train_sae architecture={cfg.architecture} steps={self.step_no} "
                    f"tokens={self.tokens}")
        sae = SAE.from_state_dict(scfg, tensors, device=self.device)
        if self.scale != 1.0:
            sae.fold_activation_norm_scaling_factor()
        if arch == "relu":  # the L1 penalty measured f·‖W_dec_j‖: make that the feature value, decoder unit-norm
            sae.fold_W_dec_norm()
        return sae

    @torch.no_grad()
    def calibrate_threshold(self, held_out: Iterator[torch.Tensor] | None = None) -> float:
        """The global JumpReLU threshold θ for a batchtopk SAE: mean L0 on held-out tokens equals k.

        θ is the (k·N)-th largest relu pre-activation over all N calibration tokens × d_sae latents, i.e. the
        BatchTopK rule applied to the whole calibration set at once. It is found from each token's top-m values
        and is exact when no token has m values above θ; otherwise m doubles and the (cached) tokens are re-read.
        Rank 0 calibrates and broadcasts θ. Tokens come from ``calibration`` if given, else the training stream
        continued past the last step (unseen unless a finite tensor is re-visited in a later epoch).
        """
        cfg, p = self.cfg, self.params
        theta = torch.zeros((), device=self.device, dtype=torch.float64)
        if self.rank == 0:
            n_batches = max(1, math.ceil(cfg.calibration_tokens / self.local_batch))
            if isinstance(self.calibration, torch.Tensor):
                held_out, n_batches = iter(self.calibration.split(self.local_batch)), len(self.calibration)
            elif self.calibration is not None:
                src = _as_source(self.calibration, cfg.d_in)
                held_out = src.batches(self.local_batch, seed=cfg.seed + 1)
            xs = [b.to(self.device, self.dtype) * self.scale
                  for b in itertools.islice(held_out if held_out is not None else iter(()), n_batches)]
            if not xs:
                raise ValueError("no held-out activations to calibrate the batchtopk threshold on")
            n_tokens = sum(x.shape[0] for x in xs)
            m = min(cfg.d_sae, 4 * int(cfg.k or 1))
            while True:
                tops = []
                for x in xs:
                    pre = F.linear(x - p.b_dec if cfg.apply_b_dec_to_input else x, p.W_encT, p.b_enc).float()
                    tops.append(F.relu(pre).topk(m, dim=-1).values)  # sorted: column m-1 is each row's m-th
                flat = torch.cat([t.reshape(-1) for t in tops])
                theta = flat.topk(int(cfg.k or 1) * n_tokens).values[-1].double()
                if m == cfg.d_sae or all(bool((t[:, -1] < theta).all()) for t in tops):
                    break
                m = min(cfg.d_sae, 2 * m)
        if self.world_size > 1:
            dist.broadcast(theta, 0)
        return float(theta)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path | None:
        """Write ``<checkpoint_dir>/step_<N>/`` atomically: files go to a hidden temp folder that is renamed into
        place only when complete, so a crash mid-save leaves the previous checkpoint the latest loadable one."""
        cfg = self.cfg
        blocks, current, total = self._tracker_global()  # collective: every rank calls this
        if self.rank != 0 or not cfg.checkpoint_dir:
            return None
        from sae_hub.files import write_json_atomic

        root = Path(cfg.checkpoint_dir)
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step_{self.step_no:09d}"
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors: dict[str, Any] = {
            "params": {k: v.detach() for k, v in self.params.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "tracker_blocks": blocks, "tracker_current": current, "tracker_total": total,
            "dead_idx": self.sel.dead_idx if self.sel.dead_idx is not None else torch.zeros(0, dtype=torch.long),
            "acc": self._acc, "rng_torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            tensors["rng_cuda"] = torch.cuda.get_rng_state_all()
        torch.save(tensors, tmp / "state.pt")
        state = {
            "format": 1, "step": self.step_no, "tokens": self.tokens, "scale": self.scale, "var": self.var,
            "world_size": self.world_size, "config": cfg.to_dict(),
            "tracker": {"block_tokens": [t for t, _ in self.tracker.blocks],
                        "current_tokens": self.tracker.current_tokens, "total_tokens": self.tracker.total_tokens},
            "aux": {"k_aux": self.sel.k_aux, "scale": self.aux_scale},
            "python_rng": _py_rng_to_json(random.getstate()), "log": _json_safe(self.log),
        }
        write_json_atomic(tmp / "state.json", state)
        if final.exists():  # re-saving a step (a resumed run): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)  # the commit point
        for old in sorted(_checkpoints(root))[:-max(1, cfg.keep_checkpoints)]:
            shutil.rmtree(old[1], ignore_errors=True)
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def _tracker_global(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tracker counts summed over ranks: on resume rank 0 holds them all and the others start at zero, so
        every later all-reduce of counts is still the global one."""
        t = self.tracker
        blocks = (torch.stack([c for _, c in t.blocks]) if t.blocks
                  else torch.zeros(0, t.d_sae, dtype=torch.long, device=t.current.device))
        current, total = t.current.clone(), t.total_counts.clone()
        if self.world_size > 1:
            for c in (blocks, current, total):
                dist.all_reduce(c)
        return blocks.cpu(), current.cpu(), total.cpu()

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore weights, optimiser, tracker, RNG states, data position and normalisation constants."""
        from sae_hub.files import read_json

        path = Path(path)
        state = read_json(path / "state.json")
        saved = TrainConfig.from_dict(state["config"])
        for name in ("architecture", "d_in", "d_sae", "k", "batch_size"):
            if getattr(saved, name) != getattr(self.cfg, name):
                raise ConfigError(f"checkpoint {path} has {name}={getattr(saved, name)!r}, this run "
                                  f"{getattr(self.cfg, name)!r}", path=str(path), field=name)
        if state["world_size"] != self.world_size:
            raise ConfigError(f"checkpoint {path} was written by {state['world_size']} ranks, this run has "
                              f"{self.world_size}", path=str(path), field="world_size")
        tensors = torch.load(path / "state.pt", map_location=self.device, weights_only=True)
        self.params.load_state_dict(tensors["params"])
        self.opt.load_state_dict(tensors["optimizer"])
        t, ts = self.tracker, state["tracker"]
        keep = self.rank == 0
        blocks = tensors["tracker_blocks"].to(t.current.device)
        t.blocks = [(int(n), blocks[i] if keep else torch.zeros_like(blocks[i]))
                    for i, n in enumerate(ts["block_tokens"])]
        t.current = tensors["tracker_current"].to(t.current.device) * keep
        t.total_counts = tensors["tracker_total"].to(t.current.device) * keep
        t.current_tokens, t.total_tokens = int(ts["current_tokens"]), int(ts["total_tokens"])
        dead = tensors["dead_idx"]
        self.sel.dead_idx = dead.to(self.device) if dead.numel() else None
        self.sel.k_aux, self.aux_scale = int(state["aux"]["k_aux"]), float(state["aux"]["scale"])
        self._acc = tensors["acc"].to(self.device)
        torch.set_rng_state(tensors["rng_torch"].cpu())
        if "rng_cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in tensors["rng_cuda"]])
        random.setstate(_py_rng_from_json(state["python_rng"]))
        self.step_no, self.tokens = int(state["step"]), int(state["tokens"])
        self.scale, self.var = float(state["scale"]), float(state["var"])
        self.log = list(state["log"])

    def _resume_path(self, resume: str | os.PathLike[str] | bool | None) -> Path | None:
        if resume is None or resume is False:
            return None
        if resume is True:  # continue if there is something to continue; a fresh start otherwise
            return latest_checkpoint(self.cfg.checkpoint_dir) if self.cfg.checkpoint_dir else None
        path = Path(resume)
        found = path if (path / "state.json").is_file() else latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in {path}")
        return found


# ====================================================================== helpers


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``step_<N>`` checkpoint under ``root`` (temp folders of interrupted saves are
    ignored: only a finished save is renamed to ``step_<N>``)."""
    found = _checkpoints(Path(root))
    return max(found)[1] if found else None


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and (p / "state.pt").is_file() and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return out


def _py_rng_to_json(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _py_rng_from_json(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:  # one GPU per rank under torchrun
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def _fused_kwargs(device: torch.device) -> dict[str, Any]:
    """Fused Adam where torch has it (CUDA; CPU since torch 2.4): one kernel instead of ~10 passes per tensor."""
    if device.type == "cuda" or (device.type == "cpu" and tuple(int(v) for v in
                                                             torch.__version__.split(".")[:2]) >= (2, 4)):
        return {"fused": True}
    return {}


def _init_distributed(cfg: TrainConfig) -> tuple[int, int]:
    """(rank, world_size). Data-parallel when launched by torchrun (RANK and WORLD_SIZE set, world > 1), when
    ``cfg.distributed``, or when a process group already exists.

    A group created here stays up for later runs in the same process (torchrun's store cannot host a second
    one after a teardown) and is destroyed at interpreter exit.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if not (cfg.distributed or ("RANK" in os.environ and env_world > 1)):
        return 0, 1
    cuda = _resolve_device(cfg.device).type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    atexit.register(lambda: dist.destroy_process_group() if dist.is_initialized() else None)
    return dist.get_rank(), dist.get_world_size()


def train_sae(cfg: TrainConfig, activations: Any, *, callbacks: Sequence[Callable[[dict], Any]] = (),
              resume: str | os.PathLike[str] | bool | None = None, progress: bool = True,
              calibration: Any = None) -> SAE:
    """Train an SAE on ``activations`` and return it (saved to ``cfg.output_dir`` too when set).

    ``activations``: a tensor ``[N, d_in]`` (shuffled each epoch with ``cfg.seed``), an iterable of batches or a
    DataLoader (read in order; tuple/list batches use their first element, dict batches ``"activations"`` or
    ``"x"``), or an activation source (``.batches(batch_size, *, seed, rank=0, world_size=1, start=0)``).
    ``callbacks`` get the metrics dict every ``cfg.log_every`` steps (rank 0 only). ``resume`` is a checkpoint
    folder (or a checkpoint root), or ``True`` for the latest under ``cfg.checkpoint_dir`` if any.
    ``calibration``: held-out activations for a batchtopk SAE saved as jumprelu.

    The returned SAE reads raw activations (the input scaling is folded in) and carries the training config
    and final metrics in ``cfg.extra["training"]`` / ``cfg.extra["metrics"]``; ``sae.training_log`` holds the
    per-interval metrics. Its config also records where the activations came from (``model_name``, ``hook_name``,
    ``dataset_path``, ``context_size``, ``prepend_bos``, and ``seqpos_slice`` when BOS was skipped), from ``cfg``
    or the source, so SAELens's ``ActivationsStore.from_sae`` and :func:`~sae_hub.training.evaluate` rebuild the
    same token distribution; what neither knows stays ``None``.
    """
    return Trainer(cfg, activations, callbacks=callbacks, progress=progress, calibration=calibration).run(resume)

