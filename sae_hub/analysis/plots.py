"""Plotly figures for SAE analysis, usable offline.

Every function returns a ``plotly.graph_objects.Figure`` whose data are computed here (histogram counts
with numpy, colours from the given statistics), so the figure can be checked without rendering and its
HTML stays small. ``fig.write_html(path)`` embeds plotly.js (plotly's default ``include_plotlyjs=True``);
:func:`write_html` does the same and refuses the CDN/"directory" modes, so the page opens with no network.

plotly (extra ``analysis``) is imported inside the functions: ``import sae_hub`` (and ``sae_hub.analysis``) never
loads it, and without it a plot function raises MissingDependencyError naming the extra.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_hub.errors import ConfigError, MissingFileError

if TYPE_CHECKING:
    from sae_hub.analysis.feature_stats import FeatureStats
    from sae_hub.analysis.logit_lens import LogitLensResult
    from sae_hub.sae import SAE

__all__ = ["density_histogram", "logit_histogram", "show_token", "skew_kurtosis_scatter", "token_labels",
           "top_contexts", "write_html"]

DEAD_LOG10 = -9.99  # log10(0 + 1e-10) = -10: features at or below this never fired


def _go() -> Any:
    """``plotly.graph_objects``, or MissingDependencyError naming the ``analysis`` extra."""
    from sae_hub.extras import require

    return require("plotly.graph_objects", extra="analysis", purpose="plots")


_VISIBLE = {" ": "\u23b5", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}  # ⎵ for a space
_BYTE_TOKEN = re.compile(r"(?:<0x[0-9A-Fa-f]{2}>)+")  # SentencePiece byte-fallback pieces


def show_token(s: str | None) -> str:
    """A token string made readable and unambiguous in a plot label.

    A space is ``⎵`` (``" the"`` -> ``⎵the``: the leading space is what tells the word-start token apart);
    newline, tab, carriage return and backslash are ``\\n``, ``\\t``, ``\\r``, ``\\\\``; other unprintable
    characters are ``\\xNN`` / ``\\uNNNN``. No quotes: a label with quotes reads as Python, not as the token.
    ``""`` is ``<empty>``. For tokens that are bytes rather than text, use :func:`token_labels`, which can see
    the bytes (a decoded string only has ``\ufffd`` left).
    """
    if s is None:
        return "<none>"
    if s == "":
        return "<empty>"
    out = []
    for ch in s:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return "".join(out)


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2 byte-level BPE's printable stand-in character for each byte, inverted (character -> byte).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are mapped, in order, to U+0100 onwards
    (so a space is ``Ġ`` and a newline ``Ċ``). Tokenizers built on it (GPT-2, GPT-NeoX, Llama 3, Qwen...) store
    their pieces in this alphabet, which is how a piece's bytes are recovered.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(0x100 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _show_bytes(data: bytes) -> str:
    """UTF-8 text shown with :func:`show_token`; each byte that is not part of a valid character as ``<0xNN>``."""
    out = []
    while data:
        try:
            out.append(show_token(data.decode("utf-8")))
            break
        except UnicodeDecodeError as e:
            if e.start:
                out.append(show_token(data[:e.start].decode("utf-8")))
            out.extend(f"<0x{b:02X}>" for b in data[e.start:e.end])
            data = data[e.end:]
    return "".join(out)


def _label_from_raw(raw: Any, decoded: str) -> str:
    """The label of one token from its raw vocabulary piece and its decoded string.

    Decoding a lone byte (a GPT-2 piece for part of a multi-byte character, a SentencePiece ``<0xE2>``) yields
    ``\ufffd`` whatever the byte was; the raw piece still says which bytes it holds.
    """
    if "\ufffd" in decoded and isinstance(raw, str) and raw:
        if _BYTE_TOKEN.fullmatch(raw):
            return re.sub(r"<0x(..)>", lambda m: f"<0x{m.group(1).upper()}>", raw)
        alphabet = _byte_level_alphabet()
        if all(ch in alphabet for ch in raw):
            return _show_bytes(bytes(alphabet[ch] for ch in raw))
    return show_token(decoded)


def token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Plot labels for token ``ids``: :func:`show_token` of each decoded token, with bytes that are not valid
    UTF-8 on their own written ``<0xE2>``, and ``<id N>`` for ids past the tokenizer's vocabulary (models pad
    ``W_U``). Decodes only the ids asked for, not the whole vocabulary."""
    ids = [int(i) for i in ids]
    known = [i for i in ids if 0 <= i < len(tokenizer)]
    decoded = dict(zip(known, tokenizer.batch_decode([[i] for i in known]), strict=True)) if known else {}
    raw = dict(zip(known, tokenizer.convert_ids_to_tokens(known), strict=True)) if known else {}
    labels = []
    for i in ids:
        if i not in decoded:
            labels.append(f"<id {i}>")
            continue
        text, piece = decoded[i], raw[i]
        if isinstance(piece, str) and piece.startswith("\u2581") and not text.startswith(" "):
            text = " " + text  # SentencePiece drops a word-initial ▁ when a token is decoded alone
        labels.append(_label_from_raw(piece, text))
    return labels


