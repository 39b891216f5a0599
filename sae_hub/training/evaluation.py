"""``evaluate``: the quality numbers of any SAE (loaded or trained), on activations or on a model + dataset.

Every number uses the shared definitions of :mod:`sae_hub.metrics` (L0, FVU with the *global* mean over the
evaluated tokens, firing counts); what each key means is listed in :func:`evaluate`. Conventions that peers
differ on are spelled out in the key names or here:

* ``fvu`` / ``explained_variance`` divide by the variance about the mean of all evaluated tokens;
  ``explained_variance_legacy`` is SAELens's older per-token ratio (variance about the *batch* mean, ratio per
  token, then averaged: the number in the SAEBench paper and on Neuronpedia). It depends on the batch size.
* ``mse`` is the mean over tokens of the squared error *summed over dimensions*; ``mse_per_dim`` divides that
  by the width (what ``F.mse_loss`` reports).
* dead / dense fractions are over the window of the tokens evaluated here (``window_tokens``), nothing else.
* With a model, interventions (SAE splice, zero- and mean-ablation) replace the activation at every position
  except the BOS at position 0 when ``exclude_bos`` (SAELens's ``exclude_special_tokens``; SAEs are usually
  trained without BOS, whose activations are outliers), and the reconstruction metrics skip that position.
  CE is the mean next-token loss over all predicted positions, KL(clean ‖ intervened) the mean over all
  positions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from sae_hub.adapters import ModelAdapter, adapt
from sae_hub.errors import ConfigError
from sae_hub.metrics import FiringTracker, FVUAccumulator
from sae_hub.splicing import Site, hooks_attached, reconstruct, run_to_hooks, splice
from sae_hub.training.activations import ActivationSource, is_pair, pack_tokens

if TYPE_CHECKING:
    from sae_hub.sae import SAE

__all__ = ["evaluate"]

_DEFAULT_STREAM_TOKENS = 1 << 14  # for unbounded inputs (a source, a model + dataset) when n_tokens is not given


class _ReconstructionStats:
    """Running sums for the reconstruction and sparsity metrics (kept on the SAE's device, float64)."""

    def __init__(self, sae: SAE, dense_threshold: float) -> None:
        self.d_sae = sae.cfg.d_sae
        self.dense_threshold = dense_threshold
        self.fvu = FVUAccumulator()
        # The window is "every token evaluated": a window longer than any evaluation, so nothing is evicted.
        self.firing = FiringTracker(sae.cfg.d_sae, window=1 << 62, blocks=1, device=sae.device)
        self.n = 0
        self.width = 0
        self.sums: dict[str, torch.Tensor] = {}

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.double().sum()
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    @torch.no_grad()
    def update(self, x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor) -> None:
        """``x, x_hat [N, d]`` (target and reconstruction) and ``f [N, d_sae]`` for one batch of tokens."""
        if x.shape[0] == 0:
            return
        x, x_hat, f = x.double(), x_hat.double(), f.double()
        r2 = (x - x_hat).pow(2).sum(-1)
        self.fvu.update(x, x_hat)
        self.firing.update(f)
        x_norm, xh_norm = x.norm(dim=-1), x_hat.norm(dim=-1)
        self._add("l0", (f != 0).sum(-1))
        self._add("l1", f.abs().sum(-1))
        self._add("sq_err", r2)
        self._add("cossim", F.cosine_similarity(x, x_hat, dim=-1))
        self._add("l2_ratio", xh_norm / x_norm.clamp_min(1e-30))
        self._add("xhat_sq", xh_norm.pow(2))
        self._add("x_dot_xhat", (x * x_hat).sum(-1))
        batch_var = (x - x.mean(0, keepdim=True)).pow(2).sum(-1)
        self._add("ev_legacy", 1 - r2 / batch_var.clamp_min(1e-30))
        self.n += x.shape[0]
        self.width = x.shape[-1]

    def result(self) -> dict[str, Any]:
        if self.n == 0:
            raise ConfigError("no activations to evaluate: the input was empty (a source yields only whole "
                              "batches: is its data smaller than batch_size?)")
        mean = {k: float(v) / self.n for k, v in self.sums.items()}
        fvu = self.fvu.compute()
        window, counts = self.firing.window_counts()
        return {
            "n_tokens": self.n,
            "l0": mean["l0"],
            "l1": mean["l1"],
            "fvu": fvu,
            "explained_variance": 1 - fvu,
            "explained_variance_legacy": mean["ev_legacy"],
            "mse": mean["sq_err"],
            "mse_per_dim": mean["sq_err"] / self.width,
            "cossim": mean["cossim"],
            "l2_ratio": mean["l2_ratio"],
            "relative_reconstruction_bias": mean["xhat_sq"] / mean["x_dot_xhat"] if mean["x_dot_xhat"] else math.nan,
            "dead_fraction": float((counts == 0).float().mean()),
            "dense_fraction": self.firing.dense_fraction(self.dense_threshold),
            "dense_threshold": self.dense_threshold,
            "window_tokens": window,
            "feature_log10_density": self.firing.log10_density().cpu(),
        }


def _encode_decode(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and reconstruction (``decode(encode(x))`` plus any skip connection) of ``x [N, d_in]``."""
    f = sae.encode(x)
    return f, reconstruct(sae, x, f, sae._last_input_state)


def _flat_input(sae: SAE, x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` as ``[N, width]``: hook_z heads ``[..., n_heads, d_head]`` flattened, leading dims merged."""
    if x.shape[-1] != width and x.dim() >= 2 and x.shape[-2] * x.shape[-1] == width:
        x = x.flatten(-2)
    if x.shape[-1] != width:
        raise ConfigError(f"activations have last dimension {x.shape[-1]}, the SAE expects {width}", field="d_in")
    return x.reshape(-1, width).to(sae.device)


def _batches_of(sae: SAE, activations: Any, batch_size: int, n_tokens: int | None,
                seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(input, target)`` batches from a tensor, a source, or an iterable of batches; target = the input,
    except for transcoders, whose batches must be ``(x, y)`` pairs."""
    transcoder = sae.cfg.is_transcoder
    d_in, d_out = sae.cfg.d_in, int(sae.cfg.d_out or sae.cfg.d_in)
    if isinstance(activations, torch.Tensor):
        if transcoder:
            raise ConfigError("a transcoder needs (input, target) pairs; pass an iterable of (x, y) batches")
        x_all = _flat_input(sae, activations, d_in)
        stream: Iterable[Any] = x_all[:n_tokens].split(batch_size)
    elif transcoder and is_pair(activations) and isinstance(activations, tuple):  # (x, y), as train_sae takes
        if len(activations[0]) != len(activations[1]):
            raise ConfigError(f"x has {len(activations[0])} rows but y has {len(activations[1])}", field="y")
        stream = zip(activations[0][:n_tokens].split(batch_size), activations[1][:n_tokens].split(batch_size),
                     strict=True)
    elif isinstance(activations, ActivationSource):
        if transcoder and getattr(activations, "d_out", None) is None:  # a paired source (hook_name_out) yields them
            raise ConfigError("this activation source yields one hook's activations; a transcoder needs (x, y) "
                              "pairs: give the source hook_name_out", field="hook_name_out")
        n_tokens = n_tokens if n_tokens is not None else _DEFAULT_STREAM_TOKENS
        # a source drops its last partial batch: never ask for more than is evaluated
        stream = activations.batches(min(batch_size, n_tokens), seed=seed)
    elif isinstance(activations, Iterable):
        stream = activations
    else:
        raise ConfigError(f"activations must be a tensor, an activation source or an iterable of batches, got "
                          f"{type(activations).__name__}")
    seen = 0
    for item in stream:
        if n_tokens is not None and seen >= n_tokens:
            break
        if isinstance(item, (tuple, list)):
            if transcoder and len(item) < 2:
                raise ConfigError("a transcoder needs (input, target) batches")
            x = _flat_input(sae, item[0], d_in)
            y = _flat_input(sae, item[1], d_out) if transcoder else x
        elif transcoder:
            raise ConfigError("a transcoder needs (input, target) batches, got a single tensor")
        else:
            x = y = _flat_input(sae, item, d_in)
        if n_tokens is not None:
            x, y = x[:n_tokens - seen], y[:n_tokens - seen]
        seen += x.shape[0]
        yield x, y


# ------------------------------------------------------------------------------------------ model side


def _ce_per_token(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy ``[batch, pos - 1]`` (float32)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None].to(logp.device))[..., 0]


def _kl(clean_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(clean ‖ other) per position ``[batch, pos]`` from clean log-probs and the other run's logits."""
    other = logits.float().log_softmax(-1)
    return (clean_logp.exp() * (clean_logp - other)).sum(-1)


def _replace_hook(site: Site, width: int, value: Callable[[torch.Tensor], torch.Tensor],
                  keep_first: bool, device: torch.device) -> Callable[..., torch.Tensor]:
    """A hook replacing the SAE's slice of the activation by ``value(slice)`` (computed on ``device``, the SAE's),
    position 0 kept if asked."""

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        current = site.read(act, width, device)
        new = value(current).to(current.dtype).expand_as(current).clone()
        if keep_first:
            new[:, :1] = current[:, :1]
        return site.write(act, new)

    return hook


@contextlib.contextmanager
def _spliced(model: ModelAdapter, sae: SAE, keep_first: bool) -> Iterator[None]:
    """The SAE spliced in (no error term); with ``keep_first`` position 0 keeps its clean activation.

    The clean value is saved by a hook attached before the splice's and put back by one attached after it
    (hooks on a HookPoint run in the order they were attached).
    """
    if not keep_first:
        with splice(model, sae):
            yield
        return
    out_site = Site.of(sae, output=True)
    saved: dict[str, torch.Tensor] = {}

    def save(act: torch.Tensor, hook: Any) -> None:
        saved["first"] = act[:, :1].clone()

    def restore(act: torch.Tensor, hook: Any) -> torch.Tensor:
        out = act.clone()
        out[:, :1] = saved["first"].to(out.dtype)
        return out

    with hooks_attached(model, [(out_site, save)]), splice(model, sae), \
            hooks_attached(model, [(out_site, restore)]):
        yield


def _evaluate_on_model(sae: SAE, model: ModelAdapter, dataset: Any, *, n_tokens: int, context_size: int,
                       model_batch_size: int, prepend_bos: bool, exclude_bos: bool, ce: bool, column: str | None,
                       dense_threshold: float, progress: bool) -> dict[str, Any]:
    in_hook, out_hook = str(sae.cfg.hook_name), str(sae.cfg.output_hook_name)
    d_in, d_out = sae.cfg.d_in, int(sae.cfg.d_out or sae.cfg.d_in)
    skip = exclude_bos and prepend_bos
    per_ctx = context_size - (1 if skip else 0)
    n_ctx = -(-n_tokens // per_ctx)
    stream = pack_tokens(model, dataset, context_size, prepend_bos=prepend_bos, column=column)
    contexts = [c for _, c in zip(range(n_ctx), stream, strict=False)]
    if not contexts:
        raise ConfigError(f"the dataset gave no complete context of {context_size} tokens")
    chunks = torch.stack(contexts).split(model_batch_size)
    site, out_site = Site.of(sae), Site.of(sae, output=True)
    stats = _ReconstructionStats(sae, dense_threshold)
    target_sum = torch.zeros(d_out, dtype=torch.float64, device=sae.device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chunks) * (5 if ce else 1), desc="evaluating", unit="batch")

    # Pass 1, cut after the hooks: reconstruction metrics, and the mean activation for mean-ablation.
    for tokens in chunks:
        with torch.inference_mode():
            acts = run_to_hooks(model, tokens, [site, out_site])
            x = site.read(acts[in_hook], d_in, sae.device)
            y = site.read(acts[out_hook], d_out, sae.device) if out_hook != in_hook else x
            if skip:
                x, y = x[:, 1:], y[:, 1:]
            x, y = x.reshape(-1, d_in), y.reshape(-1, d_out)
            f, y_hat = _encode_decode(sae, x)
            stats.update(y, f, y_hat)
            target_sum += y.double().sum(0)
        if bar is not None:
            bar.update()
    out = stats.result()
    out.update(context_size=context_size, n_contexts=len(contexts), exclude_bos=skip, hook_name=in_hook)
    if not ce:
        if bar is not None:
            bar.close()
        return out

    # Pass 2, full forwards: clean, SAE spliced, zero- and mean-ablated.
    mean_act = (target_sum / stats.n).float()
    zero_hook = _replace_hook(site, d_out, torch.zeros_like, skip, sae.device)
    mean_hook = _replace_hook(site, d_out, lambda cur: mean_act.to(cur.device), skip, sae.device)
    runs: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
        "sae": lambda: _spliced(model, sae, skip),
        "zero_ablation": lambda: hooks_attached(model, [(out_site, zero_hook)]),
        "mean_ablation": lambda: hooks_attached(model, [(out_site, mean_hook)]),
    }
    ce_sum = dict.fromkeys(["clean", *runs], 0.0)
    kl_sum = dict.fromkeys(runs, 0.0)
    n_pred = n_pos = 0
    for tokens in chunks:
        with torch.inference_mode():
            device_tokens = tokens.to(model.device)
            logits = model.forward(device_tokens)
            ce_sum["clean"] += float(_ce_per_token(logits, tokens).double().sum())
            clean_logp = logits.float().log_softmax(-1)
            del logits
            for name, ctx in runs.items():
                with ctx():
                    logits = model.forward(device_tokens)
                ce_sum[name] += float(_ce_per_token(logits, tokens).double().sum())
                kl_sum[name] += float(_kl(clean_logp, logits).double().sum())
                del logits
                if bar is not None:
                    bar.update()
        n_pred += tokens.shape[0] * (tokens.shape[1] - 1)
        n_pos += tokens.numel()
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    ce_clean, ce_sae = ce_sum["clean"] / n_pred, ce_sum["sae"] / n_pred
    ce_zero, ce_mean = ce_sum["zero_ablation"] / n_pred, ce_sum["mean_ablation"] / n_pred
    kl_sae, kl_zero, kl_mean = (kl_sum[k] / n_pos for k in ("sae", "zero_ablation", "mean_ablation"))
    out.update(
        ce_loss_clean=ce_clean,
        ce_loss_sae=ce_sae,
        ce_loss_zero_ablation=ce_zero,
        ce_loss_mean_ablation=ce_mean,
        ce_loss_recovered_zero=_ratio(ce_zero - ce_sae, ce_zero - ce_clean),
        ce_loss_recovered_mean=_ratio(ce_mean - ce_sae, ce_mean - ce_clean),
        delta_lm_loss=ce_sae - ce_clean,
        kl_sae=kl_sae,
        kl_zero_ablation=kl_zero,
        kl_mean_ablation=kl_mean,
        kl_score_zero=_ratio(kl_zero - kl_sae, kl_zero),
        kl_score_mean=_ratio(kl_mean - kl_sae, kl_mean),
        n_ce_tokens=n_pred,
    )
    return out


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 else math.nan


# ------------------------------------------------------------------------------------------ public API


@torch.no_grad()
def evaluate(sae: SAE, activations: Any = None, *, model: Any = None, dataset: Any = None,
             n_tokens: int | None = None, batch_size: int = 4096, context_size: int | None = None,
             model_batch_size: int = 8, prepend_bos: bool | None = None, exclude_bos: bool = True,
             ce: bool = True, column: str | None = None, dense_threshold: float = 0.1, seed: int = 0,
             progress: bool = False, tokenizer: Any = None) -> dict[str, Any]:
    """Quality metrics of ``sae`` on ``activations``, or on ``model`` run over ``dataset`` at ``sae.cfg.hook_name``.

    ``activations``: a tensor ``[N, d_in]`` (or ``[..., d_in]``, or hook_z ``[..., n_heads, d_head]``), an
    :class:`~sae_hub.training.activations.ActivationSource` (read with ``seed``), or an iterable of batches
    (tensors, or ``(x, y)`` pairs for transcoders). ``n_tokens`` caps the tokens evaluated (default: all of a
    tensor or iterable; 16384 for a source or a model, whose streams are usually unbounded).

    Returned keys (floats unless said):

    * ``n_tokens``; ``l0`` (mean active latents per token); ``l1`` (mean Σ|f|);
    * ``fvu`` (Σ‖x−x̂‖² / Σ‖x−x̄‖², x̄ the mean of all evaluated tokens), ``explained_variance`` (1 − fvu),
      ``explained_variance_legacy`` (per-token 1 − ‖x−x̂‖²/‖x−x̄_batch‖², averaged; SAELens legacy);
    * ``mse`` (mean over tokens of ‖x−x̂‖²), ``mse_per_dim`` (that / width), ``cossim`` (mean cos(x, x̂));
    * ``l2_ratio`` (mean ‖x̂‖/‖x‖) and ``relative_reconstruction_bias`` (E‖x̂‖² / E⟨x, x̂⟩; < 1 = shrinkage);
    * ``dead_fraction`` (latents that never fired), ``dense_fraction`` (fired on more than
      ``dense_threshold`` of the tokens), both over ``window_tokens`` = the tokens evaluated;
    * ``feature_log10_density``: tensor ``[d_sae]``, log10(firing frequency + 1e-10).

    With ``model`` + ``dataset`` (packed as in :class:`~sae_hub.training.activations.ModelActivationSource`,
    ``context_size`` default ``sae.cfg.context_size`` or 128, ``prepend_bos`` default ``sae.cfg.prepend_bos``
    or True; BOS at position 0 excluded and left clean when ``exclude_bos``), also, when ``ce``:
    ``ce_loss_clean``, ``ce_loss_sae`` (SAE spliced, no error term), ``ce_loss_zero_ablation``,
    ``ce_loss_mean_ablation`` (the hook activation replaced by zeros / by its mean over the evaluated tokens),
    ``ce_loss_recovered_zero`` and ``ce_loss_recovered_mean`` = (CE_abl − CE_sae) / (CE_abl − CE_clean),
    ``delta_lm_loss`` = CE_sae − CE_clean, ``kl_sae`` / ``kl_zero_ablation`` / ``kl_mean_ablation`` = mean per
    token of KL(clean ‖ intervened), ``kl_score_zero`` / ``kl_score_mean`` = (KL_abl − KL_sae) / KL_abl. For a
    transcoder the target and the intervention are at ``hook_name_out``.

    ``model`` is any kind :func:`sae_hub.adapters.adapt` accepts (TransformerLens 3/4, a ``transformers``
    ``*ForCausalLM`` with ``tokenizer=`` for text, an nnsight ``LanguageModel``). The CE and KL numbers do not
    depend on the kind: a TransformerLens model with centred unembedding has logits shifted by a constant per
    position, which log-softmax removes.
    """
    if batch_size <= 0 or model_batch_size <= 0:
        raise ConfigError("batch_size and model_batch_size must be positive")
    if n_tokens is not None and n_tokens <= 0:
        raise ConfigError(f"n_tokens must be positive, got {n_tokens}", field="n_tokens")
    if (activations is None) == (model is None):
        raise ConfigError("pass either activations, or model and dataset")
    if activations is not None:
        stats = _ReconstructionStats(sae, dense_threshold)
        for x, y in _batches_of(sae, activations, batch_size, n_tokens, seed):
            f, y_hat = _encode_decode(sae, x)
            stats.update(y, f, y_hat)
        return stats.result()
    if dataset is None:
        raise ConfigError("evaluating on a model needs a dataset")
    if not sae.cfg.hook_name:
        raise ConfigError("the SAE has no hook_name, so there is no place in the model to read it from",
                          field="hook_name")
    ctx = context_size or sae.cfg.context_size or 128
    adapter = adapt(model, tokenizer)  # the model kind is recognised once, here
    n_ctx_model = adapter.n_ctx
    if context_size is None and n_ctx_model is not None:
        ctx = min(ctx, n_ctx_model)  # an explicit context_size that is too long is refused by pack_tokens' caller
    pb = prepend_bos if prepend_bos is not None else (sae.cfg.prepend_bos if sae.cfg.prepend_bos is not None
                                                       else True)
    return _evaluate_on_model(
        sae, adapter, dataset, n_tokens=n_tokens or _DEFAULT_STREAM_TOKENS, context_size=int(ctx),
        model_batch_size=model_batch_size, prepend_bos=pb, exclude_bos=exclude_bos, ce=ce, column=column,
        dense_threshold=dense_threshold, progress=progress,
    )
