"""feature_stats on the tiny offline GPT-2, checked against a brute-force pass over the same tokens.

The reference reads the hook activation with a plain ``run_with_hooks`` hook, encodes with the SAE's formula
written out here, and counts/averages/argmaxes over all tokens at once (no streaming, no heap).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sae_hub import SAE, SAEConfig
from sae_hub.analysis import FeatureStats, feature_stats, read_sparsity
from sae_hub.errors import ConfigError, CorruptFileError, ShapeMismatchError
from sae_hub.files import write_safetensors_atomic

HOOK = "blocks.0.hook_resid_post"
BOS = 0


def make_sae(arch: str = "relu", d_sae: int = 48, seed: int = 0, **kw: Any) -> SAE:
    if arch == "topk":
        kw.setdefault("k", 6)
    sae = SAE(SAEConfig(architecture=arch, d_in=64, d_sae=d_sae, hook_name=HOOK, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g) * 0.5)
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g))
        b = torch.randn(d_sae, generator=g) * 0.5
        b[:4] = -100.0  # never fire
        b[4:6] = 100.0  # fire everywhere
        sae.b_enc.copy_(b)
    return sae


def capture(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    store: list[torch.Tensor] = []

    def save(act: torch.Tensor, hook: Any) -> None:
        store.append(act.detach().clone())

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(HOOK, save)])
    return store[0]


def ref_features(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """The SAE's encoder written out (relu, or relu + top-k) in float64."""
    z = x.double() @ sae.W_enc.detach().double() + sae.b_enc.detach().double()
    f = torch.relu(z)
    if sae.cfg.architecture == "topk":
        vals, idx = f.topk(sae.cfg.k, dim=-1)
        f = torch.zeros_like(f).scatter(-1, idx, vals)
    return f


