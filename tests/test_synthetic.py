"""The synthetic activation source and the recovery metrics, checked against direct computations."""

from __future__ import annotations

import importlib.util
import itertools
import math

import pytest
import torch

from sae_hub.training.synthetic import (
    SyntheticActivations,
    evaluate_recovery,
    max_cosine,
    mcc,
    mmcs,
    recovered_fraction,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_features_are_unit_and_probabilities_zipf_with_requested_mean():
    data = SyntheticActivations(d=16, n_features=40, mean_active=3.0, zipf_exponent=1.0, seed=3)
    assert data.features.shape == (40, 16)
    torch.testing.assert_close(data.features.norm(dim=-1), torch.ones(40))
    p = data.probabilities
    assert math.isclose(float(p.sum()), 3.0, rel_tol=1e-5)
    # p_i ∝ 1/(i+1) where nothing is capped
    ratio = p[1:] / p[:-1]
    torch.testing.assert_close(ratio[5:], torch.tensor([(i + 1) / (i + 2) for i in range(5, 39)]), rtol=1e-5,
                               atol=0)


def test_probability_cap_keeps_the_mean():
    data = SyntheticActivations(d=8, n_features=10, mean_active=4.0, zipf_exponent=2.0, max_probability=0.5)
    assert float(data.probabilities.max()) <= 0.5 + 1e-6
    assert math.isclose(float(data.probabilities.sum()), 4.0, rel_tol=1e-5)


def test_batches_are_the_planted_model_and_seeded():
    data = SyntheticActivations(d=12, n_features=30, mean_active=4.0, noise_std=0.0, seed=1)
    x, codes = data.sample_with_codes(5000, seed=7, index=2)
    torch.testing.assert_close(x, codes @ data.features)
    # empirical firing rates follow the probabilities; magnitudes are in range
    rate = (codes > 0).float().mean(0)
    assert (rate - data.probabilities).abs().max() < 0.05
    assert float(codes[codes > 0].min()) >= 0.5 and float(codes.max()) <= 1.5
    assert abs(float((codes > 0).sum(-1).float().mean()) - 4.0) < 0.15
    assert torch.equal(data.sample_batch(100, seed=7, index=2), data.sample_batch(100, seed=7, index=2))
    assert not torch.equal(data.sample_batch(100, seed=7, index=2), data.sample_batch(100, seed=7, index=3))
    # the features depend on the data seed only
    assert torch.equal(SyntheticActivations(d=12, n_features=30, seed=1).features, data.features)
    assert not torch.equal(SyntheticActivations(d=12, n_features=30, seed=2).features, data.features)


def test_noise_has_the_requested_std():
    data = SyntheticActivations(d=64, n_features=8, mean_active=0.01, noise_std=0.3, seed=0)
    x, codes = data.sample_with_codes(4000)
    resid = x - codes @ data.features
    assert abs(float(resid.std()) - 0.3) < 0.01


def test_source_protocol_ranks_are_disjoint_slices_of_the_global_batch_and_resumable():
    data = SyntheticActivations(d=8, n_features=20, seed=0)
    single = list(itertools.islice(data.batches(64, seed=5), 4))
    r0 = list(itertools.islice(data.batches(32, seed=5, rank=0, world_size=2), 4))
    r1 = list(itertools.islice(data.batches(32, seed=5, rank=1, world_size=2), 4))
    for s, a, b in zip(single, r0, r1, strict=True):
        assert torch.equal(s, torch.cat([a, b]))
    resumed = list(itertools.islice(data.batches(64, seed=5, start=2), 2))
    assert torch.equal(resumed[0], single[2]) and torch.equal(resumed[1], single[3])
    assert data.d_in == 8


def test_metrics_on_known_decoders():
    torch.manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(20, 10), dim=-1)
    # a decoder that contains every feature (scaled, permuted, plus junk rows) recovers all of them
    dec = torch.cat([3.0 * feats[torch.randperm(20)], torch.randn(5, 10)])
    assert mmcs(dec, feats) == pytest.approx(1.0, abs=1e-6)
    assert recovered_fraction(dec, feats, 0.99) == 1.0
    # remove half the features: their best cosines are whatever the rest give; compare with a direct loop
    half = dec[:10]
    direct = [max(float(torch.nn.functional.cosine_similarity(f, r, dim=0)) for r in half) for f in feats]
    torch.testing.assert_close(max_cosine(half, feats), torch.tensor(direct), atol=1e-6, rtol=0)
    assert mmcs(half, feats) == pytest.approx(sum(direct) / 20, abs=1e-6)
    assert recovered_fraction(half, feats, 0.9) == pytest.approx(sum(c > 0.9 for c in direct) / 20)


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="mcc needs scipy (optional)")
def test_mcc_is_the_best_one_to_one_matching():
    torch.manual_seed(1)
    feats = torch.nn.functional.normalize(torch.randn(5, 6), dim=-1)
    dec = torch.nn.functional.normalize(torch.randn(6, 6), dim=-1)
    sim = feats @ dec.T
    best = max(sum(float(sim[i, p[i]]) for i in range(5)) for p in itertools.permutations(range(6), 5)) / 5
    assert mcc(dec, feats) == pytest.approx(best, abs=1e-6)
    # a duplicated latent counts once under MCC, as often as it matches under MMCS
    dup = torch.stack([feats[0], feats[0]])
    assert mmcs(dup, feats[:1].repeat(2, 1)) == pytest.approx(1.0)
    assert mcc(torch.cat([feats[:1], -feats[:1]]), feats[:1].repeat(2, 1)) == pytest.approx(0.0, abs=1e-6)


