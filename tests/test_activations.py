"""Activation sources: the live-model source and the on-disk cache, checked against plain TransformerLens runs.

References are computed independently: packed windows are written out by hand for a small token stream, and
activations come from ``model.run_with_cache`` on the packed windows (not through sae_hub's hook plumbing).
Comparisons of shuffled streams are made as multisets (rows put in a canonical order first).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_model import corpus

from sae_hub.errors import ConfigError, CorruptFileError, IntegrityError, MissingFileError
from sae_hub.training import activations as acts_mod
from sae_hub.training.activations import (
    ActivationCache,
    ActivationSource,
    ModelActivationSource,
    as_source,
    cache_activations,
    pack_tokens,
)

CTX = 32
DOCS = corpus()[:24]  # about 40 windows of 32 tokens: enough to shuffle, fast to run
RESID0 = "blocks.0.hook_resid_pre"
Z1 = "blocks.1.attn.hook_z"


def canonical(rows: torch.Tensor) -> torch.Tensor:
    """Rows sorted by a fixed random projection: equal multisets of rows give equal tensors."""
    rows = rows.double()
    key = rows @ torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    return rows[key.argsort()]


def reference_rows(model: Any, hook: str, contexts: torch.Tensor, skip_bos: bool = True) -> torch.Tensor:
    """Activations at ``hook`` straight from ``run_with_cache``, flattened per token, in stream order."""
    _, cache = model.run_with_cache(contexts, names_filter=[hook])
    act = cache[hook]
    if skip_bos:
        act = act[:, 1:]
    return act.reshape(act.shape[0] * act.shape[1], -1)


def all_rows(source: Any, batch_size: int, **kw: Any) -> torch.Tensor:
    return torch.cat(list(source.batches(batch_size, **kw)))


# ------------------------------------------------------------------------------------------ packing


class _Tok:
    """A stand-in tokenizer object: pack_tokens only needs the special ids for pre-tokenized documents."""

    bos_token_id = 0
    eos_token_id = 99


class _Model:
    tokenizer = _Tok()


def test_pack_tokens_by_hand() -> None:
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]  # stream: 1 2 3 99 4 5 99 6 7 8 9 99
    got = [t.tolist() for t in pack_tokens(_Model(), docs, 4)]
    assert got == [[0, 1, 2, 3], [0, 99, 4, 5], [0, 99, 6, 7], [0, 8, 9, 99]]
    got = [t.tolist() for t in pack_tokens(_Model(), docs, 5, prepend_bos=False)]
    assert got == [[1, 2, 3, 99, 4], [5, 99, 6, 7, 8]]  # the incomplete tail (9 99) is dropped
    packed = torch.tensor([[0, 5, 6], [0, 7, 8]])
    assert torch.equal(torch.stack(list(pack_tokens(_Model(), packed, 3))), packed)
    with pytest.raises(ConfigError, match="width"):
        list(pack_tokens(_Model(), packed, 4))


def test_pack_text_equals_pack_of_token_ids(tiny_model: Any) -> None:
    ids = [tiny_model.tokenizer(d, add_special_tokens=False)["input_ids"] for d in DOCS]
    from_text = torch.stack(list(pack_tokens(tiny_model, DOCS, CTX)))
    from_ids = torch.stack(list(pack_tokens(tiny_model, ids, CTX)))
    assert torch.equal(from_text, from_ids)
    assert (from_text[:, 0] == tiny_model.tokenizer.bos_token_id).all()
    # The windows (without their BOS) are the documents joined by EOS, in order.
    eos = tiny_model.tokenizer.eos_token_id
    stream = [t for d in ids for t in [*d, eos]]
    assert from_text[:, 1:].reshape(-1).tolist() == stream[: from_text[:, 1:].numel()]


def test_pack_accepts_datasets_and_dict_rows(tiny_model: Any) -> None:
    datasets = pytest.importorskip("datasets")
    expected = torch.stack(list(pack_tokens(tiny_model, DOCS, CTX)))
    ds = datasets.Dataset.from_dict({"text": DOCS, "other": list(range(len(DOCS)))})
    assert torch.equal(torch.stack(list(pack_tokens(tiny_model, ds, CTX))), expected)
    rows = [{"body": d} for d in DOCS]
    assert torch.equal(torch.stack(list(pack_tokens(tiny_model, rows, CTX, column="body"))), expected)
    with pytest.raises(ConfigError, match="column"):
        list(pack_tokens(tiny_model, ds, CTX, column="missing"))


# ------------------------------------------------------------------------------------------ model source


@pytest.mark.parametrize("hook", [RESID0, Z1])
def test_model_source_equals_direct_hook(tiny_model: Any, hook: str) -> None:
    src = ModelActivationSource(tiny_model, DOCS, hook, context_size=CTX, buffer_tokens=256, model_batch_size=4)
    contexts = torch.stack(list(pack_tokens(tiny_model, DOCS, CTX)))
    ref = reference_rows(tiny_model, hook, contexts)
    assert src.d_in == ref.shape[1] == 64
    got = all_rows(src, CTX - 1, seed=0)  # divides the token count: nothing is dropped
    assert got.dtype == torch.float32 and got.shape == ref.shape
    torch.testing.assert_close(canonical(got), canonical(ref), rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, ref)  # and it was shuffled


def test_model_source_deterministic_per_seed(tiny_model: Any) -> None:
    src = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=CTX, buffer_tokens=300)
    a, b = all_rows(src, 31, seed=7), all_rows(src, 31, seed=7)
    c = all_rows(src, 31, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.testing.assert_close(canonical(a), canonical(c), rtol=0, atol=0)


def test_model_source_ranks_are_disjoint_and_cover(tiny_model: Any) -> None:
    src = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=CTX, buffer_tokens=256, model_batch_size=3)
    contexts = list(src.contexts())
    r0, r1 = list(src.contexts(0, 2)), list(src.contexts(1, 2))
    assert [c.tolist() for c in r0] == [c.tolist() for c in contexts[0::2]]
    assert [c.tolist() for c in r1] == [c.tolist() for c in contexts[1::2]]
    rows0 = all_rows(src, 31, seed=1, rank=0, world_size=2)
    rows1 = all_rows(src, 31, seed=1, rank=1, world_size=2)
    torch.testing.assert_close(canonical(rows0), canonical(reference_rows(tiny_model, RESID0, torch.stack(r0))))
    torch.testing.assert_close(canonical(rows1), canonical(reference_rows(tiny_model, RESID0, torch.stack(r1))))
    torch.testing.assert_close(canonical(torch.cat([rows0, rows1])), canonical(all_rows(src, 31, seed=1)))


@pytest.mark.parametrize(("buffer_tokens", "model_batch_size"), [(256, 4), (1000, 2), (40, 1)])
def test_model_source_resume_continues_exactly(tiny_model: Any, buffer_tokens: int, model_batch_size: int) -> None:
    src = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=CTX, buffer_tokens=buffer_tokens,
                                model_batch_size=model_batch_size)
    full = list(src.batches(24, seed=3))
    for start in (1, 5, len(full) // 2, len(full) - 1, len(full), len(full) + 3):
        resumed = list(src.batches(24, seed=3, start=start))
        assert len(resumed) == max(len(full) - start, 0)
        for a, b in zip(resumed, full[start:], strict=True):
            assert torch.equal(a, b)
    # per rank as well
    full1 = list(src.batches(24, seed=3, rank=1, world_size=2))
    resumed1 = list(src.batches(24, seed=3, rank=1, world_size=2, start=4))
    assert all(torch.equal(a, b) for a, b in zip(resumed1, full1[4:], strict=True))


def test_model_source_stops_at_the_hook(tiny_model: Any) -> None:
    later = "blocks.1.hook_resid_post"
    calls = []

    def count(act: torch.Tensor, hook: Any) -> None:
        calls.append(1)

    src = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=CTX, model_batch_size=4)
    with tiny_model.hooks(fwd_hooks=[(later, count)]):
        n = sum(1 for _ in src.batches(31, seed=0))
        assert n > 0 and calls == []  # the forward never reached layer 1
        tiny_model(torch.stack(list(pack_tokens(tiny_model, DOCS[:2], CTX))))
    assert calls == [1]  # the counting hook does work on a full forward


def test_model_source_skip_bos(tiny_model: Any) -> None:
    contexts = torch.stack(list(pack_tokens(tiny_model, DOCS, CTX)))
    bos_row = reference_rows(tiny_model, RESID0, contexts[:1], skip_bos=False)[0]  # same for every window

    def n_bos_rows(rows: torch.Tensor) -> int:
        return int(torch.isclose(rows, bos_row, atol=1e-6).all(-1).sum())

    with_bos = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=CTX, skip_bos=False)
    without = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=CTX, skip_bos=True)
    rows_with, rows_without = all_rows(with_bos, CTX, seed=0), all_rows(without, CTX - 1, seed=0)
    assert rows_with.shape[0] == len(contexts) * CTX and rows_without.shape[0] == len(contexts) * (CTX - 1)
    assert n_bos_rows(rows_with) == len(contexts)
    assert n_bos_rows(rows_without) == 0


def test_model_source_batches_work_with_autograd_and_dtype(tiny_model: Any) -> None:
    src = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=CTX, dtype="bfloat16")
    batch = next(iter(src.batches(16, seed=0)))
    assert batch.dtype == torch.bfloat16 and batch.shape == (16, 64)
    assert not batch.is_inference()
    w = torch.randn(64, 3, requires_grad=True)
    (batch.float() @ w).sum().backward()  # inference tensors would refuse this
    assert w.grad is not None


def test_model_source_refuses_bad_inputs(tiny_model: Any) -> None:
    with pytest.raises(ConfigError, match="did you mean"):
        ModelActivationSource(tiny_model, DOCS, "blocks.0.hook_resid_prex", context_size=CTX)
    with pytest.raises(ConfigError, match="one-shot"):
        ModelActivationSource(tiny_model, iter(DOCS), RESID0, context_size=CTX)
    with pytest.raises(ConfigError, match="n_ctx"):
        ModelActivationSource(tiny_model, DOCS, RESID0, context_size=4096)
    src = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=CTX)
    with pytest.raises(ConfigError, match="rank"):
        src.batches(8, seed=0, rank=2, world_size=2)


def test_as_source() -> None:
    assert as_source.__name__ == "as_source"
    with pytest.raises(ConfigError, match="activation source"):
        as_source(torch.zeros(4, 3))

    class Src:
        d_in = 3
        hook_name = None
        model_name = None

        def batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
            yield torch.zeros(batch_size, 3)

    s = Src()
    assert as_source(s) is s and isinstance(s, ActivationSource)


# ------------------------------------------------------------------------------------------ cache


N_CACHE = 600  # not a multiple of the per-context 31 tokens: the last context is cut


@pytest.fixture(scope="module")
def cached(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], int]:
    """A bf16 cache of two hooks from one pass; returns (folder, manifest, forward passes counted at layer 0)."""
    out = tmp_path_factory.mktemp("cache")
    fired = []
    with tiny_model.hooks(fwd_hooks=[(RESID0, lambda act, hook: fired.append(1))]):
        manifest = cache_activations(tiny_model, DOCS, [RESID0, Z1], out, n_tokens=N_CACHE, context_size=CTX,
                                     shard_tokens=250, model_batch_size=4, dtype="bfloat16", progress=False)
    return out, manifest, len(fired)


def _cache_reference(model: Any, hook: str) -> torch.Tensor:
    contexts = torch.stack(list(pack_tokens(model, DOCS, CTX)))
    return reference_rows(model, hook, contexts)[:N_CACHE]


def test_cache_writes_shards_and_manifest(tiny_model: Any, cached: tuple[Path, dict[str, Any], int]) -> None:
    out, manifest, forwards = cached
    n_contexts = -(-N_CACHE // (CTX - 1))
    assert forwards == -(-n_contexts // 4)  # one model pass for both hooks
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["n_tokens"] == N_CACHE and manifest["dtype"] == "bfloat16"
    assert manifest["hook_names"] == [RESID0, Z1] and manifest["context_size"] == CTX
    assert manifest["model_name"] == tiny_model.cfg.model_name and manifest["sae_hub_version"]
    for hook in (RESID0, Z1):
        info = manifest["hooks"][hook]
        assert info["d_in"] == 64
        assert [s["n_tokens"] for s in info["shards"]] == [250, 250, 100]
        stored = []
        for s in info["shards"]:
            from safetensors.torch import load_file

            from sae_hub.files import sha256_file

            assert sha256_file(out / s["file"]) == s["sha256"]
            t = load_file(out / s["file"])["activations"]
            assert t.dtype == torch.bfloat16
            stored.append(t)
        # Stored in stream order, equal to the reference rounded to bf16.
        assert torch.equal(torch.cat(stored), _cache_reference(tiny_model, hook).to(torch.bfloat16))
    assert manifest["hooks"][Z1]["activation_shape"] == [4, 16]


def test_cache_epoch_is_exactly_the_cached_tokens(tiny_model: Any, cached: tuple[Path, dict[str, Any], int]) -> None:
    out, _, _ = cached
    cache = ActivationCache(out, Z1, epochs=1, block_tokens=64, shuffle_blocks=3)
    assert cache.d_in == 64 and len(cache) == N_CACHE and cache.hook_name == Z1
    got = all_rows(cache, 50, seed=0)  # 600 = 12 * 50
    assert got.dtype == torch.float32 and got.shape == (N_CACHE, 64)
    ref = _cache_reference(tiny_model, Z1).to(torch.bfloat16).float()
    assert torch.equal(canonical(got), canonical(ref))
    assert not torch.equal(got, ref)
    # Deterministic per seed; a second epoch reshuffles the same tokens.
    assert torch.equal(got, all_rows(cache, 50, seed=0))
    two = all_rows(ActivationCache(out, Z1, epochs=2, block_tokens=64, shuffle_blocks=3), 50, seed=0)
    assert torch.equal(two[:N_CACHE], got) and torch.equal(canonical(two[N_CACHE:]), canonical(ref))
    assert not torch.equal(two[N_CACHE:], got)


def test_cache_resume_and_ranks(cached: tuple[Path, dict[str, Any], int]) -> None:
    out, _, _ = cached
    cache = ActivationCache(out, RESID0, epochs=3, block_tokens=64, shuffle_blocks=2)
    full = list(cache.batches(48, seed=5))
    for start in (1, 7, 13, len(full) - 1):
        resumed = list(cache.batches(48, seed=5, start=start))
        assert len(resumed) == len(full) - start
        assert all(torch.equal(a, b) for a, b in zip(resumed, full[start:], strict=True))
    one_epoch = ActivationCache(out, RESID0, epochs=1, block_tokens=64, shuffle_blocks=2)
    r0 = all_rows(one_epoch, 1, seed=5, rank=0, world_size=2)
    r1 = all_rows(one_epoch, 1, seed=5, rank=1, world_size=2)
    assert torch.equal(canonical(torch.cat([r0, r1])), canonical(all_rows(one_epoch, 1, seed=5)))
    assert len(r0) + len(r1) == N_CACHE and len(r0) > 0 and len(r1) > 0
    resumed1 = list(one_epoch.batches(10, seed=5, rank=1, world_size=2, start=3))
    assert torch.equal(torch.cat(resumed1), r1[30:30 + 10 * len(resumed1)])


def test_cache_interrupted_never_looks_complete(tiny_model: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = acts_mod.write_safetensors_atomic
    written = []

    def flaky(path: Any, tensors: Any, metadata: Any = None) -> None:
        if len(written) == 3:
            raise KeyboardInterrupt("simulated crash")
        written.append(path)
        real_write(path, tensors, metadata)

    monkeypatch.setattr(acts_mod, "write_safetensors_atomic", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(tiny_model, DOCS, [RESID0, Z1], tmp_path, n_tokens=N_CACHE, context_size=CTX,
                          shard_tokens=100, progress=False)
    assert written and not (tmp_path / "manifest.json").exists()
    assert not list(tmp_path.rglob("*.tmp-*"))  # no temp file was left either (the crash was between files)
    with pytest.raises(MissingFileError, match="interrupted") as err:
        ActivationCache(tmp_path, RESID0)
    assert err.value.path == str(tmp_path / "manifest.json")
    # Running it again completes the cache in place.
    monkeypatch.setattr(acts_mod, "write_safetensors_atomic", real_write)
    cache_activations(tiny_model, DOCS, [RESID0], tmp_path, n_tokens=200, context_size=CTX, progress=False)
    assert len(ActivationCache(tmp_path, RESID0)) == 200


def test_cache_validation_errors(tiny_model: Any, tmp_path: Path) -> None:
    out = tmp_path / "c"
    cache_activations(tiny_model, DOCS, RESID0, out, n_tokens=200, context_size=CTX, shard_tokens=80,
                      dtype="float32", progress=False)
    with pytest.raises(ConfigError, match="already holds"):
        cache_activations(tiny_model, DOCS, RESID0, out, n_tokens=200, context_size=CTX, progress=False)
    with pytest.raises(ConfigError, match="not in this cache") as err:
        ActivationCache(out, Z1)
    assert err.value.path == str(out / "manifest.json")
    cache = ActivationCache(out)  # the only hook
    assert cache.hook_name == RESID0 and cache.storage_dtype == torch.float32
    # A byte flipped inside the data: the header still parses, the sha256 catches it on first read.
    manifest = json.loads((out / "manifest.json").read_text())
    shard = out / manifest["hooks"][RESID0]["shards"][1]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError) as err:
        all_rows(ActivationCache(out, epochs=1, block_tokens=16), 8, seed=0)
    assert err.value.path == str(shard)
    all_rows(ActivationCache(out, epochs=1, verify=False), 8, seed=0)  # opting out reads it anyway
    # A truncated shard fails at open (header check), a missing one names itself.
    shard.write_bytes(bytes(raw[:-8]))
    with pytest.raises(CorruptFileError):
        ActivationCache(out)
    shard.unlink()
    with pytest.raises(MissingFileError) as err:
        ActivationCache(out)
    assert err.value.path == str(shard)
    # Overwriting replaces the cache (and first removes its manifest).
    cache_activations(tiny_model, DOCS, RESID0, out, n_tokens=100, context_size=CTX, overwrite=True,
                      progress=False)
    assert len(ActivationCache(out)) == 100


# ------------------------------------------------------------------------------------------ what an SAE records


def _train_tiny(source: Any, out: Path, **cfg: Any) -> dict[str, Any]:
    """Train a few steps on ``source``, save to ``out``; returns the saved cfg.json's ``metadata`` block."""
    from sae_hub.training import TrainConfig, train_sae

    train_sae(TrainConfig(architecture="topk", d_sae=64, k=4, batch_size=64, steps=3, log_every=0,
                          init_tokens=64, device="cpu", output_dir=str(out), **cfg), source, progress=False)
    saved = json.loads((out / "cfg.json").read_text())
    return saved["metadata"]


