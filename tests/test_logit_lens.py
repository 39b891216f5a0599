"""Logit lens on the tiny offline GPT-2, checked against independent computations.

References are written out here: logit rows from the HF checkpoint's own tensors in float64 (with the
final-norm fold done by hand), moments with numpy, enrichment with a pure-Python running-sum loop in exact
fractions. Structure is planted in a raw ``W_U`` so the expected top/bottom tokens are known by construction.
"""

from __future__ import annotations

import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sae_hub import SAE, SAEConfig
from sae_hub.analysis import (
    BUILTIN_TOKEN_SETS,
    enrichment,
    logit_lens,
    logit_weights,
    token_set_mask,
    vocab_strings,
)
from sae_hub.errors import ConfigError, ShapeMismatchError

D_MODEL = 64


def make_sae(d_sae: int, hook: str | None = "blocks.1.hook_resid_post", d_in: int = D_MODEL, seed: int = 0,
             **kw: Any) -> SAE:
    sae = SAE(SAEConfig(architecture=kw.pop("architecture", "relu"), d_in=d_in, d_sae=d_sae, hook_name=hook,
                        **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g))
    return sae


# ----------------------------------------------------------------------------- independent references


def np_moments(row: np.ndarray) -> tuple[float, float, float, float]:
    x = row.astype(np.float64)
    mu = x.mean()
    d = x - mu
    m2, m3, m4 = (d**2).mean(), (d**3).mean(), (d**4).mean()
    return mu, np.sqrt(m2), m3 / m2**1.5, m4 / m2**2 - 3.0


def brute_enrichment(scores: list[float], members: list[bool]) -> float:
    """Walk the descending ranking (ties by id) adding +1/|S| or -1/(V-|S|); the signed extreme (first)."""
    V, S = len(scores), sum(members)
    if S in (0, V):
        return float("nan")
    order = sorted(range(V), key=lambda i: -scores[i])
    run, best = Fraction(0), Fraction(0)
    for i in order:
        run += Fraction(1, S) if members[i] else -Fraction(1, V - S)
        if abs(run) > abs(best):
            best = run
    return float(best)


def digit_ids(strings: list[str]) -> list[int]:
    return [i for i, s in enumerate(strings) if re.fullmatch(r" ?[0-9]+", s)]


def capital_ids(strings: list[str]) -> list[int]:
    return [i for i, s in enumerate(strings) if re.fullmatch(r" ?[A-Z].*", s, re.S)]


# ------------------------------------------------------------------------------------- planted W_U


@pytest.fixture(scope="module")
def planted(tiny_model: Any) -> dict[str, Any]:
    """A raw W_U where direction e_5 promotes every digit token (known order) and suppresses capitals."""
    tok = tiny_model.tokenizer
    V = len(tok)
    strings = vocab_strings(tok, V)
    digits, caps = digit_ids(strings), capital_ids(strings)
    assert len(digits) >= 12 and len(caps) >= 12, "the tiny vocabulary should have digit and capital tokens"
    g = torch.Generator().manual_seed(3)
    W_U = torch.randn(D_MODEL, V, generator=g) * 0.01
    W_U[5, digits] = torch.tensor([5.0 - 0.1 * i for i in range(len(digits))])
    W_U[5, caps] = torch.tensor([-5.0 + 0.1 * i for i in range(len(caps))])
    sae = make_sae(16, seed=4)
    with torch.no_grad():
        sae.W_dec[:, 5] = 0.0  # only the planted features see the planted direction
        sae.W_dec[3] = 0.0
        sae.W_dec[3, 5] = 1.0  # feature 3: digits up, capitals down
        sae.W_dec[9] = 0.0
        sae.W_dec[9, 5] = -2.0  # feature 9: the mirror image
    return {"W_U": W_U, "sae": sae, "digits": digits, "caps": caps, "strings": strings, "tok": tok}