def test_evaluate_recovery_of_the_ground_truth_sae():
    """An SAE whose decoder *is* the features and whose encoder reads the codes exactly scores perfectly
    (a tiny JumpReLU threshold removes the pseudo-inverse's round-off from L0)."""
    from sae_hub import SAE, SAEConfig

    data = SyntheticActivations(d=32, n_features=16, mean_active=2.0, seed=0)  # n < d: exactly invertible
    cfg = SAEConfig(architecture="jumprelu", d_in=32, d_sae=16)
    W_dec = data.features
    sae = SAE.from_state_dict(cfg, {"W_enc": torch.linalg.pinv(W_dec), "b_enc": torch.zeros(16),
                                    "W_dec": W_dec.clone(), "b_dec": torch.zeros(32),
                                    "threshold": torch.full((16,), 1e-4)})
    out = evaluate_recovery(sae, data, n_tokens=5000)
    assert out["mmcs"] == pytest.approx(1.0, abs=1e-5) and out["recovered_0.99"] == 1.0
    assert out["fvu"] < 1e-8
    assert out["l0"] == pytest.approx(2.0, abs=0.1)


# ---------------------------------------------------------------------- the realistic generator


def _big_sample(data: SyntheticActivations, n: int = 40000) -> tuple[torch.Tensor, torch.Tensor]:
    x, codes = data.sample_with_codes(n, seed=3, index=0)
    return x, codes


def test_realistic_hierarchy_children_fire_only_with_parents_and_siblings_exclude_each_other():
    data = SyntheticActivations.realistic(d=64, n_features=256, seed=0)
    x, codes = _big_sample(data)
    fired = codes > 0
    kids = (data.parent >= 0).nonzero().flatten()
    assert kids.numel() == 2 * 4 + 2 * 16 + 2 * 64  # two trees (256 // 128), branching 4, depth 3
    assert not bool((fired[:, kids] & ~fired[:, data.parent[kids]]).any())
    # siblings: at most one child of each parent fires on any token; and each child does fire sometimes
    for par in data.parent[kids].unique().tolist():
        sib = (data.parent == par).nonzero().flatten()
        assert int(fired[:, sib].sum(-1).max()) <= 1
    assert bool(fired[:, kids[:40]].any(0).all())
    # x is exactly the codes through the dictionary, plus the bias (norm 1)
    torch.testing.assert_close(x, codes @ data.features + data.bias, atol=1e-4, rtol=1e-5)
    assert float(data.bias.norm()) == pytest.approx(1.0, rel=1e-5)


def test_realistic_firing_marginals_magnitudes_and_probability_range():
    # no hierarchy: the copula must keep each feature's marginal at p_i despite the correlations
    data = SyntheticActivations.realistic(d=64, n_features=128, seed=1, hierarchy_roots=0)
    p = data.probabilities
    assert float(p[0]) == pytest.approx(0.4) and float(p[-1]) == pytest.approx(5e-4)
    assert bool((p[1:] <= p[:-1]).all())
    _, codes = _big_sample(data, 60000)
    fired = codes > 0
    rate = fired.float().mean(0)
    se = (p * (1 - p) / 60000).sqrt()
    assert bool(((rate - p).abs() < 5 * se + 1e-4).all())
    # magnitudes: |N(mu_i, sigma_i)| with mu linear from 5 (most frequent) to 4 (rarest)
    m0 = codes[fired[:, 0], 0]
    assert float(m0.mean()) == pytest.approx(5.0, abs=5 * float(data._mag_std[0]) / m0.numel() ** 0.5 + 0.02)
    assert float(data._mag_mean[-1]) == pytest.approx(4.0)
    # the copula correlates firing: some pairs of frequent features co-fire far from independence
    f = fired[:, :20].float()
    corr = torch.corrcoef(f.T)
    corr.fill_diagonal_(0)
    indep = SyntheticActivations.realistic(d=64, n_features=128, seed=1, hierarchy_roots=0, correlation_rank=0)
    fi = (_big_sample(indep, 60000)[1][:, :20] > 0).float()
    ci = torch.corrcoef(fi.T)
    ci.fill_diagonal_(0)
    assert float(corr.abs().max()) > 2 * float(ci.abs().max())


