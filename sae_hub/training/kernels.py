"""The training-time SAE math: sparse autograd kernels for TopK / BatchTopK, JumpReLU's straight-through
estimators, and the decoder constraints. :mod:`sae_hub.training.trainer` composes these into a step.

Why a restatement of :mod:`sae_hub.sae`: training needs gradients, and for TopK only ``k`` of ``d_sae`` latents
per token are non-zero, so a dense backward wastes ~5x the arithmetic (``docs/training.md#trainer``). The
SAE is the same one (``f = topk(relu((x - b_dec) @ W_enc + b_enc))``, ``x_hat = f @ W_dec + b_dec``), laid out
for row scatters: the encoder is stored transposed, ``W_encT = W_enc.T [d_sae, d_in]``, so that both weight
gradients are sums of rows indexed by latent (``F.embedding_bag``'s layout). ``Trainer.to_sae`` transposes back.

Notation. ``B`` tokens, ``d`` = d_in, ``n`` = d_sae, ``x [B, d]``; a *pair* ``p = (b, j)`` is a selected
(token, latent); ``P`` the selected pairs (``M = |P|``: ``B·k`` for topk, ``k·B`` for the batch in batchtopk),
``A`` the AuxK pairs (the ``k_aux`` largest pre-activations among the currently dead latents, per token).

:class:`SparseEncode` — ``SparseEncode.apply(x, W_encT, b_enc, b_dec, sel) -> (v, a, pairs, apairs)``

    forward   x'  = x - b_dec                                    [B, d]   (x itself without apply_b_dec_to_input)
              z   = x' @ W_encT.T + b_enc                        [B, n]   one dense GEMM (bf16 if sel.bf16)
              P   = topk_j z[b, :] per token, or the top k·B of z over the batch (batchtopk)
              v_p = relu(z[b, j])  for p = (b, j) in P           [M]      returned value 1
              a_p = relu(z[b, j])  for p = (b, j) in A           [B·k_aux] (or [0] without AuxK)   value 2
              pairs, apairs: :class:`Pairs` saying which (b, j) each value belongs to (no gradient)   3, 4
    backward  given g_v = dL/dv [M] and g_a = dL/da:
              g~_p           = g_p · [v_p > 0]                    relu; over P with g_v and over A with g_a
              dL/db_enc[j]   = sum_{p=(b,j)} g~_p                 [n]      index_add
              dL/dW_encT[j]  = sum_{p=(b,j)} g~_p · x'[b]         [n, d]   a bag backward (CSR [n, B] @ x')
              dL/db_dec      = -(dL/db_enc) @ W_encT              [d]      since dz[b, j]/db_dec = -W_encT[j]
              dL/dx          = None                               activations are data, never differentiated
    The selection is piecewise constant (no gradient), exactly as dense autograd through ``topk`` treats it.
    The ``[B, n]`` pre-activations die with the forward (written into a reused workspace buffer).

:class:`SparseDecode` — ``SparseDecode.apply(W_dec, v, pairs, a, apairs, ws) -> (y, e)`` (no bias)

    forward   y[b] = sum_{p=(b,j) in P} v_p · W_dec[j]            [B, d]   F.embedding_bag, mode="sum"
              e[b] = sum_{p=(b,j) in A} a_p · W_dec[j]            [B, d]   AuxK reconstruction ([0] without)
    backward  given G = dL/dy [B, d] (and G_e = dL/de):
              dL/dW_dec[j] = sum_{p=(b,j)} v_p · G[b]             [n, d]   (+ the same over A with a, G_e)
              dL/dv_p      = <G[b], W_dec[j]>                     [M]      a sampled dense-dense product (SDDMM)
              dL/da_p      = <G_e[b], W_dec[j]>                   [B·k_aux]

:class:`JumpReLU` and :class:`Heaviside` — ``f = z·H(z - θ)`` and the L0 term ``H(z - θ)`` with straight-through
gradients for θ through a rectangle kernel ``K(u) = [|u| < 1/2]`` of width ε (Rajamanoharan et al. 2024,
eqs. 11-12): ``df/dz = H(z - θ)``, ``df/dθ = -(θ/ε)·K((z - θ)/ε)``; ``dH/dz = 0``, ``dH/dθ = -(1/ε)·K((z - θ)/ε)``.

Decoder constraints (all but relu): :func:`remove_parallel_component_` before the optimiser step (the gradient
cannot change a unit row's norm) and :func:`normalise_rows_` after it.

On CPU the weight gradients are one CSR x dense GEMM each and the value gradients an SDDMM, written into
buffers reused across steps (fresh tens-of-MB buffers cost page faults); on GPUs torch's embedding_bag
backward kernels do the same job. Precedents: OpenAI ``sparse_autoencoder/kernels.py`` (Triton), EleutherAI
sparsify ``fused_encoder.py`` (``embedding_bag`` / ``index_add_`` backward).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Heaviside",
    "JumpReLU",
    "NestedPrefixLoss",
    "Pairs",
    "Selection",
    "SparseDecode",
    "SparseEncode",
    "fast_bf16",
    "normalise_rows_",
    "remove_parallel_component_",
    "sparse_decode",
    "sparse_encode",
]


# ====================================================================== which latents fire


@dataclass
class Selection:
    """Which latents fire: per token (topk) or per batch (batchtopk), plus the AuxK choice among dead latents.

    The trainer keeps one across steps and updates ``dead_idx`` / ``k_aux`` when its dead-latent window
    closes; the kernels only read it.
    """

    k: int
    batch_level: bool = False
    max_per_token: int = 0  # batchtopk candidate cap per token (0: exact flat top-k over the batch)
    bf16: bool = False
    dead_idx: torch.Tensor | None = None  # [n_dead] latents that are dead now; None: no AuxK
    k_aux: int = 0
    # Threads for the encoder GEMM and the selection (0: torch's current count). The trainer runs the rest of
    # the step on fewer threads when that is faster (ThreadTuner): the GEMM and the row-wise topk are one
    # parallel region each and use every core, while the step's ~40 small ops would each pay an OpenMP barrier,
    # which costs a scheduler quantum when another process holds a core (torch.sort of 65k indices: 1 ms on one
    # thread, ~390 ms on two with the cores shared; measured).
    gemm_threads: int = 0
    # Buffers reused across steps (pre-activations, bf16 weights, weight gradients). Tensors of tens of MB are
    # mmap'd fresh at every allocation and the kernel zeroes their pages: ~30% of a CPU step otherwise.
    workspace: dict[str, torch.Tensor] | None = None

    def reclaim_grads(self, grad_W_encT: torch.Tensor | None, grad_W_dec: torch.Tensor | None) -> None:
        """Hand the weight-gradient buffers back after the optimiser step, for the next backward to fill.

        The backward *removes* them from the workspace so autograd adopts them as ``.grad`` without a copy.
        """
        if self.workspace is not None:
            self.workspace.update(grad_W_encT=grad_W_encT, grad_W_dec=grad_W_dec)  # type: ignore[arg-type]


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch threads (``n <= 0``: unchanged), restoring the count after."""
    before = torch.get_num_threads()
    if n <= 0 or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 GEMMs at about twice the fp32 rate: CUDA with bf16, or a CPU with AVX512-BF16
    or AMX (oneDNN's bf16 kernels). Elsewhere bf16 is emulated and slower than fp32, so the trainer's default
    (``encoder_bf16=None``) keeps fp32 there."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _buffer(ws: dict[str, torch.Tensor] | None, name: str, shape: tuple[int, ...], like: torch.Tensor,
            dtype: torch.dtype) -> torch.Tensor | None:
    """A reusable buffer kept in the workspace (None without one: the caller lets torch allocate)."""
    if ws is None:
        return None
    buf = ws.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != like.device:
        buf = ws[name] = torch.empty(shape, dtype=dtype, device=like.device)  # shape
    return buf


