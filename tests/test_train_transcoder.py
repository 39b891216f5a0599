"""Training transcoders and skip transcoders (issue 16): x read at one hook, y predicted at another.

What is proven, each against an independent reference:

* (a) a planted map is recovered: y = (sparse features of x) @ D_out, plus a dense linear part x @ A.T for the
  skip transcoder; the decoder rows are compared with D_out (MMCS / Hungarian MCC) and W_skip with A (relative
  error, and against ordinary least squares, which cannot separate the two parts);
* every architecture's saved transcoder computes, on raw activations, exactly what the trainer computed on its
  scaled ones (x and y have their own norm constants; W_skip is rescaled by s_in / s_out);
* (b) trained from the tiny model's ``ln2.hook_normalized`` -> ``hook_mlp_out`` (the pair SAELens, sparsify and
  our sites use for MLP transcoders), saved and loaded, it splices into the model reading the in-hook and writing
  the out-hook, and predicts held-out MLP outputs;
* (c) the activation cache with two hooks yields aligned pairs, shuffled together;
* (d) inputs that contradict each other are typed errors naming the field.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tiny_model import corpus

from sae_hub import SAE, splice
from sae_hub.errors import ConfigError, CorruptFileError
from sae_hub.training import (
    ActivationCache,
    ModelActivationSource,
    SyntheticActivations,
    TrainConfig,
    Trainer,
    cache_activations,
    evaluate,
    mcc,
    mmcs,
    pack_tokens,
    train_sae,
)

pytestmark = pytest.mark.usefixtures("one_thread")

IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"  # MLP transcoder hooks (SAELens / sparsify)
CTX = 32


# ---------------------------------------------------------------------- planted data


def _planted(noise: float, *, n: int, seed: int, linear: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """x from the synthetic generator (64 planted features in 32-d, ~4 active; ``noise``: dense Gaussian part),
    y = codes @ D_out (64 unit rows in 24-d) [+ x @ A.T]. The dense part of x is what makes A identifiable: the
    sparse part of x @ A.T could be absorbed into the latents' output directions, the noise part cannot."""
    data = SyntheticActivations(d=32, n_features=64, mean_active=4, noise_std=noise, seed=1)
    g = torch.Generator().manual_seed(5)
    D_out = F.normalize(torch.randn(64, 24, generator=g), dim=-1)
    A = torch.randn(24, 32, generator=g) / 32**0.5
    x, codes = data.sample_with_codes(n, seed=seed)
    y = codes @ D_out + (x @ A.T if linear else 0.0)
    return x, y, {"D_out": D_out, "A": A}