def brute_force(model: Any, sae: SAE, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Reference features ``[len(row), d_sae]`` of each row (rows of one length run as one batch)."""
    out: list[torch.Tensor | None] = [None] * len(rows)
    for length in {r.numel() for r in rows}:
        idx = [i for i, r in enumerate(rows) if r.numel() == length]
        f = ref_features(sae, capture(model, torch.stack([rows[i] for i in idx])))
        for i, fi in zip(idx, f, strict=True):
            out[i] = fi
    return out  # type: ignore[return-value]


@pytest.fixture(scope="module")
def token_rows() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    rows = torch.randint(1, 384, (11, 20), generator=g)
    rows[:, 0] = BOS
    rows[3, 7] = BOS  # a special token mid-sequence is ignored too
    return rows


def test_density_means_and_max_match_brute_force(tiny_model, token_rows):
    sae = make_sae()
    n_tokens = 11 * 20 - 9  # the last row is cut to 11 positions
    stats = feature_stats(sae, tiny_model, token_rows, n_tokens=n_tokens, batch_size=4, context_size=20)
    fed = [token_rows[i] for i in range(10)] + [token_rows[10, :11]]
    f = torch.cat(brute_force(tiny_model, sae, fed))  # [positions, d_sae]
    tok = torch.cat(fed)
    valid = tok != BOS
    fv = f[valid]
    count = (fv > 0).sum(0)
    assert stats.n_positions == n_tokens and stats.n_tokens == int(valid.sum()) and stats.n_sequences == 11
    assert torch.equal(stats.count, count)
    assert torch.equal(stats.density, count.double() / int(valid.sum()))
    assert stats.count[:4].sum() == 0 and torch.all(stats.density[4:6] == 1.0)
    assert torch.allclose(stats.mean_activation_all, fv.mean(0), rtol=1e-5, atol=1e-6)
    fired = count > 0
    assert torch.allclose(stats.mean_activation[fired], fv.sum(0)[fired] / count[fired], rtol=1e-5)
    assert torch.isnan(stats.mean_activation[~fired]).all()
    assert torch.allclose(stats.max_activation.double(), fv.max(0).values, rtol=1e-5, atol=1e-6)
    log10 = stats.log10_density()
    assert torch.allclose(log10, torch.log10(stats.density.float() + 1e-10))
    assert log10[:4].tolist() == pytest.approx([-10.0] * 4)


def test_top_contexts_hold_the_true_maxima(tiny_model, token_rows):
    sae = make_sae(seed=1)
    before, after = 3, 2
    stats = feature_stats(sae, tiny_model, token_rows, n_tokens=11 * 20, batch_size=3, context_size=20,
                          top_n=4, window=(before, after))
    f = torch.stack(brute_force(tiny_model, sae, list(token_rows)))  # [11, 20, d_sae]
    valid = token_rows != BOS
    f = f * valid[..., None]
    row_max, row_arg = f.max(dim=1)  # [11, d_sae]
    for j in range(6, sae.cfg.d_sae):
        fired_rows = int((row_max[:, j] > 0).sum())
        want = row_max[:, j].topk(min(4, fired_rows))
        n = want.values.numel()
        assert stats.top_seq[j, :n].tolist() == want.indices.tolist(), j
        assert torch.allclose(stats.top_acts[j, :n].double(), want.values, rtol=1e-5)
        assert stats.top_seq[j, n:].tolist() == [-1] * (4 - n)
        if n == 0:
            continue
        seq, pos = int(want.indices[0]), int(row_arg[want.indices[0], j])
        assert int(stats.top_pos[j, 0]) == pos  # the global argmax of the feature
        ctx = stats.contexts(j)[0]
        lo, hi = max(0, pos - before), min(20, pos + after + 1)
        assert ctx["seq"] == seq and ctx["token_ids"] == token_rows[seq, lo:hi].tolist()
        assert ctx["acts"] == pytest.approx(f[seq, lo:hi, j].tolist(), rel=1e-5, abs=1e-6)
        assert ctx["max_index"] == pos - lo and ctx["acts"][ctx["max_index"]] == pytest.approx(ctx["max_activation"])
        window = stats.top_tokens[j, 0].tolist()
        assert window[: before - (pos - lo)] == [-1] * (before - (pos - lo))  # before the sequence start
    assert stats.top_tokens.shape == (sae.cfg.d_sae, 4, before + 1 + after)
    assert len(stats.contexts(0)) == 0  # never fires: no contexts


def test_topk_sae_with_list_input_and_other_row_lengths(tiny_model, token_rows):
    sae = make_sae("topk", seed=2)
    a = feature_stats(sae, tiny_model, token_rows, n_tokens=220, batch_size=11, context_size=20)
    f = torch.cat(brute_force(tiny_model, sae, list(token_rows)))[token_rows.reshape(-1) != BOS]
    assert torch.equal(a.count, (f > 0).sum(0))
    assert int(a.count.sum()) == 6 * f.shape[0]  # exactly k per token
    # rows longer than context_size are split: 22 rows of 10 tokens, fed 3 at a time
    b = feature_stats(sae, tiny_model, [r.tolist() for r in token_rows], n_tokens=220, batch_size=3,
                      context_size=10)
    short = list(token_rows.reshape(22, 10))
    f_short = torch.cat(brute_force(tiny_model, sae, short))[token_rows.reshape(-1) != BOS]
    assert b.n_positions == 220 and b.n_sequences == 22
    assert torch.equal(b.count, (f_short > 0).sum(0))


def test_text_is_packed_with_bos_and_separators(tiny_model):
    tok = tiny_model.tokenizer
    texts = ["The quick brown fox jumps over the lazy dog.", "In 2023, prices fell by 40%.",
             "Hello, World!", "Q: What is 12 * 12? A: It is 144."]
    sae = make_sae(seed=3)
    ctx = 9
    stats = feature_stats(sae, tiny_model, [{"text": t} for t in texts], n_tokens=10_000, batch_size=2,
                          context_size=ctx)
    stream: list[int] = []
    for i, t in enumerate(texts):
        if i:
            stream.append(tok.eos_token_id)
        stream += tok(t, add_special_tokens=False)["input_ids"]
    rows = [torch.tensor([tok.bos_token_id, *stream[s:s + ctx - 1]]) for s in range(0, len(stream), ctx - 1)]
    assert stats.n_positions == sum(r.numel() for r in rows) and stats.n_sequences == len(rows)
    f = torch.cat(brute_force(tiny_model, sae, rows))[torch.cat(rows) != BOS]
    assert stats.n_tokens == f.shape[0]
    assert torch.equal(stats.count, (f > 0).sum(0))


def test_sparsity_round_trip(tiny_model, token_rows, tmp_path: Path):
    sae = make_sae(seed=4)
    stats = feature_stats(sae, tiny_model, token_rows, n_tokens=100, batch_size=4, context_size=20)
    folder = tmp_path / "sae"
    sae.save_pretrained(folder)
    assert read_sparsity(folder) is None
    path = stats.write_sparsity(folder)
    assert path == folder / "sparsity.safetensors"
    got = read_sparsity(folder, d_sae=sae.cfg.d_sae)
    assert torch.equal(got, stats.log10_density())
    loaded = SAE.load_from_disk(folder)  # the folder still loads
    assert loaded.cfg.d_sae == sae.cfg.d_sae
    other = tmp_path / "x.safetensors"
    assert stats.write_sparsity(other) == other and torch.equal(read_sparsity(other), got)
    sae.save_pretrained(tmp_path / "saved", sparsity=got)  # the core writer's file reads back the same
    assert torch.equal(read_sparsity(tmp_path / "saved"), got)
    with pytest.raises(ShapeMismatchError):
        read_sparsity(folder, d_sae=7)
    write_safetensors_atomic(tmp_path / "bad.safetensors", {"log_sparsity": got})
    with pytest.raises(CorruptFileError, match="sparsity"):
        read_sparsity(tmp_path / "bad.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(CorruptFileError):
        read_sparsity(tmp_path / "trunc.safetensors")


def test_records_pandas_and_argument_checks(tiny_model, token_rows):
    sae = make_sae(seed=5)
    stats = feature_stats(sae, tiny_model, token_rows, n_tokens=60, batch_size=4, context_size=20, top_n=2)
    assert isinstance(stats, FeatureStats)
    recs = stats.to_records([4, 0])
    assert [r["feature"] for r in recs] == [4, 0] and recs[0]["density"] == 1.0 and recs[1]["count"] == 0
    assert len(recs[0]["top_contexts"]) == 2 and recs[1]["top_contexts"] == []
    first = recs[0]["top_contexts"][0]
    assert first["tokens"] == [tiny_model.tokenizer.decode([t]) for t in first["token_ids"]]
    df = stats.to_pandas()
    assert len(df) == sae.cfg.d_sae and math.isnan(df.loc[0, "mean_activation"])
    with pytest.raises(ConfigError):
        feature_stats(sae, tiny_model, token_rows, n_tokens=0, batch_size=4)
    with pytest.raises(ConfigError, match="n_ctx"):
        feature_stats(sae, tiny_model, token_rows, n_tokens=10, batch_size=4, context_size=4096)
    with pytest.raises(ConfigError):
        feature_stats(sae, tiny_model, [{"nope": 1}], n_tokens=10, batch_size=4)
    with pytest.raises(ConfigError):
        stats.contexts(sae.cfg.d_sae)
