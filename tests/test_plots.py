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
    lens = logit_lens(sae, tiny_model, k=4, features=[7]).features[7]
    texts = [a.text for a in fig.layout.annotations]
    assert texts == plots.token_labels(tiny_model.tokenizer, [t.id for t in lens.top + lens.bottom])
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
    assert sc.text[5].startswith("feature 5<br>top: " + plots.show_token(result.features[5].top[0].token))
    labelled = plots.skew_kurtosis_scatter(result, tokenizer=tiny_model.tokenizer).data[0].text[5]
    ids = [t.id for t in result.features[5].top[:5]]
    assert labelled == "feature 5<br>top: " + ", ".join(plots.token_labels(tiny_model.tokenizer, ids))
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


def _unit_sae(d_in: int) -> SAE:
    """Feature 0 reads coordinate 0: its logit weights are row 0 of the W_U it is given."""
    sae = SAE(SAEConfig(architecture="relu", d_in=d_in, d_sae=2))
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_dec[0, 0] = 1.0
        sae.W_dec[1, 1] = 1.0
    return sae


def _W_U_promoting(weights: dict[int, float], d_vocab: int, d_in: int = 4) -> torch.Tensor:
    W_U = torch.randn(d_in, d_vocab, generator=torch.Generator().manual_seed(0)) * 0.01
    for token_id, w in weights.items():
        W_U[0, token_id] = w
    return W_U


def test_logit_histogram_token_labels_are_visible_escapes():
    """GPT-2 byte-level pieces: a leading space is ⎵, newline/tab/backslash are escaped, and a byte that is not
    valid UTF-8 on its own is <0xE2> (it decodes to '\ufffd'). Ids come from the tokenizer's own raw pieces."""
    from tiny_model import _train_tokenizer

    tok = _train_tokenizer()
    pieces = ["â", "Ġthe", "Ċ", "ĉ", "\\", "Ġ", "<|endoftext|>"]
    ids = tok.convert_tokens_to_ids(pieces)
    assert tok.decode([ids[0]]) == "\ufffd" and tok.unk_token_id not in ids[:-1]
    W_U = _W_U_promoting({t: 10.0 - i for i, t in enumerate(ids)}, len(tok))
    fig = plots.logit_histogram(_unit_sae(4), W_U, 0, tokenizer=tok, k=len(ids))
    top = [a.text for a in fig.layout.annotations[:len(ids)]]
    assert top == ["<0xE2>", "⎵the", "\\n", "\\t", "\\\\", "⎵", "<|endoftext|>"]
    assert "\ufffd" not in "".join(a.text for a in fig.layout.annotations)
    # labels of any byte-level piece: a 2-byte UTF-8 character split across pieces, and a space + lone byte
    byte_char = {b: c for c, b in plots._byte_level_alphabet().items()}
    raw = ["".join(byte_char[b] for b in "é".encode()), "".join(byte_char[b] for b in b" \xe2\x80")]
    assert plots._label_from_raw(raw[0], "é") == "é" and plots._label_from_raw(raw[1], " \ufffd") == "⎵<0xE2><0x80>"


def test_logit_histogram_sentencepiece_byte_fallback_tokens():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0xE2>": 3, "▁the": 4, "a\tb": 5, "x": 6, "y": 7}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tok.decode([3]) == "\ufffd" and tok.decode([4]) == "the"  # what a label must not show
    W_U = _W_U_promoting({3: 3.0, 4: 2.0, 5: 1.0, 9: 0.5}, 10)  # W_U wider than the tokenizer: id 9 has no token
    fig = plots.logit_histogram(_unit_sae(4), W_U, 0, tokenizer=tok, k=4)
    assert [a.text for a in fig.layout.annotations[:4]] == ["<0xE2>", "⎵the", "a\\tb", "<id 9>"]


def test_show_token_escapes():
    assert plots.show_token(" the") == "⎵the" and plots.show_token("a\nb\t\r") == "a\\nb\\t\\r"
    assert plots.show_token("\\n") == "\\\\n" and plots.show_token("\x00\xa0") == "\\x00\\xa0"
    assert plots.show_token("") == "<empty>" and plots.show_token(None) == "<none>"
    assert plots.show_token("Paris") == "Paris" and plots.show_token("日本") == "日本"


def test_logit_histogram_log_axis_has_real_tick_labels():
    """Counts span 1 to ~2000 tokens: a log axis whose labels are the counts themselves (20 reads "20", not
    plotly's abbreviated "2"), and whose range starts below 1 so a bar of one token is visible."""
    g = torch.Generator().manual_seed(0)
    W_U = torch.randn(4, 5000, generator=g)
    W_U[0, :3] = torch.tensor([8.0, 9.0, -9.0])  # lone tokens in the tails: bars of height 1
    fig = plots.logit_histogram(_unit_sae(4), W_U, 0, bins=60)
    y = fig.layout.yaxis
    counts = [c for c in fig.data[0].y if c > 0]
    assert y.type == "log" and y.tickmode == "array"
    assert [float(t) for t in y.ticktext] == list(y.tickvals)  # every label is the count at its tick
    assert "20" in y.ticktext and "2" in y.ticktext and "1" in y.ticktext
    assert y.tickvals[0] == 1 and y.tickvals[-1] >= max(counts) and 1 in counts
    lo, hi = y.range
    assert lo < 0 < np.log10(max(counts)) < hi  # log10 units: a count of 1 (log 0) sits above the axis bottom