def test_planted_feature_has_the_planted_top_and_bottom_tokens(planted):
    r = logit_lens(planted["sae"], planted["W_U"], tokenizer=planted["tok"], k=8)
    f = r.features[3]
    assert [t.id for t in f.top] == planted["digits"][:8]
    assert [t.id for t in f.bottom] == planted["caps"][:8]
    assert [t.weight for t in f.top] == pytest.approx([5.0 - 0.1 * i for i in range(8)], abs=1e-6)
    assert [t.token for t in f.top] == [planted["strings"][i] for i in planted["digits"][:8]]
    mirror = r.features[9]
    assert [t.id for t in mirror.top] == planted["caps"][:8]
    assert [t.id for t in mirror.bottom] == planted["digits"][:8]
    assert r.info.source == "tensor" and not r.info.ln_weight_folded and r.info.resid_map == "identity"


def test_planted_feature_wins_the_digit_enrichment(planted):
    r = logit_lens(planted["sae"], planted["W_U"], tokenizer=planted["tok"])
    assert r.top_features("all_digits", 1) == [3]
    assert r.top_features("all_digits", 1, descending=False) == [9]
    digits = r.enrichment_of("all_digits")
    assert digits[3].item() == 1.0  # every digit token outranks every other token
    assert digits[9].item() == -1.0
    assert r.enrichment_of("capitalized")[9] > 0.5
    assert r.set_sizes[r.set_names.index("all_digits")] == len(planted["digits"])


def test_moments_match_numpy(planted):
    sae, W_U = planted["sae"], planted["W_U"]
    r = logit_lens(sae, W_U, tokenizer=planted["tok"])
    # the planted row is exactly W_U[5]: moments of its float32 values (float32 two-pass: ~1e-6 relative)
    assert r.moments[3].tolist() == pytest.approx(np_moments(W_U[5].numpy()), rel=1e-5, abs=1e-9)
    rows, _ = logit_weights(sae, W_U, range(sae.cfg.d_sae))
    ref = sae.W_dec.detach().double().numpy() @ W_U.double().numpy()
    for j in range(sae.cfg.d_sae):
        assert r.moments[j].tolist() == pytest.approx(np_moments(rows[j].numpy()), rel=1e-5, abs=1e-7), j
        assert r.moments[j].tolist() == pytest.approx(np_moments(ref[j]), rel=2e-4, abs=1e-7), j
    assert r.skewness.equal(r.moments[:, 2]) and r.kurtosis.equal(r.moments[:, 3])


def test_centring_moves_only_the_mean(planted):
    sae, W_U, tok = planted["sae"], planted["W_U"], planted["tok"]
    a = logit_lens(sae, W_U, tokenizer=tok)
    b = logit_lens(sae, W_U, tokenizer=tok, center=True)
    assert b.info.vocab_centered and b.info.vocab_centered_by == "sae_hub" and not a.info.vocab_centered
    assert b.mean.abs().max() < 1e-6
    assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.enrichment, b.enrichment)
    assert torch.allclose(a.moments[:, 1:], b.moments[:, 1:], rtol=1e-4)


# -------------------------------------------------------------------------------------- enrichment


def test_enrichment_function_matches_brute_force_loop_with_ties():
    g = torch.Generator().manual_seed(0)
    V = 257
    for trial in range(20):
        scores = torch.randint(-6, 7, (V,), generator=g).float()  # many ties
        mask = torch.rand(V, generator=g) < (0.02 + 0.05 * trial)
        got = enrichment(scores, mask).item()
        assert got == pytest.approx(brute_enrichment(scores.tolist(), mask.tolist()), abs=1e-12)
    batch = torch.randn(5, V, generator=g)
    mask = torch.rand(V, generator=g) < 0.3
    got = enrichment(batch, mask)
    assert got.shape == (5,)
    for i in range(5):
        assert got[i].item() == pytest.approx(brute_enrichment(batch[i].tolist(), mask.tolist()), abs=1e-12)
    assert torch.isnan(enrichment(batch[0], torch.zeros(V, dtype=torch.bool)))
    assert torch.isnan(enrichment(batch[0], torch.ones(V, dtype=torch.bool)))
    with pytest.raises(ShapeMismatchError):
        enrichment(batch[0], torch.ones(V - 1, dtype=torch.bool))


