"""Plotly figures: the data in each figure (bins, counts, annotation texts, colours), and offline HTML."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_hub import SAE, SAEConfig
from sae_hub.analysis import feature_stats, logit_lens, logit_weights, plots
from sae_hub.errors import ConfigError, MissingFileError
from sae_hub.files import write_safetensors_atomic


def make_sae(d_sae: int = 24, seed: int = 0) -> SAE:
    sae = SAE(SAEConfig(architecture="relu", d_in=64, d_sae=d_sae, hook_name="blocks.0.hook_resid_post"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g) * 0.5)
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g))
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.5)
    return sae


def test_logit_histogram_bins_counts_and_annotations(tiny_model):
    sae = make_sae()
    fig = plots.logit_histogram(sae, tiny_model, 7, k=4, bins=30)
    row, _ = logit_weights(sae, tiny_model, [7])
    counts, edges = np.histogram(row[0].double().numpy(), bins=30)
    (bar,) = fig.data
    assert list(bar.y) == counts.tolist()
    assert np.allclose(bar.x, (edges[:-1] + edges[1:]) / 2) and np.allclose(bar.width, np.diff(edges))
    assert fig.layout.yaxis.type == "log"
    lens = logit_lens(sae, tiny_model, k=4, features=[7]).features[7]
    texts = [a.text for a in fig.layout.annotations]
    assert texts == [repr(t.token) for t in lens.top] + [repr(t.token) for t in lens.bottom]
    xs = [a.x for a in fig.layout.annotations]
    assert xs == pytest.approx([t.weight for t in lens.top] + [t.weight for t in lens.bottom], abs=1e-6)
    colours = {a.font.color for a in fig.layout.annotations[:4]}, {a.font.color for a in fig.layout.annotations[4:]}
    assert colours == ({"#2ca02c"}, {"#d62728"})
    assert "γ folded" in fig.layout.title.text and "W_U centred" in fig.layout.title.text


def test_density_histogram_from_tensor_file_and_stats(tiny_model, tmp_path: Path):
    values = torch.tensor([-10.0, -10.0, -3.0, -2.5, -2.0, -1.0, -1.0, -0.5])
    fig = plots.density_histogram(values, bins=5)
    counts, edges = np.histogram(values[2:].numpy().astype(np.float64), bins=5)
    assert list(fig.data[0].y) == counts.tolist() and sum(fig.data[0].y) == 6
    assert np.allclose(fig.data[0].x, (edges[:-1] + edges[1:]) / 2)
    assert "8 features, 2 never fired" in fig.layout.title.text
    write_safetensors_atomic(tmp_path / "sparsity.safetensors", {"sparsity": values})
    from_file = plots.density_histogram(tmp_path, bins=5)
    assert list(from_file.data[0].y) == counts.tolist() and "sparsity.safetensors" in from_file.layout.title.text
    with pytest.raises(MissingFileError):
        plots.density_histogram(tmp_path / "nothing_here")
    sae = make_sae(seed=1)
    tokens = torch.randint(1, 384, (4, 16), generator=torch.Generator().manual_seed(0))
    stats = feature_stats(sae, tiny_model, tokens, n_tokens=64, batch_size=4, context_size=16)
    from_stats = plots.density_histogram(stats, bins=7)
    live = stats.log10_density()[stats.count > 0]
    assert list(from_stats.data[0].y) == np.histogram(live.double().numpy(), bins=7)[0].tolist()
    assert f"{stats.n_tokens:,} tokens" in from_stats.layout.title.text
    with pytest.raises(ConfigError):
        plots.density_histogram(3.0)  # type: ignore[arg-type]


def test_skew_kurtosis_scatter_coloured_by_enrichment(tiny_model):
    sae = make_sae(seed=2)
    result = logit_lens(sae, tiny_model, k=3)
    fig = plots.skew_kurtosis_scatter(result, color_by="punctuation")
    (sc,) = fig.data
    assert list(sc.x) == result.skewness.tolist() and list(sc.y) == result.kurtosis.tolist()
    assert list(sc.marker.color) == result.enrichment_of("punctuation").tolist()
    assert sc.marker.cmid == 0 and list(sc.customdata) == list(range(24))
    assert sc.text[5].startswith("feature 5<br>top: " + repr(result.features[5].top[0].token))
    plain = plots.skew_kurtosis_scatter(result, color_by=None)
    assert plain.data[0].marker.color is None
    with pytest.raises(ConfigError):
        plots.skew_kurtosis_scatter(result, color_by="no_such_set")


def test_top_contexts_grid(tiny_model):
    sae = make_sae(seed=3)
    tokens = torch.randint(1, 384, (6, 16), generator=torch.Generator().manual_seed(1))
    stats = feature_stats(sae, tiny_model, tokens, n_tokens=96, batch_size=3, context_size=16, top_n=3,
                          window=(4, 2))
    j = int(torch.argmax(stats.count))
    fig = plots.top_contexts(stats, j)
    (hm,) = fig.data
    ctxs = stats.contexts(j)
    assert len(hm.z) == len(ctxs) == 3 and list(hm.x) == list(range(-4, 3))
    for row_z, row_t, c in zip(hm.z, hm.text, ctxs, strict=True):
        pad = 4 - c["max_index"]
        assert list(row_z[pad:pad + len(c["acts"])]) == pytest.approx(c["acts"])
        assert all(z is None for z in row_z[:pad]) and list(row_t[:pad]) == [""] * pad
        assert list(row_t[pad:pad + len(c["tokens"])]) == c["tokens"]
        assert row_z[4] == pytest.approx(c["max_activation"])  # the maximum sits at relative position 0
    assert hm.zmax == pytest.approx(ctxs[0]["max_activation"]) and hm.texttemplate == "%{text}"
    assert len(plots.top_contexts(stats, j, n=2).data[0].z) == 2


def _assert_offline_html(path: Path) -> None:
    html = path.read_text(encoding="utf-8")
    assert len(html) > 1_000_000  # plotly.js itself is in the file
    assert "plotly.js" in html and "Plotly.newPlot" in html
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", html, re.I)


def test_html_embeds_plotly_js_and_needs_no_network(tmp_path: Path):
    fig = plots.density_histogram(torch.tensor([-3.0, -2.0, -1.0]))
    fig.write_html(tmp_path / "default.html")
    _assert_offline_html(tmp_path / "default.html")
    out = plots.write_html(fig, tmp_path / "helper.html")
    _assert_offline_html(out)
    with pytest.raises(ConfigError):
        plots.write_html(fig, tmp_path / "cdn.html", include_plotlyjs="cdn")
    assert plots.show_token(" a\n") == "' a\\n'"