def _fvu(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((y - pred).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def _cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(architecture="topk", d_sae=64, k=4, batch_size=256, steps=1500, seed=0,
                                log_every=0, device="cpu", num_threads=1)
    return TrainConfig(**{**base, **kw})


def test_transcoder_recovers_the_planted_output_dictionary():
    # measured (seed 0, 1500 steps of 256): MMCS 0.940, MCC 0.888, held-out FVU 0.234; untrained: MMCS 0.47,
    # FVU 1.69
    x, y, truth = _planted(0.0, n=60_000, seed=0, linear=False)
    xt, yt, _ = _planted(0.0, n=8192, seed=1, linear=False)
    untrained = train_sae(_cfg(steps=0), (x, y), progress=False)
    sae = train_sae(_cfg(), (x, y), progress=False)
    assert sae.cfg.is_transcoder and sae.cfg.d_out == 24 and not sae.cfg.has_skip
    with torch.no_grad():
        fvu, fvu0 = _fvu(sae(xt), yt), _fvu(untrained(xt), yt)
    assert mmcs(untrained.W_dec, truth["D_out"]) < 0.6 and fvu0 > 0.9
    assert mmcs(sae.W_dec, truth["D_out"]) > 0.9 and mcc(sae.W_dec, truth["D_out"]) > 0.84
    assert fvu < 0.3, fvu


def test_skip_transcoder_recovers_the_linear_map_and_the_sparse_directions():
    # measured (seed 0, 2000 steps of 256): ‖W_skip − A‖/‖A‖ 0.218 (least squares of y on x: 0.270), MMCS 0.841,
    # MCC 0.807, held-out FVU 0.228; the same data without the skip (1000 steps): FVU 0.465
    x, y, truth = _planted(0.5, n=60_000, seed=0, linear=True)
    xt, yt, _ = _planted(0.5, n=8192, seed=1, linear=True)
    A = truth["A"]
    sae = train_sae(_cfg(skip_connection=True, steps=2000), (x, y), progress=False)
    assert sae.cfg.has_skip and sae.cfg.saelens_architecture() == "topk_skip_transcoder"
    assert tuple(sae.W_skip.shape) == (24, 32)
    rel = float((sae.W_skip.detach() - A).norm() / A.norm())
    ones = torch.ones(len(x), 1)
    lstsq = torch.linalg.lstsq(torch.cat([x, ones], 1), y).solution[:-1].T  # the best dense linear fit
    rel_lstsq = float((lstsq - A).norm() / A.norm())
    assert rel < 0.25 and rel < rel_lstsq - 0.02, (rel, rel_lstsq)
    assert mmcs(sae.W_dec, truth["D_out"]) > 0.8 and mcc(sae.W_dec, truth["D_out"]) > 0.76
    plain = train_sae(_cfg(steps=1000), (x, y), progress=False)  # no skip: the linear part costs latents
    with torch.no_grad():
        fvu, fvu_plain = _fvu(sae(xt), yt), _fvu(plain(xt), yt)
    assert fvu < 0.3 and fvu < fvu_plain - 0.1, (fvu, fvu_plain)


# ---------------------------------------------------------------------- every architecture, saved exactly

_ARCH = {
    "topk": dict(k=3),
    "batchtopk": dict(k=3, batchtopk_save_as="topk"),
    "matryoshka_batchtopk": dict(k=3, batchtopk_save_as="topk", matryoshka_widths=[16, 64]),
    "relu": dict(l1_coefficient=1.5),
    "jumprelu": dict(),
}


def _trainer_prediction(tr: Trainer, x: torch.Tensor) -> torch.Tensor:
    """What the trainer's own parameters predict for raw ``x``: its computation on s_in·x, divided by s_out,
    written out here from the parameters (per-token top-k for a batchtopk saved as topk)."""
    p, cfg = tr.params, tr.cfg
    xs = x * tr.scale
    z = xs @ p.W_encT.T + p.b_enc  # no b_dec on the input: it lives in y's space
    if cfg.architecture in ("topk", "batchtopk", "matryoshka_batchtopk"):
        f = torch.zeros_like(z).scatter_(1, z.topk(int(cfg.k or 0), dim=-1).indices, 1) * F.relu(z)
    elif cfg.architecture == "relu":
        f = F.relu(z)
    else:
        f = z * (z > p.log_threshold.exp())
    out = f @ p.W_dec + p.b_dec
    if cfg.skip_connection:
        out = out + xs @ p.W_skip.T
    return out / tr.scale_out


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("arch", list(_ARCH))
def test_saved_transcoder_computes_what_was_trained(tmp_path, arch, skip):
    x, y, _ = _planted(0.1, n=4096, seed=0, linear=True)
    x, y = x * 7.0, y * 0.3  # far from E‖·‖ = √width, and differently so: two constants to fold
    cfg = _cfg(architecture=arch, steps=40, batch_size=128, skip_connection=skip, output_dir=str(tmp_path / "tc"),
               hook_name=IN, hook_name_out=OUT, model_name="toy", **_ARCH[arch])
    tr = Trainer(cfg, (x, y), progress=False)
    sae = tr.run()
    assert tr.scale != pytest.approx(tr.scale_out)
    loaded = SAE.load_from_disk(tmp_path / "tc")
    c = loaded.cfg
    assert (c.hook_name, c.hook_name_out, c.d_in, c.d_out, c.has_skip) == (IN, OUT, 32, 24, skip)
    assert c.is_transcoder and not c.apply_b_dec_to_input
    assert c.norm_scaling_factor is None and c.norm_scaling_factor_out is None
    saved_arch = {"relu": "relu", "jumprelu": "jumprelu"}.get(arch, "topk")
    expected_name = {"topk": "topk_", "relu": "", "jumprelu": "jumprelu_"}[saved_arch]
    expected_name += ("skip_" if skip else "") + "transcoder"
    raw = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    # SAELens 6 has relu/jumprelu (skip) transcoders; a topk one is written as a folder only sae-hub loads
    sae_hub_only = saved_arch == "topk"
    assert raw["architecture"] == ("sae_hub_only:" if sae_hub_only else "") + expected_name
    assert raw["d_out"] == 24 and raw["metadata"]["hook_name_out"] == OUT
    with torch.no_grad():
        expected = _trainer_prediction(tr, x[:200])
        torch.testing.assert_close(sae(x[:200]), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(loaded(x[:200]), expected, rtol=1e-4, atol=1e-4)
    # evaluate() takes the same (x, y) tensors: its FVU is the one computed here
    got = evaluate(loaded, (x[:1000], y[:1000]), batch_size=300)
    with torch.no_grad():
        assert got["fvu"] == pytest.approx(_fvu(loaded(x[:1000]), y[:1000]), rel=1e-4, abs=1e-6)
    assert got["n_tokens"] == 1000


def test_transcoder_resumes_exactly_from_a_checkpoint(tmp_path):
    x, y, _ = _planted(0.1, n=2048, seed=0, linear=True)
    data = (x * 3, y)  # s_in != s_out: both constants (and W_skip, Adam state) must come back

    def cfg(root: Any, **kw: Any) -> TrainConfig:
        return _cfg(**{**dict(steps=30, batch_size=64, skip_connection=True, log_every=10,
                              checkpoint_dir=str(root), checkpoint_every=10), **kw})

    straight = train_sae(cfg(tmp_path / "a"), data, progress=False)

    class Preempted(Exception):
        pass

    def preempt(m: dict) -> None:  # dies while reporting step 20, before that step's checkpoint
        if m["step"] == 20:
            raise Preempted

    with pytest.raises(Preempted):
        train_sae(cfg(tmp_path / "b"), data, progress=False, callbacks=[preempt])
    resumed = train_sae(cfg(tmp_path / "b"), data, resume=True, progress=False)
    for name, t in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], t), name
    # a checkpoint of a skip transcoder does not resume a plain one (nor an SAE)
    with pytest.raises(ConfigError) as e:
        train_sae(cfg(tmp_path / "b", skip_connection=False), data, resume=True, progress=False)
    assert e.value.field == "skip_connection"
    with pytest.raises(ConfigError) as e:
        train_sae(cfg(tmp_path / "b", skip_connection=False), x, resume=True, progress=False)
    assert e.value.field == "transcoder"


# ---------------------------------------------------------------------- (b) the tiny model


def _reference_pairs(model: Any, docs: list[str]) -> torch.Tensor:
    """[x | y] rows of every token but BOS, read with TransformerLens's own run_with_cache (not our hooks)."""
    contexts = torch.stack(list(pack_tokens(model, docs, CTX)))
    with torch.no_grad():
        _, cache = model.run_with_cache(contexts, names_filter=lambda n: n in (IN, OUT))
    return torch.cat([cache[IN][:, 1:].reshape(-1, 64), cache[OUT][:, 1:].reshape(-1, 64)], dim=1)


def _canonical(rows: torch.Tensor) -> torch.Tensor:
    """Rows in a fixed order (lexicographic on rounded values): compares sets of pairs, shuffled or not."""
    r = rows.double().round(decimals=4)
    for col in reversed(range(r.shape[1])):
        r = r[r[:, col].argsort(stable=True)]
    return r


def test_model_source_yields_aligned_pairs_in_one_pass(tiny_model):
    docs = corpus()[:24]
    src = ModelActivationSource(tiny_model, docs, IN, hook_name_out=OUT, context_size=CTX, buffer_tokens=256,
                                model_batch_size=4)
    assert (src.d_in, src.d_out, src.hook_name_out) == (64, 64, OUT)
    batches = list(src.batches(32, seed=0))
    assert all(isinstance(b, tuple) and b[0].shape == b[1].shape == (32, 64) for b in batches)
    got = torch.cat([torch.cat(b, dim=1) for b in batches])
    ref = _reference_pairs(tiny_model, docs)
    assert 0 <= len(ref) - len(got) < 32  # only the last partial batch is dropped
    # every yielded (x, y) is a (ln2 output, MLP output) pair of one token: compare against rows sharing x
    by_x = {tuple(r[:64].round(decimals=4).tolist()): r[64:] for r in ref}
    for row in got[::7]:
        torch.testing.assert_close(by_x[tuple(row[:64].round(decimals=4).tolist())], row[64:], atol=1e-5, rtol=0)
    # resume gives the same continuation, pairs included
    tail = list(src.batches(32, seed=0, start=3))
    for a, b in zip(batches[3:], tail, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_the_hook_pair_reads_the_same_on_a_transformers_model(tiny_model, tiny_model_dir):
    # sae_hub.sites places ln2.hook_normalized / hook_mlp_out on a plain transformers GPT-2 with TransformerLens's
    # meaning, so the same checkpoint gives the same (x, y) pairs either way
    from tiny_model import load_hf

    hf, tok = load_hf(tiny_model_dir)
    kw: dict[str, Any] = dict(hook_name_out=OUT, context_size=CTX, buffer_tokens=256)
    a = next(ModelActivationSource(hf, corpus()[:20], IN, tokenizer=tok, **kw).batches(64, seed=0))
    b = next(ModelActivationSource(tiny_model, corpus()[:20], IN, **kw).batches(64, seed=0))
    torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a[1], b[1], atol=1e-4, rtol=1e-4)


def test_transcoder_trained_on_the_tiny_model_splices_at_its_hooks(tiny_model, tmp_path):
    # measured: held-out FVU 0.091 after 300 steps (untrained 2.03); the in-hook reads, the out-hook gets the output
    train_docs, held_docs = corpus()[:60], corpus()[60:]
    src = ModelActivationSource(tiny_model, train_docs * 16, IN, hook_name_out=OUT, context_size=CTX,
                                buffer_tokens=4096, model_batch_size=16)
    cfg = TrainConfig(architecture="topk", d_sae=256, k=16, batch_size=64, steps=300, log_every=100,
                      init_tokens=4096, device="cpu", num_threads=1, output_dir=str(tmp_path / "tc"),
                      dataset_path="tiny/corpus")
    sae = train_sae(cfg, src, progress=False)
    assert sae.training_log[-1]["step"] == 300
    loaded = SAE.load_from_disk(tmp_path / "tc")
    c = loaded.cfg
    assert (c.hook_name, c.hook_name_out, c.d_in, c.d_out) == (IN, OUT, 64, 64)
    assert (c.context_size, c.prepend_bos, c.dataset_path) == (CTX, True, "tiny/corpus")
    assert c.is_transcoder and c.output_hook_name == OUT
    # held-out tokens: the transcoder predicts the MLP's output from its input
    pairs = _reference_pairs(tiny_model, held_docs)
    x, y = pairs[:, :64], pairs[:, 64:]
    with torch.no_grad():
        fvu = _fvu(loaded(x), y)
        untrained = train_sae(TrainConfig(**{**cfg.to_dict(), "steps": 0, "output_dir": None}), src, progress=False)
        fvu0 = _fvu(untrained(x), y)
    assert fvu < 0.2 and fvu0 > 0.9, (fvu, fvu0)
    # splice: reads IN (features = encode of the clean in-hook activation), writes OUT (mlp_out = the prediction)
    tokens = torch.stack(list(pack_tokens(tiny_model, held_docs[:4], CTX)))
    with torch.no_grad():
        _, clean = tiny_model.run_with_cache(tokens, names_filter=lambda n: n in (IN, "blocks.0.hook_resid_mid"))
        x_in = clean[IN]
        store: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook: Any) -> None:
            store["resid_post"] = act.detach().clone()

        try:
            with splice(tiny_model, loaded) as sp, tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", grab)]):
                tiny_model(tokens)
        finally:
            tiny_model.reset_hooks(including_permanent=True)
        mlp_out = store["resid_post"] - clean["blocks.0.hook_resid_mid"]  # what the block added at OUT
        torch.testing.assert_close(mlp_out, loaded(x_in), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sp.features[IN], loaded.encode(x_in), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- (c) the activation cache


def test_activation_cache_pairs_stay_together_when_shuffled(tiny_model, tmp_path):
    docs = corpus()
    cache_activations(tiny_model, docs, [IN, OUT], tmp_path / "cache", n_tokens=600, context_size=CTX,
                      dtype="float32", shard_tokens=256, progress=False, dataset_path="tiny/corpus")
    cache = ActivationCache(tmp_path / "cache", IN, hook_name_out=OUT, epochs=1, block_tokens=32, shuffle_blocks=4)
    assert (cache.d_in, cache.d_out, len(cache)) == (64, 64, 600)
    batches = list(cache.batches(50, seed=3))
    got = torch.cat([torch.cat(b, dim=1) for b in batches])
    stored = torch.cat([cache.rows(0, 600), cache.rows(0, 600, hook=1)], dim=1)  # rows in stream order
    assert got.shape == stored.shape and not torch.equal(got, stored)  # shuffled...
    assert torch.equal(_canonical(got), _canonical(stored))  # ...as whole pairs
    ref = _reference_pairs(tiny_model, docs)[:600]  # the model's own (x, y) of those tokens, in order
    torch.testing.assert_close(stored, ref, atol=1e-5, rtol=0)
    # resume and ranks as for one hook
    tail = list(cache.batches(50, seed=3, start=5))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches[5:], tail, strict=True))
    # a transcoder trains from it, recording both hooks and where the tokens came from
    cache = ActivationCache(tmp_path / "cache", IN, hook_name_out=OUT, block_tokens=32, shuffle_blocks=4)
    sae = train_sae(TrainConfig(architecture="batchtopk", d_sae=64, k=4, batch_size=50, steps=20, log_every=0,
                                device="cpu", num_threads=1), cache, progress=False)
    c = sae.cfg
    assert (c.hook_name, c.hook_name_out, c.dataset_path, c.context_size, c.architecture) == (
        IN, OUT, "tiny/corpus", CTX, "jumprelu")
    # evaluate() reads the paired cache too: FVU over all 600 tokens, whatever their order
    got = evaluate(sae, ActivationCache(tmp_path / "cache", IN, hook_name_out=OUT, epochs=1), n_tokens=600,
                   batch_size=100)
    with torch.no_grad():
        assert got["fvu"] == pytest.approx(_fvu(sae(stored[:, :64]), stored[:, 64:]), rel=1e-4)
    # hooks whose shards do not hold the same tokens are refused
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    manifest["hooks"][OUT]["shards"] = manifest["hooks"][OUT]["shards"][:1]
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match="not the same tokens") as e:
        ActivationCache(tmp_path / "cache", IN, hook_name_out=OUT)
    assert e.value.field == "hooks"
    with pytest.raises(ConfigError) as e2:
        ActivationCache(tmp_path / "cache", IN, hook_name_out="blocks.1.hook_mlp_out")
    assert e2.value.field == "hook_name_out"