def test_realistic_true_l0_and_toy_unchanged():
    data = SyntheticActivations.realistic(seed=0)  # the benchmark's data: 1024 features in d = 256
    assert 6.0 < data.true_l0(8192) < 8.5
    assert 0.2 < data.max_overlap < 0.4  # random, not orthogonalised, directions
    toy = SyntheticActivations(d=12, n_features=30, mean_active=4.0, seed=1)
    assert not toy.structured and data.structured


@pytest.mark.parametrize("field, value", [("probability_range", (0.5, 0.1)), ("hierarchy_branching", 1),
                                          ("correlation_rank", -1), ("magnitude_distribution", "gamma"),
                                          ("bias_norm", -1.0), ("n_features", 0)])
def test_bad_generator_fields_are_config_errors_naming_the_field(field, value):
    from sae_hub.errors import ConfigError

    kwargs = {"d": 8, "n_features": 16, field: value}
    with pytest.raises(ConfigError) as e:
        SyntheticActivations(**kwargs)
    assert e.value.field in (field, "hierarchy_roots", "correlation_rank")


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="mcc needs scipy (optional)")
def test_mcc_with_fewer_latents_than_features_averages_over_matched_pairs():
    torch.manual_seed(2)
    feats = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    dec = torch.nn.functional.normalize(torch.randn(4, 5), dim=-1)
    sim = feats @ dec.T
    best = max(sum(float(sim[p[i], i]) for i in range(4)) for p in itertools.permutations(range(6), 4)) / 4
    assert mcc(dec, feats) == pytest.approx(best, abs=1e-6)


def test_firing_f1_against_a_direct_count():
    from sae_hub.training.synthetic import firing_f1

    g = torch.Generator().manual_seed(0)
    lat = torch.rand(300, 7, generator=g) < 0.3
    true = torch.rand(300, 5, generator=g) < 0.3
    match = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    lat[:, 6] = False  # a latent that never fires: precision undefined -> 0, F1 0
    out = firing_f1(lat, true, match)
    f1s, ps, rs = [], [], []
    for j in range(7):
        a, t = lat[:, j].tolist(), true[:, int(match[j])].tolist()
        tp = sum(u and v for u, v in zip(a, t, strict=True))
        fp = sum(u and not v for u, v in zip(a, t, strict=True))
        fn = sum(v and not u for u, v in zip(a, t, strict=True))
        pr = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        ps.append(pr)
        rs.append(rc)
        f1s.append(2 * pr * rc / (pr + rc) if pr + rc else 0.0)
    assert out["f1"] == pytest.approx(sum(f1s) / 7) and out["precision"] == pytest.approx(sum(ps) / 7)
    assert out["recall"] == pytest.approx(sum(rs) / 7)


def test_evaluate_recovery_of_the_ground_truth_sae_on_realistic_data():
    """The exact inverse of the realistic generator (n < d, b_dec = the bias) detects every firing: F1 = 1."""
    from sae_hub import SAE, SAEConfig

    data = SyntheticActivations.realistic(d=48, n_features=32, seed=4)
    cfg = SAEConfig(architecture="jumprelu", d_in=48, d_sae=32, apply_b_dec_to_input=True)
    sae = SAE.from_state_dict(cfg, {"W_enc": torch.linalg.pinv(data.features), "b_enc": torch.zeros(32),
                                    "W_dec": data.features.clone(), "b_dec": data.bias.clone(),
                                    "threshold": torch.full((32,), 1e-3)})
    out = evaluate_recovery(sae, data, n_tokens=6000)
    assert out["mmcs"] == pytest.approx(1.0, abs=1e-5) and out["fvu"] < 1e-8
    assert out["f1"] == pytest.approx(1.0) and out["precision"] == 1.0 and out["recall"] == pytest.approx(1.0)
    assert out["dead_fraction"] == 0.0
    assert out["l0"] == pytest.approx(data.true_l0(6000), rel=0.05)