def _as_saelens_reads_it(metadata: dict[str, Any]) -> dict[str, Any]:
    """What SAELens 6's ``ActivationsStore.from_sae`` reads: ``sae.cfg.metadata.<name>``, i.e. the ``metadata``
    block of cfg.json (hook_name, context_size and prepend_bos are required: it raises on None), with
    ``seqpos_slice`` (the positions each context contributes) defaulting to all of them."""
    for name in ("hook_name", "context_size", "prepend_bos"):
        assert metadata.get(name) is not None, f"SAELens's ActivationsStore.from_sae refuses {name}=None"
    return {"hook_name": metadata["hook_name"], "context_size": metadata["context_size"],
            "prepend_bos": metadata["prepend_bos"], "seqpos_slice": metadata.get("seqpos_slice") or [None]}


def test_sae_trained_from_a_model_source_records_the_source(tiny_model: Any, tmp_path: Path, one_thread: None) -> None:
    src = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=16, dataset_path="tiny/corpus",
                                model_batch_size=8, buffer_tokens=512)
    meta = _train_tiny(src, tmp_path / "sae")
    assert meta["model_name"] == tiny_model.cfg.model_name and meta["dataset_path"] == "tiny/corpus"
    assert _as_saelens_reads_it(meta) == {"hook_name": RESID0, "context_size": 16, "prepend_bos": True,
                                          "seqpos_slice": [1, None]}  # skip_bos: position 0 (BOS) not trained on
    # SAELens's own slice of a 16-token context gives the 15 positions this source emits per context
    assert len(range(16)[slice(*meta["seqpos_slice"])]) == src.tokens_per_context == 15
    no_bos = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=16, prepend_bos=False, buffer_tokens=512)
    meta = _train_tiny(no_bos, tmp_path / "no_bos")
    assert meta["prepend_bos"] is False and meta["context_size"] == 16 and "seqpos_slice" not in meta
    assert meta["dataset_path"] is None  # not given: stays unknown, never guessed