# ---------------------------------------------------------------------- iterables of pairs


def test_iterables_of_pairs_train_like_the_same_pairs_in_order():
    x, y, _ = _planted(0.1, n=640, seed=0, linear=True)
    cfg = _cfg(transcoder=True, skip_connection=True, steps=10, batch_size=64, init_tokens=64)
    ref = train_sae(cfg, [(a, b) for a, b in zip(x.split(64), y.split(64), strict=True)], progress=False)
    forms = {
        "dicts": [{"x": a, "y": b} for a, b in zip(x.split(64), y.split(64), strict=True)],
        "re-cut chunks": [(a, b) for a, b in zip(x.split(40), y.split(40), strict=True)],
        "a DataLoader": torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64),
    }
    for form, batches in forms.items():
        sae = train_sae(cfg, batches, progress=False)
        for name, t in ref.state_dict().items():
            assert torch.equal(t, sae.state_dict()[name]), (form, name)
    assert ref.cfg.d_out == 24 and ref.cfg.has_skip
    # without transcoder=True a tuple batch still means (activations, labels): an SAE on x, as before
    sae = train_sae(_cfg(steps=10, batch_size=64, init_tokens=64),
                    torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64), progress=False)
    assert not sae.cfg.is_transcoder and sae.cfg.d_out == 32
    # and evaluate() still reads a plain SAE's tuple of two tensors as two batches
    assert evaluate(sae, (x[:100], x[100:250]))["n_tokens"] == 250


