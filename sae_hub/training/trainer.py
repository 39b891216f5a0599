"""Train sparse autoencoders: ``train_sae(TrainConfig(...), activations) -> SAE``.

Architectures and their losses (x is scaled to E‖x‖ = √d_in, the constant folded into the weights at save):

- **topk**: keep the k largest of relu(z) per token; L = ‖x − x̂‖²/σ² + α·AuxK, σ² the data variance measured at
  init (OpenAI's normalised MSE, ≈ FVU; a constant denominator keeps the loss a per-token mean, so data-parallel
  ranks average to the single-process gradient). Unit-norm decoder rows, gradient's parallel component removed.
  AuxK (Gao et al. 2024): the top ``k_aux`` *dead* latents reconstruct the residual, scaled by
  min(#dead / k_aux, 1).
- **batchtopk** (Bussmann et al. 2024): the k·B largest relu(z) over the whole batch, same loss; saved either as
  a jumprelu SAE with one global threshold calibrated on held-out tokens, or as a plain topk SAE.
- **matryoshka_batchtopk** (Bussmann et al. 2025, Nabeshima 2024): batchtopk's selection over the whole dictionary,
  and every nested prefix [0, m_i) of it (``matryoshka_widths``) reconstructs x on its own: L = Σ_i ‖x − x̂_i‖²/σ²
  + α·AuxK, x̂_i = b_dec + the selected latents below m_i (the sum over levels, as SAELens). Saved as batchtopk is.
- **relu**: Anthropic's April 2024 recipe: L = ‖x − x̂‖² + λ·Σ_j f_j‖W_dec_j‖, no decoder-norm constraint, λ warmed
  up, lr warmed up and decayed, gradient clipping at 1; decoder norms are folded into the encoder at save.
- **jumprelu** (Rajamanoharan et al. 2024): f = z·H(z − θ) with θ = exp(log θ) learned through a straight-through
  estimator with a rectangle kernel of width ``jumprelu_bandwidth``; L = ‖x − x̂‖² + λ·Σ_j H(z_j − θ_j).

Transcoders (any architecture above; ``docs/training.md#transcoders``): batches are pairs (x, y), e.g. an MLP's
input and output; the encoder reads x (no b_dec subtracted: b_dec lives in y's space), every loss term above has
y in place of x, and x and y are scaled by their own constants. A skip transcoder adds x·W_skipᵀ (W_skip
``[d_out, d_in]``, zeros at init, as sparsify) to the prediction, so the map's linear part costs no latents.

The topk/batchtopk step never materialises a [B, d_sae] gradient: the encoder forward is one dense GEMM
(optionally bf16), selection keeps the (token, latent) pairs, the decoder is ``F.embedding_bag``, and the
backward touches only the selected latents (:mod:`sae_hub.training.kernels` states the math). Nothing in a
step reads a value back to the host; scalars are pulled only every ``log_every`` steps and when the dead-latent
mask is refreshed (every ``dead_window_tokens / 10`` tokens).

Where the rest lives: :mod:`~sae_hub.training.config` (``TrainConfig``), :mod:`~sae_hub.training.activations`
(every activation source, tensors and iterables included), :mod:`~sae_hub.training.kernels` (the sparse
autograd functions, JumpReLU's estimators, decoder constraints), :mod:`~sae_hub.training.checkpoint` (the
on-disk checkpoint) and :mod:`~sae_hub.training.distributed` (devices, data parallelism). This file holds the
run: parameters and their init, :meth:`Trainer.step`, the loop, and the conversion to an :class:`~sae_hub.SAE`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sae_hub.config import SAEConfig
from sae_hub.errors import ConfigError
from sae_hub.metrics import FiringTracker, FVUAccumulator
from sae_hub.sae import SAE
from sae_hub.training.activations import (
    TensorSource,
    source_from,
    source_out_width,
    source_rows,
    source_width,
)
from sae_hub.training.checkpoint import (
    CHECKPOINT_FORMAT,
    json_safe,
    latest_checkpoint,
    py_rng_from_json,
    py_rng_to_json,
    read_checkpoint,
    resume_path,
    write_checkpoint,
)
from sae_hub.training.config import SPARSE_ARCHITECTURES, TrainConfig
from sae_hub.training.distributed import all_reduce_mean_, fused_adam_kwargs, init_distributed, resolve_device
from sae_hub.training.kernels import (
    Heaviside,
    JumpReLU,
    NestedPrefixLoss,
    Pairs,
    Selection,
    SparseDecode,
    SparseEncode,
    fast_bf16,
    normalise_rows_,
    remove_parallel_component_,
    sparse_decode,
    sparse_encode,
)

# TensorSource, TrainConfig, latest_checkpoint and sparse_encode/sparse_decode lived in this module before it was
# split; they stay importable from here (``from sae_hub.training.trainer import TrainConfig, Trainer``).
__all__ = ["TensorSource", "TrainConfig", "Trainer", "latest_checkpoint", "sparse_decode", "sparse_encode",
           "train_sae"]


# ====================================================================== what the data says

# encoder_bf16=None turns the bf16 encoder GEMM on from this many encoder weights (d_in·d_sae; 256 x 16384): below
# it the GEMM is a minor part of the step, and small runs (tests, tutorials) stay identical on every CPU
_BF16_MIN_WEIGHTS = 2**22
_THETA_DECAY = 0.99  # batchtopk's running threshold estimate: an EMA with a horizon of ~100 steps
_THETA_HORIZON = 100


def _infer_length(source: Any, cfg: TrainConfig) -> int | None:
    """Steps of the run: ``cfg.steps``, else ``total_tokens / batch_size``, else one pass over data of known size."""
    if cfg.steps is not None:
        return cfg.steps
    if cfg.total_tokens is not None:
        return math.ceil(cfg.total_tokens / cfg.default_batch_size())
    rows = source_rows(source)
    return rows // cfg.default_batch_size() if rows is not None else None


_RECORDED = ("model_name", "hook_name", "hook_name_out", "dataset_path", "context_size", "prepend_bos")
_RENAMEABLE = ("model_name", "dataset_path")


def _recorded_metadata(cfg: TrainConfig, source: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SAEConfig fields, extra metadata) saying where the activations came from: ``cfg``'s value, else the
    source's, else ``None`` (unknown stays unknown).

    Checked before training starts: a type error, or a ``cfg`` value contradicting what the source knows about
    its own data (hook, context size, BOS), is a :class:`ConfigError` rather than an SAE that records the wrong
    distribution. ``skip_bos`` becomes SAELens's ``seqpos_slice = [1, None]`` (position 0 was never trained on).
    """
    types: dict[str, type] = {"model_name": str, "hook_name": str, "hook_name_out": str, "dataset_path": str,
                              "context_size": int, "prepend_bos": bool}
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
    if meta["hook_name_out"] is not None and meta["hook_name_out"] == meta["hook_name"]:
        raise ConfigError(f"hook_name_out equals hook_name ({meta['hook_name']!r}): a transcoder reads one hook and "
                          "predicts another", field="hook_name_out")
    extra: dict[str, Any] = {}
    if getattr(source, "skip_bos", None) is True and meta["prepend_bos"] is not False:
        extra["seqpos_slice"] = [1, None]
    return meta, extra


