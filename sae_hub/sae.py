"""The SAE: what a sparse autoencoder computes, stated once.

Canonical semantics (every loader converts into exactly this; see ``docs/formats.md#canonical-sae``):

    x_n  = normalize(x)                       # per ``cfg.normalize_activations``; identity by default
    x'   = x_n - b_dec  if apply_b_dec_to_input else x_n
    z    = x' @ W_enc + b_enc
    f    = relu(z)                                    relu
         = relu(z) * (z > threshold)                  jumprelu
         = the k largest of relu(z) per row, rest 0   topk   (ranked on z * ||W_dec_j|| if
                                                               rescale_acts_by_decoder_norm (values z * ||W_dec_j||,
                                                               SAELens) or rank_by_decoder_norm (values z, lm-saes))
         = (x' @ W_enc + b_gate > 0) * relu((x' @ W_enc) * exp(r_mag) + b_mag)      gated (no b_enc)
    decode(f) = denormalize(f @ W_dec + b_dec)
    forward(x) = decode(encode(x)) [+ x @ W_skip.T for skip transcoders]

Shapes: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out], threshold [d_sae],
W_skip [d_out, d_in]. Thresholds and top-k selection are decided in float32 whatever the weight dtype,
because bf16 rounding can flip ``z > threshold``.

Training restates this computation in ``sae_hub/training/kernels.py`` (used by ``training/trainer.py``), for speed:
the encoder stored transposed (``W_encT = W_enc.T``) and TopK's backward touching only the selected latents.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sae_hub.config import PER_TOKEN_NORMALIZATIONS, SAEConfig, param_shapes
from sae_hub.errors import ConfigError, IncompatibleSaveError, ShapeMismatchError, UnsupportedSAEError
from sae_hub.files import dtype_from_str, dtype_to_str

if TYPE_CHECKING:
    from sae_hub.config import Provenance

__all__ = ["SAE", "check_floating_weights", "check_state_dict", "param_shapes", "place_state_dict"]

WEIGHTS_FILENAME = "sae_weights.safetensors"
CONFIG_FILENAME = "cfg.json"
SPARSITY_FILENAME = "sparsity.safetensors"
# What a save writes (and so replaces in an existing folder; anything else there is kept).
NATIVE_FILENAMES = (CONFIG_FILENAME, WEIGHTS_FILENAME, SPARSITY_FILENAME)


@dataclass
class _InputState:
    """Per-call facts encode needs to hand to decode: per-token norm statistics and the hook_z head shape."""

    mean: torch.Tensor | None = None
    scale: torch.Tensor | None = None  # decode multiplies by this (std, or 1/coefficient)
    head_shape: tuple[int, int] | None = None


class SAE(nn.Module):
    """A sparse autoencoder on model activations; every supported format loads into this one class.

    Build one from a config (``SAE(cfg)``, randomly initialised), from disk (``SAE.load_from_disk``) or
    from the hub (``SAE.from_pretrained``). Parameters use SAELens's names and orientation.
    """

    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    # Only some architectures own these (see config.param_shapes); declared for the type checker, which would
    # otherwise read nn.Module.__getattr__'s ``Tensor | Module``. Annotations only: no class attribute, so
    # ``hasattr(sae, "b_mag")`` still says whether this SAE has one.
    b_enc: nn.Parameter
    b_gate: nn.Parameter
    r_mag: nn.Parameter
    b_mag: nn.Parameter
    threshold: nn.Parameter
    W_skip: nn.Parameter
    training_log: list[dict[str, Any]]  # set by the trainer on the SAEs it returns (also in cfg.extra)

    def __init__(self, cfg: SAEConfig, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | str | None = None,
                 _tensors: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self._last_input_state: _InputState | None = None
        if _tensors is not None:  # from_state_dict: adopt validated tensors as they are (no init, no copy)
            params = self._parameters  # direct: Module.__setattr__ costs ~8 us a call on the load path
            for name in param_shapes(cfg):
                params[name] = nn.Parameter(_tensors[name])
            return
        dt = _compute_dtype(dtype_from_str(dtype if dtype is not None else cfg.dtype), None)
        factory: dict[str, Any] = {"dtype": dt}
        if device is not None:
            factory["device"] = device
        for name, shape in param_shapes(cfg).items():
            setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
        if self.W_enc.device.type != "meta":
            self.reset_parameters()
        self.cfg.dtype = dtype_to_str(dt)
        self.cfg.device = str(self.W_enc.device)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Tied init: unit-norm random decoder rows, ``W_enc = W_dec.T``, zero biases, zero thresholds."""
        w = torch.randn(self.cfg.d_sae, self.cfg.d_out or self.cfg.d_in, dtype=torch.float32,
                        device=self.W_dec.device)
        w /= w.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        self.W_dec.copy_(w)
        if self.W_dec.shape[1] == self.cfg.d_in:
            self.W_enc.copy_(w.T)
        else:
            nn.init.kaiming_uniform_(self.W_enc, a=math.sqrt(5))
        for name, _ in self.named_parameters():
            if name not in ("W_enc", "W_dec"):
                getattr(self, name).zero_()

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def W_dec_norm(self) -> torch.Tensor:
        """Per-feature decoder norms ``||W_dec[j]||`` in float32 (clamped away from 0)."""
        return self.W_dec.float().norm(dim=-1).clamp_min(1e-8)

    def extra_repr(self) -> str:
        c = self.cfg
        bits = [f"architecture={c.architecture}", f"d_in={c.d_in}", f"d_sae={c.d_sae}"]
        if c.is_transcoder:
            bits.append(f"d_out={c.d_out}")
        if c.k is not None:
            bits.append(f"k={c.k}")
        if c.hook_name:
            bits.append(f"hook={c.hook_name}")
        bits.append(f"dtype={dtype_to_str(self.dtype)}")
        return ", ".join(bits)

    # ------------------------------------------------------------------ input side

    def _prepare_input(self, x: torch.Tensor) -> tuple[torch.Tensor, _InputState]:
        """Flatten hook_z heads, normalise, scale and centre ``x``: returns ``x'`` (float32) and the state."""
        cfg = self.cfg
        state = _InputState()
        if x.shape[-1] != cfg.d_in:
            if (cfg.reshape_activations == "hook_z" and x.dim() >= 2
                    and x.shape[-2] * x.shape[-1] == cfg.d_in):
                state.head_shape = (x.shape[-2], x.shape[-1])
                x = x.flatten(-2)
            else:
                raise ShapeMismatchError(
                    f"input has last dimension {x.shape[-1]}, this SAE reads d_in={cfg.d_in}", field="d_in"
                )
        x = x.float()
        norm = cfg.normalize_activations
        if norm == "layer_norm":
            state.mean = x.mean(-1, keepdim=True)
            x = x - state.mean
            state.scale = x.std(-1, keepdim=True)
            x = x / (state.scale + 1e-5)
        elif norm == "zscore":
            state.mean = x.mean(-1, keepdim=True)
            state.scale = x.std(-1, keepdim=True, correction=0) + 1e-5
            x = (x - state.mean) / state.scale
        elif norm == "constant_norm_rescale":
            coeff = math.sqrt(cfg.d_in) / x.norm(dim=-1, keepdim=True)
            state.scale = 1.0 / coeff
            x = x * coeff
        if cfg.norm_scaling_factor is not None:
            x = x * cfg.norm_scaling_factor
        if cfg.apply_b_dec_to_input:
            x = x - self.b_dec.float()
        return x, state

    def _hidden_pre(self, xc: torch.Tensor) -> torch.Tensor:
        """``x' @ W_enc`` in the weight dtype (fast), returned as float32."""
        return (xc.to(self.W_enc.dtype) @ self.W_enc).float()

    # ------------------------------------------------------------------ encode / decode

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations ``[..., d_sae]`` for activations ``x [..., d_in]``.

        For per-token normalisations the statistics of this call are kept for the next :meth:`decode`
        (as SAELens does), so ``sae.decode(sae.encode(x))`` reconstructs in the raw space.
        """
        f, state = self._encode(x)
        self._last_input_state = state if _has_state(state) else None
        return f

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, _InputState]:
        cfg = self.cfg
        xc, state = self._prepare_input(x)
        xw = self._hidden_pre(xc)
        if cfg.architecture == "gated":
            gate = (xw + self.b_gate.float()) > 0
            mag = F.relu(xw * self.r_mag.float().exp() + self.b_mag.float())
            f = mag * gate
        else:
            z = xw + self.b_enc.float()
            if cfg.architecture == "relu":
                f = F.relu(z)
            elif cfg.architecture == "jumprelu":
                f = F.relu(z) * (z > self.threshold.float())
            else:  # topk
                vals, idx = self._select_topk(z)
                f = torch.zeros_like(z).scatter_(-1, idx, vals)
        return f.to(self.dtype), state

    def _select_topk(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of relu(z) in float32, ranked on z * ||W_dec_j|| when a decoder-norm flag says so."""
        k = int(self.cfg.k or 0)
        if self.cfg.rescale_acts_by_decoder_norm:
            return F.relu(z * self.W_dec_norm).topk(k, dim=-1, sorted=False)
        if self.cfg.rank_by_decoder_norm:
            idx = F.relu(z * self.W_dec_norm).topk(k, dim=-1, sorted=False).indices
            return F.relu(z).gather(-1, idx), idx
        return F.relu(z).topk(k, dim=-1, sorted=False)

    def encode_topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse topk encoding: ``(values [..., k], indices [..., k])``, no dense ``[..., d_sae]`` output.

        Values are the same numbers :meth:`encode` puts at ``indices``. Pair with :meth:`decode_sparse`.
        """
        if self.cfg.architecture != "topk":
            raise ConfigError(f"encode_topk needs a topk SAE, this one is {self.cfg.architecture}",
                              field="architecture")
        xc, state = self._prepare_input(x)
        vals, idx = self._select_topk(self._hidden_pre(xc) + self.b_enc.float())
        self._last_input_state = state if _has_state(state) else None
        return vals.to(self.dtype), idx

    def decode(self, f: torch.Tensor, *, input_state: _InputState | None = None) -> torch.Tensor:
        """Reconstruction ``[..., d_out]`` (raw activation space) from dense features ``f [..., d_sae]``."""
        if f.shape[-1] != self.cfg.d_sae:
            raise ShapeMismatchError(
                f"features have last dimension {f.shape[-1]}, this SAE has d_sae={self.cfg.d_sae}",
                field="d_sae",
            )
        f = f.to(self.dtype)
        if self.cfg.rescale_acts_by_decoder_norm:
            f = (f.float() / self.W_dec_norm).to(self.dtype)
        out = (f @ self.W_dec).float() + self.b_dec.float()
        return self._finish_output(out, input_state)

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor, *,
                      input_state: _InputState | None = None) -> torch.Tensor:
        """Reconstruction from ``(values, indices)`` (as :meth:`encode_topk` returns) via ``embedding_bag``.

        Costs O(k * d_out) per row instead of O(d_sae * d_out).
        """
        lead = values.shape[:-1]
        vals = values.reshape(-1, values.shape[-1]).float()
        idx = indices.reshape(-1, indices.shape[-1])
        if self.cfg.rescale_acts_by_decoder_norm:
            vals = vals / self.W_dec_norm[idx]
        W = self.W_dec
        out = F.embedding_bag(idx, W, per_sample_weights=vals.to(W.dtype), mode="sum").float()
        out = (out + self.b_dec.float()).reshape(*lead, -1)
        return self._finish_output(out, input_state)

    def _finish_output(self, out: torch.Tensor, input_state: _InputState | None) -> torch.Tensor:
        """Undo normalisation and scaling (float32), restore hook_z heads, cast to the SAE dtype."""
        cfg = self.cfg
        state = input_state if input_state is not None else self._last_input_state
        scale_out = cfg.norm_scaling_factor_out or cfg.norm_scaling_factor
        if scale_out is not None:
            out = out / scale_out
        if cfg.normalize_activations in PER_TOKEN_NORMALIZATIONS:
            if state is None or state.scale is None or state.scale.shape[:-1] != out.shape[:-1]:
                raise ConfigError(
                    f"this SAE normalises each token ({cfg.normalize_activations}); decode needs the statistics "
                    "of the matching encode call: call forward(x), or decode right after encode(x)",
                    field="normalize_activations",
                )
            out = out * state.scale
            if state.mean is not None:
                out = out + state.mean
        if state is not None and state.head_shape is not None and out.shape[-1] == cfg.d_in:
            out = out.unflatten(-1, state.head_shape)
        return out.to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x`` (for transcoders: the predicted output activation)."""
        f, state = self._encode(x)
        out = self.decode(f, input_state=state)
        if self.cfg.has_skip:
            xs = x.flatten(-2) if state.head_shape is not None else x
            out = out + (xs.to(self.dtype) @ self.W_skip.T)
        return out

    # ------------------------------------------------------------------ exact folds

    @torch.no_grad()
    def fold_W_dec_norm(self) -> SAE:
        """Make decoder rows unit-norm, moving the norms into the encoder; reconstructions are unchanged.

        Feature values get multiplied by ``||W_dec_j||``. For topk SAEs this is only exact when selection
        already used the norms (``rescale_acts_by_decoder_norm``); otherwise it would change which features
        fire, so it is refused.
        """
        cfg = self.cfg
        if cfg.architecture == "topk" and not (cfg.rescale_acts_by_decoder_norm or cfg.rank_by_decoder_norm):
            raise UnsupportedSAEError(
                "fold_W_dec_norm would change which features a topk SAE selects (selection is on z, not "
                "z*||W_dec_j||); it is exact only for topk SAEs ranked by decoder norm "
                "(rescale_acts_by_decoder_norm or rank_by_decoder_norm)",
                field="architecture",
            )
        n = self.W_dec_norm
        self._scale_param("W_dec", 1.0 / n[:, None])
        self._scale_param("W_enc", n[None, :])
        for name in ("b_enc", "threshold", "b_gate", "b_mag"):
            if hasattr(self, name):
                self._scale_param(name, n)
        if cfg.architecture == "topk":
            cfg.rescale_acts_by_decoder_norm = False
            cfg.rank_by_decoder_norm = False
        cfg.record("fold_W_dec_norm")
        return self

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float | None = None,
                                            scaling_factor_out: float | None = None) -> SAE:
        """Fold a constant input scaling into the weights so the SAE takes raw activations.

        The SAE was trained on ``s_in * x`` and predicts ``s_out * y``. Afterwards ``W_enc`` is multiplied by
        ``s_in`` and ``W_dec, b_dec`` divided by ``s_out``; features and reconstructions are unchanged.
        With no argument, folds the factor the config records (``norm_scaling_factor``).
        """
        cfg = self.cfg
        if scaling_factor is None:
            if cfg.norm_scaling_factor is None:
                raise ConfigError("no scaling factor given and none recorded in the config",
                                  field="norm_scaling_factor")
            s_in = cfg.norm_scaling_factor
            s_out = cfg.norm_scaling_factor_out or s_in
        else:
            if cfg.norm_scaling_factor is not None and not math.isclose(cfg.norm_scaling_factor, scaling_factor):
                raise ConfigError(
                    f"the config already applies norm_scaling_factor={cfg.norm_scaling_factor} at run time; "
                    f"folding {scaling_factor} as well would scale twice",
                    field="norm_scaling_factor",
                )
            s_in = float(scaling_factor)
            s_out = float(scaling_factor_out) if scaling_factor_out is not None else s_in
        if not (s_in > 0 and s_out > 0 and math.isfinite(s_in) and math.isfinite(s_out)):
            raise ConfigError(f"scaling factors must be positive and finite, got {s_in}, {s_out}",
                              field="norm_scaling_factor")
        if cfg.apply_b_dec_to_input and s_in != s_out:
            self.fold_input_centering()
        self._scale_param("W_enc", torch.tensor(s_in))
        self._scale_param("W_dec", torch.tensor(1.0 / s_out))
        self._scale_param("b_dec", torch.tensor(1.0 / s_out))
        if cfg.has_skip and scaling_factor is not None:  # the skip, too, ran on s_in * x and predicted s_out * y
            self._scale_param("W_skip", torch.tensor(s_in / s_out))
        # a factor recorded in the config never touched the skip: forward adds x @ W_skip.T on the raw input
        cfg.norm_scaling_factor = None
        cfg.norm_scaling_factor_out = None
        if cfg.normalize_activations == "expected_average_only_in":
            cfg.normalize_activations = "none"
        cfg.record(f"fold_activation_norm_scaling_factor(s_in={s_in!r}, s_out={s_out!r})")
        return self

    @torch.no_grad()
    def fold_input_centering(self) -> SAE:
        """Move ``x - b_dec`` into the encoder bias (``b_enc -= b_dec @ W_enc``); outputs are unchanged."""
        cfg = self.cfg
        if not cfg.apply_b_dec_to_input:
            return self
        shift = self.b_dec.float() @ self.W_enc.float()
        for name in ("b_enc", "b_gate"):
            if hasattr(self, name):
                p = getattr(self, name)
                p.copy_((p.float() - shift).to(p.dtype))
        if hasattr(self, "b_mag"):
            self.b_mag.copy_((self.b_mag.float() - shift * self.r_mag.float().exp()).to(self.b_mag.dtype))
        cfg.apply_b_dec_to_input = False
        cfg.record("fold_input_centering")
        return self

    def _scale_param(self, name: str, factor: torch.Tensor) -> None:
        p = getattr(self, name)
        p.copy_((p.float() * factor.to(p.device)).to(p.dtype))

    # ------------------------------------------------------------------ construction from tensors

    @classmethod
    def from_state_dict(cls, cfg: SAEConfig, state_dict: dict[str, torch.Tensor], *,
                        device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                        source: str | None = None) -> SAE:
        """Build an SAE around existing tensors without random init or an extra copy.

        No parameter is ever allocated: the given (e.g. memory-mapped) tensors become the parameters
        directly, and a copy happens only when ``dtype``/``device`` differ from the tensors'. Missing,
        unexpected or mis-shaped tensors raise :class:`ShapeMismatchError` naming ``source`` and the key, and
        so do integer, bool or complex ones (see :func:`check_floating_weights`); mixed float dtypes are cast
        to ``W_enc``'s (or ``dtype``). A dtype nothing can compute in (float8, say) needs ``dtype=`` to cast.
        """
        check_state_dict(param_shapes(cfg), state_dict, f"a {cfg.architecture} SAE", source,
                         shapes_from=f"the config (d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.d_out})")
        tensors = place_state_dict(state_dict, cfg, "an SAE", device=device, dtype=dtype, source=source,
                                   reference="W_enc")
        return cls(cfg, _tensors=tensors)

    # ------------------------------------------------------------------ disk and hub

    def save_pretrained(self, path: str | os.PathLike[str], *, sparsity: torch.Tensor | None = None,
                        saelens_compatible: bool = True) -> Path:
        """Write the native format (SAELens 6): ``cfg.json`` + ``sae_weights.safetensors``.

        ``sparsity`` (log10 feature densities ``[d_sae]``) is written as ``sparsity.safetensors``.

        The folder is written whole under a hidden temp name beside ``path`` and swapped into place, so a
        crash leaves ``path`` as exactly the old SAE or exactly the new one, and concurrent saves to one
        ``path`` end with one writer's complete SAE. Files and subfolders in ``path`` that are not ours
        survive (see :func:`sae_hub.files.atomic_folder`).

        With ``saelens_compatible=True`` (default) SAELens 6 loads the folder and computes the same features
        and reconstructions: a constant ``norm_scaling_factor`` (which no SAELens field applies at run time)
        is folded into the saved weights, on a copy (this SAE is not changed) and recorded in the saved
        provenance; a variant SAELens cannot compute (:meth:`SAEConfig.saelens_incompatibilities`) raises
        :class:`~sae_hub.errors.IncompatibleSaveError` before anything is written. ``saelens_compatible=False``
        saves exactly what this SAE holds, factor included; when SAELens would get that wrong the folder is
        marked sae-hub-only (SAELens refuses it; ``load_from_disk`` here reads it).
        """
        from sae_hub.files import atomic_folder

        self._check_sparsity(sparsity)
        try:
            target, sae_hub_only = self._prepare_save(saelens_compatible)
        except IncompatibleSaveError as e:
            raise IncompatibleSaveError(e.message, path=path, field=e.field) from None
        with atomic_folder(path, replaces=NATIVE_FILENAMES) as tmp:
            target._save_weights(tmp, sparsity=sparsity)
            target._save_config(tmp, sae_hub_only=sae_hub_only)
        return Path(path)

    def _check_sparsity(self, sparsity: torch.Tensor | None) -> None:
        if sparsity is not None and tuple(sparsity.shape) != (self.cfg.d_sae,):
            raise ShapeMismatchError(f"sparsity must have shape [{self.cfg.d_sae}], got {list(sparsity.shape)}",
                                     field="sparsity")

    def _prepare_save(self, saelens_compatible: bool) -> tuple[SAE, list[str]]:
        """What to write and, for a sae-hub-only folder, why: ``(sae, reasons)``.

        SAELens-compatible: refuse what SAELens cannot compute, and fold the constant scaling factor into a
        copy (exact; the copy's provenance records it). Otherwise: this SAE as it is, with the reasons a
        SAELens load would go wrong (empty when it would not, so the folder stays a plain SAELens folder).
        """
        cfg = self.cfg
        problems = cfg.saelens_incompatibilities()
        scaled = cfg.norm_scaling_factor is not None or cfg.norm_scaling_factor_out is not None
        if not saelens_compatible:
            reasons = [f"{f}: {why}" for f, why in problems]
            if cfg.has_skip and cfg.apply_b_dec_to_input:
                reasons.append("apply_b_dec_to_input: SAELens transcoders cannot subtract b_dec from the input "
                               "(a SAELens-compatible save moves it into b_enc)")
            if scaled:
                reasons.append(f"norm_scaling_factor: inputs are scaled by {cfg.norm_scaling_factor} (outputs "
                               f"divided by {cfg.norm_scaling_factor_out or cfg.norm_scaling_factor}) at run time; "
                               "no SAELens field applies a stored factor")
            return self, reasons
        if problems:
            lines = "; ".join(f"{f}: {why}" for f, why in problems)
            raise IncompatibleSaveError(
                f"SAELens 6 cannot compute this SAE as sae-hub does ({lines}). Pass saelens_compatible=False "
                "(sae-hub convert --no-saelens-compatible) to write a folder only sae-hub loads (SAELens refuses it)",
                field=problems[0][0],
            )
        if not scaled and not (cfg.has_skip and cfg.apply_b_dec_to_input):
            return self, []
        copy = SAE(cfg.replace(), _tensors={k: v.detach().clone() for k, v in self.state_dict().items()})
        with torch.no_grad():
            if copy.cfg.has_skip:  # SAELens transcoders cannot subtract b_dec from the input: move it into b_enc
                copy.fold_input_centering()
            if scaled:
                if copy.cfg.rescale_acts_by_decoder_norm:
                    # the factor would change ||W_dec_j||, hence the reported z*||W_dec_j||: unit-norm rows first
                    copy.fold_W_dec_norm()
                if copy.cfg.norm_scaling_factor is None:  # only an output factor: the input one is 1
                    copy.cfg.norm_scaling_factor = 1.0
                copy.fold_activation_norm_scaling_factor()
        return copy, []

    def _save_weights(self, folder: Path, *, sparsity: torch.Tensor | None = None) -> None:
        """The tensor half of a save, into ``folder`` (a temp folder that :func:`~sae_hub.files.atomic_folder`
        swaps into place; conversion writes it while the sources' sha256 for the config is still computed)."""
        from sae_hub import __version__
        from sae_hub.files import write_safetensors_atomic

        self._check_sparsity(sparsity)
        write_safetensors_atomic(folder / WEIGHTS_FILENAME, dict(self.state_dict()),
                                 metadata={"format": "pt", "sae_hub_version": __version__})
        if sparsity is not None:
            write_safetensors_atomic(folder / SPARSITY_FILENAME, {"sparsity": sparsity.float()})

    def _save_config(self, folder: Path, *, sae_hub_only: list[str] | tuple[str, ...] = ()) -> None:
        from sae_hub import __version__
        from sae_hub.files import write_json_atomic

        cfg = self.cfg.to_dict(sae_hub_only=sae_hub_only)
        cfg["dtype"] = dtype_to_str(self.dtype)
        cfg["device"] = str(self.device)
        cfg["metadata"]["sae_hub_version"] = __version__
        write_json_atomic(folder / CONFIG_FILENAME, cfg)

    @classmethod
    def load_from_disk(cls, path: str | os.PathLike[str], *, format: str | None = None,
                       device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                       **options: Any) -> SAE:
        """Load an SAE from a local folder or file, detecting its format unless ``format`` names a loader.

        ``options`` go to the loader (e.g. ``top_k=`` for overcomplete state dicts); a loader rejects
        options it does not know. Loading keeps the stored dtype unless ``dtype`` is given.
        """
        from sae_hub.loading import load_local

        cfg, state_dict, source = load_local(path, format=format, options=options)
        return cls.from_state_dict(cfg, state_dict, device=device, dtype=dtype, source=source)

    @classmethod
    def from_pretrained(cls, release: str, sae_id: str, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str | None = None, revision: str | None = None,
                        force_download: bool = False, local_files_only: bool | None = None,
                        format: str | None = None, **options: Any) -> SAE:
        """Load SAE ``sae_id`` of a release (SAELens's names) or of a Hub repo id ``org/name``.

        :meth:`load_from_disk` with two steps in front: where the SAE is (:func:`sae_hub.releases.locate`,
        before any I/O) and its files, downloaded and verified (:func:`sae_hub.hub.fetch`: huggingface_hub's
        cache, ``revision``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``/``local_files_only``, tokens; only the files the
        format needs). For a repo id, ``sae_id`` is the folder (or file) inside it and the format is detected
        unless ``format`` names a loader. ``options`` go to the loader; the release table's facts (hook names,
        Neuronpedia id, normalisation constants, ``config:`` overrides) are applied by
        :func:`sae_hub.loading.load_local` with them.
        """
        from sae_hub import hub
        from sae_hub.releases import locate

        src = locate(release, sae_id, revision=revision, format=format)
        cfg, state_dict, source = hub.load_located(src, kind="sae", options=options, offline=local_files_only,
                                                   force=force_download, facts=src.facts)
        return cls.from_state_dict(cfg, state_dict, device=device, dtype=dtype, source=source)

    @staticmethod
    def get_config(release: str, sae_id: str, *, revision: str | None = None, local_files_only: bool | None = None,
                   format: str | None = None, **options: Any) -> SAEConfig:
        """The config of a published SAE without loading (for most formats: without fetching) its weights.

        The same steps as :meth:`from_pretrained`, fetching less: formats whose loader reads the config alone
        fetch only those files; formats with safetensors weights have only their headers and small tensors
        read (byte ranges); otherwise (``.npz``/``.pt`` weights, or offline) the weights are fetched
        (memory-mapped, not read) and their shapes fill the config.
        """
        from sae_hub import hub
        from sae_hub.loading import check_release_kind, load_local, load_local_config
        from sae_hub.releases import locate

        src = locate(release, sae_id, revision=revision, format=format)
        check_release_kind(src, "sae")
        options = {**src.options, **options}
        with hub.fetch(src, offline=local_files_only, config=True) as got:
            if got.config_only:
                return load_local_config(got.path, format=got.format, options=options, facts=src.facts,
                                         files=got.files)
            cfg, _, _ = load_local(got.path, format=got.format, options=options, facts=src.facts, files=got.files)
        return cfg

    def push_to_hub(self, repo_id: str, path_in_repo: str | None = None, *, revision: str | None = None,
                    private: bool | None = None, commit_message: str | None = None, token: str | None = None,
                    sparsity: torch.Tensor | None = None, saelens_compatible: bool = True) -> str:
        """Upload this SAE (native format + model card) to a Hub repo; returns the commit URL.

        Saved as :meth:`save_pretrained` does (``saelens_compatible=False`` for a variant SAELens cannot compute,
        e.g. a zscore SAE, which then uploads as a sae-hub-only folder), into a temporary folder that
        :func:`sae_hub.hub.push_folder` uploads with a card built from this config. A save that refuses does so
        before anything is sent.
        """
        import tempfile

        from sae_hub import hub

        with tempfile.TemporaryDirectory(prefix="sae-hub-push-") as tmp:
            try:
                self.save_pretrained(tmp, sparsity=sparsity, saelens_compatible=saelens_compatible)
            except IncompatibleSaveError as e:
                where = f"hf://{repo_id}" + (f"/{path_in_repo.strip('/')}" if path_in_repo else "")
                raise IncompatibleSaveError(e.message, path=where, field=e.field) from None
            return hub.push_folder(tmp, self.cfg, repo_id, path_in_repo, revision=revision, private=private,
                                   commit_message=commit_message, token=token)

    def neuronpedia_url(self, feature: int) -> str:
        """The Neuronpedia page of a feature (needs ``cfg.neuronpedia_id``, which releases provide)."""
        if not self.cfg.neuronpedia_id:
            raise ConfigError("this SAE has no neuronpedia_id (load it from a release that lists one, "
                              "or set cfg.neuronpedia_id)", field="neuronpedia_id")
        if not 0 <= int(feature) < self.cfg.d_sae:
            raise ConfigError(f"feature {feature} is out of range [0, {self.cfg.d_sae})", field="feature")
        from sae_hub.neuronpedia_base import resolve_base_url

        return f"{resolve_base_url()}/{self.cfg.neuronpedia_id}/{int(feature)}"

    @property
    def provenance(self) -> Provenance:
        return self.cfg.provenance