# ---------------------------------------------------------------------- (d) typed errors


def test_contradictions_are_config_errors_naming_the_field(tiny_model):
    x, y, _ = _planted(0.0, n=256, seed=0, linear=False)
    cases: list[tuple[Any, Any, str]] = [
        (_cfg(), (x, y[:-1]), "y"),  # rows differ
        (_cfg(d_in=31), (x, y), "d_in"),
        (_cfg(d_out=25), (x, y), "d_out"),
        (_cfg(transcoder=True), x, "transcoder"),  # asks for a transcoder, data are single
        (_cfg(skip_connection=True), x, "transcoder"),
        (_cfg(transcoder=False), (x, y), "transcoder"),  # data are pairs
        (_cfg(d_out=24), x, "d_out"),  # an SAE has no separate output width...
        (_cfg(hook_name_out=OUT), x, "hook_name_out"),  # ...nor an output hook of its own
        (_cfg(hook_name=IN, hook_name_out=IN), (x, y), "hook_name_out"),
        (_cfg(transcoder=True), [x[:64], x[64:128]], "y"),  # a paired iterable whose batches are not pairs
        (_cfg(transcoder=True), [(x[:64], y[:32])], "y"),
    ]
    for cfg, data, field in cases:
        with pytest.raises(ConfigError) as e:
            Trainer(cfg, data, progress=False).run()
        assert e.value.field == field, (cfg, field, e.value)
    with pytest.raises(ConfigError) as e:
        TrainConfig(skip_connection=True, transcoder=False)
    assert e.value.field == "transcoder"
    with pytest.raises(ConfigError) as e:
        TrainConfig(transcoder=False, hook_name_out=OUT)
    assert e.value.field == "hook_name_out"
    # the source's hooks against the config's
    src = ModelActivationSource(tiny_model, corpus()[:8], IN, hook_name_out=OUT, context_size=CTX)
    with pytest.raises(ConfigError) as e:
        Trainer(_cfg(hook_name_out="blocks.1.hook_mlp_out"), src, progress=False)
    assert e.value.field == "hook_name_out"
    with pytest.raises(ConfigError) as e:
        ModelActivationSource(tiny_model, corpus()[:8], IN, hook_name_out=IN, context_size=CTX)
    assert e.value.field == "hook_name_out"
    # a transcoder stepped by hand with a single batch
    tr = Trainer(_cfg(steps=1, batch_size=64), (x, y), progress=False)
    with pytest.raises(ConfigError) as e:
        tr.step(x[:64])
    assert e.value.field == "transcoder"
