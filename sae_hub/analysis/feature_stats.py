"""Feature statistics over text: how often each feature fires, how strongly, and on which contexts.

:func:`feature_stats` streams tokens through the model in batches, reads the SAE's features with
:func:`sae_hub.splicing.run_with_saes` (the forward pass stops right after the SAE's hook), and keeps only
running per-feature statistics, so memory is bounded by one batch (``batch_size x context_size x d_sae``)
plus the top-n heap (``d_sae x top_n x window``) whatever ``n_tokens`` is.

Definitions (the tokens counted are all fed positions except special tokens such as BOS/EOS/pad when
``ignore_special_tokens``; BOS positions carry outsized activations that say nothing about the text):

* **fires**: the feature's activation is non-zero (as :class:`sae_hub.metrics.FiringTracker` counts).
* **density** = firing count / tokens counted; ``log10_density`` = ``log10(density + 1e-10)``, the
  ``sparsity.safetensors`` convention (from ``FiringTracker.log10_density``; never-firing features at -10).
* **mean_activation**: mean over the tokens where the feature fires (NaN if it never fired);
  **mean_activation_all**: mean over all tokens counted (= mean_activation x density).
* **max_activation**: the largest activation seen (0 if it never fired).
* **top contexts**: the ``top_n`` sequences with the largest activation of the feature (one entry per
  sequence, at its maximum), each with a window of ``window[0]`` tokens before and ``window[1]`` after the
  maximum and the feature's activation at every window position. Kept with a per-feature heap that is
  merged with each batch's per-sequence maxima in one vectorised ``topk``, never a loop over features.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_hub.errors import ConfigError, CorruptFileError, ShapeMismatchError
from sae_hub.metrics import FiringTracker

if TYPE_CHECKING:
    from sae_hub.sae import SAE

__all__ = ["FeatureStats", "feature_stats", "read_sparsity"]

logger = logging.getLogger(__name__)

SPARSITY_FILENAME = "sparsity.safetensors"
SPARSITY_KEY = "sparsity"
_EPS = 1e-10


# -------------------------------------------------------------------------------------- sparsity files


def _sparsity_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p if p.suffix == ".safetensors" else p / SPARSITY_FILENAME


def read_sparsity(path: str | os.PathLike[str], *, d_sae: int | None = None) -> torch.Tensor | None:
    """The log10 feature densities ``[d_sae]`` stored in ``sparsity.safetensors``, or None if there is none.

    ``path`` is an SAE folder or the file itself. A file that exists but is unreadable, lacks the
    ``"sparsity"`` tensor or (given ``d_sae``) has the wrong shape raises a typed error naming it.
    """
    from sae_hub.files import read_safetensors

    p = _sparsity_path(path)
    if not p.is_file():
        return None
    tensors, _ = read_safetensors(p)
    if SPARSITY_KEY not in tensors:
        raise CorruptFileError(f"no {SPARSITY_KEY!r} tensor (found {sorted(tensors)})", path=p, field=SPARSITY_KEY)
    t = tensors[SPARSITY_KEY]
    if t.dim() != 1 or (d_sae is not None and t.shape[0] != d_sae):
        raise ShapeMismatchError(f"sparsity has shape {list(t.shape)}, expected [{d_sae if d_sae else 'd_sae'}]",
                                 path=p, field=SPARSITY_KEY)
    return t.float().clone()


# -------------------------------------------------------------------------------------------- results


@dataclass
class FeatureStats:
    """Streaming statistics of every feature (see the module docstring for the definitions).

    Per-feature tensors (CPU): ``count`` int64, ``density`` / ``mean_activation`` / ``mean_activation_all``
    float64, ``max_activation`` float32. Top contexts, sorted by activation: ``top_acts [d_sae, top_n]``,
    ``top_seq`` (index of the sequence in the order fed, -1 for an empty slot), ``top_pos`` (position of
    the maximum in that sequence), ``top_tokens [d_sae, top_n, W]`` int32 (-1 outside the sequence) and
    ``top_token_acts [d_sae, top_n, W]`` (0 outside the sequence and at ignored special tokens), with
    ``W = window[0] + 1 + window[1]`` and the maximum at window index ``window[0]``.
    """

    n_tokens: int  # tokens counted
    n_positions: int  # token positions fed to the model (counted + ignored special tokens)
    n_sequences: int
    count: torch.Tensor
    density: torch.Tensor
    mean_activation: torch.Tensor
    mean_activation_all: torch.Tensor
    max_activation: torch.Tensor
    top_acts: torch.Tensor
    top_seq: torch.Tensor
    top_pos: torch.Tensor
    top_tokens: torch.Tensor
    top_token_acts: torch.Tensor
    window: tuple[int, int]
    tokenizer: Any = field(default=None, repr=False)
    tracker: FiringTracker | None = field(default=None, repr=False)

    @property
    def d_sae(self) -> int:
        return int(self.count.shape[0])

    def log10_density(self, eps: float = _EPS) -> torch.Tensor:
        """``log10(density + eps)`` per feature, float32 (what ``sparsity.safetensors`` holds)."""
        if self.tracker is not None:
            return self.tracker.log10_density(eps).cpu()
        return torch.log10(self.density.float() + eps)

    def write_sparsity(self, sae_dir_or_path: str | os.PathLike[str]) -> Path:
        """Write ``log10_density()`` as ``sparsity.safetensors`` (key ``"sparsity"``) into an SAE folder, or
        to the given ``.safetensors`` path; the file is written atomically. Returns the file's path."""
        from sae_hub.files import write_safetensors_atomic

        p = _sparsity_path(sae_dir_or_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors_atomic(p, {SPARSITY_KEY: self.log10_density().float().contiguous()},
                                 metadata={"n_tokens": str(self.n_tokens), "eps": repr(_EPS)})
        return p

    def _str(self, token: int) -> str:
        if self.tokenizer is None:
            return str(token)
        return str(self.tokenizer.decode([token]))

    def contexts(self, feature: int) -> list[dict[str, Any]]:
        """The top contexts of one feature, best first: ``seq``, ``pos``, ``max_activation``, the window's
        ``token_ids``, ``tokens`` (strings, if a tokenizer is known), ``acts`` and ``max_index`` (index of
        the maximum within the window). Empty slots (the feature fired in fewer sequences) are left out."""
        j = int(feature)
        if not 0 <= j < self.d_sae:
            raise ConfigError(f"feature {j} is out of range [0, {self.d_sae})", field="feature")
        out = []
        for i in range(self.top_seq.shape[1]):
            seq = int(self.top_seq[j, i])
            if seq < 0:
                continue
            toks = self.top_tokens[j, i]
            keep = toks >= 0
            ids = toks[keep].tolist()
            acts = self.top_token_acts[j, i][keep].tolist()
            before = int((~keep[: self.window[0]]).sum())
            out.append({
                "seq": seq, "pos": int(self.top_pos[j, i]), "max_activation": float(self.top_acts[j, i]),
                "token_ids": ids, "tokens": [self._str(t) for t in ids], "acts": acts,
                "max_index": self.window[0] - before,
            })
        return out

    def to_records(self, features: Iterable[int] | None = None, *, contexts: bool = True) -> list[dict[str, Any]]:
        """One dict per feature: counts, density, log10 density, mean/max activations and (optionally) the
        top contexts as :meth:`contexts` gives them."""
        ids = range(self.d_sae) if features is None else [int(f) for f in features]
        log10 = self.log10_density()
        recs = []
        for j in ids:
            rec: dict[str, Any] = {
                "feature": j, "count": int(self.count[j]), "density": float(self.density[j]),
                "log10_density": float(log10[j]), "mean_activation": float(self.mean_activation[j]),
                "mean_activation_all": float(self.mean_activation_all[j]),
                "max_activation": float(self.max_activation[j]),
            }
            if contexts:
                rec["top_contexts"] = self.contexts(j)
            recs.append(rec)
        return recs

    def to_pandas(self) -> Any:
        """Per-feature scalars as a ``pandas.DataFrame`` indexed by feature (needs pandas)."""
        return records_frame(self.to_records(contexts=False))


def records_frame(records: list[dict[str, Any]]) -> Any:
    """Per-feature records as a ``pandas.DataFrame`` indexed by ``feature``; pandas (extra ``analysis``) is
    imported only here, so the analysis classes' ``to_records()`` work without it."""
    from sae_hub.extras import require

    pd = require("pandas", extra="analysis", purpose="to_pandas() (to_records() needs nothing)")
    return pd.DataFrame.from_records(records).set_index("feature")


# -------------------------------------------------------------------------------------------- streaming


def _special_ids(tokenizer: Any) -> list[int]:
    if tokenizer is None:
        return []
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        t = getattr(tokenizer, name, None)
        if isinstance(t, int):
            ids.add(t)
    return sorted(ids)


class _RowStream:
    """Turns a dataset into token rows of at most ``context_size``.

    * a token tensor ``[n, L]`` (or ``[L]``), a sequence of token ids, or a mapping with ``input_ids`` /
      ``tokens``: used as given (no BOS added), split into pieces of ``context_size``;
    * text (a string, or a mapping with ``text``): tokenised without special tokens and packed, SAELens
      style: the documents are concatenated with the separator token (EOS, else BOS) between them and cut
      into rows of ``context_size`` tokens, each starting with BOS when ``prepend_bos``. A final partial row
      is kept.
    """

    def __init__(self, tokenizer: Any, context_size: int, prepend_bos: bool) -> None:
        self.tokenizer = tokenizer
        self.context_size = context_size
        bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
        eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        self.bos = bos if bos is not None else eos
        self.sep = eos if eos is not None else bos
        self.prepend_bos = prepend_bos and self.bos is not None
        if self.prepend_bos and context_size < 2:
            raise ConfigError("context_size must be >= 2 to hold BOS and a token", field="context_size")
        self.buffer: list[int] = []
        self.any_doc = False

    def _split(self, row: torch.Tensor) -> Iterator[torch.Tensor]:
        row = row.reshape(-1).long()
        for s in range(0, row.numel(), self.context_size):
            yield row[s:s + self.context_size]

    def _text(self, text: str) -> Iterator[torch.Tensor]:
        if self.tokenizer is None:
            raise ConfigError("text needs a tokenizer (model.tokenizer is None); pass token ids instead",
                              field="dataset")
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.any_doc and self.sep is not None:
            self.buffer.append(int(self.sep))
        self.any_doc = True
        self.buffer.extend(int(t) for t in ids)
        content = self.context_size - (1 if self.prepend_bos else 0)
        while len(self.buffer) >= content:
            yield self._row(self.buffer[:content])
            del self.buffer[:content]

    def _row(self, content: list[int]) -> torch.Tensor:
        head = [int(self.bos)] if self.prepend_bos and self.bos is not None else []  # prepend_bos implies a bos
        return torch.tensor(head + content, dtype=torch.long)

    def rows(self, dataset: Any) -> Iterator[torch.Tensor]:
        if isinstance(dataset, torch.Tensor):
            rows = dataset.reshape(1, -1) if dataset.dim() == 1 else dataset.reshape(-1, dataset.shape[-1])
            for r in rows:
                yield from self._split(r)
            return
        items = [dataset] if isinstance(dataset, str) else dataset
        for item in items:
            if isinstance(item, Mapping):
                if "text" in item:
                    item = item["text"]
                elif "input_ids" in item or "tokens" in item:
                    item = torch.as_tensor(item.get("input_ids", item.get("tokens")))
                else:
                    raise ConfigError(f"dataset rows need a 'text', 'input_ids' or 'tokens' key, got {sorted(item)}",
                                      field="dataset")
            if isinstance(item, str):
                yield from self._text(item)
            elif isinstance(item, (torch.Tensor, Sequence)):
                yield from self._split(torch.as_tensor(item))
            else:
                raise ConfigError(f"cannot read a dataset item of type {type(item).__name__}", field="dataset")
        if self.buffer:
            yield self._row(self.buffer)
            self.buffer = []


class _Accumulator:
    """Running per-feature sums and the top-n heap, on the SAE's device."""

    def __init__(self, d_sae: int, top_n: int, window: tuple[int, int], device: torch.device,
                 n_tokens: int) -> None:
        self.d_sae, self.top_n, self.window = d_sae, top_n, window
        self.W = window[0] + 1 + window[1]
        self.tracker = FiringTracker(d_sae, window=max(n_tokens, 1), blocks=1, device=device)
        self.sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.max = torch.zeros(d_sae, dtype=torch.float32, device=device)
        self.h_val = torch.full((top_n, d_sae), -math.inf, dtype=torch.float32, device=device)
        self.h_seq = torch.full((top_n, d_sae), -1, dtype=torch.long, device=device)
        self.h_pos = torch.full((top_n, d_sae), -1, dtype=torch.long, device=device)
        self.h_tok = torch.full((top_n, d_sae, self.W), -1, dtype=torch.int32, device=device)
        self.h_act = torch.zeros((top_n, d_sae, self.W), dtype=torch.float32, device=device)
        self.offsets = torch.arange(-window[0], window[1] + 1, device=device)
        self.feat = torch.arange(d_sae, device=device)

    @torch.no_grad()
    def update(self, f: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, seq0: int) -> None:
        """``f [B, L, d_sae]`` float32 (zeroed at invalid positions), ``tokens``/``valid`` ``[B, L]``."""
        B, L, d = f.shape
        fv = f.reshape(-1, d) if bool(valid.all()) else f[valid]
        self.tracker.update(features=fv)
        if fv.shape[0]:
            self.sum += fv.sum(0).double()  # float32 pairwise sum of one batch; float64 across batches
            torch.maximum(self.max, fv.amax(0), out=self.max)
        del fv
        if self.top_n == 0:
            return
        row_max, row_arg = f.max(dim=1)  # [B, d]: each sequence's maximum of each feature, and where
        n = min(self.top_n, B)
        c_val, c_row = row_max.topk(n, dim=0)  # [n, d] candidates
        c_val = torch.where(c_val > 0, c_val, torch.full_like(c_val, -math.inf))
        vals, sel = torch.cat([self.h_val, c_val]).topk(self.top_n, dim=0)
        new = sel >= self.top_n  # slots taken by a candidate of this batch
        old = sel.clamp(max=self.top_n - 1)
        self.h_seq = self.h_seq.gather(0, old)
        self.h_pos = self.h_pos.gather(0, old)
        old3 = old[..., None].expand(-1, -1, self.W)
        self.h_tok = self.h_tok.gather(0, old3)
        self.h_act = self.h_act.gather(0, old3)
        self.h_val = vals
        if not bool(new.any()):
            return
        # windows only for the candidates that entered the heap (few, once it has filled up)
        slot, feat = new.nonzero(as_tuple=True)
        ci = sel[slot, feat] - self.top_n
        row = c_row[ci, feat]
        pos = row_arg[row, feat]
        wpos = pos[:, None] + self.offsets  # [K, W]
        inside = (wpos >= 0) & (wpos < L)
        flat = row[:, None] * L + wpos.clamp(0, L - 1)
        self.h_seq[slot, feat] = row + seq0
        self.h_pos[slot, feat] = pos
        self.h_tok[slot, feat] = tokens.reshape(-1)[flat].to(torch.int32).masked_fill_(~inside, -1)
        self.h_act[slot, feat] = f.reshape(-1)[flat * d + feat[:, None]].masked_fill_(~inside, 0.0)


def feature_stats(
    sae: SAE,
    model: Any,
    dataset: Any,
    *,
    n_tokens: int,
    batch_size: int,
    context_size: int = 128,
    top_n: int = 10,
    window: int | tuple[int, int] = (10, 5),
    prepend_bos: bool | None = None,
    ignore_special_tokens: bool = True,
    progress: bool = True,
    tokenizer: Any = None,
) -> FeatureStats:
    """Stream ``n_tokens`` token positions of ``dataset`` through ``model`` and gather per-feature statistics.

    ``dataset``: a token tensor ``[n_seq, L]``, an iterable of texts, of token-id sequences, or of mappings
    with ``text`` / ``input_ids`` / ``tokens`` (an HF ``datasets`` dataset works as is); see
    :class:`_RowStream` for how text is packed into rows of ``context_size`` (BOS first when
    ``prepend_bos``, default: ``sae.cfg.prepend_bos``, else the model's ``default_prepend_bos``, else True).
    Rows are fed ``batch_size`` at a time through :func:`sae_hub.splicing.run_with_saes` (stopping after
    the SAE's hook); the last row is cut so exactly ``n_tokens`` positions are fed (fewer if the dataset
    ends first). ``window`` is ``(before, after)`` or one int for both. ``progress`` shows a tqdm bar of the
    positions fed (on stderr; streaming millions of tokens takes minutes).

    ``model`` is any kind :func:`sae_hub.adapters.adapt` accepts (TransformerLens, a ``transformers`` model with
    ``tokenizer=`` for text, an nnsight ``LanguageModel``); it is adapted once here and only the adapter is used.
    """
    from tqdm.auto import tqdm

    from sae_hub.splicing import run_with_saes

    if n_tokens <= 0 or batch_size <= 0 or context_size <= 0 or top_n < 0:
        raise ConfigError("n_tokens, batch_size and context_size must be positive, top_n >= 0")
    before, after = (window, window) if isinstance(window, int) else (int(window[0]), int(window[1]))
    if before < 0 or after < 0:
        raise ConfigError("window sizes must be >= 0", field="window")
    from sae_hub.adapters import adapt

    adapter = adapt(model, tokenizer)
    tokenizer = adapter.tokenizer
    if prepend_bos is None:
        prepend_bos = sae.cfg.prepend_bos
    if prepend_bos is None:
        prepend_bos = adapter.default_prepend_bos
    n_ctx = adapter.n_ctx
    if n_ctx is not None and context_size > n_ctx:
        raise ConfigError(f"context_size={context_size} exceeds the model's n_ctx={n_ctx}", field="context_size")

    device = sae.device
    model_device = adapter.device
    special = torch.tensor(_special_ids(tokenizer) if ignore_special_tokens else [], dtype=torch.long)
    acc = _Accumulator(sae.cfg.d_sae, top_n, (before, after), device, n_tokens)
    stream = _RowStream(tokenizer, context_size, prepend_bos)
    fed = 0
    n_seq = 0
    batch: list[torch.Tensor] = []
    bar = tqdm(total=n_tokens, desc="feature stats", unit="tok", unit_scale=True, disable=not progress)

    def flush() -> None:
        nonlocal n_seq
        tokens = torch.stack(batch)
        batch.clear()
        _, feats = run_with_saes(adapter, tokens.to(model_device), {"sae": sae}, stop_early=True)
        f = feats["sae"].float()
        tok = tokens.to(device)
        valid = ~torch.isin(tok, special.to(device)) if special.numel() else torch.ones_like(tok, dtype=torch.bool)
        if not bool(valid.all()):
            f.mul_(valid[..., None])  # ours: a fresh tensor from encode
        acc.update(f, tok, valid, n_seq)
        n_seq += tokens.shape[0]
        bar.update(tokens.numel())

    try:
        for row in stream.rows(dataset):
            if fed >= n_tokens:
                break
            row = row[: n_tokens - fed]
            if row.numel() == 0:
                continue
            if batch and (len(batch) >= batch_size or batch[0].numel() != row.numel()):
                flush()
            batch.append(row)
            fed += row.numel()
        if batch:
            flush()
    finally:
        bar.close()
    logger.debug("feature_stats: %d positions fed, %d counted, %d sequences", fed, acc.tracker.total_tokens, n_seq)
    if fed == 0:
        raise ConfigError("the dataset gave no tokens", field="dataset")

    tr = acc.tracker
    counted = tr.total_tokens
    count = tr.total_counts.cpu()
    total = acc.sum.cpu()
    empty = acc.h_val == -math.inf
    return FeatureStats(
        n_tokens=counted, n_positions=fed, n_sequences=n_seq, count=count,
        density=count.double() / max(counted, 1),
        mean_activation=torch.where(count > 0, total / count.clamp_min(1).double(),
                                    torch.full_like(total, math.nan)),
        mean_activation_all=total / max(counted, 1),
        max_activation=acc.max.cpu(),
        top_acts=acc.h_val.masked_fill(empty, 0.0).T.contiguous().cpu(),
        top_seq=acc.h_seq.masked_fill(empty, -1).T.contiguous().cpu(),
        top_pos=acc.h_pos.masked_fill(empty, -1).T.contiguous().cpu(),
        top_tokens=acc.h_tok.masked_fill(empty[..., None], -1).transpose(0, 1).contiguous().cpu(),
        top_token_acts=acc.h_act.masked_fill(empty[..., None], 0.0).transpose(0, 1).contiguous().cpu(),
        window=(before, after), tokenizer=tokenizer, tracker=tr,
    )