def test_running_sum_and_member_rank_paths_agree_with_brute_force():
    """Small sets are scored from member ranks, large ones by a running sum: both must give the loop's value."""
    ll = sys.modules["sae_hub.analysis.logit_lens"]
    g = torch.Generator().manual_seed(1)
    V = 64
    cases = []
    for _ in range(30):
        scores = torch.randint(-4, 5, (V,), generator=g).float()
        cases.append((scores, torch.rand(V, generator=g) < torch.rand(1, generator=g).item()))
    ramp = -torch.arange(V).float()  # rank r holds token r - 1
    for ids in ([0], [V - 1], [0, 1, 2], [V - 3, V - 2, V - 1], [0, V - 1], list(range(1, V)), [5, 6, 40]):
        cases.append((ramp, torch.isin(torch.arange(V), torch.tensor(ids))))
    for scores, mask in cases:
        S = int(mask.sum())
        want = brute_enrichment(scores.tolist(), mask.tolist())
        if S in (0, V):
            continue
        order = torch.sort(scores, descending=True, stable=True).indices[None]
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(1, V + 1)[None])
        by_sum = ll._enrichment_cumsum(mask[order], S).item()
        by_rank = ll._enrichment_ranks(ranks, mask.nonzero().flatten(), V).item()
        assert by_sum == pytest.approx(want, abs=1e-12) and by_rank == pytest.approx(want, abs=1e-12)


def test_lens_enrichment_matches_brute_force_on_every_feature_and_set(planted):
    sae, W_U, tok = planted["sae"], planted["W_U"], planted["tok"]
    r = logit_lens(sae, W_U, tokenizer=tok, token_sets={"the_and_a": [" the", " a", "The"], "ids": [1, 2, 3]})
    rows, _ = logit_weights(sae, W_U, range(sae.cfg.d_sae))
    strings = planted["strings"]
    masks = {name: [bool(BUILTIN_TOKEN_SETS[name](s)) for s in strings] for name in BUILTIN_TOKEN_SETS}
    masks["the_and_a"] = [s in (" the", " a", "The") for s in strings]
    masks["ids"] = [i in (1, 2, 3) for i in range(len(strings))]
    assert r.set_names == [*BUILTIN_TOKEN_SETS, "the_and_a", "ids"]
    for j in range(sae.cfg.d_sae):
        for c, name in enumerate(r.set_names):
            want = brute_enrichment(rows[j].tolist(), masks[name])
            assert r.enrichment[j, c].item() == pytest.approx(want, abs=1e-12), (j, name)


def test_builtin_sets_mean_what_they_say(planted):
    strings = planted["strings"]
    mask = {n: token_set_mask(p, len(strings), strings) for n, p in BUILTIN_TOKEN_SETS.items()}
    s = {n: {strings[i] for i in m.nonzero().flatten().tolist()} for n, m in mask.items()}
    assert {"0", "9", " 12", " 202"} <= s["all_digits"] and not {"a", " 1a"} & s["all_digits"]
    assert {" March", "The", " Friday"} <= s["capitalized"] and "the" not in s["capitalized"]
    assert {".", ",", "!", "?", " (", "#"} <= s["punctuation"] and not {"a", " ", "\ufffd"} & s["punctuation"]
    assert {"a", " D", "!"} <= s["single_character"] and " 12" not in s["single_character"]
    assert all(x.startswith(" ") for x in s["starts_with_space"]) and " the" in s["starts_with_space"]


def test_token_set_specs_agree(planted):
    strings, V = planted["strings"], len(planted["strings"])
    by_regex = token_set_mask(r"^ ?[0-9]+$", V, strings)
    assert torch.equal(by_regex, token_set_mask(re.compile(r"^ ?[0-9]+$"), V, strings))
    assert torch.equal(by_regex, token_set_mask(BUILTIN_TOKEN_SETS["all_digits"], V, strings))
    assert torch.equal(by_regex, token_set_mask([strings[i] for i in planted["digits"]], V, strings))
    assert torch.equal(by_regex, token_set_mask(planted["digits"], V))
    assert torch.equal(by_regex, token_set_mask(by_regex, V))
    with pytest.raises(ConfigError):
        token_set_mask(["a", 1], V, strings)
    with pytest.raises(ConfigError):
        token_set_mask(r"\d", V, None)
    with pytest.raises(ConfigError):
        token_set_mask([V], V)