# What an SAE computes in: float8 and other storage-only dtypes have no matmul, so they need ``dtype=`` to cast.
_COMPUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_floating_weights(tensors: Mapping[str, torch.Tensor], source: str | os.PathLike[str] | None) -> None:
    """Refuse integer, bool and complex weights with a :class:`ShapeMismatchError` naming the tensor.

    Why refuse rather than cast: a float SAE stored with an integer tensor is either corrupt or quantised
    without its scales, and a cast would silently load numbers that are not the SAE (SAELens casts them);
    left alone, they fail deep inside torch instead (``nn.Parameter`` of an integer tensor). It is a
    ShapeMismatchError, the error for "a tensor does not fit the SAE the config describes", rather than a
    CorruptFileError: the file is well-formed, and in-memory state dicts have no file at all.
    """
    for key, t in tensors.items():
        if isinstance(t, torch.Tensor) and not t.is_floating_point():
            raise ShapeMismatchError(
                f"tensor {key} has dtype {dtype_to_str(t.dtype)}; SAE weights must be floating point (integer or "
                "bool weights are refused rather than cast to float, which would load numbers that are not the SAE)",
                path=source, field=key,
            )


def _compute_dtype(dt: torch.dtype, source: str | os.PathLike[str] | None, what: str = "an SAE") -> torch.dtype:
    if dt not in _COMPUTE_DTYPES:
        raise ConfigError(f"{what} cannot compute in {dtype_to_str(dt)}; pass dtype='float32' (or float16, "
                          "bfloat16, float64) to cast", path=source, field="dtype")
    return dt