def test_sae_trained_from_a_cache_records_the_manifest(tiny_model: Any, tmp_path: Path, one_thread: None) -> None:
    out = tmp_path / "acts"
    manifest = cache_activations(tiny_model, DOCS, [RESID0, Z1], out, n_tokens=400, context_size=16,
                                 dataset_path="tiny/corpus", progress=False)
    assert manifest["dataset_path"] == "tiny/corpus" and manifest["prepend_bos"] is True
    cache = ActivationCache(out, Z1, block_tokens=64)
    assert (cache.context_size, cache.prepend_bos, cache.skip_bos, cache.dataset_path) == (16, True, True,
                                                                                            "tiny/corpus")
    meta = _train_tiny(cache, tmp_path / "sae")
    assert meta["model_name"] == tiny_model.cfg.model_name and meta["dataset_path"] == "tiny/corpus"
    assert _as_saelens_reads_it(meta) == {"hook_name": Z1, "context_size": 16, "prepend_bos": True,
                                          "seqpos_slice": [1, None]}


def test_sae_trained_from_tensors_records_only_what_the_user_gave(tmp_path: Path, one_thread: None) -> None:
    from sae_hub.training import TensorSource

    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    bare = _train_tiny(x, tmp_path / "bare")
    assert [bare[n] for n in ("model_name", "hook_name", "context_size", "prepend_bos", "dataset_path")] == [None] * 5
    assert "seqpos_slice" not in bare
    given = _train_tiny(TensorSource(x, hook_name="blocks.3.hook_resid_post", model_name="gpt2", context_size=128,
                                     prepend_bos=True, dataset_path="org/data"), tmp_path / "given")
    assert [given[n] for n in ("model_name", "hook_name", "context_size", "prepend_bos", "dataset_path")] == [
        "gpt2", "blocks.3.hook_resid_post", 128, True, "org/data"]
    via_cfg = _train_tiny(x, tmp_path / "via_cfg", hook_name="blocks.3.hook_resid_post", context_size=64,
                          prepend_bos=False, dataset_path="org/data", model_name="gpt2")
    assert [via_cfg[n] for n in ("model_name", "hook_name", "context_size", "prepend_bos", "dataset_path")] == [
        "gpt2", "blocks.3.hook_resid_post", 64, False, "org/data"]


def test_train_config_contradicting_the_source_is_refused(tiny_model: Any, one_thread: None) -> None:
    from sae_hub.training import TrainConfig, Trainer

    src = ModelActivationSource(tiny_model, DOCS, RESID0, context_size=16, buffer_tokens=512)
    for field, value in (("hook_name", "blocks.1.hook_resid_post"), ("context_size", 32), ("prepend_bos", False)):
        with pytest.raises(ConfigError) as e:
            Trainer(TrainConfig(architecture="topk", d_sae=64, k=4, batch_size=64, steps=3, device="cpu",
                                **{field: value}), src)
        assert e.value.field == field and str(value) in str(e.value)