def test_without_tokenizer_ids_still_work_and_string_sets_are_refused(planted):
    sae, W_U = planted["sae"], planted["W_U"]
    r = logit_lens(sae, W_U, token_sets={"digits": planted["digits"]})
    assert r.set_names == ["digits"] and r.strings is None
    assert r.features[3].top[0].token is None and r.features[3].enrichment["digits"] == 1.0
    with pytest.raises(ConfigError):
        logit_lens(sae, W_U, token_sets={"d": r"\d"})


# ---------------------------------------------------------------------------------- chunking


@pytest.mark.parametrize(("chunk_size", "budget_mb"), [(1, 512), (128, 0.01), (256, 0.05)])
def test_chunked_and_unchunked_agree_exactly(tiny_model, chunk_size, budget_mb):
    # 300 features: 3 chunks of 128 (the last one short), sort passes of 1 to ~4 rows vs all at once
    sae = make_sae(300, hook="blocks.1.attn.hook_z", reshape_activations="hook_z", seed=7)
    full = logit_lens(sae, tiny_model, k=7, chunk_size=10_000, memory_budget_mb=4096)
    part = logit_lens(sae, tiny_model, k=7, chunk_size=chunk_size, memory_budget_mb=budget_mb)
    for name in ("top_ids", "top_values", "bottom_ids", "bottom_values", "moments", "enrichment"):
        assert torch.equal(getattr(full, name), getattr(part, name)), name
    no_sets = logit_lens(sae, tiny_model, k=7, chunk_size=chunk_size, builtin_sets=False)
    assert no_sets.set_names == [] and no_sets.enrichment.shape == (300, 0)
    assert torch.equal(no_sets.top_values, full.top_values) and torch.equal(no_sets.moments, full.moments)
    sub = logit_lens(sae, tiny_model, k=7, features=range(150, 300), chunk_size=chunk_size)
    assert torch.equal(sub.top_values, full.top_values[150:]) and torch.equal(sub.bottom_ids, full.bottom_ids[150:])


def test_top_tokens_match_the_full_matrix_reference(tiny_model):
    sae = make_sae(50, seed=8)
    r = logit_lens(sae, tiny_model, k=6, chunk_size=32)
    ref = sae.W_dec.detach().double() @ tiny_model.W_U.detach().double()
    top = ref.topk(6, dim=1)
    bottom = ref.topk(6, dim=1, largest=False)
    assert torch.equal(r.top_ids, top.indices) and torch.equal(r.bottom_ids, bottom.indices)
    assert torch.allclose(r.top_values.double(), top.values, atol=1e-5)
    assert torch.allclose(r.bottom_values.double(), bottom.values, atol=1e-5)


def test_feature_subset_and_records(tiny_model):
    sae = make_sae(40, seed=9)
    full = logit_lens(sae, tiny_model, k=3)
    sub = logit_lens(sae, tiny_model, k=3, features=[17, 2, 33])
    assert sub.feature_ids == [17, 2, 33] and len(sub.features) == 3 and 2 in sub.features
    for j in (17, 2, 33):  # a 3-row matmul may round differently from a 40-row one: same tokens, ~equal values
        assert [t.id for t in sub.features[j].top] == [t.id for t in full.features[j].top]
        assert [t.weight for t in sub.features[j].top] == pytest.approx([t.weight for t in full.features[j].top])
        assert sub.features[j].enrichment == pytest.approx(full.features[j].enrichment, abs=1e-12)
    with pytest.raises(KeyError):
        sub.features[0]
    recs = sub.to_records()
    assert [r["feature"] for r in recs] == [17, 2, 33]
    assert recs[0]["top_ids"] == full.top_ids[17].tolist()
    assert {"mean", "std", "skewness", "kurtosis", "enrichment_all_digits"} <= set(recs[0])
    df = full.to_pandas()
    assert list(df.index) == list(range(40)) and df.loc[5, "kurtosis"] == pytest.approx(full.kurtosis[5].item())
    with pytest.raises(ConfigError):
        logit_lens(sae, tiny_model, features=[40])