def check_state_dict(expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, Any], what: str,
                     source: str | os.PathLike[str] | None, *, shapes_from: str = "the config") -> None:
    """Refuse a state dict that does not fit ``expected`` (name -> shape) with a :class:`ShapeMismatchError`
    naming ``source`` and the tensor: missing or unexpected keys, non-tensors, wrong shapes, non-float weights.

    One check for every dictionary class (SAE, multi-layer, crosscoder, temporal), so a bad file reads the same
    whichever class loads it. ``what`` names the dictionary (``"a topk SAE"``); ``shapes_from`` says where the
    expected shapes come from in the message.
    """
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise ShapeMismatchError(f"missing tensor(s) {missing[:8]} for {what} (found {sorted(state_dict)[:16]})",
                                 path=source, field=missing[0])
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise ShapeMismatchError(f"unexpected tensor(s) {unexpected[:8]} for {what} (expected "
                                 f"{sorted(expected)[:16]})", path=source, field=unexpected[0])
    for key, shape in expected.items():
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            raise ShapeMismatchError(f"{key} is a {type(t).__name__}, not a tensor", path=source, field=key)
        if tuple(t.shape) != tuple(shape):
            raise ShapeMismatchError(f"tensor {key} has shape {list(t.shape)}, {shapes_from} needs {list(shape)}",
                                     path=source, field=key)
    check_floating_weights(state_dict, source)


