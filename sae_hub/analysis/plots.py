"""Plotly figures for SAE analysis, usable offline.

Every function returns a ``plotly.graph_objects.Figure`` whose data are computed here (histogram counts
with numpy, colours from the given statistics), so the figure can be checked without rendering and its
HTML stays small. ``fig.write_html(path)`` embeds plotly.js (plotly's default ``include_plotlyjs=True``);
:func:`write_html` does the same and refuses the CDN/"directory" modes, so the page opens with no network.

plotly is imported inside the functions: ``import sae_hub`` (and ``sae_hub.analysis``) never loads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_hub.errors import ConfigError, MissingFileError

if TYPE_CHECKING:
    from sae_hub.analysis.feature_stats import FeatureStats
    from sae_hub.analysis.logit_lens import LogitLensResult
    from sae_hub.sae import SAE

__all__ = ["density_histogram", "logit_histogram", "skew_kurtosis_scatter", "top_contexts", "write_html"]

DEAD_LOG10 = -9.99  # log10(0 + 1e-10) = -10: features at or below this never fired


def _go() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError as e:  # pragma: no cover - plotly is a dependency
        raise ImportError("plots need plotly (pip install plotly)") from e
    return go


def show_token(s: str | None) -> str:
    """A token string made unambiguous for labels: Python ``repr`` (quotes make spaces and ``\\n`` visible)."""
    return "<none>" if s is None else repr(s)


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
    """Histogram of feature ``feature``'s logit weights over the whole vocabulary (log-scale counts), with
    its top-k and bottom-k tokens annotated at their weights (top in green, bottom in red).

    Same ``W_U`` conventions as :func:`sae_hub.analysis.logit_lens`; the title says which were applied.
    """
    from sae_hub.analysis.logit_lens import logit_weights, vocab_strings

    go = _go()
    row, info = logit_weights(sae, model_or_W_U, [feature], fold_ln=fold_ln, center=center)
    row = row[0]
    if tokenizer is None and not isinstance(model_or_W_U, torch.Tensor):
        tokenizer = getattr(model_or_W_U, "tokenizer", None)
    strings = vocab_strings(tokenizer, row.numel()) if tokenizer is not None else None
    counts, edges = _histogram(row, bins)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centers, y=counts, width=edges[1:] - edges[:-1], marker_color="#7f7f7f",
                           name="tokens", hovertemplate="weight %{x:.3g}<br>%{y} tokens<extra></extra>"))
    k = min(k, row.numel())
    top = torch.topk(row, k)
    bottom = torch.topk(row, k, largest=False)
    sides = [(top.indices, top.values, "#2ca02c", "right"), (bottom.indices, bottom.values, "#d62728", "left")]
    for ids, vals, color, anchor in sides:
        for i, (tid, val) in enumerate(zip(ids.tolist(), vals.tolist(), strict=True)):
            text = show_token(strings[tid]) if strings is not None else str(tid)
            fig.add_annotation(x=val, y=0.97 - 0.9 * i / max(k, 1), xref="x", yref="paper", text=text,
                               showarrow=False, font={"color": color, "size": 11}, xanchor=anchor)
    folded = "γ folded" if info.ln_weight_folded else "γ not folded"
    centred = ", W_U centred" if info.vocab_centered else ""
    fig.update_layout(title=f"Feature {feature}: logit weights ({folded}{centred}, via {info.resid_map})",
                      xaxis_title="logit weight", yaxis_title="tokens", yaxis_type="log", bargap=0,
                      showlegend=False)
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
                          n_tokens_hover: int = 5) -> Any:
    """Skewness vs excess kurtosis of every feature's logit weights, coloured by the enrichment score of
    the token set ``color_by`` (diverging scale centred on 0: promoted in red, suppressed in blue)."""
    go = _go()
    x = result.skewness.tolist()
    y = result.kurtosis.tolist()
    hover = []
    for f in result.features:
        toks = ", ".join(show_token(t.token) if t.token is not None else str(t.id) for t in f.top[:n_tokens_hover])
        hover.append(f"feature {f.feature}<br>top: {toks}")
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