def _log_count_axis(max_count: int) -> dict[str, Any]:
    """A log y axis for counts labelled with the counts themselves: ticks 1, 2, 5, 10, 20, 50, ... written out
    in full (plotly's own log ticks abbreviate 20 to "2"), and a range from 0.5 so a bar of one token shows."""
    top = max(int(max_count), 1)
    ticks = [m * 10**e for e in range(len(str(top)) + 1) for m in (1, 2, 5)]
    ticks = ticks[:next(i for i, t in enumerate(ticks) if t >= top) + 1]
    return {"type": "log", "tickmode": "array", "tickvals": ticks, "ticktext": [str(t) for t in ticks],
            "range": [math.log10(0.5), math.log10(top * 1.5)]}


def _histogram(values: torch.Tensor, bins: int | Any) -> tuple[Any, Any]:
    import numpy as np

    counts, edges = np.histogram(values.detach().double().cpu().numpy(), bins=bins)
    return counts, edges


def write_html(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """``fig.write_html`` with plotly.js embedded in the file (no CDN), so it opens offline."""
    if kwargs.get("include_plotlyjs", True) is not True:
        raise ConfigError("write_html embeds plotly.js; include_plotlyjs must stay True", field="include_plotlyjs")
    kwargs["include_plotlyjs"] = True
    p = Path(path)
    fig.write_html(str(p), **kwargs)
    return p


def logit_histogram(sae: SAE, model_or_W_U: Any, feature: int, *, tokenizer: Any = None, k: int = 10,
                    fold_ln: bool = True, center: bool = False, bins: int = 100) -> Any:
    """Histogram of feature ``feature``'s logit weights over the whole vocabulary (log-scale counts, labelled
    1, 2, 5, 10, 20...), with its top-k and bottom-k tokens annotated at their weights (top in green, bottom in
    red) and written with :func:`token_labels` (``⎵the``, ``\\n``, ``<0xE2>``).

    Same ``W_U`` conventions as :func:`sae_hub.analysis.logit_lens`; the title says which were applied.
    """
    from sae_hub.analysis.logit_lens import logit_weights

    go = _go()
    row, info = logit_weights(sae, model_or_W_U, [feature], fold_ln=fold_ln, center=center)
    row = row[0]
    if tokenizer is None and not isinstance(model_or_W_U, torch.Tensor):
        tokenizer = getattr(model_or_W_U, "tokenizer", None)
    counts, edges = _histogram(row, bins)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centers, y=counts, width=edges[1:] - edges[:-1], marker_color="#7f7f7f",
                           name="tokens", hovertemplate="weight %{x:.3g}<br>%{y} tokens<extra></extra>"))
    k = min(k, row.numel())
    top = torch.topk(row, k)
    bottom = torch.topk(row, k, largest=False)
    sides = [(top.indices, top.values, "#2ca02c", "right"), (bottom.indices, bottom.values, "#d62728", "left")]
    for ids, vals, color, anchor in sides:
        labels = token_labels(tokenizer, ids.tolist()) if tokenizer is not None else [str(t) for t in ids.tolist()]
        for i, (text, val) in enumerate(zip(labels, vals.tolist(), strict=True)):
            fig.add_annotation(x=val, y=0.97 - 0.9 * i / max(k, 1), xref="x", yref="paper", text=text,
                               showarrow=False, font={"color": color, "size": 11}, xanchor=anchor)
    folded = "γ folded" if info.ln_weight_folded else "γ not folded"
    centred = ", W_U centred" if info.vocab_centered else ""
    fig.update_layout(title=f"Feature {feature}: logit weights ({folded}{centred}, via {info.resid_map})",
                      xaxis_title="logit weight", yaxis_title="tokens (log scale)", bargap=0, showlegend=False,
                      yaxis=_log_count_axis(int(counts.max()) if len(counts) else 1))
    return fig


def _log10_density(source: Any) -> tuple[torch.Tensor, str]:
    from sae_hub.analysis.feature_stats import FeatureStats, read_sparsity

    if isinstance(source, FeatureStats):
        return source.log10_density(), f"{source.n_tokens:,} tokens"
    if isinstance(source, torch.Tensor):
        return source.detach().float().cpu().reshape(-1), "given"
    if isinstance(source, (str, os.PathLike)):
        t = read_sparsity(source)
        if t is None:
            raise MissingFileError("no sparsity.safetensors", path=source)
        return t, "sparsity.safetensors"
    raise ConfigError(f"expected FeatureStats, a log10-density tensor or a path, got {type(source).__name__}")