def _resolve_transcoder(cfg: TrainConfig, source: Any) -> TrainConfig:
    """``cfg`` with ``transcoder`` and ``d_out`` decided by the data: (x, y) pairs make a transcoder (a source
    advertising ``d_out``, a paired iterable), single activations an SAE.

    Checked before training: ``transcoder`` or ``skip_connection`` contradicting the data, and a ``d_in`` /
    ``d_out`` that differs from the width of x / y, are a :class:`ConfigError` naming the field -- not a shape
    error from inside the first step, nor an SAE of another function than the one asked for.
    """
    paired = bool(getattr(source, "paired", False)) or getattr(source, "d_out", None) is not None
    wants = cfg.transcoder if cfg.transcoder is not None else (True if cfg.skip_connection else None)
    if wants is True and not paired:
        raise ConfigError(f"{'skip_connection' if cfg.transcoder is None else 'transcoder'}=True needs (x, y) pairs, "
                          f"but {type(source).__name__} gives single activations: pass (x, y) tensors, a source with "
                          "hook_name_out, or an iterable of (x, y) batches", field="transcoder")
    if wants is False and paired:
        raise ConfigError(f"transcoder=False, but {type(source).__name__} gives (x, y) pairs (d_out="
                          f"{getattr(source, 'd_out', None)}, hook_name_out={getattr(source, 'hook_name_out', None)!r})"
                          "; leave transcoder None", field="transcoder")
    if paired and getattr(cfg, "resample_dead", False):  # it re-points encoder rows at residuals of y's space
        raise ConfigError("resample_dead is not defined for transcoders (a residual lives in y's space, the "
                          "encoder reads x); use AuxK (auxk_alpha)", field="resample_dead")
    if not paired:
        if cfg.d_out is not None:
            raise ConfigError(f"d_out={cfg.d_out} is a transcoder's output width, but the activations are single "
                              "(an SAE reconstructs its input)", field="d_out")
        if cfg.hook_name_out is not None:  # recorded, it would make the saved SAE claim to be a transcoder
            raise ConfigError(f"hook_name_out={cfg.hook_name_out!r} is where a transcoder writes, but the "
                              "activations are single (an SAE reconstructs its input)", field="hook_name_out")
        return cfg
    for name, mine, theirs, what in (("d_in", cfg.d_in, source_width(source), "x"),
                                     ("d_out", cfg.d_out, source_out_width(source), "y")):
        if mine is not None and theirs is not None and mine != theirs:
            raise ConfigError(f"TrainConfig.{name}={mine}, but the activations' {what} rows have width {theirs}",
                              field=name)
    d_out = cfg.d_out if cfg.d_out is not None else source_out_width(source)
    if d_out is None:
        raise ConfigError("set d_out: the width of y in a one-shot iterable cannot be read without consuming it",
                          field="d_out")
    return dataclasses.replace(cfg, transcoder=True, d_out=d_out)


# ====================================================================== parameters and init


