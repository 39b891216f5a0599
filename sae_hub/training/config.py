"""``TrainConfig``: every knob of a training run and its per-architecture default, in one place.

Its own module so that the CLI, checkpoints (which store ``to_dict()`` and compare a resumed run against it)
and the trainer share one definition, and so that ``trainer.py`` starts with the step rather than the knobs.
Validation happens at construction (``__post_init__``: a bad value is a :class:`~sae_hub.errors.ConfigError`
naming the field); defaults that depend on the data or on each other are filled in by :meth:`TrainConfig.resolved`.
The defaults and their precedents are tabulated in ``docs/training.md#trainer``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from sae_hub.errors import ConfigError

__all__ = ["ARCHITECTURES", "SPARSE_ARCHITECTURES", "TrainConfig"]

ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu", "matryoshka_batchtopk")
# the architectures trained through the sparse kernels (one dense encoder GEMM, a sparse backward)
SPARSE_ARCHITECTURES = ("topk", "batchtopk", "matryoshka_batchtopk")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``None`` fields get the per-architecture defaults of :meth:`resolved`.

    ``batch_size`` is the *global* batch (tokens per optimiser step); with ``world_size`` data-parallel ranks each
    reads ``batch_size / world_size`` of them. Length is ``steps``, or ``total_tokens / batch_size``, or for a
    tensor (or a DataLoader over a sized dataset) one pass over it, or for an iterable of unknown length its end
    (the lr then stays constant after warmup: a decay needs to know where the end is).
    """

    architecture: str = "topk"
    d_in: int | None = None  # None: from the activations (tensor width, source.d_in)
    d_sae: int = 16384
    k: int | None = 32  # topk / batchtopk: latents per token (batchtopk: on average)
    l1_coefficient: float = 5.0  # relu: λ of Σ f_j·‖W_dec_j‖ (Anthropic's scale for E‖x‖ = √d_in)
    l0_coefficient: float = 1.0  # jumprelu: λ of the L0 penalty (against the summed squared error)
    # optimisation
    # None: topk/batchtopk 8e-4/√(d_sae/2¹⁴) (Gao et al.'s width scaling; 4x their constant, which was tuned for
    # runs of billions of tokens: 2e-4 lost 0.2 MCC on the 5M-sample realistic benchmark), relu 5e-5,
    # jumprelu 7e-5
    lr: float | None = None
    lr_warmup_steps: int | None = None  # None: min(1000, steps // 10)
    lr_decay_fraction: float = 0.2  # linear decay to 0 over this final fraction of the steps
    sparsity_warmup_steps: int | None = None  # relu/jumprelu λ ramps up linearly; None: 5% of the steps
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = None  # None: 1.0 for relu (Anthropic), no clipping otherwise
    # None: 4096, halved (down to 1024) while a run of known length would have fewer than 5000 steps: short runs
    # need optimiser steps more than big batches (5M samples: MCC 0.39 at 4096 vs 0.58 at 1024, same lr). Not
    # lower: 512 won at 1M samples (0.727 vs 0.712) but lost at the 5M benchmark (0.722 vs 0.742).
    batch_size: int | None = None
    steps: int | None = None
    total_tokens: int | None = None
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available (cuda:LOCAL_RANK under torchrun), else cpu
    dtype: str = "float32"  # master weights and optimiser state
    # topk/batchtopk: encoder GEMM in bf16 (fp32 master weights, fp32 everything else). None: on where the device
    # runs bf16 GEMMs fast (AVX512-BF16/AMX CPUs, CUDA), the master dtype is float32 and d_in·d_sae >= 2**22 --
    # quality measured equal (bench_train_quality 1M realistic: topk MCC 0.689 vs 0.686 fp32), ~2x the step rate
    # at 768x16k; below that size the GEMM is a small part of the step and small runs stay identical on any CPU
    encoder_bf16: bool | None = None
    # CPU threads for the run (restored after). None: chosen by measurement -- torch's count, half of it or one,
    # whichever steps fastest, re-checked every few hundred steps: on cores shared with other processes, OpenMP's
    # spinning threads can make every parallel op wait for a descheduled thread (2-3x slower steps), and users
    # should not have to know about OMP_WAIT_POLICY. Set an int for a fixed count (bit-reproducible runs).
    num_threads: int | None = None
    # initialisation
    decoder_init_norm: float | None = None  # None: 0.1 for relu (Anthropic), 1.0 (unit rows) otherwise
    # "geometric_median" | "mean" | "zeros", of the init sample. The median: on the realistic benchmark the mean
    # carries every frequent feature's average contribution (a direction most tokens do not have), and topk runs
    # left 2.5x as many latents dead (1M samples: MCC 0.686 / 9.2% dead with the mean, 0.708 / 3.7% median).
    b_dec_init: str = "geometric_median"
    init_tokens: int = 32768  # sample for b_dec, the input-norm constant and the loss's variance
    normalize_activations: bool = True  # scale inputs by a constant to E‖x‖ = √d_in; folded at save
    apply_b_dec_to_input: bool = True  # encoder reads x − b_dec (OpenAI/sparsify/SAELens)
    # dead latents (topk / batchtopk)
    # AuxK weight against the (same-normalised) reconstruction loss. 1 (SAELens's aux_loss_coefficient), not Gao
    # et al.'s 1/32, which was for runs of billions of tokens: a short run must revive its dead latents quickly.
    auxk_alpha: float = 1.0
    k_aux: int | None = None  # None: d_in // 2
    # dead = no firing in this many tokens (also reported). None: a tenth of a run of known length, at least 100
    # batches, at most 10M (Gao et al.); 10M for a run of unknown length. A fixed 10M window is longer than a
    # run of a few million tokens, so AuxK never switched on there.
    dead_window_tokens: int | None = None
    # batchtopk
    batchtopk_max_per_token: int | None = None  # selection cap per token per step; None: 4k (0: exact, slow on CPU)
    batchtopk_save_as: str = "jumprelu"  # "jumprelu" (threshold calibrated on held-out tokens) | "topk"
    calibration_tokens: int = 16384
    # matryoshka_batchtopk (Bussmann et al. 2025; Nabeshima 2024): BatchTopK whose nested dictionary prefixes
    # [0, m_1) ⊂ [0, m_2) ⊂ ... ⊂ [0, d_sae) each reconstruct x on their own. Strictly increasing, last = d_sae.
    # None: d_sae/16, /8, /4, /2, d_sae -- the ladder of Bussmann et al.'s main runs (group sizes d/16, d/16, d/8,
    # d/4, d/2): five levels keep the step's extra cost small, and a first prefix of d/16 latents is wide enough
    # to hold the frequent, general features yet narrow enough to force them there. Saved like batchtopk.
    matryoshka_widths: list[int] | None = None
    # jumprelu
    # jumprelu, in units of the pre-activations of normalised inputs (E‖x‖ = √d_in); the paper's 0.001 is for
    # inputs on another scale. Tuned on the synthetic benchmark.
    jumprelu_bandwidth: float = 0.1
    jumprelu_init_threshold: float = 0.5
    # --- topk / batchtopk feature-recovery options (issue 16; each off = the runs before it, bit for bit) ---
    # "unit": unit-norm decoder rows, gradient's parallel component removed (OpenAI). "rescale": SAELens's
    # rescale_acts_by_decoder_norm -- free rows V (init norm decoder_init_norm, None: 0.1), the decoder is V/‖V‖
    # and the encoder pre-activations are scaled by ‖V‖, so a row's direction turns at lr/‖V‖ per step (fast
    # early, slower as ‖V‖ grows); folded at save into an ordinary unit-norm SAE.
    decoder_norm: str = "unit"
    # The decoder's lr is lr times this. None: 25 for topk/(matryoshka_)batchtopk, 1 otherwise. On the realistic
    # benchmark (SAE 1024, k 7): topk MCC 0.712 -> 0.841 at 1M samples (x4 0.768, x10 0.816, x60 0.837) and
    # 0.742 -> 0.872 at 5M (dead 10.6% -> 0.9%; x10 0.842, x50 0.877); batchtopk 0.610 -> 0.743 at 1M. With
    # Adam a unit-norm row's direction moves ~lr·√d_in per step at most, and at the encoder's lr the decoder
    # directions lag the encoder
    # (SAELens gets ~10x through its free decoder norms initialised at 0.1; decoder_norm="rescale" here: 0.728).
    # matryoshka_batchtopk 0.640 -> 0.765 at 1M (F1 0.548 -> 0.696).
    decoder_lr_scale: float | None = None
    # k annealing: k starts at k_anneal_start·k and falls linearly to k over this first fraction of the steps
    k_anneal_fraction: float = 0.0
    k_anneal_start: float = 4.0
    # resampling (Anthropic 2023, adapted to TopK): a latent dead for a whole dead window is re-pointed at the
    # residual of a high-error token of the last batch (chosen with probability ∝ error²), encoder at the live
    # latents' mean norm and bias, its Adam moments reset; at most once per window, never during the lr decay
    resample_dead: bool = False
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
    # --- transcoders (issue 16): read x at hook_name, predict y at hook_name_out (an MLP's input -> its output) ---
    # None: from the activations -- (x, y) pairs (a paired source, a tuple of two tensors) make a transcoder, single
    # activations an SAE; True/False contradicting the data is a ConfigError. An iterable of batches is read as
    # (x, y) pairs only with transcoder=True: its tuple batches otherwise mean (activations, anything), as before.
    # The encoder reads x itself (apply_b_dec_to_input is off: b_dec lives in the output space), x and y each get
    # their own norm constant, and b_dec starts at y's geometric median.
    transcoder: bool | None = None
    # skip transcoder: y_hat = decode(encode(x)) + x @ W_skip.T with W_skip [d_out, d_in] learned from zeros
    # (sparsify's init): the linear part of the map need not be spent on latents
    skip_connection: bool = False
    d_out: int | None = None  # width of y; None: from the activations (d_in for an SAE)
    hook_name_out: str | None = None  # where the predictions belong; None: from the source (recorded like hook_name)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}",
                              field="architecture")
        if self.architecture in SPARSE_ARCHITECTURES and (self.k is None or not 0 < self.k <= self.d_sae):
            raise ConfigError(f"{self.architecture} needs 0 < k <= d_sae, got k={self.k}", field="k")
        if self.num_threads is not None and int(self.num_threads) <= 0:
            raise ConfigError("num_threads must be positive (or None: chosen by measurement)", field="num_threads")
        for name in ("d_sae", "batch_size", "init_tokens", "calibration_tokens", "dead_window_tokens"):
            if getattr(self, name) is not None and int(getattr(self, name)) <= 0:
                raise ConfigError(f"{name} must be positive", field=name)
        if self.b_dec_init not in ("mean", "geometric_median", "zeros"):
            raise ConfigError(f"unknown b_dec_init {self.b_dec_init!r}", field="b_dec_init")
        if self.decoder_norm not in ("unit", "rescale"):
            raise ConfigError(f"decoder_norm must be 'unit' or 'rescale', got {self.decoder_norm!r}",
                              field="decoder_norm")
        if self.decoder_lr_scale is not None and not self.decoder_lr_scale > 0:
            raise ConfigError(f"decoder_lr_scale must be positive, got {self.decoder_lr_scale}",
                              field="decoder_lr_scale")
        if not (self.k_anneal_start >= 1 and 0 <= self.k_anneal_fraction <= 1):
            raise ConfigError("need k_anneal_start >= 1 and 0 <= k_anneal_fraction <= 1", field="k_anneal_fraction")
        if self.batchtopk_save_as not in ("jumprelu", "topk"):
            raise ConfigError(f"batchtopk_save_as must be 'jumprelu' or 'topk', got {self.batchtopk_save_as!r}",
                              field="batchtopk_save_as")
        self.adam_betas = (float(self.adam_betas[0]), float(self.adam_betas[1]))
        self._check_matryoshka_widths()
        self._check_transcoder_fields()

    def _check_matryoshka_widths(self) -> None:
        """``matryoshka_widths``: ints, strictly increasing, ending at ``d_sae``, and only for Matryoshka (a width
        list on another architecture would be silently ignored)."""
        w = self.matryoshka_widths
        if w is None:
            return
        if self.architecture != "matryoshka_batchtopk":
            raise ConfigError(f"matryoshka_widths is for architecture='matryoshka_batchtopk', not "
                              f"{self.architecture!r}", field="matryoshka_widths")
        if not isinstance(w, (list, tuple)) or not w or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in w):
            raise ConfigError(f"matryoshka_widths must be a non-empty list of ints, got {w!r}",
                              field="matryoshka_widths")
        if any(w[i] >= w[i + 1] for i in range(len(w) - 1)) or w[0] <= 0:
            raise ConfigError(f"matryoshka_widths must be positive and strictly increasing, got {list(w)}",
                              field="matryoshka_widths")
        if w[-1] != self.d_sae:
            raise ConfigError(f"matryoshka_widths must end at d_sae={self.d_sae} (the whole dictionary is the last "
                              f"level), got {list(w)}", field="matryoshka_widths")
        self.matryoshka_widths = [int(v) for v in w]

    def default_matryoshka_widths(self) -> list[int]:
        """``matryoshka_widths``, or its default ``d_sae/16, /8, /4, /2, d_sae`` (rounded down, zeros and repeats
        dropped: small dictionaries get fewer levels)."""
        if self.matryoshka_widths is not None:
            return list(self.matryoshka_widths)
        return sorted({self.d_sae >> s for s in (4, 3, 2, 1, 0)} - {0})

    def _check_transcoder_fields(self) -> None:
        """The transcoder block's types and the contradictions visible without data (the rest: Trainer)."""
        for name in ("transcoder", "skip_connection"):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (value is None and name == "transcoder")):
                raise ConfigError(f"{name} must be true or false{' (or None)' if name == 'transcoder' else ''}, "
                                  f"got {value!r}", field=name)
        if self.skip_connection and self.transcoder is False:
            raise ConfigError("skip_connection=True makes a skip transcoder, but transcoder=False", field="transcoder")
        if self.d_out is not None and (not isinstance(self.d_out, int) or isinstance(self.d_out, bool)
                                       or self.d_out <= 0):
            raise ConfigError(f"d_out must be a positive int or None, got {self.d_out!r}", field="d_out")
        if self.transcoder is False and self.hook_name_out is not None:
            raise ConfigError(f"hook_name_out={self.hook_name_out!r} is where a transcoder writes, but "
                              "transcoder=False", field="hook_name_out")

    def default_batch_size(self, rows: int | None = None) -> int:
        """``batch_size``, or its default for a run of ``total_tokens`` (else ``rows``, one pass) tokens: 4096,
        halved down to 1024 while that would give fewer than 5000 steps; 4096 when the length is unknown or given
        in steps."""
        if self.batch_size is not None:
            return int(self.batch_size)
        tokens = self.total_tokens if self.total_tokens is not None else (rows if self.steps is None else None)
        batch = 4096
        while tokens is not None and batch > 1024 and tokens / batch < 5000:
            batch //= 2
        return batch

    def resolved(self, **known: Any) -> TrainConfig:
        """A copy with every ``None`` default filled in (``known`` supplies d_in / steps from the data)."""
        c = dataclasses.replace(self, **{k: v for k, v in known.items() if getattr(self, k) is None})
        if c.batch_size is None:
            c.batch_size = c.default_batch_size()
        if c.d_in is None:
            raise ConfigError("set d_in: the width of a one-shot iterable cannot be read without consuming it",
                              field="d_in")
        # steps may stay None: an iterable of unknown length is trained to its end, with a constant lr after
        # warmup (a decay needs to know where the end is) -- Trainer warns that it does so.
        if c.lr is None:
            c.lr = {"relu": 5e-5, "jumprelu": 7e-5}.get(c.architecture, 8e-4 / math.sqrt(c.d_sae / 2**14))
        if c.lr_warmup_steps is None:
            c.lr_warmup_steps = min(1000, c.steps // 10) if c.steps is not None else 1000
        if c.sparsity_warmup_steps is None:
            c.sparsity_warmup_steps = c.steps // 20 if c.steps is not None else 1000
        if c.max_grad_norm is None and c.architecture == "relu":
            c.max_grad_norm = 1.0
        if c.decoder_lr_scale is None:
            c.decoder_lr_scale = 25.0 if c.architecture in SPARSE_ARCHITECTURES else 1.0
        if c.decoder_init_norm is None:
            c.decoder_init_norm = 0.1 if c.architecture == "relu" or c.decoder_norm == "rescale" else 1.0
        if c.dead_window_tokens is None:
            run = c.steps * c.batch_size if c.steps is not None else None
            c.dead_window_tokens = (min(10_000_000, max(run // 10, 100 * c.batch_size)) if run is not None
                                    else 10_000_000)
        if c.k_aux is None:  # half the width of what is reconstructed (y for a transcoder)
            c.k_aux = max(1, (c.d_out if c.transcoder and c.d_out else c.d_in) // 2)
        if c.transcoder:  # the encoder reads x itself: b_dec lives in y's space (SAEConfig refuses the flag too)
            c.apply_b_dec_to_input = False
        if c.batchtopk_max_per_token is None:
            c.batchtopk_max_per_token = 4 * (c.k or 1)
        if c.architecture == "matryoshka_batchtopk" and c.matryoshka_widths is None:
            c.matryoshka_widths = c.default_matryoshka_widths()
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