def density_histogram(source: FeatureStats | torch.Tensor | str | os.PathLike[str], *, bins: int = 50,
                      title: str | None = None) -> Any:
    """Histogram of log10 feature density. ``source``: :class:`FeatureStats`, a log10-density tensor, or an
    SAE folder / ``sparsity.safetensors`` path. Features that never fired (``log10 <= -9.99``, i.e. the
    ``1e-10`` floor) are left out of the bars and counted in the title."""
    go = _go()
    values, origin = _log10_density(source)
    dead = values <= DEAD_LOG10
    live = values[~dead]
    counts: Any
    edges: Any
    counts, edges = _histogram(live, bins) if live.numel() else ([], [0.0])
    fig = go.Figure()
    if live.numel():
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=edges[1:] - edges[:-1],
                             marker_color="#1f77b4", name="features",
                             hovertemplate="log10 density %{x:.2f}<br>%{y} features<extra></extra>"))
    n_dead = int(dead.sum())
    fig.update_layout(
        title=title or f"Feature density ({origin}): {values.numel():,} features, {n_dead:,} never fired",
        xaxis_title="log10(feature density)", yaxis_title="features", bargap=0,
    )
    return fig


def skew_kurtosis_scatter(result: LogitLensResult, *, color_by: str | None = "all_digits",
                          n_tokens_hover: int = 5, tokenizer: Any = None) -> Any:
    """Skewness vs excess kurtosis of every feature's logit weights, coloured by the enrichment score of
    the token set ``color_by`` (diverging scale centred on 0: promoted in red, suppressed in blue).

    Hover texts list each feature's top tokens; with ``tokenizer`` they are :func:`token_labels` (byte tokens
    as ``<0xE2>``), otherwise :func:`show_token` of the decoded strings the result holds.
    """
    go = _go()
    x = result.skewness.tolist()
    y = result.kurtosis.tolist()
    hover = []
    for f in result.features:
        top = f.top[:n_tokens_hover]
        if tokenizer is not None:
            shown = token_labels(tokenizer, [t.id for t in top])
        else:
            shown = [show_token(t.token) if t.token is not None else str(t.id) for t in top]
        hover.append(f"feature {f.feature}<br>top: {', '.join(shown)}")
    marker: dict[str, Any] = {"size": 6}
    if color_by is not None:
        marker.update(color=result.enrichment_of(color_by).tolist(), colorscale="RdBu", reversescale=True,
                      cmid=0.0, colorbar={"title": f"{color_by}<br>enrichment"})
    fig = go.Figure(go.Scatter(x=x, y=y, mode="markers", marker=marker, text=hover,
                               customdata=result.feature_ids, hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(title="Logit-weight skewness vs kurtosis per feature"
                      + (f" (colour: {color_by} enrichment)" if color_by else ""),
                      xaxis_title="skewness", yaxis_title="excess kurtosis")
    return fig


def top_contexts(stats: FeatureStats, feature: int, *, n: int | None = None) -> Any:
    """The top activating contexts of one feature as a grid: one row per context (best on top), one cell
    per token of the window, coloured by the feature's activation there, the token written in the cell."""
    go = _go()
    ctxs = stats.contexts(feature)[: n if n is not None else None]
    W = stats.window[0] + 1 + stats.window[1]
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    labels = []
    for i, c in enumerate(ctxs):
        pad = stats.window[0] - c["max_index"]  # window cells before the sequence start
        row_z: list[float | None] = [None] * W
        row_t = [""] * W
        for t, (tok, act) in enumerate(zip(c["tokens"], c["acts"], strict=True)):
            row_z[pad + t] = act
            row_t[pad + t] = tok.replace("\n", "\\n")
        z.append(row_z)
        text.append(row_t)
        labels.append(f"#{i + 1} seq {c['seq']} ({c['max_activation']:.3g})")
    zmax = max((c["max_activation"] for c in ctxs), default=1.0) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", y=labels, x=list(range(-stats.window[0], stats.window[1] + 1)),
        colorscale="Reds", zmin=0.0, zmax=zmax, xgap=1, ygap=1, colorbar={"title": "activation"},
        hovertemplate="%{text}: %{z:.3g}<extra></extra>",
    ))
    fig.update_layout(title=f"Feature {feature}: top {len(ctxs)} contexts (max activation at 0)",
                      xaxis_title="position relative to the maximum", yaxis={"autorange": "reversed"},
                      height=max(250, 40 * len(ctxs) + 120))
    return fig