class _Params(nn.Module):
    """Training-time parameters. The encoder is stored as rows ``W_encT = W_enc.T [d_sae, d_in]`` so encoder and
    decoder gradients are both row scatters (embedding_bag layout, see :mod:`~sae_hub.training.kernels`);
    :meth:`Trainer.to_sae` transposes back."""

    def __init__(self, cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        n, d = cfg.d_sae, int(cfg.d_in or 0)
        d_out = int(cfg.d_out or d) if cfg.transcoder else d  # decoder rows and b_dec live in y's space
        g = torch.Generator().manual_seed(cfg.seed)  # CPU draw: the same init on every device and rank
        w = torch.randn(n, d_out, generator=g, dtype=torch.float64)
        w = w / w.norm(dim=-1, keepdim=True) * float(cfg.decoder_init_norm or 1.0)
        self.W_dec = nn.Parameter(w.to(device, dtype))
        if cfg.transcoder:  # x and y are different spaces, so no tied init: encoder rows drawn alike, independently
            e = torch.randn(n, d, generator=g, dtype=torch.float64)
            e = e / e.norm(dim=-1, keepdim=True) * float(cfg.decoder_init_norm or 1.0)
            self.W_encT = nn.Parameter(e.to(device, dtype))
        else:
            self.W_encT = nn.Parameter(w.to(device, dtype).clone())  # tied init: W_enc = W_dec.T
        self.b_enc = nn.Parameter(torch.zeros(n, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_out, device=device, dtype=dtype))
        if cfg.skip_connection:  # skip transcoder: zeros, as sparsify (the latents start out doing all the work)
            self.W_skip = nn.Parameter(torch.zeros(d_out, d, device=device, dtype=dtype))
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


class ThreadTuner:
    """Chooses the CPU thread count by timing steps (``TrainConfig.num_threads=None``).

    Why: with OpenMP's default (active) wait policy, a parallel op whose worker thread was descheduled by another
    process spins until it runs again; on shared cores every small op can cost a scheduler quantum, and the
    step gets 2-3x slower than with fewer threads. The environment variable that fixes it must be set before
    torch loads, which a library cannot do. So: every ``period`` steps (from step ``start``) each candidate
    (torch's count, half of it, one) runs ``trials`` steps, and the fastest (median) is kept until the next
    probe. Runs shorter than ``start`` steps never change threads (so short runs stay bit-reproducible).

    For topk/batchtopk the count chosen here is the step's *except* the encoder GEMM and its row-wise topk
    (``Selection.gemm_threads``, kept at torch's count): those are one parallel region each and gain from every
    core, while the small ops are where the barriers pile up. Measured on a 2-core box at load average 8, 768 x
    16384 bf16 step: 2302 ms all on 2 threads, 1422 ms all on 1, 1225 ms GEMM on 2 and the rest on 1.
    """

    def __init__(self, max_threads: int, *, start: int = 50, period: int = 400, trials: int = 3) -> None:
        self.candidates = sorted({max_threads, max(1, max_threads // 2), 1}, reverse=True)
        self.start, self.period, self.trials = start, period, trials
        self.chosen = max_threads
        self._times: dict[int, list[float]] = {}

    def threads_for(self, step: int) -> int:
        """The thread count to run step ``step`` with."""
        if len(self.candidates) == 1 or step < self.start:
            return self.chosen
        pos = (step - self.start) % self.period
        window = len(self.candidates) * self.trials
        if pos < window:
            return self.candidates[pos // self.trials]
        if pos == window and self._times:  # the probe just ended: keep the fastest
            self.chosen = min(self._times, key=lambda c: sorted(self._times[c])[len(self._times[c]) // 2])
            self._times = {}
        return self.chosen

    def record(self, step: int, threads: int, seconds: float) -> None:
        if step >= self.start and (step - self.start) % self.period < len(self.candidates) * self.trials:
            self._times.setdefault(threads, []).append(seconds)


class _Forward(NamedTuple):
    """What :meth:`Trainer._forward` computed: the reconstruction, and what the loss and the firing tracker read."""

    x_hat: torch.Tensor  # [b, d_in] reconstruction
    f: torch.Tensor  # features: the selected values [M] (topk/batchtopk) or dense [b, d_sae] (relu/jumprelu)
    latents: torch.Tensor | None  # [M] the latent of each selected value (topk/batchtopk)
    aux_hat: torch.Tensor | None  # [b, d_in] AuxK reconstruction from dead latents (None while none is dead)
    pre: torch.Tensor | None  # [b, d_sae] pre-activations (relu/jumprelu)
    theta: torch.Tensor | None  # [d_sae] thresholds exp(log θ) (jumprelu)
    levels: torch.Tensor | None = None  # [L, b, d_in] matryoshka: each level's part of x_hat (prefix i: levels <= i)


class _StepOut(NamedTuple):
    """The loss and its parts (0-d tensors, still on the device), and the reconstruction for the FVU."""

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
        self.rank, self.world_size = init_distributed(cfg)
        self.source = source_from(activations, cfg.d_in, paired=cfg.transcoder is True, d_out=cfg.d_out)
        self.calibration = calibration
        cfg = _resolve_transcoder(cfg, self.source)  # transcoder / d_out from the data, or a ConfigError
        cfg = dataclasses.replace(cfg, batch_size=cfg.default_batch_size(source_rows(self.source)))
        self.cfg = cfg.resolved(d_in=source_width(self.source), steps=_infer_length(self.source, cfg))
        cfg = self.cfg
        self.transcoder = bool(cfg.transcoder)  # batches are (x, y) pairs; the loss is on y
        self.metadata, self._extra_metadata = _recorded_metadata(cfg, self.source)
        if cfg.default_batch_size() % self.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is the global batch; it must divide by world_size "
                              f"{self.world_size}", field="batch_size")
        self.local_batch = cfg.default_batch_size() // self.world_size
        self.device = resolve_device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype.removeprefix("torch."))
        if cfg.encoder_bf16 is None:  # the default: bf16 encoder GEMM where it is fast (recorded resolved)
            self.cfg = cfg = dataclasses.replace(cfg, encoder_bf16=cfg.architecture in SPARSE_ARCHITECTURES
                                                 and self.dtype == torch.float32
                                                 and int(cfg.d_in or 0) * cfg.d_sae >= _BF16_MIN_WEIGHTS
                                                 and fast_bf16(self.device))
        self.callbacks, self.progress = tuple(callbacks), progress
        self.params = _Params(cfg, self.device, self.dtype)
        groups: Any = self.params.parameters()
        if cfg.decoder_lr_scale != 1.0:  # issue-16 option: the decoder's own lr (its group scales the schedule)
            groups = [{"params": [q for n, q in self.params.named_parameters() if n != "W_dec"]},
                      {"params": [self.params.W_dec], "lr_scale": cfg.decoder_lr_scale}]
        self.opt = torch.optim.Adam(groups, lr=cast(float, cfg.lr), betas=cfg.adam_betas,
                                    eps=cfg.adam_eps, **fused_adam_kwargs(self.device))
        self.sparse = cfg.architecture in SPARSE_ARCHITECTURES
        self.unit_norm_decoder = cfg.architecture != "relu"
        # issue-16 option decoder_norm="rescale": free decoder rows, see _effective_weights (no unit-norm steps)
        self.rescale_decoder = self.sparse and cfg.decoder_norm == "rescale"
        if self.rescale_decoder:
            self.unit_norm_decoder = False
        self.sel = Selection(k=int(cfg.k or 0), batch_level=cfg.architecture in ("batchtopk", "matryoshka_batchtopk"),
                             max_per_token=int(cfg.batchtopk_max_per_token or 0), bf16=bool(cfg.encoder_bf16),
                             workspace={})
        # matryoshka_batchtopk: the prefix widths m_1 < ... < m_L = d_sae on the device (see _matryoshka_forward)
        self.matryoshka = (torch.tensor(cfg.matryoshka_widths, dtype=torch.long, device=self.device)
                           if cfg.architecture == "matryoshka_batchtopk" else None)
        self.aux_scale = 0.0
        # per-rank window: the ranks' windows together span dead_window_tokens, in lockstep with one process
        window = int(cfg.dead_window_tokens or 10_000_000)  # always set by resolved()
        self.tracker = FiringTracker(cfg.d_sae, window=window // self.world_size, device=self.device)
        self.step_no, self.tokens = 0, 0
        # batchtopk: running (bias-corrected EMA) estimate of the batch threshold, the k·B-th largest activation
        # of each step; the saved jumprelu threshold when no calibration set is given (see calibrate_threshold)
        self._theta_ema = torch.zeros((), device=self.device, dtype=torch.float64)
        self._theta_weight = 0.0
        self.threshold_source: str | None = None
        # resample_dead (issue-16 option): the last batch and its reconstruction, when each latent was resampled
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self._resampled_at = torch.zeros(cfg.d_sae, dtype=torch.long, device=self.device)
        if cfg.steps is None:
            warnings.warn("the run length is unknown (no steps, total_tokens or sized data): training to the end "
                          "of the activations, lr constant after warmup", stacklevel=3)
        self.scale, self.var = 1.0, 1.0  # input-norm constant; data variance (the topk loss's denominator)
        self.scale_out = 1.0  # transcoders: y's own norm constant (var is then y's variance)
        self.log: list[dict[str, Any]] = []
        self._acc = torch.zeros(6, device=self.device, dtype=torch.float64)
        self._fvu = FVUAccumulator()
        self._t_log, self._tokens_log = time.perf_counter(), 0

    # ------------------------------------------------------------------ the training step

    def step(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> None:
        """One optimiser step on a batch of raw activations ``x [b, d_in]`` (a transcoder's: a pair ``(x, y)``,
        y ``[b, d_out]``); no value leaves the device."""
        cfg, p = self.cfg, self.params
        y = None
        if isinstance(x, (tuple, list)) != self.transcoder:
            raise ConfigError(f"this {'transcoder' if self.transcoder else 'SAE'} trains on "
                              f"{'(x, y) pairs' if self.transcoder else 'single activations'}, got "
                              f"{type(x).__name__}", field="transcoder")
        if isinstance(x, (tuple, list)):  # transcoder: y scaled by its own constant, to E‖y‖ = √d_out
            x, y = x
            y = y.to(self.device, self.dtype, non_blocking=True) * self.scale_out  # [b, d_out]
        # fetch batch: onto the device in the master dtype, scaled to E‖x‖ = √d_in; this step's lr and λ
        x = x.to(self.device, self.dtype, non_blocking=True) * self.scale  # [b, d_in]
        lr, sparsity_coef = self.schedule(self.step_no)
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if cfg.k_anneal_fraction:  # issue-16 option: k falls from k_anneal_start·k to k (see annealed_k)
            self.sel.k = self.annealed_k(self.step_no)
        # forward: encode, select, decode (topk/batchtopk through the sparse kernels)
        fwd = self._forward(x)
        if cfg.skip_connection:  # skip transcoder: + x @ W_skip.T, a dense linear map beside the latents
            fwd = self._add_skip(x, fwd)
        target = x if y is None else y  # what is reconstructed: x itself, or a transcoder's y
        # loss: reconstruction, + α·AuxK (topk/batchtopk) or + λ·sparsity penalty (relu/jumprelu)
        out = self._loss(target, fwd, sparsity_coef)
        # dead-latent bookkeeping, part 1: count this batch's firings now, so that nothing outside the autograd
        # graph holds the dense path's [b, d_sae] activations and the backward frees them
        if fwd.latents is not None:  # topk / batchtopk: the selected pairs are the firings
            self.tracker.update(indices=fwd.latents.view(x.shape[0], -1), values=fwd.f.detach())
            if self.sel.batch_level:  # the smallest selected value is this batch's threshold (no host read)
                self._theta_ema.mul_(_THETA_DECAY).add_(fwd.f.detach().min().double(), alpha=1 - _THETA_DECAY)
                self._theta_weight = self._theta_weight * _THETA_DECAY + (1 - _THETA_DECAY)
        else:
            self.tracker.update(fwd.f.detach())
        del fwd
        # backward, then the mean over data-parallel ranks (each rank's loss is a per-token mean)
        out.loss.backward()
        if self.world_size > 1:
            all_reduce_mean_([q.grad for q in p.parameters()], self.world_size)
        # constrain decoder (gradient): drop each unit row's parallel component, which renormalising would undo
        if self.unit_norm_decoder:
            remove_parallel_component_(p.W_dec)
        # clip
        if cfg.max_grad_norm:
            nn.utils.clip_grad_norm_(p.parameters(), cfg.max_grad_norm)
        # step; the sparse kernels get their weight-gradient buffers back for the next backward to fill
        self.opt.step()
        if self.sparse:
            self.sel.reclaim_grads(p.W_encT.grad, p.W_dec.grad)
        self.opt.zero_grad(set_to_none=True)
        # constrain decoder: rows back to unit norm
        if self.unit_norm_decoder:
            normalise_rows_(p.W_dec)
        # log: sums stay on the device; _log_metrics pulls them every log_every steps
        self._acc += torch.stack([t.detach().double() for t in out[1:]] + [self._acc.new_ones(())])
        self._fvu.update(target, out.x_hat.detach())
        if cfg.resample_dead:
            self._last = (x, out.x_hat.detach())
        self.step_no += 1
        self.tokens += x.shape[0] * self.world_size
        # dead-latent bookkeeping, part 2: when a tracker block just closed, refresh AuxK's dead set
        if self.sparse and self.tracker.current_tokens == 0:
            self._refresh_dead()

    def _add_skip(self, x: torch.Tensor, fwd: _Forward) -> _Forward:
        """A skip transcoder's forward: the reconstruction (and matryoshka's prefixes, each of which the loss
        compares with y on its own) plus ``x @ W_skip.T``. AuxK's residual is then what latents and skip missed."""
        skip = F.linear(x, self.params.W_skip)  # [b, d_out]
        # matryoshka: every prefix contains level 0, so skip added there shifts each prefix by it
        levels = torch.cat([fwd.levels[:1] + skip, fwd.levels[1:]]) if fwd.levels is not None else None
        return fwd._replace(x_hat=fwd.x_hat + skip, levels=levels)

    def _forward(self, x: torch.Tensor) -> _Forward:
        """Features and reconstruction of the scaled batch ``x [b, d_in]``."""
        p, cfg = self.params, self.cfg
        if self.sparse:  # topk / batchtopk: only the selected latents are touched after the encoder GEMM
            b_in = p.b_dec if cfg.apply_b_dec_to_input else None
            W_encT, b_enc, W_dec = self._effective_weights()
            vals, avals, pairs, apairs = SparseEncode.apply(x, W_encT, b_enc, b_in, self.sel)  # [M], [b·k_aux]
            if self.matryoshka is not None:  # matryoshka_batchtopk: every prefix's reconstruction, one decode
                return self._matryoshka_forward(vals, avals, pairs, apairs, W_dec)
            dec, e_hat = SparseDecode.apply(W_dec, vals, pairs, avals, apairs, self.sel.workspace)  # [b, d_in] each
            x_hat = dec + p.b_dec  # [b, d_in]
            return _Forward(x_hat, vals, pairs.latents, e_hat if apairs is not None else None, None, None)
        pre = F.linear(x - p.b_dec if cfg.apply_b_dec_to_input else x, p.W_encT, p.b_enc)  # [b, d_sae]
        theta = None
        if cfg.architecture == "relu":
            f = F.relu(pre)  # [b, d_sae]
        else:  # jumprelu
            theta = p.log_threshold.exp()  # [d_sae]
            f = JumpReLU.apply(pre, theta, cfg.jumprelu_bandwidth)  # [b, d_sae]
        x_hat = f @ p.W_dec + p.b_dec  # [b, d_in]
        return _Forward(x_hat, f, None, None, pre, theta)

    def _matryoshka_forward(self, vals: torch.Tensor, avals: torch.Tensor, pairs: Pairs, apairs: Pairs | None,
                            W_dec: torch.Tensor) -> _Forward:
        """Matryoshka's forward: the full reconstruction and each level's part of it, from one sparse decode.

        Why one decode: prefix i's reconstruction is the sum of the contributions of levels ≤ i (level ℓ: the
        latents in ``[m_ℓ-1, m_ℓ)``), so the selected pairs are regrouped into ``L·b`` bags by (level, token),
        decoded once by :class:`SparseDecode` (batchtopk's sparse forward and backward over the same ``M`` pairs,
        no ``[b, d_sae]`` tensor). It returns the ``[L, b, d_in]`` level contributions; the inner prefixes' losses
        are :class:`~sae_hub.training.kernels.NestedPrefixLoss` (running residuals level by level, and the suffix
        sums of their gradients, which is exactly ∂(Σ_i loss_i)/∂(level ℓ's part)). Measured alternatives were
        slower: ``cumsum(0)`` over ``[L, b, d_in]`` (~100 ms a step at 768x16k, b=2048, with its backward), L-1
        adds and a stack, a lower-triangular GEMM plus ``mse_loss``. The regrouping is a stable sort of the levels
        (pairs stay in token order within a level).
        """
        widths = cast(torch.Tensor, self.matryoshka)  # [L]
        L, B, M = widths.numel(), pairs.offsets.numel(), pairs.latents.numel()
        level = torch.searchsorted(widths, pairs.latents, right=True)  # [M] level of each pair, in [0, L)
        arange = torch.arange(max(M, L * B), device=level.device)  # [max(M, L·b)]
        tokens = torch.repeat_interleave(arange[:B], pairs.crow.diff(), output_size=M)  # [M] token of each pair
        order = torch.argsort(level, stable=True)  # [M] the pairs grouped by (level, token)
        keys = (level * B + tokens).index_select(0, order)  # [M] bag (level·b + token) of each grouped pair, sorted
        grouped = Pairs(pairs.latents.index_select(0, order), torch.searchsorted(keys, arange[:L * B]),
                        pairs.n_latents)  # L·b bags
        dec, e_hat = SparseDecode.apply(W_dec, vals.index_select(0, order), grouped, avals, apairs,
                                        self.sel.workspace)  # [L·b, d_in], [b, d_in] or [0]
        levels = dec.view(L, B, -1)  # [L, b, d_in] each level's contribution (no b_dec)
        x_hat = levels.sum(0) + self.params.b_dec  # [b, d_in] the whole dictionary's reconstruction
        return _Forward(x_hat, vals, pairs.latents, e_hat if apairs is not None else None, None, None,
                        levels if L > 1 else None)

    def _effective_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_encT, b_enc, W_dec) as the SAE computes with them. The parameters themselves, except with
        ``decoder_norm="rescale"`` (SAELens's rescale_acts_by_decoder_norm): decoder V/‖V‖, encoder and b_enc
        times ‖V‖ -- differentiable, so the free rows' gradient has no component along the row and a row's
        direction moves at lr/‖V‖ (why: ‖V‖ starts at 0.1, so directions settle ~10x faster early in a run)."""
        p = self.params
        if not self.rescale_decoder:
            return p.W_encT, p.b_enc, p.W_dec
        norms = p.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # [n, 1]
        return p.W_encT * norms, p.b_enc * norms.squeeze(-1), p.W_dec / norms

    def annealed_k(self, step: int) -> int:
        """k at ``step`` with ``k_anneal_fraction``: k_anneal_start·k falling linearly to k (why: early on more
        latents get gradient, so fewer die before AuxK can see them)."""
        cfg = self.cfg
        k, steps = int(cfg.k or 1), int(cfg.steps or 0)
        span = int(cfg.k_anneal_fraction * steps)
        if not span or step >= span:
            return k
        start = min(cfg.d_sae, round(cfg.k_anneal_start * k))
        return max(k, round(start + (k - start) * step / span))

    def _loss(self, x: torch.Tensor, fwd: _Forward, coef: float) -> _StepOut:
        """The architecture's loss on ``x`` and ``fwd`` (see the module docstring), with its parts and the L0."""
        p, cfg = self.params, self.cfg
        if self.sparse:  # normalised MSE (a constant denominator: ranks average to the global gradient) + α·AuxK
            err = x - fwd.x_hat  # [b, d_in]
            recon = err.pow(2).sum(-1).mean() / self.var
            aux = recon.new_zeros(())
            if fwd.aux_hat is not None:  # AuxK: dead latents predict what the live ones missed
                aux = self.aux_scale * (fwd.aux_hat - err.detach()).pow(2).sum(-1).mean() / self.var
            l0 = (fwd.f > 0).sum() / x.shape[0]
            loss = recon + cfg.auxk_alpha * aux
            if fwd.levels is not None:  # matryoshka: + each inner prefix's own normalised MSE (summed, as SAELens)
                loss = loss + NestedPrefixLoss.apply(fwd.levels, x - p.b_dec) / (x.shape[0] * self.var)
            return _StepOut(fwd.x_hat, loss, recon, aux, aux.new_zeros(()), l0)
        if cfg.architecture == "relu":  # Anthropic April 2024: L1 on f·‖W_dec_j‖
            sparsity = (fwd.f * p.W_dec.norm(dim=-1)).sum(-1).mean()
        else:  # jumprelu: straight-through L0
            sparsity = Heaviside.apply(fwd.pre, fwd.theta, cfg.jumprelu_bandwidth).sum(-1).mean()
        recon = (x - fwd.x_hat).pow(2).sum(-1).mean()
        l0 = (fwd.f.detach() != 0).sum() / x.shape[0]
        return _StepOut(fwd.x_hat, recon + coef * sparsity, recon, sparsity.new_zeros(()), sparsity, l0)

    def schedule(self, step: int) -> tuple[float, float]:
        """(lr, sparsity coefficient) at ``step``: a pure function of the step, so the step is its whole state.
        lr: linear warmup, constant, linear decay to 0 over the last ``lr_decay_fraction``; λ: linear warmup."""
        cfg = self.cfg
        steps = int(cfg.steps or 1)
        warm = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
        decay_steps = int(cfg.lr_decay_fraction * steps) if cfg.steps is not None else 0
        decay = min(1.0, (steps - step) / decay_steps) if decay_steps else 1.0
        coef = cfg.l1_coefficient if cfg.architecture == "relu" else cfg.l0_coefficient
        sw = cfg.sparsity_warmup_steps
        return cast(float, cfg.lr) * warm * decay, coef * (min(1.0, (step + 1) / sw) if sw else 1.0)

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
        if self.cfg.resample_dead and n_dead:
            self._resample(dead, counts > 0)

    @torch.no_grad()
    def _resample(self, dead: torch.Tensor, alive: torch.Tensor) -> None:
        """``resample_dead``: re-point latents dead for a whole window (and not resampled within one) at the
        residuals of high-error tokens of the last batch. Why: with as many latents as true features each dead
        latent is a missed feature, and AuxK alone revives them slowly in a short run."""
        cfg, p = self.cfg, self.params
        steps, window = int(cfg.steps or 0), int(cfg.dead_window_tokens or 0)
        if self._last is None or not alive.any() or (steps and self.step_no >= (1 - cfg.lr_decay_fraction) * steps):
            return
        dead = dead[self.tokens - self._resampled_at[dead] >= window]  # dead a whole window, not just resampled
        if not dead.numel():
            return
        x, x_hat = self._last
        err = x - x_hat  # [b, d_in]
        g = torch.Generator(device=x.device).manual_seed(cfg.seed * 1_000_003 + self.step_no)
        weight = err.pow(2).sum(-1) + 1e-12  # [b]
        picks = torch.multinomial(weight, dead.numel(), replacement=dead.numel() > weight.numel(), generator=g)
        dirs = F.normalize(err[picks], dim=-1)  # [n_dead, d_in]
        W_encT, b_enc, _ = self._effective_weights()
        enc_norm, bias = W_encT[alive].norm(dim=-1).mean(), b_enc[alive].mean()
        dec_norm = p.W_dec[alive].norm(dim=-1).mean() if self.rescale_decoder else 1.0  # rescale: V's scale
        p.W_dec[dead] = (dirs * dec_norm).to(p.W_dec.dtype)
        p.W_encT[dead] = (dirs * (enc_norm / dec_norm)).to(p.W_encT.dtype)  # effective: dirs · enc_norm
        p.b_enc[dead] = (bias / dec_norm).to(p.b_enc.dtype)
        for q in (p.W_dec, p.W_encT, p.b_enc):  # Adam: no momentum, the live rows' mean second moment
            st = self.opt.state.get(q, {})
            if "exp_avg" in st:
                st["exp_avg"][dead] = 0
                st["exp_avg_sq"][dead] = st["exp_avg_sq"][alive].mean(0)
        if self.world_size > 1:  # ranks' last batches differ: rank 0's choice wins
            for q in (p.W_dec, p.W_encT, p.b_enc):
                dist.broadcast(q.data, 0)
                for t in self.opt.state.get(q, {}).values():
                    if t.dim():
                        dist.broadcast(t, 0)
        self._resampled_at[dead] = self.tokens

    # ------------------------------------------------------------------ init

    @torch.no_grad()
    def initialise(self, batches: list[Any]) -> None:
        """Input-norm constant, data variance and b_dec from the first batches (gathered over ranks, so every
        rank, and a single process, compute them from the same tokens)."""
        cfg = self.cfg
        if self.transcoder:
            self._initialise_transcoder(batches)
            return
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

    @torch.no_grad()
    def _initialise_transcoder(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """:meth:`initialise` for (x, y) pairs: x and y each scaled to E‖·‖ = √width by their own constant (an MLP's
        output norm has nothing to do with its input's), and variance and b_dec taken from y, the reconstructed
        side (b_dec at y's geometric median, as an SAE's at x's)."""
        cfg = self.cfg
        xs, ys = (torch.cat([b[i].to(self.device, torch.float32) for b in batches]) for i in (0, 1))
        if self.world_size > 1:
            gathered = []
            for sample in (xs, ys):
                parts = [torch.empty_like(sample) for _ in range(self.world_size)]
                dist.all_gather(parts, sample)
                gathered.append(torch.cat(parts))
            xs, ys = gathered
        if cfg.normalize_activations:
            self.scale = float(math.sqrt(int(cfg.d_in or 1)) / xs.norm(dim=-1).mean().clamp_min(1e-12))
            self.scale_out = float(math.sqrt(int(cfg.d_out or 1)) / ys.norm(dim=-1).mean().clamp_min(1e-12))
        ys = ys * self.scale_out
        mean = ys.mean(0)
        self.var = float((ys - mean).pow(2).sum(-1).mean().clamp_min(1e-12))
        if cfg.b_dec_init == "geometric_median":
            self.params.b_dec.copy_(geometric_median(ys).to(self.dtype))
        elif cfg.b_dec_init == "mean":
            self.params.b_dec.copy_(mean.to(self.dtype))
        if self.world_size > 1:
            for q in self.params.parameters():
                dist.broadcast(q.data, 0)

    # ------------------------------------------------------------------ running

    def run(self, resume: str | os.PathLike[str] | bool | None = None) -> SAE:
        """Train to ``cfg.steps`` (continuing from a checkpoint with ``resume``), save, return the SAE."""
        cfg = self.cfg
        ckpt = resume_path(resume, cfg.checkpoint_dir)
        if ckpt is not None:
            self.load_checkpoint(ckpt)
        it = self.source.batches(self.local_batch, seed=cfg.seed, rank=self.rank, world_size=self.world_size,
                                 start=self.step_no)
        if ckpt is None:
            first = list(itertools.islice(it, max(1, math.ceil(cfg.init_tokens / cfg.default_batch_size()))))
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
        user_threads = torch.get_num_threads()
        tuner = None
        if self.device.type == "cpu":
            if cfg.num_threads is not None:
                torch.set_num_threads(int(cfg.num_threads))
            else:
                tuner = ThreadTuner(user_threads)
                if self.sparse:  # the encoder GEMM and topk keep every thread; the tuner sets the rest's
                    self.sel.gemm_threads = user_threads
        self.thread_tuner = tuner
        try:
            while cfg.steps is None or self.step_no < cfg.steps:
                x = next(it, None)
                if x is None:
                    if cfg.steps is not None:
                        warnings.warn(f"activations ran out after {self.step_no} of {cfg.steps} steps",
                                      stacklevel=2)
                    break
                if tuner is not None:
                    n_threads = tuner.threads_for(self.step_no)
                    if n_threads != torch.get_num_threads():
                        torch.set_num_threads(n_threads)
                    t0 = time.perf_counter()
                    self.step(x)
                    tuner.record(self.step_no - 1, n_threads, time.perf_counter() - t0)
                else:
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
            if torch.get_num_threads() != user_threads:
                torch.set_num_threads(user_threads)
            self.sel.gemm_threads = 0
        sae = self.to_sae(it)
        out = cfg.output_dir or (str(Path(cfg.checkpoint_dir) / "final") if cfg.checkpoint_dir else None)
        sparsity = self.log10_density()
        if out and self.rank == 0:  # what SAELens cannot compute (a topk transcoder) is saved as sae-hub-only
            sae.save_pretrained(out, sparsity=sparsity, saelens_compatible=not sae.cfg.saelens_incompatibilities())
        sae.training_log = self.log  # the scalar log, also in cfg.extra["metrics"]
        if self.rank == 0:  # callbacks with an end hook (sae_hub.training.callbacks.WandbCallback) get the SAE
            for cb in self.callbacks:
                end = getattr(cb, "on_train_end", None)
                if callable(end):
                    end(sae)
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
        W_encT, b_enc, W_dec = self._effective_weights()  # decoder_norm="rescale": ‖V‖ folded in
        tensors = {"W_enc": W_encT.t().contiguous().clone(), "b_enc": b_enc.clone(),
                   "W_dec": W_dec.clone(), "b_dec": p.b_dec.clone()}
        if cfg.skip_connection:
            tensors["W_skip"] = p.W_skip.clone()
        arch = cfg.architecture
        if arch in ("batchtopk", "matryoshka_batchtopk"):
            arch = cfg.batchtopk_save_as
        if cfg.architecture == "matryoshka_batchtopk":  # a plain jumprelu/topk SAE; the nesting is provenance
            self._extra_metadata["matryoshka_widths"] = list(cfg.matryoshka_widths or [])
        if arch == "jumprelu":
            if cfg.architecture == "jumprelu":
                tensors["threshold"] = p.log_threshold.exp().clone()
            else:
                theta = self.calibrate_threshold(held_out)
                tensors["threshold"] = torch.full_like(p.b_enc, theta)
                self._extra_metadata["batchtopk_threshold"] = {"value": theta, "source": self.threshold_source}
        scfg = SAEConfig(
            architecture=arch, d_in=int(cfg.d_in or 0), d_sae=cfg.d_sae,
            k=cfg.k if arch == "topk" else None, apply_b_dec_to_input=cfg.apply_b_dec_to_input,
            normalize_activations="expected_average_only_in" if self.scale != 1.0 else "none",
            norm_scaling_factor=self.scale if self.scale != 1.0 else None,
            dtype=cfg.dtype, extra={**self._extra_metadata, "training": cfg.to_dict(),
                                    "metrics": json_safe(self.log[-1] if self.log else {})},
            **self.metadata,
            d_out=int(cfg.d_out or 0) if self.transcoder else None, has_skip=bool(cfg.skip_connection),
        )
        scfg.record(f"trained: sae_hub.training.train_sae architecture={cfg.architecture} steps={self.step_no} "
                    f"tokens={self.tokens}")
        sae = SAE.from_state_dict(scfg, tensors, device=self.device)
        if self.transcoder:  # x and y had their own constants; explicit factors also rescale W_skip by s_in/s_out
            if (self.scale, self.scale_out) != (1.0, 1.0):
                sae.fold_activation_norm_scaling_factor(self.scale, self.scale_out)
        elif self.scale != 1.0:
            sae.fold_activation_norm_scaling_factor()
        if arch == "relu":  # the L1 penalty measured f·‖W_dec_j‖: make that the feature value, decoder unit-norm
            sae.fold_W_dec_norm()
        return sae

    @torch.no_grad()
    def calibrate_threshold(self, held_out: Iterator[torch.Tensor] | None = None) -> float:
        """The global JumpReLU threshold θ for a batchtopk SAE saved as jumprelu; never fails.

        With ``calibration`` activations (the argument of :func:`train_sae`): θ is the (k·N)-th largest relu
        pre-activation over their N tokens × d_sae latents, i.e. the BatchTopK rule applied to the whole set at
        once, so their mean L0 is exactly k. Found from each token's top-m values, exact when no token has m values
        above θ (else m doubles). Without one: the running estimate kept during training, an exponential average
        (horizon ~100 steps, bias-corrected) of each step's batch threshold (its k·B-th largest activation), which
        is what the model was trained to fire above; it never re-reads training rows nor needs more data.
        ``held_out`` is accepted for compatibility and ignored. Which was used is recorded in
        ``sae.cfg.extra["batchtopk_threshold"]``. Rank 0 decides and broadcasts θ.
        """
        cfg, p = self.cfg, self.params
        del held_out
        theta = torch.zeros((), device=self.device, dtype=torch.float64)
        xs: list[torch.Tensor] = []
        if self.calibration is not None:
            n_batches = max(1, math.ceil(cfg.calibration_tokens / self.local_batch))
            if isinstance(self.calibration, torch.Tensor):
                it: Any = iter(self.calibration.split(self.local_batch))
                n_batches = len(self.calibration)
            else:
                it = source_from(self.calibration, cfg.d_in).batches(self.local_batch, seed=cfg.seed + 1)
            xs = [(b[0] if isinstance(b, (tuple, list)) else b).to(self.device, self.dtype) * self.scale
                  for b in itertools.islice(it, n_batches)]  # a transcoder's calibration pairs: the x side
        if not xs:
            theta = self._theta_ema / max(self._theta_weight, 1e-12)
            if self.world_size > 1:
                dist.all_reduce(theta)
                theta /= self.world_size
            self.threshold_source = (f"running estimate of the batch threshold over the last ~{_THETA_HORIZON} "
                                     f"training steps (no calibration activations given)")
            if self._theta_weight == 0.0:
                self.threshold_source = "no training steps and no calibration activations: threshold 0"
            return float(theta)
        if self.rank == 0:
            n_tokens = sum(x.shape[0] for x in xs)
            m = min(cfg.d_sae, 4 * int(cfg.k or 1))
            W_encT, b_enc, _ = self._effective_weights()
            while True:
                tops = []
                for x in xs:
                    pre = F.linear(x - p.b_dec if cfg.apply_b_dec_to_input else x, W_encT, b_enc).float()
                    tops.append(F.relu(pre).topk(m, dim=-1).values)  # sorted: column m-1 is each row's m-th
                flat = torch.cat([t.reshape(-1) for t in tops])
                theta = flat.topk(int(cfg.k or 1) * n_tokens).values[-1].double()
                if m == cfg.d_sae or all(bool((t[:, -1] < theta).all()) for t in tops):
                    break
                m = min(cfg.d_sae, 2 * m)
        if self.world_size > 1:
            dist.broadcast(theta, 0)
        self.threshold_source = f"calibration activations ({sum(x.shape[0] for x in xs)} tokens)"
        return float(theta)

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path | None:
        """Write ``<checkpoint_dir>/step_<N>/`` (atomically: see :mod:`~sae_hub.training.checkpoint`). Every rank
        calls it (the firing counts are summed over ranks); rank 0 writes and returns the folder."""
        cfg = self.cfg
        blocks, current, total = self._tracker_global()  # collective: every rank calls this
        if self.rank != 0 or not cfg.checkpoint_dir:
            return None
        tensors: dict[str, Any] = {
            "params": {k: v.detach() for k, v in self.params.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "tracker_blocks": blocks, "tracker_current": current, "tracker_total": total,
            "dead_idx": self.sel.dead_idx if self.sel.dead_idx is not None else torch.zeros(0, dtype=torch.long),
            "acc": self._acc, "rng_torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            tensors["rng_cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "format": CHECKPOINT_FORMAT, "step": self.step_no, "tokens": self.tokens, "scale": self.scale,
            "scale_out": self.scale_out,
            "var": self.var, "world_size": self.world_size, "config": cfg.to_dict(),
            "tracker": {"block_tokens": [t for t, _ in self.tracker.blocks],
                        "current_tokens": self.tracker.current_tokens, "total_tokens": self.tracker.total_tokens},
            "aux": {"k_aux": self.sel.k_aux, "scale": self.aux_scale},
            "theta_ema": [float(self._theta_ema), self._theta_weight],
            "python_rng": py_rng_to_json(random.getstate()), "log": json_safe(self.log),
        }
        return write_checkpoint(cfg.checkpoint_dir, self.step_no, tensors, state, keep=cfg.keep_checkpoints)

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
        state, tensors = read_checkpoint(path, cfg=self.cfg, world_size=self.world_size, map_location=self.device)
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
        random.setstate(py_rng_from_json(state["python_rng"]))
        self.step_no, self.tokens = int(state["step"]), int(state["tokens"])
        self.scale, self.var = float(state["scale"]), float(state["var"])
        self.scale_out = float(state.get("scale_out", 1.0))  # absent before transcoders: 1.0, as for every SAE
        self.log = list(state["log"])
        ema, weight = state.get("theta_ema", [0.0, 0.0])  # absent from checkpoints of older versions
        self._theta_ema.fill_(float(ema))
        self._theta_weight = float(weight)


def train_sae(cfg: TrainConfig, activations: Any, *, callbacks: Sequence[Callable[[dict], Any]] = (),
              resume: str | os.PathLike[str] | bool | None = None, progress: bool = True,
              calibration: Any = None) -> SAE:
    """Train an SAE on ``activations`` and return it (saved to ``cfg.output_dir`` too when set).

    ``activations``: a tensor ``[N, d_in]`` (shuffled each epoch with ``cfg.seed``), an iterable of batches or a
    DataLoader (read in order; tuple/list batches use their first element, dict batches ``"activations"`` or
    ``"x"``), or an activation source (``.batches(batch_size, *, seed, rank=0, world_size=1, start=0)``).
    A transcoder trains on pairs: a tuple of two tensors ``(x [N, d_in], y [N, d_out])``, a source with
    ``d_out`` / ``hook_name_out`` (``ModelActivationSource`` or ``ActivationCache`` given ``hook_name_out``), or,
    with ``cfg.transcoder=True``, an iterable of ``(x, y)`` batches (or dicts with ``"x"`` and ``"y"``).
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