# ------------------------------------------------------------------------------- final norm folding


@pytest.fixture(scope="module")
def gamma_models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny checkpoint with a non-trivial final LayerNorm, booted raw and in compatibility mode."""
    from tiny_model import boot_tiny_model
    from transformers import AutoTokenizer, GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        hf.transformer.ln_f.weight.copy_(0.3 + 1.7 * torch.rand(D_MODEL, generator=g))
        hf.transformer.ln_f.bias.copy_(0.1 * torch.randn(D_MODEL, generator=g))
    out = tmp_path_factory.mktemp("tiny_gamma")
    hf.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return {
        "gamma": hf.transformer.ln_f.weight.detach().double().clone(),
        "W_raw": hf.lm_head.weight.detach().double().T.clone(),  # [d_model, V]
        "raw": boot_tiny_model(out, compatibility_mode=False),
        "compat": boot_tiny_model(out),
    }


def test_fold_ln_on_an_unprocessed_model_matches_a_manual_fold(gamma_models):
    raw, gamma, W_raw = gamma_models["raw"], gamma_models["gamma"], gamma_models["W_raw"]
    assert torch.allclose(raw.W_U.detach().double(), W_raw)
    sae = make_sae(20, seed=12)
    W_fold = gamma[:, None] * W_raw
    W_fold = W_fold - W_fold.mean(0, keepdim=True)  # LayerNorm removes the mean before W_U
    ref = sae.W_dec.detach().double() @ W_fold
    rows, info = logit_weights(sae, raw, range(20))
    assert info.ln_weight_folded_by == "sae_hub" and info.d_model_centered_by == "sae_hub"
    assert info.final_norm == "LayerNorm" and not info.vocab_centered
    assert torch.allclose(rows.double(), ref, atol=1e-5)
    unfolded, info_u = logit_weights(sae, raw, range(20), fold_ln=False)
    assert not info_u.ln_weight_folded and not info_u.d_model_centered
    assert torch.allclose(unfolded.double(), sae.W_dec.detach().double() @ W_raw, atol=1e-5)
    assert (unfolded - rows).abs().max() > 0.1  # the fold really changes the logit weights
    lens = logit_lens(sae, raw, k=5)
    assert torch.equal(lens.top_ids, ref.topk(5, dim=1).indices)


def test_processed_model_is_not_folded_twice(gamma_models):
    compat, gamma, W_raw = gamma_models["compat"], gamma_models["gamma"], gamma_models["W_raw"]
    sae = make_sae(20, seed=13)
    folded, info = logit_weights(sae, compat, range(20))
    kept, info_keep = logit_weights(sae, compat, range(20), fold_ln=False)
    assert info.ln_weight_folded_by == "model" and info.d_model_centered_by == "model"
    assert info.vocab_centered_by == "model"  # TransformerLens's center_unembed
    assert info_keep.ln_weight_folded and any("cannot be unfolded" in n for n in info_keep.notes)
    assert torch.equal(folded, kept)
    assert torch.allclose(folded.double(), sae.W_dec.detach().double() @ compat.W_U.detach().double(), atol=1e-6)
    W_fold = gamma[:, None] * W_raw
    W_fold = W_fold - W_fold.mean(0, keepdim=True)
    W_fold = W_fold - W_fold.mean(1, keepdim=True)
    assert torch.allclose(folded.double(), sae.W_dec.detach().double() @ W_fold, atol=1e-5)
    # the same lens from the raw model with centring: identical rankings
    a = logit_lens(sae, gamma_models["raw"], k=5, center=True)
    b = logit_lens(sae, compat, k=5)
    assert torch.equal(a.top_ids, b.top_ids) and torch.allclose(a.top_values, b.top_values, atol=1e-5)


def test_tiny_session_model_reports_model_processing(tiny_model):
    sae = make_sae(8)
    r = logit_lens(sae, tiny_model, k=3)
    assert r.info.source == "model" and r.info.ln_weight_folded_by == "model"
    assert r.info.hook_name == "blocks.1.hook_resid_post" and r.info.to_dict()["resid_map"] == "identity"


# --------------------------------------------------------------------------- non-residual hooks


def test_hook_z_maps_through_W_O(tiny_model):
    sae = make_sae(12, hook="blocks.1.attn.hook_z", reshape_activations="hook_z", seed=14)
    W_O = tiny_model.blocks[1].attn.W_O.detach().double()  # [n_heads, d_head, d_model]
    ref = (sae.W_dec.detach().double() @ W_O.reshape(-1, D_MODEL)) @ tiny_model.W_U.detach().double()
    rows, info = logit_weights(sae, tiny_model, range(12))
    assert info.resid_map == "W_O"
    assert torch.allclose(rows.double(), ref, atol=1e-5)
    head = make_sae(12, hook="blocks.0.attn.hook_z", d_in=16, hook_head_index=2, seed=15)
    ref_h = (head.W_dec.detach().double() @ tiny_model.blocks[0].attn.W_O.detach().double()[2]) \
        @ tiny_model.W_U.detach().double()
    rows_h, info_h = logit_weights(head, tiny_model, range(12))
    assert info_h.resid_map == "W_O[head 2]" and torch.allclose(rows_h.double(), ref_h, atol=1e-5)


def test_mlp_post_maps_through_W_out_and_transcoders_use_their_output_hook(tiny_model):
    sae = make_sae(12, hook="blocks.0.mlp.hook_post", d_in=256, seed=16)
    ref = (sae.W_dec.detach().double() @ tiny_model.blocks[0].mlp.W_out.detach().double()) \
        @ tiny_model.W_U.detach().double()
    rows, info = logit_weights(sae, tiny_model, range(12))
    assert info.resid_map == "W_out" and torch.allclose(rows.double(), ref, atol=1e-5)
    tc = make_sae(12, hook="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out", seed=17)
    rows_tc, info_tc = logit_weights(tc, tiny_model, range(12))
    assert info_tc.hook_name == "blocks.0.hook_mlp_out" and info_tc.resid_map == "identity"
    assert torch.allclose(rows_tc.double(), tc.W_dec.detach().double() @ tiny_model.W_U.detach().double(),
                          atol=1e-5)


def test_unmappable_hooks_are_refused(tiny_model, planted):
    with pytest.raises(ConfigError, match="residual stream"):
        logit_lens(make_sae(4, hook="blocks.0.ln2.hook_normalized"), tiny_model)
    with pytest.raises(ConfigError, match="raw W_U"):
        logit_lens(make_sae(4, hook="blocks.0.attn.hook_z"), planted["W_U"])
    with pytest.raises(ShapeMismatchError, match="W_out reads 256"):
        logit_lens(make_sae(4, hook="blocks.0.mlp.hook_post"), tiny_model)  # d_in 64, W_out reads 256


def test_w_u_orientation_and_decoder_norm_rescaling(tiny_model):
    sae = make_sae(6)
    with pytest.raises(ShapeMismatchError, match=r"\.T"):
        logit_lens(sae, tiny_model.W_U.detach().T.contiguous())
    topk = make_sae(6, architecture="topk", k=2, rescale_acts_by_decoder_norm=True, seed=18)
    rows, _ = logit_weights(topk, tiny_model, range(6))
    unit = topk.W_dec.detach().double() / topk.W_dec.detach().double().norm(dim=1, keepdim=True)
    assert torch.allclose(rows.double(), unit @ tiny_model.W_U.detach().double(), atol=1e-6)


def test_importing_analysis_stays_light():
    code = ("import sys, sae_hub.analysis, sae_hub.analysis.plots, sae_hub.analysis.neuronpedia;"
            "print(' '.join(m for m in ('plotly', 'requests', 'pandas', 'transformer_lens', 'transformers')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == ""
    import sae_hub.analysis as A
    assert callable(A.logit_lens) and callable(A.feature_stats)