def place_state_dict(state_dict: Mapping[str, torch.Tensor], cfg: Any, what: str, *,
                     device: str | torch.device, dtype: torch.dtype | str | None,
                     source: str | os.PathLike[str] | None, reference: str | None = None) -> dict[str, torch.Tensor]:
    """The checked tensors on ``device`` in the compute dtype, copied only where device or dtype differ.

    The dtype is ``dtype`` if given, else ``reference``'s stored dtype, else the one stored dtype (mixed stored
    dtypes: the widest, recorded in ``cfg``'s provenance). A dtype nothing can compute in (float8, say) is a
    :class:`ConfigError` asking for ``dtype=``. Sets ``cfg.dtype`` and ``cfg.device``.
    """
    stored = {t.dtype for t in state_dict.values()}
    if dtype is not None:
        target = dtype_from_str(dtype)
    elif reference is not None and reference in state_dict:
        target = state_dict[reference].dtype
    elif len(stored) == 1:
        target = next(iter(stored))
    else:
        target = max(stored, key=lambda d: torch.finfo(d).bits)
        cfg.record(f"mixed stored dtypes cast to {dtype_to_str(target)}")
    _compute_dtype(target, source, what)
    was = state_dict[reference].dtype if reference is not None and reference in state_dict else None
    if dtype is not None and was is not None and target != was:
        cfg.record(f"cast {dtype_to_str(was)}->{dtype_to_str(target)}")
    cfg.dtype = dtype_to_str(target)
    cfg.device = str(torch.device(device))
    return {k: v.to(device=device, dtype=target) for k, v in state_dict.items()}


def _has_state(state: _InputState) -> bool:
    return state.scale is not None or state.head_shape is not None
