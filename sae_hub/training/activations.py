"""Where training activations come from: an in-memory tensor, any iterable of batches, a live TransformerLens
model, or an on-disk cache of one model pass.

The trainer consumes one protocol, the *activation source* (:class:`ActivationSource`): attributes ``d_in``,
``hook_name``, ``model_name`` and a method ``batches(batch_size, *, seed, rank=0, world_size=1, start=0)``
yielding float tensors ``[batch_size, d_in]``. :func:`source_from` turns what ``train_sae`` accepts into one:
a tensor becomes a :class:`TensorSource`, an iterable of batches (a DataLoader, a generator) an in-order
source, and a source stays itself. Three promises hold for :class:`TensorSource`,
:class:`ModelActivationSource` and :class:`ActivationCache` (and, for an iterable, as far as re-reading it gives
the same batches), because checkpoint resume and data-parallel training are built on them:

* **Deterministic**: the stream is a pure function of ``(data, seed, rank, world_size)`` and the source's
  construction arguments.
* **Disjoint ranks**: rank ``r`` of ``world_size`` reads its own slice of the data (whole contexts for the
  model source, whole blocks of tokens for the cache, a slice of each global batch for tensors and iterables);
  the union over ranks is the single-rank data.
* **Exact resume**: ``batches(..., start=n)`` yields exactly what the ``n+1``-th and later batches of
  ``batches(..., start=0)`` would have been (bit for bit: the model runs on the same token chunks).

Both sources also say how their tokens were made (``context_size``, ``prepend_bos``, ``skip_bos``,
``dataset_path``), and the trainer writes that into the SAE's config: SAELens's ``ActivationsStore.from_sae``
(which SAEBench uses) refuses an SAE without ``context_size`` and ``prepend_bos``, and evaluating on differently
packed tokens measures a different distribution. What a source does not know stays ``None``.

Packing follows SAELens: documents are tokenised without special tokens, joined with an end-of-text separator
(EOS, else BOS), and cut into windows of ``context_size - 1`` tokens, each prefixed with BOS when
``prepend_bos``; the last, incomplete window is dropped. ``skip_bos`` then drops position 0 (the prefixed BOS:
an attention sink whose activations are outliers an SAE should not spend capacity on); separators inside a
window are ordinary tokens and stay.

transformer_lens / transformers / datasets are never imported here: models and datasets bring their own
classes, so ``import sae_hub`` stays light. Models are run only through :mod:`sae_hub.splicing`'s seams
(:func:`~sae_hub.splicing.run_to_hooks`, :func:`~sae_hub.splicing.model_device`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from sae_hub.adapters import adapt, model_tokenizer
from sae_hub.errors import ConfigError, CorruptFileError, IntegrityError, MissingFileError
from sae_hub.files import (
    dtype_from_str,
    dtype_to_str,
    read_json,
    read_safetensors,
    read_safetensors_header,
    sha256_file,
    write_json_atomic,
    write_safetensors_atomic,
)
from sae_hub.splicing import run_to_hooks

__all__ = [
    "ActivationCache",
    "ActivationSource",
    "ModelActivationSource",
    "TensorSource",
    "as_source",
    "cache_activations",
    "is_pair",
    "pack_tokens",
    "source_from",
    "source_out_width",
    "source_rows",
    "source_width",
]

MANIFEST_FILENAME = "manifest.json"
CACHE_FORMAT = "sae_hub.activation_cache"
CACHE_FORMAT_VERSION = 1
_TOKENIZE_BATCH = 64  # documents per tokenizer call (fast tokenizers parallelise within a call)


@runtime_checkable
class ActivationSource(Protocol):
    """What the trainer reads activations from (see the module docstring for the promises)."""

    d_in: int
    hook_name: str | None
    model_name: str | None
    # Optional (read with getattr, None when absent): context_size: int | None, prepend_bos: bool | None,
    # skip_bos: bool | None (position 0 of each context left out), dataset_path: str | None.

    def batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                start: int = 0) -> Iterator[torch.Tensor]:
        """Float tensors ``[batch_size, d_in]``; ``start`` = batches this rank already consumed."""
        ...


def as_source(obj: Any) -> ActivationSource:
    """``obj`` if it follows the :class:`ActivationSource` protocol, else a :class:`ConfigError` saying why.

    Tensors and plain iterables of batches are not sources (they have no seed, rank or resume position); the
    trainer wraps those itself (:func:`source_from`).
    """
    if isinstance(obj, ActivationSource) and callable(getattr(obj, "batches", None)):
        d_in = obj.d_in
        if not isinstance(d_in, int) or isinstance(d_in, bool) or d_in <= 0:
            raise ConfigError(f"activation source {type(obj).__name__} has d_in={d_in!r}, expected a positive int",
                              field="d_in")
        return obj
    missing = [a for a in ("d_in", "hook_name", "model_name", "batches") if not hasattr(obj, a)]
    raise ConfigError(
        f"expected an activation source (attributes d_in, hook_name, model_name and a method "
        f"batches(batch_size, *, seed, rank, world_size, start)), got {type(obj).__name__} missing "
        f"{', '.join(missing) or 'a callable batches'}; a tensor [N, d_in] or an iterable of batches can be "
        "passed to train_sae / evaluate directly"
    )


# ------------------------------------------------------------------------------------------ in-memory data


def _as_tensor(batch: Any) -> torch.Tensor:
    """A batch as a [rows, d] tensor: tuple/list -> first element; dict -> "activations" or "x"."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    elif isinstance(batch, dict):
        batch = batch["activations"] if "activations" in batch else batch["x"]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"expected batches of tensors, got {type(batch).__name__}")
    return batch.reshape(-1, batch.shape[-1])