def _take_grad_buffer(ws: dict[str, torch.Tensor] | None, name: str, like: torch.Tensor) -> torch.Tensor:
    """A gradient buffer shaped like ``like``, *removed* from the workspace so that autograd adopts it as the
    parameter's ``.grad`` without a copy; :meth:`Selection.reclaim_grads` puts it back after the step."""
    buf = ws.pop(name, None) if ws is not None else None
    if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = torch.empty_like(like, memory_format=torch.contiguous_format)  # like.shape
    return buf


class Pairs:
    """The (token, latent) pairs a step selected, and the backward of bags over them.

    Layout: ``F.embedding_bag``'s, ``latents [M]`` grouped by token, token b's group starting at ``offsets[b]``
    (``offsets [B]``); values (one per pair, ``[M]``) always come in this order. :meth:`bag_backward`
    differentiates ``y[b] = Σ_{pairs (b, j)} value·W[j]``: on CPU with one CSR × dense GEMM (MKL) written into a
    reused buffer plus a sampled dense-dense product (SDDMM) for the value gradients; on GPUs with torch's
    embedding_bag backward kernels (cuSPARSE's per-call setup costs more than the arithmetic at these sizes).
    """

    def __init__(self, latents: torch.Tensor, offsets: torch.Tensor, n_latents: int) -> None:
        self.latents, self.offsets, self.n_latents = latents, offsets, n_latents  # [M], [B], n
        self.crow = torch.cat([offsets, offsets.new_full((1,), latents.numel())])  # [B + 1] by-token CSR rows
        self._transposed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _by_latent(self, values: torch.Tensor) -> torch.Tensor:
        """The pairs as a CSR [n_latents, B] matrix holding ``values [M]``."""
        if self._transposed is None:
            B, M = self.offsets.numel(), self.latents.numel()
            arange = torch.arange(max(B, self.n_latents + 1), device=self.latents.device)  # [max(B, n + 1)]
            tokens = torch.repeat_interleave(arange[:B], self.crow.diff(), output_size=M)  # [M] token of each pair
            order = torch.argsort(self.latents, stable=True)  # [M]; stable: tokens stay sorted within a latent
            crow = torch.searchsorted(self.latents[order], arange[:self.n_latents + 1])  # [n + 1] by-latent rows
            self._transposed = (order, crow, tokens[order])
        order, crow, tokens = self._transposed
        return _csr(crow, tokens, values[order], (self.n_latents, self.offsets.numel()))  # [n, B]

    def bag_backward(self, weight: torch.Tensor, values: torch.Tensor, grad_out: torch.Tensor, out: torch.Tensor,
                     accumulate: bool, value_grads: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(∂/∂W, ∂/∂values) of Σ_b ⟨grad_out[b], y[b]⟩ for ``weight [n, d]``, ``values [M]``, ``grad_out [B, d]``;
        the W gradient goes into ``out [n, d]`` (added to it if ``accumulate``), the value gradients ``[M]`` only
        if ``value_grads``."""
        grad_out = grad_out.contiguous()  # [B, d]
        if weight.device.type == "cpu":
            torch.addmm(out, self._by_latent(values), grad_out, beta=1 if accumulate else 0, out=out)  # [n, d]
            if not value_grads:
                return out, None
            pattern = _csr(self.crow, self.latents, values, (self.offsets.numel(), self.n_latents))  # [B, n]
            return out, torch.sparse.sampled_addmm(pattern, grad_out, weight.t(), beta=0).values()  # [M]
        with torch.enable_grad():
            w, v = weight.detach().requires_grad_(True), values.detach().requires_grad_(value_grads)  # [n, d], [M]
            y = F.embedding_bag(self.latents, w, self.offsets, mode="sum", per_sample_weights=v)  # [B, d]
            grads = torch.autograd.grad(y, (w, v) if value_grads else (w,), grad_out)  # [n, d] (, [M])
        return (out.add_(grads[0]) if accumulate else grads[0]), (grads[1] if value_grads else None)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta" (a one-time notice)
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)  # shape


def _select(pre: torch.Tensor, sel: Selection) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values [M], latents [M], offsets [B]) of the selected pre-activations ``pre [B, n]``, grouped by token."""
    B, n = pre.shape
    if not sel.batch_level:
        vals, cols = pre.topk(sel.k, dim=-1, sorted=False)  # [B, k], [B, k]
        return vals.reshape(-1), cols.reshape(-1), torch.arange(0, B * sel.k, sel.k, device=pre.device)
    # BatchTopK: the k·B largest over the batch. Candidates are each token's top `max_per_token` (one row-wise
    # topk is far cheaper than a flat topk over B·n on CPU); exact unless a token would take more than that.
    m = n if sel.max_per_token <= 0 else min(n, sel.max_per_token)
    cand_v, cand_i = pre.topk(m, dim=-1, sorted=False) if m < n else (pre, None)  # [B, m], [B, m] | None
    flat = cand_v.reshape(-1).topk(sel.k * B, sorted=False).indices.sort().values  # [k·B] sorted = by token
    rows = torch.div(flat, m, rounding_mode="floor")  # [k·B] token of each pick
    cols = cand_i.reshape(-1)[flat] if cand_i is not None else flat - rows * n  # [k·B] latent of each pick
    offsets = torch.searchsorted(rows, torch.arange(B, device=pre.device))  # [B]
    return cand_v.reshape(-1)[flat], cols, offsets


# ====================================================================== the sparse autograd functions


class SparseEncode(torch.autograd.Function):
    """relu(x′·W_encTᵀ + b_enc) at the selected latents only (x′ = x − b_dec): dense GEMM forward, sparse
    backward. Returns ``(v [M], a [B·k_aux] or [0], pairs: Pairs, apairs: Pairs | None)``; the formulas are in
    the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, W_encT: torch.Tensor, b_enc: torch.Tensor,
                b_dec: torch.Tensor | None, sel: Selection) -> tuple[Any, ...]:
        xc = x - b_dec if b_dec is not None else x  # [B, d] x′
        dt, w = (torch.bfloat16 if sel.bf16 else W_encT.dtype), W_encT  # w: [n, d]
        if sel.bf16:
            w16 = _buffer(sel.workspace, "W_encT_bf16", tuple(W_encT.shape), W_encT, dt)  # [n, d] bf16
            w = w16.copy_(W_encT) if w16 is not None else W_encT.to(dt)  # [n, d] bf16
        out = _buffer(sel.workspace, "pre", (x.shape[0], W_encT.shape[0]), x, dt)  # [B, n]
        av = ai = None
        with _threads(sel.gemm_threads):  # the [B, n] work: one GEMM, row-wise topks
            pre = torch.addmm(b_enc.to(dt), xc.to(dt), w.t(), out=out)  # [B, n] z (out=None: fresh)
            vals, lat, offs = _select(pre, sel)  # [M], [M], [B]
            if sel.dead_idx is not None and sel.k_aux > 0:
                av, ai = pre.index_select(1, sel.dead_idx).topk(sel.k_aux, dim=-1, sorted=False)  # [B, k_aux]
        vals = vals.to(x.dtype).clamp_min(0)  # [M] v = relu(z) at the pairs
        pairs, avals, apairs = Pairs(lat, offs, W_encT.shape[0]), vals.new_zeros(0), None  # avals: [0]
        if av is not None and ai is not None and sel.dead_idx is not None:
            avals = av.reshape(-1).to(x.dtype).clamp_min(0)  # [B·k_aux] a = relu(z) at the AuxK pairs
            aoffs = torch.arange(0, x.shape[0] * sel.k_aux, sel.k_aux, device=x.device)  # [B]
            apairs = Pairs(sel.dead_idx[ai.reshape(-1)], aoffs, W_encT.shape[0])
        ctx.save_for_backward(xc, W_encT, vals, avals)
        ctx.pairs, ctx.apairs, ctx.ws, ctx.has_b_dec = pairs, apairs, sel.workspace, b_dec is not None
        return vals, avals, pairs, apairs

    @staticmethod
    def backward(ctx: Any, g_vals: torch.Tensor, g_avals: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        xc, W_encT, vals, avals = ctx.saved_tensors  # [B, d], [n, d], [M], [B·k_aux]
        grad_W = _take_grad_buffer(ctx.ws, "grad_W_encT", W_encT)  # [n, d]
        grad_b_enc = torch.zeros(W_encT.shape[0], dtype=xc.dtype, device=xc.device)  # [n]
        for pairs, v, g, accumulate in ((ctx.pairs, vals, g_vals, False), (ctx.apairs, avals, g_avals, True)):
            if pairs is None:
                continue
            g = g * (v > 0)  # [M] or [B·k_aux]; relu: clamped (zero) selections pass no gradient
            grad_b_enc.index_add_(0, pairs.latents, g)  # [n]
            grad_W, _ = pairs.bag_backward(W_encT, g, xc, grad_W, accumulate, value_grads=False)  # [n, d]
        grad_b_dec = -(grad_b_enc @ W_encT) if ctx.has_b_dec else None  # [d]
        return None, grad_W, grad_b_enc.to(W_encT.dtype), grad_b_dec, None


class SparseDecode(torch.autograd.Function):
    """Σ_{pairs of token b} value·W_dec[latent] for the main and the AuxK pairs (no bias): ``(y [B, d], e [B, d]
    or [0])``. Forward ``F.embedding_bag``; backward :meth:`Pairs.bag_backward` per pair set, W_dec's gradient
    written into a buffer reused across steps (formulas in the module docstring)."""

    @staticmethod
    def forward(ctx: Any, W_dec: torch.Tensor, vals: torch.Tensor, pairs: Pairs, avals: torch.Tensor,
                apairs: Pairs | None, ws: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        def bag(p: Pairs, v: torch.Tensor) -> torch.Tensor:
            return F.embedding_bag(p.latents, W_dec, p.offsets, mode="sum", per_sample_weights=v)  # [B, d]

        ctx.save_for_backward(W_dec, vals, avals)  # [n, d], [M], [B·k_aux]
        ctx.pairs, ctx.apairs, ctx.ws = pairs, apairs, ws
        return bag(pairs, vals), (bag(apairs, avals) if apairs is not None else vals.new_zeros(0))

    @staticmethod
    def backward(ctx: Any, g_out: torch.Tensor, g_aout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        W_dec, vals, avals = ctx.saved_tensors  # [n, d], [M], [B·k_aux]
        grad_W = _take_grad_buffer(ctx.ws, "grad_W_dec", W_dec)  # [n, d]
        grads: list[torch.Tensor | None] = []  # dL/dv [M], dL/da [B·k_aux]
        for pairs, v, g, accumulate in ((ctx.pairs, vals, g_out, False), (ctx.apairs, avals, g_aout, True)):
            if pairs is None:
                grads.append(None)
                continue
            grad_W, grad_v = pairs.bag_backward(W_dec, v, g, grad_W, accumulate, value_grads=True)  # [n, d], v's
            grads.append(grad_v)
        return grad_W, grads[0], None, grads[1], None, None


class NestedPrefixLoss(torch.autograd.Function):
    """Matryoshka's inner losses ``Σ_{i<L-1} ‖t − C_i‖²`` summed over tokens, ``C_i = Σ_{ℓ≤i} P_ℓ`` the prefix
    reconstructions from the per-level contributions ``P [L, B, d]`` (the last level is the whole dictionary, whose
    loss the caller computes with the others'). ``NestedPrefixLoss.apply(P, t [B, d]) -> 0-d``.

    forward   r_i = t − C_i = r_{i-1} − P_i (r_{-1} = t),  loss = Σ_{i=0}^{L-2} ⟨r_i, r_i⟩
    backward  dL/dP_ℓ = −2g·Σ_{i=ℓ}^{L-2} r_i (0 for ℓ = L−1),  dL/dt = 2g·Σ_{i=0}^{L-2} r_i,
              the suffix sums walked from i = L−2 down, r_{i-1} = r_i + P_i rebuilt on the way
    Why a function of its own: written with autograd (prefix sums, then a squared error per level), the forward
    and backward make ~10 passes over ``[L, B, d]``; here each level is one ``[B, d]`` pass forward and two back,
    with one ``[B, d]`` residual saved (768x16k, b=2048: the Matryoshka step went from ~1.09x to ~1.01x a
    batchtopk step; 256x1024, b=1024: 1.56x to 1.27x).
    """

    @staticmethod
    def forward(ctx: Any, P: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r = t.clone()  # [B, d]
        total = t.new_zeros(())
        for i in range(P.shape[0] - 1):
            r.sub_(P[i])  # r_i
            total += torch.dot(r.view(-1), r.view(-1))
        ctx.save_for_backward(P, r)  # [L, B, d], [B, d] r_{L-2}
        return total

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        P, r_last = ctx.saved_tensors  # [L, B, d], [B, d]
        grad = torch.empty_like(P)  # [L, B, d]
        grad[-1].zero_()
        r, S = r_last.clone(), torch.zeros_like(r_last)  # [B, d] each
        for i in range(P.shape[0] - 2, -1, -1):
            S.add_(r)  # Σ_{j=i}^{L-2} r_j
            torch.mul(S, -2 * g, out=grad[i])
            if i:
                r.add_(P[i])  # r_{i-1}
        return grad, S.mul_(2 * g)


def sparse_encode(x: torch.Tensor, W_encT: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor | None, *,
                  k: int, batch_level: bool = False, max_per_token: int = 0, bf16: bool = False,
                  dead_idx: torch.Tensor | None = None, k_aux: int = 0) -> tuple[Any, ...]:
    """The trainer's TopK/BatchTopK encoder on its own (what the tests and benchmarks exercise). ``W_encT`` is
    ``[d_sae, d_in]`` (the SAE's ``W_enc.T``). Returns ``(values, pairs, aux_values, aux_pairs)``; decode them
    with :func:`sparse_decode`."""
    sel = Selection(k=k, batch_level=batch_level, max_per_token=max_per_token, bf16=bf16, dead_idx=dead_idx,
                    k_aux=k_aux)
    return SparseEncode.apply(x, W_encT, b_enc, b_dec, sel)


def sparse_decode(W_dec: torch.Tensor, vals: torch.Tensor, pairs: Pairs, aux_vals: torch.Tensor | None = None,
                  aux_pairs: Pairs | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction without b_dec, AuxK reconstruction) from :func:`sparse_encode`'s output."""
    avals = aux_vals if aux_vals is not None else vals.new_zeros(0)  # [B·k_aux] or [0]
    return SparseDecode.apply(W_dec, vals, pairs, avals, aux_pairs, None)


# ====================================================================== decoder constraints


def remove_parallel_component_(W_dec: nn.Parameter) -> None:
    """Project each unit-norm decoder row's gradient onto the row's tangent space (OpenAI's
    ``unit_norm_decoder_grad_adjustment_``): the step cannot waste itself changing norms we reset anyway."""
    if W_dec.grad is not None:  # g -= (g·w) w without [d_sae, d] temporaries (a batched dot, then addcmul_)
        g, w = W_dec.grad, W_dec.detach()  # [n, d], [n, d]
        g.addcmul_(torch.bmm(g.unsqueeze(1), w.unsqueeze(2)).view(-1, 1), w, value=-1)  # [n, d]


@torch.no_grad()
def normalise_rows_(W: torch.Tensor) -> None:
    """Rescale each row of ``W [n, d]`` to unit norm, in place (after every optimiser step)."""
    W /= W.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # [n, d]


# ====================================================================== JumpReLU straight-through estimators


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)  # same shape as u


class JumpReLU(torch.autograd.Function):
    """f = z·H(z − θ). ∂f/∂z = H(z − θ); ∂f/∂θ = −(θ/ε)·K((z − θ)/ε) (Rajamanoharan et al. 2024, eq. 11).

    ``JumpReLU.apply(z [B, n], theta [n], bandwidth ε) -> f [B, n]``.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)  # [B, n], [n]
        ctx.bandwidth = bandwidth
        return z * (z > theta)  # [B, n]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        z, theta = ctx.saved_tensors  # [B, n], [n]
        eps = ctx.bandwidth
        grad_theta = (-(theta / eps) * _rectangle((z - theta) / eps) * g).sum(0)  # [n]
        return g * (z > theta), grad_theta, None  # [B, n], [n]


class Heaviside(torch.autograd.Function):
    """H(z − θ) for the L0 penalty. ∂/∂z = 0; ∂/∂θ = −(1/ε)·K((z − θ)/ε) (ibid., eq. 12).

    ``Heaviside.apply(z [B, n], theta [n], bandwidth ε) -> [B, n]`` of 0.0 / 1.0.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)  # [B, n], [n]
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)  # [B, n]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        z, theta = ctx.saved_tensors  # [B, n], [n]
        eps = ctx.bandwidth
        return None, (-(1.0 / eps) * _rectangle((z - theta) / eps) * g).sum(0), None  # ∂/∂θ: [n]