def _as_pair(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A transcoder batch as ``(x [rows, d_in], y [rows, d_out])``: a 2-tuple/list, or a dict with "x" and "y"."""
    if isinstance(batch, dict) and "x" in batch and "y" in batch:
        batch = (batch["x"], batch["y"])
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2
            and all(isinstance(t, torch.Tensor) for t in batch)):
        got = type(batch).__name__ + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        raise ConfigError(f"a transcoder batch must be a pair (x, y) of tensors (or a dict with 'x' and 'y'), got "
                          f"{got}", field="y")
    x, y = (t.reshape(-1, t.shape[-1]) for t in batch)
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"x has {x.shape[0]} rows but y has {y.shape[0]}: a transcoder trains on aligned pairs "
                          "(row i of y is the output for row i of x)", field="y")
    return x, y


def is_pair(activations: Any) -> bool:
    """Whether ``train_sae`` reads ``activations`` as transcoder pairs without being told: a tuple of exactly two
    tensors ``(x, y)``, or a source advertising ``d_out`` (a list, or a tuple of more tensors, is batches)."""
    if isinstance(activations, tuple) and len(activations) == 2:
        return all(isinstance(t, torch.Tensor) for t in activations)
    return callable(getattr(activations, "batches", None)) and getattr(activations, "d_out", None) is not None


class TensorSource:
    """An in-memory ``[N, d_in]`` tensor as an activation source: reshuffled every epoch from ``seed``.

    With ``targets [N, d_out]`` (a transcoder's outputs, row i for input row i) it yields ``(x, y)`` pairs, both
    taken through the same permutation, and advertises ``d_out`` / ``hook_name_out``.

    Global batch ``j`` is rows ``[j·G, (j+1)·G)`` of epoch ``j // (N // G)``'s permutation (G = the global
    batch); rank ``r`` of ``world_size`` takes its ``r``-th slice. So the ranks' batches are disjoint, their union
    is the single-process batch, and ``start`` (batches already consumed) resumes exactly. A final partial batch
    of an epoch is dropped.
    """

    def __init__(self, data: torch.Tensor, *, hook_name: str | None = None, model_name: str | None = None,
                 context_size: int | None = None, prepend_bos: bool | None = None, skip_bos: bool | None = None,
                 dataset_path: str | None = None, targets: torch.Tensor | None = None,
                 hook_name_out: str | None = None) -> None:
        self.data = data.reshape(-1, data.shape[-1])
        self.d_in = int(self.data.shape[1])
        self.targets: torch.Tensor | None = None
        self.d_out: int | None = None
        self.hook_name_out = hook_name_out
        if targets is not None:
            self.data, self.targets = _as_pair((data, targets))
            if self.targets.device != self.data.device:
                raise ConfigError(f"x is on {self.data.device} but y on {self.targets.device}", field="y")
            self.d_out = int(self.targets.shape[1])
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
                start: int = 0) -> Iterator[Any]:
        """``[batch_size, d_in]`` batches, or ``(x, y)`` pairs with ``targets``."""
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
            if self.targets is not None:
                rows = perm[lo:lo + batch_size]
                yield self.data[rows], self.targets[rows]
            else:
                yield self.data[perm[lo:lo + batch_size]]
            j += 1


class _IterableSource:
    """Any iterable of batches (a DataLoader, a generator) as a source.

    Read in order, never shuffled; batches are re-cut to the requested size. ``start`` re-reads and drops the
    batches already consumed (so resuming re-skips them), and with several ranks every rank reads the whole
    iterable and keeps its own slice of each global batch: prefer a real source for data-parallel runs.

    ``paired``: every batch is a transcoder pair ``(x, y)`` (see :func:`_as_pair`), yielded as pairs.
    """

    def __init__(self, iterable: Iterable[Any], d_in: int | None = None, *, paired: bool = False,
                 d_out: int | None = None) -> None:
        self.iterable = iterable
        self.d_in = d_in
        self.paired = paired
        self.d_out = d_out if paired else None

    def batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                start: int = 0) -> Iterator[Any]:
        del seed  # in order, by definition
        if self.paired:
            yield from self._pairs(batch_size, rank, world_size, start)
            return
        for i, xb in enumerate(_rebatch(map(_as_tensor, self.iterable), batch_size * world_size)):
            if i >= start:
                yield xb[rank * batch_size:(rank + 1) * batch_size]

    def _pairs(self, batch_size: int, rank: int, world_size: int, start: int) -> Iterator[Any]:
        """Pairs re-cut like single batches: x and y side by side in one row (so one re-cut keeps them aligned),
        split again on the way out."""
        d_in = self.d_in

        def joined(batch: Any) -> torch.Tensor:
            nonlocal d_in
            x, y = _as_pair(batch)
            if d_in is None:
                d_in = int(x.shape[1])
            if x.shape[1] != d_in or (self.d_out is not None and y.shape[1] != self.d_out):
                raise ConfigError(f"a batch has x of width {x.shape[1]} and y of width {y.shape[1]}, expected "
                                  f"{d_in} and {self.d_out}", field="d_in" if x.shape[1] != d_in else "d_out")
            return torch.cat([x, y], dim=1)

        for i, xy in enumerate(_rebatch(map(joined, self.iterable), batch_size * world_size)):
            if i >= start:
                part = xy[rank * batch_size:(rank + 1) * batch_size]
                yield part[:, :d_in], part[:, d_in:]


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


def source_from(activations: Any, d_in: int | None = None, *, paired: bool = False,
                d_out: int | None = None) -> Any:
    """What ``train_sae`` accepts, as a source: a tensor ``[..., d_in]`` -> :class:`TensorSource`; a tuple of two
    tensors ``(x, y)`` -> a paired :class:`TensorSource` (transcoders); an object with ``batches`` -> itself; any
    other iterable of batches -> an in-order source (``d_in`` its width, when known), of ``(x, y)`` pairs when
    ``paired`` (a transcoder run says so: a tuple batch otherwise means its first element).

    Unlike :func:`as_source` (which checks the protocol), this accepts data that is not a source yet.
    """
    if isinstance(activations, torch.Tensor):
        return TensorSource(activations)
    if is_pair(activations) and isinstance(activations, tuple):
        return TensorSource(activations[0], targets=activations[1])
    if callable(getattr(activations, "batches", None)):
        return activations
    if isinstance(activations, Iterable):
        return _IterableSource(activations, d_in, paired=paired, d_out=d_out)
    raise TypeError(f"cannot train on {type(activations).__name__}: give a tensor, an iterable of batches, "
                    "or an activation source with .batches(batch_size, seed=, rank=, world_size=, start=)")


def source_width(source: Any) -> int | None:
    """``d_in`` of a source from :func:`source_from`; for a re-iterable iterable, the width of its first batch
    (peeking consumes nothing); ``None`` for a one-shot iterator (reading it would consume a batch)."""
    if getattr(source, "d_in", None):
        return int(source.d_in)
    it = getattr(source, "iterable", None)
    if it is not None and iter(it) is not it:  # re-iterable: peeking does not consume anything
        first = next(iter(it))
        return int((_as_pair(first)[0] if getattr(source, "paired", False) else _as_tensor(first)).shape[-1])
    return None


def source_out_width(source: Any) -> int | None:
    """``d_out`` of a paired source from :func:`source_from` (peeking a re-iterable iterable like
    :func:`source_width`); ``None`` for a single-activation source or a one-shot iterator."""
    if getattr(source, "d_out", None):
        return int(source.d_out)
    it = getattr(source, "iterable", None)
    if getattr(source, "paired", False) and it is not None and iter(it) is not it:
        return int(_as_pair(next(iter(it)))[1].shape[-1])
    return None


def source_rows(source: Any) -> int | None:
    """Activation rows in one pass over a source from :func:`source_from`, where known without reading it: a
    :class:`TensorSource`'s length, or the length of the dataset under a DataLoader; else ``None``."""
    if isinstance(source, TensorSource):
        return len(source)
    dataset = getattr(getattr(source, "iterable", None), "dataset", None)  # a DataLoader over a sized dataset
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return None


# ------------------------------------------------------------------------------------------ small helpers


def _mix(*parts: object) -> int:
    """A 63-bit seed derived from ``parts``: stable across processes and Python versions (unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _check_stream_args(batch_size: int, rank: int, world_size: int, start: int) -> None:
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}", field="batch_size")
    if not isinstance(world_size, int) or world_size <= 0:
        raise ConfigError(f"world_size must be a positive int, got {world_size!r}", field="world_size")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, {world_size}), got {rank!r}", field="rank")
    if not isinstance(start, int) or start < 0:
        raise ConfigError(f"start must be a non-negative int, got {start!r}", field="start")


def _model_name(model: Any) -> str | None:
    return adapt(model).model_name


def _special_ids(model: Any) -> tuple[int | None, int | None]:
    """(bos, separator) token ids from the model's tokenizer: separator = EOS, else BOS."""
    tok = model_tokenizer(model)
    bos = getattr(tok, "bos_token_id", None)
    eos = getattr(tok, "eos_token_id", None)
    return bos, eos if eos is not None else bos


def _flat_positions(act: torch.Tensor, skip_first: bool) -> torch.Tensor:
    """``[batch, pos, *trailing]`` -> ``[batch * pos', prod(trailing)]``, dropping position 0 if asked.

    Flattening the trailing dims is what makes ``attn.hook_z`` (``[..., n_heads, d_head]``) one ``d_in`` row.
    """
    if skip_first:
        act = act[:, 1:]
    return act.reshape(act.shape[0] * act.shape[1], -1)


# ------------------------------------------------------------------------------------------ tokens


def _documents(dataset: Any, column: str | None) -> Iterator[str | list[int]]:
    """The documents of ``dataset``, each a string or a list of token ids.

    Accepts an iterable of strings / token-id sequences / dict rows, and ``datasets`` datasets (column
    ``column``, else ``"text"``, else ``"input_ids"`` or ``"tokens"``).
    """
    if isinstance(dataset, (str, bytes)):
        raise ConfigError("dataset is a single string; pass a list of documents")
    names = getattr(dataset, "column_names", None)
    if isinstance(names, (list, tuple)) and names:  # a datasets Dataset / IterableDataset
        col = column or next((c for c in ("text", "input_ids", "tokens") if c in names), None)
        if col is None or col not in names:
            raise ConfigError(f"dataset has no column {col or 'text'!r}; its columns are {list(names)}; pass "
                              "column=...", field="column")
        select = getattr(dataset, "select_columns", None)
        rows = select([col]) if callable(select) else dataset
        for row in rows:
            yield _document(row[col])
        return
    for item in dataset:
        if isinstance(item, dict):
            col = column or next((c for c in ("text", "input_ids", "tokens") if c in item), None)
            if col is None or col not in item:
                raise ConfigError(f"dataset row has no key {col or 'text'!r}; its keys are {sorted(item)}",
                                  field="column")
            item = item[col]
        yield _document(item)


def _document(item: Any) -> str | list[int]:
    if isinstance(item, str):
        return item
    if isinstance(item, torch.Tensor):
        if item.dim() != 1 or item.is_floating_point():
            raise ConfigError(f"a pre-tokenized document must be a 1-D integer tensor, got {item.dtype} "
                              f"of shape {list(item.shape)}")
        return item.tolist()
    if hasattr(item, "tolist"):  # numpy arrays
        item = item.tolist()
    if isinstance(item, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
        return list(item)
    raise ConfigError(f"dataset items must be strings or token-id sequences, got {type(item).__name__}")


def _token_documents(tokenizer: Any, docs: Iterator[str | list[int]]) -> Iterator[list[int]]:
    """Token ids per document; text is tokenised in batches, without special tokens."""
    pending: list[str] = []

    def flush() -> Iterator[list[int]]:
        if pending:
            if tokenizer is None:
                raise ConfigError("text documents need a tokenizer, and the model has none (model.tokenizer)")
            yield from tokenizer(pending, add_special_tokens=False, verbose=False)["input_ids"]
            pending.clear()

    for doc in docs:
        if isinstance(doc, str):
            pending.append(doc)
            if len(pending) >= _TOKENIZE_BATCH:
                yield from flush()
        else:
            yield from flush()
            yield doc
    yield from flush()


def pack_tokens(model: Any, dataset: Any, context_size: int, *, prepend_bos: bool = True,
                column: str | None = None) -> Iterator[torch.Tensor]:
    """Pack ``dataset`` into token windows ``[context_size]`` (int64), in dataset order.

    ``model`` provides ``model.tokenizer`` (a Hugging Face tokenizer). Documents are tokenised without special
    tokens, each followed by the EOS token (BOS if there is none), concatenated, and cut into windows of
    ``context_size - 1`` tokens prefixed with BOS (``context_size`` tokens without ``prepend_bos``); the final
    incomplete window is dropped. A 2-D integer tensor is taken as already-packed windows, unchanged.
    """
    if isinstance(dataset, torch.Tensor):
        if dataset.dim() != 2 or dataset.is_floating_point():
            raise ConfigError(f"a token tensor dataset must be 2-D integer [n_contexts, context_size], got "
                              f"{dataset.dtype} of shape {list(dataset.shape)}")
        if dataset.shape[1] != context_size:
            raise ConfigError(f"pre-packed token rows have width {dataset.shape[1]}, context_size is "
                              f"{context_size}", field="context_size")
        yield from dataset.long()
        return
    bos, sep = _special_ids(model)
    if prepend_bos and bos is None:
        raise ConfigError("prepend_bos=True but the tokenizer has no BOS (or EOS) token", field="prepend_bos")
    body = context_size - 1 if prepend_bos else context_size
    if body <= 0:
        raise ConfigError(f"context_size={context_size} leaves no room for tokens", field="context_size")
    buf: list[int] = []
    for ids in _token_documents(model_tokenizer(model), _documents(dataset, column)):
        buf.extend(ids)
        if sep is not None:
            buf.append(sep)
        n_full = len(buf) // body
        for i in range(n_full):
            window = buf[i * body:(i + 1) * body]
            yield torch.tensor([bos, *window] if prepend_bos else window, dtype=torch.long)
        del buf[:n_full * body]


def _check_reiterable(dataset: Any) -> None:
    if not isinstance(dataset, torch.Tensor) and iter(dataset) is dataset:
        raise ConfigError(
            "dataset is a one-shot iterator; a source re-reads its data from the start for every batches() call "
            "(and to resume), so pass something re-iterable: a list, a datasets Dataset, or an object whose "
            "__iter__ starts over"
        )


def _default_context_size(model: Any, dataset: Any, context_size: int | None) -> int:
    if context_size is None:
        context_size = dataset.shape[1] if isinstance(dataset, torch.Tensor) else 128
    n_ctx = adapt(model).n_ctx
    if n_ctx is not None and context_size > n_ctx:
        raise ConfigError(f"context_size={context_size} exceeds the model's n_ctx={n_ctx}", field="context_size")
    if context_size < 2:
        raise ConfigError(f"context_size must be at least 2, got {context_size}", field="context_size")
    return int(context_size)


# ------------------------------------------------------------------------------------------ live model


class ModelActivationSource:
    """Activations at ``hook_name`` of a model over a text (or token) dataset, on the fly.

    Works with every model kind :func:`sae_hub.adapters.adapt` accepts: TransformerLens 4's ``TransformerBridge``
    in compatibility mode, 3's ``HookedTransformer``, a ``transformers`` ``*ForCausalLM`` (``tokenizer=`` for
    text; the hook is placed by :mod:`sae_hub.sites`, so a TransformerLens hook name reads TransformerLens's
    tensor) and an nnsight ``LanguageModel``. The model is adapted once, here. It runs under
    ``torch.inference_mode`` and only up to the hook (the pass is cut by raising from the hook).

    Shuffling: a buffer of ``buffer_tokens`` activations is filled, shuffled, and all but half of it emitted;
    then refilled (SAELens's mixing buffer). Tokens of one context thus spread over many batches.

    Ranks: packed contexts are dealt round-robin (context ``c`` goes to rank ``c % world_size``), so ranks see
    disjoint contexts; every rank tokenises the whole stream (cheap next to the model) but runs the model on
    its own contexts only. Resume (``start``) replays the buffer's bookkeeping on token *indices* only and then
    runs the model on just the chunks whose tokens are still buffered, so it costs a few buffers of model time
    (plus re-tokenising), not the whole consumed stream.

    Args:
        model: the model, of any kind (text needs its tokenizer: TransformerLens's and nnsight's own, or
            ``tokenizer=`` for a ``transformers`` model).
        dataset: re-iterable strings, token-id sequences, dict rows, a ``datasets`` dataset (``column``, else
            ``"text"``/``"input_ids"``/``"tokens"``), or a 2-D integer tensor of packed contexts.
        hook_name: the hook point to read, e.g. ``"blocks.6.hook_resid_post"``; ``attn.hook_z`` rows are the
            flattened heads (``n_heads * d_head``).
        context_size: window length in tokens (default 128, or the width of a packed tensor).
        prepend_bos: start each window with BOS (for packed tensors: whether they start with one).
        skip_bos: drop position 0 of each window when it is a BOS.
        buffer_tokens: shuffle-buffer size; memory ``buffer_tokens * d_in`` in the activation dtype.
        model_batch_size: contexts per forward pass (also the unit resume re-runs).
        dtype: dtype of the yielded batches (``None``: the model's activation dtype).
        device: where the buffer lives and batches are yielded (default: the model's device).
        dataset_path: where the dataset comes from (a Hub dataset id, as SAELens's ``dataset_path``), recorded in
            the trained SAE's config; not read from ``dataset``, which rarely knows its own id.
        tokenizer: the tokenizer of a ``transformers`` model (others bring their own).
        hook_name_out: for a transcoder, the hook whose activation it predicts (e.g. ``blocks.6.hook_mlp_out`` for
            ``hook_name="blocks.6.ln2.hook_normalized"``): batches are then ``(x, y)`` pairs of the same tokens,
            read in one forward pass cut after the later hook, and ``d_out`` is its width. The two activations
            travel side by side through the shuffle buffer, so pairs never come apart.
    """

    def __init__(self, model: Any, dataset: Any, hook_name: str, *, context_size: int | None = None,
                 prepend_bos: bool = True, skip_bos: bool = True, column: str | None = None,
                 buffer_tokens: int = 1 << 16, model_batch_size: int = 32,
                 dtype: torch.dtype | str | None = torch.float32, device: str | torch.device | None = None,
                 dataset_path: str | None = None, tokenizer: Any = None, hook_name_out: str | None = None) -> None:
        _check_reiterable(dataset)
        if hook_name_out is not None and hook_name_out == hook_name:
            raise ConfigError(f"hook_name_out equals hook_name ({hook_name!r}): a transcoder reads one hook and "
                              "predicts another; leave hook_name_out None for an SAE", field="hook_name_out")
        if buffer_tokens < 2:
            raise ConfigError(f"buffer_tokens must be at least 2, got {buffer_tokens}", field="buffer_tokens")
        if model_batch_size < 1:
            raise ConfigError(f"model_batch_size must be positive, got {model_batch_size}",
                              field="model_batch_size")
        self.model = model
        self.adapter = adapter = adapt(model, tokenizer)
        self.dataset = dataset
        self.hook_name: str | None = hook_name
        self.hook_name_out: str | None = hook_name_out
        self.model_name: str | None = adapter.model_name
        self.context_size = _default_context_size(adapter, dataset, context_size)
        self.prepend_bos = bool(prepend_bos)
        self.skip_bos = bool(skip_bos and prepend_bos)
        self.column = column
        self.dataset_path = _dataset_path(dataset_path)
        self.buffer_tokens = int(buffer_tokens)
        self.model_batch_size = int(model_batch_size)
        self.dtype = dtype_from_str(dtype) if dtype is not None else None
        self.device = torch.device(device) if device is not None else adapter.device
        self.tokens_per_context = self.context_size - (1 if self.skip_bos else 0)
        # Probe one token: validates the hook name now (not mid-training) and learns d_in and the hook's shape.
        bos, sep = _special_ids(adapter)
        probe = torch.tensor([[bos if bos is not None else (sep or 0)]], dtype=torch.long)
        with torch.inference_mode():
            acts = run_to_hooks(adapter, probe, self._hooks())
        act = acts[hook_name]
        self.activation_shape: tuple[int, ...] = tuple(act.shape[2:])  # per token, before flattening
        self._act_dtype = act.dtype  # the buffer keeps what the model gives; batches are cast to ``dtype``
        self.d_in: int = math.prod(self.activation_shape)
        self.d_out: int | None = None
        if hook_name_out is not None:
            self.activation_shape_out: tuple[int, ...] = tuple(acts[hook_name_out].shape[2:])
            self.d_out = math.prod(self.activation_shape_out)
            self._act_dtype = torch.promote_types(act.dtype, acts[hook_name_out].dtype)
        self._width = self.d_in + (self.d_out or 0)  # a buffer row: x, then y for a transcoder

    def _hooks(self) -> list[str]:
        return [str(self.hook_name)] + ([self.hook_name_out] if self.hook_name_out is not None else [])

    def __repr__(self) -> str:
        out = f", hook_name_out={self.hook_name_out!r}, d_out={self.d_out}" if self.hook_name_out else ""
        return (f"ModelActivationSource(model={self.model_name!r}, hook_name={self.hook_name!r}, "
                f"d_in={self.d_in}{out}, context_size={self.context_size}, skip_bos={self.skip_bos})")

    def contexts(self, rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
        """This rank's packed token windows ``[context_size]``, in order (what the model is run on)."""
        stream = pack_tokens(self.adapter, self.dataset, self.context_size, prepend_bos=self.prepend_bos,
                             column=self.column)
        for c, ctx in enumerate(stream):
            if c % world_size == rank:
                yield ctx

    def _chunks(self, rank: int, world_size: int) -> Iterator[torch.Tensor]:
        """This rank's contexts grouped into model batches ``[<= model_batch_size, context_size]``."""
        group: list[torch.Tensor] = []
        for ctx in self.contexts(rank, world_size):
            group.append(ctx)
            if len(group) == self.model_batch_size:
                yield torch.stack(group)
                group = []
        if group:
            yield torch.stack(group)

    def _activations(self, chunk: torch.Tensor) -> torch.Tensor:
        """``[rows * tokens_per_context, d_in]`` activations of one chunk, on ``self.device`` (a transcoder's:
        ``[.., d_in + d_out]``, x then y in each row, from one pass cut after the later hook).

        Copied out of inference mode so the trainer can use them in autograd (as inputs).
        """
        with torch.inference_mode():
            acts = run_to_hooks(self.adapter, chunk, self._hooks())
        if self.hook_name_out is None:
            return _flat_positions(acts[str(self.hook_name)], self.skip_bos).to(self.device, copy=True)
        x, y = (_flat_positions(acts[h], self.skip_bos).to(self.device, self._act_dtype) for h in self._hooks())
        return torch.cat([x, y], dim=1)

    def batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                start: int = 0) -> Iterator[Any]:
        """Shuffled ``[batch_size, d_in]`` batches until the dataset is exhausted (a last partial batch is dropped);
        ``(x [batch_size, d_in], y [batch_size, d_out])`` pairs with ``hook_name_out``.

        ``start`` skips the first ``start`` batches of this rank's stream for the same ``seed`` (resume).
        """
        _check_stream_args(batch_size, rank, world_size, start)
        stream = self._stream(batch_size, seed, rank, world_size, start)
        if self.hook_name_out is None:
            return stream
        return ((xy[:, :self.d_in], xy[:, self.d_in:]) for xy in stream)

    def _stream(self, batch_size: int, seed: int, rank: int, world_size: int,
                start: int) -> Iterator[torch.Tensor]:
        # Token index t of this rank's stream is position t % P of its (t // P)-th context. The buffer logic runs
        # on these indices (buf_idx, queue_idx); activations (buf_act, queue_act) ride along once materialised.
        # While skipping ``start`` batches only indices are tracked, plus the token chunks some buffered index
        # still points into, so resuming runs the model on those chunks only.
        gen = torch.Generator().manual_seed(_mix("ModelActivationSource", seed, rank, world_size))
        keep = self.buffer_tokens // 2
        P = self.tokens_per_context
        empty_idx = torch.empty(0, dtype=torch.long)
        chunks = self._chunks(rank, world_size)
        buf_idx, queue_idx = empty_idx, empty_idx
        buf_act: torch.Tensor | None = None
        queue_act: torch.Tensor | None = None
        pending: list[tuple[int, torch.Tensor]] = []  # (first token index, chunk tokens) while skipping
        skipping, to_skip = start > 0, start
        next_token, exhausted = 0, False
        if not skipping:
            buf_act = queue_act = self._empty_acts()
        while True:
            new_idx: list[torch.Tensor] = [buf_idx]
            new_act: list[torch.Tensor] = [] if buf_act is None else [buf_act]
            n_buf = len(buf_idx)
            while not exhausted and n_buf < self.buffer_tokens:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                n = chunk.shape[0] * P
                new_idx.append(torch.arange(next_token, next_token + n))
                if skipping:
                    pending.append((next_token, chunk))
                else:
                    new_act.append(self._activations(chunk))
                next_token += n
                n_buf += n
            if n_buf == 0:
                return
            perm = torch.randperm(n_buf, generator=gen)
            buf_idx = torch.cat(new_idx)[perm]
            if not skipping:
                buf_act = torch.cat(new_act)[perm.to(self.device)]
            n_emit = n_buf if exhausted else n_buf - keep
            queue_idx = torch.cat([queue_idx, buf_idx[:n_emit]])
            buf_idx = buf_idx[n_emit:]
            if buf_act is not None and queue_act is not None:
                queue_act = torch.cat([queue_act, buf_act[:n_emit]])
                buf_act = buf_act[n_emit:]
            pos = 0
            while len(queue_idx) - pos >= batch_size:
                if skipping:
                    pos += batch_size
                    to_skip -= 1
                    if to_skip == 0:
                        queue_idx = queue_idx[pos:]
                        pos = 0
                        buf_act, queue_act = self._materialize(pending, buf_idx, queue_idx)
                        pending, skipping = [], False
                    continue
                assert queue_act is not None
                batch = queue_act[pos:pos + batch_size]
                pos += batch_size
                yield batch if self.dtype is None else batch.to(self.dtype)
            queue_idx = queue_idx[pos:]
            if queue_act is not None:
                queue_act = queue_act[pos:]
            if skipping:
                pending = _still_referenced(pending, P, torch.cat([buf_idx, queue_idx]))

    def _empty_acts(self) -> torch.Tensor:
        return torch.empty(0, self._width, dtype=self._act_dtype, device=self.device)

    def _materialize(self, pending: list[tuple[int, torch.Tensor]],
                     *indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Activations for each index tensor, running the model on the pending chunks that hold them."""
        P = self.tokens_per_context
        needed = torch.cat(indices)
        pending = _still_referenced(pending, P, needed)
        if not pending:
            return tuple(self._empty_acts()[:0] for _ in indices)
        starts = torch.tensor([off for off, _ in pending], dtype=torch.long)
        acts = [self._activations(chunk) for _, chunk in pending]
        base = torch.cumsum(torch.tensor([0] + [len(a) for a in acts[:-1]]), 0)
        table = torch.cat(acts)
        out = []
        for idx in indices:
            k = torch.searchsorted(starts, idx, right=True) - 1
            rows = base[k] + (idx - starts[k])
            out.append(table[rows.to(table.device)])
        return tuple(out)


def _still_referenced(pending: list[tuple[int, torch.Tensor]], tokens_per_row: int,
                      refs: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """The pending chunks that hold at least one token index in ``refs``."""
    if not pending or refs.numel() == 0:
        return []
    refs = refs.sort().values
    starts = torch.tensor([off for off, _ in pending], dtype=torch.long)
    ends = starts + torch.tensor([c.shape[0] * tokens_per_row for _, c in pending], dtype=torch.long)
    hit = torch.searchsorted(refs, ends) > torch.searchsorted(refs, starts)
    return [p for p, h in zip(pending, hit.tolist(), strict=True) if h]


# ------------------------------------------------------------------------------------------ on-disk cache


def _hook_dirname(hook_name: str) -> str:
    return hook_name.replace(os.sep, "_").replace("/", "_")


def _dataset_path(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"dataset_path must be a string (e.g. a Hub dataset id), got {type(value).__name__}",
                          field="dataset_path")
    return value or None


def _remove_shards(out: Path, manifest: Any) -> None:
    """Delete the shard files an old manifest lists (only files inside ``out``: a manifest is data, not orders)."""
    root = out.resolve()
    hooks = manifest.get("hooks") if isinstance(manifest, dict) else None
    for info in (hooks or {}).values():
        for entry in info.get("shards") or []:
            shard = (out / str(entry.get("file", ""))).resolve()
            if shard.is_file() and root in shard.parents:
                shard.unlink()


def _describe_dataset(dataset: Any, column: str | None) -> dict[str, Any]:
    """What a manifest can say about the data: its type, and for ``datasets`` its name, config and split."""
    out: dict[str, Any] = {"type": f"{type(dataset).__module__}.{type(dataset).__qualname__}"}
    info = getattr(dataset, "info", None)
    for key in ("dataset_name", "config_name"):
        value = getattr(info, key, None)
        if value:
            out[key] = str(value)
    split = getattr(dataset, "split", None)
    if split is not None:
        out["split"] = str(split)
    if column:
        out["column"] = column
    return out


def cache_activations(model: Any, dataset: Any, hook_names: str | Sequence[str], out_dir: str | os.PathLike[str],
                      *, n_tokens: int, context_size: int | None = None, prepend_bos: bool = True,
                      skip_bos: bool = True, column: str | None = None, dtype: str | torch.dtype = "bfloat16",
                      shard_tokens: int = 1 << 18, model_batch_size: int = 32, dataset_path: str | None = None,
                      overwrite: bool = False, progress: bool = True, tokenizer: Any = None) -> dict[str, Any]:
    """Run the model once over ``dataset`` and store the activations of every hook in ``hook_names``.

    So several SAEs (layers, sites, widths, seeds) train from a single model pass. Layout::

        out_dir/manifest.json
        out_dir/<hook_name>/shard_00000.safetensors   # tensor "activations" [tokens, d_in] in ``dtype``

    Shards of all hooks hold the same tokens (in stream order; :class:`ActivationCache` shuffles). The manifest
    lists model, hooks, ``d_in`` per hook, dtype, token counts, context settings, the dataset (``dataset_path``
    as given: the manifest is where an SAE trained from the cache learns it) and, per shard, its token count and
    sha256. Every file is written to a temporary name and renamed, and the manifest is
    written last, so an interrupted run never looks like a complete cache.

    ``n_tokens`` activation rows per hook are stored (fewer if the dataset runs out first; the manifest says
    how many). Packing, ``prepend_bos`` and ``skip_bos`` are as in :class:`ModelActivationSource`.
    ``dtype`` is the storage dtype (``"bfloat16"`` halves the disk and I/O; ``"float32"`` is exact).
    Returns the manifest.
    """
    hooks = [hook_names] if isinstance(hook_names, str) else list(dict.fromkeys(hook_names))
    if not hooks:
        raise ConfigError("no hook names given", field="hook_names")
    if n_tokens <= 0 or shard_tokens <= 0 or model_batch_size <= 0:
        raise ConfigError("n_tokens, shard_tokens and model_batch_size must be positive")
    store_dtype = dtype_from_str(dtype)
    dataset_path = _dataset_path(dataset_path)
    model = adapt(model, tokenizer)  # adapted once; everything below goes through the adapter
    ctx_size = _default_context_size(model, dataset, context_size)
    skip = skip_bos and prepend_bos
    out = Path(out_dir)
    manifest_path = out / MANIFEST_FILENAME
    if manifest_path.exists():
        if not overwrite:
            raise ConfigError(f"{out} already holds an activation cache; pass overwrite=True to replace it",
                              path=manifest_path)
        old = read_json(manifest_path)
        manifest_path.unlink()  # from here on the folder is not a complete cache
        _remove_shards(out, old)
    dirs = {h: out / _hook_dirname(h) for h in hooks}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)

    shards: dict[str, list[dict[str, Any]]] = {h: [] for h in hooks}
    held: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    shapes: dict[str, tuple[int, ...]] = {}
    n_held = written = 0

    def write_shard(n: int) -> None:
        """Write the first ``n`` held rows of every hook as the next shard."""
        nonlocal n_held, written
        index = len(shards[hooks[0]])
        for h in hooks:
            rows = torch.cat(held[h])
            name = f"shard_{index:05d}.safetensors"
            path = dirs[h] / name
            write_safetensors_atomic(path, {"activations": rows[:n]}, metadata={"hook_name": h})
            shards[h].append({"file": f"{dirs[h].name}/{name}", "n_tokens": n, "sha256": sha256_file(path)})
            held[h] = [rows[n:]] if len(rows) > n else []
        n_held -= n
        written += n

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tokens, desc="caching activations", unit="tok")
    stream = pack_tokens(model, dataset, ctx_size, prepend_bos=prepend_bos, column=column)
    try:
        done = False
        while not done:
            group = [ctx for _, ctx in zip(range(model_batch_size), stream, strict=False)]
            if not group:
                break
            with torch.inference_mode():
                acts = run_to_hooks(model, torch.stack(group), hooks)
            take = min(len(group) * (ctx_size - (1 if skip else 0)), n_tokens - written - n_held)
            for h in hooks:
                shapes.setdefault(h, tuple(acts[h].shape[2:]))
                held[h].append(_flat_positions(acts[h], skip)[:take].to("cpu", store_dtype, copy=True))
            n_held += take
            if bar is not None:
                bar.update(take)
            while n_held >= shard_tokens:
                write_shard(shard_tokens)
            done = written + n_held >= n_tokens
        if n_held:
            write_shard(n_held)
    finally:
        if bar is not None:
            bar.close()
    if written == 0:
        raise ConfigError(f"the dataset gave no complete context of {ctx_size} tokens; nothing was cached")

    from sae_hub import __version__

    manifest: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "sae_hub_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_name": _model_name(model),
        "hook_names": hooks,
        "dtype": dtype_to_str(store_dtype),
        "n_tokens": written,
        "n_tokens_requested": n_tokens,
        "context_size": ctx_size,
        "prepend_bos": prepend_bos,
        "skip_bos": skip,
        "tokens_per_context": ctx_size - (1 if skip else 0),
        "dataset_path": dataset_path,
        "dataset": _describe_dataset(dataset, column),
        "hooks": {
            h: {"dir": dirs[h].name, "d_in": math.prod(shapes[h]), "activation_shape": list(shapes[h]),
                "shards": shards[h]}
            for h in hooks
        },
    }
    write_json_atomic(manifest_path, manifest)
    return manifest


def _manifest_field(manifest: dict[str, Any], name: str, kind: type, path: Path) -> Any:
    """``manifest[name]`` if absent/None or of type ``kind`` (bool is not an int here), else a CorruptFileError."""
    value = manifest.get(name)
    if value is None or (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))):
        return value
    raise CorruptFileError(f"manifest field {name!r} should be a {kind.__name__}, got {value!r}", path=path,
                           field=name)


class ActivationCache:
    """An activation source reading one hook of a :func:`cache_activations` folder (memory-mapped).

    Shuffling: the cached tokens are cut into blocks of ``block_tokens`` consecutive rows; each epoch permutes
    the blocks (with ``seed`` and the epoch number), deals them round-robin to the ranks (disjoint, and their
    union is the whole cache), and each rank reads its blocks in groups of ``shuffle_blocks`` whose tokens are
    shuffled together. Every group's permutation is derived from ``(seed, epoch, rank, group)``, so resuming at
    ``start`` skips straight to the right group without reading what came before. Reads are contiguous slices
    of the mapped shards; only the groups in use occupy memory (``block_tokens * shuffle_blocks`` rows).

    Validation at open: the manifest (missing = the cache is incomplete or was interrupted), the hook, and
    every shard's presence, dtype and shape (header only). With ``verify`` each shard's sha256 is checked the
    first time it is read in this process (one extra read of the shard).

    Args:
        path: the cache folder.
        hook_name: which cached hook to read (may be omitted when the cache holds one).
        dtype: dtype of the yielded batches (stored bf16 is converted; default float32).
        device: where batches are yielded (default CPU).
        epochs: stop after this many passes over the data (``None``: cycle forever).
        hook_name_out: for a transcoder, a second cached hook it predicts: batches are then ``(x, y)`` pairs of the
            same tokens (the cache stores every hook's rows in one token order; shuffling moves whole pairs),
            and ``d_out`` is its width.
    """

    def __init__(self, path: str | os.PathLike[str], hook_name: str | None = None, *,
                 dtype: torch.dtype | str = torch.float32, device: str | torch.device | None = None,
                 epochs: int | None = None, block_tokens: int = 2048, shuffle_blocks: int = 16,
                 verify: bool = True, hook_name_out: str | None = None) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_FILENAME
        if not manifest_path.is_file():
            raise MissingFileError(
                "no manifest.json: this folder is not an activation cache, or writing it was interrupted (the "
                "manifest is written last); run cache_activations again",
                path=manifest_path,
            )
        manifest = read_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            raise CorruptFileError(f"not an sae_hub activation-cache manifest (format != {CACHE_FORMAT!r})",
                                   path=manifest_path, field="format")
        hooks = manifest.get("hooks") or {}
        if hook_name is None:
            if len(hooks) != 1:
                raise ConfigError(f"the cache holds hooks {sorted(hooks)}; say which with hook_name=",
                                  path=manifest_path, field="hook_name")
            hook_name = next(iter(hooks))
        if hook_name not in hooks:
            raise ConfigError(f"hook {hook_name!r} is not in this cache; it holds {sorted(hooks)}",
                              path=manifest_path, field="hook_name")
        if hook_name_out is not None and hook_name_out not in hooks:
            raise ConfigError(f"hook_name_out {hook_name_out!r} is not in this cache; it holds {sorted(hooks)}",
                              path=manifest_path, field="hook_name_out")
        if hook_name_out is not None and hook_name_out == hook_name:
            raise ConfigError(f"hook_name_out equals hook_name ({hook_name!r}): a transcoder reads one hook and "
                              "predicts another; leave hook_name_out None for an SAE", path=manifest_path,
                              field="hook_name_out")
        if block_tokens <= 0 or shuffle_blocks <= 0:
            raise ConfigError("block_tokens and shuffle_blocks must be positive")
        info = hooks[hook_name]
        self.manifest: dict[str, Any] = manifest
        self.hook_name: str | None = hook_name
        self.model_name: str | None = manifest.get("model_name")
        self.d_in: int = int(info["d_in"])
        # How the cached tokens were made, for the trained SAE's config (caches before dataset_path: its "name").
        described = manifest.get("dataset")
        self.context_size: int | None = _manifest_field(manifest, "context_size", int, manifest_path)
        self.prepend_bos: bool | None = _manifest_field(manifest, "prepend_bos", bool, manifest_path)
        self.skip_bos: bool | None = _manifest_field(manifest, "skip_bos", bool, manifest_path)
        self.dataset_path: str | None = _manifest_field(manifest, "dataset_path", str, manifest_path) or (
            _manifest_field(described, "name", str, manifest_path) if isinstance(described, dict) else None)
        self.storage_dtype = dtype_from_str(manifest["dtype"])
        self.dtype = dtype_from_str(dtype)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.epochs = epochs
        self.block_tokens = int(block_tokens)
        self.shuffle_blocks = int(shuffle_blocks)
        self.verify = verify
        self._shards = self._checked_shards(info, self.d_in, manifest)
        self.hook_name_out: str | None = hook_name_out
        self.d_out: int | None = None
        self._shards_out: list[tuple[Path, int, str | None]] = []
        if hook_name_out is not None:
            self.d_out = int(hooks[hook_name_out]["d_in"])
            self._shards_out = self._checked_shards(hooks[hook_name_out], self.d_out, manifest)
            if [n for _, n, _ in self._shards_out] != [n for _, n, _ in self._shards]:
                raise CorruptFileError(
                    f"hooks {hook_name!r} and {hook_name_out!r} have shards of different token counts "
                    f"({[n for _, n, _ in self._shards]} vs {[n for _, n, _ in self._shards_out]}): their rows are "
                    "not the same tokens", path=manifest_path, field="hooks")
        self._offsets = [0]
        for _, n, _ in self._shards:
            self._offsets.append(self._offsets[-1] + n)
        self.n_tokens: int = self._offsets[-1]
        if self.n_tokens == 0:
            raise CorruptFileError("the cache holds no tokens", path=manifest_path, field="n_tokens")
        self._mapped: dict[tuple[int, int], torch.Tensor] = {}

    def _checked_shards(self, info: dict[str, Any], width: int,
                        manifest: dict[str, Any]) -> list[tuple[Path, int, str | None]]:
        """One hook's shards (path, tokens, sha256), each present and of the manifest's dtype and shape."""
        shards: list[tuple[Path, int, str | None]] = []
        for entry in info["shards"]:
            shard = self.path / entry["file"]
            n = int(entry["n_tokens"])
            if not shard.is_file():
                raise MissingFileError("a shard listed in manifest.json is missing", path=shard)
            header = read_safetensors_header(shard)
            if "activations" not in header:
                raise CorruptFileError("shard has no 'activations' tensor", path=shard, field="activations")
            if header.shape("activations") != (n, width) or header.dtype("activations") != self.storage_dtype:
                raise CorruptFileError(
                    f"shard holds {dtype_to_str(header.dtype('activations'))} {list(header.shape('activations'))}, "
                    f"the manifest says {manifest['dtype']} {[n, width]}", path=shard, field="activations")
            shards.append((shard, n, entry.get("sha256")))
        return shards

    def __repr__(self) -> str:
        out = f", hook_name_out={self.hook_name_out!r}, d_out={self.d_out}" if self.hook_name_out else ""
        return (f"ActivationCache({str(self.path)!r}, hook_name={self.hook_name!r}, d_in={self.d_in}{out}, "
                f"n_tokens={self.n_tokens}, dtype={dtype_to_str(self.storage_dtype)})")

    def __len__(self) -> int:
        return self.n_tokens

    def _shard(self, i: int, hook: int = 0) -> torch.Tensor:
        """Shard ``i`` of the input hook (``hook=0``) or of ``hook_name_out`` (``hook=1``), mapped once."""
        tensor = self._mapped.get((hook, i))
        if tensor is None:
            path, _, sha = (self._shards_out if hook else self._shards)[i]
            if self.verify and sha is not None and sha256_file(path) != sha:
                raise IntegrityError("shard's sha256 differs from the one in manifest.json", path=path)
            tensor = read_safetensors(path, ["activations"])[0]["activations"]
            self._mapped[(hook, i)] = tensor
        return tensor

    def rows(self, begin: int, end: int, *, hook: int = 0) -> torch.Tensor:
        """Cached rows ``[begin, end)`` across shards, in the storage dtype (a copy); ``hook=1``: of
        ``hook_name_out``."""
        parts = []
        for i in range(len(self._shards)):
            lo, hi = max(begin, self._offsets[i]), min(end, self._offsets[i + 1])
            if lo < hi:
                parts.append(self._shard(i, hook)[lo - self._offsets[i]:hi - self._offsets[i]])
        width = self.d_out if hook else self.d_in
        return torch.cat(parts) if parts else torch.empty(0, int(width or 0), dtype=self.storage_dtype)

    def _stream_rows(self, begin: int, end: int) -> torch.Tensor:
        """What the shuffle moves: the input hook's rows, with a transcoder's output rows beside them."""
        if self.hook_name_out is None:
            return self.rows(begin, end)
        return torch.cat([self.rows(begin, end), self.rows(begin, end, hook=1)], dim=1)

    def _rank_blocks(self, seed: int, epoch: int, rank: int, world_size: int) -> list[tuple[int, int]]:
        n_blocks = -(-self.n_tokens // self.block_tokens)
        gen = torch.Generator().manual_seed(_mix("ActivationCache.blocks", seed, epoch))
        order = torch.randperm(n_blocks, generator=gen)[rank::world_size].tolist()
        return [(b * self.block_tokens, min((b + 1) * self.block_tokens, self.n_tokens)) for b in order]

    def batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                start: int = 0) -> Iterator[Any]:
        """Shuffled ``[batch_size, d_in]`` batches, epoch after epoch (``epochs`` limits them); ``(x, y)`` pairs
        with ``hook_name_out``.

        Batches are consecutive slices of this rank's token stream (epoch 0's shuffled tokens, then epoch 1's...),
        so with a single rank and ``n_tokens`` divisible by ``batch_size`` each epoch is exactly the cache.
        """
        _check_stream_args(batch_size, rank, world_size, start)
        n_blocks = -(-self.n_tokens // self.block_tokens)
        if n_blocks < world_size:
            raise ConfigError(f"the cache has {n_blocks} blocks of {self.block_tokens} tokens, fewer than "
                              f"world_size={world_size}; lower block_tokens", field="block_tokens")
        stream = self._stream(batch_size, seed, rank, world_size, start * batch_size)
        if self.hook_name_out is None:
            return stream
        return ((xy[:, :self.d_in], xy[:, self.d_in:]) for xy in stream)

    def _stream(self, batch_size: int, seed: int, rank: int, world_size: int,
                skip: int) -> Iterator[torch.Tensor]:
        carry = torch.empty(0, self.d_in + (self.d_out or 0), dtype=self.storage_dtype)
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            blocks = self._rank_blocks(seed, epoch, rank, world_size)
            for g in range(0, len(blocks), self.shuffle_blocks):
                group = blocks[g:g + self.shuffle_blocks]
                size = sum(e - b for b, e in group)
                if skip >= size:
                    skip -= size
                    continue
                gen = torch.Generator().manual_seed(
                    _mix("ActivationCache.group", seed, epoch, rank, world_size, g))
                perm = torch.randperm(size, generator=gen)
                rows = torch.cat([self._stream_rows(b, e) for b, e in group])[perm[skip:]]
                skip = 0
                carry = torch.cat([carry, rows]) if len(carry) else rows
                n_full = len(carry) // batch_size
                for i in range(n_full):
                    yield carry[i * batch_size:(i + 1) * batch_size].to(self.device, self.dtype)
                carry = carry[n_full * batch_size:]
            epoch += 1
